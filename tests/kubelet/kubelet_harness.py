"""Harness for the kubelet adapter tests: a real Inventory, real servers, the stand-in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Optional

import trio

from devplug.core.inventory import Change, Inventory, Sighting
from devplug.kubelet import KubeletAdapter
from devplug.core.rules.model import Claim

R = "devplug.io/serial"
#: Method paths the transport tests call with the bare h2 client.
LAW = "/v1beta1.DevicePlugin/ListAndWatch"
ALLOCATE = "/v1beta1.DevicePlugin/Allocate"


def seen(key: str, base: str, *, resource: str = R, claim: Optional[Claim] = None, **kw: Any) -> Sighting:
    """A present device claimed for ``resource`` (through the inventory's real update API)."""
    return Sighting(
        key=key, present=True, resource=resource, base_id=base, claim=claim or Claim(resource=resource), **kw
    )


def gone(key: str) -> Sighting:
    return Sighting(key=key, present=False)


def one_device() -> Inventory:
    """An inventory with one Healthy device (A1, /dev/tty20) in :data:`R`."""
    inv = Inventory()
    inv.apply(seen("/sys/a", "A1", devnode="/dev/tty20"))
    return inv


class Harness:
    """What a scenario gets: the inventory, the running adapter, and a way to change state."""

    def __init__(self, inventory: Inventory, adapter: KubeletAdapter) -> None:
        self.inventory = inventory
        self.adapter = adapter

    def apply(self, *sightings: Sighting) -> Change:
        change = Change()
        for s in sightings:
            c = self.inventory.apply(s)
            change = Change(resources=change.resources | c.resources, ids=change.ids + c.ids)
        self.adapter.notify(change)
        return change

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (checking every few ms) until ``pred()`` holds on the trio side."""
        with trio.fail_after(timeout):
            while not pred():
                await trio.sleep(0.005)


def run_adapter(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    plugin_dir: str,
    inventory: Optional[Inventory] = None,
    resources: tuple[str, ...] = (R,),
    timeout: float = 30.0,
    **adapter_kw: Any,
) -> KubeletAdapter:
    """Run ``scenario`` while the adapter serves; then cancel it (a clean shutdown)."""
    inventory = inventory if inventory is not None else Inventory()
    adapter = KubeletAdapter(plugin_dir=plugin_dir, inventory=inventory, **adapter_kw)
    adapter.set_resources(resources)

    async def main() -> None:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await nursery.start(adapter.run)
                await scenario(Harness(inventory, adapter))
                nursery.cancel_scope.cancel()

    trio.run(main)
    return adapter
