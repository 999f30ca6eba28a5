"""Device strings in assignment templates are escaped, not concatenated (issue 10, items 1 and 5).

Each attack is a crafted device through the real parser and engine; on the old code the
paths escaped their prefix and the values carried ``../``, newlines, NUL and 10 kB unchanged.
"""

from __future__ import annotations

import pytest

from devplug.core.device import Device
from devplug.core.rules import Mount, RuleSet, parse_rules
from devplug.core.rules.escape import (
    MAX_VALUE_BYTES,
    expand_path,
    literal_prefix,
    normalize,
    safe_paths,
    safe_value,
)
from devplug.core.rules.template import Template
from tests.core.gadget import from_bytes, gadget


def ruleset(text: str) -> RuleSet:
    rules, errors = parse_rules(text, "h.rules")
    assert not errors, [str(e) for e in errors]
    return RuleSet(["h.rules"], rules)


# %s{serial} reads the device, then the ancestor the parent keys matched (udev's rule).
MOUNT_BY_SERIAL = ruleset('ATTRS{idVendor}=="0403", RESOURCE="dongle", MOUNT+="/var/lib/devdata/%s{serial}:/data"\n')
PATH_BY_SERIAL = ruleset('ATTRS{idVendor}=="0403", RESOURCE="dongle", CONTAINER_PATH="/dev/serial/%s{serial}"\n')


@pytest.mark.parametrize("serial, host", [
    ("../../../etc", "/var/lib/devdata/.._.._.._etc"),
    ("a/b", "/var/lib/devdata/a_b"),
    ("my dongle\tv2", "/var/lib/devdata/my_dongle_v2"),
    ("x\x00y", "/var/lib/devdata/x_y"),
    ("\udcff\udcfe", "/var/lib/devdata/__"),  # not UTF-8
    ("Ünïcødé", "/var/lib/devdata/Ünïcødé"),  # valid UTF-8 stays, as in udev
    ("...", "/var/lib/devdata/..."),  # three dots name a file, not a parent
    ("\\x2e\\x2e", "/var/lib/devdata/\\x2e\\x2e"),  # udev keeps \x escapes literally
])
def test_a_serial_can_never_add_a_path_component(serial, host):
    claim = MOUNT_BY_SERIAL.evaluate(gadget(serial))
    assert not claim.errors
    assert claim.mounts == (Mount(host, "/data"),)


@pytest.mark.parametrize("serial, why", [
    ("..", "%s{serial} makes the path component '..'"),
    (".", "%s{serial} makes the path component '.'"),
    ("", "%s{serial} is empty"),
    (None, "%s{serial} is empty"),  # no serial attribute at all
    ("x" * 300, "a path component is longer than 255 bytes"),
])
def test_a_serial_that_cannot_name_a_directory_refuses_the_claim(serial, why):
    claim = MOUNT_BY_SERIAL.evaluate(gadget(serial))
    assert claim.resource == "devplug.io/dongle" and claim.refused
    (err,) = claim.errors
    assert str(err) == f"h.rules:1:45: MOUNT: {why}"
    assert claim.mounts == ()


def test_container_path_is_escaped_and_stays_under_dev():
    claim = PATH_BY_SERIAL.evaluate(gadget("../../../etc/passwd"))
    assert claim.container_path == "/dev/serial/.._.._.._etc_passwd" and not claim.errors
    # A template whose literal text names no directory stays under /dev.
    rs = ruleset('SUBSYSTEM=="tty", RESOURCE="d", CONTAINER_PATH="/%k"\n')
    (err,) = rs.evaluate(gadget()).errors
    assert err.message == "CONTAINER_PATH: path '/ttyUSB0' is not under '/dev'"
    rs = ruleset('SUBSYSTEM=="tty", RESOURCE="d", CONTAINER_PATH="$devnode"\n')
    assert rs.evaluate(gadget()).container_path == "/dev/ttyUSB0"
    rs = ruleset('ATTRS{idVendor}=="0403", RESOURCE="d", CONTAINER_PATH="%s{serial}"\n')
    (err,) = rs.evaluate(gadget()).errors
    assert err.message == "CONTAINER_PATH: path 'A1B2C3' is not absolute"
    # The author may place it elsewhere with literal text.
    rs = ruleset('ATTRS{idVendor}=="0403", RESOURCE="d", CONTAINER_PATH="/opt/dev/%s{serial}"\n')
    assert rs.evaluate(gadget("..x")).container_path == "/opt/dev/..x"


def test_literal_dotdot_after_a_substitution_cannot_climb_out():
    rs = ruleset('SUBSYSTEM=="tty", RESOURCE="d", MOUNT+="/srv/%k/../../etc:/x"\n')
    (err,) = rs.evaluate(gadget()).errors
    assert err.message == "MOUNT: path '/etc' is not under '/srv'"
    rs = ruleset('ATTRS{idVendor}=="0403", RESOURCE="d", MOUNT+="/srv/.%s{serial}:/x"\n')
    (err,) = rs.evaluate(gadget(".")).errors
    assert err.message == "MOUNT: %s{serial} makes the path component '..'"


