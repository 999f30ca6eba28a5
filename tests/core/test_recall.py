"""Recall: a device's last sighting is reused only while every input the rules and the
identity read is the same; any change runs the rules again."""

from __future__ import annotations

from typing import Optional

import pytest

from devplug.core.claims import Pipeline
from devplug.core.device import Device
from devplug.core.inventory import Inventory
from devplug.core.recall import Recall
from devplug.core.rules import RuleSet, parse_rules
from devplug.core.rules.host import Host

USB = "/devices/pci0000:00/0000:00:14.0/usb1/1-1"
TTY = USB + "/1-1:1.0/ttyUSB0/tty/ttyUSB0"
RULES = ('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="serial"\n'
         'SUBSYSTEM=="tty", KERNEL=="ttyS*", ATTR{type}=="4", RESOURCE="uart", DEVICE_ID="uart-$attr{line}"\n')


class Attrs:
    """A reader like the udev adapter's: it keeps what it answered in ``values``."""

    def __init__(self, sysfs: dict[str, str]) -> None:
        self.sysfs = sysfs
        self.values: dict[str, Optional[str]] = {}
        self.reads = 0

    def __call__(self, name: str) -> Optional[str]:
        if name not in self.values:
            self.reads += 1
            self.values[name] = self.sysfs.get(name)
        return self.values[name]


def ruleset(text: str = RULES) -> RuleSet:
    rules, errors = parse_rules(text, "t.rules")
    assert not errors
    return RuleSet(files=("t.rules",), rules=tuple(rules))


class Counting:
    def __init__(self, rs: RuleSet) -> None:
        self.rs, self.runs = rs, 0
        self.evaluate = rs.evaluate
        rs.evaluate = self  # type: ignore[method-assign]

    def __call__(self, *a, **kw):
        self.runs += 1
        return self.evaluate(*a, **kw)


USB_PARENT = Device(devpath=USB, sysname="1-1", subsystem="usb", devtype="usb_device",
                    read_attr={"idVendor": "0403", "idProduct": "6001", "serial": "A1"}.get)


def tty(seq: int, *, sysfs: Optional[dict[str, str]] = None, parent: Optional[Device] = USB_PARENT,
        **props: str) -> Device:
    p = {"ACTION": "add", "DEVPATH": TTY, "SUBSYSTEM": "tty", "DEVNAME": "/dev/ttyUSB0", "SEQNUM": str(seq), **props}
    return Device(devpath=TTY, sysname="ttyUSB0", subsystem="tty", devnode="/dev/ttyUSB0", properties=p,
                  read_attr=Attrs(sysfs or {}), parent=parent)


def flip(p: Pipeline, dev: Device) -> None:
    p.handle(dev, "remove")
    p.handle(dev, "add")


def health(p: Pipeline, resource: str = "devplug.io/serial") -> dict[str, str]:
    return {e.id: e.health for e in p.inventory.entries(resource)}


def test_the_same_device_again_reuses_its_sighting_and_the_inventory_still_flips():
    rs = ruleset()
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    p.handle(tty(1), "add")
    assert runs.runs == 1
    for seq in range(2, 12, 2):
        p.handle(tty(seq), "remove")
        assert health(p) == {"0403-6001-A1-if00": "Unhealthy"}
        p.handle(tty(seq + 1), "add")
        assert set(health(p).values()) == {"Healthy"}
    assert runs.runs == 1, "SEQNUM alone differs: the rules never ran again"
    assert p.recall is not None and p.recall.hits == 5


@pytest.mark.parametrize("change", ["property", "driver", "action", "parent", "attribute"])
def test_any_changed_input_runs_the_rules_again(change):
    rs = ruleset()
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    first = Device(devpath="/devices/platform/serial8250/tty/ttyS3", sysname="ttyS3", subsystem="tty",
                   devnode="/dev/ttyS3", properties={"SEQNUM": "1", "MAJOR": "4"},
                   read_attr=Attrs({"type": "4", "line": "3"}))
    p.handle(first, "add")
    assert health(p, "devplug.io/uart") == {"uart-3": "Healthy"}
    kw = dict(devpath=first.devpath, sysname="ttyS3", subsystem="tty", devnode="/dev/ttyS3",
              properties={"SEQNUM": "2", "MAJOR": "4"}, read_attr=Attrs({"type": "4", "line": "3"}))
    action = "add"
    if change == "property":
        kw["properties"] = {"SEQNUM": "2", "MAJOR": "5"}
    elif change == "driver":
        kw["driver"] = "serial8250"
    elif change == "action":
        action = "change"
    elif change == "parent":
        kw["parent"] = Device(devpath="/devices/platform/serial8250", sysname="serial8250")
    elif change == "attribute":
        kw["read_attr"] = Attrs({"type": "4", "line": "7"})  # the same port now says line 7
    p.handle(Device(**kw), action)
    assert runs.runs == 2
    if change == "attribute":
        assert health(p, "devplug.io/uart") == {"uart-7": "Healthy"}  # the new answer, not the remembered one


