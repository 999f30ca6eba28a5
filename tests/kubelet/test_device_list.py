"""The pre-encoded ListAndWatch list (kubelet.listing.DeviceList): after any sequence of changes it is
exactly what protobuf encodes for the resource's entries, and its caches stay bounded."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tests.kubelet.kubelet_harness import R, gone, seen

from devplug.core.inventory import Inventory
from devplug.core.view import PublishedView
from devplug.kubelet import api_pb2
from devplug.kubelet.listing import REBUILD_BELOW, DeviceList
from devplug.kubelet.transport import frame


def encoded(view) -> bytes:
    return frame(api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=e.id, health=e.health)
                                                       for e in view.entries(R)]).SerializeToString())


@pytest.mark.parametrize("rebuild_below", [0, REBUILD_BELOW, 10_000], ids=["patched", "both", "joined"])
@pytest.mark.parametrize("published,hints", [(False, "none"), (True, "none"), (False, "all"), (False, "some"),
                                             (True, "all")])
def test_the_list_matches_protobuf_after_every_change(published, hints, rebuild_below):
    """Live, every version is listed; published every third step, a version can hold an ID
    forgotten and another added (same length, positions shifted). ``hints``: each change's
    IDs are told to the list as the adapter tells them (all, or some changes untold, or
    none); a told list patches only those, and must never miss an untold change."""
    rnd = random.Random(14)
    inv = Inventory()
    for k in range(50):
        inv.apply(seen(f"/sys/d{k}", f"D{k:03d}"))
    view = PublishedView(inv) if published else inv
    lst = DeviceList(R, view, rebuild_below=rebuild_below)  # "both": 50 devices, growing past 64 and back
    present = set(range(50))
    serial = 1000
    apply = inv.apply

    def told(*sightings):
        change = apply(*sightings)
        if change and (hints == "all" or (hints == "some" and rnd.random() < 0.8)):
            lst.hint(tuple(i for r, i in change.ids if r == R) if change.ids else None)
        return change

    inv.apply = told  # type: ignore[method-assign]
    for step in range(3000):
        op = rnd.random()
        k = rnd.randrange(60)
        if op < 0.45:  # unplug / replug: a health flip, same length, same order
            inv.apply(gone(f"/sys/d{k}") if k in present else seen(f"/sys/d{k}", f"D{k:03d}"))
            present.symmetric_difference_update({k})
        elif op < 0.7:  # the same device comes back with a new serial: an ID more
            serial += 1
            inv.apply(gone(f"/sys/d{k}"), seen(f"/sys/d{k}", f"N{serial}"))
            present.add(k)
        elif op < 0.85:  # two changes in one version: one ID gone, another new, same count
            serial += 1
            inv.apply(gone(f"/sys/d{k}"), seen(f"/sys/x{serial}", f"X{serial}"))
        else:  # Unhealthy IDs forgotten (the collector's job): shorter lists
            change = inv.collect(0.0, grace=0.0, in_use=frozenset(), cap=rnd.randrange(5))
            if change and hints == "all":
                lst.hint(tuple(i for r, i in change.ids if r == R))
        if published and step % 3 == 0:
            view.publish(view.snapshot([R]))
        version, message = lst.current()
        assert version == view.version(R)
        assert message == encoded(view)
        assert len(lst._chunks) <= 2 * len(view.entries(R)) + 64 + 2


def test_a_published_view_lists_its_snapshot():
    inv = Inventory()
    inv.apply(seen("/sys/a", "A1"))
    view = PublishedView(inv)
    lst = DeviceList(R, view)
    assert lst.current() == (0, frame(b""))
    view.publish(view.snapshot([R]))
    inv.apply(gone("/sys/a"))  # not published yet: still listed Healthy
    version, message = lst.current()
    listed = api_pb2.ListAndWatchResponse.FromString(message[5:]).devices
    assert [(d.ID, d.health) for d in listed] == [("A1", "Healthy")]
    view.publish(view.snapshot([R]))
    assert lst.current()[1][5:] == encoded(inv)[5:] and lst.current()[0] == version + 1


class CountingView:
    """An Inventory that counts how often a front door reads a resource's entries."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self.reads = 0

    def apply(self, *sightings):
        return self.inv.apply(*sightings)

    def version(self, resource):
        return self.inv.version(resource)

    def entries(self, resource):
        self.reads += 1
        return self.inv.entries(resource)

    def listed(self, resource):
        self.reads += 1
        return self.inv.listed(resource)

    def get(self, resource, device_id):
        return self.inv.get(resource, device_id)


