"""The matcher against systemd-udevd itself, over random rules built from this machine's devices.

Thousands of generated rules go into ONE file in /run/udev/rules.d (position 99-zz: after the
system's rules, so they see what the udev database holds, which is what pyudev reads).
``udevadm test --action=add`` runs once per device and prints the ``RUN`` list; each rule's
marker is ``RUN+="devplug-oracle-<i>"``. RUN rather than ``ENV{}`` because ``udevadm test``
writes the database and a RUN entry is printed but neither run nor stored. The file starts with
``ENV{SEQNUM}=="?*", GOTO=...``: real uevents carry a SEQNUM, ``udevadm test`` has none, so
the running udevd skips the oracle rules for events other tests cause meanwhile.

Some rules also assign a value probe, ``ENV{.DEVPLUG_ORACLE_V<i>}`` (``$id``, ``$driver``,
``$attr{}`` after earlier parent searches; values near udev's 512-byte limit; one property
that grows with ``+=``): a name starting with '.' is printed by ``udevadm test`` but never
stored, so the database devplug reads stays untouched.

devplug evaluates the same rules (marker: ``ENV{DEVPLUG_ORACLE_<i>}="1"``, which no generated
rule reads) on ``device_from_pyudev`` records through the real machine seam, and every
(rule, device) pair and every probe value must agree. A second test compares the rules files
udev reads (hidden files, the same name in several directories) with devplug's selection.

On a fresh machine udevd has not created /run/udev/rules.d: the tests create what they need
and remove only what they created.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from devplug.core.rules import RuleSet, parse_rules
from devplug.sources import rulefiles, system

from .oracle import Generator

pytestmark = pytest.mark.udevd

pyudev = pytest.importorskip("pyudev")
udev_adapter = pytest.importorskip("devplug.sources.udev")

RUN_RULES = "/run/udev/rules.d"
ORACLE_FILE = f"{RUN_RULES}/99-zz-devplug-oracle.rules"
SEED = int(os.environ.get("DEVPLUG_ORACLE_SEED", "20240611"))
N_RULES = int(os.environ.get("DEVPLUG_ORACLE_RULES", "3000"))
PER_SUBSYSTEM = int(os.environ.get("DEVPLUG_ORACLE_PER_SUBSYSTEM", "8"))
_MARK = re.compile(r"devplug-oracle-(\d+)")
_DEVPLUG_MARK = re.compile(r"DEVPLUG_ORACLE_(\d+)")
_PROBE = re.compile(r"ENV\{(\.DEVPLUG_ORACLE_[A-Z0-9]+)\}")


@contextmanager
def written(files: dict[str, str]):
    """Write files, creating missing directories; remove exactly what was created."""
    made_dirs: list[str] = []
    made_files: list[str] = []
    try:
        for path, text in files.items():
            d = os.path.dirname(path)
            missing = []
            while not os.path.isdir(d):
                missing.append(d)
                d = os.path.dirname(d)
            for m in reversed(missing):
                os.mkdir(m)
                made_dirs.append(m)
            with open(path, "x") as f:
                made_files.append(path)
                f.write(text)
        yield
    finally:
        for path in made_files:
            os.unlink(path)
        for d in reversed(made_dirs):
            os.rmdir(d)


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


def _udevadm_test(syspath: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["udevadm", "test", "--action=add", syspath], capture_output=True, text=True,
                       errors="replace", timeout=120)
    assert r.returncode == 0, f"udevadm test {syspath} failed: {r.stderr[-2000:]}"
    return r


def _udev_result(syspath: str) -> tuple[set[int], dict[str, str]]:
    r = _udevadm_test(syspath)
    lines = r.stdout.splitlines() + r.stderr.splitlines()
    marks = {int(m) for line in lines if line.startswith("run: ") for m in _MARK.findall(line)}
    probes = dict(line.partition("=")[::2] for line in r.stdout.splitlines() if line.startswith(".DEVPLUG_ORACLE_"))
    return marks, probes


def test_matcher_agrees_with_udevd(udevd, capsys):
    ctx = pyudev.Context()
    syspaths = _sample_devices(ctx)
    sources = [_record(ctx, p) for p in syspaths]
    gen = Generator(sources, SEED)
    bodies: list[str] = []
    probes: list[str] = []
    for keys, dev in gen.rules_with_devices(N_RULES):
        if keys:
            probe = gen.probe(dev, len(bodies))
            bodies.append(", ".join(keys))
            probes.append(f", {probe}" if probe else "")
    names = sorted({m for p in probes for m in _PROBE.findall(p)})
    udev_lines = ['ENV{SEQNUM}=="?*", GOTO="devplug_oracle_end"']
    devplug_lines = []
    for i, (body, probe) in enumerate(zip(bodies, probes)):
        udev_lines.append(f'{body}{probe}, RUN+="devplug-oracle-{i}"')
        devplug_lines.append(f'{body}{probe}, ENV{{DEVPLUG_ORACLE_{i}}}="1"')
    udev_lines.append('LABEL="devplug_oracle_end"')
    # devplug reads the probes back through one last rule.
    devplug_lines.append(", ".join(['ACTION=="add"'] + [f'CONTAINER_ENV{{P{k}}}="$env{{{n}}}"'
                                                        for k, n in enumerate(names)]))

    rules, errors = parse_rules("\n".join(devplug_lines) + "\n", "oracle.rules")
    assert not errors, "\n".join(map(str, errors[:20]))
    assert len(rules) == len(bodies) + 1
    ruleset = RuleSet(["oracle.rules"], rules)
    by_line = {r.ref.line: int(_DEVPLUG_MARK.search(r.ref.text).group(1)) for r in rules[:-1]}

    with written({ORACLE_FILE: "# devplug test: generated, removed when the test ends\n"
                               + "\n".join(udev_lines) + "\n"}):
        with ThreadPoolExecutor(max_workers=2) as pool:
            udev_results = dict(zip(syspaths, pool.map(_udev_result, syspaths)))

    host = system.host()
    disagreements = []
    value_diffs = []
    pairs = 0
    matched_pairs = 0
    for syspath in syspaths:
        device = _record(ctx, syspath)  # after udevadm test: the database it just wrote
        claim = ruleset.evaluate(device, action="add", path_mode=host)
        ours = {by_line[ref.line] for ref in claim.matched if ref.line in by_line}
        theirs, their_probes = udev_results[syspath]
        pairs += len(bodies)
        matched_pairs += len(theirs)
        for i in sorted(ours ^ theirs):
            disagreements.append((syspath, i, i in theirs, i in ours))
        envs = dict(claim.envs)
        our_probes = {n: envs.get(f"P{k}", "") for k, n in enumerate(names)}
        for n in names:
            if our_probes[n] != their_probes.get(n, ""):
                value_diffs.append(f"{syspath}: {n} udev={their_probes.get(n)!r} devplug={our_probes[n]!r}")

    agreement = 100.0 * (pairs - len(disagreements)) / pairs
    with capsys.disabled():
        print(f"\nudev oracle: {len(bodies)} rules x {len(syspaths)} devices = {pairs} pairs, "
              f"{matched_pairs} matches by udev, agreement {agreement:.4f}% ({len(disagreements)} disagreements); "
              f"{len(names)} value probes x {len(syspaths)} devices, {len(value_diffs)} differ")
    if disagreements or value_diffs:
        lines = []
        for syspath, i, udev_says, we_say in disagreements[:25]:
            dev = _record(ctx, syspath)
            single = RuleSet(["oracle.rules"], [rules[i]])
            why = single.explain(dev, path_mode=host)
            lines.append(f"{syspath}: rule {i} udev={udev_says} devplug={we_say}\n    {bodies[i]}\n    {why}")
        pytest.fail(f"{len(disagreements)} disagreements with udev:\n" + "\n".join(lines)
                    + f"\n{len(value_diffs)} value differences:\n" + "\n".join(value_diffs[:25]))


def test_rules_files_udev_reads(udevd):
    """Hidden files are skipped and, for one file name in several directories, the
    higher-priority directory wins: devplug's selection over udev's own directories (lowest
    priority first, so later wins) names the same files udev reads, in the same order."""
    guard = "# devplug test: removed when the test ends\n"
    files = {f"{RUN_RULES}/.99-zz-devplug-hidden.rules": guard,
             f"{RUN_RULES}/99-zz-devplug-dup.rules": guard,
             "/etc/udev/rules.d/99-zz-devplug-dup.rules": guard,
             f"{RUN_RULES}/99-zz-devplug-run-only.rules": guard}
    dirs = [d for d in ("/lib/udev/rules.d", "/usr/lib/udev/rules.d", "/usr/local/lib/udev/rules.d", RUN_RULES,
                        "/etc/udev/rules.d")]
    with written(files):
        r = _udevadm_test("/sys/devices/virtual/mem/null")
        theirs = [line.split(": ", 1)[1] for line in r.stderr.splitlines() if line.startswith("Reading rules file: ")]
        ours = [f for f in rulefiles.rule_files([d for d in dirs if os.path.isdir(d)])
                if os.path.getsize(f) > 0]  # udev skips empty files (and /dev/null masks) unread
    assert "/etc/udev/rules.d/99-zz-devplug-dup.rules" in theirs
    assert not any(".99-zz-devplug-hidden" in f for f in theirs)
    assert [os.path.basename(f) for f in ours] == [os.path.basename(f) for f in theirs]
    assert {f for f in ours if "devplug" in f} == {f for f in theirs if "devplug" in f}
