"""The benchmarks' kubelet ends (bench/receivers.py): Go and Python speak one line protocol.

A real grpcio device plugin on a unix socket registers with each receiver; the receiver must
report the registration, every list in order with the exact devices, the stream's end, and
stamp on this process's clock. The Go receiver (bench/gokubelet) is only tested when built
(``scripts/setup --test`` builds it, as ``--bench`` does).
"""

from __future__ import annotations

import queue
import sys
from concurrent import futures
from pathlib import Path
from typing import Iterator, Optional

import grpc
import pytest

from devplug.kubelet import api_pb2, api_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from receivers import GOKUBELET, Receiver  # noqa: E402

RESOURCE = "devplug.io/recv-test"
GO = pytest.param("go", marks=pytest.mark.skipif(not GOKUBELET.exists(),
                                                 reason="bench/gokubelet is not built (scripts/setup --test)"))
KINDS = ["python", GO]

Devices = Optional[list[tuple[str, str]]]


class Plugin(api_pb2_grpc.DevicePluginServicer):
    """Streams whatever lists the test puts in ``lists``; ``None`` ends the stream (OK)."""

    def __init__(self) -> None:
        self.lists: queue.Queue[Devices] = queue.Queue()

    def GetDevicePluginOptions(self, request, context):  # noqa: N802
        return api_pb2.DevicePluginOptions(pre_start_required=False)

    def ListAndWatch(self, request, context) -> Iterator[api_pb2.ListAndWatchResponse]:  # noqa: N802
        while (devices := self.lists.get()) is not None:
            yield api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=i, health=h) for i, h in devices])

    def Allocate(self, request, context):  # noqa: N802
        return api_pb2.AllocateResponse(container_responses=[
            api_pb2.ContainerAllocateResponse(envs={"IDS": ",".join(c.devices_ids)})
            for c in request.container_requests])


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[tuple[Plugin, Path]]:
    servicer = Plugin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_DevicePluginServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{tmp_path / 'plugin.sock'}")
    server.start()
    yield servicer, tmp_path
    servicer.lists.put(None)
    server.stop(None).wait()


def register(plugin_dir: Path, version: str = "v1beta1", resource: str = RESOURCE) -> None:
    with grpc.insecure_channel(f"unix://{plugin_dir / 'kubelet.sock'}") as ch:
        api_pb2_grpc.RegistrationStub(ch).Register(
            api_pb2.RegisterRequest(version=version, endpoint="plugin.sock", resource_name=resource), timeout=15)


@pytest.mark.parametrize("kind", KINDS)
def test_receiver_stamps_on_perf_counter_ns(kind: str, tmp_path: Path) -> None:
    with Receiver(kind, str(tmp_path)) as r:
        r.check_clock(rounds=50)  # raises unless before <= t_ns <= after, every round


@pytest.mark.parametrize("kind", KINDS)
def test_registration_lists_in_order_and_end(kind: str, plugin: tuple[Plugin, Path]) -> None:
    servicer, plugin_dir = plugin
    with Receiver(kind, str(plugin_dir)) as r:
        register(plugin_dir)
        watch = r.wait_watch(RESOURCE, timeout=15)
        sent = [[("a", "Healthy")], [("a", "Unhealthy"), ("b", "Healthy")], []]
        for devices in sent:
            servicer.lists.put(devices)
        servicer.lists.put(None)
        assert watch.ended.wait(15), "the receiver did not report the end of the stream"
        assert watch.end_code == "OK"
        assert [lst.devices for lst in watch.lists] == [tuple(d) for d in sent]
        stamps = [lst.t_ns for lst in watch.lists]
        assert stamps == sorted(stamps)


@pytest.mark.parametrize("kind", KINDS)
def test_watch_without_registration(kind: str, plugin: tuple[Plugin, Path]) -> None:
    servicer, plugin_dir = plugin
    with Receiver(kind, str(plugin_dir / "kubelet")) as r:
        watch = r.watch("bare", str(plugin_dir / "plugin.sock"))
        servicer.lists.put([("x", "Healthy")])
        assert watch.wait_for(lambda dl: dl.as_dict() == {"x": "Healthy"}, timeout=15).ids == ["x"]


def test_go_receiver_refuses_what_kubelet_refuses(plugin: tuple[Plugin, Path]) -> None:
    if not GOKUBELET.exists():
        pytest.skip("bench/gokubelet is not built (scripts/setup --test)")
    _servicer, plugin_dir = plugin
    with Receiver("go", str(plugin_dir)) as r:
        for version, resource, words in (("v1alpha", RESOURCE, "version"),
                                         ("v1beta1", "kubernetes.io/recv-test", "ResourceName"),
                                         ("v1beta1", "no-domain", "ResourceName")):
            with pytest.raises(grpc.RpcError) as err:
                register(plugin_dir, version, resource)
            assert err.value.code() == grpc.StatusCode.UNKNOWN and words in err.value.details()
        register(plugin_dir)
        r.wait_watch(RESOURCE, timeout=15)
        assert set(r.watches) == {RESOURCE}  # none of the refused ones opened a stream


def test_go_receiver_allocates(plugin: tuple[Plugin, Path]) -> None:
    if not GOKUBELET.exists():
        pytest.skip("bench/gokubelet is not built (scripts/setup --test)")
    _servicer, plugin_dir = plugin
    with Receiver("go", str(plugin_dir)) as r:
        register(plugin_dir)
        r.wait_watch(RESOURCE, timeout=15)
        ev = r.allocate(RESOURCE, ["a", "b"])
        assert ev["response"] == {"containerResponses": [{"envs": {"IDS": "a,b"}}]}
        assert ev["t_ns_sent"] <= ev["t_ns"]
        missing = r.allocate("devplug.io/nobody", ["a"])
        assert missing["code"] == "NOT_FOUND"
