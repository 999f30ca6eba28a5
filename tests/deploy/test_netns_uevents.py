"""What a pod without hostNetwork hears (manifests/overlays/kernel-source documents this).

Each probe binds a NETLINK_KOBJECT_UEVENT socket inside the namespaces a pod would have,
and a real uevent is triggered on the host. Positive checks return as soon as the event
arrives; negative ones wait NEGATIVE_WAIT seconds, long past the ~1 ms delivery time.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import TTY, run_probe

pytestmark = pytest.mark.netlink

KERNEL, UDEV = "1", "2"
POSITIVE_WAIT, NEGATIVE_WAIT = "10", "1.0"
HOST: list[str] = []
POD_NETNS = ["unshare", "--net"]
POD_USERNS = ["unshare", "--user", "--map-root-user", "--net"]


def listen(wrapper: list[str], group: str, wait: str) -> str:
    return run_probe(wrapper, ["listen", group, wait, f"/{TTY}"])[-1]


def test_a_pod_network_namespace_hears_kernel_uevents(kernel_events):
    assert listen(HOST, KERNEL, POSITIVE_WAIT) == "GOT"
    assert listen(POD_NETNS, KERNEL, POSITIVE_WAIT) == "GOT"


@pytest.mark.udevd
def test_only_the_host_network_namespace_hears_udevd(kernel_events, udevd):
    # The control proves udevd is broadcasting, so the negative below means something.
    assert listen(HOST, UDEV, POSITIVE_WAIT) == "GOT"
    assert listen(POD_NETNS, UDEV, NEGATIVE_WAIT) == "NONE"


def test_a_user_namespaced_pod_hears_no_uevent(kernel_events):
    if subprocess.run([*POD_USERNS, "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are disabled on this kernel")
    assert listen(POD_USERNS, KERNEL, NEGATIVE_WAIT) == "NONE"
