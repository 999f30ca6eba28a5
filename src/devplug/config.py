"""Every default of devplug in one place, and the daemon's configuration record.

The command line (``devplug.cli``) reads its flag defaults from here and the daemon
(``devplug.daemon``) takes a :class:`Config`; adapters take explicit arguments, so a
default is written once.
"""

from __future__ import annotations

from importlib import resources
from typing import Optional

import attrs

from .core.rules.model import DEFAULT_DOMAIN

DOMAIN = DEFAULT_DOMAIN
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEBUG_SOCKET = "/run/devplug/debug.sock"
UDEV_SOURCE = "auto"
UDEV_SOURCES = ("auto", "udev", "kernel")
#: Netlink receive buffer asked for (the kernel doubles it; above net.core.rmem_max it
#: needs CAP_NET_ADMIN). A thousand devices plugged at once fit with room to spare.
NETLINK_BUFFER = 128 * 1024 * 1024
#: The kernel source reads udev's database with each event, when it exists; while it does
#: not (no udevd on the node), whether it appeared is looked at again at most this often
#: (seconds) instead of failing an open per event.
UDEV_DB_RECHECK = 1.0
#: Largest rules set devplug reads (all files together). Parsed rules cost about 6x their
#: size in memory for typical rules and up to ~40x for tiny rules that all differ, so 1 MiB
#: (~10,000 typical rules) stays inside the DaemonSet's memory limit whatever the content.
MAX_RULES_BYTES = 1024 * 1024
LOG_LEVEL = "info"
LOG_FORMAT = "text"
#: kubelet's PodResources API: which pod holds which device ID.
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
#: An Unhealthy ID no pod holds is forgotten after this many seconds (a replug within it
#: keeps the ID healthy again; kubelet's view and a pod's request both survive a blip).
FORGET_AFTER = 300.0
#: At most this many Unhealthy IDs no pod is known to hold, per resource (oldest go first):
#: bounds memory and every ListAndWatch message while PodResources is unreachable.
MAX_UNHEALTHY = 256


def parse_bytes(text: str) -> int:
    """``1048576``, ``512K``, ``1M``, ``1MiB``, ``2G`` → bytes (binary multiples); ValueError."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    value = int(t) * mult
    if value <= 0:
        raise ValueError(text)
    return value


def default_rules_path() -> str:
    """The rules directory shipped inside the package (``devplug/default_rules``)."""
    return str(resources.files("devplug") / "default_rules")


@attrs.frozen
class Config:
    """What ``devplug run`` was asked to do (flags and environment already applied)."""

    rules: tuple[str, ...] = ()
    domain: str = DOMAIN
    plugin_dir: str = PLUGIN_DIR
    debug_socket: Optional[str] = DEBUG_SOCKET
    udev_source: str = UDEV_SOURCE
    netlink_buffer: int = NETLINK_BUFFER
    max_rules_bytes: int = MAX_RULES_BYTES
    node_name: str = ""
    metrics_address: Optional[str] = None
    pre_start_check: bool = False
    cdi_spec_dir: Optional[str] = None
    register: bool = True
    pod_resources_socket: Optional[str] = POD_RESOURCES_SOCKET
    forget_after: float = FORGET_AFTER
    max_unhealthy: int = MAX_UNHEALTHY

    @property
    def rules_paths(self) -> tuple[str, ...]:
        return self.rules or (default_rules_path(),)
