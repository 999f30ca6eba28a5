"""Registering with kubelet: the Register call, telling kubelets apart, and wake-ups.

A kubelet is identified by its socket file (``kubelet.sock``'s device, inode and ctime):
a restarted kubelet creates a new file, so "registered with this kubelet" survives an
inotify event that merely repeats what a backoff retry already achieved.
"""

from __future__ import annotations

import os
from typing import Optional

import trio

from . import api_pb2
from .transport import unary_call

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
#: How long one Register call may take before it counts as refused.
REGISTER_TIMEOUT = 5.0
REGISTER_METHOD = "/v1beta1.Registration/Register"

#: ``(st_dev, st_ino, st_ctime_ns)`` of a file: inode numbers alone are reused at once.
FileIdentity = tuple[int, int, int]


def file_identity(path: str) -> Optional[FileIdentity]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class Broadcast:
    """A generation counter with a trio wake-up for any number of waiters.

    ``wait(seen)`` returns once :meth:`fire` was called after the waiter read ``gen``, so
    a fire that happens while the waiter is busy elsewhere is never lost.
    """

    def __init__(self) -> None:
        self.gen = 0
        self._event = trio.Event()

    def fire(self) -> None:
        self.gen += 1
        self._event.set()
        self._event = trio.Event()

    async def wait(self, seen: int) -> None:
        while self.gen == seen:
            await self._event.wait()


async def register(kubelet_socket: str, request: api_pb2.RegisterRequest,
                   timeout: float = REGISTER_TIMEOUT) -> None:
    """One Register call, on a connection of its own (a new kubelet at the same path is never
    reached through the old one's connection). Raises :class:`~.transport.RpcError` when
    kubelet refuses, does not answer in time (``DEADLINE_EXCEEDED``) or is not there
    (:class:`~.transport.Unavailable`). Cancelling the caller cancels the call."""
    await unary_call(kubelet_socket, REGISTER_METHOD, request.SerializeToString(), timeout=timeout)
