"""Shared fixtures: real systemd-udevd, real uevents, temporary rules files."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from devplug.core.device import Device
from devplug.core.entries import Change, Entry, Sighting
from devplug.sources.udev.source import DeviceEvent, Uevent
from tests import udevd as host_udevd

WRITE_ONCE = (Device, Entry, Sighting, Change, DeviceEvent, Uevent)

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="session")
def udevd():
    """A running systemd-udevd with a populated database; what we started (the daemon and
    ``/run/udev``, if it was not there) is removed afterwards."""
    if not IS_ROOT:
        pytest.skip("systemd-udevd needs root")
    path = host_udevd.binary()
    if path is None:
        pytest.skip("systemd-udevd is not installed (Debian package 'udev')")
    daemon = host_udevd.HostUdevd()
    try:
        daemon.start()
    except TimeoutError as exc:
        pytest.fail(str(exc))
    yield path
    daemon.stop()


@pytest.fixture
def rules_dir(tmp_path: Path):
    """A directory to drop ``*.rules`` files into."""
    d = tmp_path / "rules"
    d.mkdir()
    return d


#: Records made on every uevent are plain slotted attrs classes, not frozen (a frozen
#: ``__init__`` costs a call per field on the event path; see ``devplug.core.entries``).
#: Under test each of them takes a field's first value and refuses a second one.
def _write_once(self: object, name: str, value: object) -> None:
    try:
        object.__getattribute__(self, name)
    except AttributeError:
        object.__setattr__(self, name, value)
        return
    raise attrs.exceptions.FrozenAttributeError()  # "can't set attribute", as a frozen class says


for _cls in WRITE_ONCE:
    _cls.__setattr__ = _write_once  # type: ignore[method-assign,assignment]
