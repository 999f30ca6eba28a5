"""Fuzz: arbitrary bytes as serials, products and properties, through rules → identity →
inventory → container edits (issue 10). Whatever a gadget sends:

* nothing raises, and each claimed device is either offered or refused, never both, never lost;
* every host path is under its rule's literal prefix, every container path where the rule
  put it (``CONTAINER_PATH`` under ``/dev/serial``, mounts under ``/data``);
* env and annotation values have no control character, at most 511 bytes, and encode;
* every ID is valid and names one device, and Allocate's answer serializes.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devplug.core.claims import Pipeline
from devplug.core.edits import entry_edits, merge
from devplug.core.identity import split_id
from devplug.core.inventory import Inventory
from devplug.core.rules import RuleSet, parse_rules
from devplug.core.rules.escape import normalize
from devplug.kubelet.allocation import container_response
from devplug.ops.cdi import container_edits
from tests.core.gadget import from_bytes, gadget

RULES = """\
ATTRS{idVendor}=="0403", RESOURCE="serial", SHARE="2", CONTAINER_PATH="/dev/serial/%s{serial}-$env{ID_MODEL}", \\
    MOUNT+="/var/lib/devdata/%s{serial}/%s{product}:/data/$env{ID_MODEL}", \\
    CONTAINER_ENV{MODEL}="$env{ID_MODEL}", ANNOTATION{example.com/product}="%s{product} %s{manufacturer}"
ATTRS{idVendor}=="10c4", RESOURCE="byid", DEVICE_ID="%s{serial}%E{ID_MODEL}", CONTAINER_PATH="%N", \\
    MOUNT+="/srv/by-serial/%s{serial}:/data/%k"
"""
# Per resource: (prefix, '/' below it) of mount hosts, mount containers and device nodes: a
# device string is one component, never more.
WHERE = {"devplug.io/serial": (("/var/lib/devdata/", 1), ("/data/", 0), ("/dev/serial/", 0)),
         "devplug.io/byid": (("/srv/by-serial/", 0), ("/data/", 0), ("/dev/", 0))}


def _placed(path: str, where: tuple[str, int]) -> bool:
    prefix, depth = where
    return path == normalize(path) and path.startswith(prefix) and path[len(prefix):].count("/") == depth

raw = st.binary(max_size=140)  # a USB string descriptor is at most 126 UTF-16 characters
gadgets = st.lists(st.tuples(raw, raw, raw, raw, st.sampled_from(["0403", "10c4"])), min_size=1, max_size=5)


def _ruleset() -> RuleSet:
    rules, errors = parse_rules(RULES, "fuzz.rules")
    assert not errors, [str(e) for e in errors]
    return RuleSet(["fuzz.rules"], rules)


RULESET = _ruleset()


def _clean(value: str) -> bool:
    return all(0x20 <= ord(c) != 0x7F and not 0x80 <= ord(c) <= 0x9F and not 0xD800 <= ord(c) <= 0xDFFF
               for c in value) and len(value.encode()) <= 511


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gadgets)
def test_whatever_a_gadget_sends(specs):
    p = Pipeline(RULESET, Inventory())
    devices = []
    for k, (serial, product, manufacturer, model, vendor) in enumerate(specs):
        # A property is a C string: the kernel and udev cut it at the first NUL.
        props = {"ID_MODEL": from_bytes(model.split(b"\0", 1)[0])}
        devices.append(gadget(from_bytes(serial), product=from_bytes(product), manufacturer=from_bytes(manufacturer),
                              vendor=vendor, port=f"1-{k + 1}", tty=f"ttyUSB{k}", properties=props))
    change = p.resync(devices)
    inv = p.inventory
    refused = {r.key for r in inv.refused()}
    assert {r.key for r in change.refused} == refused
    for dev in devices:  # offered or refused, never both, never lost
        assert (inv.binding(dev.syspath) is not None) != (dev.syspath in refused), dev
    for r in inv.refused():
        json.dumps(r.fields()).encode()
        assert r.reason.startswith("fuzz.rules:") and r.rule in ("fuzz.rules:1", "fuzz.rules:4")
    for resource in inv.resources():
        host, mount, node = WHERE[resource]
        entries = inv.entries(resource)
        for e in entries:
            assert split_id(e.id) is not None, e.id
            edits = entry_edits(e)
            assert len(edits.mounts) == 1 and len(edits.devices) == 1
            for m in edits.mounts:
                assert _placed(m.host_path, host) and _placed(m.container_path, mount), m
            for d in edits.devices:
                assert _placed(d.container_path, node) and d.host_path == e.devnode, d
            for _k, v in edits.envs + edits.annotations:
                assert _clean(v), v
            json.dumps(container_edits(e)).encode()
        # Allocate of everything at once answers and serializes.
        if entries:
            resp = container_response(resource, [e for e in entries if e.healthy])
            resp.SerializeToString()
            merged = merge(resource, entries)
            assert len({d.container_path for d in merged.devices}) == len(merged.devices)
    # Each present device has its own IDs.
    seen: dict[str, str] = {}
    for e in inv.all_entries():
        owner = seen.setdefault(f"{e.resource} {e.id}", e.syspath)
        assert owner == e.syspath
