"""Rules files: which files a set of rules paths names, reading them, and watching them.

Reading: a directory gives its ``*.rules`` files in lexical order of file name; the text
goes to the pure ``devplug.core.rules.compile_rules``. Parsing a large set takes time, so
the daemon calls :func:`read_rules` in a worker thread.

Watching handles plain edits, editors that save by rename, and Kubernetes ConfigMap
volumes, which publish a new version by atomically swapping the ``..data`` symlink (so
only a MOVED_TO of ``..data`` happens in the mounted directory). A short settle delay
after the first event folds a burst (an editor's write + rename, a multi-file update)
into one reload; when idle nothing runs. A digest of the files' content skips reloads
that would change nothing (kubelet touches ConfigMap volumes periodically).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

from ..core.rules import RuleSet, compile_rules
from ..lib.inotify import Inotify, Mask, sync_watches
from ..lib.logs import kv

log = logging.getLogger("devplug.rulefiles")

WATCH_MASK = (
    Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE
    | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ATTRIB | Mask.ONLYDIR
)


def rule_files(paths: Iterable[str], *, missing_ok: bool = False) -> list[str]:
    """The files a rules path set reads now, in load order.

    A path that does not exist raises ``FileNotFoundError`` unless ``missing_ok`` (the
    watcher's digest, which must not fail while a ConfigMap is being swapped).
    """
    files: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += [os.path.join(path, n) for n in sorted(os.listdir(path))
                      if n.endswith(".rules") and os.path.isfile(os.path.join(path, n))]
        elif os.path.exists(path) or missing_ok:
            files.append(path)
        else:
            raise FileNotFoundError(2, "No such file or directory", path)
    return files


def read_rules(paths: Sequence[str]) -> RuleSet:
    """Read and compile the rules; raises ``RulesError`` (every error) or ``OSError``."""
    texts = []
    for f in rule_files(paths):
        with open(f, "rb") as fh:
            texts.append((f, fh.read().decode("utf-8", "surrogateescape")))
    return compile_rules(texts)


def digest(paths: Iterable[str]) -> str:
    """Content digest of the rule files (names and bytes); missing files count as such."""
    h = hashlib.sha256()
    for f in rule_files(paths, missing_ok=True):
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


def _warn_unwatchable(directory: str, exc: OSError) -> None:
    log.warning("cannot watch rules directory", extra=kv(dir=directory, error=exc.strerror))


async def watch(paths: tuple[str, ...], on_change: Callable[[], Awaitable[None]], *,
                settle: float = 0.1, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_change`` after the rules content changed (settled, de-duplicated)."""
    with Inotify() as ino:
        watched: dict[str, int] = {}

        def rewatch() -> None:
            sync_watches(ino, watched, watch_dirs(paths), WATCH_MASK, _warn_unwatchable)

        rewatch()
        last = await trio.to_thread.run_sync(digest, paths)
        task_status.started()
        while True:
            await ino.wait()
            # Fold the rest of a burst into this reload; timers run only after an event.
            with trio.move_on_after(settle):
                while True:
                    await ino.wait()
            rewatch()
            now = await trio.to_thread.run_sync(digest, paths)
            if now != last:
                last = now
                await on_change()
