"""Hotplug latency: real uevent → ListAndWatch response received by the kubelet end.

For each sample the benchmark writes ``remove`` or ``add`` to /sys/class/tty/tty20/uevent
(a real kernel uevent; never ttyS0) and times until the receiver gets the list where
tty20's health flipped. The receiver (``--receiver``, see bench/receivers.py) is a process
of its own: ``go`` is bench/gokubelet, kubelet's own client stack (grpc-go, a goroutine on
``Recv``), the default when it is built; ``python`` is tests/kubelet_standin.py (grpcio's
synchronous client in a thread), which adds its own latency to every figure; ``go,python``
runs both in one run, side by side. In the same run a bare pyudev monitor in its own process (the
floor) timestamps the same uevents, so the table shows devplug's cost over netlink's.
Timestamps are CLOCK_MONOTONIC (``time.perf_counter_ns``) in every process.

``--held N`` first hot-adds N zram block devices claimed by a second resource, so the
figures show the cost with a large inventory (they are removed afterwards, also on Ctrl-C).
With 0 held, a second floor follows: the transport floor, a bare process on the same stack
(trio + devplug's h2 transport, reading netlink raw; ``--stream-floor grpc``: the old stack, trio +
trio-asyncio + grpc.aio) that only flips one device's health on each tty20 uevent and
writes it on a ListAndWatch stream to the same receiver; the gap between it and devplug is
devplug's own logic.
With ``--same-resource`` they are claimed by tty20's resource instead: every flip then
changes a resource of N+1 devices (the worst case for rebuilding the list kubelet gets).

    python bench/bench_hotplug.py [--samples 300] [--sources kernel,udev] [--held 0] [--same-resource]
                                  [--receiver auto|go|python|go,python] [--stream-floor h2|grpc|none]
                                  [--src OLD_TREE/src]
``--src`` runs another checkout's daemon under this harness (before/after in one session).
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

from benchlib import ZramPool, ensure_udevd, http_get, interrupt_on_sigterm, settle  # noqa: E402
from receivers import LineWatch, Receiver, receiver_kinds  # noqa: E402

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




def flips(watch: LineWatch, samples: int) -> tuple[list[float], list[tuple[str, int]]]:
    """``samples`` remove+add pairs on tty20: ms from the write to the list received."""
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
    return latencies, sent


#: The transport floor: devplug's stack (trio + its h2 transport) doing nothing but reading
#: netlink raw (no record, no libudev: less than devplug's own parse) and flipping one
#: device's health on each tty20 uevent, written on every stream. With
#: ``held`` others in the list (the same-resource rows), both lists are encoded beforehand:
#: what is left is the transport and the receiver decoding N+1 devices per flip.
H2_FLOOR = r"""
import functools, socket, sys, trio
from devplug.kubelet import api_pb2
from devplug.kubelet.transport import Method, Server, frame, listen
source, path, dev_id, held = sys.argv[1:5]
others = [api_pb2.Device(ID=f"virtual-block-zram{i}", health="Healthy") for i in range(int(held))]
def encoded(h):
    return api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=dev_id, health=h)] + others).SerializeToString()
lists = {h: frame(encoded(h)) for h in ("Healthy", "Unhealthy")}
health = ["Healthy"]
streams = set()
def current():
    return lists[health[0]]
def list_and_watch(request, stream):
    streams.add(stream)
    stream.on_close = lambda: streams.discard(stream)
    stream.send(current())
async def main():
    server = Server({b"/v1beta1.DevicePlugin/ListAndWatch": Method(stream=list_and_watch)})
    listener = listen(path)
    sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 15)  # NETLINK_KOBJECT_UEVENT
    sk.bind((0, 1 if source == "kernel" else 2))  # the kernel's group, or udevd's
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(server.serve, listener, grace=0.5))
        print("ready", flush=True)
        while True:
            await trio.lowlevel.wait_readable(sk.fileno())
            while True:
                try:
                    data = sk.recv(65536)
                except BlockingIOError:
                    break
                if b"DEVPATH=/devices/virtual/tty/tty20\0" in data:
                    health[0] = "Unhealthy" if b"ACTION=remove\0" in data else "Healthy"
                    message = current()
                    for stream in list(streams):
                        stream.send(message)
