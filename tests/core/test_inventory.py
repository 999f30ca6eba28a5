"""Inventory: pure state transitions of plug, unplug, replug, rule changes and resyncs."""

from __future__ import annotations

import itertools

import attrs

from devplug.core.identity import twin_id
from devplug.core.inventory import Entry, Inventory, Sighting
from devplug.core.rules.model import Claim

R = "devplug.io/serial"
CLAIM = Claim(resource=R)


def _clock():
    counter = itertools.count(1)
    return lambda: float(next(counter))


def seen(key, base="ftdi-A1", devnode="/dev/ttyUSB0", claim=CLAIM, resource=R):
    return Sighting(key=key, present=True, resource=resource, base_id=base, claim=claim, devnode=devnode)


def gone(key):
    return Sighting(key=key, present=False)


def test_plug_unplug_replug_keeps_id_and_follows_devnode():
    inv = Inventory(clock=_clock())
    ch = inv.apply(seen("/sys/a/ttyUSB0"))
    assert ch.resources == {R} and ch.ids == ((R, "ftdi-A1"),)
    assert [(e.id, e.health, e.devnode) for e in inv.entries(R)] == [("ftdi-A1", "Healthy", "/dev/ttyUSB0")]
    v = inv.version(R)

    ch = inv.apply(gone("/sys/a/ttyUSB0"))
    assert ch.ids == ((R, "ftdi-A1"),)
    assert inv.entries(R)[0].health == "Unhealthy"
    assert inv.version(R) == v + 1

    # Replugged elsewhere: new syspath and devnode, same physical identity.
    ch = inv.apply(seen("/sys/b/ttyUSB1", devnode="/dev/ttyUSB1"))
    (e,) = inv.entries(R)
    assert (e.id, e.health, e.devnode, e.syspath) == ("ftdi-A1", "Healthy", "/dev/ttyUSB1", "/sys/b/ttyUSB1")


def test_repeated_identical_event_changes_nothing():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a"))
    v = inv.version(R)
    assert not inv.apply(seen("/sys/a"))
    assert inv.version(R) == v
    assert not inv.apply(gone("/sys/unknown"))


def test_since_changes_only_with_health():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a"))
    t0 = inv.entries(R)[0].since
    inv.apply(seen("/sys/a", devnode="/dev/other"))
    assert inv.entries(R)[0].since == t0
    inv.apply(gone("/sys/a"))
    assert inv.entries(R)[0].since > t0


def test_change_that_no_longer_matches_leaves_resource():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a"))
    ch = inv.apply(Sighting(key="/sys/a", present=True))
    assert ch.resources == {R}
    assert inv.entries(R) == ()
    assert R in inv.resources()  # kubelet must still hear the empty list


def test_move_between_resources():
    inv = Inventory(clock=_clock())
    other = "devplug.io/other"
    inv.apply(seen("/sys/a"))
    ch = inv.apply(seen("/sys/a", resource=other, claim=Claim(resource=other)))
    assert ch.resources == {R, other}
    assert inv.entries(R) == ()
    assert [e.id for e in inv.entries(other)] == ["ftdi-A1"]


def test_share_offers_n_ids_with_shared_health():
    inv = Inventory(clock=_clock())
    claim = Claim(resource=R, share=3)
    inv.apply(seen("/sys/fuse", base="fuse", claim=claim))
    assert [e.id for e in inv.entries(R)] == ["fuse-s0", "fuse-s1", "fuse-s2"]
    inv.apply(gone("/sys/fuse"))
    assert {e.health for e in inv.entries(R)} == {"Unhealthy"}
    # Fewer shares after a rule change: surplus IDs disappear.
    inv.apply(seen("/sys/fuse", base="fuse", claim=Claim(resource=R, share=2)))
    assert [(e.id, e.health) for e in inv.entries(R)] == [("fuse-s0", "Healthy"), ("fuse-s1", "Healthy")]


X, Y = "/sys/x/ttyUSB0", "/sys/y/ttyUSB1"
TX, TY = twin_id("same", X), twin_id("same", Y)


