"""The kubelet front door: every resource's plugin, the plugin-directory watch, the lock.

Everything runs on trio: one task per resource (``plugin.run``, its gRPC server on the h2
transport, its Register calls on the same transport's client) plus one inotify watcher on
the plugin directory.
Everything is event-driven: kubelet restarts are seen through inotify (kubelet deletes every
socket there and recreates ``kubelet.sock``), and the only timers are retry backoffs while
kubelet refuses or a socket cannot be bound (and the deadlines of calls that carry one).

Two devplugs on one plugin directory would delete each other's sockets forever, so
:meth:`KubeletAdapter.run` first takes an exclusive ``flock`` on the directory itself (a
file inside it could be deleted by kubelet's clean-up); the kernel releases it when the
process exits, crash included.

A second front door (a DRA kubelet plugin) reads the same inventory beside this one and
needs nothing from here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterable
from typing import Optional

import attrs
import trio

from ..core.inventory import Change, Entry
from ..core.view import DeviceView
from ..lib.inotify import Event, Inotify, Mask
from ..lib.logs import kv
from . import plugin
from .plugin import ResourcePlugin, Shared, new_plugin
from .registration import KUBELET_SOCKET, Broadcast, file_identity
from .servicer import KubeletObserver

log = logging.getLogger("devplug.kubelet")

_DIR_EVENTS = (Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF
               | Mask.MOVE_SELF | Mask.ONLYDIR)


class PluginDirBusy(OSError):
    """Another process (another devplug) holds the plugin directory."""


@attrs.frozen(slots=True)
class ResourceStatus:
    """What the debug endpoint and health checks show about one resource's plugin."""

    resource: str
    socket: str
    serving: bool
    registered: bool
    streams: int
    last_error: Optional[str]
    registrations: int
    restarts: int
    registered_at: Optional[float]


