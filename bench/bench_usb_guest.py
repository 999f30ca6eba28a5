"""Real USB hot-plug in the QEMU guest: plug → kubelet sees Healthy, unplug → Unhealthy.

Everything runs in the USB test guest (``tests/usb``: Debian's kernel under TCG, the host's
root over 9p): ``devplug run`` on its embedded rules, the kubelet stand-in (in the guest's
agent) and, as the floor, a bare pyudev monitor in its own process printing when the
``ttyUSB`` uevents reach it from each netlink source. The host plugs and unplugs a QEMU
usb-serial (FTDI 0403:6001) over QMP, ``--cycles`` times per source.

Times are taken on the guest's CLOCK_MONOTONIC. The origin of each sample is the QMP
``device_add`` / ``device_del`` sent by the host, mapped to the guest's clock through the
agent (the offset with the smallest round trip of a few pings; its uncertainty, half that
round trip, is printed). So both the floor and devplug include QEMU attaching the device,
the guest's xHCI enumeration and, for the udev source, udevd's rules: the *ratio* devplug /
floor per sample is the figure to read. Absolute TCG times are not comparable with the host's
benchmarks (the guest runs ~20× slower than the host; two shared cores).

Each step waits ``--pause`` seconds first (1 by default), so it times that step alone: sent
right after kubelet saw the plug, an unplug waited for what devplug and udevd still had to do
for the plug (with the kernel source: udevd's database repeats, the port's and interface's
``bind``), on the guest's one vCPU. ``--pause 0`` runs the steps back to back, as before
2026-11-28.

    python bench/bench_usb_guest.py [--cycles 50] [--sources kernel,udev] [--pause 1]
Needs qemu-system-x86 and linux-image-amd64 (``scripts/setup --test``). Prints one JSON
object, then a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "src"), str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchlib import emit, machine  # noqa: E402
from tests.usb.guest import Guest, GuestError, unavailable_reason  # noqa: E402

FTDI = "devplug.io/ftdi-serial"
SERIAL = "BENCH0001"
DEV_ID = f"0403-6001-{SERIAL}-if00"

FLOOR = r"""
import select, sys, time, pyudev
ctx = pyudev.Context()
mons = {}
for source in ("kernel", "udev"):
    mon = pyudev.Monitor.from_netlink(ctx, source=source)
    mon.filter_by("tty")
    try:
        mon.set_receive_buffer_size(16 * 1024 * 1024)
    except Exception:
        pass
    mon.start()
    mons[mon.fileno()] = (source, mon)
print("ready", flush=True)
while True:
    for fd in select.select(list(mons), [], [])[0]:
        source, mon = mons[fd]
        while (dev := mon.poll(0)) is not None:
            if dev.sys_name.startswith("ttyUSB"):
                print(source, dev.action, dev.sys_name, time.perf_counter_ns(), flush=True)
