"""devplug's series: the Telemetry hooks, scraped through prometheus_client and read back
with prometheus_client's own parser (what Prometheus sees, not our objects)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devplug.core.inventory import Change, Inventory, Sighting
from devplug.core.rules.model import Claim
from devplug.ops import metrics
from devplug.ops.telemetry import Telemetry

R = "devplug.io/serial"
C = "devplug.io/cam"
SRC = str(Path(__file__).resolve().parents[2] / "src")

#: Every devplug series: (family as the parser names it, type, help, label names). Renaming
#: any of them breaks dashboards and alerts, so this table is the contract.
SERIES = [
    ("devplug_devices", "gauge", "Devices in the inventory by resource and health.", {"resource", "health"}),
    ("devplug_uevents", "counter", "Uevents received, by action and subsystem.", {"action", "subsystem"}),
    ("devplug_uevent_to_send_seconds", "histogram",
     "Time from receiving a uevent to sending the changed device list on a ListAndWatch stream.", set()),
    ("devplug_registrations", "counter", "Registrations with kubelet, by resource and result.",
     {"resource", "result"}),
    ("devplug_kubelet_restarts", "counter", "Kubelet restarts seen (its socket re-created).", set()),
    ("devplug_allocate", "counter", "Allocate calls by resource and result.", {"resource", "result"}),
    ("devplug_rule_reloads", "counter", "Rules reloads by result (ok, error).", {"result"}),
    ("devplug_rules_valid", "gauge", "1 when the rules last read were valid, 0 while serving older rules.", set()),
    ("devplug_netlink_overflows", "counter",
     "Netlink receive buffer overflows (ENOBUFS): the kernel dropped uevents.", set()),
    ("devplug_resyncs", "counter", "Full re-enumerations by reason.", {"reason"}),
    ("devplug_devices_refused", "counter",
     "Claimed devices not offered because a rule's template gave no safe value for them "
     "(each counted once, when refused), by resource.", {"resource"}),
    ("devplug_ids_forgotten", "counter",
     "Unhealthy device IDs no pod held, dropped after the grace period or over the cap.", {"resource"}),
    ("devplug_http_connections", "gauge", "Open connections on the debug socket and the metrics address.",
     {"listener"}),
    ("devplug_http_connections_dropped", "counter",
     "Connections devplug closed or could not accept: evicted (idle, to make room), refused (cap reached, "
     "none idle), timeout (idle or slow client), accept_error (e.g. EMFILE).", {"listener", "reason"}),
]


class Scrape:
    """One ``/metrics`` body, parsed by prometheus_client."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self._values = {(s.name, frozenset(s.labels.items())): s.value
                        for f in self.families.values() for s in f.samples}

    def __call__(self, sample: str, **labels: str) -> float:
        """A sample's value; KeyError when absent (absent and 0 differ for rate())."""
        return self._values[sample, frozenset(labels.items())]

    def labels(self, sample: str) -> list[dict[str, str]]:
        return [dict(k) for n, k in self._values if n == sample]


def scrape(t: Telemetry) -> Scrape:
    return Scrape(metrics.exposition(t.registry).decode())


def seen(key, base, resource=R, share=1):
    return Sighting(key=key, present=True, resource=resource, base_id=base,
                    claim=Claim(resource=resource, share=share), devnode="/dev/" + base)


def _telemetry():
    counter = itertools.count(1)
    inv = Inventory(clock=lambda: float(next(counter)))
    perf = {"now": 0}
    t = Telemetry(inv, clock=lambda: 1_700_000_000.0, perf_ns=lambda: perf["now"])
    return inv, t, perf


def test_every_series_keeps_its_name_type_help_and_labels():
    inv, t, perf = _telemetry()
    inv.apply(seen("/sys/a", "a"))
    t.on_event("add", "tty", "/devices/a", 1, 0, Change())
    t.on_registration(R, True)
    t.on_allocate(R, "ok")
    t.on_resync("coldplug", Change())
    t.listener("metrics").open = 2
    t.listener("metrics").dropped["evicted"] += 1
    s = scrape(t)
    got = [(n, f.type, f.documentation) for n, f in s.families.items() if n.startswith("devplug_")]
    assert got == [(n, typ, help) for n, typ, help, _ in SERIES]
    for name, typ, _, labels in SERIES:
        for sample in s.families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)