def test_an_attribute_that_stopped_matching_unclaims_the_device():
    p = Pipeline(ruleset(), Inventory())
    dev = dict(devpath="/devices/platform/serial8250/tty/ttyS3", sysname="ttyS3", subsystem="tty",
               devnode="/dev/ttyS3")
    p.handle(Device(**dev, properties={"SEQNUM": "1"}, read_attr=Attrs({"type": "4", "line": "3"})), "add")
    assert health(p, "devplug.io/uart") == {"uart-3": "Healthy"}
    change = p.handle(Device(**dev, properties={"SEQNUM": "2"}, read_attr=Attrs({"type": "0", "line": "3"})), "change")
    assert change.ids == (("devplug.io/uart", "uart-3"),)
    assert health(p, "devplug.io/uart") == {}


def test_a_rule_that_names_seqnum_is_never_answered_from_memory():
    rs = ruleset('SUBSYSTEM=="tty", ENV{SEQNUM}=="[0-9]*", RESOURCE="serial"\n')
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    flip(p, tty(1))
    flip(p, tty(2))
    assert runs.runs == 2


def test_a_pass_that_asked_the_machine_is_not_remembered():
    rs = ruleset('SUBSYSTEM=="tty", TEST=="/dev/ttyUSB0", RESOURCE="serial"\n')
    runs = Counting(rs)
    asked: list[str] = []
    p = Pipeline(rs, Inventory(), path_mode=Host(lambda path: asked.append(path) or 0o20600))
    flip(p, tty(1))
    flip(p, tty(2))
    assert runs.runs == 2 and asked == ["/dev/ttyUSB0", "/dev/ttyUSB0"]
    assert p.recall is not None and len(p.recall) == 0


def test_new_rules_forget_everything_remembered():
    p = Pipeline(ruleset(), Inventory())
    p.handle(tty(1), "add")
    assert p.recall is not None and len(p.recall) == 1
    p.ruleset = ruleset('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="other"\n')
    assert len(p.recall) == 0
    p.handle(tty(2), "add")
    assert {e.id for e in p.inventory.entries("devplug.io/other")} == {"0403-6001-A1-if00"}


def test_a_reader_that_does_not_say_what_it_read_is_never_remembered():
    p = Pipeline(ruleset(), Inventory())
    p.handle(Device(devpath=TTY, sysname="ttyUSB0", subsystem="tty", parent=USB_PARENT,
                    read_attr={"x": "1"}.get), "add")
    assert p.recall is not None and len(p.recall) == 0


def test_memory_is_bounded_whatever_paths_a_gadget_replugs_under():
    recall = Recall(limit=8)
    p = Pipeline(ruleset(), Inventory())
    p.recall = recall
    for k in range(100):
        path = f"/devices/platform/serial8250/tty/ttyS{k}"
        p.handle(Device(devpath=path, sysname=f"ttyS{k}", subsystem="tty", devnode=f"/dev/ttyS{k}",
                        properties={"SEQNUM": str(k)}, read_attr=Attrs({"type": "4", "line": str(k)})), "add")
    assert len(recall) == 8


def test_enumerations_neither_use_nor_feed_the_memory():
    rs = ruleset()
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    p.resync([tty(1)])
    assert p.recall is not None and len(p.recall) == 0
    p.handle(tty(2), "add")
    p.sight(tty(3), "add", recall=False)
    assert runs.runs == 3 and p.recall.hits == 0 and len(p.recall) == 1


def test_what_udev_sets_after_the_rules_is_not_an_input():
    """udevd re-initializes a device on every add: USEC_INITIALIZED is new each time, and
    rules never see it."""
    rs = ruleset()
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    for seq in range(1, 6):
        flip(p, tty(seq, USEC_INITIALIZED=str(1000 + seq)))
    assert runs.runs == 1


