"""The machine as udev's match keys read it: the :class:`~devplug.core.rules.host.Host` seam.

``TEST`` stats paths and lists directories, ``SYSCTL{}`` reads ``/proc/sys``,
``[subsystem/sysname]`` finds a device the way ``sd_device_new_from_subsystem_sysname``
does, ``CONST{arch}`` maps ``uname -m`` to systemd's architecture names and ``CONST{virt}``
asks ``systemd-detect-virt`` (the same detection udevd runs), falling back to the common
container and DMI checks when it is not installed (a container image may lack it).
Everything is read on demand (only rules that use a key pay for it) and the two constants
once per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from typing import Optional

from ..core.rules.host import Host
from .fs import path_mode

_SYSCTL_MAX = 64 * 1024

# uname -m -> systemd's architecture name (architecture.c); endianness settles the rest.
_ARCH = {
    "x86_64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
    "aarch64": "arm64", "aarch64_be": "arm64-be", "ppc64": "ppc64", "ppc64le": "ppc64-le", "ppc": "ppc",
    "ppcle": "ppc-le", "s390x": "s390x", "s390": "s390", "sparc64": "sparc64", "sparc": "sparc",
    "riscv64": "riscv64", "riscv32": "riscv32", "loongarch64": "loongarch64", "alpha": "alpha",
    "ia64": "ia64", "parisc64": "parisc64", "parisc": "parisc", "sh": "sh", "sh64": "sh64", "m68k": "m68k",
    "tilegx": "tilegx", "cris": "cris", "nios2": "nios2", "arc": "arc", "arceb": "arc-be",
}
_LITTLE = sys.byteorder == "little"
# DMI vendor/product strings -> systemd's virtualization names (virt.c's detect_vm_dmi table).
_DMI = (("KVM", "kvm"), ("OpenStack", "kvm"), ("KubeVirt", "kvm"), ("Amazon EC2", "amazon"), ("QEMU", "qemu"),
        ("VMware", "vmware"), ("VMW", "vmware"), ("innotek GmbH", "oracle"), ("VirtualBox", "oracle"),
        ("Oracle Corporation", "oracle"), ("Xen", "xen"), ("Bochs", "bochs"), ("Parallels", "parallels"),
        ("BHYVE", "bhyve"), ("Hyper-V", "microsoft"), ("Apple Virtualization", "apple"),
        ("Google Compute Engine", "google"))
_CONTAINERS = frozenset({"docker", "podman", "lxc", "lxc-libvirt", "systemd-nspawn", "rkt", "wsl", "proot",
                         "pouch", "openvz"})


def architecture(machine: Optional[str] = None) -> str:
    m = machine or os.uname().machine
    if m in _ARCH:
        return _ARCH[m]
    if m.startswith("arm"):
        return "arm" if not m.endswith("b") else "arm-be"
    if m.startswith("mips64"):
        return "mips64-le" if _LITTLE else "mips64"
    if m.startswith("mips"):
        return "mips-le" if _LITTLE else "mips"
    return m


def _read(path: str, limit: int = 4096) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "surrogateescape")
    except OSError:
        return None


def _container() -> Optional[str]:
    name = (_read("/run/systemd/container") or "").strip()
    if not name:
        environ = _read("/proc/1/environ", 65536) or ""
        name = next((v.partition("=")[2] for v in environ.split("\0") if v.startswith("container=")), "")
    if not name and os.path.exists("/proc/vz") and not os.path.exists("/proc/bc"):
        name = "openvz"
    if not name:
        osrelease = _read("/proc/sys/kernel/osrelease") or ""
        if "Microsoft" in osrelease or "WSL" in osrelease:
            name = "wsl"
    if not name:
        return None
    return name if name in _CONTAINERS else "container-other"


def _vm() -> str:
    if (_read("/sys/hypervisor/type") or "").strip() == "xen":
        return "xen"
    for attr in ("product_name", "sys_vendor", "board_vendor", "bios_vendor", "product_version"):
        value = _read(f"/sys/class/dmi/id/{attr}") or ""
        for prefix, name in _DMI:
            if value.startswith(prefix):
                return name
    return "none"


@functools.lru_cache(maxsize=1)
def virtualization() -> str:
    """systemd's virtualization name (``none``, ``kvm``, ``docker``…), containers first."""
    tool = shutil.which("systemd-detect-virt")
    if tool:
        try:
            r = subprocess.run([tool], capture_output=True, text=True, timeout=10)
            out = r.stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return _container() or _vm()


def sysctl(name: str) -> Optional[str]:
    """``/proc/sys/<name>`` (already normalized), None when it does not exist or is unreadable."""
    if not name or name.startswith("/") or ".." in name.split("/"):
        return None
    return _read(f"/proc/sys/{name}", _SYSCTL_MAX)


def device_syspath(subsystem: str, sysname: str, *, sys_root: str = "/sys") -> Optional[str]:
    """The syspath ``sd_device_new_from_subsystem_sysname`` finds, or None."""
    name = sysname.replace("/", "!")
    if not subsystem or not name or "/" in subsystem or name in (".", ".."):
        return None
    if subsystem == "subsystem":
        candidates = [f"{sys_root}/bus/{name}", f"{sys_root}/class/{name}"]
    elif subsystem == "module":
        candidates = [f"{sys_root}/module/{name}"]
    elif subsystem == "drivers":
        bus, colon, driver = name.partition(":")
        candidates = [f"{sys_root}/bus/{bus}/drivers/{driver}"] if colon and bus and driver else []
    else:
        candidates = [f"{sys_root}/bus/{subsystem}/devices/{name}", f"{sys_root}/class/{subsystem}/{name}",
                      f"{sys_root}/firmware/{subsystem}/{name}"]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.realpath(c)
    return None


_LINK_ATTRS = frozenset({"driver", "subsystem", "module"})


def read_attr(syspath: str, attr: str) -> Optional[str]:
    """Another device's attribute as ``udev_resolve_subsys_kernel`` reads it: missing or not
    permitted reads as ``""``; any other failure (a directory, a symlink other than
    driver/subsystem/module, an I/O error such as a power attribute the device lacks) is
    None, and the key then fails whatever its operator."""
    path = os.path.join(syspath, attr)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    except PermissionError:
        return ""
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        if attr not in _LINK_ATTRS:
            return None
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None
    if stat.S_ISDIR(st.st_mode):
        return None
    if not st.st_mode & stat.S_IRUSR:
        return ""
    try:
        with open(path, "rb", buffering=0) as f:
            raw = f.read(4096)
    except (FileNotFoundError, PermissionError):
        return ""
    except OSError:
        return None
    return raw.rstrip(b"\n\r").split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def list_dir(path: str) -> Optional[Sequence[str]]:
    """Directory entries in readdir order (udev takes the first that fits), None on error."""
    try:
        with os.scandir(path) as it:
            return [e.name for e in it]
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def host() -> Host:
    """The real machine, for the daemon and ``devplug rules test``."""
    return Host(path_mode, list_dir=list_dir, sysctl=sysctl, device_syspath=device_syspath, read_attr=read_attr,
                arch=functools.lru_cache(maxsize=1)(architecture), virt=virtualization)
