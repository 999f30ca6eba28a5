"""CdiWriter: specs valid against the CDI JSON schema, atomic, minimal, consistent names."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from devplug.ops.cdi import DEVICE_NAME_RE, VENDOR_CLASS_RE, CdiWriter, device_name
from devplug.core.inventory import Entry
from devplug.core.rules.model import Claim, Mount

SCHEMA_DIR = Path(__file__).parent / "cdi-schema"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMA_DIR / "schema.json").read_text())
    defs = json.loads((SCHEMA_DIR / "defs.json").read_text())
    # schema.json refers to "defs.json#/definitions/..." relative to itself (no $id).
    registry = Registry().with_resource("defs.json", Resource.from_contents(defs, default_specification=DRAFT7))
    return jsonschema.Draft7Validator(schema, registry=registry)


def check_spec(validator: jsonschema.Draft7Validator, path: Path) -> dict:
    """Schema-valid, plus what the schema leaves loose (upstream's env items use "ref")."""
    spec = json.loads(path.read_text())
    validator.validate(spec)
    vendor, cls = spec["kind"].split("/")
    assert VENDOR_CLASS_RE.match(vendor) and VENDOR_CLASS_RE.match(cls)
    names = [d["name"] for d in spec["devices"]]
    assert len(names) == len(set(names))
    for dev in spec["devices"]:
        assert DEVICE_NAME_RE.match(dev["name"]), dev["name"]
        for env in dev["containerEdits"].get("env", []):
            assert isinstance(env, str) and "=" in env and not env.startswith("=")
        for node in dev["containerEdits"].get("deviceNodes", []):
            assert node["path"].startswith("/") and node["hostPath"].startswith("/")
            assert node["permissions"] and set(node["permissions"]) <= set("rwm")
    return spec


def test_validator_rejects_a_broken_spec(validator):
    # The schema must really bite, or every other test here proves nothing.
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"cdiVersion": "0.5.0", "kind": "devplug.io/x", "devices": [{"name": "a"}]})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(
            {"cdiVersion": "0.5.0", "kind": "devplug.io/x",
             "devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"hostPath": "/dev/x"}]}}]}
        )
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"cdiVersion": "0.5.0", "kind": "devplug.io/x", "devices": [], "extra": 1})


def serial_entry(id_: str, devnode: str, *, healthy: bool = True, **claim_kw) -> Entry:
    claim = Claim(
        resource="devplug.io/ftdi-serial",
        permissions=claim_kw.pop("permissions", "rw"),
        options=frozenset(claim_kw.pop("options", ())),
        **claim_kw,
    )
    return Entry(
        id=id_,
        resource="devplug.io/ftdi-serial",
        healthy=healthy,
        physical=id_,
        claim=claim,
        syspath="/sys/devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0",
        devnode=devnode,
        subsystem="tty",
        symlinks=(f"/dev/serial/by-id/usb-FTDI_{id_}-if00-port0", "/dev/serial/by-path/pci-usb-0:1:1.0-port0"),
        usb_node="/dev/bus/usb/001/004",
    )


