"""The DaemonSet's security posture holds on a real kernel.

manifests/base/daemonset.yaml runs devplug as uid 0 with every capability dropped and
no_new_privs set (allowPrivilegeEscalation: false). This test runs a probe the same way
(`setpriv` clears the bounding set, so root execs with no capability) and checks each
claim the manifest's comments make: netlink uevents are readable, plugin sockets can be
created in a root-owned directory, kubelet's socket can be dialled, inotify works, the
udev database and device nodes are readable; SO_RCVBUFFORCE is refused and the buffer is
capped at the node's net.core.rmem_max. The same probe with full privileges is the control.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from .conftest import TTY, run_probe

pytestmark = [pytest.mark.netlink, pytest.mark.udevd]

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"]
FOREIGN_UID = 4242


@pytest.fixture
def layout(tmp_path: Path, kernel_events, udevd):
    plugins = tmp_path / "device-plugins"  # like /var/lib/kubelet/device-plugins: root, 0755
    plugins.mkdir(mode=0o755)
    foreign = tmp_path / "foreign"  # a directory devplug does not own
    foreign.mkdir(mode=0o755)
    os.chown(foreign, FOREIGN_UID, FOREIGN_UID)
    kubelet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    kubelet_path = plugins / "kubelet.sock"
    kubelet.bind(str(kubelet_path))
    os.chmod(kubelet_path, 0o755)  # what kubelet's umask gives its socket
    kubelet.listen(4)
    db = sorted(Path("/run/udev/data").glob("*"))
    cfg = {
        "root_dir_socket": str(plugins / "devplug-test.sock"),
        "foreign_dir_socket": str(foreign / "devplug-test.sock"),
        "root_socket": str(kubelet_path),
        "watch_dir": str(plugins),
        "udev_db_file": str(db[0]) if db else None,
        "devnode": f"/dev/{TTY}",
        "needle": f"/{TTY}",
        "seconds": 10,
        "udev": True,
    }
    yield cfg
    kubelet.close()


def probe(wrapper: list[str], cfg: dict) -> dict:
    for key in ("root_dir_socket", "foreign_dir_socket"):
        Path(cfg[key]).unlink(missing_ok=True)
    return json.loads(run_probe(wrapper, ["privileges", json.dumps(cfg)])[-1])


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def test_devplug_needs_no_capability(layout):
    r = probe(NO_CAPS, layout)
    # The harness really is the container's situation.
    assert r["uid"] == 0 and int(r["cap_eff"], 16) == 0 and r["no_new_privs"] == "1"
    # Everything devplug does works.
    assert r["kernel_uevent"] is True
    assert r["udev_uevent"] is True
    assert r["bind_in_root_dir"] == "ok"
    assert r["connect_root_socket"] == "ok"
    assert r["inotify"] == "ok"
    assert r["stat_devnode"] == "ok"
    if layout["udev_db_file"]:
        assert r["read_udev_db"] == "ok"
    # Ownership, not a capability, is what lets it write to the plugin dir.
    assert r["bind_in_foreign_dir"] == "EACCES"
    # The one limit: no SO_RCVBUFFORCE; SO_RCVBUF works but is capped (the kernel doubles it).
    assert r["rcvbufforce"] == "EPERM"
    assert r["rcvbuf_set"] == "ok"
    assert r["rcvbuf"] == r["rcvbuf_capped"] <= 2 * rmem_max()


def test_control_with_full_privileges(layout):
    r = probe([], layout)
    assert int(r["cap_eff"], 16) != 0
    assert r["bind_in_foreign_dir"] == "ok"  # CAP_DAC_OVERRIDE
    assert r["rcvbufforce"] == "ok"  # CAP_NET_ADMIN
    assert r["rcvbuf"] >= 64 * 1024 * 1024
