"""A gRPC server on a unix socket: accept, serve each connection, stop gracefully.

Connections run in shielded scopes, so cancelling :meth:`Server.serve` does not cut them:
its ``finally`` first sends GOAWAY and OK trailers on every server stream, lets calls still
arriving finish for up to ``grace`` seconds, and only then closes what is left. The
listener is closed first; the socket file is the caller's to remove (it may no longer be
ours by then).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Optional

import h2.errors
import trio

from ...lib.logs import kv
from .calls import Limits, Method
from .connection import Connection, new_h2

log = logging.getLogger("devplug.kubelet.transport")

BACKLOG = 64
DEFAULT_LIMITS = Limits()
#: How long a connection may take to end once it was told to (after the grace).
_ABORT_WAIT = 1.0


def listen(path: str) -> socket.socket:
    """A listening, non-blocking unix socket bound at ``path``; ``OSError`` when it cannot be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Serves ``methods`` (keyed by ``/package.Service/Method`` paths, as bytes)."""

    def __init__(self, methods: Mapping[bytes, Method], limits: Limits = DEFAULT_LIMITS) -> None:
        self.methods = methods
        self.limits = limits
        self.connections: dict[Connection, None] = {}  # oldest first
        self._all_closed = trio.Event()
        self._all_closed.set()

    def stats(self) -> dict[str, int]:
        """Connections, open calls, the bytes connections hold of their own (output the
        kernel has not taken, incomplete requests), and of that the requests."""
        return {"connections": len(self.connections),
                "streams": sum(len(c.streams) for c in self.connections),
                "held_bytes": sum(c.held() for c in self.connections),
                "request_bytes": sum(c.buffered for c in self.connections)}

    async def serve(self, listener: socket.socket, *, grace: float,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled; then stop gracefully (module docstring)."""
        async with trio.open_nursery() as nursery:
            try:
                task_status.started()
                await self._accept(listener, nursery)
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(listener, grace)

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:  # out of descriptors: the backlog holds the client meanwhile
                log.warning("gRPC accept failed", extra=kv(error=exc.strerror or repr(exc)))
                await trio.sleep(0.1)
                continue
            sock.setblocking(False)
            if len(self.connections) >= self.limits.max_connections and not self._make_room():
                _refuse(sock)
                continue
            conn = Connection(sock, self.methods, self.limits, self._closed)
            self.connections[conn] = None
            self._all_closed = trio.Event()
            nursery.start_soon(self._run, conn)

    async def _run(self, conn: Connection) -> None:
        with conn.scope:
            await conn.run()

    def _make_room(self) -> bool:
        """The oldest connection without a call leaves (GOAWAY); False when every one has calls."""
        for conn in self.connections:
            if conn.idle and not conn.draining:
                log.info("gRPC connection limit reached; closing the oldest idle one",
                         extra=kv(limit=self.limits.max_connections))
                self.connections.pop(conn)
                conn.close_idle()
                return True
        log.warning("gRPC connection limit reached; refusing a connection",
                    extra=kv(limit=self.limits.max_connections))
        return False

    def _closed(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        if not self.connections:
            self._all_closed.set()

    async def _stop(self, listener: Optional[socket.socket], grace: float) -> None:
        if listener is not None:
            trio.lowlevel.notify_closing(listener)
            listener.close()
        for conn in list(self.connections):
            conn.shutdown()
        with trio.move_on_after(grace):
            await self._all_closed.wait()
        for conn in list(self.connections):
            conn.abort()
        with trio.move_on_after(_ABORT_WAIT):
            await self._all_closed.wait()
        if self.connections:
            log.error("gRPC connections did not end", extra=kv(left=len(self.connections)))


def _refuse(sock: socket.socket) -> None:
    """The server preface and a GOAWAY, so the client sees why, then close."""
    conn = new_h2(DEFAULT_LIMITS)
    conn.initiate_connection()
    conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too many connections")
    try:
        sock.send(conn.data_to_send())
    except OSError:
        pass
    sock.close()
