"""The udev adapter: the only part of devplug that imports pyudev.

* :func:`device_from_pyudev`, :func:`find_device` (``records``) build the pure
  :class:`devplug.device.Device` records the rules engine matches.
* :class:`UdevSource` (``source``) turns netlink uevents into :class:`DeviceEvent` and
  :class:`Resync` items inside trio; see its module for what each source can see.
"""

from .records import (
    DeviceNotFound,
    device_from_pyudev,
    find_device,
    list_devices,
    read_sysattr,
    sysattr_names,
    sysattr_reader,
)
from .source import DeviceEvent, Resync, SourceItem, UdevSource, resolve_source, udevd_reachable

__all__ = [
    "DeviceEvent",
    "DeviceNotFound",
    "Resync",
    "SourceItem",
    "UdevSource",
    "device_from_pyudev",
    "find_device",
    "list_devices",
    "read_sysattr",
    "resolve_source",
    "sysattr_names",
    "sysattr_reader",
    "udevd_reachable",
]
