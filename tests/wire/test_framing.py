import pytest

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from exoquic.wire.framing import FrameDecoder, encode_frame, frame_header


def test_encode_frame_prefixes_the_length() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame_header(3) + b"abc" == encode_frame(b"abc")
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_frames_come_out_whole_and_in_order() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three"))
    assert decoder.next_frame() == b"one"
    assert decoder.next_frame() == b""
    assert decoder.next_frame() == b"three"
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    decoder.end_of_stream()


def test_byte_by_byte_delivery() -> None:
    data = encode_frame(b"hello") + encode_frame(b"world")
    decoder = FrameDecoder()
    frames = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == [b"hello", b"world"]


def test_oversized_prefix_is_refused_before_the_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(b"\x00\x00")
    with pytest.raises(RemoteProtocolError, match="11-byte frame") as info:
        decoder.feed(b"\x00\x0b")
    assert info.value.error_code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError):  # stays broken
        decoder.feed(b"x")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_oversized_second_frame_is_refused_when_reached() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(encode_frame(b"ok") + b"\xff\xff\xff\xff")
    assert decoder.next_frame() == b"ok"
    with pytest.raises(RemoteProtocolError, match="over the 10-byte limit"):
        decoder.next_frame()


def test_frame_at_the_limit_is_fine() -> None:
    decoder = FrameDecoder(max_frame_size=4)
    decoder.feed(encode_frame(b"1234", max_frame_size=4))
    assert decoder.next_frame() == b"1234"


def test_stream_ending_inside_a_frame_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"hello")[:-1])
    assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError, match="inside a frame") as info:
        decoder.end_of_stream()
    assert info.value.error_code == ErrorCode.MALFORMED_FRAME


def test_sending_too_big_a_frame_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"12345", max_frame_size=4)
    assert info.value.error_code == ErrorCode.FRAME_TOO_LARGE


def test_limit_must_fit_the_prefix() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=1 << 32)
