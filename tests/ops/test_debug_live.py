"""The debug routes over real parts: rules file, pipeline, kernel uevents, sysfs lookups."""

from __future__ import annotations

import json
import os

import pytest
import trio

from devplug.ops import debug
from devplug.ops.debug import DebugApp
from devplug.core.inventory import Inventory
from devplug.core.claims import Pipeline
from devplug.sources.rulefiles import read_rules as load_rules
from devplug.ops.telemetry import Telemetry
from devplug.sources.fs import path_mode
from devplug.sources.udev import DeviceEvent, Uevent, Resync, UdevSource, find_device

from .conftest import curl

pytestmark = pytest.mark.netlink

N = 27  # our tty for this module (tty20..29 are ours to poke)
RULES = f'''\
SUBSYSTEM=="block", RESOURCE="disk"
SUBSYSTEM=="tty", KERNEL=="tty{N}", RESOURCE="vtty"
'''


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "10-test.rules"
    p.write_text(RULES)
    return str(p)


def tty_uevent(action: str) -> None:
    with open(f"/sys/class/tty/tty{N}/uevent", "w") as f:
        f.write(action)


async def test_events_inventory_and_explain_from_real_uevents(tmp_path, rules_file):
    if os.geteuid() != 0:
        pytest.skip("triggering kernel uevents needs root")
    sock = str(tmp_path / "debug.sock")
    ruleset = load_rules([rules_file])
    inv = Inventory()
    pipeline = Pipeline(ruleset, inv, path_mode=path_mode)
    telemetry = Telemetry(inv)
    source = UdevSource(source="kernel", subsystems=ruleset.subsystems)
    app = DebugApp(inv, telemetry, pipeline=lambda: pipeline, node="n1", source=lambda: source.source_kind,
                   find_device=find_device)
    seen_remove = trio.Event()

    async def consume() -> None:
        # What daemon.Daemon._consume does, plus the telemetry hook.
        async for item in source.events():
            if isinstance(item, (DeviceEvent, Uevent)):
                change = pipeline.handle(item.device if isinstance(item, DeviceEvent) else item, item.action)
                telemetry.on_event(item.action, item.subsystem, item.devpath, item.seqnum, item.received_ns, change)
                if item.devpath.endswith(f"/tty{N}") and item.action == "remove":
                    seen_remove.set()
            elif isinstance(item, Resync):
                telemetry.on_resync(item.reason, pipeline.resync(item.devices))

    def client() -> dict:
        code = ("-w", "\n%{http_code}")
        return {
            "events": curl("--unix-socket", sock, "http://devplug/events"),
            "inventory": curl("--unix-socket", sock, "http://devplug/inventory"),
            "explain": curl("--unix-socket", sock, f"http://devplug/explain?devnode=/dev/tty{N}"),
            "explain_sys": curl("--unix-socket", sock, *code,
                                f"http://devplug/explain?syspath=/sys/class/tty/tty{N}"),
        }

    source.open()
    try:
        pipeline.resync(source.enumerate())
        async with trio.open_nursery() as nursery:
            await nursery.start(debug.serve, app, sock, None)
            nursery.start_soon(consume)
            tty_uevent("remove")
            with trio.fail_after(10):
                await seen_remove.wait()
            results = await trio.to_thread.run_sync(client)
            nursery.cancel_scope.cancel()
    finally:
        tty_uevent("add")  # leave the device as udev last saw it
        source.close()

    events = [e for e in json.loads(results["events"].stdout)["events"] if e["devpath"] == f"/devices/virtual/tty/tty{N}"]
    assert events, results["events"].stdout
    ev = events[-1]
    assert ev["action"] == "remove" and ev["subsystem"] == "tty" and isinstance(ev["seqnum"], int)
    assert ev["changes"] == [{"resource": "devplug.io/vtty", "id": ev["changes"][0]["id"], "state": "Unhealthy"}]
    assert 0 < ev["processing_us"] < 1_000_000

    doc = json.loads(results["inventory"].stdout)
    assert doc["rules"] == {"files": [rules_file], "error": None}
    assert doc["source"] == "kernel"
    (dev,) = [d for d in doc["devices"] if d["resource"] == "devplug.io/vtty"]
    assert dev["health"] == "Unhealthy" and dev["devnode"] == f"/dev/tty{N}"
    assert dev["rule"] == f"{rules_file}:2" and dev["syspath"] == f"/sys/devices/virtual/tty/tty{N}"

    ex = json.loads(results["explain"].stdout)
    assert ex["device"]["syspath"] == f"/sys/devices/virtual/tty/tty{N}"
    assert [(r["rule"], r["matched"]) for r in ex["rules"]] == [(f"{rules_file}:1", False), (f"{rules_file}:2", True)]
    assert "SUBSYSTEM==\"block\"" in ex["rules"][0]["reason"] and ex["rules"][1]["reason"] is None
    assert ex["claim"]["resource"] == "devplug.io/vtty" and ex["claim"]["rule"] == f"{rules_file}:2"
    assert ex["inventory"] is None  # removed: no longer bound as present
    body, code = results["explain_sys"].stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(body)["device"]["devnode"] == f"/dev/tty{N}"
