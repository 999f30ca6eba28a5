"""Allocate / GetPreferredAllocation / PreStartContainer answers, as pure functions."""

from __future__ import annotations

import pytest

from devplug.core.inventory import Entry
from devplug.kubelet import api_pb2
from devplug.kubelet.allocation import (
    DeviceRequestError,
    check_present,
    container_response,
    env_name,
    preferred,
    resolve,
)
from devplug.core.rules.model import Claim, Mount
from devplug.kubelet.transport import Status

R = "devplug.io/ftdi-serial"


def entry(id, devnode="/dev/ttyUSB0", healthy=True, topology=None, claim=None, **kw):
    return Entry(
        id=id,
        resource=R,
        healthy=healthy,
        physical=kw.pop("physical", id),
        claim=claim or Claim(resource=R),
        devnode=devnode,
        topology=topology,
        **kw,
    )


def lookup_of(*entries):
    table = {e.id: e for e in entries}
    return table.get


def specs(resp):
    return [(d.host_path, d.container_path, d.permissions) for d in resp.devices]


@pytest.mark.parametrize(
    "resource, name",
    [
        ("devplug.io/ftdi-serial", "DEVPLUG_FTDI_SERIAL"),
        ("example.com/uvc.camera", "DEVPLUG_UVC_CAMERA"),
        ("kvm", "DEVPLUG_KVM"),
    ],
)
def test_env_name(resource, name):
    assert env_name(resource) == name


def test_one_device_gets_its_node_and_the_default_env():
    resp = container_response(R, [entry("A1")])
    assert specs(resp) == [("/dev/ttyUSB0", "/dev/ttyUSB0", "rw")]
    assert dict(resp.envs) == {"DEVPLUG_FTDI_SERIAL": "/dev/ttyUSB0"}
    assert not resp.mounts and not resp.annotations and not resp.cdi_devices


def test_container_path_permissions_symlinks_and_usb_node():
    claim = Claim(
        resource=R,
        permissions="r",
        container_path="/dev/gps",
        options=frozenset({"symlinks", "usb_node"}),
    )
    e = entry(
        "A1",
        claim=claim,
        symlinks=("/dev/serial/by-id/usb-FTDI_A1-if00-port0",),
        usb_node="/dev/bus/usb/001/004",
    )
    resp = container_response(R, [e])
    assert specs(resp) == [
        ("/dev/ttyUSB0", "/dev/gps", "r"),
        ("/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI_A1-if00-port0", "r"),
        ("/dev/bus/usb/001/004", "/dev/bus/usb/001/004", "r"),
    ]
    # Only the primary paths are listed in the default variable.
    assert dict(resp.envs) == {"DEVPLUG_FTDI_SERIAL": "/dev/gps"}


def test_symlinks_and_usb_node_only_when_asked():
    e = entry("A1", symlinks=("/dev/serial/by-id/x",), usb_node="/dev/bus/usb/001/004")
    assert specs(container_response(R, [e])) == [("/dev/ttyUSB0", "/dev/ttyUSB0", "rw")]


def test_share_copies_give_one_node():
    copies = [entry(f"A1-s{k}", physical="A1") for k in range(3)]
    resp = container_response(R, copies)
    assert specs(resp) == [("/dev/ttyUSB0", "/dev/ttyUSB0", "rw")]
    assert resp.envs["DEVPLUG_FTDI_SERIAL"] == "/dev/ttyUSB0"


def test_two_devices_are_listed_comma_separated_in_request_order():
    resp = container_response(R, [entry("B", devnode="/dev/ttyUSB1"), entry("A", devnode="/dev/ttyUSB0")])
    assert [d.host_path for d in resp.devices] == ["/dev/ttyUSB1", "/dev/ttyUSB0"]
    assert resp.envs["DEVPLUG_FTDI_SERIAL"] == "/dev/ttyUSB1,/dev/ttyUSB0"


def test_hostpath_entry_contributes_only_mounts():
    claim = Claim(resource=R, mounts=(Mount("/srv/models", "/models", read_only=True),))
    resp = container_response(R, [entry("models", devnode=None, hostpath=True, claim=claim)])
    assert not resp.devices
    assert [(m.host_path, m.container_path, m.read_only) for m in resp.mounts] == [
        ("/srv/models", "/models", True)
    ]
    assert resp.envs["DEVPLUG_FTDI_SERIAL"] == "/models"


