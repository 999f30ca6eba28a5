"""Shared fixtures: real systemd-udevd, real uevents, temporary rules files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import udevd as host_udevd

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
