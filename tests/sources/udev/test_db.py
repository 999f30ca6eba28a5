"""Parsing udev's database and merging it into kernel-source records (pure, no udevd)."""

from __future__ import annotations

import pytest

import os

import attrs

from devplug.core.device import Device
from devplug.sources.udev.db import _merged, db_id, db_name, enrich, merged, parse_db, read_db

DB = """\
S:serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0
S:serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0
L:0
I:123456789
E:ID_VENDOR_ID=0403
E:ID_SERIAL=FTDI_FT232R_USB_UART_A10K1ABC
E:EMPTY=
E:WITH=EQUALS=SIGN
G:systemd
G:uaccess
Q:uaccess
V:1
garbage line
"""


def tty(**props: str) -> Device:
    base = {"DEVPATH": "/devices/x/ttyUSB0", "SUBSYSTEM": "tty", "DEVNAME": "/dev/ttyUSB0",
            "MAJOR": "188", "MINOR": "0", "ACTION": "add", "SEQNUM": "7"}
    base.update(props)
    return Device(devpath=base["DEVPATH"], sysname="ttyUSB0", subsystem="tty",
                  devnode="/dev/ttyUSB0", properties=base)


def test_parse_db_lines():
    entry = parse_db(DB)
    assert entry.symlinks == (
        "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0",
        "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0",
    )
    assert entry.properties == {"ID_VENDOR_ID": "0403",
                                "ID_SERIAL": "FTDI_FT232R_USB_UART_A10K1ABC",
                                "EMPTY": "", "WITH": "EQUALS=SIGN"}
    assert entry.tags == ("systemd", "uaccess") and entry.current_tags == ("uaccess",)
    assert entry.usec_initialized == "123456789" and entry.version == "1"


def test_db_file_names():
    assert db_id(tty()) == "c188:0"
    disk = Device(devpath="/devices/virtual/block/zram0", sysname="zram0", subsystem="block",
                  properties={"MAJOR": "252", "MINOR": "0"})
    assert db_id(disk) == "b252:0"
    net = Device(devpath="/devices/virtual/net/lo", sysname="lo", subsystem="net",
                 properties={"IFINDEX": "1"})
    assert db_id(net) == "n1"
    usb = Device(devpath="/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0", sysname="1-1:1.0",
                 subsystem="usb")
    assert db_id(usb) == "+usb:1-1:1.0"
    assert db_id(Device(devpath="/devices/x", sysname="x")) is None


def test_enrich_merges_as_libudev_does():
    dev = enrich(tty(ID_VENDOR_ID="kernel-wins"), parse_db(DB))
    assert dev.properties["ID_VENDOR_ID"] == "kernel-wins"  # the event's own keys win
    assert dev.properties["ID_SERIAL"] == "FTDI_FT232R_USB_UART_A10K1ABC"
    assert dev.properties["SEQNUM"] == "7"
    assert dev.symlinks == tuple(sorted(dev.symlinks)) and len(dev.symlinks) == 2
    assert dev.properties["DEVLINKS"] == " ".join(dev.symlinks)
    assert dev.tags == frozenset({"uaccess"})  # current tags (Q:), not every tag ever set
    assert dev.properties["TAGS"] == ":systemd:uaccess:"
    assert dev.properties["CURRENT_TAGS"] == ":uaccess:"
    assert dev.properties["USEC_INITIALIZED"] == "123456789"


def test_old_database_without_current_tags_uses_tags():
    dev = enrich(tty(), parse_db("G:seat\nE:A=b\n"))
    assert dev.tags == frozenset({"seat"})


def test_no_entry_leaves_the_record_alone(tmp_path):
    dev = tty()
    assert read_db(dev, str(tmp_path)) is None
    assert enrich(dev, None) is dev
    (tmp_path / "c188:0").write_text(DB)
    entry = read_db(dev, str(tmp_path))
    assert attrs.evolve(entry, stamp=None) == parse_db(DB)
    st = os.stat(tmp_path / "c188:0")
    assert entry.stamp == (st.st_ino, st.st_ctime_ns)


@pytest.mark.parametrize("text", [
    DB,
    "",
    "E:A=b\n",
    "S:x\nS:a\nG:t2\nG:t1\nQ:t1\nI:123\nV:1\n",
    "I:5\nE:USEC_INITIALIZED=7\n",
    "S:x\nE:DEVLINKS=/dev/own\nE:TAGS=:own:\n",  # E: lines naming what libudev synthesizes
])
@pytest.mark.parametrize("event", [
    {"ACTION": "add", "DEVPATH": "/devices/x/ttyUSB0", "SUBSYSTEM": "tty", "SEQNUM": "5"},
    {"ACTION": "change", "DEVPATH": "/devices/x/ttyUSB0", "ID_VENDOR_ID": "kernel-wins",
     "USEC_INITIALIZED": "9", "TAGS": ":event:", "DEVLINKS": "/dev/said"},
])
def test_an_entrys_layers_merge_as_the_long_way_does(text, event):
    entry = parse_db(text)
    assert merged(event, (), entry) == _merged(event, (), entry)
    assert merged(event, ("/dev/z",), entry) == _merged(event, ("/dev/z",), entry)


def test_a_drivers_path_too_short_to_name_its_bus_has_no_file():
    """The kernel names drivers /bus/X/drivers/Y; anything shorter has no database file
    (and must not raise on the event path)."""
    assert db_name("drivers", "/bus/usb/drivers/usbfs", {}) == "+drivers:usb:usbfs"
    for devpath in ("/x", "/bus/usb", ""):
        assert db_name("drivers", devpath, {}) is None


def test_a_name_with_a_slash_reads_no_file_anywhere(tmp_path):
    """sysname turns the kernel's ``!`` into ``/``: such a name must never read outside the
    database directory (``..`` components included)."""
    from devplug.sources.udev.db import db_stamp, read_db_file

    outside = tmp_path / "outside"
    outside.write_text("E:STOLEN=1\n")
    data = tmp_path / "data"
    (data / "+platform:x").mkdir(parents=True)  # so that the path would resolve
    name = db_name("platform", "/devices/x!..!..!outside", {})
    assert name == "+platform:x/../../outside"
    assert read_db_file(name, str(data)) is None and db_stamp(name, str(data)) is None
