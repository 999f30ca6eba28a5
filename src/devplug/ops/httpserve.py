"""A tiny HTTP/1.1 server on trio streams, parsing with h11 (no hand-written HTTP).

Just enough for the debug socket and the metrics endpoint: GET/HEAD, keep-alive, 400 on a
malformed request, 405 on other methods, 500 when a handler raises. No library server
fits: the stdlib's and prometheus_client's run threads, and the ASGI servers bring an
event loop of their own; devplug needs one that lives in its trio nursery and costs
nothing while idle (no timers: a timeout exists only while a connection is open).

Each listener is bounded (:class:`Limits`), because with ``hostNetwork`` anyone who reaches
the node can connect and every connection is a descriptor that kubelet registration and
ListAndWatch need too: at most ``max_connections`` at once (and never more than a quarter
of ``RLIMIT_NOFILE``); at the cap a new connection takes the place of the one idle
longest (an idle keep-alive connection may be closed by either side in HTTP/1.1), or is
answered 503 and closed when none is idle. A connection must start a request within
``idle_timeout``, finish it within ``request_timeout`` of its first byte and take the
answer within ``send_timeout``. Running out of descriptors in ``accept`` (EMFILE…) is
one warning line, a backoff and a count, never a traceback per attempt.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import resource
import socket
import stat
from http import HTTPStatus
from collections.abc import Awaitable, Callable, Mapping
from typing import Optional
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from ..lib.logs import kv as _kv

log = logging.getLogger("devplug.http")

MAX_REQUEST_BYTES = 16 * 1024
_RECEIVE = 64 * 1024
#: accept() errors that mean "out of something" (descriptors, memory): back off, retry.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF = (0.05, 1.0)  # first and longest pause while accept() fails for lack of capacity
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: 30\r\nconnection: close\r\n\r\ndevplug: too many connections\r\n")


@attrs.frozen
class Limits:
    """Bounds of one listener (see the module docstring)."""

    max_connections: int = 64
    idle_timeout: float = 30.0  # a new or kept-alive connection must start a request by then
    request_timeout: float = 10.0  # a started request must be complete this long after its first byte
    send_timeout: float = 10.0  # the client must take the whole answer by then

    def cap(self) -> int:
        """``max_connections``, but never more than a quarter of the descriptor limit."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft // 4))


@attrs.define
class ConnectionStats:
    """What a listener reports to ``/metrics``: open connections, and the ones it dropped
    by reason (``evicted``, ``refused``, ``timeout``, ``accept_error``)."""

    open: int = 0
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.frozen
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


#: ``await handler(method, path, query)``; ``query`` keeps the last value of each key.
Handler = Callable[[str, str, Mapping[str, str]], Awaitable[Response]]


def text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message.rstrip("\n") + "\n").encode())


