"""Pipeline: uevent actions folded into the inventory through real rules."""

from __future__ import annotations

import pytest

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


# ---- hostile devices: refused, never half-offered (issue 10) --------------------------------

from devplug.core.rules.model import RuleError  # noqa: E402
from tests.core.gadget import gadget  # noqa: E402

DONGLE = "devplug.io/dongle"
HOSTILE_RULES = ('ATTRS{idVendor}=="0403", RESOURCE="dongle", OPTIONS+="usb_node", '
                 'MOUNT+="/var/lib/devdata/%s{serial}:/data", CONTAINER_ENV{MODEL}="$env{ID_MODEL}"\n')


def _hostile_pipeline() -> Pipeline:
    rules, errors = parse_rules(HOSTILE_RULES, "h.rules")
    assert not errors
    return Pipeline(RuleSet(files=("h.rules",), rules=tuple(rules)), Inventory())


def test_a_device_whose_template_fails_is_refused_once_and_the_others_stay():
    p = _hostile_pipeline()
    good = gadget("GOOD1", port="1-1", tty="ttyUSB0")
    p.handle(good, "add")
    bad = gadget("..", port="1-2", tty="ttyUSB1")
    change = p.handle(bad, "add")
    assert not change.resources  # nothing offered, nothing half-offered
    (r,) = change.refused
    assert (r.key, r.resource, r.rule, r.devnode) == (bad.syspath, DONGLE, "h.rules:1", "/dev/ttyUSB1")
    assert r.reason == "h.rules:1:66: MOUNT: %s{serial} makes the path component '..'"
    assert r.base_id == "0403-6001-..-if00"  # the ID it would have had, for operators
    assert p.inventory.refused() == (r,)
    assert [(e.id, e.health) for e in p.inventory.entries(DONGLE)] == [("0403-6001-GOOD1-if00", "Healthy")]
    # Its next uevents are not new refusals: logged once.
    assert p.handle(bad, "change").refused == ()
    # Unplugged: forgotten.
    assert p.handle(bad, "remove").refused == () and p.inventory.refused() == ()


def test_an_offered_device_that_turns_hostile_goes_unhealthy_then_comes_back():
    p = _hostile_pipeline()
    dev = gadget("S1")
    p.handle(dev, "add")
    (e,) = p.inventory.entries(DONGLE)
    assert e.health == "Healthy" and e.claim.mounts[0].host_path == "/var/lib/devdata/S1"
    # Same kernel device, now with a serial that cannot name a directory: Unhealthy, never
    # offered with the old settings or without its mount.
    worse = gadget("")
    change = p.handle(worse, "change")
    assert change.ids == ((DONGLE, e.id),) and len(change.refused) == 1
    assert [x.health for x in p.inventory.entries(DONGLE)] == ["Unhealthy"]
    fixed = p.handle(dev, "change")
    assert fixed.ids == ((DONGLE, e.id),) and not fixed.refused and p.inventory.refused() == ()
    assert [x.health for x in p.inventory.entries(DONGLE)] == ["Healthy"]


def test_resync_forgets_refused_devices_that_are_gone():
    p = _hostile_pipeline()
    bad = gadget("")
    assert len(p.resync([bad]).refused) == 1
    assert p.resync([bad]).refused == ()  # still there, already reported
    p.resync([])
    assert p.inventory.refused() == ()


def test_paths_from_the_kernel_must_be_clean_too():
    p = _hostile_pipeline()
    dev = gadget("S1")
    odd = Device(devpath=dev.devpath, sysname=dev.sysname, subsystem="tty", devnode="/dev/../etc/shadow",
                 parent=dev.parent)
    (r,) = p.handle(odd, "add").refused
    assert r.reason == "path '/dev/../etc/shadow' is not a normalized absolute path" and r.rule == "h.rules:1"


def test_a_host_path_that_is_not_utf8_is_refused_not_crashing_allocate():
    rules, _ = parse_rules('HOSTPATH=="/srv/*", RESOURCE="data", MOUNT+="$devnode:/data"\n', "p.rules")
    p = Pipeline(RuleSet(files=("p.rules",), rules=tuple(rules)), Inventory(), path_mode=lambda path: 0o040755)
    change = p.resync_paths(["/srv/ok", "/srv/caf\udce9"])
    assert [e.id for e in p.inventory.entries("devplug.io/data")] == ["srv_ok"]
    (r,) = change.refused
    assert r.reason.startswith("p.rules:1:38: MOUNT: %N has a control character or invalid UTF-8")


