"""The live inventory: every claimed device by stable ID, with its health. Pure state.

Applying an update returns which resources changed; each resource keeps a version counter
and a cached, sorted snapshot that is rebuilt only when that resource changes, so serving
ListAndWatch and Allocate costs nothing per event for untouched resources.

Devices are untrusted (a USB gadget picks its own serial and can replug forever), so:
IDs are unique by construction (``identity``: two present devices that derive the same ID
are both told apart by a tag of their kernel path, whichever came first); a refused device
has no entry (``Refusal``); and Unhealthy IDs do not pile up: :meth:`Inventory.collect`
forgets those no pod holds after a grace period, and caps them per resource while it cannot
know which pods hold what.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

from .entries import HEALTHY, HOSTPATH_PREFIX, UNHEALTHY, Change, Entry, Refusal, Sighting, Twin
from .identity import share_ids, twin_id
from .resource import Resource

__all__ = ["HEALTHY", "HOSTPATH_PREFIX", "UNHEALTHY", "Change", "Entry", "Inventory", "Refusal", "Sighting",
           "Twin"]


class _Update:
    """What one call to the inventory collects for its :class:`Change` (a plain class: one
    is made per uevent, and attrs' factories cost a call each)."""

    __slots__ = ("twins_in_batch", "touched", "refused", "twins", "forgotten")

    def __init__(self, twins_in_batch: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.twins_in_batch = twins_in_batch
        self.touched: dict[str, set[str]] = {}
        self.refused: list[Refusal] = []
        self.twins: list[Twin] = []
        self.forgotten = 0

    def touch(self, resource: str, device_id: str) -> None:
        self.touched.setdefault(resource, set()).add(device_id)


def _twins_in(sightings: Sequence[Sighting]) -> frozenset[tuple[str, str]]:
    """(resource, base ID) pairs that several devices of one batch derive: each of them is
    tagged at once, so a coldplug never offers a plain ID it must take back."""
    if len(sightings) < 2:  # one uevent: nothing to tell apart within it
        return frozenset()
    keys: dict[tuple[str, str], set[str]] = {}
    for s in sightings:
        if s.present and s.refusal is None and s.resource and s.base_id and s.claim:
            keys.setdefault((s.resource, s.base_id), set()).add(s.key)
    return frozenset(pair for pair, found in keys.items() if len(found) > 1)


class Inventory:
    """Device ID → Entry per resource, with versioned, cached snapshots.

    ``forgotten_total`` counts the IDs :meth:`collect` has forgotten (for a metric).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._resources: dict[str, Resource] = {}
        self._bound: dict[str, tuple[str, str]] = {}  # present device key -> (resource, its base ID)
        self._holder: dict[tuple[str, str], str] = {}  # (resource, base ID) -> present device key
        self._derived: dict[str, str] = {}  # present device key -> the base ID it derives (untagged)
        self._derivers: dict[tuple[str, str], set[str]] = {}  # (resource, derived base) -> present keys
        self._refused: dict[str, Refusal] = {}  # present device key -> why it is not offered
        self._clock = clock
        self.forgotten_total = 0

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
            r.snapshot = tuple(r.in_order())
        return r.snapshot

    def listed(self, resource: str) -> Sequence[Entry]:
        """The same entries without a snapshot: the inventory's own list, which the next
        change patches in place, so read it now and never keep it. A health flip among 1,000
        devices then copies no 1,000 references (touching 1,000 entries' reference counts
        was most of that cost on a CPU that just woke)."""
        r = self._resources.get(resource)
        return () if r is None else r.in_order()

    def get(self, resource: str, device_id: str) -> Optional[Entry]:
        r = self._resources.get(resource)
        return r.entries.get(device_id) if r else None

    def all_entries(self) -> Iterable[Entry]:
        for name in sorted(self._resources):
            yield from self.entries(name)

    def binding(self, key: str) -> Optional[tuple[str, str]]:
        """(resource, base ID) a present device is bound to, if any (a twin's tagged ID)."""
        return self._bound.get(key)

    def refused(self) -> tuple[Refusal, ...]:
        """Present devices a rule claims but that are not offered, by device key."""
        return tuple(self._refused[k] for k in sorted(self._refused))

    def bound_resources(self) -> frozenset[str]:
        """Resources that hold at least one device present right now."""
        return frozenset(resource for resource, _base in self._holder)

    # ---- updates -------------------------------------------------------------------
    def apply(self, *sightings: Sighting) -> Change:
        """Fold sightings into the state, in order; return what changed (empty when nothing did)."""
        u = _Update(_twins_in(sightings)) if len(sightings) > 1 else _Update()
        for sighting in sightings:
            self._apply(sighting, u)
        return self._finish(u)

    def gone(self, key: str) -> Change:
        """A device left (its ``remove`` or ``unbind``): ``apply(Sighting(key=key,
        present=False))`` without the sighting, for the path every unplug takes."""
        u = _Update()
        self._refused.pop(key, None)
        self._leave(key, False, u)
        return self._finish(u)

    def resync(self, sightings: Iterable[Sighting], *, hostpath: bool = False) -> Change:
        """Reconcile with a full enumeration: what is bound but not seen now is gone.

        ``hostpath`` selects which family the enumeration covers (udev devices or host
        paths), so a udev resync never marks host paths absent and vice versa.
        """
        batch = list(sightings)
        u = _Update(_twins_in(batch))
        seen: set[str] = set()
        for s in batch:
            seen.add(s.key)
            self._apply(s, u)
        for key in list(self._bound) + list(self._refused):
            if key not in seen and key.startswith(HOSTPATH_PREFIX) == hostpath:
                self._apply(Sighting(key=key, present=False), u)
        return self._finish(u)

    def forget(self, resources: Iterable[str]) -> Change:
        """Drop whole resources (no rule names them any more)."""
        u = _Update()
        names = frozenset(resources)
        for name in names:
            r = self._resources.pop(name, None)
            if r is None:
                continue
            u.touched[name] = set(r.entries)
            for base in r.physical:
                key = self._holder.get((name, base))
                if key is not None:
                    self._release(key)
        for key, refusal in list(self._refused.items()):
            if refusal.resource in names:
                del self._refused[key]
        return self._finish(u)

    def collect(self, now: float, *, grace: float, in_use: Optional[frozenset[tuple[str, str]]],
                cap: int) -> Change:
        """Forget Unhealthy IDs of devices that are gone, so a gadget replugging with a new
        serial forever cannot grow the inventory (and every ListAndWatch message) forever.

        ``in_use`` are the (resource, ID) pairs pods hold (kubelet's PodResources ``List``);
        ``None`` when that API cannot be reached. Known: an Unhealthy ID no pod holds is
        forgotten once it has been Unhealthy for ``grace`` seconds. Unknown: nothing is
        forgotten for age. Either way at most ``cap`` Unhealthy IDs per resource that no pod
        is known to hold are kept, the oldest forgotten first. The change counts what went
        (``Change.forgotten``; ``forgotten_total`` adds it up).
        """
        u = _Update()
        for name, res in self._resources.items():
            gone = [e for e in res.entries.values() if not e.healthy and (name, e.physical) not in self._holder]
            if in_use is not None:
                gone = [e for e in gone if (name, e.id) not in in_use]
                self._forget_ids(res, [e for e in gone if now - e.since >= grace], u)
                gone = [e for e in gone if now - e.since < grace]
            if len(gone) > cap:
                gone.sort(key=lambda e: (e.since, e.id))
                self._forget_ids(res, gone[: len(gone) - max(cap, 0)], u)
        return self._finish(u)

    # ---- internals -----------------------------------------------------------------
    def _apply(self, s: Sighting, u: _Update) -> None:
        if s.present and s.refusal is not None:
            self._refuse(s.refusal, u)
            return
        self._refused.pop(s.key, None)
        if s.present and s.resource and s.base_id and s.claim:
            self._claim(s, u)
            return
        self._leave(s.key, s.present, u)

    def _leave(self, key: str, present: bool, u: _Update) -> None:
        """A device no rule claims: still plugged in, it leaves its resource; gone, its IDs
        turn Unhealthy."""
        bound = self._release(key)
        if bound is None:
            return
        if present:
            self._drop(bound, u)
        else:
            self._mark_unhealthy(bound, u)

    def _claim(self, s: Sighting, u: _Update) -> None:
        assert s.resource and s.base_id and s.claim
        resource, base = s.resource, s.base_id
        previous = self._bound.get(s.key)
        same_identity = previous is not None and previous[0] == resource and self._derived.get(s.key) == base
        derivers = self._derivers.get((resource, base))
        # The common case (no twin) allocates nothing: this runs on every uevent.
        others = derivers - {s.key} if derivers and (len(derivers) > 1 or s.key not in derivers) else ()
        if others or (resource, base) in u.twins_in_batch:
            physical = self._twin(resource, base, s.key)
        elif same_identity:
            assert previous is not None
            physical = previous[1]  # keeps a tag it got while a twin was there: no flapping
        else:
            physical = base
        if previous is not None and previous != (resource, physical):
            self._release(s.key)
            if same_identity:
                self._mark_unhealthy(previous, u)  # re-tagged: a pod may still hold the old ID
            else:
                self._drop(previous, u)  # same kernel device, another resource or identity: moved
        if s.key not in self._bound:
            self._bind(s.key, resource, base, physical)
            if physical != base:
                u.twins.append(Twin(resource=resource, base_id=base, key=s.key, id=physical))
        self._set_entries(s, physical, u)
        if others:
            for key in sorted(others):
                if self._bound.get(key) == (resource, base):
                    self._retag(key, resource, base, u)

    def _twin(self, resource: str, base: str, key: str) -> str:
        for length in (8, 16, 64):  # a longer tag only if a shorter one is another device's
            physical = twin_id(base, key, length)
            if self._holder.get((resource, physical), key) == key:
                return physical
        raise AssertionError(f"SHA-256 collision between {key!r} and another device")

    def _retag(self, key: str, resource: str, base: str, u: _Update) -> None:
        """A device that held the plain ID gets a twin: it is tagged too, from its own entry."""
        res = self._resources[resource]
        e = res.entries[res.physical[base][0]]
        self._claim(Sighting(key=key, present=True, resource=resource, base_id=base, claim=e.claim,
                             devnode=e.devnode, subsystem=e.subsystem, symlinks=e.symlinks, usb_node=e.usb_node,
                             topology=e.topology, hostpath=e.hostpath), u)

    def _bind(self, key: str, resource: str, base: str, physical: str) -> None:
        self._bound[key] = (resource, physical)
        self._holder[(resource, physical)] = key
        self._derived[key] = base
        self._derivers.setdefault((resource, base), set()).add(key)

    def _release(self, key: str) -> Optional[tuple[str, str]]:
        """Forget that a device is present; returns what it was bound to."""
        bound = self._bound.pop(key, None)
        if bound is None:
            return None
        self._holder.pop(bound, None)
        pair = (bound[0], self._derived.pop(key))
        derivers = self._derivers[pair]
        derivers.discard(key)
        if not derivers:
            del self._derivers[pair]
        return bound

    def _set_entries(self, s: Sighting, physical: str, u: _Update) -> None:
        assert s.resource and s.claim
        res = self._resources.get(s.resource)
        if res is None:
            res = self._resources[s.resource] = Resource()
        ids = share_ids(physical, s.claim.share)
        for i in res.physical.get(physical, ()):
            if i not in ids:
                del res.entries[i]
                res.reorder()
                u.touch(s.resource, i)
        res.physical[physical] = ids
        now = None
        syspath = None if s.hostpath else s.key
        for i in ids:
            old = res.entries.get(i)
            if (old is not None and old.claim is s.claim and old.resource == s.resource
                    and old.physical == physical and old.syspath == syspath and old.devnode == s.devnode
                    and old.subsystem == s.subsystem and old.symlinks == s.symlinks
                    and old.usb_node == s.usb_node and old.topology == s.topology and old.hostpath == s.hostpath):
                # The same entry but maybe its health (a replug the recall answered): no new
                # entry to build and compare field by field. Every field of Entry but id,
                # healthy and since is compared (a test holds this list to Entry's).
                if not old.healthy:
                    res.replace(old.with_health(True, now := now or self._clock()))
                    u.touch(s.resource, i)
                continue
            since = old.since if old is not None and old.healthy else (now := now or self._clock())
            new = Entry(
                id=i,
                resource=s.resource,
                healthy=True,
                physical=physical,
                claim=s.claim,
                syspath=syspath,
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
                    res.entries[i] = new
                    res.reorder()
                else:
                    res.replace(new)
                u.touch(s.resource, i)

    def _refuse(self, refusal: Refusal, u: _Update) -> None:
        """Not offered: IDs it had turn Unhealthy (a pod may hold one), as if it were gone."""
        bound = self._release(refusal.key)
        if bound is not None:
            self._mark_unhealthy(bound, u)
        if self._refused.get(refusal.key) != refusal:
            self._refused[refusal.key] = refusal
            u.refused.append(refusal)

    def _drop(self, bound: tuple[str, str], u: _Update) -> None:
        resource, base = bound
        res = self._resources.get(resource)
        if res is None:
            return
        for i in res.physical.pop(base, ()):
            del res.entries[i]
            res.reorder()
            u.touch(resource, i)

    def _mark_unhealthy(self, bound: tuple[str, str], u: _Update) -> None:
        resource, base = bound
        res = self._resources.get(resource)
        if res is None:
            return
        now = self._clock()
        for i in res.physical.get(base, ()):
            e = res.entries[i]
            if e.healthy:
                res.replace(e.with_health(False, now))
                u.touch(resource, i)

    def _forget_ids(self, res: Resource, entries: Iterable[Entry], u: _Update) -> None:
        for e in entries:
            del res.entries[e.id]
            res.reorder()
            left = tuple(i for i in res.physical[e.physical] if i != e.id)
            if left:
                res.physical[e.physical] = left
            else:
                del res.physical[e.physical]
            u.touch(e.resource, e.id)
            u.forgotten += 1

    def _finish(self, u: _Update) -> Change:
        for name in u.touched:
            r = self._resources.get(name)
            if r is not None:
                r.version += 1
                r.snapshot = None
        self.forgotten_total += u.forgotten
        touched = u.touched
        if len(touched) == 1:  # one device's uevent, the common case
            name, changed = next(iter(touched.items()))
            ids = ((name, *changed),) if len(changed) == 1 else tuple((name, i) for i in sorted(changed))
        else:
            ids = tuple((name, i) for name in sorted(touched) for i in sorted(touched[name]))
        return Change(frozenset(touched), ids, tuple(u.refused) if u.refused else (),
                      tuple(u.twins) if u.twins else (), u.forgotten)
