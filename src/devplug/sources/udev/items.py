"""What :class:`~.source.UdevSource` yields: uevents, full enumerations, and "drained".

A uevent is a :class:`Uevent` (what it says, with what udev's database adds for the kernel
source, its record built only when asked) or, where the kernel source reads the database
without a watch on it, a :class:`DeviceEvent` (a record built at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Union

import attrs

from ...core.device import Device


@attrs.define(slots=True)
class DeviceEvent:
    """One uevent with its record built at once: ``action`` is add/change/bind/move/
    online/offline (a device that left is a :class:`Uevent`).

    The kernel source reports a present device this way where it reads udev's database
    without a watch on it (the directory appeared after devplug started), so the file is
    read into the record at once. ``origin`` as :class:`Uevent`'s. Written once, not
    frozen, like the other per-event records (``core.entries``).
    """

    action: str
    device: Device
    seqnum: Optional[int]
    received_ns: int  # time.perf_counter_ns() right after the message was received
    origin: str = "uevent"
    read_ns: Optional[int] = None  # time.perf_counter_ns() right before it was asked for

    @property
    def syspath(self) -> str:
        return self.device.syspath

    @property
    def subsystem(self) -> Optional[str]:
        return self.device.subsystem

    @property
    def devpath(self) -> str:
        return self.device.devpath


@attrs.define(slots=True)
class Uevent:
    """One uevent as it was read: what it says, with the device's record built only when
    asked (a :class:`~devplug.core.device.Report`).

    A device that left (``remove``, ``unbind``) needs no record: its key says which IDs
    turn Unhealthy. Nor does one whose inputs are those of its last pass (``core.recall``:
    a replug, a ``change`` that changed nothing the rules read). Building the record was
    ~40 µs of each event on a CPU that just woke; now only a rules pass, an input the
    recall must read, or the logs (after kubelet was told) build it. Written once, like
    :class:`DeviceEvent`.
    """

    action: str
    syspath: str  # the inventory's key: ``sys_root`` + ``DEVPATH``
    properties: dict[str, str]  # as ``netlink.parse`` gave them; the record gets a copy
    seqnum: Optional[int]
    received_ns: int  # time.perf_counter_ns() right after the message was received
    _build: Callable[[dict[str, str], str], Device]  # (properties, action) -> record
    #: ``"uevent"``, or ``"udev-db"`` for the kernel source's repeat once udevd wrote the
    #: device's database entry (see ``dbwatch``).
    origin: str = "uevent"
    #: time.perf_counter_ns() right before the message was asked for (the socket's read,
    #: the sender's checks and the parse, which come before ``received_ns``).
    read_ns: Optional[int] = None
    _device: Optional[Device] = None

    @property
    def device(self) -> Device:
        if self._device is None:
            object.__setattr__(self, "_device", self._build(dict(self.properties), self.action))
        assert self._device is not None
        return self._device

    @property
    def subsystem(self) -> Optional[str]:
        return self.properties.get("SUBSYSTEM")

    @property
    def devpath(self) -> str:
        return self.properties["DEVPATH"]


@attrs.frozen
class Drained:
    """Every queued message was read: the consumer may let others run now (its streams
    write), then do what can wait (logs, counters) before the source waits again."""


@attrs.frozen
class Resync:
    """The complete set of present devices; consumers reconcile their state to it."""

    devices: tuple[Device, ...]
    reason: str  # "coldplug" or "overflow"


SourceItem = Union[DeviceEvent, Uevent, Resync, Drained]

