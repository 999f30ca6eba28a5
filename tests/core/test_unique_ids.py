"""IDs are unique by construction (issue 10, item 4): SHARE copies, twins, arbitrary serials.

Before: device A with SHARE=2 got ``X-s0`` and ``X-s1``; a device B whose serial made its ID
``X-s0`` took over A's entry, and unplugging either turned the other's ID Unhealthy.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devplug.core.claims import Pipeline
from devplug.core.device import Device, static_attrs
from devplug.core.identity import device_id, sanitize_id, share_ids, split_id
from devplug.core.inventory import Inventory, Sighting
from devplug.core.rules import Claim, RuleSet, parse_rules

R = "devplug.io/r"


def usb_device(serial: str, port: str) -> Device:
    """A bare USB device (its ID has no -ifNN), as a rule on SUBSYSTEM=="usb" sees it."""
    return Device(f"/devices/pci0000:00/usb1/{port}", port, subsystem="usb", devtype="usb_device",
                  read_attr=static_attrs({"idVendor": "0403", "idProduct": "6001", "serial": serial}))


def test_a_serial_shaped_like_a_share_copy_cannot_take_over_another_device():
    rules, errors = parse_rules('SUBSYSTEM=="usb", ATTR{serial}=="X", RESOURCE="r", SHARE="2"\n'
                                'SUBSYSTEM=="usb", ATTR{serial}=="X-s0", RESOURCE="r"\n', "u.rules")
    assert not errors
    p = Pipeline(RuleSet(["u.rules"], rules), Inventory())
    a, b = usb_device("X", "1-1"), usb_device("X-s0", "1-2")
    p.handle(a, "add")
    p.handle(b, "add")
    ids = {e.id: e.syspath for e in p.inventory.entries(R)}
    assert ids == {"0403-6001-X-s0": a.syspath, "0403-6001-X-s1": a.syspath, "0403-6001-X_s0": b.syspath}
    p.handle(b, "remove")
    assert {e.id: e.health for e in p.inventory.entries(R)} == {
        "0403-6001-X-s0": "Healthy", "0403-6001-X-s1": "Healthy", "0403-6001-X_s0": "Unhealthy"}


def test_existing_ids_stay_what_they_were():
    """kubelet checkpoints IDs: the common ones must not change."""
    assert sanitize_id("0403-6001-A10K1ABC-if00") == "0403-6001-A10K1ABC-if00"
    assert share_ids("kvm", 3) == ("kvm-s0", "kvm-s1", "kvm-s2")
    assert sanitize_id("pci-0000:00:02.0-card0") == "pci-0000_00_02.0-card0"
    assert sanitize_id("x" * 200) == sanitize_id("x" * 200) and len(sanitize_id("x" * 200)) == 63
    # Only a base that would look like a copy changes: -s<N> at the end becomes _s<N>.
    assert sanitize_id("dongle-s1") == "dongle_s1"


# ---- property: arbitrary serials and SHARE values ---------------------------------------------

# Serials that collide on purpose (clones, copy-shaped) and arbitrary ones, including bytes
# that are not UTF-8 (surrogate escapes), separators and dots.
_POOL = ["X", "X-s0", "X-s1", "X_s0", "", "..", "a/b", "X:0", "X-s01"]
serials = st.one_of(st.sampled_from(_POOL), st.text(max_size=20),
                    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")))
KEYS = [f"/sys/devices/pci0000:00/usb1/1-{k}" for k in range(6)]
step = st.tuples(st.sampled_from(range(len(KEYS))), st.sampled_from(["add", "add", "remove"]), serials,
                 st.integers(1, 3), st.booleans())


def sighting(slot: int, serial: str, share: int, by_rule: bool) -> Sighting:
    """What the pipeline makes of a gadget: its default USB ID, or a DEVICE_ID from its serial."""
    key = KEYS[slot]
    claim = Claim(resource=R, share=share, device_id=serial if by_rule else None)
    dev = usb_device(serial, key.rsplit("/", 1)[1])
    return Sighting(key=key, present=True, resource=R, base_id=device_id(dev, claim), claim=claim,
                    devnode=f"/dev/bus/usb/001/{slot:03d}")


def check(inv: Inventory) -> None:
    entries = inv.entries(R)
    by_physical: dict[str, list[str]] = {}
    for e in entries:
        parts = split_id(e.id)
        assert parts is not None, e.id  # valid: splits one way into base, tag, copy
        base, tag, copy = parts
        assert (base if tag is None else f"{base}:{tag}") == e.physical, e
        by_physical.setdefault(e.physical, []).append(e.id)
    # Each ID belongs to one physical device: its copies are exactly share_ids of it.
    for physical, ids in by_physical.items():
        share = inv.get(R, ids[0]).claim.share
        assert sorted(ids) == sorted(share_ids(physical, share)) or set(ids) < set(share_ids(physical, share))
    # Each present device holds its own IDs, Healthy, and no other device's.
    bound = {k: b for k in {e.syspath for e in inv.all_entries() if e.healthy} if (b := inv.binding(k))}
    physicals = [b[1] for b in bound.values()]
    assert len(physicals) == len(set(physicals))
    for key, (_r, physical) in bound.items():
        for i in by_physical[physical]:
            e = inv.get(R, i)
            assert e.healthy and e.syspath == key
    # Two present devices never share a plain ID: twins are both tagged.
    for key, (_r, physical) in bound.items():
        for other, (_r2, physical2) in bound.items():
            if key != other:
                assert physical != physical2


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=30))
def test_ids_are_valid_and_unique_whatever_the_serials_and_shares(steps):
    inv = Inventory()
    for slot, op, serial, share, by_rule in steps:
        if op == "add":
            inv.apply(sighting(slot, serial, share, by_rule))
        else:
            inv.apply(Sighting(key=KEYS[slot], present=False))
        check(inv)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(serials, st.integers(1, 3)), min_size=1, max_size=len(KEYS)), st.randoms())
def test_the_ids_of_present_devices_do_not_depend_on_arrival_order(devices, rnd):
    """A restart (coldplug) or another arrival order gives every device the same IDs."""
    batch = [sighting(slot, serial, share, False) for slot, (serial, share) in enumerate(devices)]
    shuffled = list(batch)
    rnd.shuffle(shuffled)

    def ids(inv: Inventory) -> dict[str, str]:
        return {e.id: e.syspath for e in inv.entries(R) if e.healthy}

    cold, other = Inventory(), Inventory()
    cold.resync(batch)
    other.resync(shuffled)
    assert ids(cold) == ids(other)
    one_by_one = Inventory()
    for s in shuffled:
        one_by_one.apply(s)
    assert ids(one_by_one) == ids(cold)
    check(cold)
