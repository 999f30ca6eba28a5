"""Cold start with 1,000 devices present: process start → all 1,000 streamed to kubelet.

Hot-adds 1,000 zram block devices (claimed by ``KERNEL=="zram*"``), waits for udevd to
settle, then for each source starts ``devplug run`` (``Popen``) with the kubelet stand-in
already listening and times until the stand-in receives a ListAndWatch list holding all
1,000 Healthy; stops it (SIGTERM) and starts it again: the second start's IDs must be the
first's exactly (kubelet keeps allocations by ID). The floor of the same run: a bare
``python`` that imports what devplug runs on (trio, h2, protobuf, pyudev) and enumerates the
same block devices through libudev.

    python bench/bench_coldstart.py [--devices 1000] [--sources kernel,udev]
Needs root. Prints one JSON object, then a table. Every zram device created is removed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (Daemon, ZramPool, emit, ensure_udevd, interrupt_on_sigterm, machine, mib,
                      require_root, settle)
from tests.kubelet_standin import DeviceList, KubeletStandin

RESOURCE = "devplug.io/bench-zram"
RULES = 'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="bench-zram"\n'
ZRAM_ID = re.compile(r"zram(\d+)$")

FLOOR = r"""
import sys, time
import trio, h2.connection, google.protobuf, pyudev
t_import = time.perf_counter_ns()
ctx = pyudev.Context()
n = 0
for dev in ctx.list_devices(subsystem="block"):
    if dev.sys_name.startswith("zram"):
        dict(dev.properties)
        n += 1
print(t_import, time.perf_counter_ns(), n, flush=True)
"""


def floor(repeat: int = 3) -> dict:
    """Best of ``repeat``: Popen → libraries imported, → 1,000 devices enumerated."""
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True).stdout
        t_import, t_enum, n = (int(x) for x in out.split())
        r = {"imports_ms": round((t_import - t0) / 1e6, 1), "enumerated_ms": round((t_enum - t0) / 1e6, 1),
             "devices": n}
        if best is None or r["enumerated_ms"] < best["enumerated_ms"]:
            best = r
    assert best is not None
    return best


def start_once(source: str, nums: set[int], workdir: Path, tag: str) -> dict:
    plugin_dir = workdir / f"plugins-{tag}"
    plugin_dir.mkdir()
    rules = workdir / "coldstart.rules"
    rules.write_text(RULES)

    def complete(dl: DeviceList) -> bool:
        got = [h for i, h in dl.devices if (m := ZRAM_ID.search(i)) and int(m.group(1)) in nums]
        return len(got) == len(nums) and all(h == "Healthy" for h in got)

    with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet:
        daemon = Daemon(["--rules", str(rules), "--plugin-dir", str(plugin_dir), "--debug-socket", "",
                         "--udev-source", source, "--log-level", "warning"], workdir / f"devplug-{tag}.log")
        t0 = daemon.t_start_ns
        try:
            watch = kubelet.wait_watch(RESOURCE, timeout=30)
            got = watch.wait_for(complete, timeout=60)
            reg = kubelet.wait_registration(RESOURCE)
            first = watch.lists[0]
            time.sleep(0.5)
            rss = daemon.memory()
            errors = daemon.errors()
        finally:
            daemon.stop()
    ids = sorted(i for i, _h in got.devices if (m := ZRAM_ID.search(i)) and int(m.group(1)) in nums)
    return {
        "registered_ms": round((reg.t_ns - t0) / 1e6, 1),
        "first_list_ms": round((first.t_ns - t0) / 1e6, 1),
        "all_streamed_ms": round((got.t_ns - t0) / 1e6, 1),
        "lists_until_complete": watch.lists.index(got) + 1,
        "rss_mib": mib(rss["VmRSS"]),
        "ids": ids,
        "daemon_errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--sources", default="kernel,udev")
    args = ap.parse_args()
    require_root()
    interrupt_on_sigterm()
    results = []
    with ZramPool() as pool, tempfile.TemporaryDirectory(prefix="devplug-coldstart-") as tmp:
        if "udev" in args.sources:
            ensure_udevd()
        nums = set(pool.add(args.devices))
        settle()
        fl = floor()
        for source in args.sources.split(","):
            first = start_once(source, nums, Path(tmp), f"{source}-1")
            second = start_once(source, nums, Path(tmp), f"{source}-2")
            same = first["ids"] == second["ids"]
            n_ids = len(first["ids"])
            for r in (first, second):
                del r["ids"]
            results.append({"source": source, "devices": args.devices, "ids": n_ids, "ids_identical": same,
                            "first_start": first, "restart": second})
    report = {"benchmark": "coldstart", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "goal_all_streamed_ms": 1000, "floor": fl, "results": results}
    lines = [f"{'source':<7} {'start':<8} {'registered':>11} {'1st list':>9} {'all streamed':>13} {'lists':>6} "
             f"{'RSS MiB':>8}  same IDs"]
    for r in results:
        for name in ("first_start", "restart"):
            s = r[name]
            lines.append(f"{r['source']:<7} {name:<8} {s['registered_ms']:>8} ms {s['first_list_ms']:>6} ms "
                         f"{s['all_streamed_ms']:>10} ms {s['lists_until_complete']:>6} {s['rss_mib']:>8}  "
                         f"{r['ids_identical'] if name == 'restart' else ''}")
    lines.append(f"floor (bare python: import trio, h2, protobuf, pyudev; enumerate {fl['devices']} zram "
                 f"through libudev): imports {fl['imports_ms']} ms, enumerated {fl['enumerated_ms']} ms")
    emit(report, "\n".join(lines))


if __name__ == "__main__":
    main()
