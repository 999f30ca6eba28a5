"""The asyncio loop that grpc.aio runs on, inside trio (``trio_asyncio``), closed cleanly.

When trio_asyncio closes its loop it awaits every asyncio task still pending and raises
whatever they raise. grpc.aio leaves tasks of its own behind a stopped server (its serving
loop ends with an internal ``_RequestCallError`` a moment after ``stop()`` returns); plain
asyncio would only log those, trio_asyncio turns them into a crash of the whole nursery.
:func:`open_loop` lets such tasks finish first and logs what they raised at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import trio
import trio_asyncio

log = logging.getLogger("devplug.aio")

#: How long leftover asyncio tasks may take to finish when the loop closes.
SETTLE_TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def open_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    async with trio_asyncio.open_loop() as loop:
        try:
            yield loop
        finally:
            with trio.CancelScope(shield=True):
                await _settle(loop)


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    pending = asyncio.all_tasks(loop)
    if pending:
        with trio.move_on_after(SETTLE_TIMEOUT):
            await trio_asyncio.aio_as_trio(asyncio.wait)(pending)
    for task in pending:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("asyncio task ended with an error at shutdown", extra={"kv": {
                "task": task.get_name(), "error": repr(task.exception())}})