def test_devplug_series_values_and_devices_are_read_at_scrape_time():
    inv, t, perf = _telemetry()
    inv.apply(seen("/sys/a", "a"))
    inv.apply(seen("/sys/b", "b"))
    inv.apply(seen("/sys/fuse", "fuse", resource=C, share=2))
    inv.apply(Sighting(key="/sys/b", present=False))
    fresh = scrape(t)
    # Before any reload: both results visible at 0 (so rate() works from the first one).
    assert fresh("devplug_rule_reloads_total", result="ok") == 0
    assert fresh("devplug_rule_reloads_total", result="error") == 0
    assert fresh("devplug_rules_valid") == 1
    assert fresh("devplug_kubelet_restarts_total") == 0 and fresh("devplug_netlink_overflows_total") == 0
    t.on_registration(R, True)
    t.on_registration(R, False)
    t.on_kubelet_restart()
    t.on_allocate(R, "ok")
    t.on_allocate(R, "failed_precondition")
    t.on_reload(False, "x.rules:3:7: unknown key")
    t.on_overflow(3)
    t.on_overflow()
    t.on_overflow(0)
    t.on_resync("overflow", Change())
    s = scrape(t)
    assert s("devplug_devices", resource=R, health="Healthy") == 1
    assert s("devplug_devices", resource=R, health="Unhealthy") == 1
    assert s("devplug_devices", resource=C, health="Healthy") == 2
    assert s("devplug_devices", resource=C, health="Unhealthy") == 0
    assert s("devplug_registrations_total", resource=R, result="ok") == 1
    assert s("devplug_registrations_total", resource=R, result="error") == 1
    assert s("devplug_kubelet_restarts_total") == 1
    assert s("devplug_allocate_total", resource=R, result="failed_precondition") == 1
    assert s("devplug_allocate_total", resource=R, result="ok") == 1
    assert s("devplug_rule_reloads_total", result="error") == 1
    assert s("devplug_rule_reloads_total", result="ok") == 0
    assert s("devplug_rules_valid") == 0
    assert s("devplug_netlink_overflows_total") == 4
    assert s("devplug_resyncs_total", reason="overflow") == 1
    assert s.labels("devplug_resyncs_total") == [{"reason": "overflow"}]
    assert t.rules_error == "x.rules:3:7: unknown key"
    # A later uevent changes the gauge without touching telemetry.
    inv.apply(seen("/sys/b", "b"))
    assert scrape(t)("devplug_devices", resource=R, health="Unhealthy") == 0
    t.on_reload(True)
    assert t.rules_error is None
    assert scrape(t)("devplug_rules_valid") == 1


def test_latency_is_recorded_per_uevent_per_stream_not_for_initial_sends():
    inv, t, perf = _telemetry()
    perf["now"] = 1_000_000
    a = inv.apply(seen("/sys/a", "a"))
    t.mark(a, 1_000_000 - 200_000, 1_000_000 - 150_000, 1_000_000 - 50_000)  # on the event path
    v1 = inv.version(R)
    perf["now"] = 2_000_000
    b = inv.apply(seen("/sys/b", "b"))
    t.mark(b, 2_000_000 - 100_000, 2_000_000 - 90_000, 2_000_000 - 10_000, 2_000_000 - 140_000)  # asked 40 µs before
    v2 = inv.version(R)
    perf["now"] = 2_000_000
    t.on_event("add", "tty", "/devices/a", 1, 1_000_000 - 200_000, a)  # counted after the sends
    t.on_event("add", "tty", "/devices/b", 2, 2_000_000 - 100_000, b)
    t.on_event("change", "tty", "/devices/x", 3, 2_000_000, Change())  # unclaimed: no latency
    perf["now"] = 2_300_000
    t.on_sent(R, v2, None)  # a new stream's initial list: not a reaction
    assert scrape(t)("devplug_uevent_to_send_seconds_count") == 0
    t.on_sent(R, v2, v1 - 1)  # one stream folds both uevents into one send
    t.on_sent(R, v2, v1, 2_100_000, 2_250_000)  # another had sent v1; it woke, then called send(2)
    s = scrape(t)
    assert s("devplug_uevent_to_send_seconds_count") == 3
    # 1.5 ms (first uevent, folded) ; 0.4 ms twice (second uevent)
    bucket = "devplug_uevent_to_send_seconds_bucket"
    assert s(bucket, le="0.0005") == 2
    assert s(bucket, le="0.001") == 2
    assert s(bucket, le="0.0025") == 3
    assert s(bucket, le="+Inf") == 3
    assert s("devplug_uevent_to_send_seconds_sum") == pytest.approx(0.0023)
    assert s("devplug_uevents_total", action="add", subsystem="tty") == 2
    assert s("devplug_uevents_total", action="change", subsystem="tty") == 1
    ev = t.recent()
    assert [e.seqnum for e in ev] == [1, 2, 3]
    assert ev[1].processing_ns == 100_000
    # Each send that carried a uevent timed its stages (ns): record, rules and inventory,
    # publish, stream wake-up, write until send(2), the send(2) call.
    stages = t.stage_summary()
    assert stages["count"] == 3
    assert stages["stages"] == ("record", "rules_inventory", "publish", "to_stream", "write", "send")
    assert (50_000, 100_000, 50_000, 0, 1_300_000, 0) in t.stages  # not told when: all of it is write
    assert (10_000, 80_000, 10_000, 0, 300_000, 0) in t.stages
    assert (10_000, 80_000, 10_000, 100_000, 150_000, 50_000) in t.stages
    # The read before the span, where the source timed it (b's, in both sends that carried it).
    assert list(t.reads) == [40_000, 40_000]
    assert stages["before"] == ("read",) and stages["p50_us"]["read"] == 40.0
    assert stages["p50_us"]["total"] == 400.0  # the read is not in the span (b: 10+80+10+0+300+0)
    assert [(c.resource, c.id, c.state) for c in ev[1].changes] == [(R, "b", "Healthy")]


