"""DbWatch: which writes of udevd's database repeat a device's event (real inotify, no udevd)."""

from __future__ import annotations

import os
from pathlib import Path

from devplug.sources.udev.db import db_id, read_db
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
        watch.seen(db_id(dev), "add", props, True, entry.stamp)
        assert list(watch.changed()) == []
        assert watch.skipped == 1
        # udevd writes it again (a change event's rules ran): that content was not seen.
        udevd_writes(tmp_path, "c188:0", DB + "E:NEW=1\n")
        assert list(watch.changed()) == [("add", props)]
        # An event read with no database file at all repeats on the first write.
        watch.seen(db_id(dev), "change", props, True, None)
        udevd_writes(tmp_path, "c188:0", DB)
        assert list(watch.changed()) == [("change", props)]
        # A device that left is not repeated.
        watch.seen(db_id(dev), "remove", props, False)
        udevd_writes(tmp_path, "c188:0", DB)
        assert list(watch.changed()) == []
    finally:
        watch.close()


def test_a_file_is_read_again_only_after_udevd_wrote_it_or_its_device_left(tmp_path):
    watch = DbWatch(str(tmp_path))
    watch.open()
    try:
        assert watch.entry("c188:0") is None and watch.reads == 1  # no file yet: that is kept too
        assert watch.entry("c188:0") is None and watch.reads == 1
        udevd_writes(tmp_path, "c188:0", DB)
        list(watch.changed())  # inotify: written
        first = watch.entry("c188:0")
        assert first is not None and first.properties["ID_VENDOR_ID"] == "0403" and watch.reads == 2
        for _ in range(3):  # the device's next events read no file
            assert watch.entry("c188:0") is first
        assert watch.reads == 2
        udevd_writes(tmp_path, "c188:0", DB + "E:NEW=1\n")
        list(watch.changed())
        again = watch.entry("c188:0")
        assert again is not None and again.properties["NEW"] == "1" and watch.reads == 3
        # Its device left: udevd deletes the file, which inotify does not report here; another
        # device under the same name must not be read as this one. Nor is a file opened
        # before udevd writes one again (the device's next add, read before udevd ran).
        watch.seen("c188:0", "remove", {}, False)
        (tmp_path / "c188:0").unlink()
        assert watch.entry("c188:0") is None and watch.reads == 3
        # Even with the old file still there (udevd has not handled the remove yet).
        watch.seen("c188:0", "remove", {}, False)
        udevd_writes(tmp_path, "c188:0", DB)
        assert watch.entry("c188:0") is None and watch.reads == 3
        list(watch.changed())  # udevd's write for the next add: read it
        back = watch.entry("c188:0")
        assert back is not None and back.properties["ID_VENDOR_ID"] == "0403" and watch.reads == 4
    finally:
        watch.close()


def test_what_is_kept_is_bounded(tmp_path):
    watch = DbWatch(str(tmp_path), limit=8)
    watch.open()
    try:
        for n in range(100):  # a gadget replugging under new names
            watch.entry(f"c188:{n}")
            watch.seen(f"c189:{n}", "remove", {}, False)
        assert len(watch._entries) == 8
    finally:
        watch.close()
