"""``/metrics``: devplug's series as a prometheus_client collector over Telemetry's records.

The event path only records (a dict increment, a bucket index: :class:`~.telemetry.Telemetry`);
this collector turns the records into metric families when Prometheus scrapes, and reads the
device counts from the inventory at that moment. prometheus_client does the rest: names and
label validation, escaping, the text format (``generate_latest``), and the parser the tests
use. Nothing registers in its global ``REGISTRY``; nothing runs on a timer and no thread
starts (its HTTP servers are not used: ``ops/httpserve.py`` serves the bytes).

The private registry also holds prometheus_client's ``ProcessCollector`` (``process_*``):
resident memory against the DaemonSet's limit and open descriptors against ``max_fds`` are
the first two questions when a node misbehaves. It reads ``/proc/self`` only when scraped. The platform
and GC collectors are left out: nothing an operator of devplug acts on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .telemetry import Telemetry

#: The text format 0.0.4, which every Prometheus reads (prometheus_client ≥ 0.22 calls 1.0.0
#: "latest"; our names and labels need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: 100 µs … 1 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def build_registry(telemetry: Telemetry, *, process: bool = True) -> CollectorRegistry:
    """A private registry with devplug's collector (and the process collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(telemetry))
    if process:
        ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the text format, collected now."""
    return generate_latest(registry)


def _counter(name: str, help: str, labels: tuple[str, ...],
             values: Mapping[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help, labels=labels)
    for key in sorted(values):
        family.add_metric(key, values[key])
    return family


class TelemetryCollector:
    """The ``devplug_*`` families, built from Telemetry's records at scrape time."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[Metric]:
        t = self._t
        devices = GaugeMetricFamily("devplug_devices", "Devices in the inventory by resource and health.",
                                    labels=("resource", "health"))
        for resource, healthy, unhealthy in t.device_counts():
            devices.add_metric((resource, "Healthy"), healthy)
            devices.add_metric((resource, "Unhealthy"), unhealthy)
        yield devices
        yield _counter("devplug_uevents_total", "Uevents received, by action and subsystem.",
                       ("action", "subsystem"), t.uevents)
        yield self._latency()
        yield _counter("devplug_registrations_total", "Registrations with kubelet, by resource and result.",
                       ("resource", "result"), t.registrations)
        yield _counter("devplug_kubelet_restarts_total", "Kubelet restarts seen (its socket re-created).",
                       (), {(): t.kubelet_restarts})
        yield _counter("devplug_allocate_total", "Allocate calls by resource and result.",
                       ("resource", "result"), t.allocations)
        yield _counter("devplug_rule_reloads_total", "Rules reloads by result (ok, error).",
                       ("result",), {(k,): v for k, v in t.reloads.items()})
        yield GaugeMetricFamily("devplug_rules_valid",
                                "1 when the rules last read were valid, 0 while serving older rules.",
                                value=1 if t.rules_valid else 0)
        yield _counter("devplug_netlink_overflows_total",
                       "Netlink receive buffer overflows (ENOBUFS): the kernel dropped uevents.",
                       (), {(): t.overflows})
        yield _counter("devplug_resyncs_total", "Full re-enumerations by reason.",
                       ("reason",), {(k,): v for k, v in t.resyncs.items()})
        yield _counter("devplug_devices_refused_total",
                       "Claimed devices not offered because a rule's template gave no safe value for them "
                       "(each counted once, when refused), by resource.", ("resource",),
                       {(k,): v for k, v in t.refused.items()})
        yield _counter("devplug_ids_forgotten_total",
                       "Unhealthy device IDs no pod held, dropped after the grace period or over the cap.",
                       ("resource",), {(k,): v for k, v in t.forgotten.items()})
        yield from self._listeners()

    def _latency(self) -> HistogramMetricFamily:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self._t.latency_counts):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        return HistogramMetricFamily(
            "devplug_uevent_to_send_seconds",
            "Time from receiving a uevent to sending the changed device list on a ListAndWatch stream.",
            buckets=buckets, sum_value=self._t.latency_sum)

    def _listeners(self) -> Iterable[Metric]:
        listeners = self._t.listeners
        open_ = GaugeMetricFamily("devplug_http_connections",
                                  "Open connections on the debug socket and the metrics address.",
                                  labels=("listener",))
        dropped = CounterMetricFamily(
            "devplug_http_connections_dropped_total",
            "Connections devplug closed or could not accept: evicted (idle, to make room), refused "
            "(cap reached, none idle), timeout (idle or slow client), accept_error (e.g. EMFILE).",
            labels=("listener", "reason"))
        for name in sorted(listeners):
            stats = listeners[name]
            open_.add_metric((name,), stats.open)
            for reason in sorted(stats.dropped):
                dropped.add_metric((name, reason), stats.dropped[reason])
        yield open_
        yield dropped
