"""Shared fixtures: real systemd-udevd, real uevents, temporary rules files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

UDEVD_CANDIDATES = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
IS_ROOT = os.geteuid() == 0


def _udevd_running() -> bool:
    # udevd listens on /run/udev/control; a stale socket file is not proof, so ask it.
    if not os.path.exists("/run/udev/control"):
        return False
    r = subprocess.run(["udevadm", "control", "--ping", "-t", "2"], capture_output=True)
    return r.returncode == 0


def _udevd_binary() -> str | None:
    for path in UDEVD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("systemd-udevd")


@pytest.fixture(scope="session")
def udevd():
    """A running systemd-udevd with a populated database, stopped afterwards if we started it."""
    if not IS_ROOT:
        pytest.skip("systemd-udevd needs root")
    binary = _udevd_binary()
    if binary is None:
        pytest.skip("systemd-udevd is not installed (Debian package 'udev')")
    started = False
    if not _udevd_running():
        subprocess.run([binary, "--daemon"], check=True)
        deadline = time.monotonic() + 10
        while not _udevd_running():
            if time.monotonic() > deadline:
                pytest.fail("systemd-udevd did not come up")
            time.sleep(0.05)
        started = True
        subprocess.run(["udevadm", "trigger", "--action=add"], check=True)
        subprocess.run(["udevadm", "trigger", "--action=add", "--type=subsystems"], check=True)
    subprocess.run(["udevadm", "settle", "-t", "30"], check=True)
    yield binary
    if started:
        subprocess.run(["udevadm", "control", "--exit"], check=False)


@pytest.fixture
def rules_dir(tmp_path: Path):
    """A directory to drop ``*.rules`` files into."""
    d = tmp_path / "rules"
    d.mkdir()
    return d
