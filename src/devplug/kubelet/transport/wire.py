"""gRPC on HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md): message framing, statuses, timeouts. No I/O.
Shared by the server and the client.

A gRPC message on the wire is a 5-byte prefix (a compressed flag, a big-endian length) and
the protobuf bytes. The status of a call travels in trailers: ``grpc-status`` and a
percent-encoded ``grpc-message``.
"""

from __future__ import annotations

import enum
import math
import struct
import urllib.parse

PREFIX = struct.Struct(">BI")

#: Response headers of every call that answers (trailers follow).
RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


class Status(enum.IntEnum):
    """gRPC status codes (the numbers on the wire)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call's answer is this status: server handlers raise it (the transport sends it as
    trailers), and the client raises it with the status a call ended with."""

    def __init__(self, code: Status, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return PREFIX.pack(0, len(message)) + message


def percent_encode(text: str) -> bytes:
    """``grpc-message``: UTF-8, with bytes outside printable ASCII and ``%`` as ``%XX``."""
    raw = text.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def percent_decode(raw: bytes) -> str:
    """A received ``grpc-message``: ``%XX`` decoded, then UTF-8 (invalid escapes kept as sent)."""
    return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "replace")


def trailers(code: Status, message: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", b"%d" % code)]
    if message:
        out.append((b"grpc-message", percent_encode(message)))
    return out


_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` in seconds: 1 to 8 ASCII digits and a unit (H M S m u n)."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or unit not in _UNITS:
        raise ValueError(f"malformed grpc-timeout {value.decode('ascii', 'replace')!r}")
    return int(digits) * _UNITS[unit]


def encode_timeout(seconds: float) -> bytes:
    """``grpc-timeout`` for ``seconds`` (> 0), rounded up to the finest unit that fits 8 digits."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        value = max(1, math.ceil(seconds * scale))
        if value <= 99_999_999:
            return b"%d%s" % (value, unit)
    return b"99999999H"


class MessageBody:
    """The single message of a call's request (server side) or of a unary response (client
    side), arriving in pieces.

    Checked as soon as its prefix is in, so a message over ``limit`` is refused before it
    is buffered, and a compressed one before it is read. ``kind`` names it in the errors.
    """

    __slots__ = ("_buf", "_limit", "_length", "_kind")

    def __init__(self, limit: int, kind: str = "request") -> None:
        self._buf = bytearray()
        self._limit = limit
        self._length = -1
        self._kind = kind

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append message bytes; raises :class:`RpcError` for what the call must refuse."""
        self._buf += data
        if self._length < 0 and len(self._buf) >= PREFIX.size:
            flag, length = PREFIX.unpack_from(self._buf)
            if flag == 1:
                raise RpcError(Status.UNIMPLEMENTED, "compressed messages are not supported (identity only)")
            if flag != 0:
                raise RpcError(Status.INTERNAL, f"invalid message flag {flag}")
            if length > self._limit:
                raise RpcError(Status.RESOURCE_EXHAUSTED,
                               f"received message larger than max ({length} vs. {self._limit})")
            self._length = length
        if self._length >= 0 and len(self._buf) > PREFIX.size + self._length:
            raise RpcError(Status.INTERNAL, f"more than one {self._kind} message on a call that has one")

    def message(self) -> bytes:
        """The complete message, once the peer ended its side."""
        if self._length < 0 or len(self._buf) != PREFIX.size + self._length:
            raise RpcError(Status.INTERNAL, f"the {self._kind} ended before one whole message"
                           if self._buf else f"no {self._kind} message")
        return bytes(self._buf[PREFIX.size:])
