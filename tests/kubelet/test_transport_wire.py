"""gRPC framing on HTTP/2 without I/O: grpc-message encoding, grpc-timeout, request bodies."""

from __future__ import annotations

import urllib.parse

import pytest

from devplug.kubelet.transport.wire import PREFIX, MessageBody, RpcError, Status, frame, parse_timeout, percent_encode


@pytest.mark.parametrize("text", ["plain ascii: ok", "ümlaut 100%", "tab\there", "新しい", "%%", ""])
def test_grpc_message_is_percent_encoded_utf8_that_decodes_back(text):
    raw = percent_encode(text)
    assert all(0x20 <= b <= 0x7E for b in raw)
    assert urllib.parse.unquote(raw.decode("ascii"), errors="strict") == text


@pytest.mark.parametrize(("value", "seconds"), [(b"1H", 3600.0), (b"2M", 120.0), (b"30S", 30.0), (b"150m", 0.15),
                                                (b"99999999u", 99.999999), (b"1n", 1e-9)])
def test_grpc_timeout_units(value, seconds):
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"12x", b"-1S", b"1.5S", b" 1S"])
def test_malformed_grpc_timeouts_are_refused(value):
    with pytest.raises(ValueError, match="malformed grpc-timeout"):
        parse_timeout(value)


def test_a_request_body_in_pieces():
    body = MessageBody(limit=100)
    message = frame(b"hello")
    for k in range(len(message)):
        body.feed(message[k:k + 1])
    assert body.message() == b"hello"


@pytest.mark.parametrize(("data", "code", "words"), [
    (PREFIX.pack(1, 3) + b"abc", Status.UNIMPLEMENTED, "compressed"),
    (PREFIX.pack(2, 3), Status.INTERNAL, "flag 2"),
    (PREFIX.pack(0, 101), Status.RESOURCE_EXHAUSTED, "larger than max (101 vs. 100)"),
    (frame(b"a") + frame(b"b"), Status.INTERNAL, "more than one"),
])
def test_what_a_request_body_refuses_as_it_arrives(data, code, words):
    body = MessageBody(limit=100)
    with pytest.raises(RpcError) as err:
        body.feed(data[:5])  # the prefix alone decides the first three
        body.feed(data[5:])
    assert err.value.code == code and words in err.value.message


@pytest.mark.parametrize(("data", "words"), [(b"", "no request message"), (frame(b"abc")[:6], "ended before")])
def test_an_incomplete_request_is_internal(data, words):
    body = MessageBody(limit=100)
    body.feed(data)
    with pytest.raises(RpcError) as err:
        body.message()
    assert err.value.code == Status.INTERNAL and words in err.value.message
