"""The inventory's records: entries, sightings, refusals and what one update changed. Pure.

``devplug.core.inventory`` re-exports them; they live here so the inventory module holds
only its state machine.

:class:`Entry`, :class:`Sighting` and :class:`Change` are made on every uevent, so they
are plain slotted attrs classes, *written once* rather than frozen: a frozen class's
``__init__`` sets each field through a call, and on a CPU that just woke that cost
~35 µs of each event with :class:`~.device.Device` (the other one). Nothing assigns to
them after they are built; the test suite enforces it (``tests/conftest.py`` makes every
write-once record raise on a second assignment).
"""

from __future__ import annotations

from typing import Optional

import attrs

from .rules.escape import safe_value
from .rules.model import Claim

HOSTPATH_PREFIX = "hostpath:"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


def _printable(raw: dict[str, Optional[str]]) -> dict[str, str]:
    return {k: safe_value(v, None) for k, v in raw.items() if v is not None}


@attrs.define(slots=True)
class Entry:
    """One schedulable device ID of one resource.

    ``physical`` names the physical device (the same across replug and shared by the
    ``SHARE`` copies); ``topology`` groups devices that share a parent (a USB hub, a PCI
    bridge) for GetPreferredAllocation.
    """

    id: str
    resource: str
    healthy: bool
    physical: str
    claim: Claim
    syspath: Optional[str] = None
    devnode: Optional[str] = None
    subsystem: Optional[str] = None
    symlinks: tuple[str, ...] = ()
    usb_node: Optional[str] = None
    topology: Optional[str] = None
    hostpath: bool = False
    since: float = 0.0

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY

    def with_health(self, healthy: bool, since: float) -> Entry:
        """This entry with another health (``attrs.evolve`` looks every field up each time;
        this runs on every unplug)."""
        return Entry(self.id, self.resource, healthy, self.physical, self.claim, self.syspath, self.devnode,
                     self.subsystem, self.symlinks, self.usb_node, self.topology, self.hostpath, since)


@attrs.frozen(slots=True)
class Refusal:
    """A device a rule claims but that must not be offered: a template gave no safe value
    for it (``rules.escape``), or a path the kernel gave is unusable.

    ``reason`` names every failing assignment (``file:line:column: KEY: why``); ``rule`` is
    the ``file:line`` to log and show first. The device has no entry while refused: never
    half-offered.
    """

    key: str
    resource: str
    rule: Optional[str]
    reason: str
    base_id: Optional[str] = None
    devnode: Optional[str] = None
    subsystem: Optional[str] = None

    def fields(self) -> dict[str, str]:
        """Log fields, each safe to print: a host path may hold control characters or bytes
        that are not UTF-8, and a log line must stay one line."""
        return _printable({"resource": self.resource, "syspath": self.key, "devnode": self.devnode,
                           "id": self.base_id, "rule": self.rule, "reason": self.reason})


@attrs.define(slots=True)
class Sighting:
    """What the pipeline learned about one device: present or gone, and what rules say.

    ``key`` identifies the device as the kernel sees it now (its syspath, or
    ``hostpath:<path>``); ``base_id`` identifies it physically (see ``identity``).
    A present device with ``resource=None`` is one no rule claims (any more); one with a
    ``refusal`` is claimed but refused, and counts as not there for its entries.
    """

    key: str
    present: bool
    resource: Optional[str] = None
    base_id: Optional[str] = None
    claim: Optional[Claim] = None
    devnode: Optional[str] = None
    subsystem: Optional[str] = None
    symlinks: tuple[str, ...] = ()
    usb_node: Optional[str] = None
    topology: Optional[str] = None
    hostpath: bool = False
    refusal: Optional[Refusal] = None


@attrs.frozen(slots=True)
class Twin:
    """A present device told apart from another present device that derives the same ID.

    Cloned adapters often share a serial number. Whenever two present devices of a resource
    derive the same ``base_id``, each gets ``<base_id>:<tag>``, the tag a hash of its kernel
    path (``identity.twin_id``): the same devices plugged in the same ports give the same
    IDs whichever arrived first and after a restart. ``key`` is the device, ``id`` its new
    base ID (its ``SHARE`` copies add ``-sN``).
    """

    resource: str
    base_id: str
    key: str
    id: str

    def fields(self) -> dict[str, str]:
        """Log fields, each safe to print."""
        return _printable({"resource": self.resource, "derived": self.base_id, "syspath": self.key, "id": self.id})


@attrs.define(slots=True)
class Change:
    """What one update did: the resources whose device list changed, and the (resource, ID)
    pairs touched, sorted.

    ``refused`` are the refusals this update made or changed (each device once, not again
    on its next uevent): the daemon logs and counts each; they may come with no resource
    change at all, so look at them even when the change is empty. ``twins`` are the devices
    this update told apart from a twin (log each); ``forgotten`` the IDs ``collect`` dropped.
    """

    resources: frozenset[str] = frozenset()
    ids: tuple[tuple[str, str], ...] = ()
    refused: tuple[Refusal, ...] = ()
    twins: tuple[Twin, ...] = ()
    forgotten: int = 0

    def __bool__(self) -> bool:
        return bool(self.resources)
