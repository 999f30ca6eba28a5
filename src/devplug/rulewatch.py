"""Watch the rules paths and ask for a reload when their content may have changed.

Handles plain edits, editors that save by rename, and Kubernetes ConfigMap volumes,
which publish a new version by atomically swapping the ``..data`` symlink (so only a
MOVED_TO of ``..data`` happens in the mounted directory). A short settle delay after the
first event folds a burst (an editor's write + rename, a multi-file update) into one
reload; when idle nothing runs. A digest of the files' content skips reloads that would
change nothing (kubelet touches ConfigMap volumes periodically).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

import trio

from .inotify import Inotify, Mask, sync_watches

log = logging.getLogger("devplug.rulewatch")

WATCH_MASK = (
    Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE
    | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ATTRIB | Mask.ONLYDIR
)


def _warn_unwatchable(directory: str, exc: OSError) -> None:
    log.warning("cannot watch rules directory", extra={"kv": {"dir": directory, "error": exc.strerror}})


def rules_files(paths: Iterable[str]) -> list[str]:
    """The files a rules path set reads now, in load order (directories: ``*.rules`` by name)."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out += [os.path.join(path, n) for n in sorted(os.listdir(path))
                    if n.endswith(".rules") and os.path.isfile(os.path.join(path, n))]
        else:
            out.append(path)
    return out


def digest(paths: Iterable[str]) -> str:
    """Content digest of the rule files (names and bytes); missing files count as such."""
    h = hashlib.sha256()
    for f in rules_files(paths):
        h.update(f.encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                h.update(fh.read())
        except OSError as exc:
            h.update(f"!{exc.errno}".encode())
        h.update(b"\0")
    return h.hexdigest()


def watch_dirs(paths: Iterable[str]) -> set[str]:
    dirs: set[str] = set()
    for path in paths:
        d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        while d and not os.path.isdir(d):
            d = os.path.dirname(d)
        dirs.add(d or "/")
    return dirs


async def watch(paths: tuple[str, ...], on_change: Callable[[], Awaitable[None]], *,
                settle: float = 0.1, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_change`` after the rules content changed (settled, de-duplicated)."""
    with Inotify() as ino:
        watched: dict[str, int] = {}

        def rewatch() -> None:
            sync_watches(ino, watched, watch_dirs(paths), WATCH_MASK, _warn_unwatchable)

        rewatch()
        last = digest(paths)
        task_status.started()
        while True:
            await ino.wait()
            # Fold the rest of a burst into this reload; timers run only after an event.
            with trio.move_on_after(settle):
                while True:
                    await ino.wait()
            rewatch()
            now = digest(paths)
            if now != last:
                last = now
                await on_change()
