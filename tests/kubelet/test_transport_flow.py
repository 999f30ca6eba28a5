"""The h2 transport under flow control: lists bigger than the client's window, a stream
reset mid-list, a client that never reads. Real sockets, the real adapter and inventory;
clients: a bare h2 client (tests/kubelet/h2client.py) and grpcio (the stand-in's Watch)."""

from __future__ import annotations

import os
import tracemalloc

import trio
from tests.kubelet.h2client import H2Client
from tests.kubelet.kubelet_harness import LAW, R, Harness, gone, run_adapter, seen
from tests.kubelet_standin import Watch, blocking

from devplug.core.inventory import Inventory
from devplug.kubelet import api_pb2, socket_name
from devplug.kubelet.plugin import LIMITS

N = 1000


def big_inventory() -> Inventory:
    inv = Inventory()
    for k in range(N):
        inv.apply(seen(f"/sys/d{k}", f"dev-{k:04d}-" + "x" * 16))
    return inv


def devices(message: bytes) -> dict[str, str]:
    return {d.ID: d.health for d in api_pb2.ListAndWatchResponse.FromString(message).devices}


def state(inv: Inventory) -> dict[str, str]:
    return {e.id: e.health for e in inv.entries(R)}


def test_lists_bigger_than_a_tiny_window_arrive_whole_and_changes_coalesce(plugin_dir):
    inv = big_inventory()

    async def scenario(h: Harness):
        path = os.path.join(plugin_dir, socket_name(R))
        # 1,000 bytes of window per stream: a ~40 KB list takes ~40 WINDOW_UPDATEs. h2 on the
        # client side raises if the server ever sends beyond the window.
        c = await H2Client.connect(path, window=1000)
        sid = await c.call(LAW, b"")
        call = c.calls[sid]
        await c.until(lambda: len(call.messages) == 1)
        assert len(call.data) > 30_000 and devices(call.messages[0]) == state(inv)
        # Five changes without yielding: the first starts going out at once, the other four
        # fold into one list; the event path never waits for the window.
        for k in range(5):
            h.apply(gone(f"/sys/d{k}"))
        await c.until(lambda: call.messages and devices(call.messages[-1]) == state(inv))
        assert len(call.messages) == 3
        assert devices(call.messages[1])[f"dev-0000-{'x' * 16}"] == "Unhealthy"
        assert max(call.frames) <= 1000
        # A unary reply bigger than the window on the same connection: its trailers come after
        # its last byte (h2 would refuse DATA after the trailers ended the stream).
        avail = sorted(state(inv))
        req = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=avail, allocation_size=500)])
        uid = await c.call("/v1beta1.DevicePlugin/GetPreferredAllocation", req.SerializeToString())
        await c.until(lambda: c.calls[uid].ended)
        unary = c.calls[uid]
        assert unary.status == 0 and len(unary.data) > 10_000
        (reply,) = unary.messages
        assert len(api_pb2.PreferredAllocationResponse.FromString(reply).container_responses[0].deviceIDs) == 500
        assert not call.ended  # the watch is still open
        await c.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, register=False)


def test_a_stream_reset_mid_list_is_forgotten_and_the_connection_serves_on(plugin_dir):
    inv = big_inventory()

    async def scenario(h: Harness):
        path = os.path.join(plugin_dir, socket_name(R))
        c = await H2Client.connect(path, window=1000)
        sid = await c.call(LAW, b"")
        await c.until(lambda: len(c.calls[sid].data) >= 2000)
        assert not c.calls[sid].messages  # mid-list
        await c.reset(sid)
        await h.until(lambda: h.adapter.status()[R].streams == 0)
        h.apply(gone("/sys/d7"))  # nothing to push to: no error, no write
        sid2 = await c.call(LAW, b"")
        await c.until(lambda: len(c.calls[sid2].messages) == 1)
        assert devices(c.calls[sid2].messages[0]) == state(inv)
        h.apply(seen("/sys/d7", f"dev-0007-{'x' * 16}"))
        await c.until(lambda: len(c.calls[sid2].messages) == 2)
        assert devices(c.calls[sid2].messages[1]) == state(inv)
        assert len(c.calls[sid].messages) == 0 and c.calls[sid].status is None
        await c.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, register=False)


def test_a_client_that_never_reads_costs_a_bounded_buffer_and_blocks_nothing(plugin_dir):
    inv = big_inventory()

    async def scenario(h: Harness):
        path = os.path.join(plugin_dir, socket_name(R))
        # Unlimited windows: only the kernel's socket buffer and ours can fill up.
        stuck = await H2Client.connect(path, window=2**31 - 1, connection_window=2**31 - 1)
        sid = await stuck.call(LAW, b"")
        await stuck.until(lambda: stuck.remote_settings)  # connected; from now on it never reads
        reader = Watch(path, R)  # grpcio, on its own connection, reads everything
        await blocking(reader.wait_count, 1)
        await h.until(lambda: h.adapter.status()[R].streams == 2)
        server = h.adapter._plugins[R].server
        assert server is not None

        def flip(k: int) -> None:
            h.apply(gone("/sys/d0") if k % 2 == 0 else seen("/sys/d0", f"dev-0000-{'x' * 16}"))

        tracemalloc.start()
        try:
            for k in range(2000):
                flip(k)  # synchronous: returns whether or not anybody reads
                if k % 50 == 49:
                    await trio.sleep(0)  # the connections' tasks run
                if k == 999:
                    before = tracemalloc.take_snapshot()
            # What devplug and h2 hold (the grpcio reader keeps every list it got: not ours).
            ours = [tracemalloc.Filter(True, f"*/{pkg}/*") for pkg in ("devplug", "h2", "hpack", "hyperframe")]
            after = tracemalloc.take_snapshot().filter_traces(ours)
            grown = sum(d.size_diff for d in after.compare_to(before.filter_traces(ours), "filename"))
        finally:
            tracemalloc.stop()
        h.apply(gone("/sys/d1"))
        final = state(inv)
        # The stuck connection holds at most out_high plus one frame, however many lists went by.
        assert server.stats()["held_bytes"] <= LIMITS.out_high + 16_384 + 64
        assert grown < 64_000, f"devplug and h2 grew by {grown} bytes over 1,000 lists to a stuck client"
        await blocking(reader.wait_for, lambda lst: dict(lst.devices) == final)
        # Once it reads, the stuck client gets whole lists and, last, the newest one.
        await stuck.until(lambda: stuck.calls[sid].messages and devices(stuck.calls[sid].messages[-1]) == final)
        assert all(len(devices(m)) == N for m in stuck.calls[sid].messages)
        reader.close()
        await stuck.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, register=False, timeout=60)
