"""USB-shaped devices through umockdev: plug, unplug and replug an FTDI adapter, a UVC camera.

The process under test is a real child running :class:`devplug.sources.udev.UdevSource` under
umockdev's preload; the test process drives the testbed (``tests/umock.py``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import umock  # noqa: E402

pytestmark = pytest.mark.umockdev

SRC = str(Path(__file__).resolve().parents[3] / "src")

WATCHER = r"""
import json, os, sys, trio
from devplug.sources.udev import DeviceEvent, Uevent, UdevSource

def describe(action, d):
    usb = d.find_parent("usb", "usb_device")
    iface = d.find_parent("usb", "usb_interface")
    return {
        "action": action, "devpath": d.devpath, "kernel": d.sysname, "subsystem": d.subsystem,
        "devnode": d.devnode, "driver": d.driver, "devtype": d.devtype,
        "node_exists": os.path.exists(d.devnode) if d.devnode else None,
        "index": d.read_attr("index"),
        "usb": None if usb is None else {a: usb.read_attr(a) for a in ("idVendor", "idProduct", "serial")},
        "iface_driver": None if iface is None else iface.driver,
        "iface_class": None if iface is None else iface.read_attr("bInterfaceClass"),
    }

async def main():
    src = UdevSource(source="udev", subsystems=frozenset(sys.argv[1:]) or None)
    src.open()
    print(json.dumps({"ready": [d.devpath for d in src.enumerate()]}), flush=True)
    async for item in src.events():
        if isinstance(item, (DeviceEvent, Uevent)):
            print(json.dumps(describe(item.action, item.device)), flush=True)

trio.run(main)
"""

SNAPSHOT = r"""
import json
from devplug.sources.udev import find_device, list_devices
tty = find_device("/dev/ttyUSB1")
print(json.dumps({
    "devices": sorted(d.devpath for d in list_devices(frozenset({"tty", "video4linux"}))),
    "find": [tty.devpath, tty.devnode, tty.find_parent("usb", "usb_device").read_attr("serial")],
}))
"""


@pytest.fixture(scope="module")
def bed():
    reason = umock.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with umock.MockBed() as bed:
        yield bed


class Lines:
    """JSON lines from a child's stdout, with a deadline (no thread, no busy wait)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError("child printed nothing in time")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"child exited: {self.proc.wait()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]

    def until(self, **match: Any) -> list[dict[str, Any]]:
        """Lines up to and including the first whose keys equal ``match``."""
        got = [self.next()]
        while any(got[-1].get(k) != v for k, v in match.items()):
            got.append(self.next())
        return got


@pytest.fixture
def watcher(bed):
    def start(*subsystems: str) -> Lines:
        env = bed.env()
        env["PYTHONPATH"] = SRC
        proc = subprocess.Popen([sys.executable, "-c", WATCHER, *subsystems], env=env,
                                stdout=subprocess.PIPE)
        procs.append(proc)
        lines = Lines(proc)
        assert "ready" in lines.next(timeout=20)
        return lines

    procs: list[subprocess.Popen] = []
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_ftdi_plug_unplug_replug(bed, watcher):
    events = watcher("usb", "usb-serial", "tty")
    plug_order = umock.recorded_order("plug")  # as a real adapter does it (tests/usb/fixtures)
    adapter = umock.plug_ftdi(bed, tty="ttyUSB0", port="1-1", devnum=2)
    # parents first (with the root hub on the first plug of this testbed), the binds last
    added = events.until(action="bind", devtype="usb_device", kernel="1-1")
    names = {"usb_device": "1-1", "interface": "1-1:1.0", "port": "ttyUSB0", "tty": "ttyUSB0"}
    assert [(e["action"], e["kernel"]) for e in added][-len(plug_order):] == [
        (action, names[role]) for action, role in plug_order]
    by_kernel = {e["kernel"]: e for e in added if e["action"] == "add"}
    tty = next(e for e in added if e["subsystem"] == "tty")
    assert tty["devnode"] == "/dev/ttyUSB0" and tty["node_exists"]
    assert tty["usb"] == {"idVendor": "0403", "idProduct": "6001", "serial": "A10K1ABC"}
    assert tty["iface_driver"] == "ftdi_sio" and tty["iface_class"] == "ff"
    assert by_kernel["1-1"]["devtype"] == "usb_device" and by_kernel["1-1"]["driver"] == "usb"

    umock.unplug(bed, adapter)
    unplug_order = umock.recorded_order("unplug")
    removed = events.take(len(unplug_order))
    assert [(e["action"], e["kernel"]) for e in removed] == [
        (action, names[role]) for action, role in unplug_order]
    assert [e["subsystem"] for e in removed if e["action"] == "remove"] == ["tty", "usb-serial", "usb", "usb"]
    assert removed[0]["devnode"] == "/dev/ttyUSB0" and not removed[0]["node_exists"]

    umock.plug_ftdi(bed, tty="ttyUSB1", port="1-2", devnum=3)
    replugged = events.take(len(plug_order))
    tty = next(e for e in replugged if e["subsystem"] == "tty")
    assert tty["action"] == "add" and tty["devnode"] == "/dev/ttyUSB1" and tty["node_exists"]
    assert tty["usb"]["serial"] == "A10K1ABC"  # the same adapter, a new node

    # a fresh process enumerates it and finds it by node
    env = bed.env()
    env["PYTHONPATH"] = SRC
    snap = json.loads(subprocess.run([sys.executable, "-c", SNAPSHOT], env=env, check=True,
                                     capture_output=True, text=True).stdout)
    assert tty["devpath"] in snap["devices"]
    assert snap["find"] == [tty["devpath"], "/dev/ttyUSB1", "A10K1ABC"]


def test_uvc_camera_capture_and_metadata_nodes(bed, watcher):
    events = watcher("video4linux")
    camera = umock.plug_uvc_camera(bed, port="1-3", devnum=4)
    nodes = events.take(2)
    assert [(e["devnode"], e["index"]) for e in nodes] == [("/dev/video0", "0"), ("/dev/video1", "1")]
    for e in nodes:
        assert e["usb"] == {"idVendor": "046d", "idProduct": "0825", "serial": "200901010001"}
        assert e["iface_driver"] == "uvcvideo" and e["iface_class"] == "0e"
    umock.unplug(bed, camera)
    gone = events.take(2)
    assert [(e["action"], e["devnode"]) for e in gone] == [
        ("remove", "/dev/video1"), ("remove", "/dev/video0")]
