"""This machine, measured: the capabilities it offers the cluster.

The one place that looks at the hardware (psutil, /proc/cpuinfo, sysctl);
`exoquic.topology` only computes with the `DeviceCapabilities` made here.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import psutil

from exoquic.topology.capabilities import DeviceCapabilities


def probe_capabilities(engine: str, accelerator_memory: int | None = None) -> DeviceCapabilities:
    """Measure this machine. The engine reports `accelerator_memory` when it runs
    on a device with its own memory (a GPU); exoquic cannot see that from here."""
    mem = psutil.virtual_memory()
    return DeviceCapabilities(
        total_memory=int(mem.total),
        available_memory=min(int(mem.available), int(mem.total)),
        chip=chip_name()[:256],
        engine=engine,
        accelerator_memory=accelerator_memory,
    )


def chip_name() -> str:
    """The CPU or SoC name, best effort: never raises, never empty."""
    system = platform.system()
    name: str | None = None
    if system == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")  # "Apple M2 Pro" on Apple silicon
    elif system == "Linux":
        try:
            name = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            name = None
    return name or platform.processor() or platform.machine() or "unknown"


def parse_cpuinfo(text: str) -> str | None:
    """The model name in a Linux /proc/cpuinfo: x86 has "model name"; ARM boards
    often only "Model" (e.g. "Raspberry Pi 4 Model B") or "Hardware"."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "model", "hardware", "cpu model"):
        # On x86 "model" is a number; only a name is useful.
        name = fields.get(key)
        if name and not name.isdigit():
            return name
    return None


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
