"""Glob matching worst cases: 126-byte values (a USB string descriptor's limit) against
20-star patterns, devplug's matcher beside glibc's own fnmatch (the C reference udevd uses).

``--before`` also times the old backtracking translation (``*`` → ``[\\s\\S]*``) on a
4-star pattern, the case of issue 10 (seconds, so it is off by default). Prints one JSON
object, then a short table. ``python bench/bench_glob.py [--repeat N] [--before]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import locale
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from devplug.core.rules.fnmatch import Glob, elements, nfa_match  # noqa: E402

VALUE_LEN = 126
CASES = {
    "20 stars, no match (*a*a…*b vs a…a)": ("*a" * 20 + "*b", "a" * VALUE_LEN),
    "20 stars, match at the end": ("*a" * 20 + "*b", "a" * (VALUE_LEN - 1) + "b"),
    "20 stars with ? (*?*?…*b)": ("*?" * 20 + "*b", "a" * VALUE_LEN),
    "20 stars with brackets (*[a]…*b)": ("*[a]" * 20 + "*b", "a" * VALUE_LEN),
    "20 stars with classes (*[[:alpha:]]…*[0-9])": ("*[[:alpha:]]" * 20 + "*[0-9]", "a" * VALUE_LEN),
}


def per_call(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--before", action="store_true", help="also time the old backtracking regex (slow)")
    args = ap.parse_args()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    locale.setlocale(locale.LC_CTYPE, "C")
    rows = []
    for name, (pattern, value) in CASES.items():
        glob = Glob((pattern,))
        raw_p, raw_v = pattern.encode(), value.encode()
        expected = libc.fnmatch(raw_p, raw_v, 0) == 0
        assert glob.matches(value) is expected, name
        elems = elements(raw_p, False)
        rows.append({
            "case": name,
            "pattern_len": len(pattern),
            "value_len": len(value),
            "match": expected,
            "devplug_ms": round(per_call(lambda: glob.matches(value), args.repeat) * 1e3, 5),
            "devplug_nfa_ms": round(per_call(lambda: nfa_match(elems, raw_v, False), 3) * 1e3, 3),
            "glibc_ms": round(per_call(lambda: libc.fnmatch(raw_p, raw_v, 0), args.repeat) * 1e3, 5),
        })
    result: dict = {"value_len": VALUE_LEN, "cases": rows, "python": sys.version.split()[0],
                    "worst_devplug_ms": max(r["devplug_ms"] for r in rows)}
    if args.before:
        old = re.compile(r"[\s\S]*a" * 4 + r"[\s\S]*b")
        t0 = time.perf_counter()
        old.fullmatch("a" * VALUE_LEN)
        result["before_4_stars_backtracking_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result))
    print(f"{'case':<46} {'devplug ms':>11} {'nfa ms':>8} {'glibc ms':>9}")
    for r in rows:
        print(f"{r['case']:<46} {r['devplug_ms']:>11.4f} {r['devplug_nfa_ms']:>8.3f} {r['glibc_ms']:>9.4f}")
    if "before_4_stars_backtracking_s" in result:
        print(f"before (backtracking regex), *a*a*a*a*b vs 126 a's: {result['before_4_stars_backtracking_s']} s")


if __name__ == "__main__":
    main()
