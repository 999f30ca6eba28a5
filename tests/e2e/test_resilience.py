"""Bursts and netlink overflow against the real daemon: nothing is lost, nothing stays stale."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import uevent
from tests.e2e.test_run import _free_port, write_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: uevents and zram")

ZRAM = "devplug.io/zram"


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_overflow_is_detected_counted_and_repaired(tmp_path, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="block", KERNEL=="zram*", RESOURCE="zram"\n'
                                  'SUBSYSTEM=="tty", KERNEL=="tty2[0-9]", RESOURCE="vtty"\n')
    port = _free_port()
    # A tiny receive buffer: the kernel must drop messages during the burst.
    dp = start_devplug(rules, "--udev-source", "kernel", "--netlink-buffer", "1",
                       "--metrics-address", f"127.0.0.1:{port}")
    watch = kubelet.wait_watch(ZRAM, timeout=10)
    watch.wait_count(1)
    added: list[int] = []
    try:
        for i in range(40):
            added.append(int(Path("/sys/class/zram-control/hot_add").read_text()))
            for n in range(10):  # noise between the adds, to overflow the socket
                uevent(f"tty2{n}", "change")
        removed = added[::2]
        for num in removed:
            Path("/sys/class/zram-control/hot_remove").write_text(str(num))
        kept = [n for n in added if n not in removed]
        want = {f"virtual-block-zram{n}": "Healthy" for n in kept}

        def settled(dl) -> bool:
            got = dl.as_dict()
            return all(got.get(k) == "Healthy" for k in want) and all(
                got[k] == "Unhealthy" for k in got if k not in want and k.startswith("virtual-block-zram")
                and int(k.removeprefix("virtual-block-zram")) in removed)

        final = watch.wait_for(settled, timeout=10)
        # Removed devices are Unhealthy or were never seen (added and gone inside a drop).
        for k, health in final.as_dict().items():
            num = int(k.removeprefix("virtual-block-zram"))
            if num in removed:
                assert health == "Unhealthy"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert _metric(metrics, "devplug_netlink_overflows_total") >= 1
        assert 'devplug_resyncs_total{reason="overflow"}' in metrics
    finally:
        for num in added:
            try:
                Path("/sys/class/zram-control/hot_remove").write_text(str(num))
            except OSError:
                pass
    assert dp.proc.poll() is None, "daemon must stay up"
    assert dp.stop()[0] == 0


def test_burst_of_uevents_loses_nothing(tmp_path, kubelet, start_devplug):
    rules = write_rules(tmp_path, 'SUBSYSTEM=="tty", KERNEL=="tty2[0-9]", RESOURCE="vtty"\n')
    dp = start_devplug(rules, "--udev-source", "kernel")
    watch = kubelet.wait_watch("devplug.io/vtty", timeout=10)
    watch.wait_for(lambda dl: len(dl.devices) == 10)
    before = len(watch.lists)
    # 2,000 uevents; every device ends removed except the odd ones, which end added.
    for round_ in range(100):
        for n in range(10):
            uevent(f"tty2{n}", "remove" if round_ % 2 == 0 else "add")
    for n in range(0, 10, 2):
        uevent(f"tty2{n}", "remove")
    want = {f"virtual-tty-tty2{n}": ("Unhealthy" if n % 2 == 0 else "Healthy") for n in range(10)}
    assert watch.wait_for(lambda dl: dl.as_dict() == want, timeout=10).as_dict() == want
    sent = len(watch.lists) - before
    print(f"2,005 uevents → {sent} ListAndWatch messages")
    assert sent <= 2005
    for n in range(0, 10, 2):
        uevent(f"tty2{n}", "add")
    assert dp.stop()[0] == 0
