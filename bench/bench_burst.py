"""Burst: 1,000 real block devices hot-added at once, then all removed.

For each source (``kernel``, ``udev``) a ``devplug run`` claims ``KERNEL=="zram*"`` and the
kubelet stand-in (in this process) holds its ListAndWatch stream. The benchmark reads
/sys/class/zram-control/hot_add 1,000 times as fast as the kernel allows, and times until
the stand-in receives a list with all 1,000 new IDs Healthy, counting the ListAndWatch
messages that took (coalescing); then writes every number to hot_remove and times until
all 1,000 are Unhealthy. Floors of the same run: how long the hot_add (hot_remove) loop
itself took, and when a bare pyudev monitor in its own process saw the last add (remove).
RSS of the daemon (VmRSS) before, at the peak (VmHWM) and after the removal.
Then a "queued" cycle: the daemon is stopped (SIGSTOP) while the 1,000 adds (removes)
happen and continued once the floor monitor saw them all, so the time from SIGCONT to the
complete list is devplug's own cost of draining 1,000 queued uevents, kernel excluded.

    python bench/bench_burst.py [--devices 1000] [--sources kernel,udev]
Needs root. Prints one JSON object, then a table. Every zram device created is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from benchlib import (Daemon, FloorMonitor, ZramPool, emit, ensure_udevd, interrupt_on_sigterm, machine,
                      mib, require_root, settle)
from tests.kubelet_standin import DeviceList, KubeletStandin

RESOURCE = "devplug.io/bench-zram"
RULES = 'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="bench-zram"\n'
ZRAM_ID = re.compile(r"zram(\d+)$")


def ours(dl: DeviceList, nums: set[int]) -> dict[int, str]:
    """zram number → health, for the devices this run created."""
    out = {}
    for dev_id, health in dl.devices:
        m = ZRAM_ID.search(dev_id)
        if m and int(m.group(1)) in nums:
            out[int(m.group(1))] = health
    return out


def all_with(nums: set[int], health: str):
    def pred(dl: DeviceList) -> bool:
        got = ours(dl, nums)
        return len(got) == len(nums) and all(h == health for h in got.values())
    return pred


def ms(ns: float) -> float:
    return round(ns / 1e6, 1)


def queued_cycle(daemon: Daemon, watch, floor: FloorMonitor, pool: ZramPool, n: int) -> dict:
    """The same burst with the daemon stopped (SIGSTOP) until netlink has delivered it all:
    from SIGCONT, the time to drain N queued uevents is devplug's own cost, kernel excluded."""
    out = {}
    for phase, health in (("add", "Healthy"), ("remove", "Unhealthy")):
        settle()
        time.sleep(0.3)
        since = floor.mark()
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            if phase == "add":
                nums = pool.add(n)
                numset, names = set(nums), {f"zram{k}" for k in nums}
            else:
                if pool.remove(nums):
                    raise RuntimeError("zram devices stayed busy")
            if floor.wait(phase, names, timeout=120, since=since) is None:
                raise RuntimeError(f"the floor monitor did not see every {phase}")
            time.sleep(0.2)
            mark = len(watch.lists)
        finally:
            t_cont = time.perf_counter_ns()
            os.kill(daemon.pid, signal.SIGCONT)
        got = watch.wait_for(all_with(numset, health), timeout=120)
        out[phase] = {"drain_ms": ms(got.t_ns - t_cont),
                      "messages": sum(1 for dl in watch.lists[mark:] if dl.t_ns <= got.t_ns)}
    return out


