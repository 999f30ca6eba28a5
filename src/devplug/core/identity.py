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

IDs are unique by construction (:data:`ID_RE`). A base ID never ends in ``-s<N>``
(``sanitize_id`` writes ``_s<N>`` instead), so a ``SHARE`` copy ``<base>-s<N>`` can never
equal another device's base ID, nor another base's copy. Two present devices that derive
the same base ID (cloned adapters with one serial) are told apart as ``<base>:<tag>``
(:func:`twin_id`): ``:`` never occurs in a base ID, and the tag is a hash of the device's
kernel path, so the result does not depend on which arrived first. Hence every ID splits
one way only into base, tag and copy number.
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional

from .device import Device
from .rules.model import Claim

MAX_ID_LEN = 63
#: Between a base ID and a twin's tag; never part of a base ID.
TWIN_SEP = ":"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COPY_SUFFIX = re.compile(r"-s([0-9]+)$")
_BASE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_TAG = re.compile(r"[0-9a-f]{8,64}")


def sanitize_id(raw: str) -> str:
    """Map any string to a short, safe base ID, deterministically (see the module docstring)."""
    safe = _UNSAFE.sub("_", raw.strip()).strip("._-") or "device"
    if len(safe) > MAX_ID_LEN:
        digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        safe = f"{safe[: MAX_ID_LEN - 11].rstrip('._-')}-{digest}"
    # A base never looks like a SHARE copy, so no copy can ever equal it.
    return _COPY_SUFFIX.sub(r"_s\1", safe)


def twin_id(base: str, key: str, length: int = 8) -> str:
    """The base ID of a device that shares ``base`` with another present device: tagged by
    a hash of its kernel path ``key`` (stable while it stays in its port)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{base}{TWIN_SEP}{digest[:length]}"


#: A USB interface's kernel name: ``1-1.2:1.0`` (bus-ports:configuration.interface).
_IFACE_NAME = re.compile(r"[0-9]+-[0-9.]+:[0-9]+\.([0-9]+)")


def split_id(device_id: str) -> Optional[tuple[str, Optional[str], Optional[int]]]:
    """(base, twin tag, copy number) of an ID devplug makes, or ``None`` for any other
    string: the one way an ID splits (see the module docstring)."""
    rest, copy = device_id, None
    m = _COPY_SUFFIX.search(rest)
    if m is not None and (m[1] == "0" or not m[1].startswith("0")):
        rest, copy = rest[: m.start()], int(m[1])
    base, sep, tag = rest.partition(TWIN_SEP)
    if not _BASE.fullmatch(base) or _COPY_SUFFIX.search(base) or (sep and not _TAG.fullmatch(tag)):
        return None
    return base, tag if sep else None, copy


def usb_ancestors(device: Device) -> tuple[Optional[Device], Optional[Device]]:
    """The nearest USB device and USB interface of the chain (the device itself included),
    in one walk: identity, the USB node and the topology all need them."""
    iface: Optional[Device] = None
    for dev in device.chain():
        if dev.subsystem == "usb":
            devtype = dev.devtype
            if devtype == "usb_device":
                return dev, iface
            if devtype == "usb_interface" and iface is None:
                iface = dev
    return None, None


def _usb_device(device: Device) -> Optional[Device]:
    return usb_ancestors(device)[0]


def _usb_identity(device: Device, usb: Optional[Device], iface: Optional[Device]) -> Optional[str]:
    """vendor-product-serial[-ifNN], from sysfs first, else udev's properties.

    sysfs comes first because every source sees it (the kernel source has no ``ID_*``
    on ``add``), so a device gets the same ID whichever source reported it.
    """
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
        ifnum = iface.read_attr("bInterfaceNumber") if iface is not None else None
        ifnum = ifnum or props.get("ID_USB_INTERFACE_NUM") or _ifnum_in_path(usb, device)
        if ifnum:
            ident += f"-if{ifnum.strip()}"
    return ident


def _ifnum_in_path(usb: Device, device: Device) -> Optional[str]:
    """bInterfaceNumber from the kernel's name of the interface in ``device``'s path.

    The kernel names an interface ``<bus>-<port path>:<configuration>.<bInterfaceNumber>``
    (decimal; the sysfs attribute is two hex digits). While a device is being unplugged its
    interface's attributes can vanish before a late event for the tty is handled (udevd's
    database repeat under load): the USB device still answers, and without this the ID
    loses its ``-ifNN`` and the resource briefly lists a second device."""
    below = device.devpath[len(usb.devpath):] if device.devpath.startswith(usb.devpath + "/") else ""
    first = below.lstrip("/").split("/", 1)[0]
    m = _IFACE_NAME.fullmatch(first)
    return f"{int(m[1]):02x}" if m is not None and first.startswith(usb.sysname + ":") else None


def _symlink_named(device: Device, marker: str) -> Optional[str]:
    links = sorted(link for link in device.symlinks if marker in link)
    return links[0].rsplit("/", 1)[-1] if links else None


def default_id(device: Device, usb: Optional[tuple[Optional[Device], Optional[Device]]] = None) -> str:
    """The unsanitized default identity of a device (see the module docstring); ``usb`` is
    :func:`usb_ancestors` when the caller has it already."""
    ident = _usb_identity(device, *(usb if usb is not None else usb_ancestors(device)))
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


def device_id(device: Device, claim: Claim,
              usb: Optional[tuple[Optional[Device], Optional[Device]]] = None) -> str:
    """The stable ID of a claimed device: the rule's ``DEVICE_ID`` or the default."""
    return sanitize_id(claim.device_id or default_id(device, usb))


def share_ids(base: str, share: int) -> tuple[str, ...]:
    """The schedulable IDs of one physical device offered ``share`` times."""
    if share <= 1:
        return (base,)
    return tuple(f"{base}-s{k}" for k in range(share))


def usb_node(device: Device, usb: Optional[Device] = None) -> Optional[str]:
    """``/dev/bus/usb/BBB/DDD`` of the nearest USB device (``usb``, when the caller has
    it), for libusb users."""
    if usb is None:
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


def topology(device: Device, usb: Optional[Device] = None) -> Optional[str]:
    """What a device shares with its neighbours: the USB hub it hangs off, else its parent.

    Devices on the same hub (or behind the same parent) are preferred together by
    GetPreferredAllocation, so a pod gets adapters that share fate and bandwidth.
    """
    if usb is None:
        usb = _usb_device(device)
    anchor = usb.parent if usb is not None else device.parent
    return anchor.devpath if anchor is not None else None
