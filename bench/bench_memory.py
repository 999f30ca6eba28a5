"""Resident memory of ``devplug run``: idle, with 1,000 devices, after a burst of 2,000 uevents.

Each scenario starts a fresh daemon (debug socket on, as by default; the kubelet stand-in
in this process registers it and holds its ListAndWatch streams), lets it settle and reads
VmRSS (and the peak, VmHWM) from /proc/<pid>/status:

- ``idle``: the embedded default rules, nothing on this machine claimed;
- ``devices_1000``: 1,000 zram block devices present at start and claimed;
- ``uevent_burst``: 30 virtual consoles claimed (tty10..tty39), then 2,000 real uevents
  (``change``/``add`` written to /sys/class/tty/tty2N/uevent, N=0..9; never ttyS0) as fast
  as possible; measured once the daemon's ``devplug_uevents_total`` counted all of them.

The floor: a bare ``python`` with what devplug runs on imported (trio, protobuf and the
generated v1beta1 module, h2, pyudev; no grpc, no trio_asyncio: devplug speaks gRPC on h2)
and one server of devplug's h2 transport serving on a unix socket under trio. One more
floor for comparison: the stack before the h2 transport (a grpc.aio server under
trio-asyncio; needs the ``bench`` extra).

    python bench/bench_memory.py [--devices 1000] [--uevents 2000] [--source kernel]
Needs root. Prints one JSON object, then a table. Every zram device created is removed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchlib import (Daemon, ZramPool, emit, interrupt_on_sigterm, machine, mib, require_root, settle,
                      status_kib, uevents_total, wait_http)
from tests.kubelet_standin import KubeletStandin

#: Each floor script binds sys.argv[1], prints "ready" and sleeps.
FLOORS = {
    "floor": r"""
import functools, sys, trio, pyudev
from devplug.kubelet import api_pb2
from devplug.kubelet.transport import Server, listen
assert "grpc" not in sys.modules and "trio_asyncio" not in sys.modules
pyudev.Context()
async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(Server({}).serve, listen(sys.argv[1]), grace=0.1))
        print("ready", flush=True)
        await trio.sleep_forever()
trio.run(main)
""",
    "grpc_aio_server": r"""
import sys, trio, trio_asyncio, grpc, grpc.aio, pyudev
pyudev.Context()
async def serve():
    server = grpc.aio.server()
    server.add_insecure_port("unix://" + sys.argv[1])
    await server.start()
    return server
async def main():
    async with trio_asyncio.open_loop():
        server = await trio_asyncio.aio_as_trio(serve)()
        print("ready", flush=True)
        await trio.sleep_forever()
trio.run(main)
""",
}


def floor(tmp: Path, settle_s: float, name: str = "floor") -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", FLOORS[name], str(tmp / f"{name}.sock")], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"floor process {name} did not start")
        time.sleep(settle_s)
        m = status_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(5)
    return {"rss_mib": mib(m["VmRSS"]), "peak_mib": mib(m["VmHWM"])}


def scenario(name: str, tmp: Path, rules: Optional[str], source: str, settle_s: float,
             wait_for: Optional[int] = None, uevents: int = 0) -> dict:
    work = tmp / name
    work.mkdir()
    plugin_dir = work / "plugins"
    sock = str(work / "debug.sock")
    args = ["--plugin-dir", str(plugin_dir), "--debug-socket", sock, "--udev-source", source,
            "--log-level", "warning"]
    if rules is not None:
        (work / "bench.rules").write_text(rules)
        args += ["--rules", str(work / "bench.rules")]
    with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet:
        daemon = Daemon(args, work / "devplug.log")
        try:
            wait_http(sock, daemon=daemon)
            held = 0
            if wait_for is not None:
                resource = "devplug.io/bench"
                watch = kubelet.wait_watch(resource, timeout=30)
                got = watch.wait_for(lambda dl: sum(h == "Healthy" for _i, h in dl.devices) >= wait_for, timeout=60)
                held = len(got.devices)
            time.sleep(settle_s)
            before = daemon.memory()
            out: dict = {"devices_held": held, "rss_mib": mib(before["VmRSS"]), "peak_mib": mib(before["VmHWM"])}
            if uevents:
                seen0 = uevents_total(sock)
                t0 = time.perf_counter()
                for k in range(uevents):
                    with open(f"/sys/class/tty/tty2{k % 10}/uevent", "w") as f:
                        f.write("change" if (k // 10) % 2 == 0 else "add")
                t_written = time.perf_counter()
                deadline = time.monotonic() + 60
                while uevents_total(sock) - seen0 < uevents:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"daemon saw {uevents_total(sock) - seen0} of {uevents} uevents")
                    time.sleep(0.05)
                t_seen = time.perf_counter()
                time.sleep(settle_s)
                after = daemon.memory()
                out.update({
                    "uevents": uevents,
                    "rss_before_burst_mib": out["rss_mib"],
                    "rss_mib": mib(after["VmRSS"]),
                    "peak_mib": mib(after["VmHWM"]),
                    "write_s": round(t_written - t0, 3),
                    "all_counted_s": round(t_seen - t0, 3),
                })
            out["daemon_errors"] = daemon.errors()
        finally:
            daemon.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--uevents", type=int, default=2000)
    ap.add_argument("--source", choices=("kernel", "udev"), default="kernel")
    ap.add_argument("--settle", type=float, default=2.0)
    args = ap.parse_args()
    require_root()
    interrupt_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="devplug-mem-") as tmpdir:
        tmp = Path(tmpdir)
        results = {"floor": floor(tmp, args.settle)}
        results["other_floors"] = {name: floor(tmp, args.settle, name) for name in FLOORS if name != "floor"}
        results["idle"] = scenario("idle", tmp, None, args.source, args.settle)
        with ZramPool() as pool:
            pool.add(args.devices)
            settle()
            results["devices_1000"] = scenario(
                "devices", tmp, 'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="bench"\n', args.source,
                args.settle, wait_for=args.devices)
        results["uevent_burst"] = scenario(
            "burst", tmp, 'SUBSYSTEM=="tty", KERNEL=="tty[123][0-9]", RESOURCE="bench"\n', args.source,
            args.settle, wait_for=30, uevents=args.uevents)
    goals = {"idle": 48, "devices_1000": 56, "uevent_burst": 50}
    report = {"benchmark": "memory", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "source": args.source, "goals_mib": goals, "results": results}
    fl = results["floor"]["rss_mib"]
    lines = [f"{'scenario':<14} {'held':>5} {'RSS MiB':>8} {'peak MiB':>9} {'goal':>5} {'over floor':>11}"]
    lines.append(f"{'floor':<14} {'':>5} {fl:>8} {results['floor']['peak_mib']:>9} {'':>5} {'':>11}")
    for key in ("idle", "devices_1000", "uevent_burst"):
        r = results[key]
        lines.append(f"{key:<14} {r['devices_held']:>5} {r['rss_mib']:>8} {r['peak_mib']:>9} {goals[key]:>5} "
                     f"{round(r['rss_mib'] - fl, 1):>+11}")
    for name, r in results["other_floors"].items():
        lines.append(f"{'(' + name + ')':<20} {r['rss_mib']:>8} {r['peak_mib']:>9}")
    b = results["uevent_burst"]
    lines.append(f"burst: {b['uevents']} uevents written in {b['write_s']} s, all counted by devplug after "
                 f"{b['all_counted_s']} s; RSS before the burst {b['rss_before_burst_mib']} MiB")
    emit(report, "\n".join(lines))


if __name__ == "__main__":
    main()
