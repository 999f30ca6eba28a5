"""inotify for trio: ``inotify_simple`` makes the system calls, trio waits on the descriptor.

devplug watches the kubelet plugin directory (a kubelet restart deletes our sockets and
recreates ``kubelet.sock``), ``HOSTPATH`` parents and the rules directories. The wrapper
exists only because ``inotify_simple.INotify.read`` blocks in ``poll()``: here the
descriptor is non-blocking and trio waits on it with ``wait_readable``, so an idle
watcher costs nothing and cancellation works.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Optional

import trio
from inotify_simple import INotify, Event
from inotify_simple import flags as Mask

__all__ = ["Event", "Inotify", "Mask", "sync_watches"]


class Inotify:
    """One inotify instance (non-blocking, close-on-exec) and its watches; a context manager."""

    def __init__(self) -> None:
        self._ino: Optional[INotify] = INotify(nonblocking=True)

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path``; errors name the path (inotify_simple's do not)."""
        try:
            return self._live().add_watch(path, mask)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already dropped (its directory vanished) is fine."""
        try:
            self._live().rm_watch(wd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise

    def read_events(self) -> list[Event]:
        """Every event queued right now (possibly none); never blocks."""
        return list(self._live().read(timeout=0))

    async def wait(self) -> list[Event]:
        """Wait for at least one event and return every event queued (a batch)."""
        while True:
            events = self.read_events()
            if events:
                return events
            await trio.lowlevel.wait_readable(self._live().fileno())

    def close(self) -> None:
        """Close the descriptor; a task waiting on it gets ``trio.ClosedResourceError``."""
        ino, self._ino = self._ino, None
        if ino is None:
            return
        try:
            trio.lowlevel.notify_closing(ino.fileno())
        except RuntimeError:  # not inside trio: nobody can be waiting
            pass
        ino.close()

    @property
    def closed(self) -> bool:
        return self._ino is None

    def fileno(self) -> int:
        return self._live().fileno()

    def _live(self) -> INotify:
        if self._ino is None:
            raise trio.ClosedResourceError("inotify instance is closed")
        return self._ino

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
