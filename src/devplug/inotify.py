"""A small inotify binding for trio: event-driven file watching without threads or timers.

devplug watches the kubelet plugin directory (a kubelet restart deletes our sockets and
recreates ``kubelet.sock``), ``HOSTPATH`` parents and the rules directory. inotify gives
those changes the moment they happen; ``trio.lowlevel.wait_readable`` on the non-blocking
descriptor means an idle watcher costs nothing. Only the standard C library is needed
(through ctypes), so this works in any container with Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Optional

import attrs
import trio

__all__ = [
    "Inotify",
    "InotifyEvent",
    "Mask",
    "parse_events",
    "sync_watches",
]


class Mask(enum.IntFlag):
    """Event bits (``<sys/inotify.h>``); also the flags accepted by :meth:`Inotify.add_watch`."""

    ACCESS = 0x00000001
    MODIFY = 0x00000002
    ATTRIB = 0x00000004
    CLOSE_WRITE = 0x00000008
    CLOSE_NOWRITE = 0x00000010
    OPEN = 0x00000020
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    CREATE = 0x00000100
    DELETE = 0x00000200
    DELETE_SELF = 0x00000400
    MOVE_SELF = 0x00000800
    # Set by the kernel only:
    UNMOUNT = 0x00002000
    Q_OVERFLOW = 0x00004000
    IGNORED = 0x00008000
    ISDIR = 0x40000000
    # Watch options:
    ONLYDIR = 0x01000000
    DONT_FOLLOW = 0x02000000
    EXCL_UNLINK = 0x04000000
    MASK_CREATE = 0x10000000
    MASK_ADD = 0x20000000
    ONESHOT = 0x80000000
    # Combinations:
    CLOSE = CLOSE_WRITE | CLOSE_NOWRITE
    MOVE = MOVED_FROM | MOVED_TO
    ALL_EVENTS = 0x00000FFF


# Module-level aliases in the C spelling, for readers who know inotify(7).
IN_ACCESS = Mask.ACCESS
IN_MODIFY = Mask.MODIFY
IN_ATTRIB = Mask.ATTRIB
IN_CLOSE_WRITE = Mask.CLOSE_WRITE
IN_CLOSE_NOWRITE = Mask.CLOSE_NOWRITE
IN_OPEN = Mask.OPEN
IN_MOVED_FROM = Mask.MOVED_FROM
IN_MOVED_TO = Mask.MOVED_TO
IN_CREATE = Mask.CREATE
IN_DELETE = Mask.DELETE
IN_DELETE_SELF = Mask.DELETE_SELF
IN_MOVE_SELF = Mask.MOVE_SELF
IN_UNMOUNT = Mask.UNMOUNT
IN_Q_OVERFLOW = Mask.Q_OVERFLOW
IN_IGNORED = Mask.IGNORED
IN_ISDIR = Mask.ISDIR
IN_ONLYDIR = Mask.ONLYDIR
IN_DONT_FOLLOW = Mask.DONT_FOLLOW
IN_EXCL_UNLINK = Mask.EXCL_UNLINK
IN_MASK_ADD = Mask.MASK_ADD
IN_ONESHOT = Mask.ONESHOT
IN_ALL_EVENTS = Mask.ALL_EVENTS

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_HEADER = struct.Struct("iIII")
# Large enough for many events at once; the kernel never splits one event across reads.
_READ_SIZE = 64 * 1024


@attrs.frozen(slots=True)
class InotifyEvent:
    """One event. ``name`` is the entry inside a watched directory, ``""`` for the watch itself."""

    wd: int
    mask: Mask
    cookie: int
    name: str

    def __contains__(self, bits: int) -> bool:
        return bool(self.mask & bits)


def parse_events(buf: bytes) -> Iterator[InotifyEvent]:
    """Decode a buffer read from an inotify descriptor (pure, for tests and the reader)."""
    offset = 0
    end = len(buf)
    while offset + _HEADER.size <= end:
        wd, mask, cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        raw = buf[offset : offset + length]
        offset += length
        name = os.fsdecode(raw.split(b"\0", 1)[0]) if length else ""
        yield InotifyEvent(wd, Mask(mask), cookie, name)
    if offset != end:
        raise ValueError(f"truncated inotify event buffer ({end - offset} bytes left)")


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = _load_libc()
    return _libc


def _raise_errno(what: str, path: str | None = None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


class Inotify:
    """One inotify instance (a non-blocking, close-on-exec descriptor) and its watches.

    Use it as a context manager, or call :meth:`close`. :meth:`events` is an async iterator
    for trio; :meth:`read_events` drains what is queued without waiting.
    """

    def __init__(self) -> None:
        fd = _c().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self._fd: int = fd
        self._pending: list[InotifyEvent] = []

    # ---- watches -------------------------------------------------------------------------
    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch ``path`` for ``mask``; returns the watch descriptor (the same one for the
        same inode, so adding twice replaces the mask unless ``MASK_ADD`` is given)."""
        p = os.fspath(path)
        wd = _c().inotify_add_watch(self._checked_fd(), os.fsencode(p), int(mask) & 0xFFFFFFFF)
        if wd < 0:
            _raise_errno("inotify_add_watch", p)
        return wd

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; a watch the kernel already dropped (its path vanished) is fine."""
        if _c().inotify_rm_watch(self._checked_fd(), wd) < 0:
            if ctypes.get_errno() == errno.EINVAL:
                return
            _raise_errno("inotify_rm_watch")

    # ---- reading ---------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._checked_fd()

    def read_events(self) -> list[InotifyEvent]:
        """Every event queued right now (possibly none); never blocks."""
        events = self._pending
        self._pending = []
        fd = self._checked_fd()
        while True:
            try:
                buf = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return events
            events.extend(parse_events(buf))

    async def wait(self) -> list[InotifyEvent]:
        """Wait for at least one event and return every event queued (a batch)."""
        while True:
            events = self.read_events()
            if events:
                return events
            await trio.lowlevel.wait_readable(self._checked_fd())

    async def events(self) -> AsyncIterator[InotifyEvent]:
        """Yield events as they come, forever (until cancelled or closed)."""
        while True:
            batch = await self.wait()
            for i, event in enumerate(batch):
                try:
                    yield event
                except BaseException:
                    # Keep what the consumer did not see, for a later read.
                    self._pending[:0] = batch[i + 1 :]
                    raise

    # ---- lifetime -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor (and every watch); a task waiting on it gets ClosedResourceError."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            trio.lowlevel.notify_closing(fd)
        except RuntimeError:  # not inside trio: nobody can be waiting
            pass
        os.close(fd)

    def _checked_fd(self) -> int:
        if self._fd < 0:
            raise trio.ClosedResourceError("inotify instance is closed")
        return self._fd

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


def sync_watches(ino: Inotify, watched: dict[str, int], wanted: set[str], mask: int,
                 on_error: Optional[Callable[[str, OSError], None]] = None) -> None:
    """Make ``watched`` (directory → wd) cover exactly ``wanted``: drop the rest, add the new.

    A directory that vanished between deciding and watching is reported to ``on_error``
    and skipped: its parent's watch reports it coming back.
    """
    for d in list(watched):
        if d not in wanted:
            ino.rm_watch(watched.pop(d))
    for d in wanted - watched.keys():
        try:
            watched[d] = ino.add_watch(d, mask)
        except OSError as exc:
            if on_error is not None:
                on_error(d, exc)
