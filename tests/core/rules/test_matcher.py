"""Matcher and engine on hand-built device records (no udev, no file system)."""

from __future__ import annotations

import random
import stat

import pytest

from devplug.core.device import Device, static_attrs
from devplug.core.rules import Mount, RuleSet, parse_rules
from devplug.core.rules.pattern import compile_pattern


def ruleset(text: str) -> RuleSet:
    rules, errors = parse_rules(text, "m.rules")
    assert not errors, [str(e) for e in errors]
    return RuleSet(["m.rules"], rules)


def matched_lines(rs: RuleSet, dev: Device, **kw) -> list[int]:
    return [r.line for r in rs.evaluate(dev, **kw).matched]


@pytest.fixture
def ftdi() -> Device:
    """ttyUSB0 below an FTDI adapter: tty → usb-serial port → interface → usb device → hub."""
    hub = Device("/devices/pci0000:00/0000:00:14.0/usb1", "usb1", subsystem="usb", devtype="usb_device",
                 driver="usb", read_attr=static_attrs({"idVendor": "1d6b", "idProduct": "0002", "product": "xHCI Host"}))
    usb = Device(f"{hub.devpath}/1-2", "1-2", subsystem="usb", devtype="usb_device", driver="usb", parent=hub,
                 devnode="/dev/bus/usb/001/005",
                 read_attr=static_attrs({"idVendor": "0403", "idProduct": "6001", "serial": "A1B2C3",
                                         "product": "FT232R USB UART  ", "manufacturer": "FTDI",
                                         "busnum": "1", "devnum": "5"}))
    iface = Device(f"{usb.devpath}/1-2:1.0", "1-2:1.0", subsystem="usb", devtype="usb_interface",
                   driver="ftdi_sio", parent=usb, read_attr=static_attrs({"bInterfaceNumber": "00", "idVendor": "ffff"}))
    port = Device(f"{iface.devpath}/ttyUSB0", "ttyUSB0", subsystem="usb-serial", driver="ftdi_sio", parent=iface,
                  read_attr=static_attrs({"port_number": "0"}))
    return Device(f"{port.devpath}/tty/ttyUSB0", "ttyUSB0", subsystem="tty", devnode="/dev/ttyUSB0", parent=port,
                  symlinks=("/dev/serial/by-id/usb-FTDI_FT232R_A1B2C3-if00-port0",
                            "/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0"),
                  tags=frozenset({"systemd", "uaccess"}),
                  properties={"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6001", "ID_SERIAL_SHORT": "A1B2C3",
                              "DEVNAME": "/dev/ttyUSB0", "MAJOR": "188", "MINOR": "0", "ID_EMPTY": ""},
                  read_attr=static_attrs({"dev": "188:0", "trailing": "value  \n", "spaces": "   "}))


# ---- patterns ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "pattern, value, expected",
    [
        ("ttyUSB0", "ttyUSB0", True),
        ("ttyUSB*", "ttyUSB12", True),
        ("tty?SB0", "ttyUSB0", True),
        ("tty[A-Z]SB*", "ttyUSB0", True),
        ("tty[!U]SB*", "ttyUSB0", False),
        ("tty[^U]SB*", "ttyASB0", True),
        ("tty[[:upper:]]SB0", "ttyUSB0", True),
        ("tty[[:bogus:]]SB0", "ttyUSB0", False),  # glibc: invalid class name never matches
        ("[]a]", "]", True),
        ("[a-]", "-", True),
        ("a[", "a[", True),  # unterminated bracket is a literal '['
        ("a\\*", "a*", True),  # escaped star in a glob
        ("a\\*", "ab", False),
        ("a\\b", "a\\b", True),  # no glob characters: plain comparison, backslash is literal
        ("*", "a/b", True),  # '*' crosses '/' (fnmatch flags 0)
        ("x|ttyUSB0", "ttyUSB0", True),
        ("x|y", "", False),
        ("|x", "", True),
        ("x|", "", True),
        ("a||b", "", True),
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("?*", "", True),  # compile flips the operator for "?*"; the raw pattern is "empty"
    ],
)
def test_patterns(pattern, value, expected):
    p, _flip = compile_pattern(pattern)
    assert p.matches(value) is expected


