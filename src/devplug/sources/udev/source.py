"""Netlink uevents as a trio async iterator: :class:`UdevSource`.

What each source sees
---------------------
``auto`` picks ``udev`` when a udevd answers on ``/run/udev/control`` *and* runs in our
network namespace (its broadcasts stay in its namespace), else ``kernel``; a pod must use
``hostNetwork`` (and see udevd's process, i.e. ``hostPID``, for the check) to get ``udev``.

``udev``
    Events udevd re-broadcasts *after* running its rules: every property (``ID_*``,
    ``ID_PATH``, ``ID_SERIAL``…), ``DEVLINKS`` symlinks and tags are in the event, and the
    device node exists with its final permissions. udevd sends them on netlink in *its*
    network namespace, so a pod without ``hostNetwork`` never receives them.
``kernel``
    The raw kernel uevents, delivered to every network namespace (of the initial user
    namespace), so they reach a pod without ``hostNetwork``. They carry only the kernel's
    properties (``DEVNAME``, ``MAJOR``/``MINOR``, ``PRODUCT``, ``DRIVER``, ``MODALIAS``…).
    When ``/run/udev`` is readable, each event is enriched from udev's database (``S:``
    symlinks, ``E:`` properties, ``G:``/``Q:`` tags). But the kernel event arrives *before*
    udevd has processed it: on ``add`` the database entry is usually not written yet (or is
    the previous one for a ``change``), so rules that depend on udev-computed properties
    (``ENV{ID_SERIAL}``, ``SYMLINK``, ``TAG``) may not match a kernel ``add`` — match on
    sysfs attributes (``ATTRS{idVendor}``…), ``KERNEL``, ``SUBSYSTEM`` and ``DRIVERS`` for rules
    that must work with this source. A ``remove`` still finds the old database entry. Coldplug
    and re-enumeration read the database through libudev, so they see udev's full view.

Ordering and loss
-----------------
:meth:`UdevSource.open` starts the monitor before :meth:`UdevSource.enumerate` is called, so a
device plugged in between shows up in both (consumers fold that idempotently). The socket asks
for a large receive buffer (``SO_RCVBUFFORCE`` through libudev, needs ``CAP_NET_ADMIN`` above
``net.core.rmem_max``). If the kernel still drops messages the next receive fails with
``ENOBUFS``: the source counts it in :attr:`UdevSource.overflows`, discards what is queued (it
is older than what was dropped, replaying it could resurrect a removed device), enumerates
again and yields a :class:`Resync` carrying the present devices; events received afterwards
are newer than that enumeration.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Optional, Union

import attrs
import pyudev
import trio

from ...core.device import Device
from ...lib.logs import kv
from . import db
from .records import ParentCache, device_from_pyudev, list_devices

log = logging.getLogger(__name__)

CONTROL_SOCKET = "/run/udev/control"
#: After ENOBUFS, stop discarding queued messages after this many (a storm may not pause).
_DISCARD_LIMIT = 100_000


@attrs.frozen
class DeviceEvent:
    """One uevent: ``action`` is add/remove/change/bind/unbind/move/online/offline."""

    action: str
    device: Device
    seqnum: Optional[int]
    received_ns: int  # time.perf_counter_ns() right after the message was received


@attrs.frozen
class Resync:
    """The complete set of present devices; consumers reconcile their state to it."""

    devices: tuple[Device, ...]
    reason: str  # "coldplug" or "overflow"


SourceItem = Union[DeviceEvent, Resync]


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


def _receive(monitor: pyudev.Monitor) -> Optional[pyudev.Device]:
    """One queued message, or ``None`` when the (non-blocking) socket has none left.

    Not ``Monitor.poll(timeout=0)``: when the kernel flags ENOBUFS the socket polls as
    POLLERR and pyudev's ``poll`` raises an OSError without errno, hiding the overflow.
    libudev's receive reports it as ``OSError(ENOBUFS)``.
    """
    return monitor._receive_device()


class UdevSource:
    """Device events from netlink, for one trio task to iterate.

    ``subsystems``: only these subsystems (``None`` or empty: all). Call :meth:`open` first,
    then :meth:`enumerate` for coldplug, then iterate :meth:`events`; :meth:`close` at the end.
    """

    def __init__(
        self,
        *,
        source: str = "auto",
        subsystems: Optional[frozenset[str]] = None,
        receive_buffer: int = 128 * 1024 * 1024,
        context: Optional[pyudev.Context] = None,
        db_dir: str = db.DEFAULT_DB_DIR,
    ) -> None:
        self.source_kind = resolve_source(source)
        self.subsystems = frozenset(subsystems) if subsystems else None
        self.receive_buffer = receive_buffer
        self.context = context or pyudev.Context()
        self.db_dir = db_dir
        self.overflows = 0
        self._parent_cache = ParentCache()
        self._monitor: Optional[pyudev.Monitor] = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create, filter and start the netlink monitor (before any enumeration)."""
        if self._monitor is not None:
            return
        monitor = pyudev.Monitor.from_netlink(self.context, source=self.source_kind)
        for subsystem in sorted(self.subsystems or ()):
            monitor.filter_by(subsystem)
        if self.receive_buffer:
            try:
                monitor.set_receive_buffer_size(self.receive_buffer)
            except OSError as exc:
                log.warning("cannot enlarge the netlink receive buffer", extra=kv(
                    error=exc.strerror, asked=self.receive_buffer, got=self._rcvbuf(monitor)))
        monitor.start()
        self._monitor = monitor

    def close(self) -> None:
        """Close the netlink socket (pyudev has no close: dropping the monitor unrefs it)."""
        self._monitor = None

    def fileno(self) -> int:
        return self._require().fileno()

    @property
    def receive_buffer_bytes(self) -> int:
        """The socket's actual receive buffer (the kernel doubles what was asked)."""
        return self._rcvbuf(self._require())

    @staticmethod
    def _rcvbuf(monitor: pyudev.Monitor) -> int:
        with socket.socket(fileno=os.dup(monitor.fileno())) as s:
            return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _require(self) -> pyudev.Monitor:
        if self._monitor is None:
            raise RuntimeError("UdevSource.open() was not called (or the source is closed)")
        return self._monitor

    # -- coldplug --------------------------------------------------------------------------

    def enumerate(self) -> tuple[Device, ...]:
        """Every present device of the wanted subsystems, with udev's database view."""
        return list_devices(self.subsystems, context=self.context)

    # -- events ----------------------------------------------------------------------------

    def _record(self, dev: pyudev.Device) -> Device:
        self._parent_cache.forget(self.context.sys_path + dev.device_path)
        record = device_from_pyudev(dev, sys_root=self.context.sys_path, parent_cache=self._parent_cache)
        if self.source_kind == "kernel":
            record = db.enrich(record, db.read_db(record, self.db_dir))
        return record

    def _discard_queued(self) -> int:
        monitor = self._require()
        dropped = 0
        while dropped < _DISCARD_LIMIT:
            try:
                if _receive(monitor) is None:
                    break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1
            dropped += 1
        return dropped

    async def events(self, *, coldplug: bool = False) -> AsyncIterator[SourceItem]:
        """Yield events as they arrive; with ``coldplug`` a ``Resync("coldplug")`` comes first.

        Waits on the socket with ``trio.lowlevel.wait_readable`` and drains every queued
        message per wake-up.
        """
        self.open()
        if coldplug:
            yield Resync(self.enumerate(), "coldplug")
        monitor = self._require()
        fd = monitor.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            while True:
                try:
                    dev = _receive(monitor)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    dropped = self._discard_queued()
                    log.warning("netlink receive buffer overflowed: re-enumerating",
                                extra=kv(overflows=self.overflows, discarded=dropped))
                    yield Resync(self.enumerate(), "overflow")
                    continue
                if dev is None:
                    break
                received = time.perf_counter_ns()
                action = dev.action or "change"
                try:
                    record = self._record(dev)
                except (OSError, pyudev.DeviceNotFoundError) as exc:
                    log.debug("dropping event for a device we cannot read", extra=kv(error=str(exc)))
                    continue
                seqnum = dev.sequence_number or None
                yield DeviceEvent(action, record, seqnum, received)
