"""The kubelet adapter end to end: real gRPC servers on unix sockets, the kubelet stand-in,
a real Inventory, inotify on the plugin directory."""

from __future__ import annotations

import os
import stat
import time

import grpc
import pytest
from tests.kubelet.kubelet_harness import R, Harness, gone, run_adapter, seen
from tests.kubelet_standin import KubeletStandin, blocking

from devplug.core.inventory import Inventory
from devplug.kubelet import socket_name
from devplug.core.rules.model import Claim, Mount

SOCK = socket_name(R)


def sockets(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode))


def inventory_with(*sightings) -> Inventory:
    inv = Inventory()
    for s in sightings:
        inv.apply(s)
    return inv


def test_socket_name():
    assert socket_name("devplug.io/ftdi-serial") == "devplug.io_ftdi-serial.sock"


def test_registers_when_kubelet_starts_late_and_cleans_up(plugin_dir):
    kubelet = KubeletStandin(plugin_dir, start=False)
    timings = {}

    async def scenario(h: Harness):
        await h.until(lambda: "kubelet" in (h.adapter.status()[R].last_error or ""))
        st = h.adapter.status()[R]
        assert st.serving and not st.registered and "missing" in st.last_error
        assert sockets(plugin_dir) == [SOCK]
        t0 = time.perf_counter_ns()
        kubelet.start()
        reg = await blocking(kubelet.wait_registration, R)
        timings["ms"] = (reg.t_ns - t0) / 1e6
        assert (reg.version, reg.endpoint, reg.resource_name) == ("v1beta1", SOCK, R)
        assert (reg.pre_start_required, reg.get_preferred_allocation_available) == (False, True)
        await h.until(lambda: h.adapter.status()[R].registered)
        assert h.adapter.status()[R].last_error is None

    try:
        adapter = run_adapter(scenario, plugin_dir=plugin_dir)
    finally:
        kubelet.stop()
    print(f"kubelet.sock created -> registered: {timings['ms']:.2f} ms")
    # inotify on kubelet.sock, not the backoff timer, triggered the registration.
    assert timings["ms"] < 2000
    assert sockets(plugin_dir) == []  # our socket removed; the stand-in's is gone with it
    assert [(s.serving, s.registered, s.registrations) for s in adapter.status().values()] == [(False, False, 1)]


def test_refused_registration_is_retried(plugin_dir):
    with KubeletStandin(plugin_dir) as kubelet:
        kubelet.reject(2, grpc.StatusCode.UNAVAILABLE)

        async def scenario(h: Harness):
            reg = await blocking(kubelet.wait_registration, R)
            assert reg.endpoint == SOCK
            await h.until(lambda: h.adapter.status()[R].registered)
            assert h.adapter.status()[R].registrations == 1

        run_adapter(scenario, plugin_dir=plugin_dir)
        assert len(kubelet.registrations_of(R)) == 1


def test_no_registration_when_disabled(plugin_dir):
    rec = Recorder()
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            w = kubelet.watch(R)  # still serving: kubelet-less tests and debugging
            await blocking(w.wait_count, 1)
            await blocking(kubelet.restart)  # a kubelet (re)appearing is seen ...
            await h.until(lambda: ("kubelet_restart",) in rec.calls)
            # The restart deleted our socket too: served again, and still nothing registers
            # (no registration task exists at all).
            await h.until(lambda: h.adapter.status()[R].restarts == 1 and h.adapter.status()[R].serving)
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)
            assert not kubelet.registrations and not h.adapter.status()[R].registered
            assert not [c for c in rec.calls if c[0] == "registration"]

        run_adapter(scenario, plugin_dir=plugin_dir, register=False, telemetry=rec)


