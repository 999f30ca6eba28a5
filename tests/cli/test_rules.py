"""``devplug rules check`` and ``devplug rules test``, through the real CLI entry point."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devplug.cli import main
from devplug.config import default_rules_path
from devplug.sources.rulefiles import read_rules as load_rules

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_example_rules_are_identical_and_valid(capsys):
    shipped = Path(default_rules_path())
    top = REPO / "rules"
    names = sorted(p.name for p in shipped.glob("*.rules"))
    assert names == ["10-serial.rules", "20-video.rules", "30-coral.rules", "40-zigbee.rules", "50-shared.rules"]
    assert sorted(p.name for p in top.glob("*.rules")) == names
    match, mismatch, errors = filecmp.cmpfiles(shipped, top, names, shallow=False)
    assert mismatch == [] and errors == []
    code, out, err = run(capsys, "rules", "check", str(top))
    assert (code, err) == (0, "")
    assert out == "ok: 14 rules in 5 files (10 resources)\n"
    rs = load_rules([top])
    assert rs.subsystems == frozenset({"tty", "video4linux", "usb", "misc"})


def test_check_reports_every_error_and_exits_1(tmp_path, capsys):
    (tmp_path / "a.rules").write_text('KERNEL=="x", RESOURCE="ok"\nKERNEL=="y" RESOURCE="z"\n')
    (tmp_path / "b.rules").write_text('ATTRS{x}="1", RESOURCE="x"\n')
    code, out, err = run(capsys, "rules", "check", str(tmp_path))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"{tmp_path}/a.rules:2:13: missing comma between key-value pairs",
        f"{tmp_path}/b.rules:1:9: invalid operator '=' for ATTRS (a match key: use ==, !=)",
        "2 errors",
    ]


def test_check_summary_counts_files_rules_and_resources(tmp_path, capsys):
    (tmp_path / "a.rules").write_text('KERNEL=="x", RESOURCE="one"\nKERNEL=="y", RESOURCE="example.com/two"\n')
    f = tmp_path / "single.conf"
    f.write_text('HOSTPATH=="/dev/mem", RESOURCE="one"\n')
    code, out, _ = run(capsys, "rules", "check", str(tmp_path), str(f), "--domain", "example.org")
    assert code == 0
    assert out == "ok: 3 rules in 2 files (2 resources, 1 HOSTPATH)\n"


def test_check_missing_path_and_bad_domain(tmp_path, capsys):
    code, _, err = run(capsys, "rules", "check", str(tmp_path / "nope"))
    assert code == 2 and err == f"devplug: {tmp_path}/nope: No such file or directory\n"
    code, _, err = run(capsys, "rules", "check", str(tmp_path), "--domain", "kubernetes.io")
    assert code == 2 and "reserved for Kubernetes" in err


needs_udev = pytest.mark.skipif(not os.path.exists("/sys/devices/virtual/misc/kvm")
                                and not os.path.exists("/sys/class/tty/tty20"), reason="no sysfs devices here")


@needs_udev
def test_rules_test_human_and_json(tmp_path, capsys):
    rules = tmp_path / "r.rules"
    rules.write_text('SUBSYSTEM=="tty", KERNEL=="tty2[0-9]", RESOURCE="vt", DEVICE_ID="vt-%n", '
                     'CONTAINER_ENV{TTY}="$devnode", PERMISSIONS="r"\n'
                     'KERNEL=="tty21", RESOURCE=""\n')
    code, out, err = run(capsys, "rules", "test", "--rules", str(rules), "/sys/class/tty/tty20", "/dev/tty21",
                         "/devices/virtual/tty/tty22")
    assert code == 0, err
    assert f"  matched  {rules}:1: SUBSYSTEM==" in out
    assert "  resource devplug.io/vt\n  id       vt-20\n" in out
    assert "  resource (none: device not claimed)" in out  # tty21 was released
    code, out, err = run(capsys, "rules", "test", "--rules", str(rules), "--json", "/sys/class/tty/tty20", "/dev/tty21")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["syspath"] == "/sys/devices/virtual/tty/tty20"
    claim = first["claim"]  # core.views.claim_json: the shape /inventory and /explain use
    assert claim["matched"] == [f"{rules}:1"]
    assert claim["resource"] == "devplug.io/vt" and claim["id"] == "vt-20"
    assert claim["permissions"] == "r"
    assert claim["envs"] == {"TTY": "/dev/tty20"}
    assert claim["errors"] == [] and claim["refused"] is None
    assert second["claim"]["resource"] is None
    assert second["claim"]["matched"] == [f"{rules}:1", f"{rules}:2"]


@needs_udev
def test_rules_test_shows_a_refused_device_with_the_reason(tmp_path, capsys):
    rules = tmp_path / "r.rules"
    rules.write_text('SUBSYSTEM=="tty", KERNEL=="tty20", RESOURCE="vt", MOUNT+="/srv/$env{NOPE}:/data"\n')
    code, out, err = run(capsys, "rules", "test", "--rules", str(rules), "/sys/class/tty/tty20")
    assert code == 0, err
    assert f"  REFUSED  not offered: {rules}:1:51: MOUNT: %E{{NOPE}} is empty\n" in out
    code, out, err = run(capsys, "rules", "test", "--rules", str(rules), "--json", "/sys/class/tty/tty20")
    claim = json.loads(out)["claim"]
    assert claim["errors"] == [f"{rules}:1:51: MOUNT: %E{{NOPE}} is empty"]
    assert claim["refused"] == {"rule": f"{rules}:1", "reason": claim["errors"][0]}
    assert claim["mounts"] == []


@needs_udev
def test_rules_test_explain_and_unknown_device(tmp_path, capsys):
    rules = tmp_path / "r.rules"
    rules.write_text('SUBSYSTEM=="block", RESOURCE="disk"\n')
    code, out, err = run(capsys, "rules", "test", "--rules", str(rules), "--explain", "/sys/class/tty/tty20",
                         "/dev/does-not-exist")
    assert code == 1
    assert "  no    " in out and "SUBSYSTEM==\"block\": value is 'tty'" in out
    assert err.startswith("devplug: /dev/does-not-exist: ")


@needs_udev
def test_rules_test_defaults_to_the_embedded_rules_via_python_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-m", "devplug", "rules", "test", "--json", "/dev/null"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["claim"]["resource"] is None and obj["claim"]["matched"] == []
    r = subprocess.run([sys.executable, "-m", "devplug", "rules", "check", str(REPO / "rules")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok: ")
