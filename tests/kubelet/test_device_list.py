"""The pre-encoded ListAndWatch list (servicer.DeviceList): after any sequence of changes it is
exactly what protobuf encodes for the resource's entries, and its caches stay bounded."""

from __future__ import annotations

import random

import pytest

from tests.kubelet.kubelet_harness import R, gone, seen

from devplug.core.inventory import Inventory
from devplug.core.view import PublishedView
from devplug.kubelet import api_pb2
from devplug.kubelet.servicer import DeviceList
from devplug.kubelet.transport import frame


def encoded(view) -> bytes:
    return frame(api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=e.id, health=e.health)
                                                       for e in view.entries(R)]).SerializeToString())


@pytest.mark.parametrize("published", [False, True])
def test_the_list_matches_protobuf_after_every_change(published):
    """Live, every version is listed; published every third step, a version can hold an ID
    forgotten and another added (same length, positions shifted)."""
    rnd = random.Random(14)
    inv = Inventory()
    for k in range(50):
        inv.apply(seen(f"/sys/d{k}", f"D{k:03d}"))
    view = PublishedView(inv) if published else inv
    lst = DeviceList(R, view)
    present = set(range(50))
    serial = 1000
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
            inv.collect(0.0, grace=0.0, in_use=frozenset(), cap=rnd.randrange(5))
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
    assert [(d.ID, d.health) for d in api_pb2.ListAndWatchResponse.FromString(message[5:]).devices] == [("A1", "Healthy")]
    view.publish(view.snapshot([R]))
    assert lst.current()[1][5:] == encoded(inv)[5:] and lst.current()[0] == version + 1
