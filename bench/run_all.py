"""Run the whole benchmark suite: one command, every figure, bench/results.json.

    sudo python bench/run_all.py [--only hotplug,burst] [--quick] [--wait-quiet 300]
                                 [--out bench/results.json] [--markdown bench/RESULTS.md]

Runs each benchmark script as its own process (rules, allocate, hotplug kernel+udev with 0
0, 100 and 1,000 held devices (also 1,000 in the same resource), burst, coldstart, memory, idle,
replug), parses the JSON object it prints,
writes them all to ``--out`` (after every step, so a partial run keeps what it measured),
prints every table, then a summary of each figure with its goal, its floor and the ratio.
With ``--markdown`` the summary also replaces the block between the ``figures`` markers
of that file (the hand-written notes around it stay). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from benchlib import machine  # noqa: E402
from receivers import receiver_kinds  # noqa: E402

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"

#: name → (script args, args with --quick, timeout seconds)
STEPS: dict[str, tuple[list[str], list[str], int]] = {
    "rules": (["bench_rules.py"], ["bench_rules.py", "--repeat", "1"], 600),
    "allocate": (["bench_allocate.py"], ["bench_allocate.py", "--calls", "500"], 600),
    # Just before hotplug: the wake-up its figures share, and what trio adds to it.
    "wake": (["bench_wake.py", "--gap-ms", "3"], ["bench_wake.py", "--gap-ms", "3", "--samples", "50"], 300),
    "hotplug": (["bench_hotplug.py", "--held", "0,100,1000"],
                ["bench_hotplug.py", "--held", "0,100,1000", "--samples", "50"], 1800),
    "hotplug_same": (["bench_hotplug.py", "--held", "1000", "--same-resource", "--samples", "150"],
                     ["bench_hotplug.py", "--held", "1000", "--same-resource", "--samples", "30"], 1800),
    "burst": (["bench_burst.py"], ["bench_burst.py", "--no-queued"], 1800),
    "coldstart": (["bench_coldstart.py"], ["bench_coldstart.py", "--sources", "kernel"], 900),
    "memory": (["bench_memory.py"], ["bench_memory.py", "--settle", "1"], 900),
    "idle": (["bench_idle.py"], ["bench_idle.py", "--seconds", "5"], 300),
    "flood": (["bench_flood.py"], ["bench_flood.py", "--connections", "400"], 300),
    "replug": (["bench_replug.py"], ["bench_replug.py", "--replugs", "1000"], 1800),
}


def first_json(text: str) -> tuple[Optional[dict], str]:
    """The first JSON object in a script's stdout, and the rest (its table)."""
    start = text.find("{")
    while start != -1:
        try:
            obj, end = json.JSONDecoder().raw_decode(text, start)
            return obj, (text[:start] + text[end:]).strip()
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None, text.strip()


def zram_count() -> int:
    return sum(1 for n in os.listdir("/sys/block") if n.startswith("zram"))


def run_step(name: str, args: list[str], timeout: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, str(BENCH / args[0]), *args[1:]]
    print(f"\n### {name}: {' '.join(['python', 'bench/' + args[0], *args[1:]])}", flush=True)
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -1, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout} s"
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    result, table = first_json(out)
    if name == "idle" and err.strip():  # bench_idle prints its table on stderr
        table = err.strip()
    step = {"name": name, "argv": ["python", "bench/" + args[0], *args[1:]], "rc": rc,
            "seconds": round(time.monotonic() - t0, 1), "loadavg_before": load0, "result": result,
            "table": table}
    if rc != 0 or result is None:
        step["stderr_tail"] = err[-3000:]
    print(table)
    if rc != 0:
        print(f"!!! {name} failed (rc={rc}):\n{err[-2000:]}")
    return step


# ---- summary rows: (figure, value, goal, floor, ratio) ----------------------------------------
Row = tuple[str, str, str, str, str]


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if a is not None and b else ""


def rows_rules(r: dict) -> list[Row]:
    return [(f"rule matching {r['rules']} rules x {r['devices']} devices", f"{r['seconds'] * 1e3:.0f} ms "
             f"({r['devices_per_second']:,} devices/s, {r['rule_device_pairs_per_second']:,} pairs/s)", "", "", "")]


