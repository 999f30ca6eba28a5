"""udevd's database entries written after the kernel's event (the kernel source).

The kernel's uevent reaches devplug before udevd has run its rules; udevd writes the
device's database entry (its ``by-id``/``by-path`` symlinks, ``ID_*`` properties, tags) a
moment later and sends nothing on the kernel's netlink group. So for each present device of
the wanted subsystems the source remembers the last event it reported, and when udevd
writes that device's database file (a rename into ``/run/udev/data``: inotify
``MOVED_TO``), the source reports the same event again with udevd's view merged in. The
inventory then holds the links Allocate hands out, as with the udev source. A write whose
file the event already read (same inode and ctime: the daemon was busy and udevd got there
first, as in a burst) repeats nothing.

The same watch keeps each file's content as last read (:meth:`DbWatch.entry`), dropped when
inotify says udevd wrote it: a device's next event reads no file unless it changed (opening,
reading and closing one was ~40 µs of each event on a CPU that just woke); a device that
left has no file (udevd deleted it) until udevd writes its next one. A write not yet
read from inotify when an event is handled is the race reading the file had too (udevd may
write right after the read): the write's repeat follows once the socket is drained.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Optional

from ...lib.inotify import Inotify, Mask
from . import db

#: Remembered devices at most (the wanted subsystems' present devices; oldest go first).
LIMIT = 4096


class DbWatch:
    def __init__(self, db_dir: str, limit: int = LIMIT) -> None:
        self.db_dir = db_dir
        self._limit = limit
        self._ino: Optional[Inotify] = None
        # db file name -> (action, props, the stamp of the database file the event read)
        self._last: dict[str, tuple[str, dict[str, str], Optional[tuple[int, int]]]] = {}
        self._entries: dict[str, Optional[db.DbEntry]] = {}  # file name -> as last read (None: none)
        self.skipped = 0  # writes not repeated: their content had been read with the event
        self.reads = 0  # database files read

    @staticmethod
    def available(db_dir: str) -> bool:
        return os.path.isdir(db_dir)

    def open(self) -> None:
        ino = Inotify()
        try:
            ino.add_watch(self.db_dir, Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.ONLYDIR)
        except OSError:
            ino.close()
            raise
        self._ino = ino

    def close(self) -> None:
        ino, self._ino = self._ino, None
        if ino is not None:
            ino.close()

    def fileno(self) -> int:
        assert self._ino is not None
        return self._ino.fileno()

    def entry(self, name: str) -> Optional[db.DbEntry]:
        """The content of database file ``name`` (``None``: no such file), read only if it
        was not read since udevd last wrote it."""
        try:
            return self._entries[name]
        except KeyError:
            pass
        found = self._entries[name] = db.read_db_file(name, self.db_dir)
        self.reads += 1
        self._trim()
        return found

    def _trim(self) -> None:
        while len(self._entries) > self._limit:
            del self._entries[next(iter(self._entries))]

    def seen(self, name: Optional[str], action: str, props: dict[str, str], present: bool,
             stamp: Optional[tuple[int, int]] = None) -> None:
        """The source reported this event of the device whose database file is ``name``
        (``db.db_name``), having read its content with ``stamp``; a later database write for
        it repeats it. A device that left takes its file's content along (udevd deletes it,
        which inotify does not report here): another device under that name must not be
        read as this one. So its file is known absent until udevd writes it again (for the
        device's next ``add``), which inotify reports: that ``add`` opens no file udevd has
        not written yet (it had not, when read: ~15 µs of a cold failing ``open``)."""
        if name is None:
            return
        self._last.pop(name, None)
        if not present:
            self._entries.pop(name, None)
            self._entries[name] = None
            self._trim()
        else:
            self._last[name] = (action, props, stamp)
            while len(self._last) > self._limit:
                del self._last[next(iter(self._last))]

    def changed(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(action, a copy of its properties) of each remembered device whose database file
        udevd wrote since the last call (each once)."""
        assert self._ino is not None
        names = {ev.name for ev in self._ino.read_events() if ev.name and not ev.name.startswith(".")}
        for name in names:
            self._entries.pop(name, None)  # written: read again when next asked
        for name in sorted(names):
            last = self._last.get(name)
            if last is None:
                continue
            action, props, stamp = last
            if stamp is not None and db.db_stamp(name, self.db_dir) == stamp:
                self.skipped += 1
                continue
            yield action, dict(props)
