"""HOSTPATH rules: host paths (directories, static nodes like /dev/mem) as resources.

Event-driven: inotify watches the deepest existing directory of each pattern's fixed
prefix (and the directories its wildcards currently match), so a path appearing or
vanishing re-expands the patterns at once. No polling.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable

import trio

from ..lib.inotify import Inotify, Mask, sync_watches
from ..lib.logs import kv

log = logging.getLogger("devplug.hostpath")

WATCH_MASK = (
    Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
    | Mask.ATTRIB | Mask.ONLYDIR
)


def _log_unwatchable(directory: str, exc: OSError) -> None:
    log.debug("cannot watch", extra=kv(dir=directory, error=exc.strerror))


def expand(patterns: Iterable[str]) -> list[str]:
    """Existing paths the patterns name, sorted and unique."""
    out: set[str] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            out.update(os.path.normpath(p) for p in glob.glob(pattern))
        elif os.path.lexists(pattern):
            out.add(os.path.normpath(pattern))
    return sorted(out)


def watch_dirs(patterns: Iterable[str]) -> set[str]:
    """The directories whose entries decide what the patterns match right now."""
    dirs: set[str] = set()
    for pattern in patterns:
        parts = pattern.rstrip("/").split("/")
        # Fixed prefix: components before the first wildcard, minus the last one.
        fixed: list[str] = []
        for part in parts[:-1]:
            if glob.has_magic(part):
                break
            fixed.append(part)
        base = "/".join(fixed) or "/"
        while not os.path.isdir(base) and base not in ("/", ""):
            base = os.path.dirname(base)  # nearest existing ancestor sees the parent appear
        dirs.add(base or "/")
        # Intermediate wildcard directories that exist now (e.g. /dev/bus/usb/*/...).
        parent_pattern = os.path.dirname(pattern)
        if glob.has_magic(parent_pattern):
            dirs.update(d for d in glob.glob(parent_pattern) if os.path.isdir(d))
    return dirs


async def watch(patterns: tuple[str, ...], on_paths: Callable[[list[str]], None],
                *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Report the expanded paths now and after every relevant filesystem change."""
    with Inotify() as ino:
        watched: dict[str, int] = {}

        def rewatch() -> None:
            sync_watches(ino, watched, watch_dirs(patterns), WATCH_MASK, _log_unwatchable)

        rewatch()
        on_paths(expand(patterns))
        task_status.started()
        while True:
            await ino.wait()
            rewatch()
            on_paths(expand(patterns))
