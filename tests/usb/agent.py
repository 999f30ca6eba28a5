"""The command agent of the USB test guest: JSON lines over a virtio-serial port.

It runs as PID 1's last step in the guest (``stage2.sh`` execs it) and answers one request at
a time, in order: ``{"op": ..., **args}`` → ``{"ok": true, **result}`` or
``{"ok": false, "error": "..."}``. The host side is :class:`tests.usb.guest.Guest`.

Why an agent rather than a shell on the serial console: the tests need structured answers
(exit codes, the kubelet stand-in's device lists, uevent records with timestamps) and must
wait for *conditions* in the guest (a list where an ID is Unhealthy, udevd's ``bind`` of a
USB device) without polling over the slow emulated link. So the guest keeps the long-lived
pieces in this process: the kubelet stand-in (``tests/kubelet_standin.py``, the real v1beta1
wire protocol) and two pyudev monitors (kernel and udev sources) recording every uevent.
Processes under test (``devplug run``, a tty reader) are spawned with their output in
``/tmp/agent/<name>.log``.

Only the standard library and what the project's venv has are imported, lazily: the agent
must answer ``ping`` seconds after boot, before grpc is imported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

LOG_DIR = "/tmp/agent"
Reply = dict[str, Any]


class Recorder:
    """Every uevent from both netlink sources, in arrival order, with receive times.

    The kernel source is what ``--udev-source kernel`` reads; the udev source is udevd's
    re-broadcast after its rules ran (what ``--udev-source udev`` reads). Both are kept so a
    test can check what each one saw and in which order.
    """

    def __init__(self) -> None:
        import pyudev

        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stop = False
        ctx = pyudev.Context()
        self._monitors = []
        for source in ("kernel", "udev"):
            mon = pyudev.Monitor.from_netlink(ctx, source=source)
            try:
                mon.set_receive_buffer_size(16 * 1024 * 1024)
            except Exception:  # noqa: BLE001 - best effort, as devplug does
                pass
            mon.start()
            self._monitors.append((source, mon))
        self._threads = [threading.Thread(target=self._run, args=(s, m), daemon=True)
                         for s, m in self._monitors]
        for t in self._threads:
            t.start()

    def _run(self, source: str, mon: Any) -> None:
        while not self._stop:
            dev = mon.poll(timeout=0.5)
            if dev is None:
                continue
            t = time.perf_counter_ns()
            props = dict(dev.properties)
            rec = {
                "source": source,
                "t_ns": t,
                "action": dev.action,
                "subsystem": dev.subsystem,
                "devtype": dev.device_type,
                "sys_name": dev.sys_name,
                "devpath": dev.device_path,
                "driver": props.get("DRIVER"),
                "devnode": dev.device_node,
                "seqnum": int(props.get("SEQNUM", "0") or 0),
                "devlinks": sorted(props.get("DEVLINKS", "").split()),
                "id_serial": props.get("ID_SERIAL"),
            }
            with self._cond:
                self.events.append(rec)
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def since(self, mark: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.events[mark:])

    def wait(self, mark: int, match: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Wait until, after ``mark``, one event matches each pattern of ``match``.

        A pattern maps record keys to values (``sys_name`` takes a glob). Returns the events
        since ``mark``; raises ``TimeoutError`` with what was seen.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                evs = self.events[mark:]
                if all(any(_matches(e, p) for e in evs) for p in match):
                    return list(evs)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{e['source']}:{e['action']}:{e['subsystem']}:{e['sys_name']}" for e in evs]
                    raise TimeoutError(f"no event matching {match}; seen {seen}")
                self._cond.wait(left)

    def stop(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)


def _matches(event: dict[str, Any], pattern: dict[str, Any]) -> bool:
    for key, want in pattern.items():
        got = event.get(key)
        if key == "sys_name":
            if got is None or not fnmatch.fnmatchcase(got, want):
                return False
        elif got != want:
            return False
    return True


class Agent:
    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.procs: dict[str, tuple[subprocess.Popen, Any]] = {}
        self.kubelet: Any = None
        self.recorder: Optional[Recorder] = None
        os.makedirs(LOG_DIR, exist_ok=True)
        sys.path[:0] = [os.path.join(repo, "src"), repo]

    # -- processes --------------------------------------------------------------------------
    def env(self, extra: Optional[dict[str, str]]) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(self.repo, "src"), self.repo])
        env.update(extra or {})
        return env

    def op_ping(self) -> Reply:
        with open("/proc/uptime") as f:
            return {"uptime": float(f.read().split()[0]), "python": sys.executable,
                    "t_ns": time.perf_counter_ns()}

    def op_run(self, argv: list[str], timeout: float = 60, input: Optional[str] = None,
               env: Optional[dict[str, str]] = None) -> Reply:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                           env=self.env(env), errors="backslashreplace")
        return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}

    def op_spawn(self, name: str, argv: list[str], env: Optional[dict[str, str]] = None) -> Reply:
        if name in self.procs and self.procs[name][0].poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = open(os.path.join(LOG_DIR, f"{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(env),
                                start_new_session=True)
        self.procs[name] = (proc, log)
        return {"pid": proc.pid}

    def _log(self, name: str) -> str:
        with open(os.path.join(LOG_DIR, f"{name}.log"), errors="backslashreplace") as f:
            return f.read()

    def op_log(self, name: str) -> Reply:
        proc, _ = self.procs[name]
        return {"log": self._log(name), "rc": proc.poll()}

    def op_wait_log(self, name: str, needle: str, timeout: float = 60) -> Reply:
        """Wait until the process's output contains ``needle`` (it announced a state)."""
        proc, _ = self.procs[name]
        deadline = time.monotonic() + timeout
        while True:
            text = self._log(name)
            if needle in text:
                return {"log": text}
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {needle!r} not in its output (rc {proc.poll()}): {text[-2000:]}")
            time.sleep(0.05)

    def op_wait(self, name: str, timeout: float = 60) -> Reply:
        proc, log = self.procs[name]
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return {"rc": None, "log": self._log(name)}
        log.close()
        return {"rc": rc, "log": self._log(name)}

    def op_stop(self, name: str, timeout: float = 30, sig: int = signal.SIGTERM) -> Reply:
        """Signal the process (its whole session), wait, kill after ``timeout``; return rc and log."""
        proc, log = self.procs[name]
        killed = False
        t0 = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
        log.close()
        return {"rc": proc.returncode, "killed": killed, "seconds": time.monotonic() - t0,
                "log": self._log(name)}

    # -- files --------------------------------------------------------------------------------
    def op_read(self, path: str) -> Reply:
        with open(path, "rb") as f:
            return {"data": f.read().decode("utf-8", "backslashreplace")}

    def op_write(self, path: str, data: str) -> Reply:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(data)
        return {}

    def op_http_get(self, socket_path: str, path: str, timeout: float = 30) -> Reply:
        """GET over a unix socket (devplug's debug socket): status and body (JSON parsed if it is)."""
        from devplug.cli.inventory import http_get  # the CLI's own client (h11), as users run it

        result = http_get(socket_path, path, timeout=timeout)
        try:
            return {"status": result.status, "json": json.loads(result.body)}
        except ValueError:
            return {"status": result.status, "body": result.body.decode("utf-8", "backslashreplace")}

    # -- the kubelet stand-in ------------------------------------------------------------------
    def op_kubelet_start(self, plugin_dir: str) -> Reply:
        from tests.kubelet_standin import KubeletStandin

        if self.kubelet is not None:
            self.kubelet.stop()
        self.kubelet = KubeletStandin(plugin_dir, auto_watch=True)
        return {}

    def op_kubelet_stop(self) -> Reply:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        return {}

    def _stream(self, resource: str, timeout: float, newer_than: int) -> tuple[int, Any]:
        """The newest ListAndWatch stream of ``resource`` whose number is above ``newer_than``."""
        k = self.kubelet
        deadline = time.monotonic() + timeout
        with k._cond:
            while True:
                w = k.watches.get(resource)
                if w is not None:
                    n = k._all_watches.index(w) if w in k._all_watches else -1
                    if n > newer_than:
                        return n, w
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource}: no ListAndWatch stream newer than #{newer_than}")
                k._cond.wait(left)

    def op_kubelet_wait(self, resource: str, want: Optional[dict[str, str]] = None,
                        subset: bool = False, timeout: float = 60, newer_than: int = -1) -> Reply:
        """Wait for a list of ``resource`` equal to ``want`` (ID → health; with ``subset``,
        containing it); ``want=None`` waits for the stream's first list. Returns the stream
        number and every list received on it so far (each as [[id, health], ...])."""
        t_end = time.monotonic() + timeout
        n, w = self._stream(resource, timeout, newer_than)

        def ok(dl: Any) -> bool:
            if want is None:
                return True
            got = dl.as_dict()
            if subset:
                return all(got.get(i) == h for i, h in want.items())
            return got == want

        w.wait_for(ok, timeout=max(0.1, t_end - time.monotonic()))
        with w._cond:
            lists = [[list(d) for d in dl.devices] for dl in w.lists]
            times = [dl.t_ns for dl in w.lists]
        return {"stream": n, "lists": lists, "t_ns": times}

    def op_kubelet_registrations(self) -> Reply:
        return {"registrations": [[r.resource_name, r.endpoint] for r in self.kubelet.registrations]}

    def op_allocate(self, resource: str, ids: list[str], timeout: float = 30) -> Reply:
        import grpc
        from google.protobuf import json_format

        try:
            resp = self.kubelet.allocate(resource, ids, timeout=timeout)
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}
        return {"code": "OK", "response": json_format.MessageToDict(resp)}

    # -- uevents ------------------------------------------------------------------------------
    def op_monitor_start(self) -> Reply:
        if self.recorder is None:
            self.recorder = Recorder()
        return {"mark": self.recorder.mark()}

    def op_monitor_mark(self) -> Reply:
        return {"mark": self.recorder.mark()}

    def op_monitor_wait(self, mark: int, match: list[dict[str, Any]], timeout: float = 60) -> Reply:
        return {"events": self.recorder.wait(mark, match, timeout)}

    def op_monitor_since(self, mark: int) -> Reply:
        return {"events": self.recorder.since(mark)}

    # -- the end ------------------------------------------------------------------------------
    def op_poweroff(self) -> Reply:
        def off() -> None:
            time.sleep(0.2)
            for name, (proc, _log) in self.procs.items():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["sync"], check=False)
            with open("/proc/sysrq-trigger", "w") as f:
                f.write("o")

        threading.Thread(target=off, daemon=True).start()
        return {}

    def handle(self, request: dict[str, Any]) -> Reply:
        op = request.pop("op")
        fn: Optional[Callable[..., Reply]] = getattr(self, f"op_{op}", None)
        if fn is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            return {"ok": True, **fn(**request)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the host test
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    port, repo = sys.argv[1], sys.argv[2]
    agent = Agent(repo)
    fd = os.open(port, os.O_RDWR)
    reader = os.fdopen(fd, "rb", buffering=0)
    buf = b""
    while True:
        chunk = reader.read(65536)
        if not chunk:
            # The host closed its end: wait for it to come back (virtio-serial reads 0 then).
            time.sleep(0.1)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line)
            rid = request.pop("id", None)
            reply = agent.handle(request)
            reply["id"] = rid
            data = (json.dumps(reply) + "\n").encode()
            while data:
                data = data[os.write(fd, data):]


if __name__ == "__main__":
    main()