def test_subsystem_words_are_special_only_for_SUBSYSTEM():
    p, _ = compile_pattern("subsystem", subsystem_key=True)
    assert p.matches("bus") and p.matches("class") and not p.matches("tty")
    q, _ = compile_pattern("subsystem")
    assert not q.matches("bus")


# ---- match keys -------------------------------------------------------------------------------

def test_basic_keys_and_negation(ftdi):
    rs = ruleset(
        'KERNEL=="ttyUSB*", SUBSYSTEM=="tty", RESOURCE="a"\n'  # 1 match
        'KERNEL!="ttyUSB*", RESOURCE="b"\n'  # 2 no
        'DRIVER=="", RESOURCE="c"\n'  # 3 tty has no driver: matches empty
        'DRIVER!="?*", RESOURCE="d"\n'  # 4 same, via "?*"
        'DEVPATH=="*/tty/ttyUSB0", ACTION=="add", RESOURCE="e"\n'  # 5
        'ACTION=="remove", RESOURCE="f"\n'  # 6 no
        'SUBSYSTEM=="subsystem|bus|class", RESOURCE="g"\n'  # 7 no
        'NAME=="", RESOURCE="h"\n'  # 8 only NAME= would set it
    )
    assert matched_lines(rs, ftdi) == [1, 3, 4, 5, 8]
    assert matched_lines(rs, ftdi, action="remove") == [1, 3, 4, 6, 8]


def test_env_missing_empty_and_alternatives(ftdi):
    rs = ruleset(
        'ENV{ID_VENDOR_ID}=="0403|10c4", RESOURCE="a"\n'  # 1
        'ENV{NOPE}=="", RESOURCE="b"\n'  # 2 missing compares as ""
        'ENV{NOPE}!="x", RESOURCE="c"\n'  # 3 missing != x: true
        'ENV{NOPE}=="?*", RESOURCE="d"\n'  # 4 no
        'ENV{ID_EMPTY}=="", RESOURCE="e"\n'  # 5
        'ENV{NOPE}=="|x", RESOURCE="f"\n'  # 6 empty alternative
        'ENV{ACTION}=="add", RESOURCE="g"\n'  # 7 ACTION is a property during evaluation
    )
    assert matched_lines(rs, ftdi) == [1, 2, 3, 5, 6, 7]


def test_missing_attribute_fails_both_operators(ftdi):
    rs = ruleset(
        'ATTR{nope}=="", RESOURCE="a"\n'
        'ATTR{nope}!="x", RESOURCE="b"\n'
        'ATTR{nope}!="", RESOURCE="c"\n'
        'ATTRS{nope}!="x", RESOURCE="d"\n'
        'ATTR{dev}=="188:0", RESOURCE="e"\n'
    )
    assert matched_lines(rs, ftdi) == [5]


def test_attribute_trailing_whitespace(ftdi):
    rs = ruleset(
        'ATTR{trailing}=="value", RESOURCE="a"\n'  # 1 stripped before comparing
        'ATTR{trailing}=="value  ", RESOURCE="b"\n'  # 2 pattern ends in space: not stripped, value has "\n"
        'ATTR{trailing}=="value  *", RESOURCE="c"\n'  # 3 stripped: no "  " left
        'ATTR{trailing}=="value *|x", RESOURCE="d"\n'  # 4 first alternative "value *" → stripped
        'ATTR{trailing}=="x |value*", RESOURCE="e"\n'  # 5 first alternative ends in space → kept, glob matches
        'ATTR{spaces}=="", RESOURCE="f"\n'  # 6 "" does not strip: "   " is not empty
        'ATTR{spaces}=="?*", RESOURCE="g"\n'  # 7 "?*" strips: "" → empty → "?*" fails
        'ATTR{spaces}!="", RESOURCE="h"\n'  # 8 not stripped, not empty
        'ATTRS{product}=="FT232R USB UART", RESOURCE="i"\n'  # 9 parent attr, stripped
    )
    assert matched_lines(rs, ftdi) == [1, 5, 8, 9]


