import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from exoquic.orchestration.stops import StopMatcher


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.push(p) for p in pieces)
    return out + matcher.flush()


def reference_reply(text: str, stops: tuple[str, ...]) -> str:
    """The naive definition: cut before the longest stop ending at the first
    position where any stop ends."""
    for end in range(1, len(text) + 1):
        ended = [s for s in stops if s and text[:end].endswith(s)]
        if ended:
            return text[: end - max(map(len, ended))]
    return text


def reference_held(text: str, stops: tuple[str, ...]) -> int:
    """How much of the tail must wait: the longest suffix that begins a stop."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_stop_split_across_pieces_is_never_sent() -> None:
    matcher = StopMatcher(("END",))
    sent = [matcher.push(p) for p in ["hello E", "N", "D and more"]]
    assert sent == ["hello ", "", ""]
    assert matcher.stopped


def test_partial_prefix_released_when_it_turns_out_not_to_stop() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.push("an E") == "an "
    assert matcher.push("gg") == "Egg"
    assert not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    assert feed(StopMatcher(("b", "a")), ["xxab"]) == "xx"


def test_a_stop_ending_first_wins_over_one_starting_earlier() -> None:
    # "bc" is complete at "abc" while "abcd" is not yet: the reply ends there,
    # whether the text came in one piece or several.
    for pieces in (["abcd"], ["ab", "cd"], list("abcd")):
        assert feed(StopMatcher(("abcd", "bc")), pieces) == "a"


def test_longest_stop_ending_at_the_same_place_is_cut() -> None:
    assert feed(StopMatcher(("c", "abc")), ["xabc"]) == "x"


def test_self_overlapping_stop_found_after_a_false_start() -> None:
    assert feed(StopMatcher(("aab",)), ["a", "a", "a", "b", "tail"]) == "a"


def test_held_text_flushed_at_end() -> None:
    assert feed(StopMatcher(("END",)), ["tail E"]) == "tail E"


def test_no_stops_passes_everything() -> None:
    assert feed(StopMatcher(()), ["a", "b"]) == "ab"


def test_time_is_linear_in_the_text_for_adversarial_stops() -> None:
    # The text keeps matching the last stop while the others never match: the
    # old matcher re-sliced every prefix of the other stops on every piece,
    # cubic overall (4.6 s of CPU here for these 4000 characters).
    n = 4000
    matcher = StopMatcher(("b" * n, "c" * n, "d" * n, "a" * n))
    started = time.process_time()
    for _ in range(n - 1):
        assert matcher.push("a") == ""
    elapsed = time.process_time() - started
    assert not matcher.stopped
    assert elapsed < 0.5, f"{elapsed:.2f}s of CPU for {n} characters"
    assert matcher.push("a") == ""
    assert matcher.stopped


@given(
    text=st.text(alphabet="abc", max_size=40),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=5), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_matches_the_naive_reference_however_split(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    matcher = StopMatcher(tuple(stops))
    sent, seen = "", ""
    for piece in split(text, cuts):
        sent += matcher.push(piece)
        seen += piece
        if matcher.stopped:
            break
        # Everything is sent at once except the tail that may still begin a stop.
        assert seen.startswith(sent)
        assert len(seen) - len(sent) == reference_held(seen, tuple(stops))
    assert sent + matcher.flush() == reference_reply(text, tuple(stops))
