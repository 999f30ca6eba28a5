"""The listeners' bounds on real sockets: connection cap, eviction of idle connections, 503
when none is idle, idle/request/send timeouts, and accept() out of descriptors.

Clients are trio sockets in the same run, so the timeout tests run on pytest-trio's
``autojump_clock`` (virtual time, no sleeps, no timed assertions on the real clock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket

import h11
import trio
from trio.testing import wait_all_tasks_blocked

from devplug.core.inventory import Inventory
from devplug.ops import debug, httpserve
from devplug.ops.httpserve import ConnectionStats, Limits, Response

from .test_debug import make_app
from .test_metrics import Scrape

SMALL = Limits(max_connections=8, idle_timeout=30.0, request_timeout=10.0, send_timeout=10.0)
BIG = 8 * 1024 * 1024


async def handler(method, path, query):
    if path == "/big":
        return Response(200, "application/octet-stream", b"x" * BIG)
    return Response(200, "text/plain", f"{method} {path}".encode())


async def get(stream: trio.SocketStream, path: str = "/x") -> tuple[int, bytes]:
    """One GET on ``stream``; (status, body)."""
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[("host", "d")]))
                          + conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, body


def closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server closed it (EOF or reset queued), without waiting."""
    peek = socket.socket(fileno=stream.socket.fileno())  # a view on the same descriptor
    try:
        return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        peek.detach()


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def nofile_soft_limit(soft: int):
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


async def test_the_cap_holds_and_new_connections_evict_the_longest_idle(nursery):
    stats = ConnectionStats()
    host, port = await nursery.start(lambda task_status: httpserve.serve_tcp(
        "127.0.0.1", 0, handler, limits=SMALL, stats=stats, task_status=task_status))
    before = open_fds()
    clients = []
    for _ in range(50):
        clients.append(await trio.open_tcp_stream(host, port))
        await wait_all_tasks_blocked()  # the server accepted it and did what it does
        assert stats.open <= 8
    assert stats.open == 8 and stats.dropped == {"evicted": 42}
    assert [closed_by_server(c) for c in clients] == [True] * 42 + [False] * 8  # oldest first
    assert open_fds() - before <= 50 + 8  # our 50 client ends, at most 8 server ends
    # A new client is served (the longest idle makes room) and the cap still holds.
    late = await trio.open_tcp_stream(host, port)
    assert await get(late) == (200, b"GET /x")
    assert stats.open == 8 and stats.dropped["evicted"] == 43
    for c in clients + [late]:
        await c.aclose()


async def test_at_the_cap_with_none_idle_a_new_connection_gets_503(nursery, tmp_path):
    stats = ConnectionStats()
    path = str(tmp_path / "d.sock")
    await nursery.start(lambda task_status: httpserve.serve_unix(
        path, handler, limits=SMALL, stats=stats, task_status=task_status))
    busy = []
    for _ in range(8):  # each has started a request: none may be closed under it
        s = await trio.open_unix_socket(path)
        await s.send_all(b"GET /x HTTP/1.1\r\n")
        busy.append(s)
    await wait_all_tasks_blocked()
    extra = await trio.open_unix_socket(path)
    answer = await read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"devplug: too many connections\r\n")
    assert stats.dropped == {"refused": 1} and stats.open == 8
    # The busy ones finish their requests undisturbed.
    for s in busy:
        await s.send_all(b"host: d\r\n\r\n")
        assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        await s.aclose()
    await extra.aclose()


async def test_idle_and_trickling_clients_are_cut_by_their_timeouts(nursery, autojump_clock, tmp_path):
    stats = ConnectionStats()
    path = str(tmp_path / "d.sock")
    await nursery.start(lambda task_status: httpserve.serve_unix(
        path, handler, limits=SMALL, stats=stats, task_status=task_status))

    # Silent: closed after idle_timeout.
    t0 = trio.current_time()
    silent = await trio.open_unix_socket(path)
    with trio.fail_after(300):
        assert await read_all(silent) == b""
    assert SMALL.idle_timeout <= trio.current_time() - t0 < SMALL.idle_timeout + 1

    # Kept alive after one answer: the idle timeout starts again after it.
    kept = await trio.open_unix_socket(path)
    await trio.sleep(SMALL.idle_timeout - 5)
    assert await get(kept) == (200, b"GET /x")
    t1 = trio.current_time()
    with trio.fail_after(300):
        assert await read_all(kept) == b""
    assert SMALL.idle_timeout <= trio.current_time() - t1 < SMALL.idle_timeout + 1

    # Trickling one byte a second never completes a request: cut request_timeout after the
    # first byte, although it is never idle for even a second.
    trickle = await trio.open_unix_socket(path)
    closed_at = None

    async def reader():
        nonlocal closed_at
        with contextlib.suppress(trio.BrokenResourceError):  # reset: it closed with our bytes unread
            await read_all(trickle)
        closed_at = trio.current_time()

    async with trio.open_nursery() as inner:
        inner.start_soon(reader)
        t2 = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in b"GET /x HTTP/1.1\r\nx-filler: " + b"a" * 1000:
                if closed_at is not None:
                    break
                await trickle.send_all(bytes([byte]))
                await trio.sleep(1)
    assert closed_at is not None
    assert SMALL.request_timeout <= closed_at - t2 < SMALL.request_timeout + 1.5
    assert stats.dropped == {"timeout": 3} and stats.open == 0
    for s in (silent, kept, trickle):
        await s.aclose()


