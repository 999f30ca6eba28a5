"""Event-driven watchers with real inotify: host paths and the rules directory."""

from __future__ import annotations

import os

import trio

from devplug.lib.inotify import Inotify
from devplug.sources import hostpath
from devplug.sources import rulefiles as rulewatch


def test_expand_and_watch_dirs(tmp_path):
    (tmp_path / "a1").mkdir()
    (tmp_path / "a2").mkdir()
    (tmp_path / "b").write_text("")
    pats = [str(tmp_path / "a*"), str(tmp_path / "b"), str(tmp_path / "missing" / "deep" / "x")]
    assert hostpath.expand(pats) == [str(tmp_path / "a1"), str(tmp_path / "a2"), str(tmp_path / "b")]
    # The missing parent is covered by its nearest existing ancestor.
    assert hostpath.watch_dirs(pats) == {str(tmp_path)}
    nested = [str(tmp_path / "a*" / "dev")]
    assert hostpath.watch_dirs(nested) == {str(tmp_path), str(tmp_path / "a1"), str(tmp_path / "a2")}


async def test_hostpath_watch_reports_appear_and_vanish(tmp_path):
    seen: list[list[str]] = []
    target = tmp_path / "sub" / "data"
    changed = trio.Event()

    def on_paths(paths):
        seen.append(paths)
        changed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(hostpath.watch, (str(target),), on_paths)
        assert seen == [[]]
        for step in ("mkdir-parent", "mkdir", "rmdir"):
            changed = trio.Event()
            if step == "mkdir-parent":
                (tmp_path / "sub").mkdir()
            elif step == "mkdir":
                target.mkdir()
            else:
                target.rmdir()
            with trio.fail_after(5):
                await changed.wait()
            if step == "mkdir-parent":
                # The new parent is watched now; nothing matched yet.
                assert seen[-1] == []
        nursery.cancel_scope.cancel()
    assert [str(target)] in seen
    assert seen[-1] == []


def _configmap_swap(mount, version: str, files: dict[str, str]) -> None:
    """What kubelet's atomic writer does: new timestamped dir, then rename ..data over."""
    d = mount / f"..{version}"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    tmp = mount / "..data_tmp"
    os.symlink(d.name, tmp)
    os.rename(tmp, mount / "..data")
    for name in files:
        link = mount / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


class _Observed:
    """Tells the test when the rules watcher has looked at the content (its digest ran in a
    worker thread) and is back waiting on inotify: whatever it decided is done by then.
    Spies on the real digest and the real Inotify; changes neither."""

    def __init__(self, monkeypatch) -> None:
        self.looked = trio.Event()
        self.settled = trio.Event()
        self._armed = False
        real_digest = rulewatch.digest
        observer = self

        def digest(paths):
            value = real_digest(paths)
            trio.from_thread.run_sync(observer._on_digest)
            return value

        class ObservedInotify(Inotify):
            async def wait(self):
                if observer._armed:
                    observer._armed = False
                    observer.settled.set()
                return await super().wait()

        monkeypatch.setattr(rulewatch, "digest", digest)
        monkeypatch.setattr(rulewatch, "Inotify", ObservedInotify)

    def _on_digest(self) -> None:
        self.looked.set()
        self._armed = True  # the next wait() is the top of the loop: the decision is made

    def reset(self) -> None:
        self.looked = trio.Event()
        self.settled = trio.Event()


async def test_rulewatch_configmap_swap_and_edit(tmp_path, monkeypatch):
    mount = tmp_path / "rules"
    mount.mkdir()
    _configmap_swap(mount, "v1", {"10-a.rules": 'KERNEL=="x", RESOURCE="a"\n'})
    real_digest = rulewatch.digest
    observed = _Observed(monkeypatch)
    calls: list[str] = []
    fired = trio.Event()

    async def on_change():
        calls.append(real_digest([str(mount)]))
        fired.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(rulewatch.watch, (str(mount),), on_change)
        _configmap_swap(mount, "v2", {"10-a.rules": 'KERNEL=="y", RESOURCE="a"\n'})
        with trio.fail_after(5):
            await fired.wait()
            await observed.settled.wait()
        # Events that change no content must not reload: kubelet re-publishing the same
        # ConfigMap, an attribute change on the file's link.
        fired = trio.Event()
        observed.reset()
        _configmap_swap(mount, "v3", {"10-a.rules": 'KERNEL=="y", RESOURCE="a"\n'})
        os.utime(mount / "10-a.rules", follow_symlinks=False)
        with trio.fail_after(5):
            await observed.looked.wait()  # the watcher saw the events and read the content
            await observed.settled.wait()  # and is waiting again: it decided
        assert not fired.is_set()
        assert len(calls) == 1
        # Still watching: a real edit reloads.
        _configmap_swap(mount, "v4", {"10-a.rules": 'KERNEL=="z", RESOURCE="a"\n'})
        with trio.fail_after(5):
            await fired.wait()
        nursery.cancel_scope.cancel()
    assert len(calls) == 2 and calls[0] != calls[1]
    assert rulewatch.rule_files([str(mount)]) == [str(mount / "10-a.rules")]


def test_expand_uses_the_rules_own_matcher(tmp_path):
    """HOSTPATH expansion and HOSTPATH matching are one implementation (glibc fnmatch with
    FNM_PATHNAME): '[^0]' negates and '*' matches dot-files, as in udev. Python's glob.glob,
    used before, read '[^0]' as '^ or 0' and skipped dot-files, so the rule claimed paths
    that were never offered and was offered paths it did not claim."""
    from devplug.core.rules import RuleSet, parse_rules

    for name in ("tty0", "tty1", "tty2", "tty^", ".hidden", "data"):
        (tmp_path / name).write_text("")
    patterns = [f"{tmp_path}/tty[^0]", f"{tmp_path}/*"]
    assert hostpath.expand(patterns[:1]) == [str(tmp_path / n) for n in ("tty1", "tty2", "tty^")]
    assert str(tmp_path / ".hidden") in hostpath.expand(patterns[1:])
    text = "".join(f'HOSTPATH=="{p}", RESOURCE="r{k}"\n' for k, p in enumerate(patterns))
    rules, errors = parse_rules(text, "h.rules")
    assert not errors
    ruleset = RuleSet(["h.rules"], rules)
    offered = hostpath.expand(ruleset.hostpath_patterns())
    assert offered == sorted(str(p) for p in tmp_path.iterdir())
    for path in offered:
        assert ruleset.evaluate_path(path).resource is not None, path
