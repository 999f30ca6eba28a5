"""The glob engine against glibc's own ``fnmatch(3)`` (through ctypes), the way udevd calls it.

udevd never calls ``setlocale``, so it matches in the C locale: byte by byte. Python sets
LC_CTYPE from the environment at start, so the reference runs with LC_CTYPE and LC_COLLATE
set to "C" for the duration of each test (and restored).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import locale
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devplug.core.rules.fnmatch import Glob, elements, fnmatch, nfa_match, to_regex

FNM_PATHNAME = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
_libc.fnmatch.restype = ctypes.c_int


@pytest.fixture(autouse=True)
def c_locale():
    assert "POSIXLY_CORRECT" not in os.environ  # glibc would stop treating '[^' as negation
    saved = {cat: locale.setlocale(cat) for cat in (locale.LC_CTYPE, locale.LC_COLLATE)}
    for cat in saved:
        locale.setlocale(cat, "C")
    yield
    for cat, value in saved.items():
        locale.setlocale(cat, value)


def glibc(pattern: bytes, value: bytes, pathname: bool) -> bool:
    return _libc.fnmatch(pattern, value, FNM_PATHNAME if pathname else 0) == 0


def ours(pattern: bytes, value: bytes, pathname: bool) -> bool:
    dec = "utf-8", "surrogateescape"
    return fnmatch(pattern.decode(*dec), value.decode(*dec), pathname=pathname)


# Pieces that exercise glibc's parser: brackets, classes, collating symbols, escapes, ranges.
_SPECIAL = [b"*", b"?", b"[", b"]", b"!", b"^", b"-", b"\\", b"/", b".", b":", b"="]
_SNIPPETS = [b"[:alpha:]", b"[:digit:]", b"[:upper:]", b"[:space:]", b"[:punct:]", b"[:foo:]", b"[:",
             b"[=a=]", b"[=", b"[.a.]", b"[.-.]", b"[.ab.]", b"[.", b"[!", b"[^", b"[]", b"a-z", b"z-a"]
_PLAIN = [b"a", b"b", b"z", b"0", b"9", b"A", b" ", b"\x80", b"\xc3\xa9", b"\xff", b"\x01"]
pattern_st = st.lists(st.sampled_from(_SPECIAL + _SNIPPETS + _PLAIN), max_size=12).map(b"".join)
value_st = st.lists(st.sampled_from(_SPECIAL + _PLAIN + [b"[:", b"]]", b"a/b"]), max_size=12).map(b"".join)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=pattern_st, value=value_st, pathname=st.booleans())
def test_same_answer_as_glibc(pattern, value, pathname):
    expected = glibc(pattern, value, pathname)
    assert ours(pattern, value, pathname) is expected
    # The set-of-states fallback must agree too, whichever path a pattern takes.
    assert nfa_match(elements(pattern, pathname), value, pathname) is expected


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.binary(max_size=16).filter(lambda b: b"\0" not in b),
       value=st.binary(max_size=16).filter(lambda b: b"\0" not in b))
def test_arbitrary_bytes_same_answer_as_glibc(pattern, value):
    for pathname in (False, True):
        assert ours(pattern, value, pathname) is glibc(pattern, value, pathname)


@pytest.mark.parametrize("pattern, value, expected", [
    ("[a-", "[a-", False),           # a range to the end of the pattern: glibc never matches
    ("[ab", "[ab", True),            # unterminated and nothing matched: '[' is a character
    ("[ab", "a", False),             # ... but a byte that matched an element loses
    ("[[:alpha:]", "[[:alpha:]", False),
    ("[[:foo:]]", "a", False),       # unknown class: the pattern fails
    ("[[.-.]]", "-", True),
    ("[z-a]", "m", False),
    ("?", "é", False),               # C locale: '?' is one byte of the two of 'é'
    ("??", "é", True),
    ("[!a]", "/", True),
    ("a\\", "a\\", False),           # a trailing backslash never matches
])
def test_glibc_corners(pattern, value, expected):
    assert fnmatch(pattern, value) is expected
    assert glibc(pattern.encode(), value.encode(), False) is expected


@pytest.mark.parametrize("pattern, value, expected", [
    ("/dev/*", "/dev/a/b", False),
    ("/dev/*/b", "/dev/a/b", True),
    ("/dev/[!a]", "/dev//", False),
    ("*\\/", "x/", False),           # glibc: after a star an escaped '/' never matches
    ("\\*\\/", "*/", True),
    ("/dev/tty[^0]", "/dev/tty1", True),
    ("/x/*", "/x/.hidden", True),    # no FNM_PERIOD: '*' matches dot-files
])
def test_pathname(pattern, value, expected):
    assert fnmatch(pattern, value, pathname=True) is expected
    assert glibc(pattern.encode(), value.encode(), True) is expected


def test_many_stars_compile_to_one_linear_regex():
    pattern = "*a" * 20 + "*b"
    assert to_regex(pattern.encode(), False) is not None
    glob = Glob((pattern,))
    assert not glob.matches("a" * 126)
    assert glob.matches("a" * 125 + "b")
