"""The top-level CLI: dispatch, help, and what the daemon imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": SRC}, capture_output=True, text=True)


def test_run_does_not_import_the_other_commands():
    r = _py("import sys; from devplug.cli import build_parser; build_parser('run'); "
            "print(sorted(m for m in sys.modules if m.startswith(('devplug.cli.rules', 'devplug.cli.devices', 'devplug.cli.inventory'))))")
    assert r.stdout.strip() == "[]", r.stderr


def test_help_lists_every_command_and_no_command_is_an_error():
    r = _py("from devplug.cli import main; raise SystemExit(main([]))")
    assert r.returncode == 2
    for command in ("run", "rules", "devices", "inventory"):
        assert command in r.stderr


def test_bad_run_flag_is_one_clear_line():
    r = _py("from devplug.cli import main; raise SystemExit(main(['run', '--udev-source', 'netlink']))")
    assert r.returncode == 2
    assert "invalid choice: 'netlink'" in r.stderr and "Traceback" not in r.stderr


def test_invalid_rules_refuse_to_start_with_located_errors(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text('SUBSYSTEM=="tty", RESOURCE="Bad Name"\nKERNEL=="x" RESOURCE="y"\n')
    r = _py(f"from devplug.cli import main; raise SystemExit(main(['run', '--rules', {str(bad)!r}, "
            f"'--plugin-dir', {str(tmp_path / 'p')!r}]))")
    assert r.returncode == 2
    assert f"{bad}:1:" in r.stderr and f"{bad}:2:" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()
