"""Run the real ``devplug run`` process against the kubelet stand-in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kubelet_standin import KubeletStandin

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Devplug:
    """A ``devplug run`` child process; its log lines are kept for assertions."""

    def __init__(self, plugin_dir: Path, rules: Path, *extra: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        base = dict(os.environ if env is None else env)
        env = dict(base, PYTHONPATH=SRC + os.pathsep + base.get("PYTHONPATH", ""))
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.argv = [sys.executable, "-m", "devplug", "run", "--rules", str(rules),
                     "--plugin-dir", str(plugin_dir), "--debug-socket", "", *extra]
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not logged; log:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc, time.monotonic() - t0


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "device-plugins"
    d.mkdir()
    return d


@pytest.fixture
def kubelet(plugin_dir: Path):
    with KubeletStandin(str(plugin_dir), auto_watch=True) as k:
        yield k


@pytest.fixture
def start_devplug(plugin_dir: Path, tmp_path: Path):
    started: list[Devplug] = []

    def start(rules: Path, *extra: str) -> Devplug:
        d = Devplug(plugin_dir, rules, *extra, log_path=tmp_path / f"devplug-{len(started)}.log")
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def uevent(kernel: str, action: str) -> None:
    """A real kernel uevent for a virtual console tty (never ttyS0: the machine's console)."""
    assert kernel.startswith("tty2") and len(kernel) == 5
    Path(f"/sys/class/tty/{kernel}/uevent").write_text(action)