async def test_a_client_that_does_not_take_the_answer_is_cut_at_the_send_timeout(nursery, autojump_clock, tmp_path):
    stats = ConnectionStats()
    path = str(tmp_path / "d.sock")
    await nursery.start(lambda task_status: httpserve.serve_unix(
        path, handler, limits=SMALL, stats=stats, task_status=task_status))
    s = await trio.open_unix_socket(path)
    await s.send_all(b"GET /big HTTP/1.1\r\nhost: d\r\n\r\n")  # and never reads
    t0 = trio.current_time()
    with trio.fail_after(300):
        while stats.open:
            await trio.sleep(0.5)
    assert SMALL.send_timeout <= trio.current_time() - t0 < SMALL.send_timeout + 1
    assert stats.dropped == {"timeout": 1}
    await s.aclose()


async def test_a_flood_under_a_low_descriptor_limit_leaves_the_process_working(tmp_path, caplog):
    """Without the cap the server's ends of 120 connections would take the process past
    its descriptor limit; with it, the debug socket and a new unix socket elsewhere in the
    process (as gRPC would open for kubelet) still work, and nothing logs a traceback."""
    caplog.set_level(logging.DEBUG)
    app = make_app(Inventory())
    sock = str(tmp_path / "debug.sock")
    limits = Limits(max_connections=16)
    flood: list[trio.SocketStream] = []
    with nofile_soft_limit(open_fds() + 150):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(lambda task_status: debug.serve(
                app, sock, "127.0.0.1:0", limits=limits, task_status=task_status))
            for _ in range(120):
                flood.append(await trio.open_tcp_stream(host, port))
                await wait_all_tasks_blocked()
            metrics_stats = app.telemetry.listeners["metrics"]
            assert metrics_stats.open == 16 and metrics_stats.dropped["evicted"] == 120 - 16

            # Elsewhere in the process: a unix server and a client, as a gRPC server would.
            other = tmp_path / "other.sock"
            with socket.socket(socket.AF_UNIX) as srv:
                srv.bind(str(other))
                srv.listen(1)
                with socket.socket(socket.AF_UNIX) as cli:
                    cli.connect(str(other))
                    peer, _ = srv.accept()
                    with peer:
                        cli.sendall(b"ping")
                        assert peer.recv(4) == b"ping"

            # The debug socket has its own cap: the operator's tool still answers, and its
            # /metrics shows the flood.
            d = await trio.open_unix_socket(sock)
            status, body = await get(d, "/metrics")
            assert status == 200
            scraped = Scrape(body.decode())
            assert scraped("devplug_http_connections", listener="metrics") == 16
            assert scraped("devplug_http_connections", listener="debug") == 1
            assert scraped("devplug_http_connections_dropped_total", listener="metrics", reason="evicted") == 104
            await d.aclose()
            for c in flood:
                await c.aclose()
            nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "http connection cap reached; closing idle connections, refusing when none is idle"]


async def test_accept_out_of_descriptors_is_one_line_a_backoff_and_recovers(nursery, autojump_clock, tmp_path,
                                                                            caplog):
    caplog.set_level(logging.INFO, logger="devplug.http")
    stats = ConnectionStats()
    path = str(tmp_path / "d.sock")
    await nursery.start(lambda task_status: httpserve.serve_unix(
        path, handler, stats=stats, task_status=task_status))
    clients = [trio.socket.socket(socket.AF_UNIX) for _ in range(3)]  # descriptors taken now
    lowest_free = os.open("/dev/null", os.O_RDONLY)
    os.close(lowest_free)
    with nofile_soft_limit(lowest_free):  # no new descriptor can be made
        for c in clients:
            await c.connect(path)  # queued in the backlog; the server's accept() fails
        await trio.sleep(10)  # virtual: several retries with backoff
        failed = stats.dropped["accept_error"]
        # Backed off (50 ms doubling to 1 s: 14 attempts in 10 s), not spinning.
        assert 10 <= failed <= 16
        assert stats.open == 0
    streams = [trio.SocketStream(c) for c in clients]
    with trio.fail_after(5):
        for s in streams:
            assert await get(s) == (200, b"GET /x")
    assert stats.open == 3
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("INFO", "http serving"),
        ("WARNING", "http accept failed; retrying with backoff, not logging each failure"),
        ("INFO", "http accept works again"),
    ]
    assert not any(r.exc_info for r in caplog.records)
    for s in streams:
        await s.aclose()


def test_the_cap_stays_well_below_the_descriptor_limit():
    with nofile_soft_limit(100):
        assert Limits(max_connections=64).cap() == 25
    with nofile_soft_limit(1024):
        assert Limits(max_connections=64).cap() == 64
        assert Limits(max_connections=1000).cap() == 256