def rows_allocate(r: dict) -> list[Row]:
    res = r["results"]
    floor_name = next((k for k in res if "floor" in k), None)
    fl = res[floor_name] if floor_name else None
    out: list[Row] = []
    for name, s in res.items():
        if name == floor_name:
            continue
        out.append((f"{name}, {r['devices']} devices, p50 / p99", f"{s['p50_ms']} / {s['p99_ms']} ms",
                    "p99 ≤ 1 ms", f"{fl['p50_ms']} / {fl['p99_ms']} ms" if fl else "",
                    _ratio(s["p99_ms"], fl["p99_ms"]) if fl else ""))
    return out


def rows_hotplug(r: dict) -> list[Row]:
    out: list[Row] = []
    for x in r["results"]:
        d, f = x["devplug"], x.get("floor") or {}
        where = " in the same resource" if x.get("same_resource") else ""
        recv = x.get("receiver", "python")  # runs before bench/gokubelet had the Python stand-in
        out.append((f"hotplug latency, {x['source']} source, {x['held_devices']} held{where}, {recv} receiver, "
                    "p50 / p99 / max",
                    f"{d['p50_ms']:.3f} / {d['p99_ms']:.3f} / {d['max_ms']:.3f} ms", "p50 ≤ 0.5, p99 ≤ 2 ms",
                    f"{f.get('p50_ms', 0):.3f} / {f.get('p99_ms', 0):.3f} ms" if f else "",
                    _ratio(d["p50_ms"], f.get("p50_ms"))))
        sf = x.get("stream_floor")
        if sf:
            stack = sf.get("stack", "trio-asyncio + grpc.aio")  # runs before the h2 transport: grpc.aio
            n = sf.get("devices", 1)
            listed = "" if n == 1 else f", {n} devices listed"
            out.append((f"  same, vs the transport floor (bare {stack} stream{listed}, {x['source']}, {recv})",
                        f"{d['p50_ms']:.3f} / {d['p99_ms']:.3f} / {d['max_ms']:.3f} ms", "",
                        f"{sf['p50_ms']:.3f} / {sf['p99_ms']:.3f} / {sf['max_ms']:.3f} ms",
                        _ratio(d["p50_ms"], sf["p50_ms"])))
            if f:
                out.append((f"  the transport floor itself vs netlink ({x['source']}{listed})",
                            f"{sf['p50_ms']:.3f} ms", "", f"{f['p50_ms']:.3f} ms", _ratio(sf["p50_ms"], f["p50_ms"])))
        inner = x.get("internal")
        if inner:
            out.append((f"  devplug's own span: uevent read → list written (mean, {x['source']})",
                        f"{inner['received_to_sent_mean_ms']:.3f} ms", "", "", ""))
        own = ((x.get("stages") or {}).get("p50_us") or {}).get("own")
        if own is not None:
            goal = "≤ 0.3 ms" if x.get("same_resource") else "≤ 0.15 ms"
            out.append((f"  devplug's own work: uevent read → send(2) called (p50, {x['source']})",
                        f"{own / 1e3:.3f} ms", goal, "", ""))
    return out


def rows_burst(r: dict) -> list[Row]:
    out: list[Row] = []
    for x in r["results"]:
        a, m, n = x["add"], x["remove"], x["devices"]
        out.append((f"burst {n} hot-adds, {x['source']}: all Healthy (messages)",
                    f"{a['all_healthy_ms']} ms ({a['messages']} msgs), {a['after_floor_ms']} ms after the floor",
                    "≤ 500 ms",
                    f"{a['floor_last_seen_ms']} ms (hot_add loop {a['hot_add_loop_ms']} ms)",
                    _ratio(a["all_healthy_ms"], a["floor_last_seen_ms"])))
        out.append((f"burst {n} hot-removes, {x['source']}: all Unhealthy (messages)",
                    f"{m['all_unhealthy_ms']} ms ({m['messages']} msgs), {m['after_floor_ms']} ms after the floor", "",
                    f"{m['floor_last_seen_ms']} ms (hot_remove loop {m['hot_remove_loop_ms']} ms)",
                    _ratio(m["all_unhealthy_ms"], m["floor_last_seen_ms"])))
        q = x.get("queued")
        if q:
            out.append((f"{n} queued adds / removes drained, {x['source']} (messages)",
                        f"{q['add']['drain_ms']} ms ({q['add']['messages']}) / {q['remove']['drain_ms']} ms "
                        f"({q['remove']['messages']})", "≤ 500 ms", "", ""))
        rss = x["rss_mib"]
        out.append((f"burst RSS before / peak / after removal, {x['source']}",
                    f"{rss['before']} / {rss['peak']} / {rss['after_remove']} MiB", "", "", ""))
    return out


