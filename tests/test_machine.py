"""Probing this machine for the capabilities it offers."""

from __future__ import annotations

from exoquic.machine import parse_cpuinfo, probe_capabilities

GIB = 2**30


def test_probe_this_machine() -> None:
    caps = probe_capabilities("tinygrad")
    assert caps.total_memory >= 256 * 2**20
    assert 0 < caps.available_memory <= caps.total_memory
    assert caps.chip and caps.engine == "tinygrad" and caps.accelerator_memory is None
    assert probe_capabilities("tinygrad", accelerator_memory=GIB).usable_memory == GIB


X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 33
model name\t: AMD Ryzen 7 5800X 8-Core Processor
"""

RASPBERRY_PI = """processor\t: 0
BogoMIPS\t: 108.00
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_parse_cpuinfo() -> None:
    assert parse_cpuinfo(X86) == "AMD Ryzen 7 5800X 8-Core Processor"
    assert parse_cpuinfo(RASPBERRY_PI) == "Raspberry Pi 4 Model B Rev 1.4"
    assert parse_cpuinfo("processor\t: 0\nmodel\t: 33\n") is None
    assert parse_cpuinfo("") is None