def test_the_driver_is_looked_up_only_when_a_rule_asks_and_then_it_is_an_input():
    looked: list[str] = []

    def serial(seq: int, driver: str) -> Device:
        return Device(devpath="/devices/platform/serial8250/tty/ttyS3", sysname="ttyS3", subsystem="tty",
                      devnode="/dev/ttyS3", properties={"SEQNUM": str(seq)},
                      read_attr=Attrs({"type": "4", "line": "3"}),
                      load_driver=lambda: looked.append(driver) or driver)

    rs = ruleset()  # no rule looks at drivers
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    p.handle(serial(1, "serial8250"), "add")
    p.handle(serial(2, "other"), "add")
    assert looked == [] and runs.runs == 1  # never read: neither the rules nor the recall did

    rs = ruleset('SUBSYSTEM=="tty", DRIVERS=="serial8250", RESOURCE="uart", DEVICE_ID="uart-%k"\n')
    runs = Counting(rs)
    p = Pipeline(rs, Inventory())
    p.handle(serial(1, "serial8250"), "add")
    p.handle(serial(2, "serial8250"), "add")
    assert runs.runs == 1 and looked == ["serial8250", "serial8250"]  # the recall compared it
    p.handle(serial(3, "other"), "add")
    assert runs.runs == 2 and health(p, "devplug.io/uart") == {}


class Stamps:
    """A source's chain stamps, by hand: ``bump()`` is a uevent naming an ancestor."""

    def __init__(self) -> None:
        self.tick, self.asked = 1, 0

    def __call__(self, device: Device) -> Optional[int]:
        self.asked += 1
        return self.tick

    def bump(self) -> None:
        self.tick += 1


def lazy_tty(seq: int, parent: Device, loads: list[int]) -> Device:
    """A kernel event's record: the parent is found only when asked (counted in ``loads``)."""
    def load() -> Device:
        loads.append(seq)
        return parent
    p = {"ACTION": "add", "DEVPATH": TTY, "SUBSYSTEM": "tty", "DEVNAME": "/dev/ttyUSB0", "SEQNUM": str(seq)}
    return Device(devpath=TTY, sysname="ttyUSB0", subsystem="tty", devnode="/dev/ttyUSB0", properties=p,
                  read_attr=Attrs({}), load_parent=load)


def test_a_chain_the_source_vouches_for_is_not_looked_up():
    stamps, loads = Stamps(), []
    p = Pipeline(ruleset(), Inventory(), chain=stamps)
    p.handle(lazy_tty(1, USB_PARENT, loads), "add")
    assert loads == [1]  # the pass asked for the chain
    for seq in range(2, 8, 2):
        p.handle(lazy_tty(seq, USB_PARENT, loads), "remove")
        p.handle(lazy_tty(seq + 1, USB_PARENT, loads), "add")
    assert loads == [1], "no uevent named an ancestor: the chain was never walked again"
    assert p.recall is not None and p.recall.hits == 3
    assert health(p) == {"0403-6001-A1-if00": "Healthy"}


def test_an_ancestors_uevent_makes_the_recall_look_the_chain_up_again():
    """Another adapter in the same port: its USB device's uevents bump the stamp, the chain
    is looked up, it is another record, and the rules run again (its own ID)."""
    stamps, loads = Stamps(), []
    rs = ruleset()
    runs = Counting(rs)
    p = Pipeline(rs, Inventory(), chain=stamps)
    p.handle(lazy_tty(1, USB_PARENT, loads), "add")
    p.handle(lazy_tty(2, USB_PARENT, loads), "remove")
    stamps.bump()  # the adapter's remove, and the next one's add
    other = Device(devpath=USB, sysname="1-1", subsystem="usb", devtype="usb_device",
                   read_attr={"idVendor": "0403", "idProduct": "6001", "serial": "B2"}.get)
    p.handle(lazy_tty(3, other, loads), "add")
    assert loads == [1, 3] and runs.runs == 2
    assert health(p) == {"0403-6001-A1-if00": "Unhealthy", "0403-6001-B2-if00": "Healthy"}


