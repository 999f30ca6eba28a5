"""A tiny HTTP/1.1 server on trio streams, parsing with h11 (no hand-written HTTP).

Just enough for the debug socket and the metrics endpoint: GET/HEAD, keep-alive, 400 on a
malformed request, 405 on other methods, 500 when a handler raises. Nothing runs while
idle — no timers: a read timeout exists only while a connection is open.
"""

from __future__ import annotations

import errno
import logging
import os
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

#: A connection idle (or trickling a request) this long is closed.
READ_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 16 * 1024
_RECEIVE = 64 * 1024


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
async def serve_unix(path: str, handler: Handler, *, mode: int = 0o600,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
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
    log.info("http serving", extra=_kv(socket=path))
    try:
        listener = trio.SocketListener(sock)
        await _serve(listener, handler, task_status, path)
    finally:
        _unlink_if_ours(path, ino)


async def serve_tcp(host: str, port: int, handler: Handler,
                    *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on TCP; ``task_status.started`` gets the bound ``(host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    sockname = listeners[0].socket.getsockname()
    bound = (sockname[0], sockname[1])
    log.info("http serving", extra=_kv(address=f"{format_address(*bound)}"))
    await _serve(listeners, handler, task_status, bound)


async def _serve(listeners, handler: Handler, task_status, started_value) -> None:
    if not isinstance(listeners, list):
        listeners = [listeners]
    async with trio.open_nursery() as nursery:
        async def serve_one(stream: trio.abc.Stream) -> None:
            await serve_connection(stream, handler)

        await nursery.start(trio.serve_listeners, serve_one, listeners)
        task_status.started(started_value)


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
async def serve_connection(stream: trio.abc.Stream, handler: Handler,
                           *, timeout: Optional[float] = None) -> None:
    """Answer requests on one connection until the client closes, errs or idles out
    (``timeout`` seconds without a complete request; default :data:`READ_TIMEOUT`)."""
    timeout = READ_TIMEOUT if timeout is None else timeout
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        async with stream:
            while True:
                try:
                    with trio.move_on_after(timeout) as scope:
                        request = await _read_request(conn, stream)
                    if scope.cancelled_caught:
                        return
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _send(conn, stream, "GET", text(exc.error_status_hint, f"bad request: {exc}"))
                    return
                if request is None:
                    return
                method = request.method.decode("ascii", "replace")
                response = await _respond(handler, method, request.target)
                await _send(conn, stream, method, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return  # the client went away mid-answer; nothing to tell anyone


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> Optional[h11.Request]:
    """The next request, its body drained (we take none); None when the client closed."""
    request: Optional[h11.Request] = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE)
            conn.receive_data(data)  # b"" marks EOF
            continue
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

