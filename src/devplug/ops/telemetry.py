"""What the daemon reports about itself: the numbers behind ``/metrics`` and the recent-uevent log.

The daemon and the kubelet adapter call the ``on_*`` hooks from their trio tasks; each only
records (a dict increment, a histogram bucket index), so the event path stays cheap.
``ops/metrics.py`` turns the records into Prometheus families when ``/metrics`` is
scraped, and reads the devices per resource and health from the inventory only then.

Latency (uevent → ListAndWatch send) is measured per stream and per uevent: ``on_event``
remembers, per resource, which inventory version each uevent produced and when it was
received; ``on_sent`` is told which versions a stream's send covered, so a send that folds
three uevents records three latencies and a stream's first (initial) send records none.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterable
from typing import Optional

import attrs

from prometheus_client import CollectorRegistry

from ..core.inventory import Change, Inventory, Refusal
from .httpserve import ConnectionStats
from .metrics import LATENCY_BUCKETS, build_registry

EVENT_LOG_SIZE = 256
#: What one uevent's path to kubelet is cut into (see ``Telemetry.on_sent``): reading the
#: message to its record; rules, identity and inventory; ``mark`` itself (it runs just before
#: the change is published); publishing until the stream starts its write (later for a
#: stream whose socket was full, or for the rest of a burst); encoding and framing the list
#: until ``send(2)`` is called; the ``send(2)`` call itself. The last one wakes the receiver:
#: when both CPUs are busy the kernel may run it before the call returns, so ``send`` can
#: hold the receiver's own work (with 1,000 devices, kubelet decoding the list), not devplug's.
STAGES = ("record", "rules_inventory", "publish", "to_stream", "write", "send")
#: Before the span: from asking the socket for the message to having its properties
#: (``recvmsg``, the sender's checks, the parse). Not in ``total`` nor ``own``, which start
#: when the uevent was read; trio's wake-up before it is not measured here at all.
READ = "read"
_PENDING_PER_RESOURCE = 64


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


def _quantile_us(ordered: list[int], q: float) -> float:
    """The ``q`` quantile of sorted nanoseconds (nearest rank), in µs to one decimal."""
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] / 1e3, 1)


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
        self._pending: dict[str, collections.deque[tuple[int, int, int, int, int, Optional[int]]]] = {}
        self.stages: collections.deque[tuple[int, int, int, int, int, int]] = collections.deque(maxlen=4096)
        self.reads: collections.deque[int] = collections.deque(maxlen=4096)  # READ of the same sends

        # The records /metrics reports (ops/metrics.py reads them when scraped).
        self.uevents: collections.Counter[tuple[str, str]] = collections.Counter()  # (action, subsystem)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, +Inf last; not cumulative
        self.latency_sum = 0.0
        self.registrations: collections.Counter[tuple[str, str]] = collections.Counter()  # (resource, result)
        self.kubelet_restarts = 0
        self.allocations: collections.Counter[tuple[str, str]] = collections.Counter()  # (resource, result)
        self.reloads = {"ok": 0, "error": 0}
        self.rules_valid = True
        self.overflows = 0
        self.resyncs: collections.Counter[str] = collections.Counter()  # reason
        self.refused: collections.Counter[str] = collections.Counter()  # resource
        self.forgotten: collections.Counter[str] = collections.Counter()  # resource
        self.listeners: dict[str, ConnectionStats] = {}  # "debug", "metrics": kept by httpserve
        self.registry: CollectorRegistry = build_registry(self)

    # ---- hooks the daemon calls ------------------------------------------------------------
    def mark(self, change: Change, received_ns: int, built_ns: int, handled_ns: int,
             read_ns: Optional[int] = None) -> None:
        """On the event path, right before a uevent's change is published (the streams
        write inside ``publish``): remember when each stage ended, so the stream sends that
        carry it can time them (``on_sent``). ``*_ns`` are ``time.perf_counter_ns()``:
        message read, record built, rules and inventory done, and (``read_ns``) the message
        asked for; now is when publishing starts."""
        published_ns = self._perf_ns()
        for resource in change.resources:
            pending = self._pending.get(resource)
            if pending is None:
                pending = self._pending[resource] = collections.deque(maxlen=_PENDING_PER_RESOURCE)
            pending.append((self.inventory.version(resource), received_ns, built_ns, handled_ns, published_ns,
                            read_ns))

    def on_event(self, action: str, subsystem: Optional[str], devpath: Optional[str],
                 seqnum: Optional[int], received_ns: int, change: Change) -> None:
        """A uevent went through the pipeline; called once its streams have written (the
        counters and the event log are not on the path to kubelet)."""
        now_ns = self._perf_ns()
        self.uevents[action, subsystem or ""] += 1
        self._events.append(("uevent", action, subsystem, devpath, seqnum,
                             self._clock() - (now_ns - received_ns) / 1e9, now_ns - received_ns,
                             self._changes(change) if change else ()))

    def on_resync(self, reason: str, change: Change, started_ns: Optional[int] = None) -> None:
        """A full re-enumeration (``coldplug``, ``overflow``, ``reload``…) was folded in."""
        now_ns = self._perf_ns()
        self.resyncs[reason] += 1
        started = now_ns if started_ns is None else started_ns
        self._events.append(("resync", reason, None, None, None, self._clock() - (now_ns - started) / 1e9,
                             now_ns - started, self._changes(change)))

    def on_overflow(self, count: int = 1) -> None:
        """The source saw ``count`` ENOBUFS since the last call (it re-enumerates after)."""
        if count > 0:
            self.overflows += count

    def on_sent(self, resource: str, version: int, previous: Optional[int], woke_ns: Optional[int] = None,
                send_ns: Optional[int] = None) -> None:
        """A stream sent ``resource``'s list at ``version``; it had sent ``previous`` before
        (None for a stream's first send, which is not a reaction to a uevent). ``woke_ns``:
        when the stream resumed to send it; ``send_ns``: when its last ``send(2)`` began."""
        if previous is None:
            return
        pending = self._pending.get(resource)
        if not pending:
            return
        now_ns = self._perf_ns()
        for v, received_ns, built_ns, handled_ns, published_ns, read_ns in pending:
            if previous < v <= version:
                seconds = (now_ns - received_ns) / 1e9
                self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le is inclusive
                self.latency_sum += seconds
                woke = published_ns if woke_ns is None else woke_ns
                sending = now_ns if send_ns is None or send_ns < woke else send_ns
                self.stages.append((built_ns - received_ns, handled_ns - built_ns, published_ns - handled_ns,
                                    woke - published_ns, sending - woke, now_ns - sending))
                if read_ns is not None:
                    self.reads.append(received_ns - read_ns)

    def stage_summary(self) -> dict:
        """Percentiles (µs) of each stage of the last sends that carried a uevent, of their
        ``total``, and of ``own``: the total up to the ``send(2)`` call (devplug's own work);
        and of ``read`` (:data:`READ`, before the span) where the source timed it."""
        samples = list(self.stages)
        out: dict = {"count": len(samples), "stages": STAGES}
        if not samples:
            return out
        totals = sorted(sum(s) for s in samples)
        owns = sorted(sum(s) - s[-1] for s in samples)
        columns = [sorted(col) for col in zip(*samples)]
        reads = sorted(self.reads)
        if reads:
            out["before"] = (READ,)
        for q, name in ((0.5, "p50_us"), (0.9, "p90_us"), (0.99, "p99_us")):
            out[name] = {**{stage: _quantile_us(col, q) for stage, col in zip(STAGES, columns)},
                         "total": _quantile_us(totals, q), "own": _quantile_us(owns, q)}
            if reads:
                out[name][READ] = _quantile_us(reads, q)
        return out

    def on_registration(self, resource: str, ok: bool) -> None:
        self.registrations[resource, "ok" if ok else "error"] += 1

    def on_kubelet_restart(self) -> None:
        self.kubelet_restarts += 1

    def on_allocate(self, resource: str, result: str) -> None:
        """``result``: ``ok``, ``invalid_argument``, ``failed_precondition`` or ``error``."""
        self.allocations[resource, result] += 1

    def on_reload(self, ok: bool, error: Optional[str] = None) -> None:
        """A rules reload finished; on failure ``error`` is what ``/inventory`` shows."""
        self.reloads["ok" if ok else "error"] += 1
        self.rules_valid = ok
        self.rules_error = None if ok else (error or "rules invalid")

    def listener(self, name: str) -> ConnectionStats:
        """The connection counts of listener ``name``, for ``httpserve`` to keep up to date."""
        return self.listeners.setdefault(name, ConnectionStats())

    def on_refused(self, refusals: Iterable[Refusal]) -> None:
        """Devices a rule claims that are not offered (``Change.refused``: each device once)."""
        for refusal in refusals:
            self.refused[refusal.resource] += 1

    def on_forgotten(self, forgotten: Iterable[tuple[str, str]]) -> None:
        """Unhealthy IDs dropped from the inventory (``Change.forgotten``: (resource, ID))."""
        for resource, _id in forgotten:
            self.forgotten[resource] += 1

    def recent(self, limit: Optional[int] = None) -> list[EventRecord]:
        """The last ``limit`` (default all kept) uevents and resyncs, oldest first."""
        raw = list(self._events)
        if limit is not None:
            raw = raw[len(raw) - limit:] if limit > 0 else []
        return [EventRecord(*r[:7], changes=tuple(ChangeRecord(*c) for c in r[7])) for r in raw]

    def device_counts(self) -> Iterable[tuple[str, int, int]]:
        """``(resource, healthy, unhealthy)`` for every resource, read from the inventory now."""
        for resource in sorted(self.inventory.resources()):
            entries = self.inventory.entries(resource)
            healthy = sum(1 for e in entries if e.healthy)
            yield resource, healthy, len(entries) - healthy

    # ---- internals ------------------------------------------------------------------------
    def _changes(self, change: Change) -> tuple[tuple[str, str, str], ...]:
        get = self.inventory.get
        return tuple((r, i, e.health if (e := get(r, i)) is not None else "removed") for r, i in change.ids)
