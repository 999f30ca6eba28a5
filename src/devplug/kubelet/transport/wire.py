"""gRPC on HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md): message framing, statuses, timeouts. No I/O.

A gRPC message on the wire is a 5-byte prefix (a compressed flag, a big-endian length) and
the protobuf bytes. The status of a call travels in trailers: ``grpc-status`` and a
percent-encoded ``grpc-message``.
"""

from __future__ import annotations

import enum
import struct

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
    """A call's answer is this status: handlers raise it, the transport sends it as trailers."""

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


class RequestBody:
    """The single request message of a unary or server-streaming call, arriving in pieces.

    Checked as soon as its prefix is in, so a message over ``limit`` is refused before it
    is buffered, and a compressed one before it is read.
    """

    __slots__ = ("_buf", "_limit", "_length")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._length = -1

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append request bytes; raises :class:`RpcError` for what the call must refuse."""
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
            raise RpcError(Status.INTERNAL, "more than one request message on a call that takes one")

    def message(self) -> bytes:
        """The complete message, once the client ended its side."""
        if self._length < 0 or len(self._buf) != PREFIX.size + self._length:
            raise RpcError(Status.INTERNAL, "the request ended before one whole message"
                           if self._buf else "no request message")
        return bytes(self._buf[PREFIX.size:])
