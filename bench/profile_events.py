"""Where the daemon's time goes: cProfile windows over cold start, burst, removals, uevent storm.

Runs ``devplug run`` under ``bench/profile_run.py`` (kernel source by default), the kubelet
stand-in in this process, and cuts one cProfile window per phase with SIGUSR1:

0. start with N zram devices present, until all N are streamed (cold start);
1. N hot-removes (each a separate uevent: the kernel takes ~20 ms per removal);
2. N hot-adds at once (burst), until all N are Healthy again;
3. M real uevents on tty20..tty29 (``change``/``add``, or with ``--flip`` ``remove``/``add``,
   so each one changes health and is sent to kubelet) until the daemon counted them;
plus a tracemalloc summary (SIGUSR2) after phase 2 with ``--tracemalloc``.
Prints, per window, the top functions by own time and by cumulative time, as % of the
window's profiled total. Every zram device created is removed.

    python bench/profile_events.py [--devices 1000] [--uevents 2000] [--source kernel] [--top 20]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import re
import signal
import tempfile
import time
from pathlib import Path

from benchlib import (ROOT, Daemon, ZramPool, interrupt_on_sigterm, require_root, settle, uevents_total,
                      wait_http)
from tests.kubelet_standin import KubeletStandin

RESOURCE = "devplug.io/bench-zram"
RULES = ('SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="bench-zram"\n'
         'SUBSYSTEM=="tty", KERNEL=="tty2[0-9]", RESOURCE="bench-tty"\n')
ZRAM_ID = re.compile(r"zram(\d+)$")


def count(dl, nums: set[int], health: str) -> int:
    return sum(1 for i, h in dl.devices if h == health and (m := ZRAM_ID.search(i)) and int(m.group(1)) in nums)


def report(path: Path, title: str, top: int) -> str:
    st = pstats.Stats(str(path))
    total = st.total_tt or 1e-9
    out = io.StringIO()
    out.write(f"\n=== {title}: {total:.3f} s profiled (main thread, cProfile overhead included)\n")
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        short = file.replace(str(ROOT) + "/", "").replace(os.path.dirname(os.__file__) + "/", "")
        short = re.sub(r".*/site-packages/", "", short)
        rows.append((tt, ct, nc, f"{short}:{line}({func})"))
    for key, label in ((0, "own time"), (1, "cumulative")):
        out.write(f"--- by {label}\n{'%':>6} {'s':>7} {'calls':>8}  function\n")
        for r in sorted(rows, key=lambda r: r[key], reverse=True)[:top]:
            out.write(f"{100 * r[key] / total:6.1f} {r[key]:7.3f} {r[2]:8d}  {r[3]}\n")
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--uevents", type=int, default=2000)
    ap.add_argument("--source", default="kernel")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--flip", action="store_true", help="tty uevents alternate remove/add (each one is sent)")
    ap.add_argument("--keep", default=None, help="directory to keep the .prof files in")
    args = ap.parse_args()
    require_root()
    interrupt_on_sigterm()
    with ZramPool() as pool, tempfile.TemporaryDirectory(prefix="devplug-prof-") as tmpdir:
        tmp = Path(args.keep or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        rules = tmp / "prof.rules"
        rules.write_text(RULES)
        plugin_dir = tmp / "plugins"
        sock = str(tmp / "debug.sock")
        nums = set(pool.add(args.devices))
        settle()
        wrapper = [str(ROOT / "bench" / "profile_run.py"), "--cprofile", str(tmp / "win")]
        if args.tracemalloc:
            wrapper += ["--tracemalloc", str(tmp / "mem")]
        with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet:
            daemon = Daemon(["--rules", str(rules), "--plugin-dir", str(plugin_dir), "--debug-socket", sock,
                             "--udev-source", args.source, "--log-level", "warning"], tmp / "devplug.log",
                            wrapper=wrapper)
            try:
                def cut() -> None:
                    daemon.proc.send_signal(signal.SIGUSR1)
                    time.sleep(0.3)

                watch = kubelet.wait_watch(RESOURCE, timeout=60)
                watch.wait_for(lambda dl: count(dl, nums, "Healthy") == len(nums), timeout=120)
                wait_http(sock, daemon=daemon)
                cut()
                settle()
                pool.remove(sorted(nums))
                watch.wait_for(lambda dl: count(dl, nums, "Unhealthy") == len(nums), timeout=120)
                cut()
                nums = set(pool.add(args.devices))
                watch.wait_for(lambda dl: count(dl, nums, "Healthy") == len(nums), timeout=120)
                cut()
                if args.tracemalloc:
                    daemon.proc.send_signal(signal.SIGUSR2)
                    time.sleep(1.0)
                seen0 = uevents_total(sock)
                for k in range(args.uevents):
                    with open(f"/sys/class/tty/tty2{k % 10}/uevent", "w") as f:
                        if args.flip:  # every event flips health: rules → inventory → stream send
                            f.write("remove" if (k // 10) % 2 == 0 else "add")
                        else:
                            f.write("change" if (k // 10) % 2 == 0 else "add")
                deadline = time.monotonic() + 60
                while uevents_total(sock) - seen0 < args.uevents and time.monotonic() < deadline:
                    time.sleep(0.05)
                cut()
                daemon.alive()
            finally:
                daemon.stop()
        titles = [f"cold start with {args.devices} devices", f"{args.devices} hot-removes",
                  f"burst of {args.devices} hot-adds", f"{args.uevents} tty uevents"]
        for k, title in enumerate(titles):
            path = tmp / f"win.{k}.prof"
            if path.exists():
                print(report(path, title, args.top))
        if args.tracemalloc and (tmp / "mem.0.txt").exists():
            print("\n=== tracemalloc after the burst (top 25 lines)")
            text = (tmp / "mem.0.txt").read_text()
            head, _, by_line = text.partition("## by line\n")
            print(head.split("\n")[0])
            print("\n".join(by_line.splitlines()[:25]))


if __name__ == "__main__":
    main()
