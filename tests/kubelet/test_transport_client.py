"""The unary gRPC client (``kubelet.transport.client``) against real peers on real unix
sockets: grpcio servers (the kubelet stand-in, generic handlers), devplug's own server, and
bare h2 peers for what a real server does only when it fails (closing mid-call, GOAWAY,
RST_STREAM, never answering)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from typing import Optional

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
import trio
from tests.kubelet_standin import KubeletStandin, blocking

from devplug.kubelet import api_pb2, transport
from devplug.kubelet.podresources import PodResources, list_pod_resources
from devplug.kubelet.registration import register
from devplug.kubelet.transport import RpcError, Status, Unavailable, unary_call
from devplug.kubelet.transport.client import MAX_RECEIVE

R = "devplug.io/serial"
ECHO = "/test.Svc/Echo"
NON_ASCII = "ü-100% 新しい kubelet says no\tat all"


def request(resource: str = R) -> api_pb2.RegisterRequest:
    return api_pb2.RegisterRequest(version="v1beta1", endpoint="devplug.io_serial.sock", resource_name=resource,
                                   options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True))


# ---- grpcio servers ---------------------------------------------------------------------------
class GrpcServer:
    """A grpcio server on ``path`` whose ``/test.Svc/Echo`` runs ``fn(request, context)`` (bytes)."""

    def __init__(self, path: str, fn: Callable[[bytes, grpc.ServicerContext], bytes]) -> None:
        handler = grpc.method_handlers_generic_handler("test.Svc", {"Echo": grpc.unary_unary_rpc_method_handler(fn)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port("unix://" + path)

    def __enter__(self) -> GrpcServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None).wait()


async def test_register_reaches_a_grpcio_kubelet(plugin_dir):
    with KubeletStandin(plugin_dir) as kubelet:
        await register(kubelet.socket, request())
        (reg,) = kubelet.registrations
        assert (reg.version, reg.endpoint, reg.resource_name) == ("v1beta1", "devplug.io_serial.sock", R)
        assert reg.get_preferred_allocation_available and not reg.pre_start_required


async def test_a_refused_register_is_the_status_kubelet_sent(plugin_dir):
    with KubeletStandin(plugin_dir) as kubelet:
        kubelet.reject(1, grpc.StatusCode.PERMISSION_DENIED)
        with pytest.raises(RpcError) as err:
            await register(kubelet.socket, request())
        assert err.value.code == Status.PERMISSION_DENIED and err.value.message == "stand-in told to refuse"
        assert not isinstance(err.value, Unavailable)
        await register(kubelet.socket, request())  # the next one is accepted
        assert len(kubelet.registrations) == 1


async def test_a_non_ascii_status_message_arrives_percent_decoded(plugin_dir):
    path = os.path.join(plugin_dir, "g.sock")

    def refuse(req: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, NON_ASCII)

    with GrpcServer(path, refuse):
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"x", timeout=5)
    assert err.value.code == Status.FAILED_PRECONDITION and err.value.message == NON_ASCII


async def test_an_unknown_status_code_is_unknown(plugin_dir):
    path = os.path.join(plugin_dir, "p.sock")

    def respond(conn: h2.connection.H2Connection, sid: int) -> None:
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                (b"grpc-status", b"99"), (b"grpc-message", b"from the future")], end_stream=True)

    async with bare_peer(path, respond):
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"x", timeout=5)
    assert err.value.code == Status.UNKNOWN and err.value.message == "from the future"


async def test_a_large_response_flows_and_one_over_the_limit_is_resource_exhausted(plugin_dir):
    path = os.path.join(plugin_dir, "g.sock")
    sizes = {b"big": 5 << 20, b"huge": MAX_RECEIVE + 1}

    def answer(req: bytes, context: grpc.ServicerContext) -> bytes:
        return b"y" * sizes[req]

    with GrpcServer(path, answer):
        assert await unary_call(path, ECHO, b"big", timeout=10) == b"y" * (5 << 20)
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"huge", timeout=10)
        assert err.value.code == Status.RESOURCE_EXHAUSTED
        assert f"larger than max ({MAX_RECEIVE + 1} vs. {MAX_RECEIVE})" in err.value.message
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"big", timeout=10, max_receive=1000)
        assert err.value.code == Status.RESOURCE_EXHAUSTED


async def test_a_server_that_never_answers_ends_at_the_deadline_and_the_call_is_closed(plugin_dir):
    path = os.path.join(plugin_dir, "g.sock")
    arrived, gone, release = threading.Event(), threading.Event(), threading.Event()

    def hang(req: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(gone.set)  # runs when the call ends: here, when the client left
        arrived.set()
        release.wait(10)
        return b""

    failed = []

    async def call() -> None:
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"x", timeout=2)
        failed.append(err.value)

    with GrpcServer(path, hang):
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                assert await blocking(arrived.wait, 5)
            (error,) = failed
            assert error.code == Status.DEADLINE_EXCEEDED and error.message == "Deadline Exceeded"
            assert await blocking(gone.wait, 5), "the server never saw the call end"
        finally:
            release.set()


async def test_the_deadline_travels_as_grpc_timeout(plugin_dir):
    path = os.path.join(plugin_dir, "g.sock")
    remaining = []

    def note(req: bytes, context: grpc.ServicerContext) -> bytes:
        remaining.append(context.time_remaining())
        return b"ok"

    with GrpcServer(path, note):
        assert await unary_call(path, ECHO, b"x", timeout=30) == b"ok"
    assert 20 < remaining[0] <= 30


# ---- devplug's own server ---------------------------------------------------------------------
async def test_against_our_server_a_large_request_and_a_non_ascii_refusal(plugin_dir):
    path = os.path.join(plugin_dir, "s.sock")

    def echo(req: bytes) -> bytes:
        if req == b"refuse":
            raise RpcError(Status.FAILED_PRECONDITION, NON_ASCII)
        return req[::-1]

    server = transport.Server({ECHO.encode(): transport.Method(unary=echo)})
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.serve(transport.listen(path), grace=0.1,
                                                                task_status=task_status))
        big = os.urandom(1 << 20)  # far over the 64 KiB first window: the request waits for WINDOW_UPDATEs
        assert await unary_call(path, ECHO, big, timeout=10) == big[::-1]
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"refuse", timeout=5)
        assert err.value.code == Status.FAILED_PRECONDITION and err.value.message == NON_ASCII
        with pytest.raises(RpcError) as err:
            await unary_call(path, "/test.Svc/Nope", b"", timeout=5)
        assert err.value.code == Status.UNIMPLEMENTED
        with trio.fail_after(5):  # every call closed its connection (the server sees the EOF soon)
            while server.stats()["connections"]:
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()


# ---- bare h2 peers ----------------------------------------------------------------------------
class Peer:
    """What a bare peer saw: the request arrived, the client's end of the socket closed."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.eof = trio.Event()


