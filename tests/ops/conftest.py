"""Helpers for the operations tests: serve in the test's trio run while blocking clients
(curl, plain sockets) talk to it from a worker thread."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import trio

CURL = shutil.which("curl")


async def serve_while(start: Callable[..., Any], *args: Any, client: Callable[[Any], Any]) -> Any:
    """Start ``start(*args)`` with ``nursery.start``; run ``client(started_value)`` in a
    thread; cancel the server and wait until it finished; return what the client returned."""
    async with trio.open_nursery() as nursery:
        value = await nursery.start(start, *args)
        try:
            return await trio.to_thread.run_sync(client, value)
        finally:
            nursery.cancel_scope.cancel()


def with_server(start: Callable[..., Any], *args: Any, client: Callable[[Any], Any]) -> Any:
    """:func:`serve_while` for synchronous tests (its own trio run)."""
    return trio.run(functools.partial(serve_while, start, *args, client=client))


def curl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    if CURL is None:
        pytest.skip("curl is not installed")
    return subprocess.run([CURL, "-sS", "--max-time", str(timeout), *args],
                          capture_output=True, text=True, timeout=timeout + 5)