def test_envs_annotations_and_cdi_merge_across_devices():
    def claim(n):
        return Claim(
            resource=R,
            envs=(("PORT", f"/dev/ttyUSB{n}"), ("BAUD", "115200")),
            annotations=(("devplug.io/owner", "lab"),),
            mounts=(Mount("/etc/ftdi", "/etc/ftdi"),),
        )

    a = entry("A", devnode="/dev/ttyUSB0", claim=claim(0))
    b = entry("B", devnode="/dev/ttyUSB1", claim=claim(1))
    resp = container_response(R, [a, b], cdi=lambda e: [f"devplug.io/serial={e.id}", "devplug.io/serial=common"])
    assert dict(resp.envs) == {
        "PORT": "/dev/ttyUSB0,/dev/ttyUSB1",
        "BAUD": "115200",
        "DEVPLUG_FTDI_SERIAL": "/dev/ttyUSB0,/dev/ttyUSB1",
    }
    assert dict(resp.annotations) == {"devplug.io/owner": "lab"}
    assert len(resp.mounts) == 1
    assert [c.name for c in resp.cdi_devices] == [
        "devplug.io/serial=A",
        "devplug.io/serial=common",
        "devplug.io/serial=B",
    ]


def test_a_rule_env_overrides_the_default_variable():
    claim = Claim(resource=R, envs=(("DEVPLUG_FTDI_SERIAL", "custom"),))
    assert container_response(R, [entry("A", claim=claim)]).envs["DEVPLUG_FTDI_SERIAL"] == "custom"


def test_resolve_errors_name_device_and_resource():
    look = lookup_of(entry("A"), entry("B", healthy=False))
    with pytest.raises(DeviceRequestError) as err:
        resolve(R, ["A", "nope"], look)
    assert err.value.code == Status.INVALID_ARGUMENT
    assert "'nope'" in err.value.message and R in err.value.message
    with pytest.raises(DeviceRequestError) as err:
        resolve(R, ["A", "B"], look)
    assert err.value.code == Status.FAILED_PRECONDITION
    assert "'B'" in err.value.message and "unhealthy" in err.value.message
    assert [e.id for e in resolve(R, ["B"], look, healthy=False)] == ["B"]


# ---- GetPreferredAllocation ---------------------------------------------------------------
HUBS = [
    entry("a1", topology="hub-a"),
    entry("a2", topology="hub-a"),
    entry("a3", topology="hub-a"),
    entry("b1", topology="hub-b"),
    entry("b2", topology="hub-b"),
    entry("c1", topology="hub-c"),
    entry("x", topology=None),
    entry("sick", topology="hub-b", healthy=False),
]
LOOK = lookup_of(*HUBS)
ALL = [e.id for e in HUBS]


def test_preferred_keeps_must_include_and_fills_from_their_hub():
    assert preferred(ALL, ["b2"], 2, LOOK) == ["b2", "b1"]
    assert preferred(ALL, ["c1", "a3"], 3, LOOK) == ["c1", "a3", "a1"]


def test_preferred_best_fit_group_then_largest():
    assert preferred(ALL, [], 2, LOOK) == ["b1", "b2"]  # hub-b fits exactly, hub-a stays whole
    assert preferred(ALL, [], 1, LOOK) == ["c1"]  # smallest fitting group; ties by name
    assert preferred(ALL, [], 3, LOOK) == ["a1", "a2", "a3"]
    assert preferred(ALL, [], 4, LOOK) == ["a1", "a2", "a3", "c1"]


def test_preferred_uses_unhealthy_only_as_last_resort_and_unknown_never():
    got = preferred(ALL + ["ghost"], [], 9, LOOK)
    assert got[-1:] == ["sick"] and "ghost" not in got
    assert sorted(got) == sorted(ALL)  # kubelet fills what is missing itself


def test_preferred_only_chooses_available_and_is_deterministic():
    avail = ["x", "b1", "a2", "a1"]
    first = preferred(avail, [], 2, LOOK)
    assert first == ["a1", "a2"]
    assert all(preferred(list(reversed(avail)), [], 2, LOOK) == first for _ in range(3))
    assert preferred(["nope", "a1"], [], 2, LOOK) == ["a1"]  # never an ID devplug does not know


