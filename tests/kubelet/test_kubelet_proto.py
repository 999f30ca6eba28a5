"""The generated v1beta1 code: wire-compatible field numbers, and reproducible generation."""

from __future__ import annotations

import filecmp
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devplug.kubelet import api_pb2, podresources_pb2

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "devplug" / "kubelet"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py",
             "podresources_pb2.py", "podresources_pb2.pyi", "podresources_pb2_grpc.py")

# kubelet's k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto, message by message.
EXPECTED_FIELDS = {
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "Empty": {},
    "ListAndWatchResponse": {"devices": 1},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "PreStartContainerRequest": {"devices_ids": 1},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    },
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "CDIDevice": {"name": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
}

EXPECTED_METHODS = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse", False),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}


def test_package_messages_and_field_numbers_match_kubelet():
    fd = api_pb2.DESCRIPTOR
    assert fd.package == "v1beta1"
    assert set(fd.message_types_by_name) == set(EXPECTED_FIELDS)
    for name, fields in EXPECTED_FIELDS.items():
        msg = fd.message_types_by_name[name]
        assert {f.name: f.number for f in msg.fields} == fields, name


# kubelet's k8s.io/kubelet/pkg/apis/podresources/v1/api.proto (the messages List uses).
EXPECTED_PODRESOURCES = {
    "ListPodResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": 1},
    "PodResources": {"name": 1, "namespace": 2, "containers": 3},
    "ContainerResources": {"name": 1, "devices": 2},
    "ContainerDevices": {"resource_name": 1, "device_ids": 2},
}


def test_podresources_messages_and_service_match_kubelet():
    fd = podresources_pb2.DESCRIPTOR
    assert fd.package == "v1"
    assert set(fd.message_types_by_name) == set(EXPECTED_PODRESOURCES)
    for name, fields in EXPECTED_PODRESOURCES.items():
        assert {f.name: f.number for f in fd.message_types_by_name[name].fields} == fields, name
    (method,) = fd.services_by_name["PodResourcesLister"].methods
    assert (method.name, method.input_type.name, method.output_type.name) == (
        "List", "ListPodResourcesRequest", "ListPodResourcesResponse")


def test_map_fields_and_services_match_kubelet():
    car = api_pb2.DESCRIPTOR.message_types_by_name["ContainerAllocateResponse"]
    for name in ("envs", "annotations"):
        assert car.fields_by_name[name].message_type.GetOptions().map_entry
    assert api_pb2.DESCRIPTOR.message_types_by_name["NUMANode"].fields_by_name["ID"].type == 3  # int64
    for service, methods in EXPECTED_METHODS.items():
        sd = api_pb2.DESCRIPTOR.services_by_name[service]
        got = {
            m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in sd.methods
        }
        assert got == methods


def test_wire_bytes_are_what_kubelet_expects():
    # Field 5 (cdi_devices), length-delimited, holding field 1 (name): 0x2a len 0x0a len "a/b=c".
    raw = api_pb2.ContainerAllocateResponse(cdi_devices=[api_pb2.CDIDevice(name="a/b=c")]).SerializeToString()
    assert raw == b"\x2a\x07\x0a\x05a/b=c"
    raw = api_pb2.RegisterRequest(version="v1beta1").SerializeToString()
    assert raw == b"\x0a\x07v1beta1"


def _generator_mismatch() -> str | None:
    """Why regeneration cannot reproduce the committed files here, or None."""
    if importlib.util.find_spec("grpc_tools") is None:
        return "grpcio-tools is not installed"
    m = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (PKG / "api_pb2_grpc.py").read_text())
    installed = importlib.metadata.version("grpcio-tools")
    if m is None or m.group(1) != installed:
        # Output embeds the generator's version: only the same grpcio-tools reproduces it.
        return f"committed code is from grpcio-tools {m and m.group(1)}, installed {installed}"
    return None


@pytest.mark.skipif(_generator_mismatch() is not None, reason=str(_generator_mismatch()))
def test_generation_is_reproducible(tmp_path):
    out = tmp_path / "gen"
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(out)], check=True, env=env)
    for name in GENERATED:
        assert filecmp.cmp(PKG / name, out / name, shallow=False), (
            f"{name} differs from scripts/gen_proto.sh output: regenerate and commit"
        )


def test_generated_service_module_imports_inside_the_package():
    # The committed service module must use a relative import, not a top-level `api_pb2`.
    for name in ("api", "podresources"):
        text = (PKG / f"{name}_pb2_grpc.py").read_text()
        assert f"from . import {name}_pb2 as {name}__pb2" in text
        assert f"\nimport {name}_pb2" not in text


def test_hand_registered_handlers_cover_the_service_and_encode_like_protobuf():
    """The h2 server's method table (servicer.DevicePluginService.methods) is written by hand,
    not generated: it must cover the service, stream exactly where the proto streams, and the
    pre-encoded lists it sends must be what protobuf encodes."""
    from devplug.core.inventory import Inventory
    from devplug.kubelet import listing, servicer as sv
    from devplug.kubelet.transport import frame

    service = sv.DevicePluginService("devplug.io/x", Inventory())
    sd = api_pb2.DESCRIPTOR.services_by_name["DevicePlugin"]
    assert sv.SERVICE == sd.full_name == "v1beta1.DevicePlugin"
    assert set(service.methods) == {f"/{sd.full_name}/{m.name}".encode() for m in sd.methods}
    for m in sd.methods:
        method = service.methods[f"/{sd.full_name}/{m.name}".encode()]
        assert (method.stream is not None, method.unary is not None) == (m.server_streaming, not m.server_streaming)
    cache: dict = {}
    devices = [("a", "Healthy"), ("b-1", "Unhealthy"), ("a", "Healthy")]
    joined = b"".join(listing.device_chunks(cache, i)[h == "Healthy"] for i, h in devices)
    want = api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=i, health=h) for i, h in devices])
    assert joined == want.SerializeToString()
    assert api_pb2.ListAndWatchResponse.FromString(joined) == want
    assert service._list.current() == (0, frame(b""))  # an empty resource lists no device
