"""DbWatch: which writes of udevd's database repeat a device's event (real inotify, no udevd)."""

from __future__ import annotations

import os
from pathlib import Path

from devplug.sources.udev.db import read_db
from devplug.sources.udev.dbwatch import DbWatch
from .test_db import DB, tty


def udevd_writes(db_dir: Path, name: str, text: str) -> None:
    """As udevd does: a hidden temporary file renamed into place (a new inode each time)."""
    tmp = db_dir / f".#{name}tmp"
    tmp.write_text(text)
    os.rename(tmp, db_dir / name)


def test_a_write_the_event_already_read_is_not_repeated_a_later_one_is(tmp_path):
    dev = tty()
    props = dict(dev.properties)
    watch = DbWatch(str(tmp_path))
    watch.open()
    try:
        # A busy daemon: udevd wrote the entry before the kernel's event was read.
        udevd_writes(tmp_path, "c188:0", DB)
        entry = read_db(dev, str(tmp_path))
        watch.seen("add", dev, props, True, entry.stamp)
        assert list(watch.changed()) == []
        assert watch.skipped == 1
        # udevd writes it again (a change event's rules ran): that content was not seen.
        udevd_writes(tmp_path, "c188:0", DB + "E:NEW=1\n")
        assert list(watch.changed()) == [("add", props)]
        # An event read with no database file at all repeats on the first write.
        watch.seen("change", dev, props, True, None)
        udevd_writes(tmp_path, "c188:0", DB)
        assert list(watch.changed()) == [("change", props)]
        # A device that left is not repeated.
        watch.seen("remove", dev, props, False)
        udevd_writes(tmp_path, "c188:0", DB)
        assert list(watch.changed()) == []
    finally:
        watch.close()
