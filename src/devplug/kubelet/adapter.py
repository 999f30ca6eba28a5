"""Serve each resource to kubelet: one gRPC server per resource, registration, restarts.

The trio side owns lifetimes (one task per resource plus one inotify watcher); gRPC runs
on the asyncio loop that ``trio_asyncio.open_loop()`` provides, reached through
``aio_as_trio``. Everything is event-driven: kubelet restarts are seen through inotify on
the plugin directory (kubelet deletes every socket there and recreates ``kubelet.sock``),
and the only timer is the registration backoff while kubelet is absent or refusing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Optional

import attrs
import grpc
import trio
import trio_asyncio

from ..lib.inotify import Event as InotifyEvent
from ..lib.inotify import Inotify, Mask
from ..core.inventory import Change, Entry, Inventory
from ..lib.logs import kv
from . import api_pb2
from .grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS
from .servicer import (
    DevicePluginServicer,
    KubeletObserver,
    Pulse,
    StreamCounter,
    register,
    start_server,
)

log = logging.getLogger("devplug.kubelet")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"


#: Registration retry: first wait, cap, and how long one Register call may take.
BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 10.0
REGISTER_TIMEOUT = 5.0
#: How long in-flight unary calls may finish when a server stops (streams end at once).
STOP_GRACE = 0.5

_DIR_EVENTS = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)


def socket_name(resource: str) -> str:
    """``devplug.io/ftdi-serial`` → ``devplug.io_ftdi-serial.sock``."""
    return resource.replace("/", "_") + ".sock"


@attrs.frozen(slots=True)
class ResourceStatus:
    """What the debug endpoint and logs show about one resource's plugin."""

    resource: str
    socket: str
    serving: bool
    registered: bool
    streams: int
    last_error: Optional[str]
    registrations: int
    restarts: int
    registered_at: Optional[float]


class _Signal:
    """A trio wake-up with a generation counter, so a wake during an await is never lost."""

    def __init__(self) -> None:
        self.gen = 0
        self._event = trio.Event()

    def fire(self) -> None:
        self.gen += 1
        self._event.set()
        self._event = trio.Event()

    async def wait(self, seen: int) -> None:
        if self.gen == seen:
            await self._event.wait()


@attrs.define(eq=False)
class _Plugin:
    """Mutable state of one resource's server (trio side)."""

    resource: str
    path: str
    pulse: Pulse
    streams: StreamCounter = attrs.field(factory=StreamCounter)
    wake: _Signal = attrs.field(factory=_Signal)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    first_start: trio.Event = attrs.field(factory=trio.Event)  # set after the first attempt
    server: Optional[grpc.aio.Server] = None
    servicer: Optional[DevicePluginServicer] = None
    inode: Optional[tuple[int, int, int]] = None  # identity of the socket we bound
    need_restart: bool = False
    need_register: bool = True
    restarting: bool = False
    registered: bool = False
    registered_at: Optional[float] = None
    registered_with: Optional[tuple[int, int, int]] = None  # identity of that kubelet.sock
    registering_with: Optional[tuple[int, int, int]] = None  # ... of an attempt in flight
    registrations: int = 0
    restarts: int = 0
    last_error: Optional[str] = None

    def socket_is_ours(self) -> bool:
        return self.inode is not None and _identity(self.path) == self.inode

    def want(self, *, restart: bool = False, register: bool = False) -> None:
        self.need_restart |= restart
        self.need_register |= register or restart
        self.wake.fire()


