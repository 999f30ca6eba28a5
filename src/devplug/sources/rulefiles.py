"""Rules files: which files a set of rules paths names, reading them, and watching them.

Which files (udev's model, ``conf_files_list``): every ``*.rules`` file of every directory
goes into one order by file name; when several directories hold the same file name, the
one named by the *later* ``--rules`` path wins (``--rules defaults --rules site`` lets a
site replace one file). Hidden files (``.name.rules``: ConfigMap volumes hold dot-entries)
are skipped, a file that is a symlink to ``/dev/null`` (or empty) masks its name, and a
path given as a file takes part in the same order under its own name. A ``*.rules`` entry
that is a dangling or looping symlink, or not a regular file, is an error, never skipped
in silence.

Reading refuses a rules set larger than ``max_bytes`` before reading it (one error), and the
text goes to the pure ``devplug.core.rules.compile_rules``. :func:`read_rules` is plain
blocking code without shared state, so the daemon runs it in a worker thread.

Watching handles plain edits, editors that save by rename, and Kubernetes ConfigMap
volumes, which publish a new version by atomically swapping the ``..data`` symlink (so
only a MOVED_TO of ``..data`` happens in the mounted directory). A short settle delay
after the first event folds a burst (an editor's write + rename, a multi-file update)
into one reload; when idle nothing runs. A digest of the files' content skips reloads
that would change nothing (kubelet touches ConfigMap volumes periodically).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

from .. import config
from ..core.rules import Location, RuleError, RulesError, RuleSet, compile_rules
from ..lib.inotify import Inotify, Mask, sync_watches
from ..lib.logs import kv

log = logging.getLogger("devplug.rulefiles")

WATCH_MASK = (
    Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE
    | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ATTRIB | Mask.ONLYDIR
)

MAX_RULES_BYTES = config.MAX_RULES_BYTES
_DEV_NULL = os.makedev(1, 3)


def _entry_problem(path: str) -> tuple[bool, str]:
    """Whether a ``*.rules`` directory entry is read, and if not, the error ("" = skip quietly)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False, "symlink loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return False, f"dangling symlink (to {target})"
        return False, exc.strerror or str(exc)
    if stat.S_ISREG(st.st_mode) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_NULL):
        return True, ""  # /dev/null masks the name, as in udev
    if stat.S_ISDIR(st.st_mode):
        return False, ""
    return False, "not a regular file"


def select_files(paths: Iterable[str], *, missing_ok: bool = False) -> tuple[list[str], list[RuleError]]:
    """The files a rules path set reads now, in load order, and the entries that are errors.

    A path that does not exist raises ``FileNotFoundError`` unless ``missing_ok`` (the
    watcher's digest, which must not fail while a ConfigMap is being swapped).
    """
    chosen: dict[str, str] = {}  # file name -> path; a later --rules path replaces it
    problems: list[RuleError] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError:
                if missing_ok:
                    continue
                raise
            for name in names:
                if not name.endswith(".rules") or name.startswith("."):
                    continue
                full = os.path.join(path, name)
                ok, problem = _entry_problem(full)
                if ok:
                    chosen[name] = full
                elif problem:
                    problems.append(RuleError(Location(full, 0), problem))
        elif os.path.exists(path):
            ok, problem = _entry_problem(path)
            if ok:
                chosen[os.path.basename(path)] = path
            else:
                problems.append(RuleError(Location(path, 0), problem or "is a directory"))
        elif missing_ok:
            chosen[os.path.basename(path)] = path
        else:
            raise FileNotFoundError(2, "No such file or directory", path)
    return [chosen[name] for name in sorted(chosen)], problems


def rule_files(paths: Iterable[str], *, missing_ok: bool = False) -> list[str]:
    """The files a rules path set reads now, in load order (see :func:`select_files`)."""
    return select_files(paths, missing_ok=missing_ok)[0]


def read_rules(paths: Sequence[str], *, max_bytes: int = MAX_RULES_BYTES) -> RuleSet:
    """Read and compile the rules; raises ``RulesError`` (every error) or ``OSError``.

    Thread-safe and free of trio: the daemon calls it in a worker thread.
    """
    files, problems = select_files(paths)
    sizes = []
    for f in files:
        sizes.append(os.stat(f).st_size)
    total = sum(sizes)
    if total > max_bytes:
        biggest = max(range(len(files)), key=sizes.__getitem__)
        raise RulesError([RuleError(Location(files[biggest], 0),
                                    f"rules set is {total:,} bytes in {len(files)} file(s), over the limit of "
                                    f"{max_bytes:,} bytes (--max-rules-bytes); this file is {sizes[biggest]:,}")])
    texts = []
    budget = max_bytes
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read(budget + 1)  # a file that grew since stat() cannot get past the limit
        if len(data) > budget:
            raise RulesError([RuleError(Location(f, 0), f"rules set grew over the limit of {max_bytes:,} bytes "
                                                        "(--max-rules-bytes) while being read")])
        budget -= len(data)
        texts.append((f, data.decode("utf-8", "surrogateescape")))
    try:
        ruleset = compile_rules(texts)
    except RulesError as exc:
        raise RulesError(problems + exc.errors) from None
    if problems:
        raise RulesError(problems)
    return ruleset


_DIGEST_CAP = 64 * 1024 * 1024


def digest(paths: Iterable[str]) -> str:
    """Content digest of the rule files (names and bytes); missing files count as such.

    Only regular files are read (never a FIFO), and one larger than any rules set could be
    counts by size and mtime instead of content (it will be refused on reload anyway)."""
    h = hashlib.sha256()
    files, problems = select_files(paths, missing_ok=True)
    for f in files:
        h.update(f.encode("utf-8", "surrogateescape") + b"\0")
        try:
            st = os.stat(f)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _DIGEST_CAP:
                h.update(f"{st.st_mode}:{st.st_size}:{st.st_mtime_ns}".encode())
            else:
                with open(f, "rb") as fh:
                    h.update(fh.read(_DIGEST_CAP))
        except OSError as exc:
            h.update(f"!{exc.errno}".encode())
        h.update(b"\0")
    for p in problems:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
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
