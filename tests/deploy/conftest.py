"""Helpers for the deployment tests: run a probe in a namespace or without privileges while
a real uevent is triggered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBES = Path(__file__).with_name("probes.py")
#: A virtual console nobody uses; writing to its uevent file makes the kernel send an event.
#: (Never /dev/ttyS0: it is the console.)
TTY = "tty29"
TRIGGER = f"/sys/class/tty/{TTY}/uevent"


@pytest.fixture
def kernel_events():
    """Skip unless we can make real uevents (root, the tty's uevent file, util-linux)."""
    if os.geteuid() != 0:
        pytest.skip("triggering uevents and entering namespaces needs root")
    if not os.path.exists(TRIGGER):
        pytest.skip(f"{TRIGGER} is missing (no virtual consoles in this kernel)")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (Debian package util-linux)")


def run_probe(wrapper: list[str], args: list[str], *, trigger: bool = True) -> list[str]:
    """Start ``probes.py ARGS`` under ``wrapper``, wait until it is listening, trigger a
    ``change`` uevent on the tty, and return the probe's remaining output lines."""
    proc = subprocess.Popen(
        [*wrapper, sys.executable, str(PROBES), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline().strip()
        if first != "READY":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"probe did not start under {wrapper}: {first!r} {err}")
        if trigger:
            with open(TRIGGER, "w") as f:
                f.write("change")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out.splitlines()
