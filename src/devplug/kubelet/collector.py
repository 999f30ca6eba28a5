"""Forgetting Unhealthy IDs that no pod holds, so replugs cannot grow devplug forever.

A gadget that comes back with a new serial every time leaves one Unhealthy ID per replug;
kubelet keeps allocations by ID, so an ID may only go once no pod holds it. This task asks
kubelet's PodResources API which IDs pods hold and lets the pure
``Inventory.collect`` decide: gone for ``grace`` seconds and held by nobody → forgotten;
PodResources unreachable → nothing forgotten for age, but at most ``cap`` unheld Unhealthy
IDs per resource.

It runs only when there is something to decide: woken by a change, it sleeps until the
oldest Unhealthy ID's grace ends (or at once when a resource is over its cap). IDs that
pods still hold are asked about again every ``recheck`` seconds while they exist.
Planning looks only at the IDs that can be Unhealthy: those the changes since named (a
health flip of one device among 1,000 costs one lookup, not a pass over the inventory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Optional

import trio

from ..core.entries import Entry
from ..core.inventory import Change, Inventory
from ..lib.logs import kv
from .podresources import Holders

log = logging.getLogger("devplug.collector")

#: How often IDs that pods still hold (or a cap pods keep exceeded) are looked at again.
RECHECK = 60.0


class Collector:
    def __init__(self, inventory: Inventory, publish: Callable[[Change], None],
                 holders: Callable[[], Awaitable[Optional[Holders]]], *, grace: float, cap: int,
                 recheck: float = RECHECK, clock: Callable[[], float] = time.time,
                 on_forgotten: Optional[Callable[[list[tuple[str, str]]], None]] = None) -> None:
        self._inventory = inventory
        self._publish = publish
        self._on_forgotten = on_forgotten
        self._holders = holders
        self.grace = grace
        self.cap = cap
        self.recheck = recheck
        self._clock = clock
        self._wake = trio.Event()
        # (resource, ID) that may be Unhealthy; None: not known yet, look at every entry.
        self._candidates: Optional[set[tuple[str, str]]] = None
        self._held: frozenset[tuple[str, str]] = frozenset()  # what pods held at the last pass
        self._last_pass = 0.0
        self._blind_until = 0.0  # kubelet could not say at the last pass: not before then
        self.passes = 0

    def wake(self, change: Optional[Change] = None) -> None:
        """Something changed (synchronous: called on the event path); ``change`` says what,
        ``None`` that anything may have."""
        if change is None:
            self._candidates = None
        elif self._candidates is not None:
            self._candidates.update(change.ids)
        self._wake.set()

    def _unhealthy(self) -> list[Entry]:
        """Every Unhealthy entry, found among the candidates (which shrink to them)."""
        inventory = self._inventory
        if self._candidates is None:
            found = [e for e in inventory.all_entries() if not e.healthy]
            self._candidates = {(e.resource, e.id) for e in found}
            return found
        found = []
        for key in list(self._candidates):
            e = inventory.get(*key)
            if e is None or e.healthy:
                self._candidates.discard(key)
            else:
                found.append(e)
        return found

    def _plan(self, now: float) -> Optional[float]:
        """When the next pass is due (wall clock), or None when nothing could be forgotten.

        IDs pods held at the last pass are asked about again ``recheck`` after it; while
        kubelet could not say who holds what, IDs past their grace wait as long too; a
        resource over its cap is due at once."""
        due: Optional[float] = None
        unheld: dict[str, int] = {}
        held = False
        for e in self._unhealthy():
            if (e.resource, e.id) in self._held:
                held = True
                continue
            unheld[e.resource] = unheld.get(e.resource, 0) + 1
            t = e.since + self.grace
            if t <= now < self._blind_until:
                t = self._blind_until
            due = t if due is None else min(due, t)
        if any(n > self.cap for n in unheld.values()):
            due = now
        if held:
            recheck = self._last_pass + self.recheck
            due = recheck if due is None else min(due, recheck)
        return due

    async def run(self) -> None:
        while True:
            now = self._clock()
            due = self._plan(now)
            self._wake = trio.Event()
            if due is None or due > now:
                with trio.move_on_after(max(due - now, 0.0) if due is not None else float("inf")):
                    await self._wake.wait()
                    continue  # woken by a change: plan again
            await self.collect_once()

    async def collect_once(self) -> Change:
        """One pass: ask kubelet, forget what may go, publish what changed."""
        holders = await self._holders()
        in_use = frozenset(holders) if holders is not None else None
        now = self._clock()
        change = self._inventory.collect(now, grace=self.grace, in_use=in_use, cap=self.cap)
        self.passes += 1
        self._last_pass = now
        self._held = in_use or frozenset()
        self._blind_until = now + self.recheck if in_use is None else 0.0
        if change:
            gone = [(r, i) for r, i in change.ids if self._inventory.get(r, i) is None]
            if self._on_forgotten is not None:
                self._on_forgotten(gone)
            log.info("forgot unhealthy IDs", extra=kv(
                forgotten=change.forgotten, resources=",".join(sorted(change.resources)),
                pod_resources="known" if in_use is not None else "unknown"))
            self._publish(change)
        return change
