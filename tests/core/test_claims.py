"""Pipeline: uevent actions folded into the inventory through real rules."""

from __future__ import annotations

from devplug.core.device import Device
from devplug.core.inventory import Inventory
from devplug.core.claims import Pipeline
from devplug.core.rules import RuleSet, parse_rules

RULES = 'SUBSYSTEM=="net", KERNEL=="eth*|wlan*", RESOURCE="nic", DEVICE_ID="%k"\n'


def _pipeline() -> Pipeline:
    rules, errors = parse_rules(RULES, "t.rules")
    assert not errors
    return Pipeline(RuleSet(files=("t.rules",), rules=tuple(rules)), Inventory())


def test_move_is_the_old_path_leaving_and_the_new_one_arriving():
    p = _pipeline()
    old = Device(devpath="/devices/pci0/net/eth0", sysname="eth0", subsystem="net")
    p.handle(old, "add")
    moved = Device(devpath="/devices/pci0/net/wlan0", sysname="wlan0", subsystem="net",
                   properties={"DEVPATH_OLD": "/devices/pci0/net/eth0"})
    change = p.handle(moved, "move")
    assert change.ids == (("devplug.io/nic", "eth0"), ("devplug.io/nic", "wlan0"))
    health = {e.id: (e.health, e.syspath) for e in p.inventory.entries("devplug.io/nic")}
    assert health == {"eth0": ("Unhealthy", "/sys/devices/pci0/net/eth0"),
                      "wlan0": ("Healthy", "/sys/devices/pci0/net/wlan0")}
    assert p.inventory.binding("/sys/devices/pci0/net/eth0") is None


def test_remove_and_unbind_mark_unhealthy_and_unclaimed_devices_are_ignored():
    p = _pipeline()
    dev = Device(devpath="/devices/pci0/net/eth1", sysname="eth1", subsystem="net")
    p.handle(dev, "add")
    p.handle(dev, "unbind")
    assert [e.health for e in p.inventory.entries("devplug.io/nic")] == ["Unhealthy"]
    p.handle(dev, "bind")
    assert [e.health for e in p.inventory.entries("devplug.io/nic")] == ["Healthy"]
    lo = Device(devpath="/devices/virtual/net/lo", sysname="lo", subsystem="net")
    assert not p.handle(lo, "add")
