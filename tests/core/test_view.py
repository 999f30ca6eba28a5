"""PublishedView: lists show the published snapshot; lookups stay live."""

from __future__ import annotations

from devplug.core.inventory import Inventory, Sighting
from devplug.core.rules.model import Claim
from devplug.core.view import PublishedView

R = "devplug.io/serial"


def seen(key, base):
    return Sighting(key=key, present=True, resource=R, base_id=base, claim=Claim(resource=R))


def test_lists_follow_publish_and_lookups_stay_live():
    inv = Inventory()
    view = PublishedView(inv)
    inv.apply(seen("/sys/a", "A1"))
    assert view.entries(R) == () and view.version(R) == 0  # nothing published yet
    snap = view.snapshot([R])
    inv.apply(seen("/sys/b", "B2"))  # changes after the snapshot stay invisible ...
    view.publish(snap)
    assert [e.id for e in view.entries(R)] == ["A1"] and view.version(R) == snap[R][0]
    assert view.get(R, "B2") is not None  # ... to lists, not to lookups
    inv.apply(Sighting(key="/sys/a", present=False))
    assert view.entries(R)[0].healthy and not view.get(R, "A1").healthy
    view.publish(view.snapshot([R]))
    assert [(e.id, e.healthy) for e in view.entries(R)] == [("A1", False), ("B2", True)]
    inv.forget([R])
    view.publish(view.snapshot([R]))
    assert view.entries(R) == () and view.version(R) == 0
