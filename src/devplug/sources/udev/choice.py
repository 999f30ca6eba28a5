"""Which netlink source to use: ``auto`` → ``udev`` when a udevd that can deliver events to us
runs, else ``kernel`` (see ``source`` for what each one sees)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import Optional

CONTROL_SOCKET = "/run/udev/control"


def udevd_reachable(control: str = CONTROL_SOCKET) -> bool:
    """Whether a udevd that can deliver events to us is running.

    A stale socket file is not proof, so connect to it. Reaching the socket is not enough
    either (a pod may mount ``/run/udev`` from the host without sharing its network
    namespace): udevd broadcasts in its own network namespace only, so compare ours with
    udevd's. ``SO_PEERCRED`` names the process that called ``listen()``, which for
    ``udevd --daemon`` is the parent that has since exited, so fall back to looking for a
    running udevd by name. When none is visible (another PID namespace) we cannot tell and
    say no: the kernel source works everywhere.
    """
    peer = _control_peer(control)
    if peer is None:
        return False
    try:
        ours = os.readlink("/proc/self/ns/net")
    except OSError:
        return False
    # The listener may have exited and its PID been reused: only trust udevd processes.
    pids = _udevd_pids()
    if peer > 0 and peer not in pids and _comm(peer) in _UDEVD_NAMES:
        pids.insert(0, peer)
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == ours:
                return True
        except OSError:
            continue
    return False


_UDEVD_NAMES = ("systemd-udevd", "udevd", "(udev-worker)")
_BUSY = (errno.EAGAIN, errno.ETIMEDOUT)


def _control_peer(control: str, attempts: int = 4) -> Optional[int]:
    """PID that listens on udevd's control socket (0 if unknown), None when nobody does.

    A udevd busy with a burst of events may leave its (small) accept backlog full for a
    moment: the connect then fails with EAGAIN, which means busy, not absent, so retry.
    """
    for attempt in range(attempts):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(0.5)
            sock.connect(control)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return struct.unpack("3i", creds)[0]
        except (BlockingIOError, TimeoutError):
            pass
        except OSError as exc:
            if exc.errno not in _BUSY:
                return None
        finally:
            sock.close()
        time.sleep(0.05 * (attempt + 1))
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _udevd_pids() -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _comm(int(entry.name)) in _UDEVD_NAMES:
            pids.append(int(entry.name))
    return pids


def resolve_source(source: str) -> str:
    """``auto`` → ``udev`` when :func:`udevd_reachable`, else ``kernel``."""
    if source in ("udev", "kernel"):
        return source
    if source != "auto":
        raise ValueError(f"unknown udev source {source!r} (expected auto, udev or kernel)")
    return "udev" if udevd_reachable() else "kernel"
