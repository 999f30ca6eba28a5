"""The per-event records are written once: not frozen (for speed), but never reassigned."""

from __future__ import annotations

import attrs
import pytest

from devplug.core.device import Device
from devplug.core.entries import Change, Entry, Sighting
from devplug.core.rules.model import Claim
from devplug.sources.udev.records import device_from_uevent
from devplug.sources.udev.source import DeviceEvent, Uevent
from tests.conftest import WRITE_ONCE


def test_every_per_event_record_refuses_a_second_assignment():
    claim = Claim(resource="devplug.io/x")
    device = Device(devpath="/devices/virtual/tty/tty20", sysname="tty20", load_driver=lambda: "serial")
    built = [
        device,
        DeviceEvent("add", device, 1, 0),
        Uevent("remove", "/sys/devices/virtual/tty/tty20", {"DEVPATH": "/devices/virtual/tty/tty20"}, 2, 0,
               lambda props, action: device),
        Entry(id="a", resource="devplug.io/x", healthy=True, physical="a", claim=claim),
        Sighting(key="/sys/devices/virtual/tty/tty20", present=False),
        Change(resources=frozenset({"devplug.io/x"}), ids=(("devplug.io/x", "a"),)),
    ]
    assert {type(r) for r in built} == set(WRITE_ONCE)
    for record in built:
        name = attrs.fields(type(record))[0].name
        with pytest.raises(attrs.exceptions.FrozenAttributeError):
            setattr(record, name, getattr(record, name))


def test_a_device_still_fills_in_its_lazy_fields():
    parent = Device(devpath="/devices/pci0000:00", sysname="pci0000:00")
    dev = Device(devpath="/devices/pci0000:00/x", sysname="x", load_driver=lambda: "drv",
                 load_parent=lambda: parent)
    assert (dev.driver, dev.parent) == ("drv", parent)
    assert dev.driver_known and dev.parent_known


def test_a_uevent_builds_its_record_once_when_asked():
    props = {"ACTION": "remove", "DEVPATH": "/devices/virtual/tty/tty20", "SUBSYSTEM": "tty", "DEVNAME": "tty20"}
    asked = []

    def build(given, action):
        asked.append((dict(given), action, given is props))
        return device_from_uevent(given, sys_root="/sys", gone=True)

    event = Uevent("remove", "/sys/devices/virtual/tty/tty20", props, 7, 0, build)
    assert (event.subsystem, event.devpath) == ("tty", "/devices/virtual/tty/tty20")
    assert not asked
    record = event.device
    assert event.device is record and len(asked) == 1  # built once, then kept
    assert asked == [(props, "remove", False)]  # from a copy of what the event said:
    assert props["DEVNAME"] == "tty20"  # what the event said stays as it said it
    assert (record.syspath, record.devnode, record.parent) == (event.syspath, "/dev/tty20", None)
    assert record.read_attr("dev") is None  # a device that left reads nothing
