"""The image recipe, minus the container engine this machine lacks.

Copies exactly what the Dockerfile's build stage copies, runs the same
``scripts/build-wheels``, installs the result the way the runtime stage does (``--no-index``
from those wheels only, in a clean venv) and runs the installed ``devplug``: its help, the
embedded default rules and the rules the ConfigMap ships. Also checks that every native
extension needs no shared library beyond what the runtime stage installs.

Slow-ish (tens of seconds: it downloads the dependencies' wheels), and it needs the package
index the project installs from anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Shared libraries the runtime stage provides: glibc (base image), libstdc++6 and libgcc-s1
#: (installed / pulled in), libudev1 (installed), libz, libexpat... of Python itself aside.
RUNTIME_LIBS = re.compile(
    r"^(linux-vdso|linux-gate|ld-linux[-\w.]*|libc|libm|libpthread|libdl|librt|libutil|"
    r"libstdc\+\+|libgcc_s|libudev)\.so"
)


def build_stage_sources() -> list[str]:
    """The paths the Dockerfile's build stage COPYs from the context."""
    text = (ROOT / "Dockerfile").read_text()
    build = text.split(" AS build", 1)[1].split("\nFROM ", 1)[0]
    sources: list[str] = []
    for line in build.splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the repo's src/ must not leak in) and no PIP_* settings, so only the
    given wheels can satisfy --no-index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_dockerfile_copies_what_the_package_needs():
    assert build_stage_sources() == ["pyproject.toml", "README.md", "src", "scripts/build-wheels"]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in build_stage_sources():
        assert f"!{path}" in ignored or f"!{path}/" in ignored, f".dockerignore hides {path}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding devplug installed from freshly built wheels; returns its bin dir."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for rel in build_stage_sources():
        src = ROOT / rel
        dst = context / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    wheels = base / "wheels"
    # The build stage: keep the user's pip configuration (index, proxies) for the download.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run([str(context / "scripts" / "build-wheels"), str(wheels)], cwd=context, env=env, timeout=600)
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith("devplug-") for n in names), names
    # The runtime stage: a clean venv, wheels only.
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=base, env=clean_env())
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", f"--find-links={wheels}", "devplug"],
        cwd=base, env=clean_env(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    return venv / "bin"


def test_installed_devplug_runs_from_the_wheel(installed: Path, tmp_path: Path):
    env = clean_env()
    devplug = str(installed / "devplug")
    python = str(installed / "python")
    # It imports the installed copy, not the repository's src/.
    where = run([python, "-c", "import devplug; print(devplug.__file__)"], cwd=tmp_path, env=env)
    assert str(installed.parent) in where and str(ROOT) not in where
    assert "run" in run([devplug, "--help"], cwd=tmp_path, env=env)
    run_help = run([devplug, "run", "--help"], cwd=tmp_path, env=env)
    for flag in ("--rules", "--metrics-address", "--udev-source", "--plugin-dir", "--debug-socket",
                 "--node-name", "--log-format", "--cdi-spec-dir"):
        assert flag in run_help, f"the DaemonSet passes {flag}"  # manifests/base/daemonset.yaml
    # Everything the daemon imports is in the wheel (generated protobuf code included), and
    # grpcio is not needed: the *_pb2_grpc stubs are for the tests only.
    run([python, "-c", "import sys, devplug.daemon, devplug.cli.run, devplug.ops.cdi, devplug.kubelet.api_pb2, "
         "devplug.kubelet.podresources_pb2; assert 'grpc' not in sys.modules"], cwd=tmp_path, env=env)
    # The embedded default rules ship in the wheel and pass the linter; so do the rules the
    # ConfigMap carries.
    default_rules = run(
        [python, "-c", "import devplug, os; print(os.path.join(os.path.dirname(devplug.__file__), 'default_rules'))"],
        cwd=tmp_path, env=env,
    ).strip()
    assert sorted(Path(default_rules).glob("*.rules")), "no embedded default rules in the wheel"
    run([devplug, "rules", "check", default_rules], cwd=tmp_path, env=env)
    if sorted((ROOT / "rules").glob("*.rules")):
        run([devplug, "rules", "check", str(ROOT / "rules")], cwd=tmp_path, env=env)
    # pyudev finds libudev through ctypes, as in the image.
    run([python, "-c", "import pyudev; pyudev.Context()"], cwd=tmp_path, env=env)


def test_native_extensions_need_only_the_runtime_stage_libraries(installed: Path):
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is missing (Debian package libc-bin)")
    site = installed.parent / "lib"
    extensions = sorted(site.rglob("*.so"))
    assert extensions, "expected protobuf's extension"
    for so in extensions:
        out = subprocess.run([ldd, str(so)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.strip().split()[0] if line.strip() else ""
            if not name or name.startswith("/"):
                continue
            assert "not found" not in line, f"{so.name}: {line.strip()}"
            assert RUNTIME_LIBS.match(name), f"{so.name} needs {name}: add its package to the Dockerfile"
