"""payShield host-message framing, sans I/O: bytes in, messages out, and back.

A host message on the wire is a 2-byte big-endian length of the rest, then a header of a fixed,
configured length (returned unchanged), a 2-character command code and the command's fields.
A response carries the same header, the response code (the command code with its second
character advanced by one: ``NC`` -> ``ND``), a 2-digit error code and the response fields.

The parser never touches a socket: feed it bytes with `HostMessageParser.receive_data` and take
whole messages with `HostMessageParser.next_message`. A stream that cannot be framed (a length
past the limit, a message too short to hold header and command code) raises `FramingError`;
the transport closes that connection, since it cannot find the next message boundary.

>>> parser = HostMessageParser(header_length=4)
>>> parser.receive_data(b"\\x00\\x06HEADNC")
>>> message = parser.next_message()
>>> message.header, message.command, message.body
(b'HEAD', 'NC', b'')
>>> build_response(b"HEAD", "NC", "00", b"5D67270000000000")
b'\\x00\\x18HEADND005D67270000000000'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FRAME_SIZE_MAX_DEFAULT",
    "HEADER_LENGTH_DEFAULT",
    "LENGTH_PREFIX_SIZE",
    "FramingError",
    "HostMessage",
    "HostMessageParser",
    "HostResponse",
    "build_request",
    "build_response",
    "parse_response",
    "response_code",
]

LENGTH_PREFIX_SIZE = 2
HEADER_LENGTH_DEFAULT = 4
HEADER_LENGTH_MAX = 255
COMMAND_CODE_LENGTH = 2
ERROR_CODE_LENGTH = 2
# The 2-byte prefix allows 65535; a payShield's host buffer is far smaller (32 KiB at most).
FRAME_SIZE_MAX_DEFAULT = 32_768
FRAME_SIZE_MAX_LIMIT = 0xFFFF


class FramingError(ValueError):
    """The peer sent bytes that cannot be split into host messages; close the connection."""


@dataclass(frozen=True)
class HostMessage:
    """One framed request: the header (echoed back), the command code and the raw fields."""

    header: bytes
    command_bytes: bytes
    body: bytes

    @property
    def command(self) -> str:
        """The command code as text (non-ASCII bytes shown as replacement characters)."""
        return self.command_bytes.decode("ascii", errors="replace")


@dataclass(frozen=True)
class HostResponse:
    """One parsed response: header, response code, error code and the response fields."""

    header: bytes
    response_code: str
    error_code: str
    body: bytes


def _check_header_length(header_length: int) -> None:
    if not 0 <= header_length <= HEADER_LENGTH_MAX:
        raise ValueError(f"header length must be 0..{HEADER_LENGTH_MAX}, got {header_length}")


class HostMessageParser:
    """Incremental splitter of a byte stream into host messages (requests or responses).

    ``frame_size_max`` bounds the length prefix (bytes after it); a larger value is a
    `FramingError`, raised before any of the oversized message is buffered.
    """

    def __init__(
        self,
        header_length: int = HEADER_LENGTH_DEFAULT,
        frame_size_max: int = FRAME_SIZE_MAX_DEFAULT,
    ) -> None:
        _check_header_length(header_length)
        if not header_length + COMMAND_CODE_LENGTH <= frame_size_max <= FRAME_SIZE_MAX_LIMIT:
            raise ValueError(f"frame_size_max {frame_size_max} is outside the 2-byte length range")
        self.header_length = header_length
        self.frame_size_max = frame_size_max
        self._buffer = bytearray()

    @property
    def buffered_size(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole message without its length prefix, or None if more bytes are needed."""
        if len(self._buffer) < LENGTH_PREFIX_SIZE:
            return None
        length = int.from_bytes(self._buffer[:LENGTH_PREFIX_SIZE], "big")
        minimum = self.header_length + COMMAND_CODE_LENGTH
        if length > self.frame_size_max:
            raise FramingError(f"message length {length} exceeds the limit {self.frame_size_max}")
        if length < minimum:
            raise FramingError(
                f"message length {length} cannot hold a {self.header_length}-byte header "
                "and a command code"
            )
        end = LENGTH_PREFIX_SIZE + length
        if len(self._buffer) < end:
            return None
        frame = bytes(self._buffer[LENGTH_PREFIX_SIZE:end])
        del self._buffer[:end]
        return frame

    def next_message(self) -> HostMessage | None:
        """The next request, split into header, command code and fields; None if incomplete."""
        frame = self.next_frame()
        if frame is None:
            return None
        code_end = self.header_length + COMMAND_CODE_LENGTH
        return HostMessage(
            header=frame[: self.header_length],
            command_bytes=frame[self.header_length : code_end],
            body=frame[code_end:],
        )


def response_code(command: bytes | str) -> bytes:
    """The response code of a command: second character advanced by one (``CA`` -> ``CB``).

    >>> response_code("NC")
    b'ND'
    """
    raw = command.encode("ascii", errors="replace") if isinstance(command, str) else command
    if len(raw) != COMMAND_CODE_LENGTH:
        raise ValueError(f"a command code has 2 characters, got {raw!r}")
    return raw[:1] + bytes([(raw[1] + 1) % 256])


def _frame(payload: bytes) -> bytes:
    if len(payload) > FRAME_SIZE_MAX_LIMIT:
        raise ValueError(f"message of {len(payload)} bytes does not fit a 2-byte length")
    return len(payload).to_bytes(LENGTH_PREFIX_SIZE, "big") + payload


def build_response(header: bytes, command: bytes | str, error_code: str, fields: bytes) -> bytes:
    """A framed response: length, header, response code, 2-digit error code, fields."""
    if len(error_code) != ERROR_CODE_LENGTH:
        raise ValueError(f"error code must be 2 characters, got {error_code!r}")
    return _frame(header + response_code(command) + error_code.encode("ascii") + fields)


def build_request(header: bytes, command: str, fields: bytes) -> bytes:
    """A framed request: length, header, command code, fields."""
    code = command.encode("ascii")
    if len(code) != COMMAND_CODE_LENGTH:
        raise ValueError(f"a command code has 2 characters, got {command!r}")
    return _frame(header + code + fields)


def parse_response(frame: bytes, header_length: int = HEADER_LENGTH_DEFAULT) -> HostResponse:
    """Split a response frame (without its length prefix) into its parts."""
    _check_header_length(header_length)
    minimum = header_length + COMMAND_CODE_LENGTH + ERROR_CODE_LENGTH
    if len(frame) < minimum:
        raise FramingError(f"response of {len(frame)} bytes is shorter than {minimum}")
    code_end = header_length + COMMAND_CODE_LENGTH
    error_end = code_end + ERROR_CODE_LENGTH
    return HostResponse(
        header=frame[:header_length],
        response_code=frame[header_length:code_end].decode("ascii", errors="replace"),
        error_code=frame[code_end:error_end].decode("ascii", errors="replace"),
        body=frame[error_end:],
    )