@contextlib.asynccontextmanager
async def bare_peer(path: str, respond: Optional[Callable[[h2.connection.H2Connection, int], None]],
                    after: Optional[Callable[[trio.SocketStream], Awaitable[None]]] = None) -> AsyncIterator[Peer]:
    """Serve one connection on ``path``: read the request, let ``respond(h2, stream_id)`` queue
    frames (None: never answer) and send them, then run ``after`` (e.g. close) or read to EOF."""
    peer = Peer()
    listener = trio.socket.from_stdlib_socket(transport.listen(path))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_one, listener, peer, respond, after)
        yield peer
        nursery.cancel_scope.cancel()


async def _serve_one(listener, peer: Peer, respond, after) -> None:
    with listener:
        sock, _ = await listener.accept()
    async with trio.SocketStream(sock) as stream:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # ECONNRESET: the client closed with our bytes unread
                data = b""
            if not data:
                peer.eof.set()
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:  # after our GOAWAY h2 takes nothing more: read to EOF
                continue
            for ev in events:
                if isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    peer.requested.set()
                    if respond is not None:
                        respond(conn, ev.stream_id)
            await stream.send_all(conn.data_to_send())
            if peer.requested.is_set() and after is not None:
                await after(stream)
                return


HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


async def _close(stream: trio.SocketStream) -> None:
    await stream.aclose()


#: A peer that closes with bytes of ours unread resets the connection (ECONNRESET) instead.
CLOSED = ("closed the connection before the call ended", "Connection reset by peer")


