"""What the daemon reports about itself: the ``devplug_*`` series and the recent-uevent log.

The daemon calls the ``on_*`` hooks from its trio tasks; each is a few dict operations, so
the event path stays fast. Scrape-time values (devices per resource and health) are read
from the inventory only when ``/metrics`` is fetched.

Latency (uevent → ListAndWatch send) is measured per stream and per uevent: ``on_event``
remembers, per resource, which inventory version each uevent produced and when it was
received; ``on_sent`` is told which versions a stream's send covered, so a send that folds
three uevents records three latencies and a stream's first (initial) send records none.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Optional

import attrs

from ..core.inventory import Change, Inventory, Refusal
from .metrics import Registry

#: Seconds: 100 µs … 1 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
EVENT_LOG_SIZE = 256
_PENDING_PER_RESOURCE = 64

#: Allocate outcomes, as labels.
ALLOCATE_RESULTS = ("ok", "invalid_argument", "failed_precondition", "error")


@attrs.frozen(slots=True)
class ChangeRecord:
    resource: str
    id: str
    state: str  # Healthy | Unhealthy | removed


@attrs.frozen(slots=True)
class EventRecord:
    """One uevent (``kind="uevent"``) or re-enumeration (``kind="resync"``) as processed."""

    kind: str
    action: str
    subsystem: Optional[str]
    devpath: Optional[str]
    seqnum: Optional[int]
    received: float  # epoch seconds
    processing_ns: int  # receive → processed (rules, inventory, streams notified)
    changes: tuple[ChangeRecord, ...]


class Telemetry:
    def __init__(
        self,
        inventory: Inventory,
        *,
        events: int = EVENT_LOG_SIZE,
        clock: Callable[[], float] = time.time,
        perf_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.inventory = inventory
        self._clock = clock
        self._perf_ns = perf_ns
        # Raw tuples (cheap on the event path); :meth:`recent` builds the records.
        self._events: collections.deque[tuple] = collections.deque(maxlen=events)
        self.rules_error: Optional[str] = None
        self._pending: dict[str, collections.deque[tuple[int, int]]] = {}

        r = self.registry = Registry()
        r.gauge_func("devplug_devices", "Devices in the inventory by resource and health.",
                     ("resource", "health"), self._device_counts)
        self.uevents = r.counter("devplug_uevents_total", "Uevents received, by action and subsystem.",
                                 ("action", "subsystem"))
        self.latency = r.histogram(
            "devplug_uevent_to_send_seconds",
            "Time from receiving a uevent to sending the changed device list on a ListAndWatch stream.",
            LATENCY_BUCKETS)
        self.registrations = r.counter("devplug_registrations_total",
                                       "Registrations with kubelet, by resource and result.", ("resource", "result"))
        self.kubelet_restarts = r.counter("devplug_kubelet_restarts_total",
                                          "Kubelet restarts seen (its socket re-created).")
        self.allocations = r.counter("devplug_allocate_total", "Allocate calls by resource and result.",
                                     ("resource", "result"))
        self.reloads = r.counter("devplug_rule_reloads_total", "Rules reloads by result (ok, error).", ("result",))
        self.rules_valid = r.gauge("devplug_rules_valid",
                                   "1 when the rules last read were valid, 0 while serving older rules.")
        self.rules_valid.set(1)
        self.overflows = r.counter("devplug_netlink_overflows_total",
                                   "Netlink receive buffer overflows (ENOBUFS): the kernel dropped uevents.")
        self.resyncs = r.counter("devplug_resyncs_total", "Full re-enumerations by reason.", ("reason",))
        for result in ("ok", "error"):
            self.reloads.touch(result)
        # Refused devices (issue 10): the hook is on_refused, below.
        self.refused = r.counter("devplug_devices_refused_total",
                                 "Claimed devices not offered because a rule's template gave no safe value "
                                 "for them (each counted once, when refused), by resource.", ("resource",))

    # ---- hooks the daemon calls ------------------------------------------------------------
    def on_event(self, action: str, subsystem: Optional[str], devpath: Optional[str],
                 seqnum: Optional[int], received_ns: int, change: Change) -> None:
        """A uevent went through the pipeline and its change was published.

        ``received_ns`` is ``time.perf_counter_ns()`` taken when the message was read.
        """
        now_ns = self._perf_ns()
        self.uevents.inc(action, subsystem or "")
        for resource in change.resources:
            pending = self._pending.get(resource)
            if pending is None:
                pending = self._pending[resource] = collections.deque(maxlen=_PENDING_PER_RESOURCE)
            pending.append((self.inventory.version(resource), received_ns))
        self._events.append(("uevent", action, subsystem, devpath, seqnum,
                             self._clock() - (now_ns - received_ns) / 1e9, now_ns - received_ns,
                             self._changes(change) if change else ()))

    def on_resync(self, reason: str, change: Change, started_ns: Optional[int] = None) -> None:
        """A full re-enumeration (``coldplug``, ``overflow``, ``reload``…) was folded in."""
        now_ns = self._perf_ns()
        self.resyncs.inc(reason)
        started = now_ns if started_ns is None else started_ns
        self._events.append(("resync", reason, None, None, None, self._clock() - (now_ns - started) / 1e9,
                             now_ns - started, self._changes(change)))

    def on_overflow(self, count: int = 1) -> None:
        """The source saw ``count`` ENOBUFS since the last call (it re-enumerates after)."""
        if count > 0:
            self.overflows.inc(amount=count)

    def on_sent(self, resource: str, version: int, previous: Optional[int]) -> None:
        """A stream sent ``resource``'s list at ``version``; it had sent ``previous`` before
        (None for a stream's first send, which is not a reaction to a uevent)."""
        if previous is None:
            return
        pending = self._pending.get(resource)
        if not pending:
            return
        now_ns = self._perf_ns()
        for v, received_ns in pending:
            if previous < v <= version:
                self.latency.observe((now_ns - received_ns) / 1e9)

    def on_registration(self, resource: str, ok: bool) -> None:
        self.registrations.inc(resource, "ok" if ok else "error")

    def on_kubelet_restart(self) -> None:
        self.kubelet_restarts.inc()

    def on_allocate(self, resource: str, result: str) -> None:
        """``result``: one of :data:`ALLOCATE_RESULTS` (gRPC code names in lower case)."""
        self.allocations.inc(resource, result)

    def on_reload(self, ok: bool, error: Optional[str] = None) -> None:
        """A rules reload finished; on failure ``error`` is what ``/inventory`` shows."""
        self.reloads.inc("ok" if ok else "error")
        self.rules_valid.set(1 if ok else 0)
        self.rules_error = None if ok else (error or "rules invalid")

    def on_refused(self, refusals: Iterable[Refusal]) -> None:
        """Devices a rule claims that are not offered (``Change.refused``: each device once)."""
        for refusal in refusals:
            self.refused.inc(refusal.resource)

    def recent(self, limit: Optional[int] = None) -> list[EventRecord]:
        """The last ``limit`` (default all kept) uevents and resyncs, oldest first."""
        raw = list(self._events)
        if limit is not None:
            raw = raw[len(raw) - limit:] if limit > 0 else []
        return [EventRecord(*r[:7], changes=tuple(ChangeRecord(*c) for c in r[7])) for r in raw]

    # ---- internals ------------------------------------------------------------------------
    def _changes(self, change: Change) -> tuple[tuple[str, str, str], ...]:
        get = self.inventory.get
        return tuple((r, i, e.health if (e := get(r, i)) is not None else "removed") for r, i in change.ids)

    def _device_counts(self) -> Iterable[tuple[tuple[str, str], int]]:
        for resource in sorted(self.inventory.resources()):
            healthy = unhealthy = 0
            for e in self.inventory.entries(resource):
                if e.healthy:
                    healthy += 1
                else:
                    unhealthy += 1
            yield (resource, "Healthy"), healthy
            yield (resource, "Unhealthy"), unhealthy
