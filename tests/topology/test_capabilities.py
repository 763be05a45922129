"""Device capabilities: strict decoding of what peers send."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exoquic.topology.capabilities import DeviceCapabilities

GIB = 2**30


@st.composite
def capabilities(draw: st.DrawFn) -> DeviceCapabilities:
    total = draw(st.integers(1, 2**60))
    return DeviceCapabilities(
        total_memory=total,
        available_memory=draw(st.integers(0, total)),
        chip=draw(st.text(min_size=1, max_size=256)),
        engine=draw(st.sampled_from(["tinygrad", "mlx"])),
        accelerator_memory=draw(st.none() | st.integers(0, 2**60)),
    )


@given(capabilities())
def test_roundtrip_through_cbor(caps: DeviceCapabilities) -> None:
    assert DeviceCapabilities.from_dict(cbor2.loads(cbor2.dumps(caps.to_dict()))) == caps


VALID = {
    "total_memory": 16 * GIB,
    "available_memory": 8 * GIB,
    "chip": "Apple M2",
    "engine": "mlx",
    "accelerator_memory": None,
}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"total_memory": True}, "total_memory must be an integer"),
        ({"total_memory": 1.5e10}, "total_memory must be an integer"),
        ({"total_memory": 0}, "total_memory must be in"),
        ({"total_memory": 2**61}, "total_memory must be in"),
        ({"available_memory": -1}, "available_memory must be in"),
        ({"available_memory": 17 * GIB}, "available_memory must be in"),
        ({"chip": ""}, "chip must have"),
        ({"chip": "x" * 257}, "chip must have"),
        ({"chip": b"M2"}, "chip must be a string"),
        ({"engine": None}, "engine must be a string"),
        ({"accelerator_memory": -1}, "accelerator_memory must be in"),
        ({"accelerator_memory": "24GB"}, "accelerator_memory must be an integer"),
        ({"extra": 1}, "unknown keys"),
        ({1: 1}, "unknown keys"),
    ],
)
def test_malformed_fields_are_rejected(change: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DeviceCapabilities.from_dict({**VALID, **change})


def test_missing_key_and_non_map_are_rejected() -> None:
    partial = {k: v for k, v in VALID.items() if k != "chip"}
    with pytest.raises(ValueError, match=r"missing keys \['chip'\]"):
        DeviceCapabilities.from_dict(partial)
    with pytest.raises(ValueError, match="must be a map"):
        DeviceCapabilities.from_dict([VALID])


def test_usable_memory_prefers_the_accelerator() -> None:
    ram = DeviceCapabilities(16 * GIB, 8 * GIB, "cpu", "tinygrad")
    gpu = DeviceCapabilities(16 * GIB, 8 * GIB, "cpu", "tinygrad", accelerator_memory=24 * GIB)
    assert (ram.usable_memory, gpu.usable_memory) == (8 * GIB, 24 * GIB)
