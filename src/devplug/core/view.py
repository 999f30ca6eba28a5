"""What a front door lists: the inventory, or the inventory as of the last publish.

Front doors (the kubelet plugins) read devices through four calls — ``version``,
``entries``, ``listed`` (the same entries, to read at once: no snapshot is made) and
``get`` — that :class:`~.inventory.Inventory` answers live. With CDI the
daemon writes the specs in a worker thread, and a ListAndWatch stream must never list an
ID the container runtime cannot resolve yet; :class:`PublishedView` answers ``version``
and ``entries`` from a snapshot published after its spec was written, while ``get`` stays
live so Allocate refuses a device that is gone now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Protocol

from .entries import Entry
from .inventory import Inventory

#: A resource's state to publish: (inventory version, entries), or None when it is gone.
State = Optional[tuple[int, tuple[Entry, ...]]]


class DeviceView(Protocol):
    """What front doors read (an ``Inventory`` is one)."""

    def version(self, resource: str) -> int: ...
    def entries(self, resource: str) -> tuple[Entry, ...]: ...
    def listed(self, resource: str) -> Sequence[Entry]: ...
    def get(self, resource: str, device_id: str) -> Optional[Entry]: ...


class PublishedView:
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._published: dict[str, tuple[int, tuple[Entry, ...]]] = {}

    def snapshot(self, resources: Iterable[str]) -> dict[str, State]:
        """The current state of these resources, to publish later; the inventory's
        snapshots are immutable tuples, so this copies nothing."""
        present = self._inventory.resources()
        return {r: ((self._inventory.version(r), self._inventory.entries(r)) if r in present else None)
                for r in resources}

    def publish(self, snapshot: dict[str, State]) -> None:
        """Make a snapshot taken earlier the state the front doors list."""
        for r, state in snapshot.items():
            if state is None:
                self._published.pop(r, None)
            else:
                self._published[r] = state

    def version(self, resource: str) -> int:
        return self._published.get(resource, (0, ()))[0]

    def entries(self, resource: str) -> tuple[Entry, ...]:
        return self._published.get(resource, (0, ()))[1]

    def listed(self, resource: str) -> Sequence[Entry]:
        return self.entries(resource)

    def get(self, resource: str, device_id: str) -> Optional[Entry]:
        return self._inventory.get(resource, device_id)
