"""The per-event records are written once: not frozen (for speed), but never reassigned."""

from __future__ import annotations

import attrs
import pytest

from devplug.core.device import Device
from devplug.core.entries import Change, Entry, Sighting
from devplug.core.rules.model import Claim
from devplug.sources.udev.source import DeviceEvent
from tests.conftest import WRITE_ONCE


def test_every_per_event_record_refuses_a_second_assignment():
    claim = Claim(resource="devplug.io/x")
    device = Device(devpath="/devices/virtual/tty/tty20", sysname="tty20", load_driver=lambda: "serial")
    built = [
        device,
        DeviceEvent("add", device, 1, 0),
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