def rows_coldstart(r: dict) -> list[Row]:
    fl = r["floor"]
    out: list[Row] = []
    for x in r["results"]:
        for key, label in (("first_start", "start"), ("restart", "restart")):
            s = x[key]
            out.append((f"cold start {x['devices']} devices, {x['source']}, {label}: Popen → all streamed",
                        f"{s['all_streamed_ms']} ms" + (f", IDs identical: {x['ids_identical']}" if key == "restart" else ""),
                        "≤ 1000 ms", f"{fl['enumerated_ms']} ms (imports {fl['imports_ms']} ms)",
                        _ratio(s["all_streamed_ms"], fl["enumerated_ms"])))
    return out


def rows_memory(r: dict) -> list[Row]:
    res, goals = r["results"], r["goals_mib"]
    fl = res["floor"]["rss_mib"]
    labels = {"idle": "RSS idle (embedded rules)", "devices_1000": "RSS with 1,000 devices",
              "uevent_burst": f"RSS after {res['uevent_burst'].get('uevents', 0)} uevents, "
                              f"{res['uevent_burst']['devices_held']} held"}
    return [(labels[k], f"{res[k]['rss_mib']} MiB (peak {res[k]['peak_mib']})", f"≤ {goals[k]} MiB", f"{fl} MiB",
             _ratio(res[k]["rss_mib"], fl)) for k in ("idle", "devices_1000", "uevent_burst")]


def rows_idle(r: dict) -> list[Row]:
    return [("idle CPU / wake-ups", f"{r['cpu_percent']} % / {r['wakeups_per_s']} per s "
             f"({r['uevents_in_window']} uevents in {r['window_s']} s)", "< 1 %, 0 periodic wake-ups", "", ""),
            ("idle RSS (bench_idle rules)", f"{r['rss_mib']} MiB", "≤ 48 MiB", "", "")]


def rows_flood(r: dict) -> list[Row]:
    res = r["results"]
    return [(f"kubelet restart under {r['connections']} idle metrics connections (nofile {r['nofile']}): "
             "registered / first list", f"{res['reregister_ms']} / {res['first_list_ms']} ms, daemon fds "
             f"{res['fds_before']} → {res['fds_flooded']}, {res['tracebacks']} tracebacks",
             "as without the flood, no EMFILE", "", "")]


def rows_wake(r: dict) -> list[Row]:
    t, e = r["trio"]["wake"], r["wake"]
    return [(f"cross-process wake-up, {r['gap_ms']:g} ms apart: write → peer's trio task resumes "
             "(vs peer in a bare epoll_wait), p50 / p99",
             f"{t['p50_us']} / {t['p99_us']} µs (trio adds {r['trio_adds_p50_us']} µs)", "",
             f"{e['p50_us']} / {e['p99_us']} µs", _ratio(t["p50_us"], e["p50_us"]))]


def rows_replug(r: dict) -> list[Row]:
    return [(f"core + records after {x['replugs']:,} replugs with new serials, {x['mode']}",
             f"RSS +{round(x['rss_mib_after'] - x['rss_mib_after_warmup'], 1)} MiB, {x['inventory_ids']:,} IDs kept, "
             f"{x['forgotten_ids']:,} forgotten", "bounded" if x["mode"] != "keep" else "", "", "")
            for x in r["results"]]