def test_list_at_once_then_every_change_on_every_stream(plugin_dir):
    inv = inventory_with(seen("/sys/a", "A1", devnode="/dev/tty20"))
    with KubeletStandin(plugin_dir, auto_watch=True) as kubelet:

        async def scenario(h: Harness):
            w1 = await blocking(kubelet.wait_watch, R)
            w2 = kubelet.watch(R)
            for w in (w1, w2):
                first = await blocking(w.wait_count, 1)
                assert first[0].devices == (("A1", "Healthy"),)
            await h.until(lambda: h.adapter.status()[R].streams == 2)

            steps = [
                ((gone("/sys/a"),), (("A1", "Unhealthy"),)),
                ((seen("/sys/b", "A1", devnode="/dev/tty21"),), (("A1", "Healthy"),)),
                ((seen("/sys/c", "B2", devnode="/dev/tty22"),), (("A1", "Healthy"), ("B2", "Healthy"))),
                ((seen("/sys/c", "B2", resource="devplug.io/other"),), (("A1", "Healthy"),)),
            ]
            for n, (sightings, expected) in enumerate(steps, start=2):
                t0 = time.perf_counter_ns()
                h.apply(*sightings)
                for w in (w1, w2):
                    lists = await blocking(w.wait_count, n)
                    assert lists[-1].devices == expected
                    assert lists[-1].t_ns > t0
            # A change to another resource wakes nobody here: the next list each stream
            # gets is the one for this resource's next change, nothing in between.
            h.apply(seen("/sys/d", "C3", resource="devplug.io/other"))
            h.apply(gone("/sys/b"))
            for w in (w1, w2):
                await blocking(w.wait_for, lambda lst: lst.devices == (("A1", "Unhealthy"),))
            assert len(w1.lists) == len(w2.lists) == len(steps) + 2

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_slow_stream_gets_the_latest_list(plugin_dir):
    inv = inventory_with(seen("/sys/a", "A1"))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)
            # 200 changes without yielding to the loop: notify never blocks, and the
            # stream then sends the state as it is, not a backlog.
            for k in range(200):
                h.apply(gone("/sys/a") if k % 2 == 0 else seen("/sys/a", "A1"))
            h.apply(seen("/sys/z", "Z9"))
            last = await blocking(w.wait_for, lambda lst: "Z9" in lst.ids)
            assert last.devices == (("A1", "Healthy"), ("Z9", "Healthy"))
            assert len(w.lists) <= 3

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_stream_ends_when_client_goes_away(plugin_dir):
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            ws = [kubelet.watch(R) for _ in range(3)]
            for w in ws:
                await blocking(w.wait_count, 1)
            await h.until(lambda: h.adapter.status()[R].streams == 3)
            t0 = time.perf_counter()
            for w in ws:
                await blocking(w.close)
            await h.until(lambda: h.adapter.status()[R].streams == 0, timeout=2)
            print(f"3 dropped clients noticed in {(time.perf_counter() - t0) * 1e3:.1f} ms")
            # The resource still serves new clients.
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)

        run_adapter(scenario, plugin_dir=plugin_dir)


def test_shutdown_ends_streams_and_removes_sockets(plugin_dir):
    resources = (R, "devplug.io/camera", "devplug.io/fuse")
    with KubeletStandin(plugin_dir) as kubelet:
        watches = []

        async def scenario(h: Harness):
            for r in resources:
                await blocking(kubelet.wait_registration, r)
                watches.append(kubelet.watch(r))
            for w in watches:
                await blocking(w.wait_count, 1)
            assert sockets(plugin_dir) == sorted([socket_name(r) for r in resources] + ["kubelet.sock"])

        t0 = time.perf_counter()
        adapter = run_adapter(scenario, plugin_dir=plugin_dir, resources=resources)
        for w in watches:
            assert w.wait_ended(2) == grpc.StatusCode.OK  # ended by us, cleanly
        print(f"scenario + shutdown of 3 servers: {time.perf_counter() - t0:.2f} s")
        assert sockets(plugin_dir) == ["kubelet.sock"]
        assert all(s.streams == 0 and not s.serving for s in adapter.status().values())


