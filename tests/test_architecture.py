"""The layer contract of DESIGN.md, checked by import-linter (``[tool.importlinter]``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "devplug"


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency (pip install -e '.[test]')"
    r = subprocess.run([exe, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_module_is_over_400_lines():
    generated = {"api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi"}
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if p.name not in generated and (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
