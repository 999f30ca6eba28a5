"""What udev's match keys read from the machine besides the device record.

``TEST`` stats paths (and lists a directory for a ``/*/`` component), ``SYSCTL{}`` reads
``/proc/sys``, ``ATTR{[subsystem/sysname]attr}`` and ``TEST=="[subsystem/sysname]…"`` find
another device, ``CONST{arch}``/``CONST{virt}`` ask what machine this is. The core does no
I/O, so the caller hands these in: ``devplug.sources.system.host()`` answers for the real
machine. A :class:`Host` is itself a :data:`~devplug.core.device.PathMode` (calling it stats
a path), so it travels everywhere a ``path_mode`` already does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from ..device import PathMode


def _none(*_args: object) -> None:
    return None


class Host:
    """The machine as rules see it; every answer is ``None`` when unknown or absent."""

    __slots__ = ("path_mode", "list_dir", "sysctl", "device_syspath", "read_attr", "arch", "virt")

    def __init__(self, path_mode: PathMode = _none, *,
                 list_dir: Callable[[str], Optional[Sequence[str]]] = _none,
                 sysctl: Callable[[str], Optional[str]] = _none,
                 device_syspath: Callable[[str, str], Optional[str]] = _none,
                 read_attr: Callable[[str, str], Optional[str]] = _none,
                 arch: Callable[[], Optional[str]] = _none,
                 virt: Callable[[], Optional[str]] = _none) -> None:
        self.path_mode = path_mode  # st_mode of a path (symlinks followed), for TEST
        self.list_dir = list_dir  # directory entries in the order readdir gives them
        self.sysctl = sysctl  # raw content of /proc/sys/<normalized name>
        self.device_syspath = device_syspath  # (subsystem, sysname) -> syspath, as sd-device finds it
        # (syspath, attribute) -> value; "" when missing or not permitted, None when reading
        # fails otherwise (udev_resolve_subsys_kernel)
        self.read_attr = read_attr
        self.arch = arch  # systemd's architecture name ("x86-64", "arm64"…)
        self.virt = virt  # systemd's virtualization name ("none", "kvm", "docker"…)

    def __call__(self, path: str) -> Optional[int]:
        return self.path_mode(path)

    def const(self, name: str) -> Optional[str]:
        return self.arch() if name == "arch" else self.virt() if name == "virt" else None


def as_host(path_mode: Optional[PathMode]) -> Host:
    """The Host a caller passed as ``path_mode``, or one that only stats (or knows nothing)."""
    if isinstance(path_mode, Host):
        return path_mode
    return Host(path_mode) if path_mode is not None else NO_HOST


NO_HOST = Host()


def sysctl_normalize(name: str) -> str:
    """systemd's ``sysctl_normalize``: ``net.ipv4.ip_forward`` → ``net/ipv4/ip_forward``.

    When the first separator is a dot, dots and slashes swap (``net.ipv4.conf.eth0/1.rp_filter``
    names the interface ``eth0.1``); when it is a slash the name is already a path.
    """
    n = name
    first = next((c for c in n if c in "./"), "")
    if first == ".":
        n = n.translate(str.maketrans("./", "/."))
    parts = [p for p in n.split("/") if p and p != "."]
    return "/".join(parts)


def split_subsys_kernel(spec: str) -> Optional[tuple[str, str, Optional[str]]]:
    """``[subsystem/sysname]attribute`` → its three parts (attribute None when empty), as
    udev's ``udev_resolve_subsys_kernel`` splits it; None when it is not of that form."""
    if not spec.startswith("["):
        return None
    subsystem, slash, rest = spec[1:].partition("/")
    if not slash:
        return None
    sysname, bracket, attr = rest.partition("]")
    if not bracket:
        return None
    if attr.startswith("/"):
        attr = attr[1:]
    return subsystem, sysname, attr or None