class KubeletAdapter:
    """The device plugins of every resource, kept registered with kubelet.

    ``run`` must be called inside ``trio_asyncio.open_loop()``. ``set_resources`` and
    ``notify`` are synchronous and meant to be called from trio code on the event path.
    """

    def __init__(
        self,
        *,
        plugin_dir: str,
        inventory: Inventory,
        pre_start_check: bool = False,
        register: bool = True,
        cdi: Callable[[Entry], list[str]] | None = None,
        telemetry: Optional[KubeletObserver] = None,
    ) -> None:
        self.plugin_dir = os.path.abspath(plugin_dir)
        self._telemetry = telemetry
        self.kubelet_socket = os.path.join(self.plugin_dir, KUBELET_SOCKET)
        self._inventory = inventory
        self._pre_start_check = pre_start_check
        self._register = register
        self._cdi = cdi
        self._plugins: dict[str, _Plugin] = {}
        self._wanted: set[str] = set()
        self._nursery: Optional[trio.Nursery] = None

    # ---- public API (trio side, synchronous) ----------------------------------------------
    def set_resources(self, resources: Iterable[str]) -> None:
        """Serve exactly these resources: start new ones, stop the ones not listed."""
        self._wanted = set(resources)
        if self._nursery is not None:
            self._reconcile()

    def notify(self, change: Change) -> None:
        """Wake the ListAndWatch streams of the changed resources (never blocks)."""
        for name in change.resources:
            plugin = self._plugins.get(name)
            if plugin is not None:
                plugin.pulse.fire()

    def status(self) -> dict[str, ResourceStatus]:
        return {
            name: ResourceStatus(
                resource=name,
                socket=p.path,
                serving=p.server is not None and not p.restarting,
                registered=p.registered,
                streams=p.streams.open,
                last_error=p.last_error,
                registrations=p.registrations,
                restarts=p.restarts,
                registered_at=p.registered_at,
            )
            for name, p in sorted(self._plugins.items())
        }

    # ---- lifetime ---------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop every server, end every stream, remove sockets.

        ``task_status.started()`` is reported once every resource known at start serves
        on its socket (registration may still be pending: kubelet can be absent).
        """
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._plugins.clear()  # a second run starts afresh; status() keeps the last run's
        with Inotify() as inotify:
            # Watch first, so a kubelet.sock appearing while we start up is not missed.
            inotify.add_watch(self.plugin_dir, _DIR_EVENTS)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch, inotify)
                    for plugin in self._reconcile():
                        await plugin.first_start.wait()
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._nursery = None

    def _reconcile(self) -> list[_Plugin]:
        assert self._nursery is not None
        for name in sorted(set(self._plugins) - self._wanted):
            plugin = self._plugins.pop(name)
            log.info("resource removed", extra=kv(resource=name))
            plugin.scope.cancel()
        started = []
        for name in sorted(self._wanted - set(self._plugins)):
            plugin = _Plugin(
                resource=name,
                path=os.path.join(self.plugin_dir, socket_name(name)),
                pulse=Pulse(),
                need_restart=True,
            )
            self._plugins[name] = plugin
            self._nursery.start_soon(self._serve, plugin)
            started.append(plugin)
        return started

    async def _serve(self, p: _Plugin) -> None:
        """One resource: (re)start its server and (re)register it whenever asked to."""
        backoff = BACKOFF_INITIAL
        try:
            with p.scope:
                while True:
                    seen = p.wake.gen
                    if p.need_restart:
                        p.need_restart = False
                        ok = await self._restart(p)
                    elif p.need_register and self._register:
                        p.need_register = False
                        ok = await self._try_register(p)
                        p.need_register |= not ok
                    else:
                        await p.wake.wait(seen)
                        continue
                    if ok:
                        backoff = BACKOFF_INITIAL
                    else:
                        # Retry later, or at once when the plugin directory changes.
                        with trio.move_on_after(backoff):
                            await p.wake.wait(seen)
                        backoff = min(backoff * 2, BACKOFF_CAP)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(p)

    async def _restart(self, p: _Plugin) -> bool:
        """Serve on a fresh socket; False when that failed (it is retried with backoff)."""
        p.restarting = True
        p.registered = False
        try:
            if p.server is not None:
                p.restarts += 1
                log.info("restarting server", extra=kv(resource=p.resource, socket=p.path))
                # Stop first: grpc unlinks the socket path when a server stops, which would
                # delete a new server's socket if it were already bound there.
                await self._stop(p)
            servicer = DevicePluginServicer(
                p.resource,
                self._inventory,
                p.pulse,
                p.streams,
                pre_start_check=self._pre_start_check,
                cdi=self._cdi,
                telemetry=self._telemetry,
            )
            try:
                os.makedirs(self.plugin_dir, exist_ok=True)  # it may have been removed
                _unlink_stale(p.path)
                p.server = await trio_asyncio.aio_as_trio(start_server)(
                    servicer, p.path, SERVER_OPTIONS
                )
            except Exception as e:  # bind failures: report, retry with backoff
                p.last_error = f"serve {p.path}: {e}"
                log.error("cannot serve", extra=kv(resource=p.resource, error=p.last_error))
                p.need_restart = True
                return False
            p.servicer = servicer
            p.inode = _identity(p.path)
            p.need_register = True
            log.info("serving", extra=kv(resource=p.resource, socket=p.path))
        finally:
            p.restarting = False
            p.first_start.set()
        # kubelet may have deleted the fresh socket while we were starting it.
        if not p.socket_is_ours():
            p.need_restart = True
        return True

    async def _stop(self, p: _Plugin) -> None:
        server, servicer = p.server, p.servicer
        p.server = p.servicer = None
        p.registered = False
        if servicer is not None:
            servicer.close()
        if server is not None:
            try:
                await trio_asyncio.aio_as_trio(server.stop)(STOP_GRACE)
            except Exception as e:  # the loop may be closing; the socket is removed below
                log.warning("server stop failed", extra=kv(resource=p.resource, error=repr(e)))
        if p.socket_is_ours():
            _unlink_stale(p.path)
        p.inode = None

    async def _try_register(self, p: _Plugin) -> bool:
        kubelet = _identity(self.kubelet_socket)
        if kubelet is None:
            p.last_error = f"kubelet not listening ({self.kubelet_socket} missing)"
            log.debug("waiting for kubelet", extra=kv(resource=p.resource))
            return False
        assert p.servicer is not None
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=os.path.basename(p.path),
            resource_name=p.resource,
            options=p.servicer.options,
        )
        t0 = time.perf_counter()
        p.registering_with = kubelet
        try:
            await trio_asyncio.aio_as_trio(register)(
                self.kubelet_socket, request, CHANNEL_OPTIONS, REGISTER_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            p.last_error = f"register: {e.code().name}: {e.details()}"
            log.warning("registration failed", extra=kv(resource=p.resource, error=p.last_error))
            if self._telemetry is not None:
                self._telemetry.on_registration(p.resource, False)
            return False
        finally:
            p.registering_with = None
        if self._telemetry is not None:
            self._telemetry.on_registration(p.resource, True)
        p.registered = True
        p.registered_with = kubelet
        p.registered_at = time.time()
        p.registrations += 1
        p.last_error = None
        log.info("registered", extra=kv(resource=p.resource, endpoint=request.endpoint,
                                        ms=round((time.perf_counter() - t0) * 1e3, 2)))
        return True

    # ---- plugin directory watch ---------------------------------------------------------------
    async def _watch(self, inotify: Inotify) -> None:
        while True:
            for event in await inotify.wait():
                self._on_dir_event(inotify, event)

    def _on_dir_event(self, inotify: Inotify, ev: InotifyEvent) -> None:
        if ev.mask & Mask.Q_OVERFLOW:
            log.warning("plugin dir events overflowed; checking every socket")
            for p in self._plugins.values():
                p.want(restart=not p.socket_is_ours() and not p.restarting, register=True)
            return
        if ev.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED) and not ev.name:
            if ev.mask & Mask.IGNORED:
                log.warning("plugin dir went away; recreating it", extra=kv(dir=self.plugin_dir))
                os.makedirs(self.plugin_dir, exist_ok=True)
                inotify.add_watch(self.plugin_dir, _DIR_EVENTS)
                for p in self._plugins.values():
                    p.want(restart=True)
            return
        if ev.name == KUBELET_SOCKET:
            if ev.mask & (Mask.CREATE | Mask.MOVED_TO):
                log.info("kubelet socket appeared; registering every resource")
                if self._telemetry is not None:
                    self._telemetry.on_kubelet_restart()
                kubelet = _identity(self.kubelet_socket)
                for p in self._plugins.values():
                    # A backoff retry may have reached (or be reaching) this very kubelet.
                    if kubelet is not None and kubelet in (
                        p.registered_with if p.registered else None,
                        p.registering_with,
                    ):
                        continue
                    p.registered = False
                    p.want(register=True)
            elif ev.mask & (Mask.DELETE | Mask.MOVED_FROM):
                log.info("kubelet socket removed")
                for p in self._plugins.values():
                    p.registered = False
            return
        if ev.mask & (Mask.DELETE | Mask.MOVED_FROM):
            for p in self._plugins.values():
                if ev.name == os.path.basename(p.path) and not p.restarting and not p.socket_is_ours():
                    log.info("socket removed (kubelet restart?)", extra=kv(resource=p.resource))
                    p.want(restart=True)


def _identity(path: str) -> Optional[tuple[int, int, int]]:
    """Tells two files at one path apart (inode numbers alone get reused at once)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def _unlink_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
