"""One resource's device plugin: serve the socket → register → wait → tear down → loop.

Each resource runs :func:`run` in its own task. One pass of the loop serves a fresh
socket, keeps it registered with whichever kubelet is current, and waits until the
socket is no longer ours (kubelet restarts delete every socket in the plugin directory,
and the directory itself may be removed); then it stops the server (GOAWAY, OK trailers on
every stream) and starts over. Cancellation is the only way to stop it, and tearing down
always runs.

Expected failures are handled by name: a socket path that cannot be bound (``OSError``:
taken by a directory, the directory gone or read-only) is retried with backoff; a kubelet
that is absent is waited for (inotify on the plugin directory fires :attr:`Shared.kubelet`);
a kubelet that refuses Register, does not answer in time or is gone mid-call
(``transport.RpcError``, of which ``transport.Unavailable``) is retried with backoff.
Anything else is a bug and propagates.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Optional

import attrs
import trio

from ..core.inventory import Entry
from ..core.view import DeviceView
from ..lib.logs import kv
from . import api_pb2, transport
from .registration import API_VERSION, Broadcast, FileIdentity, file_identity, register
from .servicer import DevicePluginService, KubeletObserver

log = logging.getLogger("devplug.kubelet")

#: Retry waits (seconds): first, cap. Only refusals and bind failures wait on a timer.
BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 10.0
#: How long calls in flight may finish when a server stops (streams end at once).
STOP_GRACE = 0.5
#: Per-socket limits of the gRPC server (message size, calls, connections, buffered bytes).
LIMITS = transport.Limits()


def socket_name(resource: str) -> str:
    """``devplug.io/ftdi-serial`` → ``devplug.io_ftdi-serial.sock``."""
    return resource.replace("/", "_") + ".sock"


@attrs.frozen
class Shared:
    """What every resource's plugin shares: where kubelet is, and how to answer it."""

    plugin_dir: str
    kubelet_socket: str
    inventory: DeviceView
    #: Fired by the plugin-directory watcher whenever ``kubelet.sock`` appears or goes.
    kubelet: Broadcast
    #: Recreates (and re-watches) the plugin directory when it is gone or was replaced.
    ensure_dir: Callable[[], bool]
    register: bool = True
    pre_start_check: bool = False
    cdi: Optional[Callable[[Entry], list[str]]] = None
    telemetry: Optional[KubeletObserver] = None


@attrs.define(eq=False)
class ResourcePlugin:
    """One resource's plugin. The lifecycle task writes the observable fields; the
    directory watcher reads :meth:`socket_is_ours` and fires :attr:`restart`."""

    resource: str
    path: str
    #: The DevicePlugin service: its ListAndWatch streams, pushed to by ``notify``.
    service: DevicePluginService
    #: Fired when the socket vanished or the plugin directory was recreated.
    restart: Broadcast = attrs.field(factory=Broadcast)
    #: Set once the first attempt to serve has finished (served or failed).
    first_attempt: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    inode: Optional[FileIdentity] = None  # the socket file we bound, while serving
    server: Optional[transport.Server] = None  # while serving
    registered: bool = False
    registered_at: Optional[float] = None
    registrations: int = 0
    restarts: int = 0
    last_error: Optional[str] = None

    @property
    def serving(self) -> bool:
        return self.inode is not None

    def socket_is_ours(self) -> bool:
        return self.inode is not None and file_identity(self.path) == self.inode


def new_plugin(resource: str, shared: Shared) -> ResourcePlugin:
    service = DevicePluginService(resource, shared.inventory, pre_start_check=shared.pre_start_check,
                                  cdi=shared.cdi, telemetry=shared.telemetry)
    return ResourcePlugin(resource, os.path.join(shared.plugin_dir, socket_name(resource)), service)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def run(p: ResourcePlugin, shared: Shared) -> None:
    """Serve ``p`` until cancelled (see the module docstring)."""
    backoff = BACKOFF_INITIAL
    with p.scope:
        while True:
            shared.ensure_dir()
            seen = p.restart.gen
            listener = _bind(p)
            p.first_attempt.set()
            if listener is None:
                with trio.move_on_after(backoff):
                    await p.restart.wait(seen)
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            backoff = BACKOFF_INITIAL
            try:
                async with trio.open_nursery() as nursery:
                    server = p.server = transport.Server(p.service.methods, LIMITS)
                    nursery.start_soon(functools.partial(server.serve, listener, grace=STOP_GRACE))
                    if shared.register:
                        nursery.start_soon(_keep_registered, p, shared)
                    # kubelet may have deleted the fresh socket while it was being bound.
                    if p.socket_is_ours():
                        await p.restart.wait(seen)
                    nursery.cancel_scope.cancel()  # the server stops gracefully in its finally
            finally:
                _forget_socket(p)
            p.restarts += 1
            log.info("socket gone; serving again", extra=kv(resource=p.resource, socket=p.path))


