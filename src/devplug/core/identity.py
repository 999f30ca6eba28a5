"""Stable device IDs and the physical facts kubelet needs (USB node, topology). Pure.

A device ID must survive a replug into another port and a restart of devplug, because
kubelet keeps allocations by ID in its checkpoint. So the default ID comes from the
strongest identity the device offers, in this order:

1. USB with a serial number: ``<vendor>-<product>-<serial>[-if<NN>]``: the same dongle in
   any port gets the same ID;
2. a persistent ``by-id`` symlink udev made (disks, which carry their serial there);
3. the physical path: a ``by-path`` symlink, else ``ID_PATH`` plus the kernel name;
4. the kernel devpath, which is at least stable while the hardware stays put.

``DEVICE_ID=`` in a rule overrides all of this. IDs are restricted to ``[A-Za-z0-9._-]``
and to :data:`MAX_ID_LEN` characters (longer ones keep a readable head plus a hash).
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional

from .device import Device
from .rules.model import Claim

MAX_ID_LEN = 63
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_id(raw: str) -> str:
    """Map any string to a short, safe device ID, deterministically."""
    safe = _UNSAFE.sub("_", raw.strip()).strip("._-") or "device"
    if len(safe) <= MAX_ID_LEN:
        return safe
    digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
    return f"{safe[: MAX_ID_LEN - 11].rstrip('._-')}-{digest}"


def _usb_device(device: Device) -> Optional[Device]:
    for dev in device.chain():
        if dev.subsystem == "usb" and dev.devtype == "usb_device":
            return dev
    return None


def _usb_interface(device: Device) -> Optional[Device]:
    for dev in device.chain():
        if dev.subsystem == "usb" and dev.devtype == "usb_interface":
            return dev
    return None


def _usb_identity(device: Device) -> Optional[str]:
    """vendor-product-serial[-ifNN], from sysfs first, else udev's properties.

    sysfs comes first because every source sees it (the kernel source has no ``ID_*``
    on ``add``), so a device gets the same ID whichever source reported it.
    """
    usb = _usb_device(device)
    if usb is None:
        return None
    props = device.properties
    vendor = usb.read_attr("idVendor") or props.get("ID_VENDOR_ID")
    product = usb.read_attr("idProduct") or props.get("ID_MODEL_ID")
    serial = usb.read_attr("serial") or props.get("ID_SERIAL_SHORT")
    if not (vendor and product and serial and serial.strip()):
        return None
    ident = f"{vendor}-{product}-{serial.strip()}"
    if usb is not device:
        iface = _usb_interface(device)
        ifnum = iface.read_attr("bInterfaceNumber") if iface is not None else None
        ifnum = ifnum or props.get("ID_USB_INTERFACE_NUM")
        if ifnum:
            ident += f"-if{ifnum.strip()}"
    return ident


def _symlink_named(device: Device, marker: str) -> Optional[str]:
    links = sorted(link for link in device.symlinks if marker in link)
    return links[0].rsplit("/", 1)[-1] if links else None


def default_id(device: Device) -> str:
    """The unsanitized default identity of a device (see the module docstring)."""
    ident = _usb_identity(device)
    if ident:
        return ident
    by_id = _symlink_named(device, "/by-id/")
    if by_id:
        return by_id
    by_path = _symlink_named(device, "/by-path/")
    if by_path:
        return by_path
    id_path = device.properties.get("ID_PATH")
    if id_path:
        return f"{id_path}-{device.sysname}"
    return device.devpath.removeprefix("/devices/").replace("/", "-")


def device_id(device: Device, claim: Claim) -> str:
    """The stable ID of a claimed device: the rule's ``DEVICE_ID`` or the default."""
    return sanitize_id(claim.device_id or default_id(device))


def share_ids(base: str, share: int) -> tuple[str, ...]:
    """The schedulable IDs of one physical device offered ``share`` times."""
    if share <= 1:
        return (base,)
    return tuple(f"{base}-s{k}" for k in range(share))


def usb_node(device: Device) -> Optional[str]:
    """``/dev/bus/usb/BBB/DDD`` of the nearest USB device, for libusb users."""
    usb = _usb_device(device)
    if usb is None:
        return None
    if usb.devnode:
        return usb.devnode
    bus = usb.properties.get("BUSNUM") or usb.read_attr("busnum")
    dev = usb.properties.get("DEVNUM") or usb.read_attr("devnum")
    if not (bus and dev):
        return None
    try:
        return f"/dev/bus/usb/{int(bus):03d}/{int(dev):03d}"
    except ValueError:
        return None


def topology(device: Device) -> Optional[str]:
    """What a device shares with its neighbours: the USB hub it hangs off, else its parent.

    Devices on the same hub (or behind the same parent) are preferred together by
    GetPreferredAllocation, so a pod gets adapters that share fate and bandwidth.
    """
    usb = _usb_device(device)
    anchor = usb.parent if usb is not None else device.parent
    return anchor.devpath if anchor is not None else None
