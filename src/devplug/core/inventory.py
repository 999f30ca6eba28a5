"""The live inventory: every claimed device by stable ID, with its health. Pure state.

Applying an update returns which resources changed; each resource keeps a version counter
and a cached, sorted snapshot that is rebuilt only when that resource changes, so serving
ListAndWatch and Allocate costs nothing per event for untouched resources.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Optional

import attrs

from .identity import sanitize_id, share_ids
from .rules.escape import safe_value
from .rules.model import Claim

HOSTPATH_PREFIX = "hostpath:"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@attrs.frozen(slots=True)
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
        raw = {"resource": self.resource, "syspath": self.key, "devnode": self.devnode, "id": self.base_id,
               "rule": self.rule, "reason": self.reason}
        return {k: safe_value(v, None) for k, v in raw.items() if v is not None}


@attrs.frozen(slots=True)
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
class Change:
    """What one update did: the resources whose device list changed, and the (resource, ID)
    pairs touched, sorted.

    ``refused`` are the refusals this update made or changed (each device once, not again
    on its next uevent): the daemon logs and counts each; they may come with no resource
    change at all, so look at them even when the change is empty.
    """

    resources: frozenset[str] = frozenset()
    ids: tuple[tuple[str, str], ...] = ()
    refused: tuple[Refusal, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.resources)


@attrs.define(slots=True)
class _Resource:
    entries: dict[str, Entry] = attrs.field(factory=dict)
    physical: dict[str, tuple[str, ...]] = attrs.field(factory=dict)  # base ID -> its IDs
    version: int = 0
    snapshot: Optional[tuple[Entry, ...]] = None
    order: Optional[list[str]] = None  # sorted IDs; kept while only health/fields change


class Inventory:
    """Device ID → Entry per resource, with versioned, cached snapshots."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._resources: dict[str, _Resource] = {}
        self._bound: dict[str, tuple[str, str]] = {}  # present device key -> (resource, base ID)
        self._holder: dict[tuple[str, str], str] = {}  # (resource, base ID) -> present device key
        self._refused: dict[str, Refusal] = {}  # present device key -> why it is not offered
        self._new_refusals: list[Refusal] = []
        self._clock = clock

    # ---- queries -------------------------------------------------------------------
    def resources(self) -> frozenset[str]:
        return frozenset(self._resources)

    def version(self, resource: str) -> int:
        r = self._resources.get(resource)
        return r.version if r else 0

    def entries(self, resource: str) -> tuple[Entry, ...]:
        """All entries of a resource sorted by ID; cached until the resource changes."""
        r = self._resources.get(resource)
        if r is None:
            return ()
        if r.snapshot is None:
            if r.order is None:
                r.order = sorted(r.entries)
            entries = r.entries
            r.snapshot = tuple([entries[k] for k in r.order])
        return r.snapshot

    def get(self, resource: str, device_id: str) -> Optional[Entry]:
        r = self._resources.get(resource)
        return r.entries.get(device_id) if r else None

    def all_entries(self) -> Iterable[Entry]:
        for name in sorted(self._resources):
            yield from self.entries(name)

    def binding(self, key: str) -> Optional[tuple[str, str]]:
        """(resource, base ID) a present device is bound to, if any."""
        return self._bound.get(key)

    def present_keys(self) -> frozenset[str]:
        return frozenset(self._bound)

    def refused(self) -> tuple[Refusal, ...]:
        """Present devices a rule claims but that are not offered, by device key."""
        return tuple(self._refused[k] for k in sorted(self._refused))

    def bound_resources(self) -> frozenset[str]:
        """Resources that hold at least one device present right now."""
        return frozenset(resource for resource, _base in self._holder)

    # ---- updates -------------------------------------------------------------------
    def apply(self, *sightings: Sighting) -> Change:
        """Fold sightings into the state, in order; return what changed (empty when nothing did)."""
        touched: dict[str, set[str]] = {}
        for sighting in sightings:
            self._apply(sighting, touched)
        return self._finish(touched)

    def resync(self, sightings: Iterable[Sighting], *, hostpath: bool = False) -> Change:
        """Reconcile with a full enumeration: what is bound but not seen now is gone.

        ``hostpath`` selects which family the enumeration covers (udev devices or host
        paths), so a udev resync never marks host paths absent and vice versa.
        """
        touched: dict[str, set[str]] = {}
        seen: set[str] = set()
        for s in sightings:
            seen.add(s.key)
            self._apply(s, touched)
        for key in list(self._bound) + list(self._refused):
            if key not in seen and key.startswith(HOSTPATH_PREFIX) == hostpath:
                self._apply(Sighting(key=key, present=False), touched)
        return self._finish(touched)

    def forget(self, resources: Iterable[str]) -> Change:
        """Drop whole resources (no rule names them any more)."""
        touched: dict[str, set[str]] = {}
        names = frozenset(resources)
        for name in names:
            r = self._resources.pop(name, None)
            if r is None:
                continue
            touched[name] = set(r.entries)
            for base in r.physical:
                key = self._holder.pop((name, base), None)
                if key is not None:
                    del self._bound[key]
        for key, refusal in list(self._refused.items()):
            if refusal.resource in names:
                del self._refused[key]
        return self._finish(touched)

    # ---- internals -----------------------------------------------------------------
    def _apply(self, s: Sighting, touched: dict[str, set[str]]) -> None:
        if s.present and s.refusal is not None:
            self._refuse(s.refusal, touched)
            return
        self._refused.pop(s.key, None)
        if s.present and s.resource and s.base_id and s.claim:
            self._claim(s, touched)
            return
        bound = self._bound.pop(s.key, None)
        if bound is None:
            return
        self._holder.pop(bound, None)
        if s.present:
            # Still plugged in, but no rule claims it now: it leaves its resource.
            self._drop(bound, touched)
        else:
            self._mark_unhealthy(bound, touched)

    def _claim(self, s: Sighting, touched: dict[str, set[str]]) -> None:
        assert s.resource and s.base_id and s.claim
        previous = self._bound.get(s.key)
        base = s.base_id
        res = self._resources.get(s.resource)
        if previous != (s.resource, base):
            base = self._disambiguate(s, base)
        if previous is not None and previous != (s.resource, base):
            # Same kernel device, now a different resource or identity: move it.
            self._holder.pop(previous, None)
            self._drop(previous, touched)
        if res is None:
            res = self._resources[s.resource] = _Resource()
        self._bound[s.key] = (s.resource, base)
        self._holder[(s.resource, base)] = s.key
        ids = share_ids(base, s.claim.share)
        for i in res.physical.get(base, ()):
            if i not in ids:
                del res.entries[i]
                res.order = None
                touched.setdefault(s.resource, set()).add(i)
        res.physical[base] = ids
        now = None
        for i in ids:
            old = res.entries.get(i)
            since = old.since if old is not None and old.healthy else (now := now or self._clock())
            new = Entry(
                id=i,
                resource=s.resource,
                healthy=True,
                physical=base,
                claim=s.claim,
                syspath=None if s.hostpath else s.key,
                devnode=s.devnode,
                subsystem=s.subsystem,
                symlinks=s.symlinks,
                usb_node=s.usb_node,
                topology=s.topology,
                hostpath=s.hostpath,
                since=since,
            )
            if old != new:
                if old is None:
                    res.order = None
                res.entries[i] = new
                touched.setdefault(s.resource, set()).add(i)

    def _refuse(self, refusal: Refusal, touched: dict[str, set[str]]) -> None:
        """Not offered: IDs it had turn Unhealthy (a pod may hold one), as if it were gone."""
        bound = self._bound.pop(refusal.key, None)
        if bound is not None:
            self._holder.pop(bound, None)
            self._mark_unhealthy(bound, touched)
        if self._refused.get(refusal.key) != refusal:
            self._refused[refusal.key] = refusal
            self._new_refusals.append(refusal)

    def _disambiguate(self, s: Sighting, base: str) -> str:
        """Two different present devices computed the same ID: suffix the newcomer."""
        holder_key = self._holder.get((s.resource or "", base))
        if holder_key is None or holder_key == s.key:
            return base
        return sanitize_id(f"{base}-{s.key.rstrip('/').rsplit('/', 1)[-1]}")

    def _drop(self, bound: tuple[str, str], touched: dict[str, set[str]]) -> None:
        resource, base = bound
        res = self._resources.get(resource)
        if res is None:
            return
        for i in res.physical.pop(base, ()):
            del res.entries[i]
            res.order = None
            touched.setdefault(resource, set()).add(i)

    def _mark_unhealthy(self, bound: tuple[str, str], touched: dict[str, set[str]]) -> None:
        resource, base = bound
        res = self._resources.get(resource)
        if res is None:
            return
        now = self._clock()
        for i in res.physical.get(base, ()):
            e = res.entries[i]
            if e.healthy:
                res.entries[i] = attrs.evolve(e, healthy=False, since=now)
                touched.setdefault(resource, set()).add(i)

    def _finish(self, touched: dict[str, set[str]]) -> Change:
        for name in touched:
            r = self._resources.get(name)
            if r is not None:
                r.version += 1
                r.snapshot = None
        ids = tuple((name, i) for name in sorted(touched) for i in sorted(touched[name]))
        refused, self._new_refusals = tuple(self._new_refusals), []
        return Change(resources=frozenset(touched), ids=ids, refused=refused)