def test_a_chain_looked_up_and_found_the_same_is_vouched_for_again():
    stamps, loads = Stamps(), []
    p = Pipeline(ruleset(), Inventory(), chain=stamps)
    p.handle(lazy_tty(1, USB_PARENT, loads), "add")
    stamps.bump()  # an ancestor's change: the same records
    flip(p, lazy_tty(2, USB_PARENT, loads))
    assert loads == [1, 2]  # looked up once, found the same parent: a hit
    flip(p, lazy_tty(3, USB_PARENT, loads))
    assert loads == [1, 2], "vouched for again from that lookup on"
    assert p.recall is not None and p.recall.hits == 2


def test_a_source_that_cannot_vouch_leaves_the_lookup_in_place():
    loads: list[int] = []
    p = Pipeline(ruleset(), Inventory(), chain=lambda device: None)
    p.handle(lazy_tty(1, USB_PARENT, loads), "add")
    flip(p, lazy_tty(2, USB_PARENT, loads))
    flip(p, lazy_tty(3, USB_PARENT, loads))
    assert loads == [1, 2, 3]
    assert p.recall is not None and p.recall.hits == 2


class LazyReport:
    """What the udev source's ``Uevent`` is to the core: the event's own properties, and
    its record built only when asked (counted in ``built``)."""

    def __init__(self, action: str, seq: int, sysfs: dict[str, str], built: list[str], **props: str) -> None:
        self.action, self._sysfs, self._built = action, sysfs, built
        self.properties = {"ACTION": action, "DEVPATH": TTY, "SUBSYSTEM": "tty", "DEVNAME": "ttyUSB0",
                           "SEQNUM": str(seq), **props}
        self.devpath, self.syspath = TTY, "/sys" + TTY
        self._device: Optional[Device] = None

    @property
    def device(self) -> Device:
        if self._device is None:
            self._built.append(self.action)
            props = dict(self.properties, DEVNAME="/dev/ttyUSB0")  # the record normalises
            self._device = Device(devpath=TTY, sysname="ttyUSB0", subsystem="tty", devnode="/dev/ttyUSB0",
                                  properties=props, read_attr=Attrs(self._sysfs), parent=USB_PARENT,
                                  load_driver=lambda: None)  # no DRIVER in the event: looked up if asked
        return self._device


def test_a_report_builds_its_record_only_for_a_pass_or_an_input_the_recall_must_read():
    built: list[str] = []
    stamps = Stamps()
    # No ATTRS{} (which reads the device's own attributes too): nothing to read again.
    p = Pipeline(ruleset('SUBSYSTEM=="tty", KERNEL=="ttyUSB*", RESOURCE="serial"\n'), Inventory(), chain=stamps)
    p.handle(LazyReport("add", 1, {}, built), "add")
    assert built == ["add"]  # the rules ran on it
    for seq in range(2, 8, 2):
        p.handle(LazyReport("remove", seq, {}, built), "remove")
        p.handle(LazyReport("add", seq + 1, {}, built), "add")
    assert built == ["add"], "a remove and a remembered add need no record"
    assert p.recall is not None and p.recall.hits == 3
    assert health(p) == {"0403-6001-A1-if00": "Healthy"}
    p.handle(LazyReport("remove", 10, {}, built), "remove")
    p.handle(LazyReport("add", 11, {}, built, ID_SERIAL="changed"), "add")
    assert built == ["add", "add"]  # another input: a pass, on a record
    stamps.bump()  # an ancestor's uevent: the chain must be looked up, on the record
    p.handle(LazyReport("remove", 12, {}, built), "remove")
    p.handle(LazyReport("add", 13, {}, built, ID_SERIAL="changed"), "add")
    assert built == ["add", "add", "add"] and p.recall.hits == 4
    assert health(p) == {"0403-6001-A1-if00": "Healthy"}


def test_a_report_whose_pass_read_an_attribute_is_read_again():
    built: list[str] = []
    p = Pipeline(ruleset(), Inventory())
    kw = {"DEVPATH": "/devices/platform/serial8250/tty/ttyS4"}
    first = LazyReport("add", 1, {"type": "4", "line": "4"}, built)
    first.properties.update(kw)
    first.devpath, first.syspath = kw["DEVPATH"], "/sys" + kw["DEVPATH"]
    p.handle(first, "add")
    again = LazyReport("add", 2, {"type": "4", "line": "4"}, built)
    again.properties.update(kw)
    again.devpath, again.syspath = first.devpath, first.syspath
    p.handle(again, "add")
    assert built == ["add", "add"], "the recall re-reads ATTR{type} and ATTR{line} through the record"
    assert p.recall is not None and p.recall.hits == 1