def test_two_present_devices_with_the_same_id_are_both_told_apart_whoever_came_first():
    """Before: the second to arrive got 'same-ttyUSB1', so which device held 'same' depended
    on arrival order (and changed after a restart)."""
    inv = Inventory(clock=_clock())
    first = inv.apply(seen(X, base="same"))
    assert [e.id for e in inv.entries(R)] == ["same"] and first.twins == ()
    change = inv.apply(seen(Y, base="same", devnode="/dev/ttyUSB1"))
    assert {(t.key, t.id) for t in change.twins} == {(X, TX), (Y, TY)}  # logged: both tagged
    assert TX == "same:" + TX.split(":")[1] and len(TX.split(":")[1]) == 8
    health = {e.id: (e.health, e.devnode) for e in inv.entries(R)}
    # The plain ID named one device, so it turns Unhealthy (a pod may hold it) rather than
    # silently pointing at the other one.
    assert health == {"same": ("Unhealthy", "/dev/ttyUSB0"), TX: ("Healthy", "/dev/ttyUSB0"),
                      TY: ("Healthy", "/dev/ttyUSB1")}
    assert inv.binding(X) == (R, TX) and inv.binding(Y) == (R, TY)
    # Sending again changes nothing; the other order gives the same tagged IDs.
    assert not inv.apply(seen(Y, base="same", devnode="/dev/ttyUSB1"))
    other = Inventory(clock=_clock())
    other.apply(seen(Y, base="same", devnode="/dev/ttyUSB1"))
    other.apply(seen(X, base="same"))
    assert {e.id for e in other.entries(R) if e.healthy} == {TX, TY}


def test_a_restart_gives_the_same_ids_and_offers_no_plain_id_to_take_back():
    inv = Inventory(clock=_clock())
    change = inv.resync([seen(Y, base="same", devnode="/dev/ttyUSB1"), seen(X, base="same")])
    assert [(e.id, e.health) for e in inv.entries(R)] == sorted([(TX, "Healthy"), (TY, "Healthy")])
    assert len(change.twins) == 2


def test_a_tag_stays_while_its_device_stays_and_goes_at_its_next_arrival_alone():
    inv = Inventory(clock=_clock())
    inv.apply(seen(X, base="same"), seen(Y, base="same", devnode="/dev/ttyUSB1"))
    inv.apply(gone(Y))
    # No flapping: X keeps the ID a pod may have been given.
    assert inv.binding(X) == (R, TX)
    assert not inv.apply(seen(X, base="same"))
    # Unplugged and back without its twin: the plain ID again.
    inv.apply(gone(X))
    inv.apply(seen(X, base="same"))
    assert inv.binding(X) == (R, "same")
    assert {e.id: e.health for e in inv.entries(R)} == {"same": "Healthy", TX: "Unhealthy", TY: "Unhealthy"}


def test_resync_marks_vanished_devices_and_adds_new_ones():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a", base="a"))
    inv.apply(seen("/sys/b", base="b"))
    inv.apply(seen("hostpath:/srv/data", base="data"))
    ch = inv.resync([seen("/sys/b", base="b"), seen("/sys/c", base="c")])
    assert ch.ids == ((R, "a"), (R, "c"))
    health = {e.id: e.health for e in inv.entries(R)}
    assert health == {"a": "Unhealthy", "b": "Healthy", "c": "Healthy", "data": "Healthy"}


def test_forget_drops_resource_and_bindings():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a"))
    ch = inv.forget([R])
    assert ch.resources == {R}
    assert R not in inv.resources()
    assert inv.binding("/sys/a") is None


def test_snapshot_is_cached_until_change():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/a", base="a"))
    first = inv.entries(R)
    assert inv.entries(R) is first
    inv.apply(seen("/sys/b", base="b"))
    assert inv.entries(R) is not first


