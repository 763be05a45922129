"""What a device offers the cluster: memory, chip and engine.

`DeviceCapabilities` is plain data that travels in discovery announcements, so
it validates everything strictly. `exoquic.machine` measures this device's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
