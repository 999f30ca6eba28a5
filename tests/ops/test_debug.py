"""The debug routes over a real unix socket (curl) and the metrics address over TCP."""

from __future__ import annotations

import datetime
import itertools
import json


from devplug.ops import debug, metrics
from devplug.ops.debug import DebugApp, check_health
from devplug.core.inventory import Change, Inventory, Sighting
from devplug.kubelet.adapter import ResourceStatus
from devplug.core.claims import Pipeline
from devplug.core.rules import RuleSet
from devplug.core.rules.model import Claim, Mount, RuleRef
from devplug.ops.telemetry import Telemetry

from .conftest import curl, serve_while
from .test_metrics import Scrape

R = "devplug.io/serial"
C = "devplug.io/cam"
T0 = 1_714_557_600.25  # 2024-05-01T10:00:00.250Z
RULE = RuleRef(file="/etc/devplug/10-serial.rules", line=3, text='SUBSYSTEM=="tty", RESOURCE="serial"')


def status(resource, *, serving=True, registered=True):
    return ResourceStatus(resource=resource, socket=f"/p/{resource}.sock", serving=serving,
                          registered=registered, streams=1, last_error=None, registrations=1,
                          restarts=0, registered_at=T0)


def inventory():
    clock = itertools.count(T0, 1.0)
    inv = Inventory(clock=lambda: next(clock))
    claim = Claim(resource=R, permissions="rw", container_path="/dev/serial0",
                  mounts=(Mount("/run/x", "/x", True),), envs=(("BAUD", "9600"),),
                  annotations=(("a/b", "c"),), options=frozenset({"symlinks"}), rule=RULE, matched=(RULE,))
    inv.apply(Sighting(key="/sys/devices/usb1/1-1/ttyUSB0", present=True, resource=R, base_id="ftdi-A1",
                       claim=claim, devnode="/dev/ttyUSB0", subsystem="tty",
                       symlinks=("/dev/serial/by-id/usb-FTDI-A1",), usb_node="/dev/bus/usb/001/004"))
    inv.apply(Sighting(key="/sys/devices/v/fuse", present=True, resource=C, base_id="fuse",
                       claim=Claim(resource=C, share=2), devnode="/dev/fuse", subsystem="misc"))
    inv.apply(Sighting(key="/sys/devices/v/fuse", present=False))
    return inv


def make_app(inv, *, plugins=None, monitor=True, register=True, rules_error=None, holders=None):
    telemetry = Telemetry(inv)
    if rules_error:
        telemetry.on_reload(False, rules_error)
    pipeline = Pipeline(RuleSet(["/etc/devplug/10-serial.rules"], []), inv)
    plugins = {R: status(R), C: status(C)} if plugins is None else plugins
    return DebugApp(inv, telemetry, pipeline=lambda: pipeline, plugins=lambda: plugins,
                    monitor_running=lambda: monitor, register=register, node="edge-7",
                    source=lambda: "kernel", clock=lambda: T0 + 60, find_device=_no_device, holders=holders)


def _no_device(spec):
    raise LookupError(f"{spec}: no such device in sysfs")


def test_rfc3339():
    assert debug.rfc3339(T0) == "2024-05-01T10:00:00.250Z"


