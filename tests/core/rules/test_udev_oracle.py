"""The matcher against systemd-udevd itself, over random rules built from this machine's devices.

Thousands of generated rules go into ONE file in /run/udev/rules.d (position 99-zz: after the
system's rules, so they see what the udev database holds, which is what pyudev reads).
``udevadm test --action=add`` runs once per device and prints the ``RUN`` list; each rule's
marker is ``RUN+="devplug-oracle-<i>"``. RUN rather than ``ENV{}`` because ``udevadm test``
writes the database and a RUN entry is printed but neither run nor stored. The file starts with
``ENV{SEQNUM}=="?*", GOTO=...``: real uevents carry a SEQNUM, ``udevadm test`` has none, so
the running udevd skips the oracle rules for events other tests cause meanwhile.

devplug evaluates the same rules (marker: ``ENV{DEVPLUG_ORACLE_<i>}="1"``, which no generated
rule reads) on ``device_from_pyudev`` records, and every (rule, device) pair must agree.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from devplug.core.rules import RuleSet, parse_rules

from .oracle import Generator

pytestmark = pytest.mark.udevd

pyudev = pytest.importorskip("pyudev")
udev_adapter = pytest.importorskip("devplug.sources.udev")

ORACLE_FILE = "/run/udev/rules.d/99-zz-devplug-oracle.rules"
SEED = int(os.environ.get("DEVPLUG_ORACLE_SEED", "20240611"))
N_RULES = int(os.environ.get("DEVPLUG_ORACLE_RULES", "3000"))
PER_SUBSYSTEM = int(os.environ.get("DEVPLUG_ORACLE_PER_SUBSYSTEM", "8"))
_MARK = re.compile(r"devplug-oracle-(\d+)")
_DEVPLUG_MARK = re.compile(r"DEVPLUG_ORACLE_(\d+)")


def _path_mode(path: str):
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _sample_devices(ctx) -> list[str]:
    """A few devices of every subsystem (all of small ones), deterministic for the seed."""
    by_subsystem: dict[str, list[str]] = defaultdict(list)
    for dev in ctx.list_devices():
        by_subsystem[dev.subsystem or ""].append(dev.sys_path)
    rnd = random.Random(SEED)
    out: list[str] = []
    for sub in sorted(by_subsystem):
        paths = sorted(by_subsystem[sub])
        rnd.shuffle(paths)
        out.extend(paths[:PER_SUBSYSTEM])
    return sorted(out)


def _record(ctx, syspath: str):
    return udev_adapter.device_from_pyudev(pyudev.Devices.from_sys_path(ctx, syspath))


def _udev_markers(syspath: str) -> set[int]:
    r = subprocess.run(["udevadm", "test", "--action=add", syspath], capture_output=True, text=True,
                       errors="replace", timeout=120)
    assert r.returncode == 0, f"udevadm test {syspath} failed: {r.stderr[-2000:]}"
    return {int(m) for line in r.stdout.splitlines() + r.stderr.splitlines()
            if line.startswith("run: ") for m in _MARK.findall(line)}


def test_matcher_agrees_with_udevd(udevd, capsys):
    ctx = pyudev.Context()
    syspaths = _sample_devices(ctx)
    sources = [_record(ctx, p) for p in syspaths]
    gen = Generator(sources, SEED)
    bodies = [keys for keys in gen.rules(N_RULES) if keys]
    udev_lines = ['ENV{SEQNUM}=="?*", GOTO="devplug_oracle_end"']
    devplug_lines = []
    for i, keys in enumerate(bodies):
        body = ", ".join(keys)
        udev_lines.append(f'{body}, RUN+="devplug-oracle-{i}"')
        devplug_lines.append(f'{body}, ENV{{DEVPLUG_ORACLE_{i}}}="1"')
    udev_lines.append('LABEL="devplug_oracle_end"')

    rules, errors = parse_rules("\n".join(devplug_lines) + "\n", "oracle.rules")
    assert not errors, "\n".join(map(str, errors[:20]))
    assert len(rules) == len(bodies)
    ruleset = RuleSet(["oracle.rules"], rules)
    by_line = {r.ref.line: int(_DEVPLUG_MARK.search(r.ref.text).group(1)) for r in rules}

    try:
        with open(ORACLE_FILE, "w") as f:
            f.write("# devplug test: generated, removed when the test ends\n" + "\n".join(udev_lines) + "\n")
        with ThreadPoolExecutor(max_workers=2) as pool:
            udev_results = dict(zip(syspaths, pool.map(_udev_markers, syspaths)))
    finally:
        os.unlink(ORACLE_FILE)

    disagreements = []
    pairs = 0
    matched_pairs = 0
    for syspath in syspaths:
        device = _record(ctx, syspath)  # after udevadm test: the database it just wrote
        claim = ruleset.evaluate(device, action="add", path_mode=_path_mode)
        ours = {by_line[ref.line] for ref in claim.matched}
        theirs = udev_results[syspath]
        pairs += len(bodies)
        matched_pairs += len(theirs)
        for i in sorted(ours ^ theirs):
            disagreements.append((syspath, i, i in theirs, i in ours))

    agreement = 100.0 * (pairs - len(disagreements)) / pairs
    with capsys.disabled():
        print(f"\nudev oracle: {len(bodies)} rules x {len(syspaths)} devices = {pairs} pairs, "
              f"{matched_pairs} matches by udev, agreement {agreement:.4f}% ({len(disagreements)} disagreements)")
    if disagreements:
        lines = []
        for syspath, i, udev_says, we_say in disagreements[:25]:
            dev = _record(ctx, syspath)
            single = RuleSet(["oracle.rules"], [rules[i]])
            why = single.explain(dev, path_mode=_path_mode)
            lines.append(f"{syspath}: rule {i} udev={udev_says} devplug={we_say}\n    {bodies[i]}\n    {why}")
        pytest.fail(f"{len(disagreements)} disagreements with udev:\n" + "\n".join(lines))
