"""Helpers for the operations tests: run a trio server while blocking clients talk to it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import trio

CURL = shutil.which("curl")


def with_server(start: Callable[..., Any], *args: Any, client: Callable[[Any], Any]) -> Any:
    """Start ``start(*args)`` with ``nursery.start``; run ``client(started_value)`` in a
    thread; cancel the server; return what the client returned."""

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            value = await nursery.start(start, *args)
            try:
                return await trio.to_thread.run_sync(client, value)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main)


def curl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    if CURL is None:
        pytest.skip("curl is not installed")
    return subprocess.run([CURL, "-sS", "--max-time", str(timeout), *args],
                          capture_output=True, text=True, timeout=timeout + 5)