def test_latency_buckets_are_the_documented_ones_cumulative_and_le_inclusive():
    inv, t, perf = _telemetry()
    # Latencies exactly on bounds count in that bucket (Prometheus' le is "≤").
    for latency_ns in (100_000, 1_000_000, 1_000_001, 2_000_000_000):
        t.mark(inv.apply(seen("/sys/a", "a")), 0, 0, 0)
        perf["now"] = latency_ns
        t.on_sent(R, inv.version(R), inv.version(R) - 1)
        perf["now"] = 0
        inv.apply(Sighting(key="/sys/a", present=False))
    s = scrape(t)
    bucket = "devplug_uevent_to_send_seconds_bucket"
    assert [b["le"] for b in s.labels(bucket)] == [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1.0", "+Inf"]
    assert s(bucket, le="0.0001") == 1
    assert s(bucket, le="0.001") == 2
    assert s(bucket, le="0.0025") == 3
    assert s(bucket, le="1.0") == 3
    assert s(bucket, le="+Inf") == 4
    assert s("devplug_uevent_to_send_seconds_sum") == pytest.approx(0.0001 + 0.001 + 0.001000001 + 2.0)


def test_label_values_from_devices_are_escaped():
    inv, t, perf = _telemetry()
    weird = 'sub"sys\\tem\nx'
    t.on_event("weird", weird, "/devices/w", 1, 0, Change())
    t.on_event("add", None, "/devices/n", 2, 0, Change())
    s = scrape(t)
    assert s("devplug_uevents_total", action="weird", subsystem=weird) == 1
    assert s("devplug_uevents_total", action="add", subsystem="") == 1
    assert 'subsystem="sub\\"sys\\\\tem\\nx"' in s.text


def test_event_log_is_a_ring():
    inv, t, perf = _telemetry()
    for i in range(300):
        t.on_event("change", "tty", f"/devices/{i}", i, 0, Change())
    events = t.recent()
    assert len(events) == 256
    assert events[0].seqnum == 44 and events[-1].seqnum == 299
    assert [e.seqnum for e in t.recent(2)] == [298, 299] and t.recent(0) == []


def test_process_series_come_from_proc_at_scrape_time():
    inv, t, perf = _telemetry()
    before = scrape(t)
    pipes = [os.pipe() for _ in range(50)]
    try:
        after = scrape(t)
    finally:
        for a, b in pipes:
            os.close(a)
            os.close(b)
    assert after("process_open_fds") >= before("process_open_fds") + 90
    assert 0 < after("process_open_fds") < after("process_max_fds")
    assert after("process_resident_memory_bytes") > 1 << 20


def test_registry_is_private():
    inv, t, perf = _telemetry()
    t.on_allocate(R, "ok")
    assert b"devplug_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert metrics.build_registry(t, process=False) is not t.registry
    s = Scrape(metrics.exposition(metrics.build_registry(t, process=False)).decode())
    assert "process_open_fds" not in s.families and s("devplug_allocate_total", resource=R, result="ok") == 1


def test_importing_building_and_scraping_start_no_thread():
    """Threads seen by the kernel (/proc/self/task), not just Python's: prometheus_client's
    own servers or a timer would show up here."""
    code = textwrap.dedent("""
        import os
        def tasks():
            return len(os.listdir("/proc/self/task"))
        assert tasks() == 1, tasks()
        from devplug.core.inventory import Inventory
        from devplug.ops import debug, metrics
        from devplug.ops.telemetry import Telemetry
        after_import = tasks()
        t = Telemetry(Inventory())
        body = metrics.exposition(t.registry)
        assert b"devplug_devices" in body and b"process_open_fds" in body
        print(after_import, tasks())
    """)
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1"]
