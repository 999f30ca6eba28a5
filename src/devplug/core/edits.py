"""What a container gets for its devices: nodes, bind mounts, environment, annotations.

One pure function turns an inventory entry into its :class:`ContainerEdits`; kubelet's
Allocate (``devplug.kubelet.allocation``) merges the edits of the requested IDs and the
CDI writer (``devplug.ops.cdi``) writes each entry's edits into a spec. Both front doors
render the same records, so what one hands a container the other does too.

Every path and value here was made safe when the device was claimed: templates are
expanded by ``core.rules.escape`` (device strings never add a path component, paths stay
under the rule's literal prefix, values have no control characters and at most 511 bytes),
and a device whose templates or node paths fail is refused before it gets an entry
(``claims.refusal``). So what both front doors render needs no check of its own.

Device nodes are keyed by container path, so the ``SHARE`` copies of one device (or a
symlink that is also another entry's devnode) never appear twice. Symlinks and the USB
node are bound from the host path of the node itself (the current devnode for a
symlink), because container runtimes such as containerd refuse a symlink as a device
host path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from .inventory import Entry
from .rules.model import OPT_SYMLINKS, OPT_USB_NODE


@attrs.frozen(slots=True)
class DeviceNode:
    host_path: str
    container_path: str
    permissions: str


@attrs.frozen(slots=True)
class BindMount:
    host_path: str
    container_path: str
    read_only: bool = False


@attrs.frozen(slots=True)
class ContainerEdits:
    """``listed`` are the container paths the resource's default variable names."""

    devices: tuple[DeviceNode, ...] = ()
    mounts: tuple[BindMount, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    listed: tuple[str, ...] = ()


def env_name(resource: str) -> str:
    """``devplug.io/ftdi-serial`` → ``DEVPLUG_FTDI_SERIAL``: the default variable naming
    the container paths of the allocated devices."""
    short = resource.rsplit("/", 1)[-1]
    return "DEVPLUG_" + re.sub(r"[^A-Za-z0-9]", "_", short).upper()


def entry_edits(entry: Entry) -> ContainerEdits:
    """The edits one entry asks for, in a stable order."""
    claim = entry.claim
    nodes: dict[str, DeviceNode] = {}
    listed: list[str] = []

    def add(host: str, container: str) -> None:
        nodes.setdefault(container, DeviceNode(host, container, claim.permissions))

    if entry.devnode:
        primary = claim.container_path or entry.devnode
        add(entry.devnode, primary)
        listed.append(primary)
        if OPT_SYMLINKS in claim.options:
            for link in entry.symlinks:
                add(entry.devnode, link)
        if OPT_USB_NODE in claim.options and entry.usb_node:
            add(entry.usb_node, entry.usb_node)
    mounts: dict[str, BindMount] = {}
    for m in claim.mounts:
        mounts.setdefault(m.container_path, BindMount(m.host_path, m.container_path, m.read_only))
        if not entry.devnode:
            listed.append(m.container_path)
    return ContainerEdits(
        devices=tuple(nodes.values()),
        mounts=tuple(mounts.values()),
        envs=claim.envs,
        annotations=claim.annotations,
        listed=tuple(dict.fromkeys(listed)),
    )


def _merged(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Ordered key → distinct values joined with commas, so per-device values all survive."""
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        seen = values.setdefault(key, [])
        if value not in seen:
            seen.append(value)
    return tuple((k, ",".join(v)) for k, v in values.items())


def merge(resource: str, entries: Sequence[Entry]) -> ContainerEdits:
    """The edits of several entries for one container (Allocate), plus the resource's
    default variable listing the container paths (unless a rule set that variable)."""
    devices: dict[str, DeviceNode] = {}
    mounts: dict[str, BindMount] = {}
    envs: list[tuple[str, str]] = []
    annotations: list[tuple[str, str]] = []
    listed: dict[str, None] = {}
    for entry in entries:
        e = entry_edits(entry)
        for d in e.devices:
            devices.setdefault(d.container_path, d)
        for m in e.mounts:
            mounts.setdefault(m.container_path, m)
        envs += e.envs
        annotations += e.annotations
        listed.update(dict.fromkeys(e.listed))
    env = dict(_merged(envs))
    env.setdefault(env_name(resource), ",".join(listed))
    return ContainerEdits(
        devices=tuple(devices.values()),
        mounts=tuple(mounts.values()),
        envs=tuple(env.items()),
        annotations=_merged(annotations),
        listed=tuple(listed),
    )
