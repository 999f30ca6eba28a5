"""kubelet's own client stack against the h2 transport: bench/gokubelet (grpc-go, the device
manager's Register → dial → GetDevicePluginOptions → ListAndWatch path, Allocate on the same
connection). Runs where the Go receiver is built (``scripts/setup --test`` builds it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.kubelet.kubelet_harness import R, Harness, gone, run_adapter, seen
from tests.kubelet_standin import blocking

from devplug.core.inventory import Inventory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from receivers import GOKUBELET, Receiver  # noqa: E402

pytestmark = pytest.mark.skipif(not GOKUBELET.exists(), reason="bench/gokubelet is not built (scripts/setup --test)")

N = 1000


def test_grpc_go_registers_watches_big_lists_allocates_and_sees_a_clean_end(plugin_dir):
    inv = Inventory()
    inv.apply(seen("/sys/a", "A1", devnode="/dev/tty20"))
    for k in range(N - 1):
        inv.apply(seen(f"/sys/d{k}", f"dev-{k:04d}-" + "x" * 16))
    with Receiver("go", plugin_dir) as kubelet:
        watches = []

        async def scenario(h: Harness) -> None:
            w = await blocking(kubelet.wait_watch, R, 15)
            watches.append(w)
            first = await blocking(w.wait_for, lambda dl: len(dl.devices) == N, 10)
            assert first.as_dict()["A1"] == "Healthy"
            for k in range(10):  # ~40 KB lists: more than a frame, more than grpc-go's first window
                h.apply(gone("/sys/a") if k % 2 == 0 else seen("/sys/a", "A1", devnode="/dev/tty20"))
                want = "Unhealthy" if k % 2 == 0 else "Healthy"
                await blocking(w.wait_for, lambda dl, want=want: dl.as_dict().get("A1") == want, 10)
            assert all(len(dl.devices) == N for dl in w.lists)
            ok = await blocking(kubelet.allocate, R, ["A1"])
            (container,) = ok["response"]["containerResponses"]
            assert container["devices"] == [{"containerPath": "/dev/tty20", "hostPath": "/dev/tty20",
                                              "permissions": "rw"}]
            bad = await blocking(kubelet.allocate, R, ["ü-100%"])
            assert bad["code"] == "INVALID_ARGUMENT" and "'ü-100%'" in bad["message"]
            assert not w.ended.is_set()  # the watch lives on beside the unary calls

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)
        (w,) = watches
        assert w.ended.wait(5) and w.end_code == "OK"  # the server's stop: OK trailers, then GOAWAY
        assert not kubelet.errors