def test_writes_a_valid_spec_with_nodes_symlinks_usb_node_mounts_env(tmp_path, validator):
    w = CdiWriter(str(tmp_path / "cdi"), vendor_domain="devplug.io")
    e = serial_entry(
        "0403-6001-A10K1234-if00",
        "/dev/ttyUSB1",
        permissions="rwm",
        container_path="/dev/ttyACM0",
        options={"symlinks", "usb_node"},
        mounts=(Mount("/opt/fw", "/fw", True), Mount("/var/log/dev", "/log")),
        envs=(("BAUD", "115200"), ("PORT", "/dev/ttyACM0")),
    )
    assert w.update("devplug.io/ftdi-serial", [e]) is True
    path = tmp_path / "cdi" / "devplug.io-ftdi-serial.json"
    assert Path(w.path("devplug.io/ftdi-serial")) == path
    spec = check_spec(validator, path)
    assert spec["kind"] == "devplug.io/ftdi-serial"
    assert spec["cdiVersion"] == "0.5.0"  # hostPath needs 0.5.0; nothing we emit needs more
    [dev] = spec["devices"]
    assert dev["name"] == "0403-6001-A10K1234-if00"
    edits = dev["containerEdits"]
    assert edits["deviceNodes"] == [
        {"path": "/dev/ttyACM0", "hostPath": "/dev/ttyUSB1", "permissions": "rwm"},
        {"path": e.symlinks[0], "hostPath": "/dev/ttyUSB1", "permissions": "rwm"},
        {"path": e.symlinks[1], "hostPath": "/dev/ttyUSB1", "permissions": "rwm"},
        {"path": "/dev/bus/usb/001/004", "hostPath": "/dev/bus/usb/001/004", "permissions": "rwm"},
    ]
    assert edits["mounts"] == [
        {"hostPath": "/opt/fw", "containerPath": "/fw", "type": "bind", "options": ["rbind", "ro"]},
        {"hostPath": "/var/log/dev", "containerPath": "/log", "type": "bind", "options": ["rbind", "rw"]},
    ]
    assert edits["env"] == ["BAUD=115200", "PORT=/dev/ttyACM0"]
    # The name Allocate returns resolves to exactly this device.
    assert w.qualified_names(e) == ["devplug.io/ftdi-serial=0403-6001-A10K1234-if00"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_without_options_only_the_node_itself(tmp_path, validator):
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    w.update("devplug.io/ftdi-serial", [serial_entry("a1", "/dev/ttyUSB0")])
    spec = check_spec(validator, tmp_path / "devplug.io-ftdi-serial.json")
    assert spec["devices"][0]["containerEdits"] == {
        "deviceNodes": [{"path": "/dev/ttyUSB0", "hostPath": "/dev/ttyUSB0", "permissions": "rw"}]
    }


def test_share_copies_and_hostpath_mount_entries(tmp_path, validator):
    """SHARE copies are separate CDI devices with the same node; a HOSTPATH directory
    entry (no devnode) is a device made of its mount only."""
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    fuse = [
        Entry(id=f"fuse-s{k}", resource="devplug.io/fuse", healthy=True, physical="fuse",
              claim=Claim(resource="devplug.io/fuse", share=4), devnode="/dev/fuse")
        for k in range(4)
    ]
    w.update("devplug.io/fuse", fuse)
    spec = check_spec(validator, tmp_path / "devplug.io-fuse.json")
    assert [d["name"] for d in spec["devices"]] == ["fuse-s0", "fuse-s1", "fuse-s2", "fuse-s3"]
    assert {json.dumps(d["containerEdits"]) for d in spec["devices"]} == {
        json.dumps({"deviceNodes": [{"path": "/dev/fuse", "hostPath": "/dev/fuse", "permissions": "rw"}]})
    }
    models = Entry(id="models", resource="devplug.io/models", healthy=True, physical="/srv/models",
                   claim=Claim(resource="devplug.io/models", mounts=(Mount("/srv/models", "/models", True),)),
                   hostpath=True)
    w.update("devplug.io/models", [models])
    spec = check_spec(validator, tmp_path / "devplug.io-models.json")
    assert spec["devices"][0]["containerEdits"] == {
        "mounts": [{"hostPath": "/srv/models", "containerPath": "/models", "type": "bind", "options": ["rbind", "ro"]}]
    }


def test_unchanged_is_not_rewritten_and_changes_replace_atomically(tmp_path):
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    e = serial_entry("a1", "/dev/ttyUSB0")
    assert w.update("devplug.io/ftdi-serial", [e]) is True
    path = tmp_path / "devplug.io-ftdi-serial.json"
    before = path.stat()
    assert w.update("devplug.io/ftdi-serial", [e]) is False
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    # Replug as ttyUSB3: a new file replaces the old one by rename (new inode).
    assert w.update("devplug.io/ftdi-serial", [serial_entry("a1", "/dev/ttyUSB3")]) is True
    assert path.stat().st_ino != before.st_ino
    assert "/dev/ttyUSB3" in path.read_text()
    assert sorted(os.listdir(tmp_path)) == ["devplug.io-ftdi-serial.json"]  # no temp file left


def test_unhealthy_entries_are_left_out_and_an_empty_spec_is_removed(tmp_path, validator):
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    a, b = serial_entry("a1", "/dev/ttyUSB0"), serial_entry("b2", "/dev/ttyUSB1")
    w.update("devplug.io/ftdi-serial", [b, a])
    path = tmp_path / "devplug.io-ftdi-serial.json"
    assert [d["name"] for d in check_spec(validator, path)["devices"]] == ["a1", "b2"]  # sorted
    w.update("devplug.io/ftdi-serial", [serial_entry("a1", "/dev/ttyUSB0", healthy=False), b])
    assert [d["name"] for d in check_spec(validator, path)["devices"]] == ["b2"]
    w.update("devplug.io/ftdi-serial", [serial_entry("b2", "/dev/ttyUSB1", healthy=False)])
    assert not path.exists()
    # And it comes back when the device does.
    assert w.update("devplug.io/ftdi-serial", [b]) is True
    assert path.exists()


def test_remove_all_removes_only_our_files(tmp_path):
    (tmp_path / "nvidia.com-gpu.json").write_text("{}")
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    w.update("devplug.io/ftdi-serial", [serial_entry("a1", "/dev/ttyUSB0")])
    fuse = Entry(id="fuse", resource="devplug.io/fuse", healthy=True, physical="fuse",
                 claim=Claim(resource="devplug.io/fuse"), devnode="/dev/fuse")
    w.update("devplug.io/fuse", [fuse])
    assert len(os.listdir(tmp_path)) == 3
    assert w.remove("devplug.io/fuse") is True and w.remove("devplug.io/fuse") is False
    w.remove_all()
    assert os.listdir(tmp_path) == ["nvidia.com-gpu.json"]
    # After remove_all, an update writes again rather than trusting a stale cache.
    assert w.update("devplug.io/ftdi-serial", [serial_entry("a1", "/dev/ttyUSB0")]) is True


def test_other_domains_and_awkward_resource_names(tmp_path, validator):
    w = CdiWriter(str(tmp_path / "new" / "dir"), vendor_domain="devplug.io")  # created on demand
    assert w.kind("example.com/coral-tpu") == "example.com/coral-tpu"
    assert w.kind("ftdi-serial") == "devplug.io/ftdi-serial"
    for resource in ("devplug.io/3d-printer", "devplug.io/cam.v2", "devplug.io/x"):
        e = Entry(id="dev1", resource=resource, healthy=True, physical="p",
                  claim=Claim(resource=resource), devnode="/dev/video0")
        w.update(resource, [e])
        spec = check_spec(validator, Path(w.path(resource)))
        [qualified] = w.qualified_names(e)
        assert qualified == f"{spec['kind']}={spec['devices'][0]['name']}"
        # Dots in the class are a 0.6.0 feature; nothing else we emit needs more than 0.5.0.
        assert spec["cdiVersion"] == ("0.6.0" if "." in spec["kind"].split("/")[1] else "0.5.0")
    assert w.kind("devplug.io/3d-printer").startswith("devplug.io/x-3d-printer-")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=6, unique=True))
