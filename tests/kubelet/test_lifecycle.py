"""A resource plugin's lifecycle: the plugin-directory lock, kubelet coming and going, a hung
kubelet replaced, bind failures retried by name."""

from __future__ import annotations

import logging
import os
import time

import pytest
import trio
from tests.kubelet.kubelet_harness import R, Harness, run_adapter, seen
from tests.kubelet_standin import KubeletStandin, blocking

from devplug.core.inventory import Inventory
from devplug.kubelet import KubeletAdapter, PluginDirBusy, socket_name
from devplug.kubelet.adapter import lock_dir
from devplug.kubelet.registration import REGISTER_TIMEOUT


def test_a_second_devplug_on_the_same_plugin_dir_is_refused(plugin_dir):
    first = lock_dir(plugin_dir)
    try:
        with pytest.raises(PluginDirBusy) as err:
            lock_dir(plugin_dir)
        assert err.value.filename == plugin_dir
        assert f"process {os.getpid()}" in str(err.value) and "already serves" in str(err.value)

        # The adapter refuses to start before it touches anything in the directory.
        adapter = KubeletAdapter(plugin_dir=plugin_dir, inventory=Inventory())
        adapter.set_resources([R])

        async def main():
            await adapter.run()

        with pytest.raises(PluginDirBusy):  # before the adapter opens any nursery
            trio.run(main)
        assert os.listdir(plugin_dir) == []
    finally:
        os.close(first)
    lock_dir_again = lock_dir(plugin_dir)  # released: the next one may run
    os.close(lock_dir_again)


def test_lock_is_released_when_the_adapter_stops(plugin_dir):
    async def scenario(h: Harness):
        with pytest.raises(PluginDirBusy):
            lock_dir(plugin_dir)

    run_adapter(scenario, plugin_dir=plugin_dir, register=False)
    os.close(lock_dir(plugin_dir))


def test_kubelet_socket_missing_and_back_are_one_info_line_each(plugin_dir, caplog):
    caplog.set_level(logging.INFO, logger="devplug.kubelet")
    kubelet = KubeletStandin(plugin_dir, start=False)

    def lines(text):
        return [r for r in caplog.records if r.getMessage() == text]

    async def scenario(h: Harness):
        await h.until(lambda: h.adapter.status()[R].serving and "kubelet" in (h.adapter.status()[R].last_error or ""))
        kubelet.start()
        await blocking(kubelet.wait_registration, R)
        # Registered on our side too: a kubelet stopped while its answer is on the way makes
        # that registration fail (rightly logged), which is not what this test is about.
        await h.until(lambda: h.adapter.status()[R].registered)
        kubelet.stop()  # grpc removes kubelet.sock
        await h.until(lambda: lines("kubelet socket removed; waiting for kubelet") and not h.adapter.status()[R].registered)
        kubelet.start()
        await blocking(kubelet.wait_registration, R, count=2)

    try:
        run_adapter(scenario, plugin_dir=plugin_dir)
    finally:
        kubelet.stop()
    assert len(lines("kubelet socket missing; waiting for kubelet")) == 1
    assert len(lines("kubelet socket appeared; registering every resource")) == 2
    assert len(lines("kubelet socket removed; waiting for kubelet")) == 1
    # While kubelet was absent nothing retried on a timer: no failed registration at all.
    assert not [r for r in caplog.records if r.getMessage() == "registration failed"]


def test_a_hung_kubelet_replaced_by_a_new_one_does_not_delay_registration(plugin_dir):
    hung = KubeletStandin(plugin_dir)
    hung.hang(1)
    fresh = KubeletStandin(plugin_dir, start=False)
    took = {}

    async def scenario(h: Harness):
        await blocking(hung.wait_hung, 1)  # our Register is in flight and will never answer
        t0 = time.perf_counter()
        fresh.start()  # a new kubelet binds a new kubelet.sock while the old one hangs
        await blocking(fresh.wait_registration, R)
        took["s"] = time.perf_counter() - t0
        await h.until(lambda: h.adapter.status()[R].registered)

    try:
        run_adapter(scenario, plugin_dir=plugin_dir)
    finally:
        fresh.stop()
        hung.stop()
    # Cancelled at the new kubelet.sock, not left to run into its timeout.
    assert took["s"] < REGISTER_TIMEOUT / 2
    assert not hung.registrations


def test_a_socket_path_that_cannot_be_bound_is_retried_until_it_can(plugin_dir):
    # A directory squats on our socket's path: binding fails (an expected error, by name).
    squat = os.path.join(plugin_dir, socket_name(R))
    os.mkdir(squat)
    os.mkdir(os.path.join(squat, "keep"))  # not empty: our stale-socket unlink cannot remove it

    async def scenario(h: Harness):
        st = h.adapter.status()[R]
        assert not st.serving and st.last_error and "serve" in st.last_error
        os.rmdir(os.path.join(squat, "keep"))
        os.rmdir(squat)
        await h.until(lambda: h.adapter.status()[R].serving, timeout=10)

    run_adapter(scenario, plugin_dir=plugin_dir, register=False)


def test_resource_added_later_is_served_and_registered(plugin_dir):
    other = "devplug.io/camera"
    inv = Inventory()
    inv.apply(seen("/sys/v", "V1", resource=other))
    with KubeletStandin(plugin_dir) as kubelet:

        async def scenario(h: Harness):
            await blocking(kubelet.wait_registration, R)
            h.adapter.set_resources([R, other])
            await blocking(kubelet.wait_registration, other)
            assert (await blocking(kubelet.watch(other).wait_count, 1))[0].ids == ["V1"]

        run_adapter(scenario, plugin_dir=plugin_dir, inventory=inv)
