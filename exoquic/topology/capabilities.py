"""What a device offers the cluster: memory, chip and engine.

`DeviceCapabilities` is plain data that travels in discovery announcements, so
it validates everything strictly. `probe_capabilities` is the one function in
`topology/` that looks at the machine.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from exoquic.topology._checks import MAX_BYTES, check_int, check_map, check_text


@dataclass(frozen=True)
class DeviceCapabilities:
    """A device's resources, in bytes.

    total_memory / available_memory: system RAM (unified memory on Apple silicon).
    chip: a human-readable CPU or SoC name ("Apple M2 Pro", "AMD Ryzen 7 5800X").
    engine: the inference engine the node runs ("tinygrad", "mlx").
    accelerator_memory: memory free for the model on a discrete accelerator
      (e.g. a CUDA GPU under tinygrad); None when the engine runs from system RAM.
    """

    total_memory: int
    available_memory: int
    chip: str
    engine: str
    accelerator_memory: int | None = None

    def __post_init__(self) -> None:
        check_int(self.total_memory, "total_memory", 1, MAX_BYTES)
        check_int(self.available_memory, "available_memory", 0, self.total_memory)
        check_text(self.chip, "chip")
        check_text(self.engine, "engine", max_len=64)
        if self.accelerator_memory is not None:
            check_int(self.accelerator_memory, "accelerator_memory", 0, MAX_BYTES)

    @property
    def usable_memory(self) -> int:
        """Bytes this device can give to model weights: the accelerator's when the
        engine runs on one, else the system memory available now."""
        if self.accelerator_memory is not None:
            return self.accelerator_memory
        return self.available_memory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> DeviceCapabilities:
        """Decode a peer's capabilities; raises ValueError on any malformed field."""
        m = check_map(d, "capabilities", _FIELDS)
        return cls(**m)  # __post_init__ checks every value


_FIELDS = frozenset(DeviceCapabilities.__dataclass_fields__)


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
