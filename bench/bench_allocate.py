"""Allocate and GetPreferredAllocation latency with 1,000 devices in one resource.

The plugin (the real KubeletAdapter: trio and devplug's h2 transport) runs in a child
process; this process plays kubelet with gRPC's synchronous client over the unix socket,
one call at a time, and measures each call's round trip; GetDevicePluginOptions, which
does no work, is the floor of the same run. Prints JSON, then a table.

    PYTHONPATH=src python bench/bench_allocate.py [--devices 1000] [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from devplug.kubelet import api_pb2, api_pb2_grpc, socket_name  # noqa: E402

R = "devplug.io/bench"

CHILD = r"""
import sys, trio
from devplug.core.inventory import Inventory, Sighting
from devplug.kubelet import KubeletAdapter
from devplug.core.rules.model import Claim, Mount
R, n = sys.argv[2], int(sys.argv[3])
claim = Claim(resource=R, options=frozenset({"symlinks", "usb_node"}), envs=(("BENCH", "1"),),
              mounts=(Mount("/etc/bench", "/etc/bench", True),))
inv = Inventory()
for k in range(n):
    inv.apply(Sighting(key=f"/sys/devices/bench/{k}", present=True, resource=R, base_id=f"dev{k:04d}",
                       claim=claim, devnode=f"/dev/bench{k}", symlinks=(f"/dev/serial/by-id/bench-{k}",),
                       usb_node=f"/dev/bus/usb/{k // 100 + 1:03d}/{k % 100 + 1:03d}",
                       topology=f"hub{k // 8}"))
async def main():
    ad = KubeletAdapter(plugin_dir=sys.argv[1], inventory=inv, register=False)
    ad.set_resources([R])
    await ad.run()
trio.run(main)
"""


def summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def timed(fn, calls: int) -> list[int]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rnd = random.Random(args.seed)

    d = tempfile.mkdtemp(prefix="dp-bench-", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    child = subprocess.Popen([sys.executable, "-c", CHILD, d, R, str(args.devices)], env=env)
    path = os.path.join(d, socket_name(R))
    try:
        channel = grpc.insecure_channel("unix://" + path)
        stub = api_pb2_grpc.DevicePluginStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=1, wait_for_ready=True)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
        ids = [f"dev{k:04d}" for k in range(args.devices)]

        def alloc(k: int):
            req = api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=rnd.sample(ids, k))]
            )
            return lambda: stub.Allocate(req, timeout=5)

        def pref(size: int):
            req = api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=ids, must_include_deviceIDs=[rnd.choice(ids)], allocation_size=size
                    )
                ]
            )
            return lambda: stub.GetPreferredAllocation(req, timeout=5)

        cases = {
            # The floor: a unary call that does no work, same socket, same process pair.
            "GetDevicePluginOptions (floor)": lambda: stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5),
            "Allocate(1 device)": alloc(1),
            "Allocate(10 devices)": alloc(10),
            "GetPreferredAllocation(1000 available, size 4)": pref(4),
            "GetPreferredAllocation(1000 available, size 64)": pref(64),
        }
        results = {}
        for name, fn in cases.items():
            timed(fn, min(200, args.calls))  # warm up
            results[name] = summary(timed(fn, args.calls))
        print(json.dumps({"devices": args.devices, "calls": args.calls, "results": results}, indent=1))
        print(f"\n{'call':<50} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for name, r in results.items():
            print(f"{name:<50} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.3f}")
        channel.close()
    finally:
        child.terminate()
        child.wait(10)
        shutil.rmtree(d, ignore_errors=True)  # the child's socket (SIGTERM leaves it)


if __name__ == "__main__":
    main()
