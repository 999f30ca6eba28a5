"""Idle cost of a whole ``devplug run``: CPU, wake-ups (context switches) and memory.

Starts the daemon (kernel source, no kubelet registration, debug socket and metrics on),
waits until its debug socket answers ``/healthz``, lets it settle, then samples
``/proc/<pid>`` over a window with nothing happening: CPU time (utime+stime), voluntary and
involuntary context switches of every thread (a thread waking up for a timer shows up
here), and resident memory. Prints a table on stderr and JSON on stdout.

    PYTHONPATH=src python bench/bench_idle.py [--seconds 10] [--settle 2] [--rules FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import http_get  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Holds a few devices of a subsystem nothing pokes (tty2N get uevents from the tests).
RULES = 'SUBSYSTEM=="mem", KERNEL=="null|zero|full|random|urandom", RESOURCE="mem"\n'


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """tid → (name, voluntary, involuntary) context switches."""
    out: dict[str, tuple[str, int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue  # the thread ended while we looked
        out[tid] = (status["Name"].strip(), int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]))
    return out


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def get(sock: str, path: str) -> int:
    """Status code of one GET over the unix socket."""
    return http_get(sock, path)[0]


def uevents_seen(sock: str) -> int:
    """devplug_uevents_total summed over all labels (from /metrics on the debug socket)."""
    _status, body = http_get(sock, "/metrics")
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith("devplug_uevents_total")))


def wait_ready(proc: subprocess.Popen, sock: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"devplug run exited with {proc.returncode} before it was ready")
        try:
            if get(sock, "/healthz") == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"devplug run not ready after {timeout} s")


def measure(args: argparse.Namespace, tmp: str) -> dict:
    rules = args.rules
    if rules is None:
        rules = os.path.join(tmp, "bench.rules")
        with open(rules, "w") as f:
            f.write(RULES)
    sock = os.path.join(tmp, "debug.sock")
    cmd = [sys.executable, "-m", "devplug", "run", "--plugin-dir", os.path.join(tmp, "plugins"),
           "--no-register", "--rules", rules, "--udev-source", args.source,
           "--debug-socket", sock, "--metrics-address", "127.0.0.1:0", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(os.path.join(tmp, "daemon.log"), "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = wait_ready(proc, sock, 30)
        time.sleep(args.settle)
        ev0 = uevents_seen(sock)
        cpu0, th0, t0 = cpu_seconds(proc.pid), threads(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, th1, t1 = cpu_seconds(proc.pid), threads(proc.pid), time.monotonic()
        events = uevents_seen(sock) - ev0
        mem = memory_kib(proc.pid)
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        stop_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = t1 - t0
    per_thread = []
    for tid, (name, vol, invol) in sorted(th1.items(), key=lambda kv: int(kv[0])):
        _n, vol0, invol0 = th0.get(tid, (name, 0, 0))
        per_thread.append({"tid": int(tid), "name": name,
                           "voluntary_per_s": round((vol - vol0) / elapsed, 2),
                           "involuntary_per_s": round((invol - invol0) / elapsed, 2)})
    log.seek(0)
    return {
        "window_s": round(elapsed, 3),
        "source": args.source,
        "ready_s": round(ready, 3),
        "uevents_in_window": events,
        "cpu_percent": round((cpu1 - cpu0) / elapsed * 100, 3),
        "wakeups_per_s": round(sum(t["voluntary_per_s"] + t["involuntary_per_s"] for t in per_thread), 2),
        "threads": per_thread,
        "rss_mib": round(mem["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
        "sigterm_exit_s": round(stop_s, 3),
        "exit_code": code,
        "socket_removed": not os.path.exists(sock),
        "daemon_errors": [line.rstrip() for line in log if "level=error" in line][:5],
    }


def table(r: dict) -> str:
    lines = [
        f"idle devplug run ({r['source']} source) over {r['window_s']} s",
        f"  uevents        {r['uevents_in_window']} during the window (0 = truly idle)",
        f"  cpu            {r['cpu_percent']:.3f} %",
        f"  wake-ups       {r['wakeups_per_s']:.2f} /s (context switches, all threads)",
        f"  rss            {r['rss_mib']} MiB (peak {r['peak_rss_mib']} MiB)",
        f"  SIGTERM → exit {r['sigterm_exit_s']} s (code {r['exit_code']}, socket removed: {r['socket_removed']})",
        "  TID      THREAD           VOL/s   INVOL/s",
    ]
    for t in r["threads"]:
        lines.append(f"  {t['tid']:<8} {t['name']:<15} {t['voluntary_per_s']:>6.2f}  {t['involuntary_per_s']:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=2.0, help="wait after ready before measuring")
    p.add_argument("--source", choices=("kernel", "udev"), default="kernel")
    p.add_argument("--rules", default=None, help="rules file (default: /dev/null, zero, full, random, urandom as one resource)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="devplug-idle-") as tmp:
        result = measure(args, tmp)
    print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
