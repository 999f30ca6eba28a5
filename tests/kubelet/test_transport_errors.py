"""Bad calls get a gRPC status, never a dropped connection: unknown methods, compressed or
oversized or undecodable messages, a failing handler, deadlines. Real sockets, the real
adapter; clients: grpcio (sync, in threads) and the bare h2 client where grpcio will not
misbehave on purpose."""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc
import pytest
from tests.kubelet.h2client import H2Client, grpc_message
from tests.kubelet.kubelet_harness import ALLOCATE, LAW, R, Harness, one_device, run_adapter
from tests.kubelet_standin import blocking

from devplug.kubelet import api_pb2, api_pb2_grpc, socket_name

def allocate_request(*ids: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))])


def with_channel(plugin_dir: str, body: Callable[[grpc.Channel, api_pb2_grpc.DevicePluginStub], None],
                 **channel_kw) -> Callable[[Harness], object]:
    """A scenario running ``body`` with one grpcio channel to the resource's socket, in a thread."""
    async def scenario(h: Harness) -> None:
        def run() -> None:
            with grpc.insecure_channel("unix://" + os.path.join(plugin_dir, socket_name(R)), **channel_kw) as ch:
                body(ch, api_pb2_grpc.DevicePluginStub(ch))
        await blocking(run)
    return scenario


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def test_unknown_methods_are_unimplemented_and_the_channel_serves_on(plugin_dir):
    def body(ch: grpc.Channel, stub: api_pb2_grpc.DevicePluginStub) -> None:
        for path in ("/v1beta1.DevicePlugin/Nope", "/other.Service/Allocate"):
            err = rpc_error(lambda path=path: ch.unary_unary(path)(b"", timeout=5))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED and path in err.details()
        assert stub.Allocate(allocate_request("A1"), timeout=5).container_responses[0].devices

    run_adapter(with_channel(plugin_dir, body), plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_compressed_messages_are_unimplemented(plugin_dir):
    def body(ch: grpc.Channel, stub: api_pb2_grpc.DevicePluginStub) -> None:
        # grpcio compresses with gzip (grpc-encoding: gzip, the flag set on the message).
        err = rpc_error(lambda: stub.Allocate(allocate_request("A1"), timeout=5, compression=grpc.Compression.Gzip))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED and "gzip" in err.details()
        assert stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5).get_preferred_allocation_available

    run_adapter(with_channel(plugin_dir, body), plugin_dir=plugin_dir, inventory=one_device(), register=False)

    async def raw(h: Harness) -> None:
        c = await H2Client.connect(os.path.join(plugin_dir, socket_name(R)))
        # The compressed flag without any grpc-encoding header: refused from the prefix alone.
        sid = await c.call(ALLOCATE, raw=grpc_message(allocate_request("A1").SerializeToString(), compressed=True))
        await c.until(lambda: c.calls[sid].ended)
        assert c.calls[sid].status == 12 and "compressed" in c.calls[sid].message
        assert c.calls[sid].headers[b"grpc-status"] == b"12"  # trailers-only
        law = await c.call(LAW)
        await c.until(lambda: c.calls[law].messages)  # same connection, still served
        await c.aclose()

    run_adapter(raw, plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_a_message_over_the_size_limit_is_resource_exhausted(plugin_dir):
    holder = {}

    def body(ch: grpc.Channel, stub: api_pb2_grpc.DevicePluginStub) -> None:
        huge = allocate_request(*(f"id-{k:07d}-{'y' * 20}" for k in range(160_000)))  # ~5.4 MB
        assert huge.ByteSize() > 4 << 20
        err = rpc_error(lambda: stub.Allocate(huge, timeout=20))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.details()
        assert stub.Allocate(allocate_request("A1"), timeout=5).container_responses[0].devices
        holder["held"] = holder["server"].stats()["request_bytes"]

    async def scenario(h: Harness) -> None:
        holder["server"] = h.adapter._plugins[R].server
        await with_channel(plugin_dir, body)(h)

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)
    assert holder["held"] == 0  # the refused request was not kept


def test_undecodable_requests_and_handler_bugs_are_internal(plugin_dir):
    def broken_cdi(entry):
        raise RuntimeError("cdi naming broke: ü 100%")

    def body(ch: grpc.Channel, stub: api_pb2_grpc.DevicePluginStub) -> None:
        watch = stub.ListAndWatch(api_pb2.Empty(), timeout=30)
        assert [d.ID for d in next(watch).devices] == ["A1"]
        err = rpc_error(lambda: ch.unary_unary(ALLOCATE)(b"\xff\xff\xff", timeout=5))
        assert err.code() == grpc.StatusCode.INTERNAL and "AllocateRequest" in err.details()
        err = rpc_error(lambda: stub.Allocate(allocate_request("A1"), timeout=5))
        # The message travels percent-encoded and arrives intact.
        assert err.code() == grpc.StatusCode.INTERNAL and err.details() == "RuntimeError: cdi naming broke: ü 100%"
        err = rpc_error(lambda: stub.Allocate(allocate_request("ü-100%"), timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'ü-100%'" in err.details()
        assert stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5).get_preferred_allocation_available
        watch.cancel()

    run_adapter(with_channel(plugin_dir, body), plugin_dir=plugin_dir, inventory=one_device(), register=False,
                cdi=broken_cdi)


def test_grpc_timeout_is_honoured(plugin_dir):
    async def scenario(h: Harness) -> None:
        c = await H2Client.connect(os.path.join(plugin_dir, socket_name(R)))
        # A stream with a deadline (and a client that does not enforce it): the server ends it.
        law = await c.call(LAW, headers=[(b"grpc-timeout", b"150m")])
        # A unary call whose request never completes.
        stuck = await c.call(ALLOCATE, raw=grpc_message(allocate_request("A1").SerializeToString())[:7],
                             end=False, headers=[(b"grpc-timeout", b"100000u")])
        bad = await c.call(ALLOCATE, allocate_request("A1").SerializeToString(), headers=[(b"grpc-timeout", b"1x")])
        ok = await c.call(ALLOCATE, allocate_request("A1").SerializeToString(), headers=[(b"grpc-timeout", b"5S")])
        await c.until(lambda: all(c.calls[s].ended for s in (law, stuck, bad, ok)))
        assert len(c.calls[law].messages) == 1 and c.calls[law].status == 4
        assert c.calls[stuck].status == 4 and c.calls[stuck].message == "deadline exceeded"
        assert c.calls[bad].status == 13 and "grpc-timeout" in c.calls[bad].message
        assert c.calls[ok].status == 0 and len(c.calls[ok].messages) == 1
        await h.until(lambda: h.adapter.status()[R].streams == 0)
        await c.aclose()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)


def test_grpcio_deadlines(plugin_dir):
    def body(ch: grpc.Channel, stub: api_pb2_grpc.DevicePluginStub) -> None:
        watch = stub.ListAndWatch(api_pb2.Empty(), timeout=0.3)
        assert [d.ID for d in next(watch).devices] == ["A1"]
        err = rpc_error(lambda: next(watch))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.Allocate(allocate_request("A1"), timeout=5).container_responses[0].devices

    async def scenario(h: Harness) -> None:
        await with_channel(plugin_dir, body)(h)
        await h.until(lambda: h.adapter.status()[R].streams == 0)

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=one_device(), register=False)
