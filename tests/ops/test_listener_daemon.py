"""issue 10 item 7 against the real ``devplug run``: 1,100 idle connections on the metrics
port of a daemon whose descriptor limit is 256. Before the cap they exhausted it and a
kubelet restart then took seconds to re-register, with an EMFILE traceback per accept."""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kubelet_standin import KubeletStandin

from .conftest import curl

SRC = str(Path(__file__).resolve().parents[2] / "src")
RESOURCE = "devplug.io/thing"
FLOOD = 1100
NOFILE = 256
PRLIMIT = shutil.which("prlimit") or "prlimit"  # util-linux: sets the limit, then execs (no fork handlers)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="devplug run reads netlink and udev's database as root")


def _samples(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_idle_connection_flood_never_stops_registration_or_listandwatch(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 200:
        if hard < FLOOD + 200:
            pytest.skip(f"the test itself needs {FLOOD + 200} descriptors (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (FLOOD + 200, hard))
    device = tmp_path / "dev0"
    device.mkdir()
    rules = tmp_path / "test.rules"
    rules.write_text(f'HOSTPATH=="{device}", RESOURCE="thing"\n')
    plugin_dir = tmp_path / "plugins"
    debug_sock = str(tmp_path / "debug.sock")
    log_path = tmp_path / "devplug.log"
    env = dict(os.environ, PYTHONPATH=SRC)
    clients: list[socket.socket] = []
    with KubeletStandin(str(plugin_dir), auto_watch=True) as kubelet, open(log_path, "w") as log:
        proc = subprocess.Popen(
            [PRLIMIT, f"--nofile={NOFILE}:{NOFILE}", "--", sys.executable, "-m", "devplug", "run", "--rules", str(rules), "--plugin-dir", str(plugin_dir),
             "--debug-socket", debug_sock, "--metrics-address", "127.0.0.1:0", "--udev-source", "kernel"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            kubelet.wait_registration(RESOURCE, timeout=30)
            watch = kubelet.wait_watch(RESOURCE, timeout=10)
            watch.wait_for(lambda dl: [h for _i, h in dl.devices] == ["Healthy"])
            port = int(re.search(r"msg=\"http serving\" address=127\.0\.0\.1:(\d+)", log_path.read_text()).group(1))
            fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))

            for _ in range(FLOOD):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                clients.append(c)
            # Accepted in order: by the time this one is answered, all of the flood was handled.
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            m = _samples(body)
            assert m["devplug_http_connections", frozenset({("listener", "metrics")})] == 64  # min(64, 256 / 4)
            evicted = m["devplug_http_connections_dropped_total",
                        frozenset({("listener", "metrics"), ("reason", "evicted")})]
            assert evicted == FLOOD + 1 - 64
            assert m["process_max_fds", frozenset()] == NOFILE
            assert len(os.listdir(f"/proc/{proc.pid}/fd")) <= fds_before + 64

            # kubelet restarts while the flood holds its 64 connections: registration and a
            # fresh ListAndWatch stream follow, and the stream still reports changes.
            kubelet.restart()
            kubelet.wait_registration(RESOURCE, count=2, timeout=10)
            watch = kubelet.wait_watch(RESOURCE, not_before=watch, timeout=10)
            watch.wait_for(lambda dl: [h for _i, h in dl.devices] == ["Healthy"])
            device.rmdir()
            watch.wait_for(lambda dl: [h for _i, h in dl.devices] == ["Unhealthy"])

            # The debug socket has its own cap: still answers.
            r = curl("--unix-socket", debug_sock, "-o", "/dev/null", "-w", "%{http_code}", "http://devplug/inventory")
            assert r.stdout == "200"
        finally:
            for c in clients:
                c.close()
            proc.terminate()
            proc.wait(10)
    text = log_path.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "Too many open files" not in text, text
    assert text.count("http connection cap reached") == 1, text