def test_parent_keys_must_match_on_the_same_ancestor(ftdi):
    rs = ruleset(
        'ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", RESOURCE="a"\n'  # 1 both on 1-2
        'ATTRS{idVendor}=="0403", DRIVERS=="ftdi_sio", RESOURCE="b"\n'  # 2 different ancestors: no
        'ATTRS{idVendor}=="1d6b", ATTRS{serial}=="A1B2C3", RESOURCE="c"\n'  # 3 hub vs device: no
        'KERNELS=="1-2", SUBSYSTEMS=="usb", ATTRS{manufacturer}=="FTDI", RESOURCE="d"\n'  # 4
        'KERNELS=="ttyUSB0", TAGS=="uaccess", RESOURCE="e"\n'  # 5 the device itself is in the chain
        'ATTRS{idVendor}=="ffff", DRIVERS=="ftdi_sio", RESOURCE="f"\n'  # 6 the interface has both
        'ATTRS{idVendor}!="0403", RESOURCE="g"\n'  # 7 some ancestor with an idVendor != 0403 (the hub)
        'DRIVERS=="usb", ATTRS{product}=="xHCI*", RESOURCE="h"\n'  # 8 the hub
    )
    assert matched_lines(rs, ftdi) == [1, 4, 5, 6, 7, 8]


def test_symlink_and_tag_lists(ftdi):
    plain = Device("/devices/virtual/misc/x", "x", subsystem="misc")
    rs = ruleset(
        'SYMLINK=="serial/by-id/*", RESOURCE="a"\n'  # 1 any link matches
        'SYMLINK!="serial/by-id/*", RESOURCE="b"\n'  # 2 true only if no link matches
        'SYMLINK!="nothing", RESOURCE="c"\n'  # 3
        'TAG=="uaccess", RESOURCE="d"\n'  # 4
        'TAG!="uaccess", RESOURCE="e"\n'  # 5
        'TAG!="", RESOURCE="f"\n'  # 6 no tag is empty
        'SYMLINK=="", RESOURCE="g"\n'  # 7 no link is empty
    )
    assert matched_lines(rs, ftdi) == [1, 3, 4, 6]
    assert matched_lines(rs, plain) == [2, 3, 5, 6]  # empty lists: == fails, != holds


def test_file_tests_use_the_path_mode_seam(ftdi):
    seen = []

    def path_mode(path):
        seen.append(path)
        return {"/dev/kvm": stat.S_IFCHR | 0o660, f"{ftdi.syspath}/dev": stat.S_IFREG | 0o444}.get(path)

    rs = ruleset(
        'TEST=="/dev/kvm", RESOURCE="a"\n'
        'TEST=="/dev/nope", RESOURCE="b"\n'
        'TEST!="/dev/nope", RESOURCE="c"\n'
        'TEST=="dev", RESOURCE="d"\n'  # relative to the syspath
        'TEST{0111}=="dev", RESOURCE="e"\n'  # not executable
        'TEST{0444}=="dev", RESOURCE="f"\n'
        'TEST=="/dev/%k", RESOURCE="g"\n'  # substitutions
    )
    assert matched_lines(rs, ftdi, path_mode=path_mode) == [1, 3, 4, 6]
    assert "/dev/ttyUSB0" in seen
    assert matched_lines(rs, ftdi) == []  # no seam: every TEST fails


# ---- assignments ------------------------------------------------------------------------------

def test_later_rules_override_and_final_wins(ftdi):
    rs = ruleset(
        'SUBSYSTEM=="tty", RESOURCE="serial", PERMISSIONS="r", SHARE="2"\n'
        'ATTRS{idVendor}=="0403", RESOURCE="ftdi"\n'
        'KERNEL=="ttyUSB*", PERMISSIONS:="rwm"\n'
        'KERNEL=="ttyUSB*", PERMISSIONS="r", SHARE="3"\n'
    )
    claim = rs.evaluate(ftdi, domain="example.com")
    assert claim.resource == "example.com/ftdi"
    assert claim.resource_name == "ftdi"
    assert claim.rule is not None and claim.rule.line == 2
    assert claim.permissions == "rwm" and claim.share == 3
    assert [r.line for r in claim.matched] == [1, 2, 3, 4]


