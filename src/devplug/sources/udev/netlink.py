"""Uevents straight off the netlink socket: kernel messages and udevd's re-broadcasts.

pyudev's monitor builds a libudev device per message through ctypes, which cost more than
everything else devplug does with an event. A uevent is a short list of ``KEY=VALUE``
strings, so this module reads and checks the message itself and hands on a dict; the
device record is built from it (``records.device_from_uevent``), lazily where it can be.
A device's messages repeat but for their sequence number, so :class:`Parser` parses each
only once.
Enumeration and parent lookups still go through libudev (pyudev).

The checks are libudev's (``device_monitor_receive_device`` in systemd 252): the sender's
credentials must be those of root (or our own uid); a message on the kernel group must come
from the kernel (netlink port 0); a udevd message must carry the ``libudev`` header with its
magic and a sane properties offset; a kernel message must start with ``ACTION@/DEVPATH``.
Anything else is ignored. A truncated message is ignored too.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Optional

NETLINK_KOBJECT_UEVENT = 15
GROUP_KERNEL = 1
GROUP_UDEV = 2
GROUPS = {"kernel": GROUP_KERNEL, "udev": GROUP_UDEV}

#: struct monitor_netlink_header: "libudev\0", magic (big-endian), then native uint32s:
#: header size, properties offset, properties length, and the filter hashes.
_PREFIX = b"libudev\0"
_MAGIC = struct.Struct(">I")
_OFFSETS = struct.Struct("=III")
UDEV_MONITOR_MAGIC = 0xFEEDCAFE
_UCRED = struct.Struct("iII")  # pid, uid, gid
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: The kernel's uevent buffer is 2 KiB of environment; udevd's messages are bigger (every
#: property): 64 KiB leaves room, and MSG_TRUNC tells when even that was not enough.
_MAX_MESSAGE = 64 * 1024
#: A plain int: ``flags & socket.MSG_TRUNC`` would go through enum.IntFlag's Python operators.
_MSG_TRUNC = int(socket.MSG_TRUNC)


def parse(data: bytes) -> Optional[dict[str, str]]:
    """The properties of one message (udevd's or the kernel's), None when it is malformed."""
    if data.startswith(_PREFIX):
        if len(data) < 40 or _MAGIC.unpack_from(data, 8)[0] != UDEV_MONITOR_MAGIC:
            return None
        _size, off, length = _OFFSETS.unpack_from(data, 12)
        if off + 32 > len(data):
            return None
        body = data[off:off + length] if length else data[off:]
    else:
        head, sep, body = data.partition(b"\0")
        if not sep or len(head) < 4 or b"@/" not in head:
            return None
    props: dict[str, str] = {}
    # One decode for the whole body: NUL never occurs inside a UTF-8 sequence, and
    # surrogateescape maps each invalid byte on its own, so this equals decoding each item.
    for item in body.decode("utf-8", "surrogateescape").split("\0"):
        key, eq, value = item.partition("=")
        if eq and key:
            props[key] = value
    return props if "DEVPATH" in props else None


#: Not in the memo (it keeps ``None`` for a malformed message).
_UNSEEN: dict[str, str] = {}


class Parser:
    """:func:`parse` with a memo: a message seen before but for its volatile values (a
    device's ``remove``, ``add`` and ``change`` repeat byte for byte but for ``SEQNUM``, and
    udevd's also for ``USEC_INITIALIZED``) is not parsed again; its properties are the
    memo's with the message's own values.

    Decoding and splitting ten ``KEY=VALUE`` items is cheap on a warm CPU, ~10 µs, but
    65-90 µs on one that just woke for the uevent. Finding the markers, one lookup and a
    dict copy cost 16-20 µs less there for a kernel message, 6-11 µs less for udevd's
    (in process, 3 ms asleep before each: 57 against 73-76 µs, 69 against 76-79).

    Exact: the key is the message with the volatile values cut out (their markers stay, so
    no message without them shares a key), so two messages with one key hold the same
    other items; a volatile key held twice is parsed as it is (the last one counts), and a
    cut never reaches outside udevd's property block.
    Bounded (devices pick their strings): ``limit`` messages of at most ``max_message``
    bytes, the oldest forgotten first.
    """

    def __init__(self, limit: int = 256, max_message: int = 4096) -> None:
        self.limit = limit
        self.max_message = max_message
        self.hits = 0
        self._memo: dict[bytes, Optional[dict[str, str]]] = {}

    def parse(self, data: bytes) -> Optional[dict[str, str]]:
        if data.startswith(_PREFIX):  # udevd's: cut only inside its property block
            if len(data) < 40:
                return None
            _size, start, length = _OFFSETS.unpack_from(data, 12)
            end = start + length if length else len(data)
        else:  # the kernel's: its header ends at the first NUL, so a marker is an item
            start, end = 0, len(data)
        i = j = k = data.find(b"\0SEQNUM=", start, end)
        if i < 0:
            key = data  # nothing volatile: the message is its own key
        else:
            j = k = data.find(b"\0", i + 8, end)
            if j < 0:
                j = k = end
            # The values go, their markers stay: no key of a message without them. udevd
            # writes USEC_INITIALIZED right after SEQNUM (systemd 252); anywhere else it
            # stays in the key (exact, only not shared).
            if data.startswith(b"\0USEC_INITIALIZED=", j, end):
                k = data.find(b"\0", j + 18, end)
                if k < 0:
                    k = end
                key = data[:i + 8] + data[j:j + 18] + data[k:]
                rest = end - (j - i - 8) - (k - j - 18)
                if key.count(b"\0USEC_INITIALIZED=", start, rest) != 1:
                    return parse(data)  # twice: the last one counts, and the key would hide it
            else:
                key = data[:i + 8] + data[j:]
                rest = end - (j - i - 8)
            if key.find(b"\0SEQNUM=", i + 1, rest) >= 0:
                return parse(data)
        props = self._memo.get(key, _UNSEEN)
        if props is _UNSEEN:
            return self._keep(data, key)
        if props is None:
            return None
        self.hits += 1
        out = dict(props)  # the caller's own
        if i >= 0:
            out["SEQNUM"] = data[i + 8:j].decode("utf-8", "surrogateescape")
            if k != j:
                out["USEC_INITIALIZED"] = data[j + 18:k].decode("utf-8", "surrogateescape")
        return out

    def _keep(self, data: bytes, key: bytes) -> Optional[dict[str, str]]:
        """A message not seen before: parsed, and kept under ``key``."""
        props = parse(data)
        if len(data) <= self.max_message:
            memo = self._memo
            memo[key] = props
            if len(memo) > self.limit:
                del memo[next(iter(memo))]
        return None if props is None else dict(props)  # the caller's own


def _nothing() -> None:
    pass


class UeventSocket:
    """A non-blocking netlink uevent socket bound to the kernel's or udevd's group.

    ``on_lost`` is called for a message that could not be read whole (``MSG_TRUNC``): its
    device is unknown, so whoever relies on seeing every message must stop relying on it.
    """

    def __init__(self, source: str, receive_buffer: int = 0) -> None:
        self.group = GROUPS[source]
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                             NETLINK_KOBJECT_UEVENT)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.buffer_error: Optional[OSError] = None
            if receive_buffer:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
                except OSError as exc:  # no CAP_NET_ADMIN: as much as net.core.rmem_max allows
                    self.buffer_error = exc
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((0, self.group))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._uid = os.geteuid()
        self._cmsg_size = socket.CMSG_SPACE(_UCRED.size)
        self.on_lost: Callable[[], None] = _nothing
        self.parser = Parser()
        self._parse = self.parser.parse

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def receive_buffer(self) -> int:
        """The socket's actual receive buffer (the kernel doubles what was asked)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self) -> None:
        self._sock.close()

    def receive(self) -> Optional[dict[str, str]]:
        """The next acceptable message's properties; None when nothing is queued.

        Raises ``OSError(ENOBUFS)`` when the kernel dropped messages (the socket's buffer
        overflowed); the next call reads on. Unacceptable messages are skipped.
        """
        while True:
            try:
                data, anc, flags, addr = self._sock.recvmsg(_MAX_MESSAGE, self._cmsg_size)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            props = self._accept(data, anc, flags, addr)
            if props is not None:
                return props

    def _accept(self, data: bytes, anc: list, flags: int, addr: object) -> Optional[dict[str, str]]:
        if flags & _MSG_TRUNC:
            self.on_lost()
            return None
        if not data:
            return None
        if isinstance(addr, tuple) and len(addr) >= 2:
            port, groups = addr[0], addr[1]
            if groups == GROUP_KERNEL and port != 0:
                return None  # on the kernel's group, only the kernel speaks
            if groups == 0:
                return None  # unicast: nobody we trust sends us those
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                _pid, uid, _gid = _UCRED.unpack_from(payload)
                if uid not in (0, self._uid):
                    return None
                break
        else:
            return None  # no credentials: libudev ignores such messages too
        return self._parse(data)

    def drain(self, limit: int) -> tuple[int, int]:
        """Discard what is queued (at most ``limit`` messages): (discarded, overflows seen)."""
        dropped = overflows = 0
        while dropped < limit:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overflows += 1
                continue
            if not data:
                break
            dropped += 1
        return dropped, overflows
