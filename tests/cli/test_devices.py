"""``devplug devices``: readable rule keys, JSON lines, filters, clear errors."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from devplug.cli import devices as cmd_devices

pytestmark = pytest.mark.udevd


def run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="devplug")
    cmd_devices.register(parser.add_subparsers())
    args = parser.parse_args(["devices", *argv])
    out = io.StringIO()
    return args.func(args, out=out), out.getvalue()


def test_text_lists_tty_nodes_with_rule_keys(udevd):
    code, text = run("--subsystem", "tty")
    assert code == 0
    blocks = text.strip().split("\n\n")
    heads = [b.splitlines()[0] for b in blocks]
    assert "/dev/tty20  (tty tty20)" in heads
    # natural order: tty2 before tty10 before tty20
    assert heads.index("/dev/tty2  (tty tty2)") < heads.index("/dev/tty10  (tty tty10)") \
        < heads.index("/dev/tty20  (tty tty20)")
    tty20 = blocks[heads.index("/dev/tty20  (tty tty20)")]
    assert 'KERNEL=="tty20", SUBSYSTEM=="tty", DRIVER==""' in tty20
    assert 'DEVPATH=="/devices/virtual/tty/tty20"' in tty20


def test_ancestors_show_kernels_subsystems_drivers_and_attrs(udevd):
    code, text = run("/sys/class/block/vda")
    assert code == 0
    assert 'SUBSYSTEM=="block"' in text and 'ENV{DEVTYPE}=="disk"' in text
    assert 'SUBSYSTEMS=="pci", DRIVERS=="virtio-pci"' in text
    assert 'ATTRS{vendor}=="0x1af4"' in text
    assert "uevent" not in text  # not a matchable attribute


def test_json_lines(udevd):
    code, text = run("--json")
    assert code == 0
    records = [json.loads(line) for line in text.splitlines()]
    assert records and all(r["devnode"] for r in records)
    tty20 = next(r for r in records if r["kernel"] == "tty20")
    assert tty20["subsystem"] == "tty" and tty20["devnode"] == "/dev/tty20"
    assert tty20["syspath"] == "/sys/devices/virtual/tty/tty20"
    assert "dev" not in tty20["attributes"] and "uevent" not in tty20["attributes"]
    vda = next(r for r in records if r["kernel"] == "vda")
    assert [p["kernel"] for p in vda["parents"]][:2] == ["virtio1", "0000:00:02.0"]
    assert vda["parents"][1]["attributes"]["vendor"] == "0x1af4"
    assert vda["parents"][1]["driver"] == "virtio-pci"


def test_all_includes_devices_without_node(udevd):
    _, default = run("--json", "--subsystem", "net")
    _, everything = run("--json", "--all", "--subsystem", "net")
    assert default == ""
    names = {json.loads(line)["kernel"] for line in everything.splitlines()}
    assert "lo" in names


def test_unknown_device_is_one_clear_line(capsys):
    code, text = run("/dev/no-such-node")
    assert code == 2 and text == ""
    assert capsys.readouterr().err == "devplug devices: /dev/no-such-node: no such device node\n"