SUMMARY: dict[str, Callable[[dict], list[Row]]] = {
    "rules": rows_rules, "allocate": rows_allocate, "hotplug": rows_hotplug, "hotplug_same": rows_hotplug, "burst": rows_burst,
    "coldstart": rows_coldstart, "memory": rows_memory, "idle": rows_idle, "flood": rows_flood,
    "replug": rows_replug, "wake": rows_wake,
}


def summary(steps: list[dict]) -> list[Row]:
    rows: list[Row] = []
    for s in steps:
        if s["result"] is None:
            rows.append((s["name"], f"FAILED (rc={s['rc']})", "", "", ""))
            continue
        try:
            rows += SUMMARY[s["name"]](s["result"])
        except (KeyError, TypeError) as exc:
            rows.append((s["name"], f"(cannot summarize: {exc!r})", "", "", ""))
    return rows


def markdown(rows: list[Row], meta: dict) -> str:
    m = meta["machine"]
    head = (f"Run {meta['date']} on {m['nproc']} × {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, "
            f"h2 {m.get('h2', '?')}, protobuf {m.get('protobuf', '?')}; load average at start {meta['load_start']:.2f}, "
            f"suite took {meta['seconds']:.0f} s (`{meta['command']}`).\n\n")
    lines = ["| figure | devplug | goal | floor (same run) | ratio |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated steps: " + ",".join(STEPS))
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, not for RESULTS.md)")
    ap.add_argument("--out", default=str(BENCH / "results.json"))
    ap.add_argument("--markdown", default=None, help="update the figures block of this file (bench/RESULTS.md)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="wait up to S seconds for the 1-minute load average to drop below 0.5")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: re-print the summary of --out (and update --markdown) from its JSON")
    args = ap.parse_args()
    if args.render_only:
        saved = json.loads(Path(args.out).read_text())
        finish(summary(saved["steps"]), saved["meta"], args)
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    names = [n for n in args.only.split(",") if n] or list(STEPS)
    unknown = set(names) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps: {', '.join(sorted(unknown))}")
    if any(n.startswith("hotplug") for n in names):
        # The hotplug steps receive with bench/gokubelet (kubelet's grpc-go client) when it is
        # built: build it first, outside the steps and the load wait. Without Go: Python, said so.
        _kinds, note = receiver_kinds("auto")
        print(f"NOTE: {note}" if note else "hotplug receiver: go (bench/gokubelet)")
    deadline = time.monotonic() + args.wait_quiet
    while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(5)
    load = os.getloadavg()[0]
    if load >= 0.5:
        print(f"WARNING: load average {load:.2f} ≥ 0.5: other work is running, figures will be noisy")
    zram0 = zram_count()
    t0 = time.monotonic()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "load_start": load,
            "command": "python bench/run_all.py " + " ".join(sys.argv[1:]), "quick": args.quick}
    steps: list[dict] = []
    for name in names:
        full, quick, timeout = STEPS[name]
        steps.append(run_step(name, quick if args.quick else full, timeout))
        meta["seconds"] = round(time.monotonic() - t0, 1)
        meta["load_end"] = os.getloadavg()[0]
        Path(args.out).write_text(json.dumps({"meta": meta, "steps": steps}, indent=1) + "\n")
    leaked = zram_count() - zram0
    if leaked:
        print(f"WARNING: {leaked} more zram devices than at the start (another process, or a leak)")
    finish(summary(steps), meta, args)
    sys.exit(1 if any(s["rc"] != 0 for s in steps) else 0)


def finish(rows: list[Row], meta: dict, args: argparse.Namespace) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n### summary (load average {meta['load_start']:.2f} → {meta['load_end']:.2f}, {meta['seconds']:.0f} s)")
    print(f"{'figure':<{width}}  {'devplug':<38} {'goal':<26} {'floor':<36} ratio")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<38} {r[2]:<26} {r[3]:<36} {r[4]}")
    print(f"\nJSON: {args.out}")
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text() if path.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
        if BEGIN not in text:
            text += f"\n{BEGIN}\n{END}\n"
        pre, _, rest = text.partition(BEGIN)
        _, _, post = rest.partition(END)
        path.write_text(pre + BEGIN + "\n" + markdown(rows, meta) + END + post)
        print(f"updated {path}")


if __name__ == "__main__":
    main()
