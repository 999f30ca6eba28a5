"""End to end: real uevents → ``devplug run`` → the kubelet stand-in, over real unix sockets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import uevent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: writes uevents under /sys")

VTTY = "devplug.io/vtty"
TTYS = ["virtual-tty-tty20", "virtual-tty-tty21", "virtual-tty-tty22", "virtual-tty-tty23"]


def write_rules(tmp_path: Path, text: str, name: str = "test.rules") -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def healthy(devices: dict[str, str]) -> set[str]:
    return {i for i, h in devices.items() if h == "Healthy"}


@pytest.mark.parametrize("source", ["kernel", "udev"])
def test_unplug_replug_allocate_and_shutdown(request, tmp_path, plugin_dir, kubelet, start_devplug, source):
    if source == "udev":
        request.getfixturevalue("udevd")
    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-3]", RESOURCE="vtty", PERMISSIONS="r"\n')
    dp = start_devplug(rules, "--udev-source", source)
    reg = kubelet.wait_registration(VTTY, timeout=10)
    assert (reg.version, reg.endpoint) == ("v1beta1", "devplug.io_vtty.sock")
    watch = kubelet.wait_watch(VTTY)
    first = watch.wait_for(lambda dl: len(dl.devices) == 4)
    assert first.as_dict() == {i: "Healthy" for i in TTYS}
    assert f"source={source}" in dp.log()

    uevent("tty21", "remove")
    gone = watch.wait_for(lambda dl: dl.as_dict().get("virtual-tty-tty21") == "Unhealthy")
    assert healthy(gone.as_dict()) == set(TTYS) - {"virtual-tty-tty21"}
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(VTTY, ["virtual-tty-tty21"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "virtual-tty-tty21" in err.value.details()

    uevent("tty21", "add")
    back = watch.wait_for(lambda dl: dl.as_dict().get("virtual-tty-tty21") == "Healthy")
    assert back.ids == TTYS

    resp = kubelet.allocate(VTTY, ["virtual-tty-tty20", "virtual-tty-tty22"])
    (container,) = resp.container_responses
    specs = sorted((d.host_path, d.container_path, d.permissions) for d in container.devices)
    assert specs == [("/dev/tty20", "/dev/tty20", "r"), ("/dev/tty22", "/dev/tty22", "r")]
    assert container.envs["DEVPLUG_VTTY"] == "/dev/tty20,/dev/tty22"
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(VTTY, ["no-such-device"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    rc, took = dp.stop()
    assert rc == 0, dp.log()
    assert took < 2.0
    assert sorted(os.listdir(plugin_dir)) == ["kubelet.sock"]
    assert watch.wait_ended() is not None


def test_zram_block_devices_hotplug(tmp_path, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="zram"\n')
    dp = start_devplug(rules, "--udev-source", "kernel")
    watch = kubelet.wait_watch("devplug.io/zram", timeout=10)
    before = set(watch.wait_count(1)[0].as_dict())
    num = int(Path("/sys/class/zram-control/hot_add").read_text())
    try:
        dev_id = f"virtual-block-zram{num}"
        listed = watch.wait_for(lambda dl: dl.as_dict().get(dev_id) == "Healthy")
        assert set(listed.as_dict()) == before | {dev_id}
        resp = kubelet.allocate("devplug.io/zram", [dev_id])
        assert [d.host_path for d in resp.container_responses[0].devices] == [f"/dev/zram{num}"]
    finally:
        Path("/sys/class/zram-control/hot_remove").write_text(str(num))
    watch.wait_for(lambda dl: dl.as_dict().get(dev_id) == "Unhealthy")
    assert dp.stop()[0] == 0


def test_kubelet_restart_reregisters_and_streams_again(tmp_path, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-3]", RESOURCE="vtty"\n')
    dp = start_devplug(rules, "--udev-source", "kernel")
    old = kubelet.wait_watch(VTTY, timeout=10)
    old.wait_for(lambda dl: len(dl.devices) == 4)
    t_up = kubelet.restart()
    reg = kubelet.wait_registration(VTTY, count=2, timeout=5)
    print(f"re-registered {(reg.t_ns - t_up) / 1e6:.1f} ms after kubelet.sock came back")
    new = kubelet.wait_watch(VTTY, not_before=old)
    assert new.wait_for(lambda dl: len(dl.devices) == 4).as_dict() == {i: "Healthy" for i in TTYS}
    assert dp.stop()[0] == 0


def test_rules_reload_adds_and_drops_resources_and_keeps_last_good(tmp_path, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-1]", RESOURCE="vtty"\n')
    dp = start_devplug(rules, "--udev-source", "kernel")
    kubelet.wait_watch(VTTY, timeout=10).wait_for(lambda dl: len(dl.devices) == 2)

    # A broken edit: devplug keeps serving the last good rules and says where the error is.
    (rules / "test.rules").write_text('SUBSYSTEM=="tty", KERNEL=="tty2[0-1]", RESOURCE="vtty", SHARE="x"\n')
    text = dp.wait_log("keeping the last good rules")
    assert "test.rules:1:" in text

    t0 = time.monotonic()
    (rules / "test.rules").write_text('SUBSYSTEM=="tty", KERNEL=="tty2[4-5]", RESOURCE="other"\n')
    watch = kubelet.wait_watch("devplug.io/other", timeout=5)
    assert watch.wait_for(lambda dl: len(dl.devices) == 2).ids == ["virtual-tty-tty24", "virtual-tty-tty25"]
    print(f"reload → new resource streamed in {time.monotonic() - t0:.3f} s")
    dp.wait_log("rules reloaded")
    # The old resource is no longer named by any rule: its socket is gone.
    deadline = time.monotonic() + 5
    while "devplug.io_vtty.sock" in os.listdir(kubelet.plugin_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "devplug.io_vtty.sock" not in os.listdir(kubelet.plugin_dir)
    assert dp.stop()[0] == 0


def test_hostpath_resource_follows_the_path(tmp_path, kubelet, start_devplug):
    data = tmp_path / "srv" / "models"
    rules = write_rules(
        tmp_path, f'HOSTPATH=="{tmp_path}/srv/models", RESOURCE="models", MOUNT+="{data}:/models:ro"\n')
    dp = start_devplug(rules, "--udev-source", "kernel")
    watch = kubelet.wait_watch("devplug.io/models", timeout=10)
    assert watch.wait_count(1)[0].devices == ()
    data.mkdir(parents=True)
    listed = watch.wait_for(lambda dl: len(dl.devices) == 1)
    (dev_id,) = listed.ids
    assert listed.as_dict()[dev_id] == "Healthy"
    resp = kubelet.allocate("devplug.io/models", [dev_id])
    (m,) = resp.container_responses[0].mounts
    assert (m.host_path, m.container_path, m.read_only) == (str(data), "/models", True)
    assert list(resp.container_responses[0].devices) == []
    data.rmdir()
    watch.wait_for(lambda dl: dl.as_dict().get(dev_id) == "Unhealthy")
    assert dp.stop()[0] == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_debug_socket_inventory_cli_metrics_and_health(tmp_path, kubelet, start_devplug):
    import json
    import stat
    import subprocess
    import sys
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    from tests.e2e.conftest import SRC

    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-3]", RESOURCE="vtty"\n')
    sock = tmp_path / "run" / "debug.sock"
    port = _free_port()
    dp = start_devplug(rules, "--udev-source", "kernel", "--debug-socket", str(sock),
                       "--metrics-address", f"127.0.0.1:{port}")
    watch = kubelet.wait_watch(VTTY, timeout=10)
    watch.wait_for(lambda dl: len(dl.devices) == 4)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    uevent("tty22", "remove")
    watch.wait_for(lambda dl: dl.as_dict().get("virtual-tty-tty22") == "Unhealthy")

    env = {"PYTHONPATH": SRC, "PATH": os.environ["PATH"]}
    cli = [sys.executable, "-m", "devplug", "inventory", "--debug-socket", str(sock)]
    out = subprocess.run(cli + ["--json"], env=env, capture_output=True, text=True, check=True).stdout
    devices = {d["id"]: d for d in json.loads(out)["devices"]}
    assert devices["virtual-tty-tty22"]["health"] == "Unhealthy"
    assert devices["virtual-tty-tty20"]["devnode"] == "/dev/tty20"
    assert devices["virtual-tty-tty20"]["rule"].endswith("test.rules:1")
    table = subprocess.run(cli, env=env, capture_output=True, text=True, check=True).stdout
    assert table.split()[:8] == ["RESOURCE", "ID", "HEALTH", "DEVNODE", "HELD", "BY", "RULE", "SINCE"]
    assert "virtual-tty-tty22" in table and "Unhealthy" in table

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples["devplug_devices", frozenset({("resource", "devplug.io/vtty"), ("health", "Unhealthy")})] == 1
    assert samples["devplug_uevents_total", frozenset({("action", "remove"), ("subsystem", "tty")})] >= 1
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert health.status == 200

    rc, _ = dp.stop()
    assert rc == 0
    assert not sock.exists()
    gone = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert gone.returncode == 1 and "cannot connect" in gone.stderr


def test_taken_debug_socket_is_one_clear_error(tmp_path, plugin_dir):
    import socket
    import subprocess
    import sys

    from tests.e2e.conftest import SRC

    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty20", RESOURCE="vtty"\n')
    taken = tmp_path / "taken.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(taken))
        other.listen()
        r = subprocess.run(
            [sys.executable, "-m", "devplug", "run", "--rules", str(rules), "--plugin-dir", str(plugin_dir),
             "--debug-socket", str(taken), "--udev-source", "kernel"],
            env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f'msg="cannot run" path={taken}' in r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(plugin_dir) == []  # nothing served to kubelet


def test_cdi_specs_follow_the_inventory(tmp_path, kubelet, start_devplug):
    import json

    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-1]", RESOURCE="vtty"\n')
    cdi_dir = tmp_path / "cdi"
    dp = start_devplug(rules, "--udev-source", "kernel", "--cdi-spec-dir", str(cdi_dir))
    watch = kubelet.wait_watch(VTTY, timeout=10)
    watch.wait_for(lambda dl: len(dl.devices) == 2)
    (spec_file,) = cdi_dir.glob("*.json")
    spec = json.loads(spec_file.read_text())
    assert spec["kind"] == "devplug.io/vtty"
    names = {d["name"] for d in spec["devices"]}
    assert names == {"virtual-tty-tty20", "virtual-tty-tty21"}
    resp = kubelet.allocate(VTTY, ["virtual-tty-tty20"])
    assert [c.name for c in resp.container_responses[0].cdi_devices] == ["devplug.io/vtty=virtual-tty-tty20"]

    uevent("tty21", "remove")
    watch.wait_for(lambda dl: dl.as_dict().get("virtual-tty-tty21") == "Unhealthy")
    # The spec is written before the stream is told: the unplugged device is already gone from it.
    assert {d["name"] for d in json.loads(spec_file.read_text())["devices"]} == {"virtual-tty-tty20"}
    uevent("tty21", "add")
    watch.wait_for(lambda dl: dl.as_dict().get("virtual-tty-tty21") == "Healthy")
    assert dp.stop()[0] == 0
    assert list(cdi_dir.glob("*.json")) == []


def test_a_second_devplug_on_the_same_plugin_dir_refuses_to_start(tmp_path, plugin_dir, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-3]", RESOURCE="vtty"\n')
    first = start_devplug(rules, "--udev-source", "kernel")
    kubelet.wait_registration(VTTY, timeout=10)
    second = start_devplug(rules, "--udev-source", "kernel")
    assert second.proc.wait(10) == 1
    errors = [line for line in second.log().splitlines() if "level=error" in line]
    assert len(errors) == 1, second.log()
    assert "already serves this plugin directory" in errors[0] and f"process {first.proc.pid}" in errors[0]
    assert "Traceback" not in second.log()
    # The first one was not disturbed: its socket is still the one kubelet registered.
    assert len(kubelet.registrations_of(VTTY)) == 1
    assert first.proc.poll() is None
    rc, _ = first.stop()
    assert rc == 0
    third = start_devplug(rules, "--udev-source", "kernel")  # the lock went with the first
    kubelet.wait_registration(VTTY, count=2, timeout=10)
    assert third.stop()[0] == 0
