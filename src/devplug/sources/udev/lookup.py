"""Looking a device up for people: by ``/sys`` path, devpath or ``/dev`` node (the CLI and
the debug socket's ``/explain``), and the attribute names ``udevadm info -a`` would list."""

from __future__ import annotations

import os
import stat
from typing import Optional

import pyudev

from ...core.device import Device
from .records import _LINK_ATTRS, device_from_pyudev, is_device


class DeviceNotFound(LookupError):
    """A user-given device spec that names no device; ``str()`` is one clear line."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(spec, reason)
        self.spec = spec
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.spec}: {self.reason}"


def sysattr_names(device: Device) -> list[str]:
    """The attribute names directly in the device's sysfs directory, as ``udevadm info -a``
    offers them: regular files and the ``driver``/``subsystem``/``module`` links, sorted."""
    names: list[str] = []
    try:
        entries = list(os.scandir(device.syspath))
    except OSError:
        return names
    for entry in entries:
        try:
            if entry.is_symlink():
                if entry.name in _LINK_ATTRS:
                    names.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


def _pyudev_from_spec(spec: str, context: pyudev.Context, sys_root: str) -> pyudev.Device:
    if not spec:
        raise DeviceNotFound(spec, "empty device name")
    if spec.startswith("/dev/"):
        try:
            st = os.stat(spec)
        except FileNotFoundError:
            raise DeviceNotFound(spec, "no such device node") from None
        except OSError as exc:
            raise DeviceNotFound(spec, f"cannot stat: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "char"
        elif stat.S_ISBLK(st.st_mode):
            kind = "block"
        else:
            raise DeviceNotFound(spec, "not a character or block device node")
        try:
            return pyudev.Devices.from_device_number(context, kind, st.st_rdev)
        except pyudev.DeviceNotFoundError:
            raise DeviceNotFound(
                spec, f"no {kind} device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} in sysfs"
            ) from None
    if spec.startswith("/devices/"):
        syspath = sys_root + spec
    elif spec == sys_root or spec.startswith(sys_root + "/"):
        syspath = spec
    else:
        raise DeviceNotFound(spec, "expected a /sys path, a devpath (/devices/...) or a /dev node")
    real = os.path.realpath(syspath)
    if not os.path.isdir(real):
        raise DeviceNotFound(spec, "no such device in sysfs")
    if not is_device(real):
        raise DeviceNotFound(spec, "not a device directory (no uevent file)")
    try:
        return pyudev.Devices.from_sys_path(context, real)
    except pyudev.DeviceNotFoundError:
        raise DeviceNotFound(spec, "no such device in sysfs") from None


def find_device(spec: str, *, context: Optional[pyudev.Context] = None) -> Device:
    """Look a device up by ``/sys`` path (``/sys/class/...`` too), devpath or ``/dev`` node.

    ``/dev`` symlinks such as ``/dev/serial/by-id/...`` resolve to their node. Raises
    :class:`DeviceNotFound` with a user-facing reason otherwise.
    """
    ctx = context or pyudev.Context()
    sys_root = ctx.sys_path
    return device_from_pyudev(_pyudev_from_spec(spec, ctx, sys_root), sys_root=sys_root)
