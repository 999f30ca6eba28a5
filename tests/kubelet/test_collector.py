"""Forgetting Unhealthy IDs: the PodResources client against the stand-in's real gRPC, and
the collector's schedule on trio's virtual clock."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from devplug.core.inventory import Inventory, Sighting
from devplug.core.rules.model import Claim
from devplug.kubelet.collector import Collector
from devplug.kubelet.podresources import Holder, PodResources
from tests.kubelet_standin import KubeletStandin

R = "devplug.io/serial"
GRACE = 300.0


def seen(key, base):
    return Sighting(key=key, present=True, resource=R, base_id=base, claim=Claim(resource=R))


def gone(key):
    return Sighting(key=key, present=False)


async def test_pod_resources_client_reports_holders_and_unknown(plugin_dir):
    path = os.path.join(plugin_dir, "pod-resources.sock")
    client = PodResources(path, timeout=1.0)
    assert await client.holders() is None  # nothing listens: unknown, not "nobody"
    with KubeletStandin(plugin_dir, pod_resources=path) as kubelet:
        assert await client.holders() == {}
        kubelet.assign(R, ["A1", "B2"], pod="reader", namespace="iot", container="modbus")
        kubelet.assign("devplug.io/other", ["X"], pod="web")
        assert await client.holders() == {
            (R, "A1"): (Holder("iot", "reader", "modbus"),),
            (R, "B2"): (Holder("iot", "reader", "modbus"),),
            ("devplug.io/other", "X"): (Holder("default", "web", "main"),),
        }
    assert await client.holders() is None


class FakeKubelet:
    """PodResources as the collector sees it: a set of held IDs, or unreachable."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str]] = set()
        self.reachable = True
        self.calls = 0

    async def holders(self):
        self.calls += 1
        if not self.reachable:
            return None
        return {k: (Holder("default", "p", "c"),) for k in self.held}


def setup(cap=256):
    inv = Inventory(clock=trio.current_time)
    kubelet = FakeKubelet()
    changes = []

    def publish(change):
        changes.append(change)
        collector.wake()

    collector = Collector(inv, publish, kubelet.holders, grace=GRACE, cap=cap, clock=trio.current_time)
    return inv, kubelet, collector, changes


def ids(inv):
    return {e.id: e.health for e in inv.entries(R)}


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_an_unheld_unhealthy_id_is_forgotten_after_the_grace_period(autojump_clock):
    inv, kubelet, collector, changes = setup()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        inv.apply(seen("/sys/a", "A1"), seen("/sys/b", "B2"))
        await trio.sleep(3600)
        assert collector.passes == 0 and kubelet.calls == 0  # nothing Unhealthy: no wake-ups at all
        t0 = trio.current_time()
        inv.apply(gone("/sys/a"))
        collector.wake()
        await trio.sleep(GRACE - 1)
        assert ids(inv) == {"A1": "Unhealthy", "B2": "Healthy"} and collector.passes == 0
        await trio.sleep(2)
        assert ids(inv) == {"B2": "Healthy"}
        assert collector.passes == 1 and changes[-1].forgotten == 1
        assert trio.current_time() - t0 >= GRACE
        await trio.sleep(3600)
        assert collector.passes == 1  # and asleep again
        nursery.cancel_scope.cancel()


async def test_a_replug_within_the_grace_period_keeps_the_id(autojump_clock):
    inv, kubelet, collector, changes = setup()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        inv.apply(seen("/sys/a", "A1"))
        inv.apply(gone("/sys/a"))
        collector.wake()
        await trio.sleep(GRACE / 2)
        inv.apply(seen("/sys/a2", "A1"))  # the same dongle, another port
        collector.wake()
        await trio.sleep(GRACE * 3)
        assert ids(inv) == {"A1": "Healthy"} and collector.passes == 0
        nursery.cancel_scope.cancel()


async def test_an_id_a_pod_holds_is_kept_and_asked_about_again(autojump_clock):
    inv, kubelet, collector, changes = setup()
    kubelet.held.add((R, "A1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        inv.apply(seen("/sys/a", "A1"))
        inv.apply(gone("/sys/a"))
        collector.wake()
        await trio.sleep(GRACE + collector.recheck * 5 + 1)
        assert ids(inv) == {"A1": "Unhealthy"}
        assert 5 <= kubelet.calls <= 7  # once per recheck while held, not in a loop
        kubelet.held.clear()  # the pod went away
        await trio.sleep(collector.recheck + 1)
        assert ids(inv) == {}
        calls = kubelet.calls
        await trio.sleep(3600)
        assert kubelet.calls == calls
        nursery.cancel_scope.cancel()


async def test_while_kubelet_is_unknown_ids_are_kept_but_capped_oldest_first(autojump_clock):
    inv, kubelet, collector, changes = setup(cap=3)
    kubelet.reachable = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        for n in range(6):  # a gadget replugging with a new serial each time
            inv.apply(seen(f"/sys/g{n}", f"G{n}"))
            await trio.sleep(1)
            inv.apply(gone(f"/sys/g{n}"))
            collector.wake()
            await trio.sleep(1)
        assert sorted(ids(inv)) == ["G3", "G4", "G5"]  # the three newest
        await trio.sleep(GRACE * 10)
        assert sorted(ids(inv)) == ["G3", "G4", "G5"]  # unknown holders: nothing goes for age
        kubelet.reachable = True
        await trio.sleep(collector.recheck + 1)
        assert ids(inv) == {}
        nursery.cancel_scope.cancel()


async def test_a_flip_among_a_thousand_is_planned_from_the_change_alone(autojump_clock):
    """Woken with the change, planning looks at the IDs it names (and the Unhealthy ones it
    knows), not at every entry; the schedule is the same as with a full look."""
    inv, kubelet, collector, changes = setup()
    scans = []
    all_entries = inv.all_entries
    inv.all_entries = lambda: (scans.append(1), all_entries())[1]  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.run)
        collector.wake(inv.apply(*(seen(f"/sys/d{k}", f"D{k}") for k in range(1000))))
        await trio.sleep(1)
        first = len(scans)
        assert first == 1  # once at start: nothing known yet
        for _ in range(50):
            collector.wake(inv.apply(gone("/sys/d7")))
            await trio.sleep(1)
            collector.wake(inv.apply(seen("/sys/d7", "D7")))
            await trio.sleep(1)
        assert len(scans) == first, "no pass over all 1,000 entries after a flip"
        collector.wake(inv.apply(gone("/sys/d9")))
        await trio.sleep(GRACE + 1)
        assert "D9" not in ids(inv) and len(ids(inv)) == 999
        assert changes[-1].forgotten == 1
        nursery.cancel_scope.cancel()