def test_incremental_state_matches_a_simple_model():
    """Random plug/unplug/claim/release/share sequences: the indexed, cached inventory
    agrees with a from-scratch model after every step. An unplugged device's IDs stay
    (Unhealthy) in the resource that had it, even if it comes back under another one."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    keys = [f"/sys/d{i}" for i in range(5)]
    step = st.tuples(st.sampled_from(keys), st.sampled_from(["add", "remove", "release"]),
                     st.sampled_from(["x", "y"]), st.integers(1, 3))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(step, max_size=40))
    def run(steps):
        inv = Inventory(clock=_clock())
        model: dict[tuple[str, str], tuple[int, bool]] = {}  # (resource, base) -> (share, healthy)
        bound: dict[str, tuple[str, str]] = {}  # key -> (resource, base)
        for key, op, res, share in steps:
            base = "b" + key[-1]
            resource = f"devplug.io/{res}"
            if op == "add":
                inv.apply(seen(key, base=base, resource=resource, claim=Claim(resource=resource, share=share)))
                old = bound.get(key)
                if old is not None and old != (resource, base):
                    del model[old]  # a present device moving: it leaves the old resource
                model[(resource, base)] = (share, True)
                bound[key] = (resource, base)
            elif op == "remove":
                inv.apply(gone(key))
                if key in bound:
                    rb = bound.pop(key)
                    model[rb] = (model[rb][0], False)
            else:
                inv.apply(Sighting(key=key, present=True))
                if key in bound:
                    del model[bound.pop(key)]
            want: dict[str, list[tuple[str, str]]] = {}
            for (r, b), (n, healthy) in model.items():
                ids = [b] if n == 1 else [f"{b}-s{k}" for k in range(n)]
                want.setdefault(r, []).extend((i, "Healthy" if healthy else "Unhealthy") for i in ids)
            for r in inv.resources() | set(want):
                got = [(e.id, e.health) for e in inv.entries(r)]
                assert got == sorted(want.get(r, [])), (r, steps)

    run()


# ---- collect: a gadget replugging with new serials cannot grow the inventory (issue 10) -----

def _replugs(inv, n, start=0):
    """n gadgets that came and went, each with its own serial (one Unhealthy ID each)."""
    for k in range(start, start + n):
        inv.apply(seen(f"/sys/g{k}", base=f"gadget-{k}"))
        inv.apply(gone(f"/sys/g{k}"))


def test_collect_forgets_unheld_unhealthy_ids_after_the_grace_period():
    t = [100.0]
    inv = Inventory(clock=lambda: t[0])
    inv.apply(seen("/sys/live", base="live"))
    _replugs(inv, 3)  # Unhealthy since t=100
    held = frozenset({(R, "gadget-1")})
    t[0] = 150.0
    assert not inv.collect(150.0, grace=60, in_use=held, cap=100)  # within the grace period
    change = inv.collect(160.0, grace=60, in_use=held, cap=100)
    assert change.ids == ((R, "gadget-0"), (R, "gadget-2")) and change.forgotten == 2
    assert [e.id for e in inv.entries(R)] == ["gadget-1", "live"]  # a pod holds gadget-1; live is Healthy
    assert inv.forgotten_total == 2
    # Forgotten is not banned: the same gadget back gets its ID again.
    inv.apply(seen("/sys/g0", base="gadget-0"))
    assert inv.get(R, "gadget-0").healthy


def test_collect_without_pod_resources_keeps_ids_but_caps_them_oldest_first():
    t = [0.0]
    inv = Inventory(clock=lambda: t[0])
    for k in range(5):
        t[0] = float(k)
        _replugs(inv, 1, start=k)
    inv.apply(seen("/sys/live", base="live"))
    assert not inv.collect(1e9, grace=1, in_use=None, cap=5)  # age alone forgets nothing
    change = inv.collect(1e9, grace=1, in_use=None, cap=2)
    assert change.forgotten == 3 and [i for _r, i in change.ids] == ["gadget-0", "gadget-1", "gadget-2"]
    assert [e.id for e in inv.entries(R)] == ["gadget-3", "gadget-4", "live"]


def test_collect_caps_per_resource_and_keeps_what_pods_hold():
    other = "devplug.io/other"
    inv = Inventory(clock=_clock())
    for k in range(4):
        inv.apply(seen(f"/sys/a{k}", base=f"a{k}"), seen(f"/sys/b{k}", base=f"b{k}", resource=other,
                                                          claim=Claim(resource=other)))
        inv.apply(gone(f"/sys/a{k}"), gone(f"/sys/b{k}"))
    held = frozenset({(R, "a0")})
    inv.collect(0.0, grace=1e9, in_use=held, cap=1)
    assert [e.id for e in inv.entries(R)] == ["a0", "a3"]  # held, plus the newest unheld one
    assert [e.id for e in inv.entries(other)] == ["b3"]


def test_collect_forgets_share_copies_one_by_one_and_the_plain_id_of_twins():
    inv = Inventory(clock=_clock())
    inv.apply(seen("/sys/f", base="fuse", claim=Claim(resource=R, share=3)))
    inv.apply(gone("/sys/f"))
    inv.collect(1e9, grace=0, in_use=frozenset({(R, "fuse-s1")}), cap=10)
    assert [e.id for e in inv.entries(R)] == ["fuse-s1"]
    inv.apply(seen("/sys/f", base="fuse", claim=Claim(resource=R, share=3)))
    assert [(e.id, e.health) for e in inv.entries(R)] == [(f"fuse-s{k}", "Healthy") for k in range(3)]
    # Twins: the plain ID that turned Unhealthy has no device behind it any more.
    inv.apply(seen(X, base="same"))
    inv.apply(seen(Y, base="same"))
    assert inv.get(R, "same") is not None
    inv.collect(1e9, grace=0, in_use=frozenset(), cap=10)
    assert {e.id for e in inv.entries(R)} == {"fuse-s0", "fuse-s1", "fuse-s2", TX, TY}


def test_the_same_sighting_again_changes_only_what_differs():
    """A replug the recall answered hands the inventory the very sighting it had: health
    (and since) flip, nothing else; a field that differs under the same claim still shows,
    and an unchanged Healthy entry is not touched at all."""
    inv = Inventory(clock=_clock())
    s = seen("/sys/a/ttyUSB0")
    inv.apply(s)
    first = inv.entries(R)[0]
    v = inv.version(R)
    assert not inv.apply(s) and inv.version(R) == v and inv.entries(R)[0] is first
    inv.apply(gone("/sys/a/ttyUSB0"))
    ch = inv.apply(s)
    back = inv.entries(R)[0]
    assert ch.ids == ((R, "ftdi-A1"),) and back.healthy and back.since > first.since
    assert (back.devnode, back.syspath, back.claim) == (first.devnode, first.syspath, first.claim)
    ch = inv.apply(seen("/sys/a/ttyUSB0", devnode="/dev/ttyUSB1"))  # the same claim object
    assert ch.ids == ((R, "ftdi-A1"),) and inv.entries(R)[0].devnode == "/dev/ttyUSB1"
    assert inv.entries(R)[0].since == back.since  # still Healthy: since kept


def test_change_ids_for_none_one_and_several_ids_of_one_resource():
    inv = Inventory(clock=_clock())
    inv.apply(Sighting(key="/sys/x", present=True, resource="devplug.io/empty", base_id="x",
                       claim=Claim(resource="devplug.io/empty")))
    inv.apply(Sighting(key="/sys/x", present=True))  # unclaimed: the resource stays, empty
    assert "devplug.io/empty" in inv.resources()
    ch = inv.forget(["devplug.io/empty"])
    assert ch.resources == {"devplug.io/empty"} and ch.ids == ()
    ch = inv.apply(seen("/sys/a", claim=Claim(resource=R, share=3)))
    assert ch.ids == ((R, "ftdi-A1-s0"), (R, "ftdi-A1-s1"), (R, "ftdi-A1-s2"))
    assert inv.apply(gone("/sys/a")).ids == ch.ids


def test_the_same_sighting_path_compares_every_field_an_entry_has():
    """``Inventory._set_entries`` flips a matching entry without building a new one, by
    comparing the fields one by one: a field added to Entry must be added there too."""
    compared = {"resource", "physical", "claim", "syspath", "devnode", "subsystem", "symlinks", "usb_node",
                "topology", "hostpath"}
    flipped = {"healthy", "since"}
    assert {f.name for f in attrs.fields(Entry)} == {"id"} | compared | flipped


def test_gone_is_applying_an_absent_sighting():
    """``Inventory.gone`` (every unplug's path) leaves the same state and reports the same
    change as ``apply(Sighting(present=False))``, whatever came before: twins, refusals,
    shares, devices moving between resources, keys never seen."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from devplug.core.entries import Refusal

    keys = [f"/sys/d{i}" for i in range(4)]
    step = st.tuples(st.sampled_from(keys), st.sampled_from(["add", "refuse", "remove", "release"]),
                     st.sampled_from(["x", "y"]), st.sampled_from(["b0", "b1"]), st.integers(1, 2))

    def state(inv):
        return ({r: inv.entries(r) for r in inv.resources()}, inv.refused(),
                {k: inv.binding(k) for k in keys})

    @settings(max_examples=300, deadline=None)
    @given(st.lists(step, max_size=30))
    def run(steps):
        one, other = Inventory(clock=_clock()), Inventory(clock=_clock())
        for key, op, res, base, share in steps:
            resource = f"devplug.io/{res}"
            if op == "remove":
                assert one.apply(gone(key)) == other.gone(key)
            else:
                if op == "add":
                    s = seen(key, base=base, resource=resource, claim=Claim(resource=resource, share=share))
                elif op == "refuse":
                    s = Sighting(key=key, present=True, resource=resource, claim=Claim(resource=resource),
                                 refusal=Refusal(key=key, resource=resource, rule="a.rules:1", reason="bad"))
                else:
                    s = Sighting(key=key, present=True)
                assert one.apply(s) == other.apply(s)
            assert state(one) == state(other)

    run()
