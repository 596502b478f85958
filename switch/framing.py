"""Sans-IO framing: split a TCP byte stream into messages and frame messages for sending.

Feed bytes with :meth:`Framer.receive_data`, take whole frames with :meth:`Framer.next_frame`
(None means "need more data"). A bad or oversized length prefix raises :class:`FramingError`;
the stream cannot be resynchronised after that, so the caller closes the connection without
processing anything from it (pos-interface.md §1).

>>> f = Framer(Framing.ASCII4, frame_size_max=4096)
>>> f.receive_data(b"0004ab")
>>> f.next_frame() is None
True
>>> f.receive_data(b"cd")
>>> f.next_frame()
b'abcd'
"""

from __future__ import annotations

from switch.dialects.base import Framing

PREFIX_SIZE = {Framing.ASCII4: 4, Framing.BINARY2: 2}


class FramingError(ValueError):
    """The peer sent a length prefix that cannot be accepted; the stream is unusable."""


class Framer:
    """Incremental length-prefix parser for one connection."""

    def __init__(self, framing: Framing, *, frame_size_max: int) -> None:
        assert frame_size_max > 0
        self.framing = framing
        self.frame_size_max = frame_size_max
        self._buffer = bytearray()
        self._prefix_size = PREFIX_SIZE[framing]

    @property
    def buffered_size(self) -> int:
        """Bytes received and not yet returned as frames (a partial frame at EOF)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next whole frame's payload, or None when more bytes are needed."""
        if len(self._buffer) < self._prefix_size:
            return None
        size = parse_prefix(bytes(self._buffer[: self._prefix_size]), self.framing)
        if size > self.frame_size_max:
            raise FramingError(
                f"frame of {size} bytes exceeds frame_size_max {self.frame_size_max}"
            )
        end = self._prefix_size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[self._prefix_size : end])
        del self._buffer[:end]
        return payload


def parse_prefix(prefix: bytes, framing: Framing) -> int:
    """The payload size a length prefix announces; raises :class:`FramingError` if invalid."""
    if framing is Framing.ASCII4:
        if not (len(prefix) == 4 and prefix.isdigit()):
            raise FramingError(f"length prefix {prefix!r} is not 4 ASCII digits")
        size = int(prefix)
    else:
        size = int.from_bytes(prefix, "big")
    if size == 0:
        raise FramingError("empty frame (length 0)")
    return size


def frame(payload: bytes, framing: Framing) -> bytes:
    """Prefix ``payload`` with its length."""
    size = len(payload)
    if size == 0:
        raise ValueError("an empty payload cannot be framed (length 0 is refused by receivers)")
    if framing is Framing.ASCII4:
        if size > 9999:
            raise ValueError(f"payload of {size} bytes does not fit a 4-digit length")
        return b"%04d" % size + payload
    if size > 0xFFFF:
        raise ValueError(f"payload of {size} bytes does not fit a 2-byte length")
    return size.to_bytes(2, "big") + payload