trio.run(main)
"""

#: The previous stack's transport floor (trio + trio-asyncio + grpc.aio + pyudev).
GRPC_FLOOR = r"""
import asyncio, sys, trio, trio_asyncio, pyudev
from devplug.kubelet import api_pb2, api_pb2_grpc
source, path, dev_id = sys.argv[1:4]
health = ["Healthy"]
class Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self):
        self.event = asyncio.Event()
    async def ListAndWatch(self, request, context):
        while True:
            await context.write(api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=dev_id, health=health[0])]))
            await self.event.wait()
            self.event.clear()
async def serve(servicer):
    import grpc
    server = grpc.aio.server()
    api_pb2_grpc.add_DevicePluginServicer_to_server(servicer, server)
    server.add_insecure_port("unix://" + path)
    await server.start()
    return server
async def main():
    async with trio_asyncio.open_loop():
        servicer = Servicer()
        server = await trio_asyncio.aio_as_trio(serve)(servicer)
        mon = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        mon.filter_by("tty")
        mon.start()
        print("ready", flush=True)
        while True:
            await trio.lowlevel.wait_readable(mon.fileno())
            while (dev := mon.poll(0)) is not None:
                if dev.sys_name == "tty20":
                    health[0] = "Unhealthy" if dev.action == "remove" else "Healthy"
                    servicer.event.set()
