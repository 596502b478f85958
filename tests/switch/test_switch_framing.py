"""Sans-IO framing, fed the way a TCP stream delivers bytes: one at a time, or many at once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.dialects.base import Framing
from switch.framing import PREFIX_SIZE, Framer, FramingError, frame, parse_prefix

PAYLOADS = [b"0800" + b"x" * 30, b"a", b"0200" + bytes(range(256)), b"\x00" * 9]


def drain(framer: Framer) -> list[bytes]:
    frames = []
    while (payload := framer.next_frame()) is not None:
        frames.append(payload)
    return frames


@pytest.mark.parametrize("framing", list(Framing))
def test_frames_fed_one_byte_at_a_time(framing: Framing) -> None:
    stream = b"".join(frame(payload, framing) for payload in PAYLOADS)
    framer = Framer(framing, frame_size_max=4096)
    received: list[bytes] = []
    for index in range(len(stream)):
        framer.receive_data(stream[index : index + 1])
        received += drain(framer)
    assert received == PAYLOADS
    assert framer.buffered_size == 0


@pytest.mark.parametrize("framing", list(Framing))
def test_partial_frame_waits_for_more(framing: Framing) -> None:
    framer = Framer(framing, frame_size_max=4096)
    whole = frame(b"abcdef", framing)
    framer.receive_data(whole[:-1])
    assert framer.next_frame() is None
    assert framer.buffered_size == len(whole) - 1
    framer.receive_data(whole[-1:])
    assert framer.next_frame() == b"abcdef"
    assert framer.next_frame() is None


@pytest.mark.parametrize("framing", list(Framing))
def test_several_frames_in_one_chunk(framing: Framing) -> None:
    framer = Framer(framing, frame_size_max=4096)
    tail = frame(b"next one", framing)
    framer.receive_data(b"".join(frame(payload, framing) for payload in PAYLOADS) + tail[:3])
    assert drain(framer) == PAYLOADS
    assert framer.buffered_size == 3
    framer.receive_data(tail[3:])
    assert drain(framer) == [b"next one"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Framing)),
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(1, 50), min_size=1, max_size=40),
)
def test_any_chunking_gives_the_same_frames(
    framing: Framing, payloads: list[bytes], chunk_sizes: list[int]
) -> None:
    stream = b"".join(frame(payload, framing) for payload in payloads)
    framer = Framer(framing, frame_size_max=300)
    received: list[bytes] = []
    position = 0
    index = 0
    while position < len(stream):
        size = chunk_sizes[index % len(chunk_sizes)]
        framer.receive_data(stream[position : position + size])
        received += drain(framer)
        position += size
        index += 1
    assert received == payloads
    assert framer.buffered_size == 0


@pytest.mark.parametrize(
    ("framing", "prefix"),
    [(Framing.ASCII4, b"0101"), (Framing.BINARY2, b"\x00\x65")],  # 101 bytes
)
def test_oversized_length_raises_before_the_payload_arrives(
    framing: Framing, prefix: bytes
) -> None:
    framer = Framer(framing, frame_size_max=100)
    framer.receive_data(prefix)
    with pytest.raises(FramingError, match="frame_size_max 100"):
        framer.next_frame()


@pytest.mark.parametrize(
    ("framing", "prefix"),
    [(Framing.ASCII4, b"0100"), (Framing.BINARY2, b"\x00\x64")],  # exactly 100 bytes
)
def test_length_at_the_maximum_is_accepted(framing: Framing, prefix: bytes) -> None:
    framer = Framer(framing, frame_size_max=100)
    framer.receive_data(prefix + b"p" * 100)
    assert framer.next_frame() == b"p" * 100


@pytest.mark.parametrize(
    "prefix", [b"01a0", b" 100", b"+100", b"-100", b"0x10", b"\xd9\xa1\xd9\xa0"]
)
def test_non_digit_ascii_prefix_raises(prefix: bytes) -> None:
    framer = Framer(Framing.ASCII4, frame_size_max=4096)
    framer.receive_data(prefix + b"payload")
    with pytest.raises(FramingError, match="4 ASCII digits"):
        framer.next_frame()


def test_short_ascii_prefix_waits_rather_than_fails() -> None:
    framer = Framer(Framing.ASCII4, frame_size_max=4096)
    framer.receive_data(b"00")
    assert framer.next_frame() is None


@pytest.mark.parametrize(
    ("framing", "prefix"), [(Framing.ASCII4, b"0000"), (Framing.BINARY2, b"\0\0")]
)
def test_zero_length_raises(framing: Framing, prefix: bytes) -> None:
    framer = Framer(framing, frame_size_max=4096)
    framer.receive_data(prefix)
    with pytest.raises(FramingError, match="length 0"):
        framer.next_frame()


def test_bad_frame_after_a_good_one_still_yields_the_good_one_first() -> None:
    framer = Framer(Framing.ASCII4, frame_size_max=4096)
    framer.receive_data(frame(b"good", Framing.ASCII4) + b"XXXX")
    assert framer.next_frame() == b"good"
    with pytest.raises(FramingError):
        framer.next_frame()


@pytest.mark.parametrize(
    ("framing", "payload", "wire"),
    [
        (Framing.ASCII4, b"abc", b"0003abc"),
        (Framing.ASCII4, b"x" * 149, b"0149" + b"x" * 149),
        (Framing.BINARY2, b"abc", b"\x00\x03abc"),
        (Framing.BINARY2, b"x" * 300, b"\x01\x2c" + b"x" * 300),
    ],
)
def test_frame_known_answers(framing: Framing, payload: bytes, wire: bytes) -> None:
    assert frame(payload, framing) == wire
    assert parse_prefix(wire[: PREFIX_SIZE[framing]], framing) == len(payload)


@pytest.mark.parametrize(
    ("framing", "largest"), [(Framing.ASCII4, 9999), (Framing.BINARY2, 0xFFFF)]
)
def test_frame_round_trip_at_the_largest_size(framing: Framing, largest: int) -> None:
    payload = b"z" * largest
    framer = Framer(framing, frame_size_max=largest)
    framer.receive_data(frame(payload, framing))
    assert framer.next_frame() == payload


@pytest.mark.parametrize(
    ("framing", "too_big"), [(Framing.ASCII4, 10_000), (Framing.BINARY2, 0x10000)]
)
def test_frame_of_too_big_payload_raises(framing: Framing, too_big: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        frame(b"z" * too_big, framing)
