"""Ancestry: a stamp moves when a message names one of a device's ancestors, only then."""

from __future__ import annotations

import socket

from devplug.core.device import Device
from devplug.sources.udev import UdevSource
from devplug.sources.udev.ancestry import Ancestry

TTY = "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0"
USB = "/devices/pci0000:00/0000:00:14.0/usb1/1-1"


def test_only_ancestors_move_the_stamp():
    a = Ancestry()
    before = a.stamp(TTY)
    for unrelated in (TTY, "/devices/pci0000:00/0000:00:14.0/usb1/1-2", "/devices/virtual/tty/tty20",
                      USB + "/1-1:1.0/ttyUSB0/tty/ttyUSB0/child", "/devices/pci0000:00/0000:00:14.0/usb1/1-10"):
        a.note(unrelated)  # itself, a sibling port, elsewhere, below it, a name that only starts alike
    assert a.stamp(TTY) == before
    a.note(USB)
    after = a.stamp(TTY)
    assert after > before
    assert a.stamp(TTY) == after  # stable until the next one
    a.note(USB + "/1-1:1.0")
    assert a.stamp(TTY) > after


def test_lost_messages_and_another_instance_never_repeat_a_stamp():
    a = Ancestry()
    a.note(USB)
    seen = a.stamp(TTY)
    a.lost()  # ENOBUFS: what was dropped may have named anything
    assert a.stamp(TTY) > seen
    b = Ancestry()  # a source reopened after a rules reload
    assert b.stamp(TTY) not in (seen, a.stamp(TTY))


def test_a_full_table_starts_over_and_trusts_nothing_before():
    """The table is bounded: past the limit it starts over from a floor above every tick,
    so an ancestor's message that is no longer listed still moves the stamp."""
    a = Ancestry(limit=3)
    a.note(USB)
    seen = a.stamp(TTY)
    a.note(USB)  # the adapter again (replugged)
    for n in range(3):  # three other paths overflow the table
        a.note(f"/devices/virtual/tty/tty2{n}")
    assert len(a) <= 3
    assert a.stamp(TTY) > seen
    later = a.stamp(TTY)
    for n in range(3, 5):  # unrelated paths, within the limit: the stamp holds
        a.note(f"/devices/virtual/tty/tty2{n}")
    assert a.stamp(TTY) == later


def test_a_truncated_message_vouches_for_nothing_before_it(netlink):
    """A message the socket could not read whole may have named an ancestor: the source's
    stamps all move (as after an overflow)."""
    src = UdevSource(source="kernel", subsystems=frozenset({"tty"}))
    src.open()
    try:
        dev = Device(devpath=TTY, sysname="ttyUSB0")
        before = src.chain_stamp(dev)
        assert src._socket._accept(b"add@" + USB.encode() + b"\0", [], socket.MSG_TRUNC, (0, 1)) is None
        assert src.chain_stamp(dev) > before
    finally:
        src.close()
