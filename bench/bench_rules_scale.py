"""Rules at scale: 50,000 rules parsed (time, CPU, memory), and 50,000 rules that GOTO one label.

Each case runs in a fresh process (so resident memory is the parse's own): it builds the
rules text, measures RSS, parses with ``compile_rules`` (what ``read_rules`` calls), and
measures again. ``--src DIR`` measures another checkout's ``src`` (for before/after
figures). Prints one JSON object, then a short table.

    python bench/bench_rules_scale.py [--rules 50000] [--src /path/to/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import gc, json, os, random, resource, sys, time
sys.path.insert(0, sys.argv[1])
from devplug.core.rules import compile_rules  # first: bench_rules puts this tree's src on the path
sys.path.insert(0, sys.argv[2])
from bench_rules import make_devices, make_rules
n, case = int(sys.argv[3]), sys.argv[4]
if case == "realistic":
    rnd = random.Random(1)
    text = make_rules(n, make_devices(1000, rnd), rnd)
else:  # every rule jumps to one label at the end
    text = "".join(f'KERNEL=="dev{i}", GOTO="end"\n' for i in range(n)) + 'LABEL="end"\n'
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
gc.collect()
before, peak0 = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0, c0 = time.perf_counter(), time.process_time()
ruleset = compile_rules([("bench.rules", text)])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
gc.collect()
after, peak = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"case": case, "module": compile_rules.__module__ and sys.modules["devplug"].__file__, "rules": len(ruleset.rules), "bytes": len(text.encode()),
                  "parse_seconds": round(wall, 3), "parse_cpu_seconds": round(cpu, 3),
                  "rss_growth_mib": round((after - before) / 2**20, 1),
                  "peak_growth_mib": round(max(0, peak - max(peak0, before)) / 2**20, 1)}))
"""


def run_case(src: str, n: int, case: str, timeout: float) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, src, HERE, str(n), case], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{case} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=50000)
    ap.add_argument("--src", default=os.path.join(HERE, "..", "src"), help="the src directory to measure")
    ap.add_argument("--cases", default="realistic,goto")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    results = [run_case(os.path.abspath(args.src), args.rules, c, args.timeout) for c in args.cases.split(",")]
    print(json.dumps({"src": os.path.abspath(args.src), "python": sys.version.split()[0], "cases": results}))
    print(f"{'case':<10} {'rules':>7} {'MB text':>8} {'wall s':>7} {'cpu s':>7} {'RSS +MiB':>9} {'peak +MiB':>10}")
    for r in results:
        print(f"{r['case']:<10} {r['rules']:>7} {r['bytes'] / 1e6:>8.1f} {r['parse_seconds']:>7.2f} "
              f"{r['parse_cpu_seconds']:>7.2f} {r['rss_growth_mib']:>9.1f} {r['peak_growth_mib']:>10.1f}")


if __name__ == "__main__":
    main()
