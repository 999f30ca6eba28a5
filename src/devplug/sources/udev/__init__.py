"""The udev adapter: the only part of devplug that imports pyudev.

* ``netlink``: uevents read and checked straight off the netlink socket.
* ``records``: the pure :class:`devplug.core.device.Device` records the rules engine
  matches, from uevents (``device_from_uevent``) and from libudev (``device_from_pyudev``).
* ``db``: udevd's database, for the kernel source.
* ``lookup``: a device by ``/sys`` path, devpath or ``/dev`` node, for people.
* :class:`UdevSource` (``source``) turns uevents into :class:`Uevent` (its record built
  when asked), :class:`DeviceEvent` (a record, for what udev's database adds) and
  :class:`Resync` items inside trio; see its module for what each source can see.
* ``choice``: which source ``auto`` means on this node (is a reachable udevd running).
* ``ancestry``: which device paths the messages read so far named (the recall's chain
  stamps).
"""

from .lookup import DeviceNotFound, find_device, sysattr_names
from .records import device_from_pyudev, list_devices, read_sysattr, sysattr_reader
from .choice import resolve_source, udevd_reachable
from .items import DeviceEvent, Drained, Resync, SourceItem, Uevent
from .source import UdevSource

__all__ = [
    "DeviceEvent",
    "Drained",
    "DeviceNotFound",
    "Resync",
    "SourceItem",
    "UdevSource",
    "Uevent",
    "device_from_pyudev",
    "find_device",
    "list_devices",
    "read_sysattr",
    "resolve_source",
    "sysattr_names",
    "sysattr_reader",
    "udevd_reachable",
]