@pytest.mark.parametrize(("respond", "after", "words"), [
    # Headers and half a message, then the connection closes.
    (lambda c, sid: (c.send_headers(sid, HEADERS), c.send_data(sid, transport.frame(b"0123456789")[:8])),
     _close, CLOSED),
    (lambda c, sid: c.close_connection(h2.errors.ErrorCodes.NO_ERROR, additional_data=b"shutting down"),
     None, ("GOAWAY NO_ERROR: shutting down",)),
    (lambda c, sid: c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM), None, ("reset the call (REFUSED_STREAM)",)),
    (None, _close, CLOSED),
])
async def test_a_server_that_goes_away_mid_call_is_unavailable(plugin_dir, respond, after, words):
    path = os.path.join(plugin_dir, "p.sock")
    async with bare_peer(path, respond, after) as peer:
        with pytest.raises(Unavailable) as err:
            await unary_call(path, ECHO, b"x", timeout=5)
        assert err.value.code == Status.UNAVAILABLE and any(w in err.value.message for w in words)
        if after is None:  # the peer is still there: it sees our side close
            with trio.fail_after(5):
                await peer.eof.wait()


async def test_an_http_error_without_grpc_status_maps_to_grpc_code(plugin_dir):
    path = os.path.join(plugin_dir, "p.sock")

    def respond(conn: h2.connection.H2Connection, sid: int) -> None:
        conn.send_headers(sid, [(b":status", b"503"), (b"content-type", b"text/plain")], end_stream=True)

    async with bare_peer(path, respond):
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"x", timeout=5)
    assert err.value.code == Status.UNAVAILABLE and "HTTP status 503" in err.value.message


async def test_a_silent_server_gets_deadline_exceeded_and_a_closed_socket(plugin_dir):
    path = os.path.join(plugin_dir, "p.sock")
    async with bare_peer(path, None) as peer:
        with pytest.raises(RpcError) as err:
            await unary_call(path, ECHO, b"x", timeout=0.2)
        assert err.value.code == Status.DEADLINE_EXCEEDED and not isinstance(err.value, Unavailable)
        with trio.fail_after(5):
            await peer.eof.wait()


async def test_cancelling_a_call_in_flight_closes_its_socket(plugin_dir):
    path = os.path.join(plugin_dir, "p.sock")
    outcome = []
    async with bare_peer(path, None) as peer:
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                outcome.append(await unary_call(path, ECHO, b"x", timeout=60))

            nursery.start_soon(call)
            with trio.fail_after(5):
                await peer.requested.wait()
            nursery.cancel_scope.cancel()
        assert outcome == []
        with trio.fail_after(5):
            await peer.eof.wait()


async def test_no_socket_and_nobody_listening_are_unavailable(plugin_dir):
    missing = os.path.join(plugin_dir, "missing.sock")
    with pytest.raises(Unavailable) as err:
        await unary_call(missing, ECHO, b"", timeout=5)
    assert missing in err.value.message and "No such file" in err.value.message
    bound = os.path.join(plugin_dir, "bound.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(bound)  # a socket file nobody listens on: what a dead kubelet leaves
        with pytest.raises(Unavailable) as err:
            await unary_call(bound, ECHO, b"", timeout=5)
    assert "Connection refused" in err.value.message


# ---- PodResources ------------------------------------------------------------------------------
async def test_pod_resources_with_a_large_answer(plugin_dir):
    path = os.path.join(plugin_dir, "pr.sock")
    ids = [f"dev-{k:05d}-" + "z" * 20 for k in range(20000)]  # ~700 KB: many windows' worth
    with KubeletStandin(plugin_dir, pod_resources=path) as kubelet:
        kubelet.assign(R, ids, pod="big", namespace="iot", container="c")
        response = await list_pod_resources(path, 10)
        assert list(response.pod_resources[0].containers[0].devices[0].device_ids) == ids
        holders = await PodResources(path, timeout=10).holders()
    assert holders is not None and len(holders) == len(ids)


async def test_pod_resources_that_cannot_be_decoded_are_internal(plugin_dir, caplog):
    path = os.path.join(plugin_dir, "pr.sock")

    def respond(conn: h2.connection.H2Connection, sid: int) -> None:
        conn.send_headers(sid, HEADERS)
        conn.send_data(sid, transport.frame(b"\xff\xff\xff"))
        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)

    async with bare_peer(path, respond):
        with pytest.raises(RpcError) as err:
            await list_pod_resources(path, 5)
    assert err.value.code == Status.INTERNAL and "cannot decode" in err.value.message