@pytest.mark.parametrize("available, must, size, why", [
    (["a1"], [], 3, "allocation size 3 is outside 1..1"),
    (ALL, [], 0, "allocation size 0 is outside"),
    (ALL, [], -2, "allocation size -2 is outside"),
    (["a1", "a2"], ["b1"], 1, "must-include IDs ['b1'] are not among the available IDs"),
    (ALL, ["a1", "b1"], 1, "2 must-include IDs exceed the size 1"),
])
def test_preferred_refuses_requests_kubelet_could_not_mean(available, must, size, why):
    with pytest.raises(DeviceRequestError) as err:
        preferred(available, must, size, LOOK)
    assert err.value.code == Status.INVALID_ARGUMENT and why in err.value.message


# ---- PreStartContainer ---------------------------------------------------------------------
def test_check_present(tmp_path):
    node = tmp_path / "ttyUSB0"
    node.write_text("")
    hp = Claim(resource=R, mounts=(Mount(str(tmp_path / "dir"), "/data"),))
    look = lookup_of(entry("A", devnode=str(node), healthy=False), entry("H", devnode=None, claim=hp))
    check_present(R, ["A"], look)  # health is kubelet's business; presence is ours
    with pytest.raises(DeviceRequestError) as err:
        check_present(R, ["H"], look)
    assert err.value.code == Status.FAILED_PRECONDITION and "'H'" in err.value.message
    (tmp_path / "dir").mkdir()
    check_present(R, ["A", "H"], look)
    node.unlink()
    with pytest.raises(DeviceRequestError) as err:
        check_present(R, ["A"], look)
    assert str(node) in err.value.message
    with pytest.raises(DeviceRequestError) as err:
        check_present(R, ["Z"], look)
    assert err.value.code == Status.INVALID_ARGUMENT


def test_response_is_a_real_message():
    resp = container_response(R, [entry("A")])
    assert isinstance(resp, api_pb2.ContainerAllocateResponse)
    assert api_pb2.ContainerAllocateResponse.FromString(resp.SerializeToString()) == resp


# ---- hostile devices (issue 10) --------------------------------------------------------------
def _hostile_inventory(**gadget_kw):
    from devplug.core.claims import Pipeline
    from devplug.core.inventory import Inventory
    from devplug.core.rules import RuleSet, parse_rules
    from tests.core.gadget import gadget

    rules, errors = parse_rules(
        'ATTRS{idVendor}=="0403", RESOURCE="ftdi-serial", CONTAINER_PATH="/dev/serial/%s{serial}", '
        'MOUNT+="/var/lib/devdata/%s{serial}:/data", CONTAINER_ENV{MODEL}="$env{ID_MODEL}", '
        'ANNOTATION{example.com/product}="%s{product}"\n', "h.rules")
    assert not errors
    p = Pipeline(RuleSet(["h.rules"], rules), Inventory())
    p.handle(gadget(**gadget_kw), "add")
    return p.inventory


def test_allocate_for_a_hostile_serial_stays_under_the_rule_prefixes():
    inv = _hostile_inventory(serial="../../../etc", properties={"ID_MODEL": "x\nDEVPLUG_EVIL=1"})
    (e,) = inv.entries(R)
    resp = container_response(R, [e])
    assert [(m.host_path, m.container_path) for m in resp.mounts] == [("/var/lib/devdata/.._.._.._etc", "/data")]
    assert specs(resp) == [("/dev/ttyUSB0", "/dev/serial/.._.._.._etc", "rw")]
    assert resp.envs["MODEL"] == "x\\x0aDEVPLUG_EVIL=1"


def test_allocate_for_a_non_utf8_property_answers_and_serializes():
    """Before: every Allocate failed with gRPC UNKNOWN (UnicodeEncodeError) while the device was Healthy."""
    from tests.core.gadget import from_bytes

    inv = _hostile_inventory(serial="S1", product=from_bytes(b"Pro\xffduct"),
                             properties={"ID_MODEL": from_bytes(b"caf\xe9\x00")})
    (e,) = inv.entries(R)
    resp = container_response(R, [e])
    assert resp.envs["MODEL"] == "caf\\xe9"
    assert resp.annotations["example.com/product"] == "Pro_duct"  # %s{} is udev's replace_chars first
    api_pb2.ContainerAllocateResponse.FromString(resp.SerializeToString())


def test_an_entry_that_bypassed_the_core_is_failed_precondition_not_unknown():
    bad = entry("A", claim=Claim(resource=R, envs=(("X", "caf\udce9"),)))
    with pytest.raises(DeviceRequestError) as err:
        container_response(R, [bad])
    assert err.value.code == Status.FAILED_PRECONDITION and "'A'" in err.value.message
