"""inotify binding: real kernel events on a temp directory, read through trio."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from devplug.lib.inotify import Inotify, Mask


async def test_socket_create_and_delete_are_seen_in_order(tmp_path):
    with Inotify() as ino:
        wd = ino.add_watch(str(tmp_path), Mask.CREATE | Mask.DELETE)
        assert ino.read_events() == []  # non-blocking, nothing yet
        path = tmp_path / "a.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))  # a socket file, as gRPC and kubelet create them
        s.close()
        os.unlink(path)
        with trio.fail_after(2):
            got = []
            while len(got) < 2:
                got += await ino.wait()
        assert [(e.wd, e.name) for e in got] == [(wd, "a.sock"), (wd, "a.sock")]
        assert got[0].mask & Mask.CREATE and got[1].mask & Mask.DELETE


async def test_wait_blocks_until_an_event_then_returns_the_batch(tmp_path):
    with Inotify() as ino:
        ino.add_watch(str(tmp_path), Mask.CREATE)
        batch: list = []
        done = trio.Event()

        async def waiter():
            batch.extend(await ino.wait())
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await wait_all_tasks_blocked()  # the waiter is parked on the descriptor, nothing queued
            assert not done.is_set()
            for n in ("x", "y"):
                (tmp_path / n).write_text("")
            with trio.fail_after(2):
                await done.wait()
        while len(batch) < 2:
            batch += await ino.wait()
        assert [e.name for e in batch] == ["x", "y"]


def test_directory_removal_reports_delete_self_and_ignored(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    with Inotify() as ino:
        wd = ino.add_watch(str(d), Mask.DELETE_SELF)
        d.rmdir()
        events = ino.read_events()
        assert any(e.mask & Mask.DELETE_SELF for e in events)
        assert any(e.mask & Mask.IGNORED and e.wd == wd for e in events)
        ino.rm_watch(wd)  # already gone: not an error


def test_rm_watch_stops_events_and_errors_name_the_path(tmp_path):
    with Inotify() as ino:
        wd = ino.add_watch(str(tmp_path), Mask.CREATE)
        ino.rm_watch(wd)
        (tmp_path / "f").write_text("")
        assert not any(e.mask & Mask.CREATE for e in ino.read_events())
        with pytest.raises(FileNotFoundError) as err:
            ino.add_watch(str(tmp_path / "missing"), Mask.CREATE)
        assert err.value.filename.endswith("missing")


async def test_close_wakes_a_waiting_task_and_is_idempotent(tmp_path):
    ino = Inotify()
    ino.add_watch(str(tmp_path), Mask.CREATE)
    woken: list[BaseException] = []

    async def waiter():
        try:
            await ino.wait()
        except trio.ClosedResourceError as exc:
            woken.append(exc)

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await wait_all_tasks_blocked()  # the waiter is inside wait_readable now
            ino.close()
    assert len(woken) == 1
    ino.close()
    assert ino.closed
    with pytest.raises(trio.ClosedResourceError):
        ino.read_events()


def test_descriptor_is_nonblocking_and_cloexec():
    import fcntl

    with Inotify() as ino:
        assert fcntl.fcntl(ino.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(ino.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
