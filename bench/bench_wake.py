"""What one cross-process wake-up costs on this machine: the part of every hotplug figure
no code in devplug can remove.

A uevent reaches kubelet through two wake-ups: the kernel wakes devplug (as it wakes the
netlink floor's bare monitor), then devplug's ``send(2)`` wakes kubelet's receiver. This
times the second one alone between two bare Python processes: process A sleeps (as
devplug does between sporadic uevents), then writes 40 bytes on a unix stream socket;
process B waits in ``epoll_wait`` and stamps the moment it returns. Reported: A's write →
B awake (p50/p99), and how long the ``send(2)`` call itself takes in A (the kernel wakes B
inside it). Compare with the hotplug table: devplug p50 − netlink floor p50 is the budget
devplug, this wake-up and the receiver share.

The same run then times it once more with B a trio task waiting in
``trio.lowlevel.wait_readable`` (as devplug's uevent source waits on netlink), stamped when
the task resumes: the difference is what trio's scheduler adds to every wake-up (its run
loop, the task's reschedule and resumption on a CPU that just woke), which devplug pays on
each uevent and the netlink floor's bare monitor does not.

    python bench/bench_wake.py [--samples 300] [--gap-ms 10]
Prints one JSON object, then a table. Needs no root.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import time

import trio  # imported before the fork: the receiver's start-up is not in the figures


def quantiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50_us": round(statistics.median(v), 1), "p99_us": round(v[min(len(v) - 1, int(len(v) * 0.99))], 1),
            "max_us": round(v[-1], 1)}


def _epoll_receiver(b: socket.socket, samples: int) -> list[int]:
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN)
    woke = []
    b.send(b"r")  # ready: the writer starts now
    for _ in range(samples):
        ep.poll()
        woke.append(time.perf_counter_ns())
        b.recv(64)
    return woke


def _trio_receiver(b: socket.socket, samples: int) -> list[int]:
    woke: list[int] = []

    async def main() -> None:
        b.send(b"r")
        for _ in range(samples):
            await trio.lowlevel.wait_readable(b.fileno())
            woke.append(time.perf_counter_ns())
            b.recv(64)

    trio.run(main)
    return woke


RECEIVERS = {"epoll": _epoll_receiver, "trio": _trio_receiver}


def run(samples: int, gap_s: float, receiver: str = "epoll") -> dict:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        a.close()
        os.close(r)
        woke = RECEIVERS[receiver](b, samples)
        os.write(w, json.dumps(woke).encode())
        os._exit(0)
    b.close()
    os.close(w)
    a.recv(1)  # the receiver is waiting: no write may arrive before it does
    sent, call = [], []
    for _ in range(samples):
        time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        a.send(b"x" * 40)
        t1 = time.perf_counter_ns()
        sent.append(t0)
        call.append((t1 - t0) / 1e3)
    chunks = []
    while chunk := os.read(r, 1 << 20):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    woke = json.loads(b"".join(chunks))
    return {"samples": samples, "gap_ms": gap_s * 1e3, "receiver": receiver,
            "wake": quantiles([(t1 - t0) / 1e3 for t0, t1 in zip(sent, woke)]),
            "send_call": quantiles(call)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=10.0, help="sleep before each write (sporadic events)")
    args = ap.parse_args()
    loadavg = os.getloadavg()[0]
    res = run(args.samples, args.gap_ms / 1e3)
    in_trio = run(args.samples, args.gap_ms / 1e3, "trio")
    report = {"benchmark": "cross_process_wake", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "loadavg_start": loadavg, **res, "trio": in_trio,
              "trio_adds_p50_us": round(in_trio["wake"]["p50_us"] - res["wake"]["p50_us"], 1)}
    print(json.dumps(report, indent=2))
    print()
    for r in (res, in_trio):
        print(f"unix socket, {r['samples']} writes {r['gap_ms']:g} ms apart, peer waiting in {r['receiver']}: "
              f"write -> peer awake p50 {r['wake']['p50_us']} us, p99 {r['wake']['p99_us']} us; the send(2) "
              f"call itself p50 {r['send_call']['p50_us']} us, p99 {r['send_call']['p99_us']} us")
    print(f"trio's scheduler adds p50 {report['trio_adds_p50_us']} us to the wake-up")


if __name__ == "__main__":
    main()
