"""A kubelet restart while idle connections flood the metrics port (issue 10 item 7).

Starts ``devplug run`` under ``prlimit --nofile=N`` (default 256) with one HOSTPATH
resource and ``--metrics-address 127.0.0.1:0``, registered with the kubelet stand-in.
Opens ``--connections`` idle TCP connections to the metrics port, then restarts the
stand-in (it deletes every socket, as kubelet does) and measures the time from the new
``kubelet.sock`` to devplug's registration and to the first ListAndWatch list; then counts
the daemon's descriptors, tracebacks and EMFILE lines in its log.

    python bench/bench_flood.py [--connections 1100] [--nofile 256] [--src DIR]
``--src`` runs another tree's ``src`` (e.g. an older commit) with this harness. Needs root
(netlink, udev database). Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, emit, machine, require_root
from tests.kubelet_standin import KubeletStandin

RESOURCE = "devplug.io/thing"


def run(connections: int, nofile: int, src: str) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections + 200), hard))
    with tempfile.TemporaryDirectory(prefix="devplug-flood-") as tmpdir:
        tmp = Path(tmpdir)
        device = tmp / "dev0"
        device.mkdir()
        (tmp / "flood.rules").write_text(f'HOSTPATH=="{device}", RESOURCE="thing"\n')
        log_path = tmp / "devplug.log"
        env = dict(os.environ, PYTHONPATH=src)
        clients: list[socket.socket] = []
        with KubeletStandin(str(tmp / "plugins"), auto_watch=True) as kubelet, open(log_path, "w") as log:
            proc = subprocess.Popen(
                [shutil.which("prlimit") or "prlimit", f"--nofile={nofile}:{nofile}", "--", sys.executable, "-m", "devplug",
                 "run", "--rules", str(tmp / "flood.rules"), "--plugin-dir", str(tmp / "plugins"),
                 "--debug-socket", str(tmp / "debug.sock"), "--metrics-address", "127.0.0.1:0",
                 "--udev-source", "kernel"], env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                kubelet.wait_registration(RESOURCE, timeout=30)
                watch = kubelet.wait_watch(RESOURCE, timeout=10)
                watch.wait_for(lambda dl: len(dl.devices) == 1)
                port = int(re.search(r"http serving\"? address=127\.0\.0\.1:(\d+)", log_path.read_text()).group(1))
                fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
                refused = 0
                for _ in range(connections):
                    try:
                        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                    except OSError:
                        refused += 1
                time.sleep(1.0)  # let the daemon work through its accept backlog
                fds_flooded = len(os.listdir(f"/proc/{proc.pid}/fd"))
                t_sock = kubelet.restart()
                out = {"reregister_ms": None, "first_list_ms": None, "error": None, "fds_before": fds_before,
                       "fds_flooded": fds_flooded, "client_connect_failures": refused}
                try:
                    reg = kubelet.wait_registration(RESOURCE, count=2, timeout=30)
                    out["reregister_ms"] = round((reg.t_ns - t_sock) / 1e6, 1)
                    watch = kubelet.wait_watch(RESOURCE, not_before=watch, timeout=30)
                    first = watch.wait_for(lambda dl: len(dl.devices) == 1, timeout=30)
                    out["first_list_ms"] = round((first.t_ns - t_sock) / 1e6, 1)
                except TimeoutError as exc:
                    out["error"] = str(exc)
            finally:
                for c in clients:
                    c.close()
                proc.terminate()
                proc.wait(10)
        text = log_path.read_text()
        out.update(tracebacks=text.count("Traceback"), emfile_lines=text.count("Too many open files"),
                   log_bytes=len(text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1100)
    ap.add_argument("--nofile", type=int, default=256)
    ap.add_argument("--src", default=str(ROOT / "src"))
    args = ap.parse_args()
    require_root()
    r = run(args.connections, args.nofile, args.src)
    report = {"benchmark": "flood", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "connections": args.connections, "nofile": args.nofile, "src": args.src, "results": r}
    table = (f"{args.connections} idle connections, RLIMIT_NOFILE {args.nofile}: kubelet restart -> registered "
             f"{r['reregister_ms']} ms, first list {r['first_list_ms']} ms{' (' + r['error'] + ')' if r['error'] else ''}; "
             f"daemon fds {r['fds_before']} -> "
             f"{r['fds_flooded']}; log: {r['tracebacks']} tracebacks, {r['emfile_lines']} EMFILE lines")
    emit(report, table)


if __name__ == "__main__":
    main()
