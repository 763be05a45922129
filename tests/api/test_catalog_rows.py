"""The picker's rows (`exoquic.api.catalog`): sizes, cache state and the fit check."""

from __future__ import annotations

from exoquic.api.catalog import ClusterMemory, catalog_rows, footprint_of_entry
from exoquic.download.cache import CachedModel
from exoquic.models.registry import DEFAULT_MODEL_ID, get_model, list_models
from exoquic.topology.fit import KV_BYTES_PER_VALUE

GB = 10**9
QWEN_7B = get_model("qwen2.5:7b")
SMOL_360M = get_model("smollm2:360m")


def rows_by_id(**kwargs: object) -> dict[str, dict[str, object]]:
    memory = kwargs.pop("memory", ClusterMemory([16 * GB], 0.8, 4096))
    args = {"cached": [], "cached_ggufs": set(), "loaded": set(), **kwargs}
    rows = catalog_rows(list_models(), memory=memory, **args)  # type: ignore[arg-type]
    return {str(r["id"]): r for r in rows}


def test_every_registry_model_is_listed_with_its_loaded_size_and_pull_name() -> None:
    rows = rows_by_id()
    assert list(rows) == [e.id for e in list_models()]
    assert rows[QWEN_7B.id]["size"] == QWEN_7B.total_bytes
    assert rows[QWEN_7B.id]["name"] == "qwen2.5:7b"
    assert rows[SMOL_360M.id]["name"] == "smollm2:360m"


def test_the_bundled_model_is_cached_and_others_are_not_until_pulled() -> None:
    rows = rows_by_id(loaded={DEFAULT_MODEL_ID})
    assert rows[DEFAULT_MODEL_ID]["cached"] is True
    assert rows[DEFAULT_MODEL_ID]["bundled"] is True
    assert rows[DEFAULT_MODEL_ID]["loaded"] is True
    assert rows[SMOL_360M.id]["cached"] is False
    assert rows[SMOL_360M.id]["loaded"] is False
    pulled = rows_by_id(cached_ggufs={SMOL_360M.id})
    assert pulled[SMOL_360M.id]["cached"] is True


def test_cached_bytes_count_both_repos_and_unknown_repos_get_their_own_rows() -> None:
    cached = [
        CachedModel(str(SMOL_360M.gguf_repo), 200_000_000, 1, ("a" * 40,)),
        CachedModel(SMOL_360M.hf_repo, 5_000, 2, ("b" * 40,)),
        CachedModel("someone/custom-GGUF", 123_456, 1, ("c" * 40,)),
    ]
    rows = rows_by_id(cached=cached, loaded={"someone/custom-GGUF"})
    assert rows[SMOL_360M.id]["cached_bytes"] == 200_005_000
    assert rows[SMOL_360M.id]["cached"] is True  # its safetensors repo is cached
    custom = rows["someone/custom-GGUF"]
    assert list(rows)[-1] == "someone/custom-GGUF"
    assert custom["size"] == 123_456 and custom["cached"] is True and custom["loaded"] is True
    assert custom["fits"] is None and custom["source"] == "cache"


def test_fit_is_the_fit_check_against_the_cluster_memory() -> None:
    need = footprint_of_entry(QWEN_7B).needed(4096)
    enough = rows_by_id(memory=ClusterMemory([need, need], 0.5, 4096))[QWEN_7B.id]
    assert enough["fits"] is True and enough["needed"] == need
    assert enough["available"] == need
    short = rows_by_id(memory=ClusterMemory([need], 0.5, 4096))[QWEN_7B.id]
    assert short["fits"] is False
    assert "needs" in str(short["fit"]) and "more" in str(short["fit"])
    unknown = rows_by_id(memory=ClusterMemory([], 0.8, 4096))[QWEN_7B.id]
    assert unknown["fits"] is None and unknown["fit"] is None


def test_the_footprint_counts_the_kv_cache_of_the_context() -> None:
    # Qwen2.5-7B: 28 layers, 4 KV heads of 128 values, keys and values.
    per_token = 2 * 28 * 4 * 128 * KV_BYTES_PER_VALUE
    footprint = footprint_of_entry(QWEN_7B)
    assert footprint.kv_bytes_per_token == per_token
    assert footprint.needed(1000) - footprint.needed(0 + 1) == per_token * 999
    assert footprint.needed(1) == QWEN_7B.total_bytes + per_token
