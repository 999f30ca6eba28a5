"""Real kernel uevents for tests: tty2N ``uevent`` writes and zram block devices."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

ZRAM_CONTROL = "/sys/class/zram-control"


def needs_netlink() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel uevents over netlink need root to trigger")


def tty_uevent(n: int, action: str) -> None:
    """A real kernel uevent: ``action`` on /sys/class/tty/tty<n> (20 ≤ n ≤ 29 only)."""
    assert 20 <= n <= 29, "only tty20..tty29 are ours to poke"
    with open(f"/sys/class/tty/tty{n}/uevent", "w") as f:
        f.write(action)


@contextlib.contextmanager
def zram_device() -> Iterator[str]:
    """Hot-add a zram block device, yield its name (``zramN``), always hot-remove it."""
    if not os.path.exists(ZRAM_CONTROL):
        subprocess.run(["modprobe", "zram", "num_devices=0"], check=False, capture_output=True)
    if not os.path.exists(ZRAM_CONTROL):
        pytest.skip("zram hot_add is not available (kernel without zram)")
    with open(f"{ZRAM_CONTROL}/hot_add") as f:
        num = f.read().strip()
    name = f"zram{num}"
    try:
        yield name
    finally:
        zram_remove(name)


def zram_remove(name: str) -> None:
    """Hot-remove ``name``; udevd's probes may hold it open for a moment (EBUSY): retry."""
    deadline = time.monotonic() + 10
    while os.path.exists(f"/sys/block/{name}"):
        try:
            with open(f"{ZRAM_CONTROL}/hot_remove", "w") as f:
                f.write(name.removeprefix("zram"))
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            subprocess.run(["udevadm", "settle", "-t", "2"], check=False)
            time.sleep(0.02)
