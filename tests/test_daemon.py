"""The daemon without root: device records fed through the source interface, real gRPC to
the kubelet stand-in, real rules files, the real debug socket."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Optional

import attrs
import pytest
import trio
from tests.kubelet_standin import KubeletStandin, blocking

from devplug.config import Config
from devplug.core.device import Device, static_attrs
from devplug.daemon import Daemon
from devplug.ops import metrics
from devplug.sources.rulefiles import read_rules
from devplug.sources.udev import DeviceEvent, Uevent, Drained, Resync

R = "devplug.io/ftdi-serial"
RULES = 'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="ftdi-serial"\n'


def usb_tty(n: int, serial: str) -> Device:
    usb = Device(devpath=f"/devices/pci0/usb1/1-{n}", sysname=f"1-{n}", subsystem="usb", devtype="usb_device",
                 read_attr=static_attrs({"idVendor": "0403", "idProduct": "6001", "serial": serial}))
    return Device(devpath=f"/devices/pci0/usb1/1-{n}/1-{n}:1.0/ttyUSB{n}/tty/ttyUSB{n}", sysname=f"ttyUSB{n}",
                  subsystem="tty", devnode=f"/dev/ttyUSB{n}", parent=usb)


class FakeSource:
    """The source interface, fed by the test instead of netlink."""

    def __init__(self, devices: Sequence[Device], kind: str) -> None:
        self.source_kind = kind
        self.devices = list(devices)
        self.send, self._recv = trio.open_memory_channel(math.inf)
        self.fail_enumerate: Optional[Exception] = None
        self.opened = self.closed = 0
        self.records_built = 0  # records of Uevents someone asked for

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def enumerate(self) -> tuple[Device, ...]:
        if self.fail_enumerate is not None:
            raise self.fail_enumerate
        return tuple(self.devices)

    async def events(self) -> AsyncIterator:
        async for item in self._recv:
            yield item
            if self._recv.statistics().current_buffer_used == 0:
                yield Drained()  # as the udev source does once its socket is empty

    def plug(self, dev: Device) -> None:
        self.devices.append(dev)
        self.send.send_nowait(DeviceEvent("add", dev, None, time.perf_counter_ns()))

    def unplug(self, dev: Device, *, as_record: bool = False) -> None:
        """As the udev source reports a removal (a ``Uevent``, whose record nothing should
        ask for); ``as_record``: as a record, which the daemon folds the same way."""
        self.devices.remove(dev)
        if as_record:
            self.send.send_nowait(DeviceEvent("remove", dev, None, time.perf_counter_ns()))
        else:
            props = dict(dev.properties, ACTION="remove", DEVPATH=dev.devpath)
            self.send.send_nowait(Uevent("remove", dev.syspath, props, None, time.perf_counter_ns(), self._built))

    def _built(self, props: dict[str, str], action: str) -> Device:
        self.records_built += 1
        return Device(devpath=props["DEVPATH"], sysname=props["DEVPATH"].rpartition("/")[2], properties=props)


@pytest.fixture
def short_dir():
    d = tempfile.mkdtemp(prefix="dpd-", dir="/tmp")  # unix socket paths stay short
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def setup(short_dir):
    rules = short_dir / "rules"
    rules.mkdir()
    (rules / "10-ftdi.rules").write_text(RULES)
    plugins = short_dir / "plugins"
    config = Config(rules=(str(rules),), plugin_dir=str(plugins), debug_socket=str(short_dir / "debug.sock"),
                    cdi_spec_dir=str(short_dir / "cdi"))
    return config, rules, plugins


async def run_daemon(config: Config, source: FakeSource, scenario) -> Daemon:
    sources: list[FakeSource] = []

    def factory(subsystems, kind):
        sources.append(source)
        return source

    daemon = Daemon(config, read_rules(config.rules_paths), source_factory=factory, paths=lambda p: None,
                    find=lambda spec: (_ for _ in ()).throw(LookupError(spec)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            await scenario(daemon)
            nursery.cancel_scope.cancel()
    return daemon


async def until(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.005)


@pytest.mark.trio
async def test_coldplug_then_unplug_and_replug_reach_kubelet(setup):
    config, _rules, plugins = setup
    a, b = usb_tty(0, "A1"), usb_tty(1, "B2")
    source = FakeSource([a], "test")
    with KubeletStandin(str(plugins), auto_watch=True) as kubelet:

        async def scenario(daemon: Daemon):
            w = await blocking(kubelet.wait_watch, R)
            first = await blocking(w.wait_count, 1)
            assert first[0].devices == (("0403-6001-A1-if00", "Healthy"),)
            source.plug(b)
            await blocking(w.wait_for, lambda lst: len(lst.devices) == 2)
            source.unplug(a)
            lst = await blocking(w.wait_for, lambda lst: "Unhealthy" in lst.as_dict().values())
            assert [h for _i, h in lst.devices].count("Healthy") == 1
            source.plug(a)
            await blocking(w.wait_for, lambda lst: set(lst.as_dict().values()) == {"Healthy"})
            # Every ID kubelet saw is in the CDI spec already (written before the stream woke).
            spec = json.loads((Path(config.cdi_spec_dir) / "devplug.io-ftdi-serial.json").read_text())
            assert sorted(d["name"] for d in spec["devices"]) == sorted(w.latest.ids)
            resp = await blocking(kubelet.allocate, R, [w.latest.ids[0]])
            assert resp.container_responses[0].cdi_devices[0].name.startswith("devplug.io/ftdi-serial=")

        await run_daemon(config, source, scenario)
    assert source.opened == 1 and source.closed == 1
    assert not any(p.suffix == ".sock" for p in plugins.iterdir())  # our sockets are gone
    assert not any(Path(config.cdi_spec_dir).glob("*.json"))  # and so are our specs


@pytest.mark.trio
async def test_bad_rules_keep_the_last_good_ones(setup):
    config, rules, plugins = setup
    source = FakeSource([usb_tty(0, "A1")], "test")

    async def scenario(daemon: Daemon):
        (rules / "10-ftdi.rules").write_text('SUBSYSTEM=="tty", RESOURCE="Not Valid"\n')
        await daemon.reload()
        assert daemon.rules_error and "10-ftdi.rules:1:" in daemon.rules_error
        assert daemon.telemetry.rules_error == daemon.rules_error
        assert [e.id for e in daemon.inventory.entries(R)]  # still served under the old rules
        (rules / "10-ftdi.rules").write_text(RULES.replace("ftdi-serial", "serial"))
        await daemon.reload()
        assert daemon.rules_error is None
        assert [e.resource for e in daemon.inventory.all_entries()] == ["devplug.io/serial"]

    await run_daemon(config, source, scenario)


@pytest.mark.trio
async def test_an_unexpected_error_during_reload_does_not_stop_the_daemon(setup):
    config, rules, plugins = setup
    source = FakeSource([usb_tty(0, "A1")], "test")

    async def scenario(daemon: Daemon):
        source.fail_enumerate = RuntimeError("sysfs exploded")
        (rules / "10-ftdi.rules").write_text(RULES.replace("ftdi-serial", "serial"))
        await daemon.reload()
        assert "sysfs exploded" in (daemon.rules_error or "")
        assert daemon.ruleset.resources() == frozenset({R})  # the last good rules
        assert [e.resource for e in daemon.inventory.all_entries()] == [R]
        source.fail_enumerate = None
        await daemon.reload()
        assert daemon.rules_error is None
        assert [e.resource for e in daemon.inventory.all_entries()] == ["devplug.io/serial"]

    await run_daemon(config, source, scenario)


@pytest.mark.trio
async def test_an_overflow_resync_reconciles_to_the_enumeration(setup):
    config, _rules, plugins = setup
    a, b = usb_tty(0, "A1"), usb_tty(1, "B2")
    source = FakeSource([a, b], "test")

    async def scenario(daemon: Daemon):
        # Events were lost: b is gone, c arrived; only the enumeration tells.
        c = usb_tty(2, "C3")
        source.send.send_nowait(Resync((a, c), "overflow"))
        await until(lambda: len(daemon.inventory.entries(R)) == 3)
        health = {e.id.split("-")[2]: e.health for e in daemon.inventory.entries(R)}
        assert health == {"A1": "Healthy", "B2": "Unhealthy", "C3": "Healthy"}

    daemon = await run_daemon(config, source, scenario)
    assert "devplug_netlink_overflows_total 1.0" in metrics.exposition(daemon.telemetry.registry).decode().splitlines()


@pytest.mark.trio
async def test_debug_socket_serves_the_inventory(setup):
    config, _rules, _plugins = setup
    source = FakeSource([usb_tty(0, "A1")], "test")

    async def scenario(daemon: Daemon):
        stream = await trio.open_unix_socket(config.debug_socket)
        await stream.send_all(b"GET /inventory HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert [d["resource"] for d in body["devices"]] == [R]
        assert body["source"] == "test"
        assert oct(os.stat(config.debug_socket).st_mode & 0o777) == "0o600"

    await run_daemon(config, source, scenario)
    assert not os.path.exists(config.debug_socket)


@pytest.mark.parametrize("kubelet_knows", [True, False])
async def test_replugs_with_new_serials_do_not_grow_the_inventory(setup, short_dir, kubelet_knows):
    base, _rules, plugins = setup
    pr = str(short_dir / "pod-resources.sock")
    config = attrs.evolve(base, pod_resources_socket=pr, forget_after=0.2, max_unhealthy=5, cdi_spec_dir=None)
    held = usb_tty(0, "HELD")
    source = FakeSource([held], "test")
    with KubeletStandin(str(plugins), auto_watch=True, pod_resources=pr if kubelet_knows else None) as kubelet:

        async def scenario(daemon: Daemon):
            await blocking(kubelet.wait_watch, R)
            if kubelet_knows:
                kubelet.assign(R, ["0403-6001-HELD-if00"], pod="reader", namespace="iot", container="modbus")
            source.unplug(held)
            for n in range(1, 21):  # a gadget that comes back with a new serial each time
                gadget = usb_tty(n, f"G{n:02}")
                source.plug(gadget)
                source.unplug(gadget, as_record=n % 2 == 0)  # both ways a removal can come
            await until(lambda: sum(daemon.telemetry.uevents.values()) == 41)  # all handled
            assert source.records_built == 0  # a device that left needs no record, nor do the logs
            await until(lambda: len(daemon.inventory.entries(R)) <= (1 if kubelet_knows else 5), timeout=10)
            entries = {e.id: e.health for e in daemon.inventory.entries(R)}
            if kubelet_knows:  # every unheld ID goes after the grace; the held one stays
                assert entries == {"0403-6001-HELD-if00": "Unhealthy"}
                body = await _get_json(config.debug_socket, "/inventory")
                assert body["pod_resources"] == "known"
                assert body["devices"][0]["held_by"] == [{"namespace": "iot", "pod": "reader", "container": "modbus"}]
            else:  # unknown holders: capped, the newest kept
                assert sorted(entries) == [f"0403-6001-G{n:02}-if00" for n in range(16, 21)]
                body = await _get_json(config.debug_socket, "/inventory")
                assert body["pod_resources"] == "unknown" and body["devices"][0]["held_by"] is None
            text = metrics.exposition(daemon.telemetry.registry).decode()
            forgotten = 20 if kubelet_knows else 16
            assert f'devplug_ids_forgotten_total{{resource="{R}"}} {forgotten}.0' in text.splitlines()

        await run_daemon(config, source, scenario)


async def _get_json(sock: str, path: str) -> dict:
    stream = await trio.open_unix_socket(sock)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("cdi", [False, True])
@pytest.mark.trio
async def test_every_uevent_sent_to_kubelet_is_timed_by_stage(setup, cdi):
    """The streams send inside ``publish`` (synchronously, on the event path), so the
    uevent's stage marks must be taken before it, or ``/stages`` stays empty."""
    config, _rules, plugins = setup
    if not cdi:
        config = attrs.evolve(config, cdi_spec_dir=None)
    a, b = usb_tty(0, "A1"), usb_tty(1, "B2")
    source = FakeSource([a], "test")
    with KubeletStandin(str(plugins), auto_watch=True) as kubelet:

        async def scenario(daemon: Daemon):
            w = await blocking(kubelet.wait_watch, R)
            await blocking(w.wait_count, 1)
            for n, change in enumerate((lambda: source.plug(b), lambda: source.unplug(a)), start=2):
                change()
                await blocking(w.wait_count, n)
                await until(lambda n=n: daemon.telemetry.stage_summary()["count"] == n - 1)
            stages = daemon.telemetry.stage_summary()
            p50 = stages["p50_us"]
            assert set(p50) == {*stages["stages"], "total", "own"}
            assert all(v >= 0 for v in p50.values())
            assert p50["send"] > 0 and p50["own"] <= p50["total"]  # the send(2) call is timed apart

        await run_daemon(config, source, scenario)
