"""netlink: a message off the socket is hostile bytes until checked; the checks are libudev's."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devplug.sources.udev.netlink import GROUP_KERNEL, GROUP_UDEV, UDEV_MONITOR_MAGIC, Parser, UeventSocket, parse

DEVPATH = "/devices/virtual/tty/tty20"


def kernel_message(*items: str, head: str = "add@" + DEVPATH) -> bytes:
    return ("\0".join((head, *items)) + "\0").encode("utf-8", "surrogateescape")


def udevd_message(*items: str, magic: int = UDEV_MONITOR_MAGIC, offset: int = 40) -> bytes:
    body = ("\0".join(items) + "\0").encode("utf-8", "surrogateescape")
    # "libudev\0", magic (big-endian), header size, properties offset and length, filters.
    header = b"libudev\0" + struct.pack(">I", magic) + struct.pack("=III", 40, offset, len(body)) + bytes(16)
    return header + body


def test_a_kernel_message_gives_its_properties():
    props = parse(kernel_message("ACTION=add", f"DEVPATH={DEVPATH}", "SUBSYSTEM=tty", "SEQNUM=7"))
    assert props == {"ACTION": "add", "DEVPATH": DEVPATH, "SUBSYSTEM": "tty", "SEQNUM": "7"}


def test_a_udevd_message_gives_its_properties():
    props = parse(udevd_message("ACTION=add", f"DEVPATH={DEVPATH}", "ID_SERIAL=a=b"))
    assert props == {"ACTION": "add", "DEVPATH": DEVPATH, "ID_SERIAL": "a=b"}  # the value keeps its "="


@pytest.mark.parametrize("items, expected", [
    # an item without "=", an empty item, an item without a key: each skipped, the rest kept
    (("junk", f"DEVPATH={DEVPATH}", "A=1"), {"DEVPATH": DEVPATH, "A": "1"}),
    ((f"DEVPATH={DEVPATH}", "", "A=1"), {"DEVPATH": DEVPATH, "A": "1"}),
    ((f"DEVPATH={DEVPATH}", "=orphan", "A=1"), {"DEVPATH": DEVPATH, "A": "1"}),
    ((f"DEVPATH={DEVPATH}", "=orphan", "junk"), {"DEVPATH": DEVPATH}),
    # a key twice: the last one, as libudev keeps it
    ((f"DEVPATH={DEVPATH}", "A=1", "A=2"), {"DEVPATH": DEVPATH, "A": "2"}),
    # bytes that are not UTF-8 stay one surrogate each, never an error
    ((f"DEVPATH={DEVPATH}", "A=\udcff\udcfe"), {"DEVPATH": DEVPATH, "A": "\udcff\udcfe"}),
])
def test_malformed_items_are_skipped_one_by_one(items, expected):
    assert parse(kernel_message(*items)) == expected


@pytest.mark.parametrize("data", [
    b"",
    kernel_message("ACTION=add"),  # no DEVPATH
    kernel_message(f"DEVPATH={DEVPATH}", head="add"),  # not ACTION@/DEVPATH
    b"add@" + DEVPATH.encode(),  # nothing after the head
    udevd_message(f"DEVPATH={DEVPATH}", magic=0xDEADBEEF),
    udevd_message(f"DEVPATH={DEVPATH}", offset=4096),  # properties past the end
    udevd_message(f"DEVPATH={DEVPATH}")[:39],  # shorter than the header
])
def test_a_malformed_message_is_none(data):
    assert parse(data) is None


def unbound_socket(uid: int = 0) -> tuple[UeventSocket, list[str]]:
    """The checks of a socket without one (they are pure): ``lost`` records ``on_lost``."""
    sock = object.__new__(UeventSocket)
    sock._uid = uid
    sock.parser = Parser()
    sock._parse = sock.parser.parse
    lost: list[str] = []
    sock.on_lost = lambda: lost.append("lost")
    return sock, lost


def creds(uid: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", 1, uid, 0))]


def test_only_root_or_our_own_uid_is_believed():
    sock, _ = unbound_socket(uid=1000)
    data = kernel_message(f"DEVPATH={DEVPATH}")
    assert sock._accept(data, creds(0), 0, (0, GROUP_KERNEL)) is not None
    assert sock._accept(data, creds(1000), 0, (0, GROUP_KERNEL)) is not None
    assert sock._accept(data, creds(1001), 0, (0, GROUP_KERNEL)) is None
    assert sock._accept(data, [], 0, (0, GROUP_KERNEL)) is None  # no credentials at all


def test_the_kernels_group_only_from_the_kernel_and_no_unicast():
    sock, _ = unbound_socket()
    data = kernel_message(f"DEVPATH={DEVPATH}")
    assert sock._accept(data, creds(0), 0, (4242, GROUP_KERNEL)) is None  # a process posing as the kernel
    assert sock._accept(data, creds(0), 0, (4242, 0)) is None  # sent to us alone
    assert sock._accept(udevd_message(f"DEVPATH={DEVPATH}"), creds(0), 0, (4242, GROUP_UDEV)) is not None


def test_a_truncated_message_is_dropped_and_reported_lost():
    sock, lost = unbound_socket()
    assert sock._accept(kernel_message(f"DEVPATH={DEVPATH}"), creds(0), socket.MSG_TRUNC, (0, GROUP_KERNEL)) is None
    assert lost == ["lost"]


# ---- the memo (Parser): a message seen before but for its SEQNUM is not parsed again ------

_KEYS = ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM", "USEC_INITIALIZED", "A", "ID_SERIAL", ""]
_VALUES = ["", "1", "2", "add", DEVPATH, "a=b", "\udcff", "SEQNUM=3"]


def _item(draw) -> str:
    key = draw(st.sampled_from(_KEYS))
    return draw(st.sampled_from([f"{key}={draw(st.sampled_from(_VALUES))}", key, "junk"]))


@st.composite
def messages(draw) -> bytes:
    items = [f"DEVPATH={DEVPATH}"] + [_item(draw) for _ in range(draw(st.integers(0, 6)))]
    items = draw(st.permutations(items))
    if draw(st.booleans()):
        data = udevd_message(*items)
        return data + b"SEQNUM=9\0" if draw(st.booleans()) else data  # past the property block
    return kernel_message(*items, head=draw(st.sampled_from(["add@" + DEVPATH, "remove@" + DEVPATH, "add"])))


@settings(max_examples=300, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=12), st.integers(1, 4))
def test_the_memo_gives_what_parse_gives_whatever_came_before(history, limit):
    parser = Parser(limit=limit)
    for data in history + history[::-1]:
        got = parser.parse(data)
        assert got == parse(data)
        if got is not None:
            got["MUTATED"] = "1"  # the caller's own dict: the memo does not see this


def test_a_device_repeating_itself_is_parsed_once_per_action():
    parser = Parser()
    for seq in range(10, 20):
        for action in ("remove", "add"):
            data = kernel_message(f"ACTION={action}", f"DEVPATH={DEVPATH}", "SUBSYSTEM=tty", f"SEQNUM={seq}",
                                  "MAJOR=4", head=f"{action}@{DEVPATH}")
            assert parser.parse(data)["SEQNUM"] == str(seq)
            usec = udevd_message(f"ACTION={action}", f"DEVPATH={DEVPATH}", f"SEQNUM={seq}",
                                 f"USEC_INITIALIZED={seq * 1000}", "ID_SERIAL=x")
            assert parser.parse(usec) == parse(usec)
    assert parser.hits == 36  # 40 messages, 4 different but for their volatile values


def test_the_memo_is_bounded():
    parser = Parser(limit=8, max_message=256)
    for n in range(100):  # a gadget replugging with new strings
        parser.parse(kernel_message(f"DEVPATH={DEVPATH}", f"ID_SERIAL={n}", "SEQNUM=1"))
    assert len(parser._memo) == 8
    big = kernel_message(f"DEVPATH={DEVPATH}", "A=" + "x" * 300, "SEQNUM=1")
    assert parser.parse(big) == parse(big) and big.replace(b"\0SEQNUM=1", b"") not in parser._memo