trio.run(main)
"""


FLOOR_STACKS = {"h2": ("h2 on trio", H2_FLOOR), "grpc": ("trio-asyncio + grpc.aio", GRPC_FLOOR)}


def stream_floor(source: str, samples: int, workdir: Path, receiver: str, stack: str = "h2",
                 held: int = 0) -> dict:
    sock = str(workdir / f"floor-{source}-{receiver}-{stack}-{held}.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if held and stack != "h2":
        raise ValueError("a transport floor with held devices is built for the h2 stack only")
    args = [source, sock, DEV_ID] + ([str(held)] if stack == "h2" else [])
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_STACKS[stack][1], *args], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with Receiver(receiver, str(workdir / f"floor-kubelet-{source}-{receiver}")) as kubelet:
            watch = kubelet.watch("floor", sock)
            watch.wait_for(lambda dl: dl.as_dict().get(DEV_ID) == "Healthy", timeout=10)
            cpu0 = kubelet.cpu_seconds()
            latencies, _sent = flips(watch, samples)
            cpu = kubelet.cpu_seconds() - cpu0
            proc.terminate()  # the stream ends before the receiver quits
    finally:
        proc.terminate()
        proc.wait(5)
    return {**summary(latencies), "receiver_cpu_us_per_list": round(cpu / len(latencies) * 1e6),
            "stack": FLOOR_STACKS[stack][0], "devices": held + 1}


def stage_breakdown(sock: str) -> dict | None:
    """devplug's own account of where each uevent's time went (its ``/stages`` route)."""
    try:
        status, body = http_get(sock, "/stages")
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def internal_latency(sock: str) -> dict | None:
    """devplug's own share, from its /metrics: uevent received → list sent (histogram mean)."""
    try:
        _status, body = http_get(sock, "/metrics")
    except OSError:
        return None
    total = count = 0.0
    for line in body.decode().splitlines():
        if line.startswith("devplug_uevent_to_send_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("devplug_uevent_to_send_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return {"received_to_sent_mean_ms": round(total / count * 1e3, 4), "sends": int(count)} if count else None


#: The daemon's code: this checkout's ``src``, or another tree's (``--src``, before/after runs).
SRC = str(ROOT / "src")


def run_source(source: str, samples: int, held: int, workdir: Path, same: bool = False,
               receiver: str = "go") -> dict:
    zram_resource = "bench-tty" if same else "bench-zram"
    tag = f"{source}-{held}{'-same' if same else ''}-{receiver}"
    plugin_dir = workdir / f"plugins-{tag}"
    plugin_dir.mkdir()
    rules = workdir / f"bench-{tag}.rules"
    rules.write_text(
        'SUBSYSTEM=="tty", KERNEL=="tty20", RESOURCE="bench-tty"\n'
        f'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="{zram_resource}"\n'
    )
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, source], stdout=subprocess.PIPE, text=True)
    assert floor.stdout is not None
    assert floor.stdout.readline().strip() == "ready"
    env = dict(os.environ, PYTHONPATH=SRC)
    log = open(workdir / f"devplug-{tag}.log", "w")
    debug_sock = str(workdir / f"debug-{tag}.sock")
    internal = None
    stages = None
    with Receiver(receiver, str(plugin_dir)) as kubelet:
        kubelet.check_clock()  # its t_ns must be this process's perf_counter_ns()
        proc = subprocess.Popen(
            [sys.executable, "-m", "devplug", "run", "--rules", str(rules), "--plugin-dir", str(plugin_dir),
             "--debug-socket", debug_sock, "--udev-source", source, "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            watch = kubelet.wait_watch(RESOURCE, timeout=20)
            watch.wait_for(lambda dl: dl.as_dict().get(DEV_ID) == "Healthy", timeout=10)
            if held:
                zwatch = kubelet.wait_watch("devplug.io/" + zram_resource, timeout=20)
                zwatch.wait_for(lambda dl: sum(h == "Healthy" for _i, h in dl.devices) >= held, timeout=60)
            cpu0 = kubelet.cpu_seconds()
            latencies, sent = flips(watch, samples)
            receiver_cpu = kubelet.cpu_seconds() - cpu0
            internal = internal_latency(debug_sock)
            stages = stage_breakdown(debug_sock)
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
    result = {"src": SRC, "receiver": receiver, "internal": internal, "stages": stages, "source": source, "held_devices": held, "same_resource": same, "samples": len(latencies),
              "receiver_cpu_us_per_list": round(receiver_cpu / len(latencies) * 1e6),
              "devplug": summary(latencies), "floor": summary(floors) if floors else None,
              # (sample index, ms) of every sample over 10 ms: when outliers happen, not only how big
              "slow_samples": [[i, round(ms, 2)] for i, ms in enumerate(latencies) if ms > 10]}
    if floors:
        result["ratio_p50"] = round(result["devplug"]["p50_ms"] / result["floor"]["p50_ms"], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300, help="remove+add pairs per source")
    ap.add_argument("--sources", default="kernel,udev")
    ap.add_argument("--held", default="0", help="comma-separated counts of other devices held (zram)")
    ap.add_argument("--same-resource", action="store_true",
                    help="held devices share tty20's resource (each flip resends a list of N+1 devices)")
    ap.add_argument("--stream-floor", default="h2", choices=("h2", "grpc", "none"),
                    help="the transport floor's stack: h2 (devplug's, the default), grpc (trio-asyncio + grpc.aio, "
                         "the previous one), none")
    ap.add_argument("--no-stream-floor", action="store_true", help="same as --stream-floor none")
    ap.add_argument("--receiver", default="auto",
                    help="kubelet end: go (bench/gokubelet), python (tests/kubelet_standin.py), both as "
                         "go,python; auto = go when it is built or buildable, else python")
    ap.add_argument("--src", default=None,
                    help="run another tree's src (an older commit) with this harness, for before/after figures; "
                         "trees without /stages show no breakdown")
    args = ap.parse_args()
    if args.src:
        global SRC
        SRC = os.path.abspath(args.src)
    if os.geteuid() != 0:
        raise SystemExit("needs root (writes uevents under /sys)")
    interrupt_on_sigterm()
    kinds, note = receiver_kinds(args.receiver)
    load_start = os.getloadavg()[0]
    if note:
        print(f"NOTE: {note}", file=sys.stderr)
    results = []
    stack = "none" if args.no_stream_floor else args.stream_floor
    with tempfile.TemporaryDirectory(prefix="devplug-bench-") as tmp:
        for held in [int(h) for h in args.held.split(",")]:
            with ZramPool() as pool:  # removes what it added, also on Ctrl-C / SIGTERM
                if held:
                    pool.add(held)
                    settle()
                same = args.same_resource and held > 0
                for source in args.sources.split(","):
                    if source == "udev":
                        ensure_udevd()
                    for kind in kinds:
                        r = run_source(source, args.samples, held, Path(tmp), same, kind)
                        # A transport floor for the rows whose list it can mirror: one device, or
                        # (h2 only) the same N+1 devices.
                        if stack != "none" and (not held or (same and stack == "h2")):
                            r["stream_floor"] = stream_floor(source, args.samples, Path(tmp), kind, stack,
                                                             held if same else 0)
                            if r["floor"]:  # the transport floor against netlink's: what 1.5x leaves
                                r["ratio_stream_floor_to_floor"] = round(
                                    r["stream_floor"]["p50_ms"] / r["floor"]["p50_ms"], 2)
                            r["ratio_p50_stream_floor"] = round(r["devplug"]["p50_ms"] / r["stream_floor"]["p50_ms"], 2)
                        results.append(r)
    report = {"benchmark": "hotplug_latency", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0], "receivers": kinds, "results": results}
    if note:
        report["note"] = note
    print(json.dumps(report, indent=2))
    print()
    print(table(results))
    if note:
        print(f"NOTE: {note}")


def table(results: list[dict]) -> str:
    nan = float("nan")
    lines = [f"{'source':<8} {'recv':<6} {'held':>6} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
             f"{'floor p50':>10} {'floor p99':>10} {'ratio':>6} {'in devplug':>11} {'recv cpu':>9}"]
    for r in results:
        d, f = r["devplug"], r["floor"] or {}
        held = f"{r['held_devices']}{'*' if r.get('same_resource') else ''}"
        lines.append(
            f"{r['source']:<8} {r.get('receiver', '?'):<6} {held:>6} {r['samples']:>5} {d['p50_ms']:>8.3f} "
            f"{d['p99_ms']:>8.3f} {d['max_ms']:>8.3f} {f.get('p50_ms', nan):>10.3f} {f.get('p99_ms', nan):>10.3f} "
            f"{r.get('ratio_p50', nan):>6} {(r['internal'] or {}).get('received_to_sent_mean_ms', nan):>11.3f} "
            f"{r.get('receiver_cpu_us_per_list', nan):>7} µs")
    for r in results:
        f = r.get("stream_floor")
        if f:
            n = f.get("devices", 1)
            listed = "one device" if n == 1 else f"{n} devices in the list"
            lines.append(f"{r['source']:<8} {r.get('receiver', '?'):<6} transport floor ({f.get('stack', 'grpc.aio')}, "
                         f"{listed}, same uevents): p50 {f['p50_ms']:.3f} p99 {f['p99_ms']:.3f} "
                         f"max {f['max_ms']:.3f} ms; "
                         f"devplug/floor p50 {r['ratio_p50_stream_floor']}; floor/netlink p50 "
                         f"{r.get('ratio_stream_floor_to_floor', nan)}; "
                         f"receiver CPU {f['receiver_cpu_us_per_list']} µs/list")
    staged = [r for r in results if (r.get("stages") or {}).get("count")]
    if staged:
        names = staged[0]["stages"]["stages"]
        before = staged[0]["stages"].get("before", ())
        lines.append("devplug's own span per uevent, p50 µs by stage (from its /stages): "
                     + "".join(f"({b}) " for b in before) + ", ".join(names) + ", total")
        for r in staged:
            p50 = r["stages"]["p50_us"]
            held = f"{r['held_devices']}{'*' if r.get('same_resource') else ''}"
            own = f"; to send(2) {p50['own']:.1f}" if "own" in p50 else ""
            lines.append(f"  {r['source']:<8} held {held:>6}: "
                         + "".join(f"({p50[b]:>5.1f}) " if b in p50 else "(  -  ) " for b in before)
                         + "  ".join(f"{p50[n]:>6.1f}" for n in names)
                         + f"   = {p50['total']:.1f} (p99 {r['stages']['p99_us']['total']:.1f}){own}")
    if staged and "send" in staged[0]["stages"]["stages"]:
        lines.append("(write: encoding and framing until send(2) is called; send: the call, which wakes the "
                     "receiver and, when both CPUs are busy, may run it before returning; to send(2): the "
                     "total without it, devplug's own work"
                     + ("; (read): before the span, from asking the socket for the message to its properties "
                        "(recvmsg, the sender's checks, the parse), not in the total)" if before else ")"))
    lines.append("(ratio: devplug p50 / bare pyudev monitor p50 on the same uevents; in devplug: mean time from "
                 "devplug reading the uevent until its list was written to the socket, from its /metrics; recv cpu: "
                 "CPU time the receiver process used per list received, which it takes from devplug's 2 cores)")
    if any(r.get("same_resource") for r in results):
        lines.append("(* held devices in tty20's own resource)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
