"""Hotplug latency: real uevent → ListAndWatch response received by the kubelet stand-in.

For each sample the benchmark writes ``remove`` or ``add`` to /sys/class/tty/tty20/uevent
(a real kernel uevent; never ttyS0) and times until the stand-in receives the list where
tty20's health flipped. In the same run a bare pyudev monitor in its own process (the
floor) timestamps the same uevents, so the table shows devplug's cost over netlink's.
Timestamps are CLOCK_MONOTONIC (``time.perf_counter_ns``) in every process.

``--held N`` first hot-adds N zram block devices claimed by a second resource, so the
figures show the cost with a large inventory (they are removed afterwards).

    python bench/bench_hotplug.py [--samples 300] [--sources kernel,udev] [--held 0]
Needs root. Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.kubelet_standin import KubeletStandin  # noqa: E402

TTY = "tty20"
DEV_ID = "virtual-tty-tty20"
RESOURCE = "devplug.io/bench-tty"

FLOOR = r"""
import sys, time, pyudev
ctx = pyudev.Context()
mon = pyudev.Monitor.from_netlink(ctx, source=sys.argv[1])
mon.filter_by("tty")
mon.start()
print("ready", flush=True)
while True:
    dev = mon.poll()
    if dev is not None and dev.sys_name == "tty20":
        print(f"{dev.action} {time.perf_counter_ns()}", flush=True)
"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 4),
        "p99_ms": round(pct(values_ms, 0.99), 4),
        "max_ms": round(max(values_ms), 4),
        "mean_ms": round(statistics.fmean(values_ms), 4),
    }


def hot_add_zram(n: int) -> list[int]:
    nums = []
    for _ in range(n):
        nums.append(int(Path("/sys/class/zram-control/hot_add").read_text()))
    return nums


def hot_remove_zram(nums: list[int]) -> None:
    for num in nums:
        try:
            Path("/sys/class/zram-control/hot_remove").write_text(str(num))
        except OSError:
            pass


def ensure_udevd() -> None:
    if subprocess.run(["udevadm", "control", "--ping", "-t", "1"], capture_output=True).returncode == 0:
        return
    for binary in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"):
        if os.access(binary, os.X_OK):
            subprocess.run([binary, "--daemon"], check=True)
            subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
            return
    raise SystemExit("the udev source needs systemd-udevd (Debian package udev)")


def run_source(source: str, samples: int, held: int, workdir: Path) -> dict:
    plugin_dir = workdir / f"plugins-{source}"
    plugin_dir.mkdir()
    rules = workdir / f"bench-{source}.rules"
    rules.write_text(
        'SUBSYSTEM=="tty", KERNEL=="tty20", RESOURCE="bench-tty"\n'
        'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="bench-zram"\n'
    )
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, source], stdout=subprocess.PIPE, text=True)
    assert floor.stdout is not None
    assert floor.stdout.readline().strip() == "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    log = open(workdir / f"devplug-{source}.log", "w")
    with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devplug", "run", "--rules", str(rules), "--plugin-dir", str(plugin_dir),
             "--debug-socket", "", "--udev-source", source, "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            watch = kubelet.wait_watch(RESOURCE, timeout=20)
            watch.wait_for(lambda dl: dl.as_dict().get(DEV_ID) == "Healthy", timeout=10)
            if held:
                zwatch = kubelet.wait_watch("devplug.io/bench-zram", timeout=20)
                zwatch.wait_for(lambda dl: sum(h == "Healthy" for _i, h in dl.devices) >= held, timeout=60)
            latencies: list[float] = []
            sent: list[tuple[str, int]] = []
            uevent = f"/sys/class/tty/{TTY}/uevent"
            for k in range(samples * 2):
                action = "remove" if k % 2 == 0 else "add"
                want = "Unhealthy" if action == "remove" else "Healthy"
                n_before = len(watch.lists)
                t0 = time.perf_counter_ns()
                with open(uevent, "w") as fh:
                    fh.write(action)
                got = watch.wait_for(lambda dl: dl.as_dict().get(DEV_ID) == want, timeout=5)
                latencies.append((got.t_ns - t0) / 1e6)
                sent.append((action, t0))
                assert len(watch.lists) == n_before + 1, "one uevent must give exactly one message"
                time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            log.close()
    time.sleep(0.2)
    floor.send_signal(signal.SIGTERM)
    out, _ = floor.communicate(timeout=5)
    floor_times = [(line.split()[0], int(line.split()[1])) for line in out.splitlines() if line.strip()]
    floors: list[float] = []
    for (action, t0), (faction, t1) in zip(sent, floor_times):
        if action == faction:
            floors.append((t1 - t0) / 1e6)
    result = {"source": source, "held_devices": held, "samples": len(latencies),
              "devplug": summary(latencies), "floor": summary(floors) if floors else None}
    if floors:
        result["ratio_p50"] = round(result["devplug"]["p50_ms"] / result["floor"]["p50_ms"], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300, help="remove+add pairs per source")
    ap.add_argument("--sources", default="kernel,udev")
    ap.add_argument("--held", default="0", help="comma-separated counts of other devices held (zram)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (writes uevents under /sys)")
    results = []
    with tempfile.TemporaryDirectory(prefix="devplug-bench-") as tmp:
        for held in [int(h) for h in args.held.split(",")]:
            nums = hot_add_zram(held) if held else []
            try:
                for source in args.sources.split(","):
                    if source == "udev":
                        ensure_udevd()
                    results.append(run_source(source, args.samples, held, Path(tmp)))
            finally:
                hot_remove_zram(nums)
    report = {"benchmark": "hotplug_latency", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "results": results}
    print(json.dumps(report, indent=2))
    print()
    print(f"{'source':<8} {'held':>5} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'floor p50':>10} {'floor p99':>10} {'ratio':>6}")
    for r in results:
        d, f = r["devplug"], r["floor"] or {}
        print(f"{r['source']:<8} {r['held_devices']:>5} {r['samples']:>5} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f} "
              f"{d['max_ms']:>8.3f} {f.get('p50_ms', float('nan')):>10.3f} {f.get('p99_ms', float('nan')):>10.3f} "
              f"{r.get('ratio_p50', float('nan')):>6}")


if __name__ == "__main__":
    main()
