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
import functools
import logging
import os
import select
import time
from collections.abc import AsyncIterator, Callable
from typing import Optional

import pyudev
import trio

from ...config import NETLINK_BUFFER, UDEV_DB_RECHECK
from ...core.device import Device, Report
from ...lib.logs import kv
from . import db
from .ancestry import Ancestry
from .choice import resolve_source
from .dbwatch import DbWatch
from .items import DeviceEvent, Drained, Resync, SourceItem, Uevent
from .netlink import UeventSocket
from .records import ParentCache, device_from_uevent, is_device, list_devices

log = logging.getLogger(__name__)

#: Actions after which the device is gone: its record needs no udev database.
_ABSENT = frozenset({"remove", "unbind"})
#: After ENOBUFS, stop discarding queued messages after this many (a storm may not pause).
_DISCARD_LIMIT = 100_000


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
        receive_buffer: int = NETLINK_BUFFER,
        context: Optional[pyudev.Context] = None,
        db_dir: str = db.DEFAULT_DB_DIR,
        db_recheck: float = UDEV_DB_RECHECK,
    ) -> None:
        # "auto" probes udevd (it may retry for a while): the daemon resolves it in a
        # worker thread first and passes "udev" or "kernel".
        self.source_kind = resolve_source(source)
        self.subsystems = frozenset(subsystems) if subsystems else None
        self.receive_buffer = receive_buffer
        self.context = context or pyudev.Context()
        # pyudev looks the libudev symbol up (a failing dlsym) on every ``sys_path`` read.
        self.sys_root: str = self.context.sys_path
        # libudev objects are not thread-safe: an enumeration in a worker thread gets a
        # context of its own, unless the caller supplied one (tests with a fake sysfs).
        self._enum_context: Callable[[], pyudev.Context] = (lambda: context) if context else pyudev.Context
        self.db_dir = db_dir
        self.db_recheck = db_recheck
        self._db_present = False
        self._db_checked = -float("inf")
        self.overflows = 0
        self._parent_cache = ParentCache()
        self._ancestry = Ancestry()
        self._socket: Optional[UeventSocket] = None
        self._dbwatch: Optional[DbWatch] = None
        self._poll: Optional[select.epoll] = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create and bind the netlink socket (before any enumeration)."""
        if self._socket is not None:
            return
        sock = UeventSocket(self.source_kind, self.receive_buffer)
        sock.on_lost = self._ancestry.lost  # a message not read whole may have named an ancestor
        if sock.buffer_error is not None:
            log.warning("cannot enlarge the netlink receive buffer past net.core.rmem_max", extra=kv(
                error=sock.buffer_error.strerror, asked=self.receive_buffer, got=sock.receive_buffer))
        self._socket = sock
        if self.source_kind == "kernel" and DbWatch.available(self.db_dir):
            watch = DbWatch(self.db_dir)
            try:
                watch.open()
            except OSError as exc:
                log.warning("cannot watch udev's database: by-id links of hot-plugged devices "
                            "appear only after a restart", extra=kv(dir=self.db_dir, error=exc.strerror))
            else:
                # One descriptor for trio to wait on: readable when either is.
                self._poll = select.epoll()
                self._poll.register(sock.fileno(), select.EPOLLIN)
                self._poll.register(watch.fileno(), select.EPOLLIN)
                self._dbwatch = watch

    def close(self) -> None:
        watch, self._dbwatch = self._dbwatch, None
        poll, self._poll = self._poll, None
        for closing in (poll, watch):
            if closing is not None:
                try:
                    trio.lowlevel.notify_closing(closing.fileno())
                except RuntimeError:
                    pass
                closing.close()
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                trio.lowlevel.notify_closing(sock.fileno())
            except RuntimeError:  # not inside trio: nobody can be waiting
                pass
            sock.close()

    def fileno(self) -> int:
        return self._require().fileno()

    @property
    def receive_buffer_bytes(self) -> int:
        """The socket's actual receive buffer (the kernel doubles what was asked)."""
        return self._require().receive_buffer

    def _require(self) -> UeventSocket:
        if self._socket is None:
            raise RuntimeError("UdevSource.open() was not called (or the source is closed)")
        return self._socket

    # -- coldplug --------------------------------------------------------------------------

    def enumerate(self) -> tuple[Device, ...]:
        """Every present device of the wanted subsystems, with udev's database view.

        Blocking (about 0.4 s per 1,000 devices) and thread-safe: trio code calls it
        through ``trio.to_thread.run_sync``."""
        return list_devices(self.subsystems, context=self._enum_context())

    # -- events ----------------------------------------------------------------------------

    def _record(self, props: dict[str, str], action: str) -> tuple[Device, Optional[tuple[int, int]]]:
        """A present device's record from a kernel uevent with udevd's view (symlinks,
        ``ID_*`` properties, tags) read from its database file at once, as far as udevd has
        written it (no watch on the database: see :meth:`_uevent`); and the file's stamp."""
        self._parent_cache.forget(self.sys_root + props["DEVPATH"])
        record = self._build(props, action)
        entry = db.read_db(record, self.db_dir)
        return db.enrich(record, entry), entry.stamp if entry is not None else None

    def _uevent(self, action: str, props: dict[str, str], seq: Optional[int], received: int,
                origin: str = "uevent", read: Optional[int] = None
                ) -> tuple[Uevent, Optional[str], Optional[tuple[int, int]]]:
        """The event's :class:`Uevent`, its database file name and the stamp of the content
        merged in. The kernel source with a watch on udev's database merges the device's
        entry into the properties the recall compares (read only if udevd wrote it since:
        ``DbWatch.entry``), and into the record when one is built."""
        syspath = self.sys_root + props["DEVPATH"]
        watch = self._dbwatch
        if watch is None:
            return Uevent(action, syspath, props, seq, received, self._build, origin, read), None, None
        name = db.db_name(props.get("SUBSYSTEM"), props["DEVPATH"], props)
        entry = watch.entry(name) if name is not None and action not in _ABSENT else None
        if entry is None:
            return Uevent(action, syspath, props, seq, received, self._build, origin, read), name, None
        return Uevent(action, syspath, db.merged(props, (), entry)[0], seq, received,
                      functools.partial(self._build_enriched, entry, props), origin, read), name, entry.stamp

    def _build(self, props: dict[str, str], action: str) -> Device:
        """A :class:`Uevent`'s record, when first asked for (on the event path's thread)."""
        return device_from_uevent(props, context=self.context, sys_root=self.sys_root,
                                  parent_cache=self._parent_cache, gone=action in _ABSENT)

    def _build_enriched(self, entry: db.DbEntry, said: dict[str, str], _merged: dict[str, str],
                        action: str) -> Device:
        """The record of a kernel uevent (``said``) with udev's database ``entry`` merged in,
        as :meth:`_record` builds it."""
        return db.enrich(self._build(dict(said), action), entry)

    def present(self, device: Device) -> bool:
        """Whether the device is in sysfs now."""
        return is_device(device.syspath)

    def chain_stamp(self, device: Report) -> int:
        """Equal for two of the device's events when no message read in between named one
        of its ancestors: its parent chain is the same (see ``ancestry``)."""
        return self._ancestry.stamp(device.devpath)

    def _db_readable(self) -> bool:
        """Whether udev's database directory exists: once it has, every event reads it;
        before, a failing ``open`` per event (about 0.1 ms on a CPU that just woke) is
        replaced by a look at the directory every ``db_recheck`` seconds."""
        if self._db_present:
            return True
        now = time.monotonic()
        if now - self._db_checked >= self.db_recheck:
            self._db_checked = now
            self._db_present = os.path.isdir(self.db_dir)
        return self._db_present

    async def events(self, *, coldplug: bool = False) -> AsyncIterator[SourceItem]:
        """Yield events as they arrive; with ``coldplug`` a ``Resync("coldplug")`` comes first.

        Waits on the socket with ``trio.lowlevel.wait_readable`` and drains every queued
        message per wake-up. Messages of other subsystems are dropped before any record is
        built (udevd's messages carry a filter hash for a kernel BPF filter; devplug's
        subsystem sets are small, so comparing the property costs less than the filter).
        """
        self.open()
        if coldplug:
            yield Resync(await trio.to_thread.run_sync(self.enumerate), "coldplug")
        sock = self._require()
        fd = self._poll.fileno() if self._poll is not None else sock.fileno()
        wanted = self.subsystems
        kernel = self.source_kind == "kernel"
        watch = self._dbwatch
        ancestry = self._ancestry
        drained = Drained()
        while True:
            await trio.lowlevel.wait_readable(fd)
            yielded = False
            while True:
                asked = time.perf_counter_ns()
                try:
                    props = sock.receive()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    ancestry.lost()
                    dropped, more = sock.drain(_DISCARD_LIMIT)
                    self.overflows += more
                    log.warning("netlink receive buffer overflowed: re-enumerating",
                                extra=kv(overflows=self.overflows, discarded=dropped))
                    yield Resync(await trio.to_thread.run_sync(self.enumerate), "overflow")
                    continue
                if props is None:
                    # udevd's database writes after the kernel's events read so far: a device
                    # removed meanwhile is no longer remembered, and one whose directory is
                    # going away is not repeated (its remove is on the way).
                    if watch is not None:
                        for action, again in watch.changed():
                            if is_device(self.sys_root + again["DEVPATH"]):
                                event, name, stamp = self._uevent(action, again, None, time.perf_counter_ns(), "udev-db")
                                watch.seen(name, action, again, True, stamp)
                                yielded = True
                                yield event
                    if yielded:
                        yield drained
                    break
                received = time.perf_counter_ns()
                # Every message is noted, whatever its subsystem (it may name an ancestor of a
                # device of ours); a wanted one only once it was handled: a path is not its
                # own ancestor, so its own pass does not need it, and kubelet need not wait.
                devpath, moved = props["DEVPATH"], props.get("DEVPATH_OLD")
                if wanted is None or props.get("SUBSYSTEM") in wanted:
                    action = props.get("ACTION") or "change"
                    seqnum = props.get("SEQNUM")
                    seq = int(seqnum) if seqnum and seqnum.isdigit() else None
                    if kernel and watch is None and action not in _ABSENT and self._db_readable():
                        # udev's database with no watch on it: read into the record now.
                        try:
                            record, stamp = self._record(props, action)
                        except OSError as exc:
                            log.debug("dropping event for a device we cannot read", extra=kv(error=str(exc)))
                        else:
                            yielded = True
                            yield DeviceEvent(action, record, seq, received, read_ns=asked)
                    else:
                        # The record waits until asked for (see ``Uevent``).
                        event, name, stamp = self._uevent(action, props, seq, received, read=asked)
                        yielded = True
                        yield event
                        # Handled (kubelet was told): a path is not its own ancestor, so its
                        # own pass had no use for a cached record of it.
                        self._parent_cache.forget(event.syspath)
                        if watch is not None:
                            watch.seen(name, action, props, action not in _ABSENT, stamp)
                ancestry.note(devpath)
                if moved:
                    ancestry.note(moved)
