"""Which device paths the uevents read so far have named, so a device's ancestors can be
vouched for without looking at sysfs.

A device's parent chain changes only when an ancestor is added, removed or moved, and the
kernel sends a uevent for each of those, to every listener and in order (the source reads
every message, whatever its subsystem, before it filters them). So if no message read
since a device's last rules pass named one of its ancestors, the parent records of that
pass are still the chain; :meth:`Ancestry.stamp` says when that last happened, and the
recall (``core.recall``) compares stamps instead of walking sysfs (a path lookup costs
~50 µs on a CPU that just woke: most of a remembered ``add``).

Every action counts (a ``change`` or ``bind`` of an ancestor too: cheaper than deciding
which cannot matter). Lost messages (a receive buffer overflow) vouch for nothing before
them. Bounded: past ``limit`` paths the table starts over from a floor every stamp
starts from (as after lost messages): stamps then differ once, and the recall looks at
sysfs, as without this. Starting over, not forgetting the oldest one by one: evicting from
the front of a dict that is also updated leaves deleted slots that each eviction scans.
"""

from __future__ import annotations

import itertools

#: One clock for every instance: a source reopened (new rules) never repeats a stamp.
_TICKS = itertools.count(1)


class Ancestry:
    #: Paths remembered at most before the table starts over.
    LIMIT = 4096

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._named: dict[str, int] = {}  # devpath -> tick of the last message naming it
        self._floor = next(_TICKS)

    def note(self, devpath: str) -> None:
        """A message named ``devpath`` (its ``DEVPATH``, or the ``DEVPATH_OLD`` of a move)."""
        named = self._named
        named[devpath] = next(_TICKS)
        if len(named) > self._limit:
            self.lost()

    def lost(self) -> None:
        """Messages were dropped: nothing read before is vouched for."""
        self._named.clear()
        self._floor = next(_TICKS)

    def stamp(self, devpath: str) -> int:
        """The tick of the last message that named an ancestor of ``devpath`` (or the floor):
        equal stamps at two moments mean no message named one in between."""
        stamp, named, path = self._floor, self._named, devpath
        while True:
            path = path.rpartition("/")[0]
            if not path:
                return stamp
            tick = named.get(path)
            if tick is not None and tick > stamp:
                stamp = tick

    def __len__(self) -> int:
        return len(self._named)
