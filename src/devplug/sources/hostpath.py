"""HOSTPATH rules: host paths (directories, static nodes like /dev/mem) as resources.

Event-driven: inotify watches the deepest existing directory of each pattern's fixed
prefix (and the directories its wildcards currently match), so a path appearing or
vanishing re-expands the patterns at once. No polling. Wildcards expand with the rules'
own fnmatch, not Python's ``glob`` (which reads ``[^0]`` differently and skips dot-files),
so what is watched and offered is exactly what the HOSTPATH rule claims.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

import trio

from ..core.rules.fnmatch import Glob
from ..core.rules.pattern import Kind, compile_path
from ..lib.inotify import Inotify, Mask, sync_watches
from ..lib.logs import kv

log = logging.getLogger("devplug.hostpath")

WATCH_MASK = (
    Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
    | Mask.ATTRIB | Mask.ONLYDIR
)


def _log_unwatchable(directory: str, exc: OSError) -> None:
    log.debug("cannot watch", extra=kv(dir=directory, error=exc.strerror))


def _magic(component: str) -> bool:
    return any(c in component for c in "*?[\\")


def _walk(pattern: str) -> tuple[list[str], set[str]]:
    """Existing paths one HOSTPATH alternative names, and the directories deciding that.

    Component by component: a literal component is joined, a wildcard one lists its
    directory and keeps the entries the core's own fnmatch accepts (dot-files too: udev's
    fnmatch has no FNM_PERIOD), so the expansion is exactly what the rule matches.
    """
    parts = pattern.split("/")[1:]
    frontier = [""]
    dirs: set[str] = set()
    for k, comp in enumerate(parts):
        last = k == len(parts) - 1
        nxt: list[str] = []
        glob = Glob((comp,)) if _magic(comp) else None
        for base in frontier:
            d = base or "/"
            if glob is not None:
                dirs.add(d)
                try:
                    entries = os.listdir(d)
                except OSError:
                    continue
                for entry in entries:
                    if glob.matches(entry):
                        cand = f"{base}/{entry}"
                        if last or os.path.isdir(cand):
                            nxt.append(cand)
            else:
                cand = f"{base}/{comp}"
                if last:
                    dirs.add(d)  # sees the path appear and vanish
                    if os.path.lexists(cand):
                        nxt.append(cand)
                elif os.path.isdir(cand):
                    nxt.append(cand)
                else:
                    dirs.add(d)  # nearest existing ancestor sees the missing part appear
        frontier = nxt
    return frontier, dirs


def expand(patterns: Iterable[str]) -> list[str]:
    """Existing paths the patterns name, sorted and unique: every one is a path the rules'
    HOSTPATH matcher (``core.rules.pattern.compile_path``) accepts."""
    out: set[str] = set()
    for pattern in patterns:
        matcher = compile_path(pattern)
        if matcher.kind is Kind.GLOB:
            out.update(p for p in _walk(pattern)[0] if matcher.matches(p))
        elif os.path.lexists(pattern):
            out.add(pattern)
    return sorted(out)


def watch_dirs(patterns: Iterable[str]) -> set[str]:
    """The directories whose entries decide what the patterns match right now."""
    dirs: set[str] = set()
    for pattern in patterns:
        if compile_path(pattern).kind is Kind.GLOB:
            dirs |= _walk(pattern)[1]
        else:
            dirs |= _walk_literal(pattern)
    return dirs


def _walk_literal(path: str) -> set[str]:
    base = os.path.dirname(path.rstrip("/")) or "/"
    while not os.path.isdir(base) and base not in ("/", ""):
        base = os.path.dirname(base)  # nearest existing ancestor sees the parent appear
    return {base or "/"}


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