def lock_dir(path: str) -> int:
    """An exclusive, non-blocking flock on the directory; returns the descriptor to keep."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise PluginDirBusy(errno.EBUSY, f"{who} (another devplug?) already serves this plugin directory",
                            path) from None
    return fd


def _dir_identity(path: str) -> Optional[tuple[int, int]]:
    """(dev, inode) of a directory. Unlike a file's, a directory's ctime moves with every
    entry; and while we hold it open (the lock) its inode number cannot be reused."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _lock_holder(fd: int) -> Optional[int]:
    """The PID holding a flock on ``fd``'s inode, from /proc/locks (best effort)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == want:
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


class KubeletAdapter:
    """The device plugins of every resource, kept served and registered with kubelet.

    ``set_resources`` and ``notify`` are synchronous and meant to be called from trio code
    on the event path.
    """

    def __init__(
        self,
        *,
        plugin_dir: str,
        inventory: DeviceView,
        pre_start_check: bool = False,
        register: bool = True,
        cdi: Callable[[Entry], list[str]] | None = None,
        telemetry: Optional[KubeletObserver] = None,
    ) -> None:
        plugin_dir = os.path.abspath(plugin_dir)
        self.plugin_dir = plugin_dir
        self.kubelet_socket = os.path.join(plugin_dir, KUBELET_SOCKET)
        self._shared = Shared(plugin_dir=plugin_dir, kubelet_socket=self.kubelet_socket, inventory=inventory,
                              kubelet=Broadcast(), ensure_dir=self._ensure_dir, register=register,
                              pre_start_check=pre_start_check, cdi=cdi, telemetry=telemetry)
        self._telemetry = telemetry
        self._plugins: dict[str, ResourcePlugin] = {}
        self._wanted: set[str] = set()
        self._nursery: Optional[trio.Nursery] = None
        self._inotify: Optional[Inotify] = None
        self._lock_fd: Optional[int] = None
        self._dir: Optional[tuple[int, int]] = None  # (dev, inode) of the directory we watch and lock

    # ---- public API (trio side, synchronous) ---------------------------------------------
    def set_resources(self, resources: Iterable[str]) -> None:
        """Serve exactly these resources: start new ones, stop the ones not listed."""
        self._wanted = set(resources)
        if self._nursery is not None:
            self._reconcile()

    def notify(self, change: Change) -> None:
        """Send the changed resources' lists on their ListAndWatch streams, now where the
        sockets take them, later (the newest list only) where they do not; never blocks."""
        for name in change.resources:
            p = self._plugins.get(name)
            if p is not None:
                # The IDs let the list patch what changed; a change without them (CDI's
                # deferred one) says nothing, and the list finds out itself.
                ids = change.ids
                if len(ids) == 1:  # one device's uevent: no generator to run
                    p.service.notify((ids[0][1],) if ids[0][0] == name else ())
                else:
                    p.service.notify(tuple(i for r, i in ids if r == name) if ids else None)

    def status(self) -> dict[str, ResourceStatus]:
        return {
            name: ResourceStatus(resource=name, socket=p.path, serving=p.serving, registered=p.registered,
                                 streams=p.service.streams, last_error=p.last_error,
                                 registrations=p.registrations, restarts=p.restarts,
                                 registered_at=p.registered_at)
            for name, p in sorted(self._plugins.items())
        }

    # ---- lifetime ------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop every server, end every stream, remove sockets.

        Raises :class:`PluginDirBusy` when another process serves the directory.
        ``task_status.started()`` is reported once every resource known at start serves
        on its socket (registration may still be pending: kubelet can be absent).
        """
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._lock_fd = lock_dir(self.plugin_dir)
        self._dir = _dir_identity(self.plugin_dir)
        self._plugins.clear()  # a second run starts afresh; status() keeps the last run's
        try:
            with Inotify() as inotify:
                self._inotify = inotify
                # Watch first, so a kubelet.sock appearing while we start up is not missed.
                inotify.add_watch(self.plugin_dir, _DIR_EVENTS)
                if file_identity(self.kubelet_socket) is None and self._shared.register:
                    log.info("kubelet socket missing; waiting for kubelet", extra=kv(socket=self.kubelet_socket))
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch, inotify)
                    for p in self._reconcile():
                        await p.first_attempt.wait()
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._inotify = None
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)

    def _reconcile(self) -> list[ResourcePlugin]:
        assert self._nursery is not None
        for name in sorted(set(self._plugins) - self._wanted):
            log.info("resource removed", extra=kv(resource=name))
            self._plugins.pop(name).scope.cancel()
        started = []
        for name in sorted(self._wanted - set(self._plugins)):
            p = self._plugins[name] = new_plugin(name, self._shared)
            self._nursery.start_soon(plugin.run, p, self._shared)
            started.append(p)
        return started

    # ---- plugin directory watch ----------------------------------------------------------
    async def _watch(self, inotify: Inotify) -> None:
        while True:
            for event in await inotify.wait():
                self._on_dir_event(inotify, event)

    def _on_dir_event(self, inotify: Inotify, ev: Event) -> None:
        if ev.mask & Mask.Q_OVERFLOW:
            log.warning("plugin dir events overflowed; checking every socket")
            self._restart_unless_ours()
            self._shared.kubelet.fire()
        elif not ev.name:
            if ev.mask & (Mask.DELETE_SELF | Mask.IGNORED):
                self._ensure_dir()
        elif ev.mask & (Mask.DELETE | Mask.MOVED_FROM) and self._ensure_dir():
            pass  # the directory was replaced: every plugin restarts anyway
        elif ev.name == KUBELET_SOCKET:
            if ev.mask & (Mask.CREATE | Mask.MOVED_TO):
                log.info("kubelet socket appeared; registering every resource")
                if self._telemetry is not None:
                    self._telemetry.on_kubelet_restart()
            elif ev.mask & (Mask.DELETE | Mask.MOVED_FROM):
                log.info("kubelet socket removed; waiting for kubelet")
            self._shared.kubelet.fire()
        elif ev.mask & (Mask.DELETE | Mask.MOVED_FROM):
            self._restart_unless_ours(ev.name)

    def _restart_unless_ours(self, name: Optional[str] = None) -> None:
        """Restart each serving plugin (named ``name``) whose socket file is not ours any more;
        our own unlink during a restart happens while the plugin is not serving."""
        for p in self._plugins.values():
            if (name is None or name == os.path.basename(p.path)) and p.serving and not p.socket_is_ours():
                log.info("socket removed (kubelet restart?)", extra=kv(resource=p.resource))
                p.restart.fire()

    def _ensure_dir(self) -> bool:
        """Recreate, re-watch and re-lock the plugin directory if it was removed or replaced;
        True when it was. Holding the lock keeps the removed directory's inode alive, so
        inotify never reports DELETE_SELF for it: its identity tells instead."""
        if self._inotify is None or _dir_identity(self.plugin_dir) == self._dir:
            return False
        log.warning("plugin dir went away; recreating it", extra=kv(dir=self.plugin_dir))
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._inotify.add_watch(self.plugin_dir, _DIR_EVENTS)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        try:
            self._lock_fd = lock_dir(self.plugin_dir)
        except PluginDirBusy as exc:
            log.error("cannot lock the recreated plugin dir", extra=kv(dir=self.plugin_dir, error=exc.strerror))
        self._dir = _dir_identity(self.plugin_dir)
        for p in self._plugins.values():
            p.restart.fire()
        self._shared.kubelet.fire()
        return True
