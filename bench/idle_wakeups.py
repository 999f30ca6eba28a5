"""How often the device plugin process wakes up while nothing happens.

Runs the kubelet adapter (one resource on the h2 transport, registered with the kubelet
stand-in in another process, one ListAndWatch stream open) in a child process, lets it
settle, then counts context switches of each of its threads over a window. Prints JSON.

    PYTHONPATH=src python bench/idle_wakeups.py [--seconds 10] [--windows N] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, trio
from devplug.core.inventory import Inventory, Sighting
from devplug.core.rules.model import Claim
import devplug.kubelet.adapter as adapter_mod
R = "devplug.io/serial"
inv = Inventory()
for k in range(2):
    inv.apply(Sighting(key=f"/sys/d{k}", present=True, resource=R, base_id=f"D{k}", claim=Claim(resource=R)))
async def main():
    ad = adapter_mod.KubeletAdapter(plugin_dir=sys.argv[1], inventory=inv)
    ad.set_resources([R])
    await ad.run()
trio.run(main)
"""


def switches(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n = sum(
                    int(line.split()[1])
                    for line in f
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
                )
        except FileNotFoundError:
            continue
        out[f"{tid}:{name}"] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--windows", type=int, default=1, help="also report the rate per sub-window")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the plugin process")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="dp-idle-", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    standin = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "kubelet_standin.py"), d],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert json.loads(standin.stdout.readline())["event"] == "ready"
    child_env = dict(env, **dict(kv.split("=", 1) for kv in args.env))
    child = subprocess.Popen([sys.executable, "-c", CHILD, d], env=child_env)
    try:
        seen = set()
        while "list" not in seen:
            seen.add(json.loads(standin.stdout.readline())["event"])
        time.sleep(args.settle)
        start = before = switches(child.pid)
        windows = []
        for _ in range(args.windows):
            time.sleep(args.seconds / args.windows)
            now = switches(child.pid)
            windows.append(round(sum(now[k] - before.get(k, 0) for k in now) * args.windows / args.seconds, 2))
            before = now
        after = before
        per_thread = {
            k: round((after[k] - start.get(k, 0)) / args.seconds, 2)
            for k in after
            if after[k] - start.get(k, 0)
        }
        result = {
            "seconds": args.seconds,
            "env": args.env,
            "threads": len(after),
            "wakeups_per_s": round(sum(per_thread.values()), 2),
            "per_window": windows,
            "per_thread": per_thread,
        }
        print(json.dumps(result, indent=1))
    finally:
        child.terminate()
        child.wait(10)
        standin.stdin.write("quit\n")
        standin.stdin.close()
        standin.wait(10)
        shutil.rmtree(d, ignore_errors=True)  # the child's socket (SIGTERM leaves it)


if __name__ == "__main__":
    main()
