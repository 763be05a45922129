"""Whether a model fits before it is downloaded or loaded (pure)."""

from __future__ import annotations

import pytest

from exoquic.topology.fit import ModelFootprint, check_fit, format_size

GB = 1_000_000_000


def _model(layers: int = 32, layer: int = 100_000_000) -> ModelFootprint:
    # 8 KV heads of 128 values, float32: 8 KB per layer and token.
    return ModelFootprint.of(
        "m", [layer] * layers, 500_000_000, 500_000_000, kv_heads=8, head_dim=128
    )


def test_weights_and_kv_cache_add_up() -> None:
    model = _model()
    assert model.kv_bytes_per_token == 2 * 32 * 8 * 128 * 4
    assert model.needed(1000) == 32 * 100_000_000 + 2 * 500_000_000 + 1000 * 262_144


def test_a_model_that_fits_says_so() -> None:
    fit = check_fit(_model(), 2048, [8 * GB], memory_fraction=0.8)
    assert fit.fits and fit.shortfall == 0
    assert fit.message().startswith("m fits: it needs 4.7 GB")
    assert "this device" in fit.message()


def test_a_model_too_big_says_by_how_much_and_what_to_do() -> None:
    fit = check_fit(_model(), 8192, [2 * GB, 2 * GB], memory_fraction=0.8)
    # 4.2 GB of weights + 2.1 GB of KV cache against 3.2 GB.
    assert not fit.fits
    assert fit.shortfall == _model().needed(8192) - 3_200_000_000
    assert "needs 3.1 GB more" in fit.message()
    assert fit.message().endswith("the 2 devices offer); add a device or lower --max-context")


def test_more_devices_or_a_shorter_context_make_it_fit() -> None:
    assert not check_fit(_model(), 8192, [2 * GB, 2 * GB]).fits
    assert check_fit(_model(), 8192, [2 * GB] * 5).fits
    assert check_fit(_model(), 512, [3 * GB, 3 * GB]).fits


def test_no_kv_cache_means_no_context_advice() -> None:
    model = ModelFootprint("m", (GB,), 0, 0, 0)
    assert check_fit(model, 2048, [GB]).message().endswith("; add a device")


@pytest.mark.parametrize(
    ("args", "error"), [((0, [GB]), "max_context"), ((1, [GB], 0), "fraction")]
)
def test_nonsense_is_refused(args: tuple, error: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=error):
        check_fit(_model(), *args)


def test_format_size() -> None:
    assert [format_size(n) for n in (5, 2_100, 2_100_000, 2_100_000_000)] == [
        "5 B",
        "2.1 KB",
        "2.1 MB",
        "2.1 GB",
    ]