def test_empty_resource_releases_and_final_resource_cannot_be_released(ftdi):
    rs = ruleset('SUBSYSTEM=="tty", RESOURCE="serial"\nKERNEL=="ttyUSB0", RESOURCE=""\n')
    claim = rs.evaluate(ftdi)
    assert claim.resource is None and claim.rule is None
    rs = ruleset('SUBSYSTEM=="tty", RESOURCE:="example.com/serial"\nKERNEL=="ttyUSB0", RESOURCE=""\n')
    assert rs.evaluate(ftdi).resource == "example.com/serial"
    unclaimed = Device("/devices/virtual/misc/x", "x", subsystem="misc")
    assert rs.evaluate(unclaimed).resource is None


def test_templates_mounts_env_annotations_options(ftdi):
    rs = ruleset(
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="ftdi", '
        'DEVICE_ID="%s{idVendor}-$attr{serial}-%k-%n", CONTAINER_PATH="/dev/serial%n", '
        'MOUNT+="/run/udev/%k:/run/x:ro", MOUNT+="/srv:/srv", CONTAINER_ENV{PORT}="$devnode", '
        'ANNOTATION{example.com/serial}="$env{ID_SERIAL_SHORT} %% $$ %b %d", OPTIONS+="symlinks,usb_node"\n'
        'KERNEL=="ttyUSB0", MOUNT+="/other:/srv", OPTIONS-="usb_node"\n'
    )
    claim = rs.evaluate(ftdi)
    assert claim.device_id == "0403-A1B2C3-ttyUSB0-0"
    assert claim.container_path == "/dev/serial0"
    assert claim.mounts == (Mount("/run/udev/ttyUSB0", "/run/x", True), Mount("/other", "/srv", False))
    assert claim.envs == (("PORT", "/dev/ttyUSB0"),)
    # %b / %d: kernel name and driver of the ancestor the parent keys matched (the USB device)
    assert claim.annotations == (("example.com/serial", "A1B2C3 % $ 1-2 usb"),)
    assert claim.options == frozenset({"symlinks"})


def test_attr_substitution_strips_and_replaces_unsafe_characters(ftdi):
    rs = ruleset('KERNEL=="ttyUSB0", RESOURCE="x", DEVICE_ID="$attr{product}|$attr{nope}|%E{NOPE}"\n')
    assert rs.evaluate(ftdi).device_id == "||"  # product lives on an ancestor no parent key selected
    rs = ruleset('ATTRS{idVendor}=="0403", RESOURCE="x", DEVICE_ID="$attr{product}"\n')
    assert rs.evaluate(ftdi).device_id == "FT232R USB UART"


def test_env_assignment_is_seen_by_later_rules_and_goto_skips(ftdi):
    rs = ruleset(
        'ATTRS{idVendor}=="0403", ENV{IS_FTDI}="1"\n'  # 1
        'ENV{IS_FTDI}=="1", ENV{IS_FTDI}+="more"\n'  # 2
        'ENV{IS_FTDI}=="1 more", RESOURCE="ftdi"\n'  # 3
        'SUBSYSTEM=="tty", GOTO="end"\n'  # 4
        'KERNEL=="*", RESOURCE="skipped"\n'  # 5 skipped by GOTO
        'LABEL="end"\n'  # 6
        'KERNEL=="*", ENV{IS_FTDI}=""\n'  # 7 removes
        'ENV{IS_FTDI}=="", SHARE="4"\n'  # 8
    )
    claim = rs.evaluate(ftdi)
    assert claim.resource == "devplug.io/ftdi" and claim.share == 4
    assert [r.line for r in claim.matched] == [1, 2, 3, 4, 7, 8]
    trace = rs.explain(ftdi)
    assert [(t.rule.line, t.matched) for t in trace] == [(1, True), (2, True), (3, True), (4, True), (5, False),
                                                          (7, True), (8, True)]
    assert trace[4].reason == 'skipped by GOTO="end" at m.rules:4'