def test_any_id_maps_to_a_valid_distinct_cdi_name(ids):
    names = [device_name(i) for i in ids]
    assert all(DEVICE_NAME_RE.match(n) for n in names), names
    assert len(set(names)) == len(names)
    assert names == [device_name(i) for i in ids]  # deterministic


def test_devplug_ids_are_used_verbatim():
    for i in ("0403-6001-A10K1234-if00", "pci-0000_00_14.0-usb-0_1_1.0", "fuse-s3", "9"):
        assert device_name(i) == i


def test_a_reader_never_sees_a_partial_spec(tmp_path):
    """Runtimes read the directory whenever they like: every read must parse."""
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    path = tmp_path / "devplug.io-ftdi-serial.json"
    w.update("devplug.io/ftdi-serial", [serial_entry("a0", "/dev/ttyUSB0")])
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            text = path.read_text()
            reads += 1
            try:
                json.loads(text)
            except ValueError:
                bad.append(text)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(150):
            entries = [serial_entry(f"a{j}", f"/dev/ttyUSB{j}") for j in range(1 + k % 40)]
            w.update("devplug.io/ftdi-serial", entries)
    finally:
        stop.set()
        t.join()
    assert reads > 0 and not bad


def test_a_hostile_device_writes_no_escaping_path_into_the_spec(tmp_path, validator):
    """Issue 10: with --cdi-spec-dir the same escaped paths reach the runtime as through Allocate."""
    from tests.kubelet.test_kubelet_allocation import R as FTDI
    from tests.kubelet.test_kubelet_allocation import _hostile_inventory

    inv = _hostile_inventory(serial="../../../etc", properties={"ID_MODEL": "a\nb\x00"})
    w = CdiWriter(str(tmp_path), vendor_domain="devplug.io")
    w.update(FTDI, inv.entries(FTDI))
    spec = check_spec(validator, Path(w.path(FTDI)))
    (dev,) = spec["devices"]
    edits = dev["containerEdits"]
    assert [(m["hostPath"], m["containerPath"]) for m in edits["mounts"]] == [
        ("/var/lib/devdata/.._.._.._etc", "/data")]
    assert [(n["hostPath"], n["path"]) for n in edits["deviceNodes"]] == [("/dev/ttyUSB0", "/dev/serial/.._.._.._etc")]
    assert edits["env"] == ["MODEL=a\\x0ab\\x00"]
