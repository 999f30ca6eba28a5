"""``devplug inventory`` against a real daemon-side server on a unix socket."""

from __future__ import annotations

import argparse
import io
import json
import socket

from devplug.cli import inventory as cmd_inventory
from devplug.ops import debug, httpserve

from tests.ops.conftest import with_server
from devplug.kubelet.podresources import Holder
from tests.ops.test_debug import C, R, inventory, make_app


def parse_args(argv, env=None, monkeypatch=None):
    if monkeypatch is not None:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
    parser = argparse.ArgumentParser(prog="devplug")
    sub = parser.add_subparsers()
    cmd_inventory.register(sub)
    return parser.parse_args(["inventory", *argv])


def run_cli(args):
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_table_is_aligned_and_lists_every_device(tmp_path):
    sock = str(tmp_path / "debug.sock")

    async def holders():  # kubelet's PodResources: who holds which ID
        return {(R, "ftdi-A1"): (Holder("iot", "reader", "modbus"),)}

    app = make_app(inventory(), rules_error="r.rules:1:5: bad", holders=holders)
    code, out, err = with_server(debug.serve, app, sock, None,
                                 client=lambda _: run_cli(parse_args(["--debug-socket", sock])))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["RESOURCE", "ID", "HEALTH", "DEVNODE", "HELD", "BY", "RULE", "SINCE"]
    assert lines[1:] == [
        f"{C}     fuse-s0  Unhealthy  /dev/fuse     -                  -                               2024-05-01T10:00:02Z",
        f"{C}     fuse-s1  Unhealthy  /dev/fuse     -                  -                               2024-05-01T10:00:02Z",
        f"{R}  ftdi-A1  Healthy    /dev/ttyUSB0  iot/reader/modbus  /etc/devplug/10-serial.rules:3  2024-05-01T10:00:00Z",
    ]
    # Columns line up: every cell of a column starts at the same offset as its header.
    for col in ("ID", "HEALTH", "DEVNODE", "HELD BY", "RULE", "SINCE"):
        start = lines[0].index(col)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in lines)
    assert "r.rules:1:5: bad" in err


def test_json_is_the_daemons_json(tmp_path, monkeypatch):
    sock = str(tmp_path / "debug.sock")
    app = make_app(inventory())
    args = parse_args(["--json"], env={"DEVPLUG_DEBUG_SOCKET": sock}, monkeypatch=monkeypatch)
    assert args.debug_socket == sock
    code, out, err = with_server(debug.serve, app, sock, None, client=lambda _: run_cli(args))
    assert code == 0 and err == ""
    assert json.loads(out) == app.inventory_json()
    assert json.loads(out)["pod_resources"] == "off" and json.loads(out)["devices"][0]["held_by"] is None


def test_default_socket(monkeypatch):
    monkeypatch.delenv("DEVPLUG_DEBUG_SOCKET", raising=False)
    args = parse_args([])
    assert args.debug_socket == "/run/devplug/debug.sock" and args.json is False


def test_absent_socket_is_one_clear_line(tmp_path):
    path = str(tmp_path / "nope.sock")
    code, out, err = run_cli(parse_args(["--debug-socket", path]))
    assert (code, out) == (1, "")
    assert err == (f"devplug inventory: cannot connect to {path}: no such file "
                   "(is devplug run started with --debug-socket?)\n")


def test_refusing_socket(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # bound, never listening: connect is refused
    try:
        code, out, err = run_cli(parse_args(["--debug-socket", path]))
    finally:
        s.close()
    assert code == 1
    assert err == (f"devplug inventory: cannot connect to {path}: connection refused "
                   "(is devplug run started with --debug-socket?)\n")


def test_not_a_socket_and_error_answers(tmp_path):
    regular = tmp_path / "file"
    regular.write_text("")
    code, _out, err = run_cli(parse_args(["--debug-socket", str(regular)]))
    assert code == 1 and err.startswith(f"devplug inventory: cannot connect to {regular}: connection refused")

    sock = str(tmp_path / "d.sock")

    async def unwell(method, path, query):
        return httpserve.text(503, "starting up\nmore detail")

    code, _out, err = with_server(httpserve.serve_unix, sock, unwell,
                                  client=lambda _: run_cli(parse_args(["--debug-socket", sock])))
    assert (code, err) == (1, f"devplug inventory: {sock} answered 503: starting up\n")


def test_refused_devices_are_named_with_their_reason():
    out, err = io.StringIO(), io.StringIO()
    cmd_inventory.print_inventory({"devices": [], "refused": [
        {"resource": R, "devnode": "/dev/ttyUSB1", "syspath": "/sys/x", "reason": "r.rules:1:9: MOUNT: %s{serial} is empty"}]},
        out, err)
    assert err.getvalue() == f"refused: /dev/ttyUSB1 ({R}, not offered): r.rules:1:9: MOUNT: %s{{serial}} is empty\n"
