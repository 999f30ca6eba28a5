"""The Prometheus registry and devplug's series, checked with a strict format parser."""

from __future__ import annotations

import itertools

import pytest

from devplug.core.inventory import Change, Inventory, Sighting
from devplug.ops.metrics import Registry, format_value
from devplug.core.rules.model import Claim
from devplug.ops.telemetry import LATENCY_BUCKETS, Telemetry

from .promparse import FormatError, parse

R = "devplug.io/serial"
C = "devplug.io/cam"


def seen(key, base, resource=R, share=1):
    return Sighting(key=key, present=True, resource=resource, base_id=base,
                    claim=Claim(resource=resource, share=share), devnode="/dev/" + base)


def test_counter_gauge_labels_escaping_and_help():
    reg = Registry()
    c = reg.counter("x_total", 'Help with a \\ backslash\nand newline.', ("path",))
    tricky = 'a"b\\c\nd'
    c.inc(tricky)
    c.inc(path="plain", amount=2.5)
    g = reg.gauge("g", "A gauge.")
    g.set(-3)
    fams = parse(reg.render())
    assert fams["x_total"].help == 'Help with a \\ backslash\nand newline.'
    assert fams["x_total"].type == "counter"
    assert fams["x_total"].value(path=tricky) == 1
    assert fams["x_total"].value(path="plain") == 2.5
    assert fams["g"].type == "gauge" and fams["g"].value() == -3
    with pytest.raises(ValueError):
        c.inc(tricky, amount=-1)
    with pytest.raises(ValueError):
        c.inc()  # label missing
    with pytest.raises(ValueError):
        c.inc(other="x")
    with pytest.raises(ValueError):
        reg.counter("x_total", "again")
    with pytest.raises(ValueError):
        reg.counter("bad-name", "no")


