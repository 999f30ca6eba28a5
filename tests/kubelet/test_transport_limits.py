"""What one client can make a plugin's server hold, and how the server stops: the stream
limit per connection, the connection cap per socket, GOAWAY with calls in flight. Real
sockets, the real adapter; grpcio and the bare h2 client."""

from __future__ import annotations

import os
import threading

import grpc
import trio
from tests.kubelet.h2client import H2Client, grpc_message
from tests.kubelet.kubelet_harness import ALLOCATE, LAW, R, Harness, one_device, run_adapter, seen
from tests.kubelet_standin import blocking

from devplug.kubelet import api_pb2, api_pb2_grpc, socket_name
from devplug.kubelet.plugin import LIMITS, STOP_GRACE

def test_streams_beyond_the_limit_wait_at_a_compliant_client(plugin_dir):
    """grpcio reads SETTINGS_MAX_CONCURRENT_STREAMS and queues the extra call until one ends."""
    path = os.path.join(plugin_dir, socket_name(R))

    async def scenario(h: Harness) -> None:
        ch = grpc.insecure_channel("unix://" + path)
        stub = api_pb2_grpc.DevicePluginStub(ch)
        calls = [stub.ListAndWatch(api_pb2.Empty()) for _ in range(LIMITS.max_streams)]
        for call in calls:
            await blocking(next, call)
        server = h.adapter._plugins[R].server
        assert server.stats() == {**server.stats(), "connections": 1, "streams": LIMITS.max_streams}
        extra = stub.ListAndWatch(api_pb2.Empty())
        first: list = []
        got = threading.Thread(target=lambda: first.append(next(extra)), daemon=True)
        got.start()
        calls[0].cancel()
        await blocking(got.join, 10)
        assert [d.ID for d in first[0].devices] == ["A1"]
        assert server.stats()["streams"] == LIMITS.max_streams
        for call in calls[1:] + [extra]:
            call.cancel()
        ch.close()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_a_client_ignoring_the_stream_limit_loses_its_connection_only(plugin_dir):
    path = os.path.join(plugin_dir, socket_name(R))

    async def scenario(h: Harness) -> None:
        good = await H2Client.connect(path)
        law = await good.call(LAW)
        await good.until(lambda: good.calls[law].messages)
        # Opened before it read the server's SETTINGS: one stream more than advertised.
        bad = await H2Client.connect(path)
        ids = [bad.open(LAW) for _ in range(LIMITS.max_streams + 1)]
        await bad.flush()
        await bad.until(lambda: bad.goaway is not None)
        assert bad.goaway.error_code == 1  # PROTOCOL_ERROR (h2's choice: RFC 9113 also allows a stream error)
        assert bad.remote_settings[3] == LIMITS.max_streams  # it had been told
        assert ids
        h.apply(seen("/sys/b", "B2"))
        await good.until(lambda: len(good.calls[law].messages) == 2)  # the other connection is unaffected
        await good.aclose()
        await bad.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_the_connection_cap_closes_the_oldest_idle_connection_then_refuses(plugin_dir):
    path = os.path.join(plugin_dir, socket_name(R))

    async def scenario(h: Harness) -> None:
        idle = [await H2Client.connect(path) for _ in range(LIMITS.max_connections)]
        for c in idle:
            await c.until(lambda c=c: c.remote_settings)
        # One more: the oldest idle connection leaves (GOAWAY NO_ERROR), the new one is served.
        busy = [await H2Client.connect(path)]
        await idle[0].until(lambda: idle[0].goaway is not None)
        assert idle[0].goaway.error_code == 0
        # Fill every slot with a connection that has a call open.
        for c in idle[1:]:
            await c.aclose()
        while len(busy) < LIMITS.max_connections:
            busy.append(await H2Client.connect(path))
        sids = [await c.call(LAW) for c in busy]
        for c, sid in zip(busy, sids, strict=True):
            await c.until(lambda c=c, sid=sid: c.calls[sid].messages)
        refused = await H2Client.connect(path)
        await refused.until(lambda: refused.goaway is not None)
        assert refused.goaway.error_code == 11  # ENHANCE_YOUR_CALM
        h.apply(seen("/sys/b", "B2"))
        for c, sid in zip(busy, sids, strict=True):
            await c.until(lambda c=c, sid=sid: len(c.calls[sid].messages) == 2)
        for c in (*busy, refused, idle[0]):
            await c.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_stop_sends_goaway_ends_streams_ok_and_lets_a_call_in_flight_finish(plugin_dir):
    path = os.path.join(plugin_dir, socket_name(R))
    request = grpc_message(api_pb2.AllocateRequest(container_requests=[
        api_pb2.ContainerAllocateRequest(devices_ids=["A1"])]).SerializeToString())

    async def scenario(h: Harness) -> None:
        c = await H2Client.connect(path)
        law = await c.call(LAW)
        await c.until(lambda: c.calls[law].messages)
        late = await c.call(ALLOCATE, raw=request[:6], end=False)  # half a request
        never = await c.call(ALLOCATE, raw=request[:6], end=False)  # this one never completes
        await h.until(lambda: h.adapter._plugins[R].server.stats()["streams"] == 3)
        t0 = trio.current_time()
        h.adapter.set_resources([])  # the plugin stops: the server drains
        await c.until(lambda: c.goaway is not None and c.calls[law].ended)
        assert c.goaway.error_code == 0 and c.goaway.last_stream_id >= never
        assert c.calls[law].status == 0  # OK trailers, not a reset
        await c.send(late, request[6:], end=True)  # calls in flight may still finish
        await c.until(lambda: c.calls[late].ended and c.calls[never].ended)
        assert c.calls[late].status == 0 and len(c.calls[late].messages) == 1
        assert c.calls[never].reset == 8  # CANCEL, once the grace was over
        await c.until(lambda: c.eof)
        assert trio.current_time() - t0 < STOP_GRACE + 0.5
        await h.until(lambda: not os.path.exists(path))  # and the socket file is gone
        await c.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)
