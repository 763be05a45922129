import itertools

from hypothesis import given
from hypothesis import strategies as st

from exoquic.orchestration.stops import StopMatcher


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.push(p) for p in pieces)
    return out + matcher.flush()


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


def test_held_text_flushed_at_end() -> None:
    assert feed(StopMatcher(("END",)), ["tail E"]) == "tail E"


def test_no_stops_passes_everything() -> None:
    assert feed(StopMatcher(()), ["a", "b"]) == "ab"


@given(
    text=st.text(alphabet="abc", max_size=40),
    stop=st.text(alphabet="abc", min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_output_is_text_before_first_stop_however_split(
    text: str, stop: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    expected = text.split(stop)[0]
    assert feed(StopMatcher((stop,)), pieces) == expected