def _bind(p: ResourcePlugin) -> Optional[socket.socket]:
    """A listening socket at ``p.path``, or None after logging why it cannot be bound."""
    try:
        _unlink(p.path)  # stale from a crashed run, or deleted under us meanwhile
        listener = transport.listen(p.path)
    except OSError as exc:
        p.last_error = f"serve {p.path}: {exc}"
        log.error("cannot serve", extra=kv(resource=p.resource, error=p.last_error))
        return None
    p.inode = file_identity(p.path)
    log.info("serving", extra=kv(resource=p.resource, socket=p.path))
    return listener


def _forget_socket(p: ResourcePlugin) -> None:
    """The server has stopped: not serving, not registered, and our socket file removed
    (never a successor's: a kubelet restart may have put another file there)."""
    ours = p.socket_is_ours()
    p.inode = None
    p.server = None
    p.registered = False
    if ours:
        _unlink(p.path)


async def _keep_registered(p: ResourcePlugin, shared: Shared) -> None:
    """Register now and with every new kubelet; a refusal is retried with backoff, an
    absent kubelet is waited for, and a call in flight is cancelled when the kubelet
    socket is replaced (a hung kubelet must not delay its successor)."""
    backoff = BACKOFF_INITIAL
    registered_with: Optional[FileIdentity] = None
    try:
        while True:
            seen = shared.kubelet.gen
            kubelet = file_identity(shared.kubelet_socket)
            if kubelet is None:
                p.registered = False
                p.last_error = f"kubelet not listening ({shared.kubelet_socket} missing)"
                await shared.kubelet.wait(seen)
                continue
            if p.registered and kubelet == registered_with:
                await shared.kubelet.wait(seen)
                continue
            p.registered = False
            outcome = await _register_unless_replaced(p, shared, seen, kubelet)
            if outcome is None:
                continue  # kubelet.sock changed during the call: at once, with the new one
            if outcome:
                registered_with = kubelet
                backoff = BACKOFF_INITIAL
                continue
            with trio.move_on_after(backoff):
                await shared.kubelet.wait(seen)
            backoff = min(backoff * 2, BACKOFF_CAP)
    finally:
        p.registered = False


async def _register_unless_replaced(p: ResourcePlugin, shared: Shared, seen: int,
                                    kubelet: FileIdentity) -> Optional[bool]:
    """True/False: registered or refused; None: cancelled because another kubelet's socket
    replaced the one being called (an event about the same socket changes nothing)."""
    outcome: Optional[bool] = None
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            nonlocal outcome
            outcome = await _register_once(p, shared)
            nursery.cancel_scope.cancel()

        nursery.start_soon(call)
        while file_identity(shared.kubelet_socket) == kubelet:
            await shared.kubelet.wait(seen)
            seen = shared.kubelet.gen
        nursery.cancel_scope.cancel()
    return outcome


async def _register_once(p: ResourcePlugin, shared: Shared) -> bool:
    request = api_pb2.RegisterRequest(
        version=API_VERSION,
        endpoint=os.path.basename(p.path),
        resource_name=p.resource,
        options=api_pb2.DevicePluginOptions(
            pre_start_required=shared.pre_start_check, get_preferred_allocation_available=True),
    )
    t0 = time.perf_counter()
    try:
        await register(shared.kubelet_socket, request)
    except transport.RpcError as exc:  # refused, timed out, or no kubelet to answer
        p.last_error = f"register: {exc.code.name}: {exc.message}"
        log.warning("registration failed", extra=kv(resource=p.resource, error=p.last_error))
        if shared.telemetry is not None:
            shared.telemetry.on_registration(p.resource, False)
        return False
    if shared.telemetry is not None:
        shared.telemetry.on_registration(p.resource, True)
    p.registered = True
    p.registered_at = time.time()
    p.registrations += 1
    p.last_error = None
    log.info("registered", extra=kv(resource=p.resource, endpoint=request.endpoint,
                                    ms=round((time.perf_counter() - t0) * 1e3, 2)))
    return True
