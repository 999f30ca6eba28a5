"""Hand-built records of a USB gadget that picks its own strings (for the hostile-device tests).

The shapes are those ``sources.udev.records`` builds from sysfs: a tty below a usb-serial
port, interface, USB device and hub. Attribute values arrive as sysfs gives them, decoded with
``surrogateescape`` (so a byte that is not UTF-8 is a lone surrogate ``\\udc80``–``\\udcff``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from devplug.core.device import Device, static_attrs

HUB = "/devices/pci0000:00/0000:00:14.0/usb1"


def from_bytes(raw: bytes) -> str:
    """What ``read_sysattr`` makes of raw sysfs bytes (cut at the first NUL, trailing newlines gone)."""
    return raw.rstrip(b"\n\r").split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def gadget(serial: Optional[str] = "A1B2C3", *, port: str = "1-2", tty: str = "ttyUSB0",
           product: str = "FT232R USB UART", manufacturer: str = "FTDI", vendor: str = "0403",
           model: str = "6001", properties: Mapping[str, str] = {}, sys_root: str = "/sys") -> Device:
    """The tty of an FTDI-shaped adapter whose strings (and udev properties) are ours to choose."""
    hub = Device(HUB, "usb1", subsystem="usb", devtype="usb_device", driver="usb", sys_root=sys_root,
                 read_attr=static_attrs({"idVendor": "1d6b", "idProduct": "0002"}))
    usb_attrs = {"idVendor": vendor, "idProduct": model, "product": product, "manufacturer": manufacturer,
                 "busnum": "1", "devnum": "5"}
    if serial is not None:
        usb_attrs["serial"] = serial
    usb = Device(f"{HUB}/{port}", port, subsystem="usb", devtype="usb_device", driver="usb", parent=hub,
                 devnode="/dev/bus/usb/001/005", read_attr=static_attrs(usb_attrs), sys_root=sys_root)
    iface = Device(f"{usb.devpath}/{port}:1.0", f"{port}:1.0", subsystem="usb", devtype="usb_interface",
                   driver="ftdi_sio", parent=usb, read_attr=static_attrs({"bInterfaceNumber": "00"}),
                   sys_root=sys_root)
    serial_port = Device(f"{iface.devpath}/{tty}", tty, subsystem="usb-serial", driver="ftdi_sio", parent=iface,
                         sys_root=sys_root)
    props = {"DEVNAME": f"/dev/{tty}", "SUBSYSTEM": "tty", **properties}
    return Device(f"{serial_port.devpath}/tty/{tty}", tty, subsystem="tty", devnode=f"/dev/{tty}",
                  parent=serial_port, properties=props, sys_root=sys_root)