def test_explain_names_the_first_failing_key(ftdi):
    rs = ruleset(
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="10c4", RESOURCE="a"\n'
        'SUBSYSTEM=="block", RESOURCE="b"\n'
        'ATTRS{idVendor}=="0403", DRIVERS=="ftdi_sio", RESOURCE="c"\n'
        'ATTR{nope}=="1", RESOURCE="d"\n'
        'ENV{NOPE}=="1", RESOURCE="e"\n'
    )
    reasons = [t.reason for t in rs.explain(ftdi)]
    assert reasons == [
        'ATTRS{idVendor}=="10c4": no ancestor matches',
        "SUBSYSTEM==\"block\": value is 'tty'",
        'ATTRS{idVendor}=="0403", DRIVERS=="ftdi_sio": no single device of the chain matches all of them',
        'ATTR{nope}=="1": no such attribute',
        'ENV{NOPE}=="1": property not set',
    ]


# ---- static facts and host paths --------------------------------------------------------------

def test_subsystems_resources_and_hostpaths():
    rs = ruleset(
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="ftdi"\n'
        'SUBSYSTEM=="video4linux|misc", RESOURCE="example.com/cam"\n'
        'KERNEL=="x", ENV{A}="1"\n'  # claims nothing: no constraint needed
        'HOSTPATH=="/dev/mem|/srv/*", RESOURCE="mem", PERMISSIONS="r", MOUNT+="/srv/%k:/data/%k"\n'
        'HOSTPATH=="/srv/b", RESOURCE="", DEVICE_ID="b"\n'
    )
    assert rs.subsystems == frozenset({"tty", "video4linux", "misc"})
    assert rs.resources("devplug.io") == frozenset({"devplug.io/ftdi", "example.com/cam", "devplug.io/mem"})
    assert rs.hostpath_patterns() == ("/dev/mem", "/srv/*", "/srv/b")
    assert [r.ref.line for r in rs.hostpath_rules] == [4, 5]
    claim = rs.evaluate_path("/srv/a")
    assert claim.resource == "devplug.io/mem" and claim.permissions == "r"
    assert claim.mounts == (Mount("/srv/a", "/data/a"),)
    assert rs.evaluate_path("/srv/b").resource is None
    assert rs.evaluate_path("/srv/a/deeper").resource is None  # '*' stays inside one directory
    assert rs.evaluate_path("/dev/kmem").resource is None
    assert ruleset('KERNEL=="x", RESOURCE="y"\n').subsystems is None
    assert ruleset('SUBSYSTEM=="tty*", RESOURCE="y"\n').subsystems is None


def test_index_gives_the_same_answers_as_evaluating_every_rule(ftdi):
    """The candidate index is an optimisation only: compare with explain(), which runs all rules."""
    rnd = random.Random(7)
    pieces = ['SUBSYSTEM=="tty"', 'SUBSYSTEM=="usb"', 'KERNEL=="ttyUSB0"', 'KERNEL=="tty*"', 'DRIVER==""',
              'ATTRS{idVendor}=="0403"', 'ATTRS{idVendor}=="1d6b"', 'ATTRS{idProduct}=="6001|0002"',
              'ATTR{dev}=="188:0"', 'KERNELS=="1-2"', 'DRIVERS=="usb"', 'SUBSYSTEMS=="usb-serial"',
              'ATTRS{product}=="FT232R USB UART"', 'ENV{ID_MODEL_ID}=="6001"', 'TAG=="systemd"']
    lines = []
    for i in range(300):
        keys = rnd.sample(pieces, rnd.randint(1, 3))
        lines.append(", ".join(keys + [f'RESOURCE="r{i}"']))
    rs = ruleset("\n".join(lines) + "\n")
    for dev in ftdi.chain():
        fast = [r.line for r in rs.evaluate(dev).matched]
        full = [t.rule.line for t in rs.explain(dev) if t.matched]
        assert fast == full
        assert fast  # the pieces are built to match something on each device