def test_set_resources_starts_and_stops_servers(plugin_dir):
    other = "devplug.io/camera"
    inv = inventory_with(seen("/sys/a", "A1"), seen("/sys/v", "V1", resource=other))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)
            h.adapter.set_resources([R, other])
            await blocking(kubelet.wait_registration, other)
            assert (await blocking(kubelet.watch(other).wait_count, 1))[0].ids == ["V1"]
            h.adapter.set_resources([other])
            assert await blocking(w.wait_ended, 2) == grpc.StatusCode.OK
            await h.until(lambda: socket_name(R) not in os.listdir(plugin_dir))
            assert set(h.adapter.status()) == {other}
            assert sockets(plugin_dir) == sorted(["kubelet.sock", socket_name(other)])

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_allocate_over_grpc(plugin_dir, tmp_path):
    claim = Claim(
        resource=R,
        container_path="/dev/gps",
        permissions="rw",
        options=frozenset({"symlinks"}),
        envs=(("GPS_BAUD", "9600"),),
        annotations=(("devplug.io/kind", "gps"),),
        mounts=(Mount("/etc/gps", "/etc/gps", read_only=True),),
    )
    inv = inventory_with(
        seen("/sys/a", "A1", devnode="/dev/tty20", claim=claim, symlinks=("/dev/serial/by-id/gps-A1",)),
        seen("/sys/b", "B2", devnode="/dev/tty21"),
        seen("/sys/c", "C3", devnode="/dev/tty22"),
    )
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            resp = await blocking(kubelet.allocate, R, ["A1"], ["B2", "C3"])
            a, bc = resp.container_responses
            assert [(d.host_path, d.container_path, d.permissions) for d in a.devices] == [
                ("/dev/tty20", "/dev/gps", "rw"),
                ("/dev/tty20", "/dev/serial/by-id/gps-A1", "rw"),
            ]
            assert dict(a.envs) == {"GPS_BAUD": "9600", "DEVPLUG_SERIAL": "/dev/gps"}
            assert dict(a.annotations) == {"devplug.io/kind": "gps"}
            assert [(m.host_path, m.read_only) for m in a.mounts] == [("/etc/gps", True)]
            assert [c.name for c in a.cdi_devices] == ["devplug.io/serial=A1"]
            assert [d.host_path for d in bc.devices] == ["/dev/tty21", "/dev/tty22"]
            assert bc.envs["DEVPLUG_SERIAL"] == "/dev/tty21,/dev/tty22"

            # The device moved (replugged as another node): Allocate follows the inventory.
            h.apply(gone("/sys/b"), seen("/sys/b2", "B2", devnode="/dev/tty29"))
            resp = await blocking(kubelet.allocate, R, ["B2"])
            assert resp.container_responses[0].devices[0].host_path == "/dev/tty29"

        run_adapter(
            scenario, plugin_dir=plugin_dir, inventory=inv, cdi=lambda e: [f"devplug.io/serial={e.id}"] if e.claim.envs else []
        )


