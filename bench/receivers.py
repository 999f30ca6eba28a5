"""The kubelet end of the latency benchmarks, in its own process: Go (grpc-go) or Python.

Both speak one line protocol (``tests/kubelet_standin.py``'s ``main()``; ``bench/gokubelet``
is the same in Go): JSON events on stdout, commands on stdin. The Go receiver is kubelet's
own client stack (grpc-go, a goroutine looping on ``Recv``) and so adds what kubelet adds;
the Python one (grpcio's synchronous client in a thread) adds more, and inflates every
ratio to a floor. Receive times are stamped inside the receiver (CLOCK_MONOTONIC), so the
pipe to this process costs nothing measured; :meth:`Receiver.check_clock` proves the
receiver's clock is ``time.perf_counter_ns()``.

``receiver_kinds("auto")`` is ``["go"]`` when ``bench/gokubelet/gokubelet`` is built (or can
be: ``build.sh`` runs when ``go`` is on PATH), else ``["python"]`` with a note saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "src"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.kubelet_standin import DeviceList  # noqa: E402

GOKUBELET_DIR = ROOT / "bench" / "gokubelet"
GOKUBELET = GOKUBELET_DIR / "gokubelet"
KINDS = ("go", "python")


def build_gokubelet() -> tuple[Optional[Path], str]:
    """The Go receiver's binary (built or refreshed when Go is installed) and a note why not."""
    if shutil.which("go") and shutil.which("protoc"):
        p = subprocess.run([str(GOKUBELET_DIR / "build.sh")], capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"bench/gokubelet/build.sh failed: {(p.stderr or p.stdout).strip()[-500:]}"
    if GOKUBELET.exists() and os.access(GOKUBELET, os.X_OK):
        return GOKUBELET, ""
    return None, "bench/gokubelet is not built (no Go toolchain: `scripts/setup --bench`)"


def receiver_kinds(spec: str) -> tuple[list[str], str]:
    """``--receiver`` → receiver kinds to run, and a note when ``auto`` fell back to Python."""
    if spec == "auto":
        binary, why = build_gokubelet()
        return (["go"], "") if binary else (["python"], f"receiver: python, because {why}")
    kinds = [k for k in spec.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown receiver(s): {', '.join(sorted(unknown))} (go, python, auto)")
    if "go" in kinds:
        binary, why = build_gokubelet()
        if binary is None:
            raise SystemExit(f"--receiver go: {why}")
    return kinds, ""


class LineWatch:
    """One ListAndWatch stream as the receiver reported it (the ``Watch`` API of the stand-in)."""

    def __init__(self, resource: str, cond: threading.Condition) -> None:
        self.resource = resource
        self.lists: list[DeviceList] = []
        self.ended = threading.Event()
        self.end_code: Optional[str] = None
        self._cond = cond

    @property
    def latest(self) -> Optional[DeviceList]:
        with self._cond:
            return self.lists[-1] if self.lists else None

    def wait_for(self, pred: Callable[[DeviceList], bool], timeout: float = 5.0) -> DeviceList:
        """Block until the newest list satisfies ``pred``; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.lists and pred(self.lists[-1]):
                    return self.lists[-1]
                left = deadline - time.monotonic()
                if left <= 0 or self.ended.is_set():
                    raise TimeoutError(f"{self.resource}: no matching list (latest "
                                       f"{self.lists[-1] if self.lists else None}, ended={self.end_code})")
                self._cond.wait(left)


class Receiver:
    """``gokubelet PLUGIN_DIR`` or ``python tests/kubelet_standin.py PLUGIN_DIR`` as a child."""

    def __init__(self, kind: str, plugin_dir: str) -> None:
        if kind == "go":
            argv = [str(GOKUBELET), plugin_dir]
        elif kind == "python":
            argv = [sys.executable, str(ROOT / "tests" / "kubelet_standin.py"), plugin_dir]
        else:
            raise ValueError(kind)
        self.kind = kind
        self.watches: dict[str, LineWatch] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._clock: list[int] = []
        self._allocs: list[dict] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, env=env)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first or json.loads(first).get("event") != "ready":
            self.close()
            raise RuntimeError(f"{kind} receiver did not start: {first!r}")
        self._thread = threading.Thread(target=self._read, name=f"receiver-{kind}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            kind = ev.get("event")
            with self._cond:
                if kind == "register":
                    # A new stream, unless its first list came first (the Python stand-in
                    # prints "register" after its watch thread started).
                    old = self.watches.get(ev["resource"])
                    if old is None or old.ended.is_set():
                        self.watches[ev["resource"]] = LineWatch(ev["resource"], self._cond)
                elif kind == "list":
                    w = self.watches.setdefault(ev["resource"], LineWatch(ev["resource"], self._cond))
                    w.lists.append(DeviceList(ev["t_ns"], tuple((i, h) for i, h in ev["devices"])))
                elif kind == "end" and ev["resource"] in self.watches:
                    w = self.watches[ev["resource"]]
                    w.end_code = ev.get("code")
                    w.ended.set()
                elif kind == "allocate":
                    self._allocs.append(ev)
                elif kind == "clock":
                    self._clock.append(ev["t_ns"])
                elif kind == "error":
                    self.errors.append(ev.get("message", ""))
                self._cond.notify_all()

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_watch(self, resource: str, timeout: float = 5.0) -> LineWatch:
        """The stream the receiver opened after ``resource`` registered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while resource not in self.watches:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"{resource}: no ListAndWatch stream ({self.kind} receiver; "
                                       f"errors: {self.errors[-3:]})")
                self._cond.wait(left)
            return self.watches[resource]

    def watch(self, resource: str, socket: str) -> LineWatch:
        """Open ListAndWatch on ``socket`` without a registration (bare servers)."""
        with self._cond:
            w = self.watches[resource] = LineWatch(resource, self._cond)
        self._send(f"watch {resource} {socket}")
        return w

    def allocate(self, resource: str, ids: list[str], timeout: float = 10.0) -> dict:
        """One Allocate of ``ids`` (one container) by the Go receiver: its ``allocate`` event."""
        if self.kind != "go":
            raise NotImplementedError("allocate is a command of the Go receiver")
        with self._cond:
            n = len(self._allocs)
        self._send(f"allocate {resource} {','.join(ids)}")
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._allocs) > n, timeout=timeout):
                raise TimeoutError(f"{resource}: no answer to allocate")
            return self._allocs[n]

    def check_clock(self, rounds: int = 20) -> None:
        """Assert the receiver's stamps lie between two ``perf_counter_ns()`` calls here."""
        for _ in range(rounds):
            with self._cond:
                n = len(self._clock)
            before = time.perf_counter_ns()
            self._send("clock")
            with self._cond:
                if not self._cond.wait_for(lambda n=n: len(self._clock) > n, timeout=5):
                    raise RuntimeError(f"{self.kind} receiver did not answer 'clock'")
                t = self._clock[n]
            after = time.perf_counter_ns()
            if not before <= t <= after:
                raise RuntimeError(f"{self.kind} receiver's clock is not perf_counter_ns: "
                                   f"{before} <= {t} <= {after} fails")

    def cpu_seconds(self) -> float:
        """User + system CPU time the receiver process has used so far (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_thread"):
            self._thread.join(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