def test_histogram_buckets_are_cumulative_and_le_inclusive():
    reg = Registry()
    h = reg.histogram("lat_seconds", "Latency.", (0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.002, 0.01, 0.5, 7):
        h.observe(v)
    fams = parse(reg.render())
    f = fams["lat_seconds"]
    bucket = {le: f.sample("lat_seconds_bucket", le=le) for le in ("0.001", "0.01", "0.1", "+Inf")}
    assert bucket == {"0.001": 2, "0.01": 4, "0.1": 4, "+Inf": 6}
    assert f.sample("lat_seconds_count") == 6
    assert f.sample("lat_seconds_sum") == pytest.approx(7.5135)
    with pytest.raises(ValueError):
        reg.histogram("h2", "x", (0.1, 0.01))


def test_empty_labelled_family_still_declared_and_text_ends_with_newline():
    reg = Registry()
    reg.counter("a_total", "A.", ("x",))
    reg.histogram("h", "H.", (1,), ("r",))
    text = reg.render()
    assert text == "# HELP a_total A.\n# TYPE a_total counter\n# HELP h H.\n# TYPE h histogram\n"
    assert parse(text)["a_total"].samples == []


@pytest.mark.parametrize("v,text", [(1, "1"), (1.0, "1"), (0.25, "0.25"), (float("inf"), "+Inf"),
                                    (float("-inf"), "-Inf"), (float("nan"), "NaN"), (True, "1"), (1e-07, "1e-07")])
def test_format_value(v, text):
    assert format_value(v) == text


def test_parser_is_strict():
    with pytest.raises(FormatError):
        parse("x 1\n")  # no TYPE
    with pytest.raises(FormatError):
        parse("# HELP x X\n# TYPE x counter\nx 1\nx 2\n")  # duplicate
    with pytest.raises(FormatError):
        parse('# HELP x X\n# TYPE x gauge\nx{a="\\t"} 1\n')  # bad escape
    with pytest.raises(FormatError):
        parse('# HELP h H\n# TYPE h histogram\nh_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 0\nh_count 1\n')


def _telemetry():
    counter = itertools.count(1)
    inv = Inventory(clock=lambda: float(next(counter)))
    perf = {"now": 0}
    t = Telemetry(inv, clock=lambda: 1_700_000_000.0, perf_ns=lambda: perf["now"])
    return inv, t, perf


def test_devplug_series_render_and_devices_are_read_at_scrape_time():
    inv, t, perf = _telemetry()
    inv.apply(seen("/sys/a", "a"))
    inv.apply(seen("/sys/b", "b"))
    inv.apply(seen("/sys/fuse", "fuse", resource=C, share=2))
    inv.apply(Sighting(key="/sys/b", present=False))
    t.on_registration(R, True)
    t.on_registration(R, False)
    t.on_kubelet_restart()
    t.on_allocate(R, "ok")
    t.on_allocate(R, "failed_precondition")
    t.on_reload(False, "x.rules:3:7: unknown key")
    t.on_overflow(3)
    t.on_overflow()
    t.on_resync("overflow", Change())
    fams = parse(t.registry.render())
    assert {n for n in fams} >= {
        "devplug_devices", "devplug_uevents_total", "devplug_uevent_to_send_seconds",
        "devplug_registrations_total", "devplug_kubelet_restarts_total", "devplug_allocate_total",
        "devplug_rule_reloads_total", "devplug_netlink_overflows_total", "devplug_resyncs_total"}
    d = fams["devplug_devices"]
    assert d.value(resource=R, health="Healthy") == 1
    assert d.value(resource=R, health="Unhealthy") == 1
    assert d.value(resource=C, health="Healthy") == 2
    assert d.value(resource=C, health="Unhealthy") == 0
    assert fams["devplug_registrations_total"].value(resource=R, result="error") == 1
    assert fams["devplug_kubelet_restarts_total"].value() == 1
    assert fams["devplug_allocate_total"].value(resource=R, result="failed_precondition") == 1
    assert fams["devplug_rule_reloads_total"].value(result="error") == 1
    assert fams["devplug_rule_reloads_total"].value(result="ok") == 0
    assert fams["devplug_rules_valid"].value() == 0
    assert fams["devplug_netlink_overflows_total"].value() == 4
    assert fams["devplug_resyncs_total"].value(reason="overflow") == 1
    assert t.rules_error == "x.rules:3:7: unknown key"
    # A later uevent changes the gauge without touching telemetry.
    inv.apply(seen("/sys/b", "b"))
    assert parse(t.registry.render())["devplug_devices"].value(resource=R, health="Unhealthy") == 0
    t.on_reload(True)
    assert t.rules_error is None


def test_latency_is_recorded_per_uevent_per_stream_not_for_initial_sends():
    inv, t, perf = _telemetry()
    perf["now"] = 1_000_000
    t.on_event("add", "tty", "/devices/a", 1, 1_000_000 - 200_000, inv.apply(seen("/sys/a", "a")))
    v1 = inv.version(R)
    perf["now"] = 2_000_000
    t.on_event("add", "tty", "/devices/b", 2, 2_000_000 - 100_000, inv.apply(seen("/sys/b", "b")))
    v2 = inv.version(R)
    t.on_event("change", "tty", "/devices/x", 3, 2_000_000, Change())  # unclaimed: no latency
    perf["now"] = 2_300_000
    t.on_sent(R, v2, None)  # a new stream's initial list: not a reaction
    assert t.latency.count() == 0
    t.on_sent(R, v2, v1 - 1)  # one stream folds both uevents into one send
    t.on_sent(R, v2, v1)  # another had already sent v1
    assert t.latency.count() == 3
    fams = parse(t.registry.render())
    lat = fams["devplug_uevent_to_send_seconds"]
    # 1.5 ms (first uevent, folded) ; 0.4 ms twice (second uevent)
    assert lat.sample("devplug_uevent_to_send_seconds_bucket", le="0.0005") == 2
    assert lat.sample("devplug_uevent_to_send_seconds_bucket", le="0.001") == 2
    assert lat.sample("devplug_uevent_to_send_seconds_bucket", le="0.0025") == 3
    assert lat.sample("devplug_uevent_to_send_seconds_sum") == pytest.approx(0.0023)
    assert [float(le) for le in (str(b) for b in LATENCY_BUCKETS)][0] == 0.0001
    assert fams["devplug_uevents_total"].value(action="add", subsystem="tty") == 2
    assert fams["devplug_uevents_total"].value(action="change", subsystem="tty") == 1
    ev = t.recent()
    assert [e.seqnum for e in ev] == [1, 2, 3]
    assert ev[0].processing_ns == 200_000
    assert ev[0].received == pytest.approx(1_700_000_000.0 - 0.0002)
    assert [(c.resource, c.id, c.state) for c in ev[1].changes] == [(R, "b", "Healthy")]


def test_event_log_is_a_ring():
    inv, t, perf = _telemetry()
    for i in range(300):
        t.on_event("change", "tty", f"/devices/{i}", i, 0, Change())
    events = t.recent()
    assert len(events) == 256
    assert events[0].seqnum == 44 and events[-1].seqnum == 299
    assert [e.seqnum for e in t.recent(2)] == [298, 299] and t.recent(0) == []


def test_prometheus_client_parses_it_too():
    parser = pytest.importorskip("prometheus_client.parser")
    inv, t, perf = _telemetry()
    inv.apply(seen("/sys/a", "a"))
    t.on_event("add", "tty", "/devices/a", 1, 0, Change())
    t.latency.observe(0.0003)
    t.on_allocate(R, "ok")
    t.uevents.inc("weird", 'sub"sys\\tem\n')
    fams = {f.name: f for f in parser.text_string_to_metric_families(t.registry.render())}
    assert fams["devplug_devices"].type == "gauge"
    assert fams["devplug_uevents"].type == "counter"
    hist = fams["devplug_uevent_to_send_seconds"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 1
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    weird = [s for s in fams["devplug_uevents"].samples if s.labels.get("action") == "weird"]
    assert weird[0].labels["subsystem"] == 'sub"sys\\tem\n'