def test_allocate_errors_carry_status_codes(plugin_dir):
    inv = inventory_with(seen("/sys/a", "A1"), seen("/sys/b", "B2"))
    inv.apply(gone("/sys/b"))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            with pytest.raises(grpc.RpcError) as err:
                await blocking(kubelet.allocate, R, ["A1", "nope"])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "'nope'" in err.value.details() and R in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                await blocking(kubelet.allocate, R, ["A1"], ["B2"])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'B2'" in err.value.details() and "unhealthy" in err.value.details()
            # The server stays fine after refusing.
            resp = await blocking(kubelet.allocate, R, ["A1"])
            assert len(resp.container_responses) == 1

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_preferred_allocation_over_grpc(plugin_dir):
    inv = inventory_with(
        *(seen(f"/sys/{i}", i, topology=hub) for i, hub in [("a1", "hub1"), ("a2", "hub1"), ("b1", "hub2"), ("b2", "hub2"), ("b3", "hub2")])
    )
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            opts = await blocking(kubelet.options, R)
            assert opts.get_preferred_allocation_available and not opts.pre_start_required
            avail = ["a1", "a2", "b1", "b2", "b3"]
            assert await blocking(kubelet.preferred, R, avail, ["a2"], 2) == ["a2", "a1"]
            assert await blocking(kubelet.preferred, R, avail, [], 3) == ["b1", "b2", "b3"]
            assert await blocking(kubelet.preferred, R, avail, ["b3"], 3) == ["b3", "b1", "b2"]
            with pytest.raises(grpc.RpcError) as err:  # a negative size is a gRPC status, not a crash
                await blocking(kubelet.preferred, R, avail, [], -1)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "size -1" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                await blocking(kubelet.preferred, R, ["a1"], ["b1"], 1)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await blocking(kubelet.preferred, R, avail, [], 1) == ["a1"]  # still serving

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_prestart_checks_the_node_when_enabled(plugin_dir, tmp_path):
    node = tmp_path / "ttyFAKE0"
    node.write_text("")
    inv = inventory_with(seen("/sys/a", "A1", devnode=str(node)))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            reg = await blocking(kubelet.wait_registration, R)
            assert reg.pre_start_required
            assert (await blocking(kubelet.options, R)).pre_start_required
            await blocking(kubelet.prestart, R, ["A1"])
            node.unlink()
            with pytest.raises(grpc.RpcError) as err:
                await blocking(kubelet.prestart, R, ["A1"])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "'A1'" in err.value.details() and str(node) in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                await blocking(kubelet.prestart, R, ["nope"])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, pre_start_check=True)


def test_prestart_is_a_no_op_when_disabled(plugin_dir):
    inv = inventory_with(seen("/sys/a", "A1", devnode="/nonexistent/tty"))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            reg = await blocking(kubelet.wait_registration, R)
            assert not reg.pre_start_required  # kubelet is told not to call it ...
            # ... and if it does, a missing node and an unknown ID are not refused.
            await blocking(kubelet.prestart, R, ["A1", "whatever"])

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)


def test_kubelet_restart_recreates_socket_and_reregisters(plugin_dir):
    resources = (R, "devplug.io/camera")
    inv = inventory_with(seen("/sys/a", "A1"))
    times = []
    with KubeletStandin(plugin_dir, auto_watch=True) as kubelet:

        async def scenario(h: Harness):
            w = await blocking(kubelet.wait_watch, R)
            await blocking(w.wait_count, 1)
            for n in range(2, 5):
                t0 = await blocking(kubelet.restart)
                assert w.wait_ended(2) is not None  # the old kubelet's stream is gone
                for r in resources:
                    reg = await blocking(kubelet.wait_registration, r, count=n)
                    times.append((reg.t_ns - t0) / 1e6)
                # The new kubelet's stream works and sees changes.
                w = await blocking(kubelet.wait_watch, R, not_before=w)
                await blocking(w.wait_count, 1)
                h.apply(gone("/sys/a") if n % 2 == 0 else seen("/sys/a", "A1"))
                health = "Unhealthy" if n % 2 == 0 else "Healthy"
                await blocking(w.wait_for, lambda lst: lst.devices == (("A1", health),))
            await h.until(lambda: all(s.registered for s in h.adapter.status().values()))
            for r in resources:
                st = h.adapter.status()[r]
                # A Register in flight when kubelet dies is cancelled and sent again: >= 4.
                assert st.restarts == 3 and st.registrations >= 4
            # No restart storm: our own socket churn does not trigger more restarts. A
            # resource added now registers only after the directory events before it were
            # handled (one watcher task, FIFO), so its registration is the barrier.
            count = {r: len(kubelet.registrations_of(r)) for r in resources}
            h.adapter.set_resources([*resources, "devplug.io/barrier"])
            await blocking(kubelet.wait_registration, "devplug.io/barrier")
            assert {r: len(kubelet.registrations_of(r)) for r in resources} == count
            assert all(s.restarts == 3 for r, s in h.adapter.status().items() if r in resources)
            assert sockets(plugin_dir) == sorted(["kubelet.sock", *map(socket_name, (*resources, "devplug.io/barrier"))])

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, resources=resources)
    print("kubelet restart -> re-registered (ms): " + ", ".join(f"{t:.1f}" for t in times))
    assert max(times) < 2000


