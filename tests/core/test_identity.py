"""Stable IDs: USB identity survives a port change; fallbacks are stable and safe."""

from __future__ import annotations

import re

from devplug.core.device import Device, static_attrs
from devplug.core.identity import MAX_ID_LEN, device_id, sanitize_id, share_ids, topology, usb_node
from devplug.core.rules.model import Claim

CLAIM = Claim(resource="devplug.io/serial")


def ftdi(port: str, tty: str, *, props=None) -> Device:
    hub = Device(devpath=f"/devices/pci0000:00/usb1/{port[:3]}", sysname=port[:3], subsystem="usb", devtype="usb_device")
    usb = Device(
        devpath=f"/devices/pci0000:00/usb1/{port}",
        sysname=port,
        subsystem="usb",
        devtype="usb_device",
        read_attr=static_attrs({"idVendor": "0403", "idProduct": "6001", "serial": "A6008isP", "busnum": "1", "devnum": "7"}),
        parent=hub,
    )
    iface = Device(
        devpath=usb.devpath + f"/{port}:1.0",
        sysname=f"{port}:1.0",
        subsystem="usb",
        devtype="usb_interface",
        read_attr=static_attrs({"bInterfaceNumber": "00"}),
        parent=usb,
    )
    return Device(
        devpath=iface.devpath + f"/{tty}/tty/{tty}",
        sysname=tty,
        subsystem="tty",
        devnode=f"/dev/{tty}",
        properties=props or {},
        parent=iface,
    )


def test_usb_identity_is_port_independent():
    a = device_id(ftdi("1-1.2", "ttyUSB0"), CLAIM)
    b = device_id(ftdi("1-1.4", "ttyUSB3"), CLAIM)
    assert a == b == "0403-6001-A6008isP-if00"


def test_usb_identity_is_the_same_from_sysfs_and_udev_properties():
    props = {"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6001", "ID_SERIAL_SHORT": "A6008isP", "ID_USB_INTERFACE_NUM": "00"}
    assert device_id(ftdi("1-1", "ttyUSB0", props=props), CLAIM) == device_id(ftdi("1-1", "ttyUSB0"), CLAIM)


def test_usb_identity_falls_back_to_udev_properties():
    # A remove event: sysfs is gone, only the event's properties are left.
    usb = Device(devpath="/devices/usb1/1-1", sysname="1-1", subsystem="usb", devtype="usb_device")
    tty = Device(devpath="/devices/usb1/1-1/1-1:1.0/ttyUSB0", sysname="ttyUSB0", subsystem="tty", parent=usb,
                 properties={"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6015", "ID_SERIAL_SHORT": "XYZ",
                             "ID_USB_INTERFACE_NUM": "01"})
    assert device_id(tty, CLAIM) == "0403-6015-XYZ-if01"


def test_rule_device_id_overrides_and_is_sanitized():
    assert device_id(ftdi("1-1", "ttyUSB0"), Claim(resource="x/y", device_id="my dongle/№1")) == "my_dongle_1"


def test_fallbacks():
    by_path = Device(devpath="/devices/platform/serial8250/tty/ttyS4", sysname="ttyS4",
                     symlinks=("/dev/serial/by-path/platform-serial8250-port4",))
    assert device_id(by_path, CLAIM) == "platform-serial8250-port4"
    id_path = Device(devpath="/devices/pci0000:00/0000:00:02.0/drm/card0", sysname="card0",
                     properties={"ID_PATH": "pci-0000:00:02.0"})
    assert device_id(id_path, CLAIM) == "pci-0000_00_02.0-card0"
    virtual = Device(devpath="/devices/virtual/block/zram3", sysname="zram3")
    assert device_id(virtual, CLAIM) == "virtual-block-zram3"


def test_ids_are_short_safe_and_deterministic():
    long = "x" * 200 + "/weird chars*?"
    a, b = sanitize_id(long), sanitize_id(long)
    assert a == b and len(a) <= MAX_ID_LEN and re.fullmatch(r"[A-Za-z0-9._-]+", a)
    assert sanitize_id(long + "1") != a
    assert sanitize_id("///") == "device"


def test_share_ids():
    assert share_ids("kvm", 1) == ("kvm",)
    assert share_ids("kvm", 3) == ("kvm-s0", "kvm-s1", "kvm-s2")


def test_usb_node_and_topology():
    dev = ftdi("1-1.2", "ttyUSB0")
    assert usb_node(dev) == "/dev/bus/usb/001/007"
    assert topology(dev) == "/devices/pci0000:00/usb1/1-1"
    plain = Device(devpath="/devices/virtual/misc/fuse", sysname="fuse")
    assert usb_node(plain) is None and topology(plain) is None


def test_usb_identity_keeps_its_interface_while_the_interface_vanishes():
    """Unplugging: the interface's attributes are gone before a late event for its tty is
    handled, the USB device still answers. The ID must not lose its -ifNN (it did: the
    resource briefly listed 0403-6001-A6008isP beside 0403-6001-A6008isP-if00)."""
    whole = ftdi("1-1.2", "ttyUSB0")
    iface = whole.parent
    vanished = Device(devpath=iface.devpath, sysname=iface.sysname, subsystem="usb", devtype="usb_interface",
                      parent=iface.parent)  # no attributes left
    tty = Device(devpath=whole.devpath, sysname="ttyUSB0", subsystem="tty", parent=vanished)
    assert device_id(tty, CLAIM) == device_id(whole, CLAIM) == "0403-6001-A6008isP-if00"
    # The interface already gone from the chain: the kernel's name in the path still says it.
    skipped = Device(devpath=whole.devpath, sysname="ttyUSB0", subsystem="tty", parent=iface.parent)
    assert device_id(skipped, CLAIM) == "0403-6001-A6008isP-if00"


def test_interface_number_from_the_path_is_hex_like_the_attribute():
    usb = Device(devpath="/devices/usb1/1-3", sysname="1-3", subsystem="usb", devtype="usb_device",
                 read_attr=static_attrs({"idVendor": "2341", "idProduct": "0043", "serial": "S1"}))
    tty = Device(devpath="/devices/usb1/1-3/1-3:1.10/tty/ttyACM0", sysname="ttyACM0", subsystem="tty", parent=usb)
    assert device_id(tty, CLAIM) == "2341-0043-S1-if0a"
    # A path that does not go through one of this device's interfaces adds nothing.
    odd = Device(devpath="/devices/usb1/1-3/9-9:1.0/ttyACM0", sysname="ttyACM0", subsystem="tty", parent=usb)
    assert device_id(odd, CLAIM) == "2341-0043-S1"
