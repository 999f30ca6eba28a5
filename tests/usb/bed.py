"""One test's view of the shared guest: devplug and the kubelet stand-in running *in* the guest.

The guest boots once per session (:mod:`tests.usb.conftest`); every test gets a :class:`Bed`
with its own directory in the guest (plugin dir, rules, debug socket), a fresh kubelet
stand-in, and on the way out everything it started is stopped and every device it plugged
is unplugged, so the next test finds the guest as it was.

devplug is used only through its command line (``python -m devplug run``, ``devplug rules
test``) and its debug socket, as a user would.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

import attrs

from tests.usb.guest import REPO, Guest, GuestError

# IDs devplug may hand kubelet: README "Stable device IDs and health".
VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
# TCG on two shared cores: a Python process needs ~10 s to start in the guest. Waits are for
# conditions; these only bound how long a broken run hangs.
START_TIMEOUT = 180.0
EVENT_TIMEOUT = 90.0


@attrs.frozen
class Stream:
    """What the kubelet stand-in received on one ListAndWatch stream, oldest first."""

    number: int
    lists: tuple[dict[str, str], ...]

    @property
    def latest(self) -> dict[str, str]:
        return self.lists[-1]


class Bed:
    def __init__(self, guest: Guest, name: str) -> None:
        self.guest = guest
        self.dir = f"/tmp/test-{name}"
        self.plugin_dir = f"{self.dir}/plugins"
        self.debug_socket = f"{self.dir}/debug.sock"
        self._devplug: list[str] = []
        self._starts = 0
        guest.run("mkdir", "-p", self.plugin_dir)
        guest.call("kubelet_start", plugin_dir=self.plugin_dir)

    # -- devplug -------------------------------------------------------------------------------
    def start_devplug(self, source: str, rules: Optional[dict[str, str]] = None, *,
                      with_shipped: bool = True, extra: tuple[str, ...] = ()) -> str:
        """``devplug run`` in the guest; returns its process name for :meth:`stop_devplug`.

        Without ``rules`` it runs on its embedded rules (what the DaemonSet ships). With
        ``rules`` (file name → text), those files are written to the guest and passed with
        ``--rules``, after the shipped ``rules/`` directory unless ``with_shipped`` is false.
        """
        self._starts += 1
        name = f"devplug-{self.dir.rsplit('-', 1)[-1]}-{self._starts}"
        argv = [sys.executable, "-m", "devplug", "run", "--plugin-dir", self.plugin_dir,
                "--debug-socket", self.debug_socket, "--udev-source", source, *extra]
        if rules is not None:
            rules_dir = f"{self.dir}/rules"
            for fname, text in rules.items():
                self.guest.call("write", path=f"{rules_dir}/{fname}", data=text)
            if with_shipped:
                argv += ["--rules", str(REPO / "rules")]
            argv += ["--rules", rules_dir]
        self.guest.call("spawn", name=name, argv=argv)
        self._devplug.append(name)
        return name

    def stop_devplug(self, name: str) -> dict[str, Any]:
        """SIGTERM; returns the agent's reply (``rc``, ``seconds``, ``log``)."""
        reply = self.guest.call("stop", name=name, timeout=60, wait=120)
        if name in self._devplug:
            self._devplug.remove(name)
        return reply

    def devplug_log(self, name: str) -> str:
        return self.guest.call("log", name=name)["log"]

    def inventory(self) -> dict[str, Any]:
        r = self.guest.call("http_get", socket_path=self.debug_socket, path="/inventory")
        assert r["status"] == 200, r
        return r["json"]

    # -- the kubelet stand-in ------------------------------------------------------------------
    def wait(self, resource: str, want: Optional[dict[str, str]] = None, *, subset: bool = False,
             newer_than: int = -1, timeout: float = EVENT_TIMEOUT) -> Stream:
        """Wait until the newest stream of ``resource`` (above ``newer_than``) lists ``want``."""
        r = self.guest.call("kubelet_wait", resource=resource, want=want, subset=subset,
                            newer_than=newer_than, timeout=timeout, wait=timeout + 60)
        return Stream(r["stream"], tuple({i: h for i, h in lst} for lst in r["lists"]))

    def allocate(self, resource: str, ids: list[str]) -> dict[str, Any]:
        """Allocate for one container: ``{"code": "OK", "response": {...}}`` or the gRPC error."""
        return self.guest.call("allocate", resource=resource, ids=ids)

    # -- uevents --------------------------------------------------------------------------------
    def mark(self) -> int:
        return self.guest.call("monitor_start")["mark"]

    def wait_events(self, mark: int, *match: dict[str, Any], timeout: float = EVENT_TIMEOUT) -> list[dict[str, Any]]:
        """Every uevent since ``mark`` once one matches each pattern (see agent.Recorder.wait)."""
        return self.guest.call("monitor_wait", mark=mark, match=list(match), timeout=timeout,
                               wait=timeout + 60)["events"]

    def close(self) -> list[str]:
        """Stop what this test started, unplug what it plugged; returns problems found."""
        problems = []
        for name in list(self._devplug):
            try:
                r = self.stop_devplug(name)
                if r["rc"] != 0:
                    problems.append(f"{name} exited {r['rc']}; log tail:\n{r['log'][-2000:]}")
            except GuestError as exc:
                problems.append(f"stopping {name}: {exc}")
        self.guest.call("kubelet_stop")
        if self.guest.plugged:
            problems.append(f"left plugged: {sorted(self.guest.plugged)}")
            self.guest.unplug_all()
        self.guest.run("rm", "-rf", self.dir, check=False)
        return problems


def allocated_paths(reply: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every device node of the one container response."""
    assert reply["code"] == "OK", reply
    (c,) = reply["response"]["containerResponses"]
    return sorted((d["hostPath"], d["containerPath"]) for d in c.get("devices", []))


def usb_events(events: list[dict[str, Any]], source: str) -> list[tuple[str, ...]]:
    """Compact (action, subsystem, devtype, name) of one source's events, for messages."""
    return [(e["action"], e["subsystem"], e["devtype"] or "", e["sys_name"])
            for e in events if e["source"] == source]
