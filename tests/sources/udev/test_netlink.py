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
_VALUES = ["", "1", "2", "add", DEVPATH, "a=b", "\udcff", "SEQNUM=3", "{n}"]  # {n}: differs per message
_TRAILERS = [b"", b"SEQNUM=9\0", b"USEC_INITIALIZED=9\0", b"\0USEC_INITIALIZED=7\0"]  # past udevd's block


@st.composite
def devices(draw) -> list[bytes]:
    """One device's messages: the same items, with other numbers where an item says ``{n}``
    (what SEQNUM and USEC_INITIALIZED do), so the memo is asked for what it kept."""
    items = [f"DEVPATH={DEVPATH}"]
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(_KEYS))
        items.append(draw(st.sampled_from([f"{key}={draw(st.sampled_from(_VALUES))}", key, "junk"])))
    items = draw(st.permutations(items))
    udevd, trailer = draw(st.booleans()), draw(st.sampled_from(_TRAILERS))
    head = draw(st.sampled_from(["add@" + DEVPATH, "remove@" + DEVPATH, "add"]))
    out = []
    for n in draw(st.lists(st.sampled_from(["1", "22", "333", ""]), min_size=1, max_size=3)):
        these = [i.replace("{n}", n) for i in items]
        out.append(udevd_message(*these) + trailer if udevd else kernel_message(*these, head=head))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(devices(), min_size=1, max_size=6), st.integers(1, 4))
def test_the_memo_gives_what_parse_gives_whatever_came_before(devs, limit):
    parser = Parser(limit=limit)
    history = [m for d in devs for m in d]
    for data in history + history[::-1]:
        got = parser.parse(data)
        assert got == parse(data)
        if got is not None:
            got["MUTATED"] = "1"  # the caller's own dict: the memo does not see this


def _udevd_raw(body: bytes, trailer: bytes = b"") -> bytes:
    header = b"libudev\0" + struct.pack(">I", UDEV_MONITOR_MAGIC) + struct.pack("=III", 40, 40, len(body)) + bytes(16)
    return header + body + trailer


@pytest.mark.parametrize("messages", [
    # a volatile key twice: the last one counts, whatever the memo kept
    [kernel_message(f"DEVPATH={DEVPATH}", f"SEQNUM={n}", "A=1", "SEQNUM=5") for n in (1, 2)],
    [udevd_message(f"DEVPATH={DEVPATH}", f"SEQNUM={n}", f"USEC_INITIALIZED={n}", "USEC_INITIALIZED=8")
     for n in (1, 2)],
    [udevd_message(f"DEVPATH={DEVPATH}", f"SEQNUM={n}", "A=1", "SEQNUM=5") for n in (1, 2)],
    # a volatile key with no value, then a message without it (hypothesis found this one)
    [kernel_message(f"DEVPATH={DEVPATH}", "SEQNUM="), kernel_message(f"DEVPATH={DEVPATH}")],
    [udevd_message(f"DEVPATH={DEVPATH}", "SEQNUM=", "USEC_INITIALIZED="), udevd_message(f"DEVPATH={DEVPATH}")],
    [udevd_message(f"DEVPATH={DEVPATH}", "SEQNUM=1", "USEC_INITIALIZED="), udevd_message(f"DEVPATH={DEVPATH}", "SEQNUM=2")],
    # udevd's property block ends inside an item: what follows it is not the item's value
    [_udevd_raw(f"DEVPATH={DEVPATH}\0SEQNUM=1\0USEC_INITIALIZED={n}".encode(), b"77\0") for n in (5, 6)],
    [_udevd_raw(f"DEVPATH={DEVPATH}\0SEQNUM={n}".encode(), b"\0USEC_INITIALIZED=3\0") for n in (5, 6)],
    [_udevd_raw(f"DEVPATH={DEVPATH}\0SEQNUM={n}\0".encode(), b"USEC_INITIALIZED=3\0") for n in (5, 6)],
])
def test_the_memo_holds_at_the_edges(messages):
    parser = Parser()
    for data in messages + messages:
        assert parser.parse(data) == parse(data)


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