def test_deleted_socket_alone_is_recreated(plugin_dir):
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            os.unlink(os.path.join(plugin_dir, SOCK))
            await blocking(kubelet.wait_registration, R, count=2)
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)
            assert h.adapter.status()[R].restarts == 1

        run_adapter(scenario, plugin_dir=plugin_dir)


def test_stale_socket_from_a_previous_run_is_replaced(plugin_dir):
    import socket as _socket

    stale = _socket.socket(_socket.AF_UNIX)
    stale.bind(os.path.join(plugin_dir, SOCK))
    stale.close()
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            await blocking(kubelet.watch(R).wait_count, 1)

        run_adapter(scenario, plugin_dir=plugin_dir)


def test_plugin_dir_removed_and_recreated(plugin_dir):
    import shutil

    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            shutil.rmtree(plugin_dir)
            # devplug recreates the directory, watches it again and serves a fresh socket.
            await h.until(
                lambda: os.path.exists(os.path.join(plugin_dir, SOCK)) and h.adapter.status()[R].restarts >= 1
            )
            await blocking(kubelet.restart)  # kubelet comes back into the new directory
            await blocking(kubelet.wait_registration, R, count=2)
            await blocking(kubelet.watch(R).wait_count, 1)

        run_adapter(scenario, plugin_dir=plugin_dir)


class Recorder:
    """A KubeletObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_sent(self, resource, version, previous, woke_ns=None, send_ns=None):
        self.calls.append(("sent", resource, version, previous))

    def on_registration(self, resource, ok):
        self.calls.append(("registration", resource, ok))

    def on_kubelet_restart(self):
        self.calls.append(("kubelet_restart",))

    def on_allocate(self, resource, result):
        self.calls.append(("allocate", resource, result))


def test_telemetry_hooks(plugin_dir):
    inv = inventory_with(seen("/sys/a", "A1"), seen("/sys/b", "B2"))
    inv.apply(gone("/sys/b"))
    rec = Recorder()
    with KubeletStandin(plugin_dir) as kubelet:
        kubelet.reject(1)

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            # kubelet has the call; the plugin records the answer when it gets it.
            await h.until(lambda: h.adapter.status()[R].registered)
            w = kubelet.watch(R)
            await blocking(w.wait_count, 1)
            v = inv.version(R)
            h.apply(gone("/sys/a"))
            await blocking(w.wait_count, 2)
            await h.until(lambda: ("sent", R, v + 1, v) in rec.calls)
            h.apply(seen("/sys/a", "A1"))
            await blocking(kubelet.allocate, R, ["A1"])
            for ids in (["nope"], ["B2"]):
                with pytest.raises(grpc.RpcError):
                    await blocking(kubelet.allocate, R, ids)
            await blocking(kubelet.restart)
            await blocking(kubelet.wait_registration, R, count=2)
            await h.until(lambda: ("kubelet_restart",) in rec.calls)

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv, telemetry=rec)
    assert rec.calls[:2] == [("registration", R, False), ("registration", R, True)]
    assert any(c[0] == "sent" and c[3] is None for c in rec.calls)  # a stream's first list
    assert [c for c in rec.calls if c[0] == "allocate"] == [
        ("allocate", R, "ok"),
        ("allocate", R, "invalid_argument"),
        ("allocate", R, "failed_precondition"),
    ]
