"""What kubelet gets back from Allocate, GetPreferredAllocation and PreStartContainer.

Pure functions of inventory entries (the only I/O is the optional ``exists`` probe that
PreStartContainer takes as a parameter), so the gRPC servicer stays a thin shell. What a
container gets is decided in ``devplug.core.edits``; this module only renders it as
protobuf.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

from ..core.edits import env_name, merge
from ..core.inventory import Entry
from . import api_pb2
from .transport import Status

__all__ = ["DeviceRequestError", "allocate", "check_present", "container_response", "env_name",
           "preferred", "resolve"]

CdiNames = Callable[[Entry], list[str]]
Lookup = Callable[[str], Optional[Entry]]


class DeviceRequestError(Exception):
    """A request kubelet made that we must refuse, with the gRPC status to refuse it with."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve(resource: str, ids: Iterable[str], lookup: Lookup, *, healthy: bool = True) -> list[Entry]:
    """The entries behind ``ids``; an unknown ID is INVALID_ARGUMENT, an unhealthy one
    FAILED_PRECONDITION (kubelet should never ask for either: it means a race with an
    unplug, and the container must not start without its device)."""
    entries = []
    for device_id in ids:
        entry = lookup(device_id)
        if entry is None:
            raise DeviceRequestError(
                Status.INVALID_ARGUMENT,
                f"unknown device {device_id!r} for resource {resource}",
            )
        if healthy and not entry.healthy:
            raise DeviceRequestError(
                Status.FAILED_PRECONDITION,
                f"device {device_id!r} of resource {resource} is unhealthy (unplugged or missing)",
            )
        entries.append(entry)
    return entries


def container_response(
    resource: str, entries: Sequence[Entry], cdi: Optional[CdiNames] = None
) -> api_pb2.ContainerAllocateResponse:
    """Devices, mounts, envs, annotations (``devplug.core.edits``) and CDI names for one container.

    The core hands over only strings protobuf can encode (``core.rules.escape``, refused
    devices); should one slip through anyway, the answer is FAILED_PRECONDITION naming the
    devices, never an exception gRPC reports as UNKNOWN."""
    edits = merge(resource, entries)
    cdi_names: dict[str, None] = {}
    if cdi is not None:
        for entry in entries:
            cdi_names.update(dict.fromkeys(cdi(entry)))
    try:
        return api_pb2.ContainerAllocateResponse(
            envs=dict(edits.envs),
            mounts=[api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                    for m in edits.mounts],
            devices=[api_pb2.DeviceSpec(container_path=d.container_path, host_path=d.host_path,
                                        permissions=d.permissions) for d in edits.devices],
            annotations=dict(edits.annotations),
            cdi_devices=[api_pb2.CDIDevice(name=n) for n in cdi_names],
        )
    except UnicodeEncodeError:
        ids = ", ".join(repr(e.id) for e in entries)
        raise DeviceRequestError(
            Status.FAILED_PRECONDITION,
            f"devices {ids} of resource {resource}: a path or value is not valid UTF-8",
        ) from None


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
    requests); unhealthy IDs only as a last resort, IDs devplug does not know never (kubelet
    fills the rest itself). Ties break by the smallest device ID. Only IDs of ``available``
    are ever returned; a request kubelet could not have meant (a size outside
    1..len(available), must-include IDs that are not available or more than the size) is
    INVALID_ARGUMENT.
    """
    offered = dict.fromkeys(available)
    if not 1 <= size <= len(offered):
        raise DeviceRequestError(Status.INVALID_ARGUMENT,
                                 f"allocation size {size} is outside 1..{len(offered)} (the available IDs)")
    missing = [i for i in must_include if i not in offered]
    if missing:
        raise DeviceRequestError(Status.INVALID_ARGUMENT,
                                 f"must-include IDs {missing!r} are not among the available IDs")
    if len(set(must_include)) > size:
        raise DeviceRequestError(Status.INVALID_ARGUMENT,
                                 f"{len(set(must_include))} must-include IDs exceed the size {size}")
    chosen: dict[str, None] = dict.fromkeys(must_include)
    need = size - len(chosen)
    if need <= 0:
        return list(chosen)

    # One pass: healthy candidates grouped by topology (a device without one is a group
    # of its own), the rest kept aside.
    groups: dict[tuple[str, str], list[str]] = {}
    rest: list[str] = []
    for device_id in offered:
        if device_id in chosen:
            continue
        e = lookup(device_id)
        if e is None:
            continue
        if not e.healthy:
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
                    Status.FAILED_PRECONDITION,
                    f"device {entry.id!r} of resource {resource}: {path} is gone",
                )