def test_claim_errors_keep_their_location():
    claim = _hostile_pipeline().ruleset.evaluate(gadget(""))
    assert claim.refused and isinstance(claim.errors[0], RuleError)


def test_refusal_log_fields_are_printable():
    rules, _ = parse_rules('HOSTPATH=="/srv/*", RESOURCE="data", MOUNT+="$devnode:/data"\n', "p.rules")
    p = Pipeline(RuleSet(files=("p.rules",), rules=tuple(rules)), Inventory(), path_mode=lambda path: 0o040755)
    (r,) = p.resync_paths(["/srv/a\nb\udce9"]).refused
    fields = r.fields()
    assert fields["syspath"] == "hostpath:/srv/a\\x0ab\\xe9" and fields["rule"] == "p.rules:1"
    for v in fields.values():
        v.encode("utf-8")
        assert "\n" not in v


# ---- a device removed while its pass read its ancestors -----------------------------------
USB_RULES = 'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403|1d6b", RESOURCE="serial"\n'
ROOT_HUB = Device(devpath="/devices/pci0000:00/0000:00:04.0/usb1", sysname="usb1", subsystem="usb",
                  devtype="usb_device",
                  read_attr={"idVendor": "1d6b", "idProduct": "0002", "serial": "0000:00:04.0"}.get)
ADAPTER = Device(devpath=ROOT_HUB.devpath + "/1-1", sysname="1-1", subsystem="usb", devtype="usb_device",
                 parent=ROOT_HUB, read_attr={"idVendor": "0403", "idProduct": "6001", "serial": "A1"}.get)
TTY = ADAPTER.devpath + "/1-1:1.0/ttyUSB0/tty/ttyUSB0"


def _tty(parent: Device, seq: int) -> Device:
    return Device(devpath=TTY, sysname="ttyUSB0", subsystem="tty", devnode="/dev/ttyUSB0", parent=parent,
                  properties={"SEQNUM": str(seq), "ID_USB_INTERFACE_NUM": "00"})


@pytest.mark.parametrize("rules", [USB_RULES, 'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="serial"\n'])
def test_a_device_gone_during_its_pass_is_gone_not_offered_under_an_ancestors_id(rules):
    """The kernel removes a tty's ancestors after the tty: a late event read mid-unplug sees
    the root hub as the nearest USB device. Claimed under the root hub's ID (first rules) or
    unclaimed (second), it must not take the adapter's place: it is gone."""
    there = {"yes": True}
    parsed, errors = parse_rules(rules, "t.rules")
    assert not errors
    p = Pipeline(RuleSet(files=("t.rules",), rules=tuple(parsed)), Inventory(),
                 present=lambda d: there["yes"])
    p.handle(_tty(ADAPTER, 1), "add")
    assert {e.id: e.health for e in p.inventory.entries("devplug.io/serial")} == {"0403-6001-A1-if00": "Healthy"}
    there["yes"] = False  # mid-unplug: the pass walks tty → usb1
    p.handle(_tty(ROOT_HUB, 2), "add")
    assert {e.id: e.health for e in p.inventory.entries("devplug.io/serial")} == {"0403-6001-A1-if00": "Unhealthy"}
    assert p.recall is not None and p.recall.hits == 0
    there["yes"] = True  # replugged: the full chain again
    p.handle(_tty(ADAPTER, 3), "add")
    assert {e.id: e.health for e in p.inventory.entries("devplug.io/serial")} == {"0403-6001-A1-if00": "Healthy"}


def test_without_the_check_the_cut_chain_would_take_the_adapters_place():
    """What the check prevents (the same events with a source that cannot tell)."""
    parsed, _ = parse_rules(USB_RULES, "t.rules")
    p = Pipeline(RuleSet(files=("t.rules",), rules=tuple(parsed)), Inventory())
    p.handle(_tty(ADAPTER, 1), "add")
    p.handle(_tty(ROOT_HUB, 2), "add")
    assert {e.id for e in p.inventory.entries("devplug.io/serial")} == {"1d6b-0002-0000_00_04.0-if00"}
