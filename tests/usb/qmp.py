"""A small synchronous QMP client (QEMU Machine Protocol, JSON over a unix socket).

Only what the USB bed needs: commands (``device_add``, ``device_del``, ``chardev-add``,
``blockdev-add``…) and the asynchronous events QEMU sends between replies
(``DEVICE_DELETED`` tells that the guest let go of an unplugged device). A reader thread
splits the stream into replies and events, so an event that arrives while a command is in
flight is never lost.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable


class QmpError(Exception):
    """QEMU answered a command with an error (its class and description)."""


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._file = self._sock.makefile("rwb", buffering=0)
        self._cond = threading.Condition()
        self._replies: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._closed = False
        greeting = json.loads(self._file.readline())
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self._reader = threading.Thread(target=self._read, name="qmp-reader", daemon=True)
        self._reader.start()
        self.execute("qmp_capabilities")

    def _read(self) -> None:
        try:
            for line in self._file:
                msg = json.loads(line)
                with self._cond:
                    (self.events if "event" in msg else self._replies).append(msg)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        with self._cond:
            self._file.write((json.dumps(msg) + "\n").encode())
            deadline = time.monotonic() + timeout
            while not self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise QmpError(f"{command}: no reply (closed={self._closed})")
                self._cond.wait(left)
            reply = self._replies.pop(0)
        if "error" in reply:
            err = reply["error"]
            raise QmpError(f"{command} {arguments}: {err.get('class')}: {err.get('desc')}")
        return reply.get("return")

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], since: int = 0,
                   timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[since:]:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"no matching QMP event; got {[e['event'] for e in self.events[since:]]}")
                self._cond.wait(left)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(2)


def device_deleted(dev_id: str) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        return ev["event"] == "DEVICE_DELETED" and ev.get("data", {}).get("device") == dev_id

    return pred

