"""A host systemd-udevd for tests and benchmarks, started only when none answers.

What this starts, :meth:`HostUdevd.stop` takes away again: the daemon, and ``/run/udev``
(its control socket, database, links and tags) when the directory did not exist before.
A udevd that was already running is left alone, and so is its directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Optional

RUN_DIR = "/run/udev"
CANDIDATES = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
NAMES = ("systemd-udevd", "udevd", "(udev-worker)")


def binary() -> Optional[str]:
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("systemd-udevd")


def running() -> bool:
    """A udevd answers on the control socket (a stale socket file is not proof)."""
    if not os.path.exists(RUN_DIR + "/control"):
        return False
    return subprocess.run(["udevadm", "control", "--ping", "-t", "2"], capture_output=True).returncode == 0


def _pids() -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() in NAMES:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class HostUdevd:
    """``start()`` → udevd answers, its database populated; ``stop()`` undoes only our part."""

    def __init__(self) -> None:
        self.started = False
        self._created_dir = False

    def start(self, *, settle: float = 30.0) -> "HostUdevd":
        if running():
            subprocess.run(["udevadm", "settle", "-t", str(int(settle))], check=False)
            return self
        path = binary()
        if path is None:
            raise FileNotFoundError("systemd-udevd is not installed (Debian package 'udev')")
        self._created_dir = not os.path.exists(RUN_DIR)
        subprocess.run([path, "--daemon"], check=True)
        self.started = True
        deadline = time.monotonic() + 10
        while not running():
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("systemd-udevd did not come up")
            time.sleep(0.05)
        subprocess.run(["udevadm", "trigger", "--action=add"], check=False)
        subprocess.run(["udevadm", "trigger", "--action=add", "--type=subsystems"], check=False)
        subprocess.run(["udevadm", "settle", "-t", str(int(settle))], check=False)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if not self.started:
            return
        self.started = False
        subprocess.run(["udevadm", "control", "--exit", "-t", str(int(timeout))], check=False,
                       capture_output=True)
        deadline = time.monotonic() + timeout
        while _pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._created_dir and not _pids():
            shutil.rmtree(RUN_DIR, ignore_errors=True)
