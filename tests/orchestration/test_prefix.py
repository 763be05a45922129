"""The prefix cache's bookkeeping (pure logic): the origin's index finds the
longest reusable prefix, a node's store keeps caches within its byte budget,
least recently used evicted first, and a new plan drops everything."""

from __future__ import annotations

from exoquic.orchestration.prefix import PrefixHit, PrefixIndex, PrefixStore, reusable_length

ALIGN = 4


def test_reusable_length_is_whole_chunks() -> None:
    assert [reusable_length(n, ALIGN) for n in (0, 3, 4, 7, 8, 9)] == [0, 0, 4, 4, 8, 8]


def test_lookup_finds_the_longest_shared_prefix_in_whole_chunks() -> None:
    index = PrefixIndex(ALIGN)
    index.add("short", 1, [1, 2, 3, 4])
    index.add("long", 1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    index.add("other", 1, [9, 9, 9, 9, 9, 9, 9, 9])
    # Shares 10 tokens with "long": 8 of them are whole chunks.
    assert index.lookup(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0]) == PrefixHit("long", 8)
    hit = index.lookup(1, [1, 2, 3, 4, 0])
    assert hit is not None and hit.length == 4  # "short" and "long" both hold it
    assert index.lookup(1, [2, 2, 3, 4, 5, 6]) is None  # differs at the first token
    assert index.lookup(1, [1, 2, 3]) is None  # shorter than a chunk


def test_lookup_leaves_the_last_prompt_position_to_run() -> None:
    """The prompt's last position gives the first token's logits: never reused."""
    index = PrefixIndex(ALIGN)
    index.add("same", 1, [1, 2, 3, 4, 5, 6, 7, 8])
    assert index.lookup(1, [1, 2, 3, 4, 5, 6, 7, 8]) == PrefixHit("same", 4)
    assert index.lookup(1, [1, 2, 3, 4, 5, 6, 7, 8, 9]) == PrefixHit("same", 8)


def test_a_new_plan_version_drops_the_index() -> None:
    index = PrefixIndex(ALIGN)
    index.add("old", 1, [1, 2, 3, 4])
    assert index.lookup(2, [1, 2, 3, 4, 5]) is None
    assert len(index) == 0
    index.add("new", 2, [1, 2, 3, 4])
    assert index.lookup(1, [1, 2, 3, 4, 5]) is None  # and back: nothing of plan 2 either


def test_index_forgets_the_least_recently_used_beyond_its_size() -> None:
    index = PrefixIndex(ALIGN, max_entries=2)
    index.add("a", 1, [1, 1, 1, 1])
    index.add("b", 1, [2, 2, 2, 2])
    assert index.lookup(1, [1, 1, 1, 1, 0]) == PrefixHit("a", 4)  # "a" is now the latest
    index.add("c", 1, [3, 3, 3, 3])
    assert index.lookup(1, [2, 2, 2, 2, 0]) is None
    assert index.lookup(1, [1, 1, 1, 1, 0]) == PrefixHit("a", 4)
    index.discard("a")
    assert index.lookup(1, [1, 1, 1, 1, 0]) is None


def test_store_hits_only_the_entry_plan_and_length_it_keeps() -> None:
    store = PrefixStore(budget=1000)
    assert store.keep("a", 1, positions=8, nbytes=100) == []
    assert store.take("a", 1, 8) and store.take("a", 1, 4)
    assert not store.take("a", 1, 12)  # holds fewer reusable positions
    assert not store.take("a", 2, 4)  # another plan
    assert not store.take("b", 1, 4)
    stats = store.statistics()
    assert (stats.hits, stats.misses, stats.reused_positions) == (2, 3, 12)
    assert (stats.entries, stats.bytes) == (1, 100)


def test_store_evicts_the_least_recently_used_beyond_its_budget() -> None:
    store = PrefixStore(budget=250)
    store.keep("a", 1, 4, 100)
    store.keep("b", 1, 4, 100)
    assert store.take("a", 1, 4)  # "b" is now the least recently used
    assert store.keep("c", 1, 4, 100) == ["b"]
    assert not store.take("b", 1, 4)
    assert store.take("a", 1, 4) and store.take("c", 1, 4)
    stats = store.statistics()
    assert (stats.entries, stats.bytes, stats.evicted) == (2, 200, 1)


def test_store_refuses_what_alone_is_over_budget() -> None:
    store = PrefixStore(budget=50)
    assert store.keep("big", 1, 4, 100) == ["big"]  # the caller frees it at once
    assert store.keep("none", 1, 0, 10) == ["none"]  # nothing reusable
    assert store.statistics().entries == 0
    assert PrefixStore(budget=0).keep("any", 1, 4, 1) == ["any"]


def test_a_new_plan_drops_every_kept_cache() -> None:
    store = PrefixStore(budget=1000)
    store.keep("a", 1, 4, 100)
    store.keep("b", 1, 4, 100)
    assert store.keep("c", 2, 4, 100) == ["a", "b"]  # kept under plan 2: plan 1's go
    assert sorted(store.drop_all()) == ["c"]
    stats = store.statistics()
    assert (stats.entries, stats.bytes) == (0, 0)
