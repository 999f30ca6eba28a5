"""Build (once, cached) what the USB test guest boots: an ELF kernel and a busybox initramfs.

Why these two and nothing else: the guest's root filesystem is the host's own ``/`` shared
over virtio-9p (see ``init.sh``), so the guest runs the host's systemd-udevd, Python and the
project's venv unchanged; only a kernel with a USB stack (Debian's ``linux-image-amd64``, whose
modules are installed in the host's ``/lib/modules``) and a tiny initramfs that can mount that
root are needed.

- The kernel: QEMU boots the *uncompressed* ELF ``vmlinux`` directly through its PVH entry
  point (Debian builds with ``CONFIG_PVH``), which skips the firmware and the in-guest
  decompression, several seconds under TCG. It is extracted from ``/boot/vmlinuz-<version>``
  (a bzImage whose payload is an xz or gzip stream that decompresses to an ELF file).
- The initramfs: ``/init`` (``init.sh``), a static busybox and the modules the 9p root needs,
  in dependency order from ``modprobe --show-depends``. Written as a newc cpio by this
  module, gzip-compressed.

Artefacts live in ``$DEVPLUG_USB_GUEST_CACHE`` (default ``~/.cache/devplug-usb-guest``),
named by kernel version and a hash of everything that goes into them, so a new kernel package
or an edited ``init.sh`` builds new ones and an unchanged setup reuses them across sessions.
A file lock makes concurrent test sessions build once.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import zlib
from pathlib import Path
from typing import Optional

import attrs

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# What /init needs before the 9p root is mounted; the rest comes from the root's /lib/modules.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
BUILDER_VERSION = "1"  # bump when this file changes what it writes


class GuestUnavailable(Exception):
    """The host cannot run the guest (no QEMU, no guest kernel); the message says what to install."""


@attrs.frozen
class GuestImage:
    version: str
    vmlinux: Path
    initramfs: Path


def cache_dir() -> Path:
    env = os.environ.get("DEVPLUG_USB_GUEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "devplug-usb-guest"


def busybox() -> Path:
    for p in BUSYBOX_CANDIDATES:
        path = Path(p)
        if path.exists() and _is_static(path):
            return path
    raise GuestUnavailable("no static busybox (Debian package busybox-static)")


def _is_static(path: Path) -> bool:
    # A static ELF has no PT_INTERP; `busybox` from the dynamic package would need the host's
    # libc inside the initramfs.
    data = path.read_bytes()[:4096]
    return data[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in data and b"ld-linux-x86-64" not in data


def kernel_version() -> str:
    """The newest kernel with both an image in /boot and modules for the USB stack.

    ``DEVPLUG_USB_GUEST_KERNEL`` picks one explicitly.
    """
    wanted = os.environ.get("DEVPLUG_USB_GUEST_KERNEL")
    candidates = []
    for img in Path("/boot").glob("vmlinuz-*"):
        version = img.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / version / "modules.dep").exists():
            candidates.append(version)
    if wanted:
        if wanted not in candidates:
            raise GuestUnavailable(f"DEVPLUG_USB_GUEST_KERNEL={wanted}: no /boot/vmlinuz and modules for it")
        return wanted
    if not candidates:
        raise GuestUnavailable("no guest kernel: /boot/vmlinuz-* with /lib/modules (Debian package linux-image-amd64)")
    return max(candidates, key=_version_key)


def _version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", version))


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage: try each xz / gzip stream until one gives an ELF."""
    for magic, decompress in ((b"\xfd7zXZ\x00", _xz), (b"\x1f\x8b\x08", _gzip)):
        start = 0
        while (at := bzimage.find(magic, start)) >= 0:
            start = at + 1
            try:
                out = decompress(bzimage[at:])
            except (lzma.LZMAError, zlib.error, EOFError, OSError):
                continue
            if out[:4] == b"\x7fELF":
                return out
    raise GuestUnavailable("could not extract an ELF vmlinux (kernel not xz/gzip compressed?)")


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def module_files(version: str, names: tuple[str, ...] = INITRAMFS_MODULES) -> list[Path]:
    """The .ko files ``names`` need, each once, dependencies first."""
    if shutil.which("modprobe") is None:
        raise GuestUnavailable("modprobe is missing (Debian package kmod)")
    seen: list[Path] = []
    for name in names:
        out = subprocess.run(["modprobe", "-S", version, "--show-depends", name],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise GuestUnavailable(f"kernel {version} has no module {name}: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and Path(parts[1]) not in seen:
                seen.append(Path(parts[1]))
    return seen


class Cpio:
    """A newc (SVR4, no CRC) cpio archive, the format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._buf.write(header + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def build_initramfs(version: str) -> bytes:
    """The gzip-compressed initramfs: /init, busybox, the root's modules and their order."""
    bb = busybox()
    mods = module_files(version)
    init = INIT_SCRIPT.read_bytes()
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "modules", "newroot", "lower", "rw"):
        archive.dir(d)
    archive.file("bin/busybox", bb.read_bytes(), 0o755)
    archive.file("init", init, 0o755)
    order = []
    for m in mods:
        archive.file(f"modules/{m.name}", m.read_bytes())
        order.append(m.name)
    archive.file("modules.order", ("\n".join(order) + "\n").encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def _initramfs_key(version: str) -> str:
    """A hash of everything the initramfs is made of (the script, busybox, the modules)."""
    bb = busybox()
    h = hashlib.sha256(BUILDER_VERSION.encode() + INIT_SCRIPT.read_bytes())
    h.update(hashlib.sha256(bb.read_bytes()).digest())
    for m in module_files(version):
        h.update(str(m).encode() + b"\0" + str(m.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


# What the guest imports besides the project: the agent, the kubelet stand-in, devplug's deps.
WARM_MODULES = ("asyncio", "json", "subprocess", "threading", "concurrent.futures", "logging",
                "argparse", "grpc", "grpc.aio", "google.protobuf.json_format", "attrs", "pyudev",
                "trio", "h2", "h11", "tests.kubelet_standin")
WARM_SCRIPT = """
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
import devplug
for info in pkgutil.walk_packages(devplug.__path__, "devplug."):
    try:
        importlib.import_module(info.name)
    except Exception:
        pass
"""


def warm_bytecode(python: str, repo: Path, cache: Optional[Path] = None) -> Path:
    """Compile what the guest's Python processes import into a private bytecode cache.

    Why: under TCG, compiling the ~200 modules that ``import grpc, trio, pyudev`` needs takes
    the guest about 20 s, while the host does it natively in a second or two. The guest runs
    with ``PYTHONPYCACHEPREFIX`` pointing at this directory (it sees it through the shared
    root), so it finds them compiled. A prefix, rather than ``__pycache__`` beside the
    sources, leaves the host's system directories alone and works when the host runs with
    ``PYTHONDONTWRITEBYTECODE``. The host imports every devplug module (whatever the layout)
    and :data:`WARM_MODULES`; anything else the guest imports compiles there, once per boot.
    """
    prefix = (cache or cache_dir()) / "pycache"
    prefix.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo)])
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([python, "-c", WARM_SCRIPT, *WARM_MODULES], env=env, cwd=str(repo),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=300)
        subprocess.run([python, "-m", "compileall", "-q", str(repo / "tests"), str(repo / "bench")],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       timeout=300)
    return prefix


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_image(cache: Optional[Path] = None) -> GuestImage:
    """The cached kernel and initramfs for this host, built if missing (under a file lock)."""
    version = kernel_version()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    bzimage = Path("/boot") / f"vmlinuz-{version}"
    st = bzimage.stat()
    kernel_key = hashlib.sha256(f"{BUILDER_VERSION}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    vmlinux = cache / f"vmlinux-{version}-{kernel_key}"
    initramfs = cache / f"initramfs-{version}-{_initramfs_key(version)}.cpio.gz"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not vmlinux.exists():
            _write_atomic(vmlinux, extract_vmlinux(bzimage.read_bytes()))
        if not initramfs.exists():
            _write_atomic(initramfs, build_initramfs(version))
        # Artefacts of other kernels or older init scripts are dead weight: drop them.
        for old in cache.iterdir():
            if old.name.startswith(("vmlinux-", "initramfs-")) and old not in (vmlinux, initramfs):
                old.unlink(missing_ok=True)
    return GuestImage(version, vmlinux, initramfs)
