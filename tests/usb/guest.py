"""The USB test guest, host side: boot it, plug and unplug USB devices, run commands in it.

A :class:`Guest` is one QEMU process (software emulation, ``-accel tcg``: the machines this
runs on have no usable KVM) booting Debian's kernel (:mod:`tests.usb.image`) with:

- the host's ``/`` as the guest's root (9p, read-only, tmpfs overlay; ``init.sh``,
  ``stage2.sh``), so the guest runs this very checkout and its venv;
- a per-guest host directory (:attr:`Guest.xfer`) shared as ``/xfer`` (9p, ``cache=none``):
  the root is mounted ``cache=loose`` (imports are several times faster), so a file the host
  rewrites during a run may not be seen there; files exchanged while the guest runs go
  through ``/xfer``, which both sides see at once;
- an xHCI controller (``xhci``) with 8 USB 2 and 8 USB 3 ports, on which QMP plugs
  ``usb-serial`` (FTDI 0403:6001), ``usb-storage`` and ``usb-kbd`` devices at run time;
- a virtio-serial port ``devplug.agent`` where ``agent.py`` answers JSON requests.

Plugging is QMP ``device_add`` (``serial=`` always given: QEMU otherwise derives one from
the port, and the device ID devplug computes depends on it; ``always-plugged=on`` for
usb-serial: otherwise the device is attached only while a client holds its chardev).
Unplugging is ``device_del`` and waits for ``DEVICE_DELETED`` (the guest released it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Optional

import attrs

from tests.usb.image import GuestImage, GuestUnavailable, ensure_image, warm_bytecode
from tests.usb.qmp import Qmp, device_deleted

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
# Loaded before the first plug so every plug sees the same event order (see stage2.sh).
PRELOAD = ("xhci_pci", "usbserial", "ftdi_sio", "cdc_acm", "usb_storage", "uas", "sd_mod",
           "usbhid", "hid_generic", "evdev", "libcomposite", "usb_f_acm")
# Drivers udev's coldplug would load for the emulated board that no test needs: each costs
# seconds of boot under TCG (kvm_amd sees the emulated CPU's svm flag; the guest has no KVM).
BLACKLIST = ("kvm", "kvm_amd", "kvm_intel", "ccp", "floppy", "psmouse", "pcspkr", "serio_raw",
             "joydev", "snd_pcsp", "iTCO_wdt", "i2c_i801", "lpc_ich", "bochs", "drm")
BOOT_TIMEOUT = 300.0


class GuestError(Exception):
    """The agent reported an error, or the guest died."""


def _die_with_parent() -> None:
    """In the QEMU child: be killed when the test process dies, even by SIGKILL (no orphan guest)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def unavailable_reason() -> Optional[str]:
    """Why no guest can run here (what to install), or ``None``."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86; scripts/setup --test installs it)"
    try:
        from tests.usb import image

        image.kernel_version()
        image.busybox()
        image.module_files(image.kernel_version())
    except GuestUnavailable as exc:
        return f"{exc} (scripts/setup --test installs it)"
    return None


@attrs.define
class Plugged:
    """A device QMP added: its QMP id, the port, and for usb-serial the host chardev socket."""

    qdev_id: str
    driver: str
    port: int
    serial: str
    chardev: Optional[str] = None
    chardev_path: Optional[str] = None
    node: Optional[str] = None


class Guest:
    def __init__(self, image: Optional[GuestImage] = None, *, memory_mb: int = 1024,
                 preload: tuple[str, ...] = PRELOAD, python: str = sys.executable) -> None:
        self.image = image or ensure_image()
        self.workdir = Path(tempfile.mkdtemp(prefix="devplug-usb-guest-"))
        self.xfer = self.workdir / "xfer"
        self.xfer.mkdir()
        self.console = self.workdir / "console.log"
        self.plugged: dict[str, Plugged] = {}
        self._n = 0
        self._rid = 0
        self.boot_seconds: Optional[float] = None
        self.pycache = warm_bytecode(python, REPO)
        cmdline = " ".join([
            # The guest's own serial port is its console (the host's is never opened).
            "console=ttyS0", "loglevel=4", "quiet", "printk.time=1", "panic=-1", "rdinit=/init",
            "modprobe.blacklist=" + ",".join(BLACKLIST),
            f"devplug.stage2={REPO}/tests/usb/stage2.sh", f"devplug.repo={REPO}",
            f"devplug.python={python}", f"devplug.pycache={self.pycache}",
            f"devplug.modules={','.join(preload)}",
        ])
        for value in (str(REPO), python, str(self.pycache)):
            if any(c.isspace() for c in value):
                raise GuestUnavailable(f"the guest's kernel command line cannot carry {value!r} (whitespace)")
        self.argv = [
            QEMU, "-accel", "tcg", "-M", "q35", "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.image.vmlinux), "-initrd", str(self.image.initramfs), "-append", cmdline,
            "-serial", f"file:{self.console}",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=xfer,path={self.xfer},security_model=none",
            "-device", "virtio-9p-pci,fsdev=xfer,mount_tag=xfer",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=agent,path={self.workdir}/agent.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser.0,chardev=agent,name=devplug.agent",
            "-device", "qemu-xhci,id=xhci,p2=8,p3=8",
            "-qmp", f"unix:{self.workdir}/qmp.sock,server=on,wait=off",
        ]
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Optional[Qmp] = None
        self._agent: Optional[socket.socket] = None
        self._agent_buf = b""

    # -- life cycle ---------------------------------------------------------------------------
    def boot(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Start QEMU and wait for the agent's answer; returns the seconds it took."""
        t0 = time.monotonic()
        self._qemu_log = open(self.workdir / "qemu.log", "w")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        try:
            self.qmp = Qmp(str(self.workdir / "qmp.sock"), timeout=30)
            self._connect_agent(deadline=t0 + timeout)
        except Exception as exc:
            diagnostics = self.diagnostics()
            self.close()
            raise GuestError(f"the guest did not boot: {exc}\n{diagnostics}") from exc
        self.boot_seconds = time.monotonic() - t0
        return self.boot_seconds

    def _connect_agent(self, deadline: float) -> None:
        path = str(self.workdir / "agent.sock")
        while True:
            self._check_alive()
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                self._agent = s
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"no agent socket; console:\n{self.console_tail()}")
                time.sleep(0.1)
        # The agent starts late in the boot: ask until it answers. Requests written before the
        # guest opened its port are dropped by QEMU, so each try is a fresh ping.
        while True:
            self._check_alive()
            try:
                self.call("ping", wait=2.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise GuestError(f"the agent did not answer; console:\n{self.console_tail()}")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise GuestError(f"QEMU exited with {self.proc.returncode}; qemu.log:\n"
                             f"{(self.workdir / 'qemu.log').read_text()[-2000:]}\nconsole:\n{self.console_tail()}")

    def diagnostics(self) -> str:
        """QEMU's own output and the end of the guest console, for failure messages."""
        try:
            qemu = (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            qemu = ""
        return f"qemu.log:\n{qemu}\nconsole:\n{self.console_tail()}"

    def console_tail(self, n: int = 4000) -> str:
        try:
            return self.console.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Power the guest off (or kill QEMU) and remove the work directory."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                if self._agent is not None:
                    self.call("poweroff", wait=10)
                self.proc.wait(30)
            except Exception:  # noqa: BLE001 - fall through to quit/kill
                pass
        if self.proc is not None and self.proc.poll() is None:
            try:
                if self.qmp is not None:
                    self.qmp.execute("quit", timeout=5)
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if getattr(self, "_qemu_log", None) is not None:
            self._qemu_log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Guest:
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def qemu_version(self) -> str:
        assert self.qmp is not None
        v = self.qmp.execute("query-version")["qemu"]
        return f"{v['major']}.{v['minor']}.{v['micro']}"

    # -- the agent ----------------------------------------------------------------------------
    def call(self, op: str, *, wait: float = 120.0, **args: Any) -> dict[str, Any]:
        """One request to the agent; returns its reply, raises GuestError on an error reply.

        ``wait`` is how long the host waits for the reply: keep it above any ``timeout`` the
        request itself carries.
        """
        assert self._agent is not None
        self._rid += 1
        rid = self._rid
        self._agent.sendall((json.dumps({"op": op, "id": rid, **args}) + "\n").encode())
        deadline = time.monotonic() + wait
        while True:
            while b"\n" in self._agent_buf:
                line, self._agent_buf = self._agent_buf.split(b"\n", 1)
                reply = json.loads(line)
                if reply.get("id") != rid:
                    continue  # a late answer to an earlier ping that timed out
                if not reply.pop("ok"):
                    raise GuestError(f"{op}: {reply['error']}")
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"agent: no reply to {op}")
            self._agent.settimeout(min(left, 1.0))
            try:
                chunk = self._agent.recv(1 << 20)
            except TimeoutError:
                self._check_alive()
                continue
            if not chunk:
                self._check_alive()
                raise GuestError("agent connection closed")
            self._agent_buf += chunk

    def run(self, *argv: str, timeout: float = 120.0, check: bool = True, **kw: Any) -> dict[str, Any]:
        """Run a command in the guest; with ``check``, a non-zero exit raises GuestError."""
        r = self.call("run", argv=list(argv), timeout=timeout, wait=timeout + 30, **kw)
        if check and r["rc"] != 0:
            raise GuestError(f"{argv} exited {r['rc']}: {r['stderr'][-2000:]}{r['stdout'][-1000:]}")
        return r

    def sh(self, script: str, timeout: float = 120.0, check: bool = True) -> str:
        return self.run("sh", "-ec", script, timeout=timeout, check=check)["stdout"]

    # -- USB devices --------------------------------------------------------------------------
    def _qdev_id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def plug_serial(self, serial: str, port: int) -> Plugged:
        """An FTDI FT232R-like adapter (QEMU usb-serial, 0403:6001) with ``serial``.

        Its chardev is a unix socket server on the host (``Plugged.chardev_path``): bytes
        written there arrive on the guest's ttyUSB node.
        """
        assert self.qmp is not None
        qdev_id = self._qdev_id("ser")
        chardev = f"{qdev_id}-chr"
        path = str(self.workdir / f"{chardev}.sock")
        self.qmp.execute("chardev-add", id=chardev, backend={"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": path}}, "server": True, "wait": False}})
        self.qmp.execute("device_add", driver="usb-serial", id=qdev_id, bus="xhci.0", port=str(port),
                         serial=serial, chardev=chardev, **{"always-plugged": True})
        p = Plugged(qdev_id, "usb-serial", port, serial, chardev, path)
        self.plugged[qdev_id] = p
        return p

    def plug_storage(self, serial: str, port: int, size: int = 64 << 20) -> Plugged:
        """A USB mass-storage stick (QEMU usb-storage, 46f4:0001) backed by a null block node."""
        assert self.qmp is not None
        qdev_id = self._qdev_id("stick")
        node = f"{qdev_id}-blk"
        self.qmp.execute("blockdev-add", driver="null-co", **{"node-name": node, "size": size,
                                                               "read-zeroes": True})
        self.qmp.execute("device_add", driver="usb-storage", id=qdev_id, bus="xhci.0", port=str(port),
                         serial=serial, drive=node)
        p = Plugged(qdev_id, "usb-storage", port, serial, node=node)
        self.plugged[qdev_id] = p
        return p

    def plug_keyboard(self, serial: str, port: int) -> Plugged:
        """A USB HID keyboard (QEMU usb-kbd, 0627:0001): /dev/input/event* and hidraw in the guest."""
        assert self.qmp is not None
        qdev_id = self._qdev_id("kbd")
        self.qmp.execute("device_add", driver="usb-kbd", id=qdev_id, bus="xhci.0", port=str(port),
                         serial=serial)
        p = Plugged(qdev_id, "usb-kbd", port, serial)
        self.plugged[qdev_id] = p
        return p

    def unplug(self, plugged: Plugged, timeout: float = 60.0) -> None:
        """``device_del`` and wait until QEMU reports the guest released it; then free its backend."""
        assert self.qmp is not None
        mark = self.qmp.mark()
        self.qmp.execute("device_del", id=plugged.qdev_id)
        self.qmp.wait_event(device_deleted(plugged.qdev_id), since=mark, timeout=timeout)
        if plugged.chardev:
            self.qmp.execute("chardev-remove", id=plugged.chardev)
        if plugged.node:
            self.qmp.execute("blockdev-del", **{"node-name": plugged.node})
        self.plugged.pop(plugged.qdev_id, None)

    def unplug_all(self) -> None:
        for p in list(self.plugged.values()):
            self.unplug(p)

    @contextlib.contextmanager
    def serial_connection(self, plugged: Plugged) -> Iterator[socket.socket]:
        """The far end of the adapter's wire: bytes sent here arrive on the guest's ttyUSB node.

        Keep it open until the guest has read what it expects: QEMU reads the socket only as
        fast as the guest's driver takes the data.
        """
        assert plugged.chardev_path is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(plugged.chardev_path)
            yield s