# ---- serving ------------------------------------------------------------------------------
async def serve_unix(path: str, handler: Handler, *, mode: int = 0o600, limits: Limits = Limits(),
                     stats: Optional[ConnectionStats] = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on a unix socket at ``path`` until cancelled, then unlink it.

    The parent directory is created (0700) if missing; a stale socket left by a crashed run
    is replaced, a live one (something answers) is an error. The socket gets ``mode`` before
    ``listen``, so no client can connect while it is still more open.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    _remove_stale(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        ino = os.stat(path).st_ino
        os.chmod(path, mode)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    server = _Server(path, handler, limits, stats or ConnectionStats())
    log.info("http serving", extra=_kv(socket=path, max_connections=server.cap))
    try:
        await server.run([trio.SocketListener(sock)], task_status, path)
    finally:
        _unlink_if_ours(path, ino)


async def serve_tcp(host: str, port: int, handler: Handler, *, limits: Limits = Limits(),
                    stats: Optional[ConnectionStats] = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on TCP; ``task_status.started`` gets the bound ``(host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    sockname = listeners[0].socket.getsockname()
    bound = (sockname[0], sockname[1])
    server = _Server(format_address(*bound), handler, limits, stats or ConnectionStats())
    log.info("http serving", extra=_kv(address=server.name, max_connections=server.cap))
    await server.run(listeners, task_status, bound)


@attrs.define(eq=False)
class _Conn:
    stream: trio.SocketStream
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    idle_since: Optional[float] = None  # None while a request is being read or answered

    def close_now(self) -> None:
        """Release the descriptor at once (the task unwinds after); only while idle."""
        self.scope.cancel()
        self.stream.socket.close()  # wakes the task's receive with ClosedResourceError


class _Server:
    """The accept loop of one listener (or the v4+v6 pair of one address) and its connections."""

    def __init__(self, name: str, handler: Handler, limits: Limits, stats: ConnectionStats) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.stats = stats
        self.cap = limits.cap()
        self._conns: dict[_Conn, None] = {}  # insertion-ordered set
        self._warned_full = False

    async def run(self, listeners: list[trio.SocketListener], task_status, started_value) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(started_value)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        failures = 0
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                self.stats.dropped["accept_error"] += 1
                if failures == 0:
                    log.warning("http accept failed; retrying with backoff, not logging each failure",
                                extra=_kv(listener=self.name, error=exc.strerror, connections=len(self._conns)))
                failures += 1
                await trio.sleep(min(_BACKOFF[0] * 2 ** min(failures - 1, 10), _BACKOFF[1]))
                continue
            if failures:
                log.info("http accept works again", extra=_kv(listener=self.name, failed_attempts=failures))
                failures = 0
            assert isinstance(stream, trio.SocketStream)
            if not self._make_room():
                self.stats.dropped["refused"] += 1
                _refuse(stream)
                continue
            conn = _Conn(stream, idle_since=trio.current_time())
            self._conns[conn] = None
            self.stats.open = len(self._conns)
            nursery.start_soon(self._serve, conn)

    def _make_room(self) -> bool:
        """True when a new connection may be served (closing the longest idle one if needed)."""
        if len(self._conns) < self.cap:
            if len(self._conns) <= self.cap // 2:
                self._warned_full = False
            return True
        if not self._warned_full:
            self._warned_full = True
            log.warning("http connection cap reached; closing idle connections, refusing when none is idle",
                        extra=_kv(listener=self.name, max_connections=self.cap))
        idle = [c for c in self._conns if c.idle_since is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)  # type: ignore[arg-type, return-value]
        self._forget(victim)
        victim.close_now()
        self.stats.dropped["evicted"] += 1
        return True

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        self.stats.open = len(self._conns)

    async def _serve(self, conn: _Conn) -> None:
        try:
            with conn.scope:
                if await serve_connection(conn.stream, self.handler, limits=self.limits, conn=conn) == "timeout":
                    self.stats.dropped["timeout"] += 1
        finally:
            self._forget(conn)


def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 without waiting (a fresh socket's send buffer takes it) and close."""
    sock = stream.socket
    try:
        os.write(sock.fileno(), _REFUSED)
    except OSError:
        pass
    sock.close()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over from a previous run
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is serving this socket", path)


def _unlink_if_ours(path: str, ino: int) -> None:
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) → ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad address {address!r} (expected HOST:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"bad address {address!r} (write IPv6 hosts as [addr]:port)")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- one connection -----------------------------------------------------------------------
async def serve_connection(stream: trio.abc.Stream, handler: Handler, *, limits: Limits = Limits(),
                           conn: Optional[_Conn] = None) -> Optional[str]:
    """Answer requests on one connection until the client closes, errs or times out
    (``"timeout"`` is returned then). ``conn`` is told when the connection is idle."""
    h11conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        async with stream:
            while True:
                if conn is not None:
                    conn.idle_since = trio.current_time()
                try:
                    with trio.move_on_after(limits.idle_timeout) as scope:
                        request = await _read_request(h11conn, stream, scope, limits, conn)
                    if scope.cancelled_caught:
                        return "timeout"
                except h11.RemoteProtocolError as exc:
                    if h11conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        with trio.move_on_after(limits.send_timeout):
                            await _send(h11conn, stream, "GET", text(exc.error_status_hint, f"bad request: {exc}"))
                    return None
                if request is None:
                    return None
                method = request.method.decode("ascii", "replace")
                response = await _respond(handler, method, request.target)
                with trio.move_on_after(limits.send_timeout) as scope:
                    await _send(h11conn, stream, method, response)
                if scope.cancelled_caught:
                    return "timeout"
                if h11conn.our_state is h11.MUST_CLOSE or h11conn.their_state is h11.MUST_CLOSE:
                    return None
                h11conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return None  # the client went away mid-answer (or we closed it idle); nothing to tell


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream, scope: trio.CancelScope,
                        limits: Limits, state: Optional[_Conn]) -> Optional[h11.Request]:
    """The next request, its body drained (we take none); None when the client closed.

    Waiting for its first byte is bounded by ``scope`` (the idle timeout); from the first
    byte on, the whole request by ``request_timeout``.
    """
    request: Optional[h11.Request] = None
    started = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE)
            if data and not started:
                started = True
                scope.deadline = trio.current_time() + limits.request_timeout
                if state is not None:
                    state.idle_since = None  # busy: not to be evicted
            conn.receive_data(data)  # b"" marks EOF
            continue
        if not started and state is not None:
            state.idle_since = None  # a pipelined request already buffered
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        # h11.Data: a request body we ignore


async def _respond(handler: Handler, method: str, target: bytes) -> Response:
    if method not in ("GET", "HEAD"):
        return attrs.evolve(text(405, f"method {method} not allowed"), headers=(("allow", "GET, HEAD"),))
    try:
        parts = urlsplit(target.decode("ascii"))
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return text(400, "bad request target")
    try:
        return await handler(method, parts.path or "/", query)
    except Exception:
        log.exception("http handler failed", extra=_kv(path=parts.path))
        return text(500, "internal error")


async def _send(conn: h11.Connection, stream: trio.abc.Stream, method: str, response: Response) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    if response.status >= 400 and response.status != 404:
        headers.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status)))
    if method != "HEAD" and response.body:
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)