def test_a_failed_path_overridden_by_a_later_rule_is_no_error():
    rs = ruleset(
        'ATTRS{idVendor}=="0403", RESOURCE="d", CONTAINER_PATH="/dev/s/%s{serial}", MOUNT+="/v/%s{serial}:/d"\n'
        'KERNEL=="ttyUSB0", CONTAINER_PATH="/dev/fixed", MOUNT="/v/fixed:/d"\n')
    claim = rs.evaluate(gadget(""))
    assert not claim.errors and claim.container_path == "/dev/fixed"
    assert claim.mounts == (Mount("/v/fixed", "/d"),)


def test_an_unclaimed_device_has_no_errors():
    rs = ruleset('ATTRS{idVendor}=="0403", RESOURCE="d", MOUNT+="/v/%s{serial}:/d"\nKERNEL=="tty*", RESOURCE=""\n')
    claim = rs.evaluate(gadget(""))
    assert claim.resource is None and not claim.errors and not claim.refused


def test_kernel_paths_keep_their_slashes_but_not_control_characters():
    rs = ruleset('HOSTPATH=="/srv/*", RESOURCE="d", MOUNT+="$devnode:/data/%k"\n')
    assert rs.evaluate_path("/srv/a b").mounts == (Mount("/srv/a b", "/data/a_b"),)
    (err,) = rs.evaluate_path("/srv/a\nb").errors
    assert err.message == "MOUNT: %N has a control character or invalid UTF-8: '/srv/a\\nb'"


ENV_RULES = ruleset('ATTRS{idVendor}=="0403", RESOURCE="d", CONTAINER_ENV{MODEL}="$env{ID_MODEL}", '
                    'ANNOTATION{example.com/product}="%s{product}", MOUNT+="/srv/$env{ID_MODEL}:/m"\n')


@pytest.mark.parametrize("model, env, host", [
    ("../x", "../x", "/srv/.._x"),
    ("line1\nline2", "line1\\x0aline2", "/srv/line1_line2"),
    ("nul\x00here", "nul\\x00here", "/srv/nul_here"),
    ("bell\x07\x7f\x85", "bell\\x07\\x7f\\xc2\\x85", "/srv/bell___"),
    (from_bytes(b"caf\xe9"), "caf\\xe9", "/srv/caf_"),
])
def test_property_values_are_escaped_in_env_and_paths(model, env, host):
    claim = ENV_RULES.evaluate(gadget(properties={"ID_MODEL": model}))
    assert dict(claim.envs) == {"MODEL": env}
    assert claim.mounts == (Mount(host, "/m"),)
    for value in [v for _k, v in claim.envs + claim.annotations] + [host]:
        value.encode("utf-8")  # encodable: an RPC can carry it


def test_long_values_are_cut_at_511_bytes_never_inside_a_character_or_escape():
    claim = ENV_RULES.evaluate(gadget(product="P" * 600, properties={"ID_MODEL": "x" * 10_000}))
    (_k, model), = claim.envs
    assert model == "x" * MAX_VALUE_BYTES
    (_k, product), = claim.annotations
    assert product == "P" * MAX_VALUE_BYTES  # udev reads at most 511 bytes of an attribute anyway
    assert safe_value("é" * 300) == "é" * 255  # 510 bytes: one more é would make 512
    assert safe_value("a" * 508 + "\n") == "a" * 508  # the escape would end at 512: left out whole
    assert safe_value("a" * 507 + "\n") == "a" * 507 + "\\x0a"


def test_literal_prefix_and_normalize():
    def prefix(text, default=None):
        return literal_prefix(Template.parse(text), default)

    assert prefix("/var/lib/devdata/%s{serial}") == "/var/lib/devdata"
    assert prefix("/var/lib/dev%s{serial}") == "/var/lib"
    assert prefix("/srv/models") == "/srv/models"
    assert prefix("/a/./b/../c/%k") == "/a/c"
    assert prefix("%N") == "/" and prefix("%N", "/dev") == "/dev" and prefix("/%k", "/dev") == "/dev"
    assert prefix("/opt/%k", "/dev") == "/opt"
    assert normalize("//a/./b/../../..//c/") == "/c"


def test_expand_path_directly():
    dev = Device("/devices/virtual/tty/ttyX", "ttyX", subsystem="tty", devnode="/dev/ttyX",
                 properties={"A": "v"})
    env = dev.properties.get
    assert expand_path(Template.parse("/x/%E{A}/%k"), dev, None, env) == "/x/v/ttyX"
    assert expand_path(Template.parse("/x//y/./%k/"), dev, None, env) == "/x/y/ttyX"


def test_safe_paths():
    assert safe_paths(["/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI_x-if00-port0"], "/dev") is None
    assert safe_paths(["/dev/../etc/passwd"], "/dev") == "path '/dev/../etc/passwd' is not a normalized absolute path"
    assert safe_paths(["/etc/passwd"], "/dev") == "path '/etc/passwd' is not under /dev"
    assert safe_paths(["/dev/a\udcff"]) == "path '/dev/a\\udcff' has a control character or invalid UTF-8"
    assert safe_paths(["dev/x"]) is not None and safe_paths(["/"]) is not None