"""


def clock_offset(guest: Guest, tries: int = 7) -> tuple[int, int]:
    """(guest − host CLOCK_MONOTONIC in ns, half the best round trip in ns)."""
    best: Optional[tuple[int, int]] = None
    for _ in range(tries):
        t0 = time.perf_counter_ns()
        t_guest = guest.call("ping")["t_ns"]
        t1 = time.perf_counter_ns()
        rtt = t1 - t0
        if best is None or rtt < 2 * best[1]:
            best = (t_guest - (t0 + t1) // 2, rtt // 2)
    assert best is not None
    return best


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"p50": round(statistics.median(values), 3), "p90": round(pct(values, 0.9), 3),
            "max": round(max(values), 3)}


def run_source(guest: Guest, source: str, cycles: int, without_udevd: bool = False,
               pause: float = 1.0) -> dict[str, Any]:
    """``cycles`` plug + unplug pairs with ``--udev-source source``.

    ``without_udevd`` (kernel source only): udevd is stopped for the run, so devplug does not
    share the guest's one vCPU with udevd's workers handling the same burst (the drivers are
    preloaded and devtmpfs makes the nodes, so plugging works without it).
    """
    d = f"/tmp/bench-{source}{'-no-udevd' if without_udevd else ''}"
    if without_udevd:
        guest.run("udevadm", "control", "--exit")
    guest.run("mkdir", "-p", f"{d}/plugins")
    guest.call("kubelet_start", plugin_dir=f"{d}/plugins")
    floor_name, dp_name = f"floor-{d[5:]}", f"devplug-{d[5:]}"
    guest.call("spawn", name=floor_name, argv=[sys.executable, "-c", FLOOR])
    guest.call("wait_log", name=floor_name, needle="ready", timeout=180, wait=240)
    guest.call("spawn", name=dp_name, argv=[
        sys.executable, "-m", "devplug", "run", "--plugin-dir", f"{d}/plugins", "--debug-socket",
        f"{d}/debug.sock", "--udev-source", source, "--log-level", "warning"])
    seen_lists = len(guest.call("kubelet_wait", resource=FTDI, timeout=240, wait=300)["lists"])
    offset, uncertainty = clock_offset(guest)
    samples: list[tuple[str, int, int]] = []  # (health wanted, origin in guest ns, list received ns)
    missed: list[dict[str, Any]] = []  # a change kubelet never saw (within 60 s)
    foreign: set[str] = set()  # IDs other than the adapter's that showed up in its resource
    try:
        for i in range(cycles):
            for want in ("Healthy", "Unhealthy"):
                if pause > 0:
                    guest.run("sleep", str(pause))
                t_host = time.perf_counter_ns()
                if want == "Healthy":
                    plugged = guest.plug_serial(SERIAL, port=1 + i % 2)
                else:
                    guest.unplug(plugged)
                try:
                    r = guest.call("kubelet_wait", resource=FTDI, want={DEV_ID: want}, subset=True,
                                   timeout=60, wait=120)
                except GuestError as exc:
                    missed.append({"cycle": i, "want": want, "error": str(exc)[-300:]})
                    continue
                foreign.update(i for lst in r["lists"] for i, _h in lst if i != DEV_ID)
                # The first list since the command that shows the change (not a later one).
                k = next((k for k in range(seen_lists, len(r["lists"]))
                          if dict(r["lists"][k]).get(DEV_ID) == want), None)
                seen_lists = len(r["lists"])
                if k is None:
                    missed.append({"cycle": i, "want": want, "error": "no new list with the change"})
                    continue
                samples.append((want, t_host + offset, r["t_ns"][k]))
    finally:
        guest.unplug_all()
        end = guest.call("stop", name=dp_name, timeout=60, wait=120)
        floor_log = guest.call("stop", name=floor_name, timeout=30, wait=60)["log"]
        guest.call("kubelet_stop")
        if without_udevd:
            guest.sh("/lib/systemd/systemd-udevd --daemon && udevadm settle -t 60")
    seen = [(s, a, int(t)) for s, a, _name, t in (line.split() for line in floor_log.splitlines()
                                                  if line.count(" ") == 3)]
    result: dict[str, Any] = {"source": source, "udevd": not without_udevd, "cycles": cycles, "pause_s": pause,
                              "clock_uncertainty_ms": round(uncertainty / 1e6, 3),
                              "devplug_exit": end["rc"], "missed": missed, "foreign_ids": sorted(foreign)}
    for want, action in (("Healthy", "add"), ("Unhealthy", "remove")):
        dp_ms, floor_ms, ratios = [], [], []
        for k, (w, origin, t_list) in enumerate(samples):
            if w != want:
                continue
            nxt = samples[k + 1][1] if k + 1 < len(samples) else None
            t_floor = next((t for s, a, t in seen if s == source and a == action and t >= origin
                            and (nxt is None or t < nxt)), None)
            if t_floor is None:
                continue
            dp_ms.append((t_list - origin) / 1e6)
            floor_ms.append((t_floor - origin) / 1e6)
            ratios.append((t_list - origin) / (t_floor - origin))
        result["plug" if want == "Healthy" else "unplug"] = {
            "samples": len(ratios), "devplug_ms": summary(dp_ms), "floor_ms": summary(floor_ms),
            "ratio": summary(ratios), "devplug_after_floor_ms": summary([a - b for a, b in zip(dp_ms, floor_ms)])}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=50, help="plug + unplug cycles per source")
    ap.add_argument("--sources", default="kernel,udev")
    ap.add_argument("--kernel-without-udevd", action="store_true",
                    help="also run the kernel source with udevd stopped in the guest")
    ap.add_argument("--pause", type=float, default=1.0,
                    help="seconds to wait in the guest before each plug and unplug (0: back to back)")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"USB guest unavailable: {reason}")
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    with Guest() as guest:
        results = [run_source(guest, s, args.cycles, pause=args.pause) for s in args.sources.split(",")]
        if args.kernel_without_udevd:
            results.append(run_source(guest, "kernel", args.cycles, without_udevd=True, pause=args.pause))
        boot = guest.boot_seconds
    report = {"benchmark": "usb_guest_hotplug", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(), "loadavg_start": load, "guest_boot_s": round(boot or 0, 1),
              "wall_s": round(time.monotonic() - t0, 1), "results": results}
    lines = [f"{'source':<8} {'step':<7} {'n':>3} {'missed':>6} {'ratio p50':>9} {'ratio p90':>9} {'ratio max':>9} "
             f"{'after floor p50 ms':>18}"]
    for r in results:
        for step in ("plug", "unplug"):
            x = r[step]
            label = r["source"] + ("" if r["udevd"] else "*")
            n_missed = sum(1 for m in r["missed"] if (m["want"] == "Healthy") == (step == "plug"))
            lines.append(f"{label:<8} {step:<7} {x['samples']:>3} {n_missed:>6} {x['ratio']['p50']:>9} "
                         f"{x['ratio']['p90']:>9} {x['ratio']['max']:>9} "
                         f"{x['devplug_after_floor_ms']['p50']:>18}")
    for r in results:
        if r["foreign_ids"]:
            lines.append(f"{r['source']}: IDs other than {DEV_ID} listed: {', '.join(r['foreign_ids'])}")
    if args.kernel_without_udevd:
        lines.append("(* udevd stopped in the guest for that run)")
    lines.append("(ratio: (kubelet got the list − QMP command) / (bare pyudev monitor got the tty uevent − "
                 "QMP command), per sample, in the TCG guest)")
    emit(report, "\n".join(lines))


if __name__ == "__main__":
    main()
