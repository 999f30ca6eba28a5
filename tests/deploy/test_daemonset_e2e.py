"""The real daemon, started the way the rendered DaemonSet starts it, on this machine.

Takes the container args from `kubectl kustomize manifests/`, maps the pod's paths to
temporary ones (plugin dir, debug socket, the rules ConfigMap laid out the way kubelet lays
out a ConfigMap volume, with ``..data`` symlinks), and runs ``devplug run`` as uid 0 with
every capability dropped and no_new_privs, against the kubelet stand-in — for the base
(host network namespace, udev source) and for the kernel-source overlay (a fresh network
namespace, kernel source). It must become healthy, register its resources, follow a real
unplug/replug, serve the debug socket, and exit cleanly on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.kubelet_standin import KubeletStandin
from .test_manifests import MANIFESTS, ROOT, container, one, render
from .conftest import TRIGGER, TTY
from .test_privileges import NO_CAPS

pytestmark = [pytest.mark.netlink, pytest.mark.udevd]


def configmap_volume(target: Path, data: dict[str, str]) -> None:
    """What kubelet makes of a ConfigMap volume: files in a timestamped dir, a ``..data``
    symlink to it, and one symlink per key through ``..data``."""
    target.mkdir()
    stamp = target / "..2025_01_01_00_00_00.000000001"
    stamp.mkdir()
    for name, text in data.items():
        (stamp / name).write_text(text)
    os.symlink(stamp.name, target / "..data")
    for name in data:
        os.symlink(f"..data/{name}", target / name)


def args_source(ds: dict) -> str:
    return next(a.partition("=")[2] for a in container(ds)["args"] if a.startswith("--udev-source="))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("devplug", timeout=2)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(self._path)


def unix_get(sock: Path, path: str) -> tuple[int, str]:
    """GET over the debug socket: it reaches the daemon in any network namespace."""
    conn = _UnixHTTPConnection(str(sock))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def short_tmp():
    """Unix socket paths must fit in 108 bytes: pytest's tmp_path is too deep for them."""
    d = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("variant", ["base", "kernel-source"])
def test_daemonset_args_run_without_privileges(variant, short_tmp, kernel_events, udevd):
    tmp_path = short_tmp
    docs = render(MANIFESTS if variant == "base" else MANIFESTS / "overlays" / variant)
    ds = one(docs, "DaemonSet")
    cm = one(docs, "ConfigMap")
    assert cm.get("data"), "the rules ConfigMap is empty"
    # One more rule, on a device the test can unplug and replug with uevents.
    cm["data"]["99-e2e.rules"] = f'SUBSYSTEM=="tty", KERNEL=="{TTY}", RESOURCE="e2e-tty"\n'

    plugins = tmp_path / "device-plugins"
    plugins.mkdir(mode=0o755)
    rules = tmp_path / "etc-devplug-rules"
    configmap_volume(rules, cm["data"])
    run_dir = tmp_path / "run-devplug"  # the emptyDir
    run_dir.mkdir()
    port = free_port()
    mapping = {
        "--rules": str(rules),
        "--plugin-dir": str(plugins),
        "--debug-socket": str(run_dir / "debug.sock"),
        # The pod listens on all interfaces of the node; here loopback is enough.
        "--metrics-address": f"127.0.0.1:{port}",
        "--node-name": "test-node",
    }
    args = []
    for a in container(ds)["args"]:
        key, _, value = a.partition("=")
        args.append(f"{key}={mapping.get(key, value)}")
    assert set(mapping) <= {a.partition("=")[0] for a in args}

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUG_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    # The pod's network namespace: the host's, or a fresh one without hostNetwork.
    netns = [] if ds["spec"]["template"]["spec"].get("hostNetwork") else ["unshare", "--net"]
    debug = run_dir / "debug.sock"
    with KubeletStandin(str(plugins), auto_watch=True) as kubelet:
        log = open(tmp_path / "devplug.log", "w+")  # a file: a full pipe would stall the daemon
        proc = subprocess.Popen(
            [*netns, *NO_CAPS, sys.executable, "-m", "devplug", "run", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 20
            status, body = 0, ""
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status, body = unix_get(debug, "/healthz")
                except OSError:
                    status = 0
                if status == 200:
                    break
                time.sleep(0.1)
            assert proc.poll() is None, (tmp_path / "devplug.log").read_text()
            assert status == 200, f"{status} {body}\n" + (tmp_path / "devplug.log").read_text()
            # /dev/fuse and /dev/net/tun exist on every Linux machine; rules/50-shared.rules
            # offers them, so kubelet must have been told about them.
            registered = {r.resource_name for r in kubelet.registrations}
            assert "devplug.io/fuse" in registered, registered
            watch = kubelet.wait_watch("devplug.io/fuse")
            assert watch.wait_for(lambda dl: len(dl.devices) > 0).devices
            # Its plugin sockets were created in the root-owned dir, without capabilities.
            assert any(p.name != "kubelet.sock" and stat.S_ISSOCK(p.stat().st_mode) for p in plugins.iterdir())
            # Events flow through the source the DaemonSet chose, without capabilities: an
            # unplug turns the device Unhealthy, the replug Healthy again.
            tty = kubelet.wait_watch("devplug.io/e2e-tty")
            health = lambda want: (lambda dl: [h for _, h in dl.devices] == [want])  # noqa: E731
            tty.wait_for(health("Healthy"))
            try:
                Path(TRIGGER).write_text("remove")
                tty.wait_for(health("Unhealthy"))
            finally:
                Path(TRIGGER).write_text("add")
            tty.wait_for(health("Healthy"))
            assert stat.S_IMODE(debug.stat().st_mode) == 0o600
            status, metrics = unix_get(debug, "/metrics")
            assert status == 200 and "devplug_devices" in metrics
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("devplug did not stop within 5 s of SIGTERM:\n" + (tmp_path / "devplug.log").read_text())
            log.close()
    out = (tmp_path / "devplug.log").read_text()
    assert proc.returncode == 0, out
    # Its own sockets are gone; the json log format the DaemonSet asks for was used.
    assert [p.name for p in plugins.iterdir() if p.name != "kubelet.sock"] == []
    lines = [line for line in out.splitlines() if line.strip()]
    starting = next(json.loads(line) for line in lines if '"starting"' in line)
    assert starting["source"] == args_source(ds), starting
    assert lines and all(line.lstrip().startswith("{") for line in lines), out[:2000]
