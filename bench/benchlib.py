"""Shared pieces of the system benchmarks: zram devices, the daemon, a floor monitor, RSS.

Every benchmark that creates zram devices does it through :class:`ZramPool`, which removes
them on the way out (also on Ctrl-C or SIGTERM, see :func:`interrupt_on_sigterm`), retrying
while udevd's workers still hold a new block device open (``EBUSY``).
Timestamps are ``time.perf_counter_ns()`` (CLOCK_MONOTONIC), comparable across processes.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "src"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

HOT_ADD = "/sys/class/zram-control/hot_add"
HOT_REMOVE = "/sys/class/zram-control/hot_remove"

from tests import udevd as host_udevd  # noqa: E402  (after the path set-up above)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (creates zram devices, writes uevents under /sys)")


def interrupt_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C, so every ``finally`` (zram removal) runs."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


class ZramPool:
    """zram block devices this process created; all removed on exit of the ``with`` block."""

    def __init__(self) -> None:
        if not os.path.exists(HOT_ADD):
            subprocess.run(["modprobe", "zram", "num_devices=0"], check=False)
        if not os.path.exists(HOT_ADD):
            raise SystemExit("zram-control is missing (modprobe zram)")
        self.nums: list[int] = []

    def add(self, n: int) -> list[int]:
        """Hot-add ``n`` devices as fast as the kernel allows; returns their numbers."""
        out: list[int] = []
        for _ in range(n):
            with open(HOT_ADD) as f:
                num = int(f.read())
            self.nums.append(num)
            out.append(num)
        return out

    def remove(self, nums: Optional[Sequence[int]] = None, timeout: float = 120.0) -> list[int]:
        """Remove ``nums`` (default: all of ours); busy ones are retried. Returns those left."""
        left = list(self.nums if nums is None else nums)
        deadline = time.monotonic() + timeout
        while left:
            busy = []
            for num in left:
                try:
                    with open(HOT_REMOVE, "w") as f:
                        f.write(str(num))
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        busy.append(num)
                        continue
                    if exc.errno not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                        raise
                if num in self.nums:
                    self.nums.remove(num)
            left = busy
            if left:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        return left

    def __enter__(self) -> ZramPool:
        return self

    def __exit__(self, *exc: object) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leak devices
        try:
            left = self.remove()
            if left:
                print(f"WARNING: zram devices still busy, not removed: {left}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def settle(timeout: float = 120.0) -> None:
    subprocess.run(["udevadm", "settle", "-t", str(int(timeout))], check=False, capture_output=True)


_UDEVD: list[host_udevd.HostUdevd] = []


def ensure_udevd() -> None:
    """Start systemd-udevd (as tests/conftest.py does) when none answers. What it started is
    stopped when this process exits, and ``/run/udev`` removed if it was not there before."""
    if host_udevd.running():
        return
    daemon = host_udevd.HostUdevd()
    try:
        daemon.start()
    except (FileNotFoundError, TimeoutError) as exc:
        raise SystemExit(f"the udev source needs systemd-udevd: {exc}")
    if not _UDEVD:
        atexit.register(lambda: [d.stop() for d in _UDEVD])
    _UDEVD.append(daemon)


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM", "VmSize", "RssAnon", "RssFile")}


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Daemon:
    """A ``devplug run`` child process (optionally under ``bench/profile_run.py``)."""

    def __init__(self, args: Sequence[str], log_path: Path, *, wrapper: Sequence[str] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log_path = log_path
        self._log = open(log_path, "w")
        if wrapper:
            argv = [sys.executable, *wrapper, "run", *args]
        else:
            argv = [sys.executable, "-m", "devplug", "run", *args]
        self.t_start_ns = time.perf_counter_ns()
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory(self) -> dict[str, int]:
        return status_kib(self.proc.pid)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"devplug exited with {self.proc.returncode}; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def errors(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines()
                if "level=error" in line or "Traceback" in line][:5]


FLOOR_MONITOR = r"""
import sys, time, pyudev
source, subsystem, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
mon = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
mon.filter_by(subsystem)
try:
    mon.set_receive_buffer_size(128 * 1024 * 1024)
except Exception:
    pass
mon.start()
print("ready", flush=True)
while True:
    dev = mon.poll()
    if dev is not None and dev.sys_name.startswith(prefix):
        print(dev.action, dev.sys_name, time.perf_counter_ns(), flush=True)
"""


class FloorMonitor:
    """A bare pyudev monitor in its own process: when netlink delivered each event (the floor)."""

    def __init__(self, source: str, subsystem: str, prefix: str) -> None:
        self.events: list[tuple[str, str, int]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR_MONITOR, source, subsystem, prefix],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("floor monitor did not start")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            action, name, t = line.split()
            with self._cond:
                self.events.append((action, name, int(t)))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(self, action: str, names: set[str], timeout: float = 60.0, since: int = 0) -> Optional[int]:
        """Time the last of ``names`` was seen with ``action`` after event ``since`` (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = {n: t for a, n, t in self.events[since:] if a == action and n in names}
                if len(seen) == len(names):
                    return max(seen.values())
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def first(self, action: str, names: set[str]) -> Optional[int]:
        with self._cond:
            ts = [t for a, n, t in self.events if a == action and n in names]
        return min(ts) if ts else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def http_get(sock: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET over the debug socket (read until close)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = _unchunk(body)
    return int(head.split(b" ", 2)[1]), body


def _unchunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def uevents_total(sock: str) -> int:
    """``devplug_uevents_total`` summed over its labels, from the debug socket's /metrics."""
    _status, body = http_get(sock, "/metrics")
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith("devplug_uevents_total")))


def wait_http(sock: str, path: str = "/healthz", timeout: float = 30.0, daemon: Optional[Daemon] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None:
            daemon.alive()
        try:
            if http_get(sock, path, 2)[0] in (200, 503):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{sock} did not answer {path}")


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "-"

    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release,
            "python": sys.version.split()[0], "h2": ver("h2"), "protobuf": ver("protobuf"),
            "loadavg": os.getloadavg()[0]}


def emit(report: dict, table: str) -> None:
    """One JSON object on stdout, then the table (run_all.py parses the JSON)."""
    print(json.dumps(report, indent=1))
    print()
    print(table)
