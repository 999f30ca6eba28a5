"""Run ``devplug`` under cProfile and/or tracemalloc, with windows chosen by signals.

    python bench/profile_run.py [--cprofile PREFIX] [--tracemalloc PREFIX] run ARGS...

``SIGUSR1``: write the cProfile stats since the previous SIGUSR1 (or the start) to
``PREFIX.<n>.prof`` and start a fresh window — so a driver can profile exactly one phase
(a burst, an event storm). ``SIGUSR2``: write a tracemalloc snapshot summary (top lines and
top files by size) to ``PREFIX.<n>.txt``. On exit a last cProfile window is written.
Only the main thread is profiled, which is where trio, the trio-asyncio loop and grpc.aio's
Python code all run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import signal
import sys
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cprofile", default=None)
    ap.add_argument("--tracemalloc", default=None)
    ap.add_argument("--frames", type=int, default=1)
    args, rest = ap.parse_known_args()
    if args.tracemalloc:
        tracemalloc.start(args.frames)
    windows = [0, 0]
    prof: list[cProfile.Profile] = []

    def dump_profile(*_a: object) -> None:
        if not prof:
            return
        prof[0].disable()
        prof[0].dump_stats(f"{args.cprofile}.{windows[0]}.prof")
        windows[0] += 1
        prof[0] = cProfile.Profile()
        prof[0].enable()

    def dump_memory(*_a: object) -> None:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        cur, peak = tracemalloc.get_traced_memory()
        with open(f"{args.tracemalloc}.{windows[1]}.txt", "w") as f:
            f.write(f"traced current={cur / 2**20:.2f} MiB peak={peak / 2**20:.2f} MiB\n\n## by file\n")
            for st in snap.statistics("filename")[:40]:
                f.write(f"{st.size / 1024:9.1f} KiB {st.count:7d} {st.traceback[0].filename}\n")
            f.write("\n## by line\n")
            for st in snap.statistics("lineno")[:40]:
                fr = st.traceback[0]
                f.write(f"{st.size / 1024:9.1f} KiB {st.count:7d} {fr.filename}:{fr.lineno}\n")
        windows[1] += 1

    if args.cprofile:
        signal.signal(signal.SIGUSR1, dump_profile)
    if args.tracemalloc:
        signal.signal(signal.SIGUSR2, dump_memory)
    from devplug.cli import main as devplug_main

    if args.cprofile:
        prof.append(cProfile.Profile())
        prof[0].enable()
    try:
        return devplug_main(rest)
    finally:
        dump_profile()


if __name__ == "__main__":
    sys.exit(main())
