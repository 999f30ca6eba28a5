"""What kubelet gets back from Allocate, GetPreferredAllocation and PreStartContainer.

Pure functions of inventory entries (the only I/O is the optional ``exists`` probe that
PreStartContainer takes as a parameter), so the gRPC servicer stays a thin shell and the
rules behind a container's devices, mounts and environment are testable without gRPC.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import attrs
import grpc

from ..inventory import Entry
from . import api_pb2

#: Rule OPTIONS words that add more device nodes to a container.
OPT_SYMLINKS = "symlinks"
OPT_USB_NODE = "usb_node"

CdiNames = Callable[[Entry], list[str]]
Lookup = Callable[[str], Optional[Entry]]


class DeviceRequestError(Exception):
    """A request kubelet made that we must refuse, with the gRPC status to refuse it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def env_name(resource: str) -> str:
    """``devplug.io/ftdi-serial`` → ``DEVPLUG_FTDI_SERIAL``: the default variable naming
    the container paths of the allocated devices."""
    short = resource.rsplit("/", 1)[-1]
    return "DEVPLUG_" + re.sub(r"[^A-Za-z0-9]", "_", short).upper()


def resolve(resource: str, ids: Iterable[str], lookup: Lookup, *, healthy: bool = True) -> list[Entry]:
    """The entries behind ``ids``; an unknown ID is INVALID_ARGUMENT, an unhealthy one
    FAILED_PRECONDITION (kubelet should never ask for either: it means a race with an
    unplug, and the container must not start without its device)."""
    entries = []
    for device_id in ids:
        entry = lookup(device_id)
        if entry is None:
            raise DeviceRequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown device {device_id!r} for resource {resource}",
            )
        if healthy and not entry.healthy:
            raise DeviceRequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {device_id!r} of resource {resource} is unhealthy (unplugged or missing)",
            )
        entries.append(entry)
    return entries


@attrs.define
class _Merged:
    """Ordered key → distinct values; joined with commas so per-device values all survive."""

    values: dict[str, list[str]] = attrs.field(factory=dict)

    def add(self, key: str, value: str) -> None:
        seen = self.values.setdefault(key, [])
        if value not in seen:
            seen.append(value)

    def result(self) -> dict[str, str]:
        return {k: ",".join(v) for k, v in self.values.items()}


def container_response(
    resource: str, entries: Sequence[Entry], cdi: Optional[CdiNames] = None
) -> api_pb2.ContainerAllocateResponse:
    """Devices, mounts, envs, annotations and CDI names for one container.

    A device node appears once per container path, so the ``SHARE`` copies of one device
    (or a symlink that is also another entry's devnode) never produce duplicates. Symlinks
    and the USB node are bound from the host path of the node itself (the current devnode
    for a symlink), because container runtimes such as containerd refuse a symlink as a
    device host path.
    """
    devices: dict[str, api_pb2.DeviceSpec] = {}
    mounts: dict[str, api_pb2.Mount] = {}
    envs = _Merged()
    annotations = _Merged()
    cdi_names: dict[str, None] = {}
    listed: dict[str, None] = {}

    def add_device(host: str, container: str, permissions: str) -> None:
        if container not in devices:
            devices[container] = api_pb2.DeviceSpec(
                container_path=container, host_path=host, permissions=permissions
            )

    for entry in entries:
        claim = entry.claim
        if entry.devnode:
            primary = claim.container_path or entry.devnode
            add_device(entry.devnode, primary, claim.permissions)
            listed[primary] = None
            if OPT_SYMLINKS in claim.options:
                for link in entry.symlinks:
                    add_device(entry.devnode, link, claim.permissions)
            if OPT_USB_NODE in claim.options and entry.usb_node:
                add_device(entry.usb_node, entry.usb_node, claim.permissions)
        for m in claim.mounts:
            if m.container_path not in mounts:
                mounts[m.container_path] = api_pb2.Mount(
                    container_path=m.container_path, host_path=m.host_path, read_only=m.read_only
                )
            if not entry.devnode:
                listed[m.container_path] = None
        for key, value in claim.envs:
            envs.add(key, value)
        for key, value in claim.annotations:
            annotations.add(key, value)
        if cdi is not None:
            for name in cdi(entry):
                cdi_names[name] = None

    env = envs.result()
    env.setdefault(env_name(resource), ",".join(listed))
    return api_pb2.ContainerAllocateResponse(
        envs=env,
        mounts=list(mounts.values()),
        devices=list(devices.values()),
        annotations=annotations.result(),
        cdi_devices=[api_pb2.CDIDevice(name=n) for n in cdi_names],
    )


def allocate(
    resource: str, request: api_pb2.AllocateRequest, lookup: Lookup, cdi: Optional[CdiNames] = None
) -> api_pb2.AllocateResponse:
    return api_pb2.AllocateResponse(
        container_responses=[
            container_response(resource, resolve(resource, creq.devices_ids, lookup), cdi)
            for creq in request.container_requests
        ]
    )


def preferred(
    available: Sequence[str], must_include: Sequence[str], size: int, lookup: Lookup
) -> list[str]:
    """A deterministic preferred allocation of ``size`` IDs out of ``available``.

    Must-include IDs come first. Then healthy devices sharing a topology group (a USB hub,
    a parent) with them; then whole groups, best fit first (the smallest group that
    covers what is still needed, else the largest, so big groups stay together for later
    requests); unhealthy or unknown IDs only as a last resort. Ties break by the
    smallest device ID.
    """
    chosen: dict[str, None] = dict.fromkeys(must_include)
    need = size - len(chosen)
    if need <= 0:
        return list(chosen)

    # One pass: healthy candidates grouped by topology (a device without one is a group
    # of its own), the rest kept aside.
    groups: dict[tuple[str, str], list[str]] = {}
    rest: list[str] = []
    for device_id in dict.fromkeys(available):
        if device_id in chosen:
            continue
        e = lookup(device_id)
        if e is None or not e.healthy:
            rest.append(device_id)
            continue
        key = ("t", e.topology) if e.topology else ("d", device_id)
        group = groups.get(key)
        if group is None:
            groups[key] = [device_id]
        else:
            group.append(device_id)
    for group in groups.values():
        group.sort()

    def take(ids: Iterable[str]) -> None:
        nonlocal need
        for device_id in ids:
            if need <= 0:
                return
            chosen[device_id] = None
            need -= 1

    wanted = set()
    for device_id in chosen:
        e = lookup(device_id)
        if e is not None and e.topology:
            wanted.add(("t", e.topology))
    for key in sorted(wanted & groups.keys()):
        take(groups.pop(key))
    while need > 0 and groups:
        fitting = [k for k, g in groups.items() if len(g) >= need]
        if fitting:
            key = min(fitting, key=lambda k: (len(groups[k]), groups[k][0]))
        else:
            key = min(groups, key=lambda k: (-len(groups[k]), groups[k][0]))
        take(groups.pop(key))
    take(sorted(rest))
    return list(chosen)


def check_present(
    resource: str, ids: Iterable[str], lookup: Lookup, exists: Callable[[str], bool] = os.path.exists
) -> None:
    """PreStartContainer: every device node (or host path, for HOSTPATH entries) must still
    be there; raises FAILED_PRECONDITION naming the first one that is not."""
    for entry in resolve(resource, ids, lookup, healthy=False):
        paths = [entry.devnode] if entry.devnode else [m.host_path for m in entry.claim.mounts]
        for path in paths:
            if not exists(path):
                raise DeviceRequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"device {entry.id!r} of resource {resource}: {path} is gone",
                )