async def test_inventory_over_the_unix_socket(tmp_path):
    sock = str(tmp_path / "debug.sock")
    app = make_app(inventory(), rules_error="/etc/devplug/10-serial.rules:4:1: unknown key FOO")
    r = await serve_while(debug.serve, app, sock, None,
                    client=lambda _: curl("--unix-socket", sock, "http://devplug/inventory"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["node"] == "edge-7" and doc["source"] == "kernel"
    assert doc["generated_at"] == "2024-05-01T10:01:00.250Z"
    assert doc["rules"] == {"files": ["/etc/devplug/10-serial.rules"],
                            "error": "/etc/devplug/10-serial.rules:4:1: unknown key FOO"}
    assert doc["health"] == {"ok": True, "reason": "ok"}
    assert doc["plugins"][R]["registered"] is True
    by_id = {d["id"]: d for d in doc["devices"]}
    assert sorted(by_id) == ["ftdi-A1", "fuse-s0", "fuse-s1"]
    assert [d["resource"] for d in doc["devices"]] == [C, C, R]  # sorted by resource, then ID
    d = by_id["ftdi-A1"]
    assert {k: d[k] for k in ("resource", "health", "devnode", "syspath", "subsystem", "rule", "since",
                              "since_epoch", "symlinks", "physical", "usb_node", "share")} == {
        "resource": R, "health": "Healthy", "devnode": "/dev/ttyUSB0",
        "syspath": "/sys/devices/usb1/1-1/ttyUSB0", "subsystem": "tty",
        "rule": "/etc/devplug/10-serial.rules:3", "since": "2024-05-01T10:00:00.250Z", "since_epoch": T0,
        "symlinks": ["/dev/serial/by-id/usb-FTDI-A1"], "physical": "ftdi-A1",
        "usb_node": "/dev/bus/usb/001/004", "share": 1}
    assert d["claim"] == {
        "resource": R, "id": "ftdi-A1", "rule": "/etc/devplug/10-serial.rules:3", "share": 1,
        "permissions": "rw", "container_path": "/dev/serial0", "device_id": None,
        "mounts": [{"host_path": "/run/x", "container_path": "/x", "read_only": True}],
        "envs": {"BAUD": "9600"}, "annotations": {"a/b": "c"}, "options": ["symlinks"],
        "matched": ["/etc/devplug/10-serial.rules:3"], "errors": [], "refused": None}
    assert doc["refused"] == []
    fuse = by_id["fuse-s1"]
    assert fuse["health"] == "Unhealthy" and fuse["share"] == 2 and fuse["physical"] == "fuse"
    # Unhealthy since the removal (third clock tick), not since it was first seen.
    assert datetime.datetime.fromisoformat(fuse["since"].replace("Z", "+00:00")).timestamp() == T0 + 2


async def test_events_route_and_limit(tmp_path):
    sock = str(tmp_path / "debug.sock")
    inv = Inventory()
    app = make_app(inv)
    t = app.telemetry
    change = inv.apply(Sighting(key="/sys/a", present=True, resource=R, base_id="a", claim=Claim(resource=R)))
    import time
    now = time.perf_counter_ns()
    t.on_event("add", "tty", "/devices/a", 41, now - 150_000, change)
    t.on_event("remove", "tty", "/devices/zz", 42, now, Change())
    t.on_resync("overflow", Change())

    def client(_):
        return (curl("--unix-socket", sock, "http://devplug/events"),
                curl("--unix-socket", sock, "http://devplug/events?limit=1"),
                curl("--unix-socket", sock, "-o", "/dev/null", "-w", "%{http_code}",
                     "http://devplug/events?limit=x"))

    full, limited, bad = await serve_while(debug.serve, app, sock, None, client=client)
    events = json.loads(full.stdout)["events"]
    assert [(e["kind"], e["action"], e["seqnum"]) for e in events] == [
        ("uevent", "add", 41), ("uevent", "remove", 42), ("resync", "overflow", None)]
    first = events[0]
    assert first["subsystem"] == "tty" and first["devpath"] == "/devices/a"
    assert first["changes"] == [{"resource": R, "id": "a", "state": "Healthy"}]
    assert first["processing_us"] >= 150
    assert first["received"].endswith("Z") and abs(first["received_epoch"] - time.time()) < 60
    assert [e["action"] for e in json.loads(limited.stdout)["events"]] == ["overflow"]
    assert bad.stdout == "400"


def test_health_logic_with_real_inventory():
    inv = inventory()  # R has a healthy device, C two unhealthy ones
    ok = check_health(inv, monitor_running=True, plugins={R: status(R), C: status(C)})
    assert ok == debug.Health(True, "ok")
    down = check_health(inv, monitor_running=False, plugins={R: status(R), C: status(C)})
    assert (down.ok, down.reason) == (False, "udev monitor is not running")
    unreg = check_health(inv, monitor_running=True, plugins={R: status(R), C: status(C, registered=False)})
    assert (unreg.ok, unreg.reason) == (False, f"not registered with kubelet: {C}")
    missing = check_health(inv, monitor_running=True, plugins={C: status(C, serving=False)})
    assert (missing.ok, missing.reason) == (False, f"not serving: {C}, {R}")
    # Registration off (--no-register): serving is enough.
    assert check_health(inv, monitor_running=True, register=False,
                        plugins={R: status(R, registered=False), C: status(C, registered=False)}).ok
    # A resource without devices need not be registered.
    inv.forget([C])
    empty = Inventory()
    empty.apply(Sighting(key="/sys/a", present=True, resource=R, base_id="a", claim=Claim(resource=R)))
    empty.apply(Sighting(key="/sys/a", present=True))  # leaves the resource: R known, no entries
    assert R in empty.resources() and empty.entries(R) == ()
    assert check_health(empty, monitor_running=True, plugins={R: status(R, registered=False)}).ok


async def test_metrics_address_serves_metrics_and_healthz_only():
    inv = inventory()
    plugins = {R: status(R), C: status(C)}
    app = make_app(inv, plugins=plugins)

    def client(bound):
        base = f"http://{bound[0]}:{bound[1]}"
        code = ("-o", "/dev/null", "-w", "%{http_code}")
        healthy = curl("-i", base + "/healthz")
        plugins[C] = status(C, registered=False)
        sick = curl("-i", base + "/healthz")
        return (healthy, sick, curl(base + "/metrics"), curl(*code, base + "/inventory"),
                curl("-i", base + "/metrics"))

    healthy, sick, metrics, inv_code, head = await serve_while(debug.serve, app, None, "127.0.0.1:0", client=client)
    assert healthy.stdout.startswith("HTTP/1.1 200 OK") and healthy.stdout.endswith("\n\nok\n")
    assert sick.stdout.startswith("HTTP/1.1 503 Service Unavailable")
    assert sick.stdout.endswith(f"not registered with kubelet: {C}\n")
    assert Scrape(metrics.stdout)("devplug_devices", resource=C, health="Unhealthy") == 2
    assert inv_code.stdout == "404"
    assert "content-type: text/plain; version=0.0.4" in head.stdout.lower()


async def test_explain_needs_a_device_and_reports_unknown_ones(tmp_path):
    sock = str(tmp_path / "debug.sock")
    app = make_app(Inventory())

    def client(_):
        code = ("-w", "\n%{http_code}")
        return (curl("--unix-socket", sock, *code, "http://devplug/explain"),
                curl("--unix-socket", sock, *code, "http://devplug/explain?syspath=/sys/devices/nope"),
                curl("--unix-socket", sock, *code, "http://devplug/nothing"))

    missing, unknown, nothing = await serve_while(debug.serve, app, sock, None, client=client)
    assert missing.stdout.endswith("\n400")
    body, code = unknown.stdout.rsplit("\n", 1)
    assert code == "404" and json.loads(body) == {"error": "/sys/devices/nope: no such device in sysfs"}
    assert nothing.stdout.endswith("\n404") and "/inventory" in nothing.stdout


def test_refused_devices_in_inventory_explain_and_metrics():
    """A device whose templates fail is listed with its reason, never as an entry (issue 10)."""
    from devplug.core.rules import parse_rules
    from tests.core.gadget import gadget

    rules, errors = parse_rules('ATTRS{idVendor}=="0403", RESOURCE="serial", MOUNT+="/v/%s{serial}:/d"\n', "s.rules")
    assert not errors
    inv = Inventory()
    pipeline = Pipeline(RuleSet(["s.rules"], rules), inv)
    app = make_app(inv)
    app._pipeline = lambda: pipeline
    good, bad = gadget("OK1", port="1-1", tty="ttyUSB0"), gadget("..", port="1-2", tty="ttyUSB1")
    change = pipeline.resync([good, bad])
    app.telemetry.on_refused(change.refused)
    doc = app.inventory_json()
    assert [d["id"] for d in doc["devices"]] == ["0403-6001-OK1-if00"]
    (r,) = doc["refused"]
    assert r == {"resource": R, "id": "0403-6001-..-if00", "syspath": bad.syspath, "hostpath": False,
                 "devnode": "/dev/ttyUSB1", "subsystem": "tty", "rule": "s.rules:1",
                 "reason": "s.rules:1:45: MOUNT: %s{serial} makes the path component '..'"}
    ex = debug.explain_device(pipeline, bad)
    assert ex["claim"]["refused"] == {"rule": "s.rules:1", "reason": r["reason"]}
    assert ex["claim"]["errors"] == [r["reason"]] and ex["claim"]["id"] == "0403-6001-..-if00"
    ok = debug.explain_device(pipeline, good)["claim"]
    assert ok["refused"] is None and ok["mounts"] == [{"host_path": "/v/OK1", "container_path": "/d",
                                                       "read_only": False}]
    # The same shape in all three places: /inventory's entry claim has the same keys.
    assert set(ok) == set(doc["devices"][0]["claim"])
    text = metrics.exposition(app.telemetry.registry).decode()
    assert f'devplug_devices_refused_total{{resource="{R}"}} 1.0' in text.splitlines()