def run_source(source: str, n: int, pool: ZramPool, workdir: Path, with_queued: bool = True) -> dict:
    plugin_dir = workdir / f"plugins-{source}"
    plugin_dir.mkdir()
    rules = workdir / "burst.rules"
    rules.write_text(RULES)
    floor = FloorMonitor(source, "block", "zram")
    daemon = None
    try:
        with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet:
            daemon = Daemon(["--rules", str(rules), "--plugin-dir", str(plugin_dir), "--debug-socket", "",
                             "--udev-source", source, "--log-level", "warning",
                             # Every removed ID stays listed Unhealthy, as kubelet would keep it while a
                             # pod holds it: without PodResources the default cap (256) forgets the rest.
                             "--max-unhealthy", str(2 * n + 16)], workdir / f"devplug-{source}.log")
            watch = kubelet.wait_watch(RESOURCE, timeout=30)
            watch.wait_count(1, timeout=10)
            time.sleep(1.0)  # settle: startup allocations done, nothing in flight
            daemon.alive()
            rss_before = daemon.memory()
            lists_before = len(watch.lists)

            t0 = time.perf_counter_ns()
            nums = pool.add(n)
            t_added = time.perf_counter_ns()
            numset = set(nums)
            names = {f"zram{k}" for k in nums}
            got = watch.wait_for(all_with(numset, "Healthy"), timeout=120)
            t_floor_add = floor.wait("add", names, timeout=30)
            add_msgs = sum(1 for dl in watch.lists[lists_before:] if dl.t_ns <= got.t_ns)
            rss_peak = daemon.memory()

            settle()  # udevd must be done with the new disks (it opens them: EBUSY) before removal
            time.sleep(0.5)
            lists_mid = len(watch.lists)
            t1 = time.perf_counter_ns()
            left = pool.remove(nums)
            t_removed = time.perf_counter_ns()
            if left:
                raise RuntimeError(f"{len(left)} zram devices stayed busy")
            gone = watch.wait_for(all_with(numset, "Unhealthy"), timeout=120)
            t_floor_rm = floor.wait("remove", names, timeout=30)
            rm_msgs = sum(1 for dl in watch.lists[lists_mid:] if dl.t_ns <= gone.t_ns)
            time.sleep(1.0)
            rss_after = daemon.memory()
            queued = queued_cycle(daemon, watch, floor, pool, n) if with_queued else None
            errors = daemon.errors()
    finally:
        if daemon is not None:
            daemon.stop()
        floor.stop()
    return {
        "source": source,
        "devices": n,
        "add": {
            "all_healthy_ms": ms(got.t_ns - t0),
            "hot_add_loop_ms": ms(t_added - t0),
            "floor_last_seen_ms": ms(t_floor_add - t0) if t_floor_add else None,
            "after_floor_ms": ms(got.t_ns - t_floor_add) if t_floor_add else None,
            "messages": add_msgs,
        },
        "remove": {
            "all_unhealthy_ms": ms(gone.t_ns - t1),
            "hot_remove_loop_ms": ms(t_removed - t1),
            "floor_last_seen_ms": ms(t_floor_rm - t1) if t_floor_rm else None,
            "after_floor_ms": ms(gone.t_ns - t_floor_rm) if t_floor_rm else None,
            "messages": rm_msgs,
        },
        "queued": queued,
        "rss_mib": {"before": mib(rss_before["VmRSS"]), "peak": mib(rss_peak["VmHWM"]),
                    "after_remove": mib(rss_after["VmRSS"]), "peak_at_end": mib(rss_after["VmHWM"])},
        "daemon_errors": errors,
    }


def table(results: list[dict]) -> str:
    lines = [f"{'source':<7} {'phase':<7} {'all seen':>9} {'loop':>8} {'floor':>8} {'after floor':>12} "
             f"{'msgs':>5}   RSS MiB before/peak/after"]
    for r in results:
        for phase, key in (("add", "all_healthy_ms"), ("remove", "all_unhealthy_ms")):
            p = r[phase]
            loop = p["hot_add_loop_ms"] if phase == "add" else p["hot_remove_loop_ms"]
            rss = r["rss_mib"]
            lines.append(f"{r['source']:<7} {phase:<7} {p[key]:>7} ms {loop:>5} ms {p['floor_last_seen_ms']!s:>5} ms "
                         f"{p['after_floor_ms']!s:>9} ms {p['messages']:>5}   "
                         + (f"{rss['before']}/{rss['peak']}/{rss['after_remove']}" if phase == "add" else ""))
    lines.append("(times from the first hot_add / hot_remove; 'after floor' = devplug's list received minus "
                 "the bare monitor's last event)")
    for r in results:
        q = r.get("queued")
        if q:
            lines.append(f"{r['source']:<7} queued: {r['devices']} adds drained in {q['add']['drain_ms']} ms "
                         f"({q['add']['messages']} msgs), {r['devices']} removes in {q['remove']['drain_ms']} ms "
                         f"({q['remove']['messages']} msgs) after SIGCONT")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--sources", default="kernel,udev")
    ap.add_argument("--no-queued", action="store_true", help="skip the SIGSTOP/SIGCONT drain cycle")
    args = ap.parse_args()
    require_root()
    interrupt_on_sigterm()
    results = []
    with ZramPool() as pool, tempfile.TemporaryDirectory(prefix="devplug-burst-") as tmp:
        for source in args.sources.split(","):
            if source == "udev":
                ensure_udevd()
            settle()
            results.append(run_source(source, args.devices, pool, Path(tmp), not args.no_queued))
    emit({"benchmark": "burst", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
          "goal_all_healthy_ms": 500, "results": results}, table(results))


if __name__ == "__main__":
    main()
