"""Catalog: request names resolved against the bundled models and a hub cache, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from on_demand_models import (
    COMMIT,
    HUGE_ID,
    TINY_FILE,
    TINY_ID,
    TINY_REPO,
    cache_huge,
    cache_tiny,
)

from exoquic.download.cache import RepoCache
from exoquic.models.registry import DEFAULT_MODEL_ID, bundled_gguf_path
from exoquic.orchestration.catalog import Catalog
from exoquic.topology.fit import check_fit


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache_dir = tmp_path_factory.mktemp("hub-cache")
    cache_tiny(cache_dir, tmp_path_factory.mktemp("work"))
    cache_huge(cache_dir)
    # A repository holding only a ring node's slice of a GGUF: not servable alone.
    slices = RepoCache(cache_dir, "test-org/slice-GGUF").root / "shards" / COMMIT
    slices.mkdir(parents=True)
    (slices / "m.layers-0-3-of-8.gguf").write_bytes(b"GGUF")
    return cache_dir


@pytest.mark.parametrize(
    "name", [TINY_ID, f"{TINY_REPO}:Q8_0", f"{TINY_REPO}:q8_0", TINY_REPO, f"hf.co/{TINY_REPO}"]
)
def test_pull_names_find_the_cached_gguf(cache: Path, name: str) -> None:
    entry = Catalog(cache).find(name)
    assert entry is not None
    assert entry.model_id == TINY_ID
    assert entry.kind == "gguf"
    assert entry.path.name == TINY_FILE and entry.path.is_file()


@pytest.mark.parametrize("name", ["smollm2:135m", DEFAULT_MODEL_ID, "smollm2:135m:latest"])
def test_registry_names_find_the_bundled_model(cache: Path, name: str) -> None:
    entry = Catalog(cache).find(name)
    assert entry is not None
    assert entry.model_id == DEFAULT_MODEL_ID
    assert entry.path == bundled_gguf_path()


@pytest.mark.parametrize(
    "name",
    [
        "nobody/nothing-GGUF:Q4_K_M",  # not cached
        f"{TINY_REPO}:Q4_K_M",  # cached, but not that quantization
        "test-org/slice-GGUF",  # only a layer slice
        "qwen2.5:7b",  # a registry model that was never pulled
        "/etc/passwd",  # never a path on the node's disk
        "gpt-4o",
    ],
)
def test_what_is_not_whole_in_the_cache_is_not_found(cache: Path, name: str) -> None:
    assert Catalog(cache).find(name) is None


def test_entries_list_the_bundled_model_and_the_cached_ggufs(cache: Path) -> None:
    ids = [e.model_id for e in Catalog(cache).entries()]
    assert ids[0] == DEFAULT_MODEL_ID
    assert set(ids) == {DEFAULT_MODEL_ID, TINY_ID, HUGE_ID}


def test_footprints_come_from_the_headers(cache: Path) -> None:
    catalog = Catalog(cache)
    tiny = catalog.footprint(catalog.find(TINY_ID))  # type: ignore[arg-type]
    assert len(tiny.layer_bytes) == 4
    huge = catalog.find(HUGE_ID)
    assert huge is not None
    fit = check_fit(catalog.footprint(huge), 2048, [2 << 30])
    assert not fit.fits
    assert fit.needed > 4_500_000_000  # 8B at Q4_K_M, from the header alone
    assert "does not fit: needs" in fit.message()


def test_the_served_models_footprint_reuses_its_header(
    cache: Path, gguf_parses: list[Path]
) -> None:
    """A request's fit check describes the model a node has just loaded: no second parse."""
    catalog = Catalog(cache)
    entry = catalog.find(TINY_ID)
    assert entry is not None
    config = entry.source().load_config()
    assert len(catalog.footprint(entry).layer_bytes) == config.num_layers
    assert gguf_parses == [entry.path]