def test_a_burst_builds_the_list_only_for_what_is_sent(plugin_dir):
    """200 changes in one turn of the event path: the list is built for the first (written
    at once) and for the newest (written when the event path yields), not 200 times."""
    from tests.kubelet.kubelet_harness import Harness, run_adapter
    from tests.kubelet_standin import Watch, blocking

    from devplug.kubelet import socket_name

    view = CountingView(Inventory())
    for k in range(300):
        view.apply(seen(f"/sys/d{k}", f"D{k:03d}"))

    async def scenario(h: Harness):
        import os

        w = Watch(os.path.join(plugin_dir, socket_name(R)), R)
        await blocking(w.wait_count, 1)
        reads = view.reads
        for k in range(200):
            h.apply(gone(f"/sys/d{k}"))
        last = await blocking(w.wait_for, lambda lst: dict(lst.devices).get("D199") == "Unhealthy")
        assert last.devices == tuple((e.id, e.health) for e in view.inv.entries(R))
        assert view.reads - reads <= 2 and len(w.lists) <= 3
        w.close()

    run_adapter(scenario, plugin_dir=plugin_dir, inventory=view, register=False)


def test_offsets_are_prefix_sums_through_any_length_changes():
    from devplug.kubelet.listing import _Offsets

    rnd = random.Random(3)
    lengths = [rnd.randrange(1, 40) for _ in range(257)]
    offsets = _Offsets(list(lengths))
    for _ in range(2000):
        i = rnd.randrange(len(lengths))
        delta = rnd.randrange(-lengths[i] + 1, 30)
        lengths[i] += delta
        offsets.add(i, delta)
        j = rnd.randrange(len(lengths) + 1)
        assert offsets.start(j) == sum(lengths[:j])


def test_a_flip_among_a_thousand_patches_one_element():
    inv = Inventory()
    inv.apply(*(seen(f"/sys/d{k}", f"D{k:04d}") for k in range(1001)))
    lst = DeviceList(R, inv)
    lst.current()
    for k in (0, 500, 1000, 500):  # first, middle, last element; lengths change (Unhealthy is longer)
        inv.apply(gone(f"/sys/d{k}"))
        assert lst.current()[1] == encoded(inv)
        inv.apply(seen(f"/sys/d{k}", f"D{k:04d}"))
        assert lst.current()[1] == encoded(inv)


def test_a_short_list_is_joined_and_keeps_no_patch_state():
    """Below REBUILD_BELOW devices each version is joined from the cached elements; a list
    that shrinks there drops the buffer it patched, and keeps no hints while short."""
    inv = Inventory()
    inv.apply(*(seen(f"/sys/d{k}", f"D{k:04d}") for k in range(REBUILD_BELOW + 36)))
    lst = DeviceList(R, inv)
    lst.current()
    assert len(lst._parts) == REBUILD_BELOW + 36 and len(lst._buf) > 1000
    inv.apply(*(gone(f"/sys/d{k}") for k in range(40)))
    inv.collect(0.0, grace=0.0, in_use=frozenset(), cap=0)  # 40 IDs forgotten: 60 left
    assert lst.current()[1] == encoded(inv)
    assert lst._parts == [] and len(lst._buf) == 5  # the framed empty list
    for k in range(40, 50):
        inv.apply(gone(f"/sys/d{k}"))
        lst.hint([f"D{k:04d}"])
        assert lst._hints is None and lst.current()[1] == encoded(inv)


def test_a_told_flip_reads_its_own_entry_and_snapshots_nothing():
    """A flip the change told reads the inventory's list in place: no tuple of 1,001 entries
    is made for it (``Inventory.entries`` is never asked), and the list stays exact."""
    inv = Inventory()
    inv.apply(*(seen(f"/sys/d{k}", f"D{k:04d}") for k in range(1001)))
    view = CountingView(inv)
    lst = DeviceList(R, view)
    lst.current()
    snapshots = []
    real_entries = inv.entries
    inv.entries = lambda resource: snapshots.append(resource) or real_entries(resource)  # type: ignore[method-assign]
    for k in (0, 500, 1000):
        for sighting in (gone(f"/sys/d{k}"), seen(f"/sys/d{k}", f"D{k:04d}")):
            change = inv.apply(sighting)
            lst.hint([i for _r, i in change.ids])
            message = lst.current()[1]
            assert not snapshots
            assert message == encoded(SimpleNamespace(entries=real_entries))
