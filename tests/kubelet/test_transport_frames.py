"""The DATA frames the transport frames itself are h2's own, byte for byte.

``Outbound._data_frame`` writes DATA frames without h2 (on the event path) and counts them
against h2's send windows: if an h2 release changed either, kubelet would get a corrupt
stream or h2 would over- or under-send later. Both are checked against
``H2Connection.send_data`` on identical connections.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import pytest

from devplug.kubelet.transport.calls import Limits
from devplug.kubelet.transport.outbound import Outbound


def _server_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection, h2.connection.H2Connection, int]:
    """A client and two servers that have seen the same preface, settings and request."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"),
                              (b":authority", b"localhost"), (b"content-type", b"application/grpc")])
    hello = client.data_to_send()
    servers = []
    for _ in range(2):
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        server.receive_data(hello)
        servers.append(server)
    client.receive_data(servers[0].data_to_send())
    servers[1].data_to_send()
    return client, servers[0], servers[1], sid


@pytest.mark.parametrize("sizes", [(0,), (5,), (1000,), (16384,), (7, 16384, 300)])
def test_hand_framed_data_is_h2s_bytes_and_windows(sizes):
    client, theirs, ours, sid = _server_pair()
    a, b = socket.socketpair()
    try:
        out = Outbound(a, ours, Limits())
        for server in (theirs, ours):
            server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        expected = theirs.data_to_send()
        got = bytes(ours.data_to_send())
        for n in sizes:
            chunk = bytes(range(256)) * (n // 256) + bytes(n % 256)
            theirs.send_data(sid, chunk)
            out._data_frame(sid, memoryview(chunk), ours, ours.streams[sid])
        expected += theirs.data_to_send()
        got += bytes(out.out)
        assert got == expected
        assert out.queued == len(out.out)
        assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
        assert ours.local_flow_control_window(sid) == theirs.local_flow_control_window(sid)
        # The client reads them as DATA of the stream, flow-controlled by their length.
        events = client.receive_data(got)
        data = [e for e in events if isinstance(e, h2.events.DataReceived)]
        assert [e.flow_controlled_length for e in data] == list(sizes)
        # And h2 can go on after them: a trailer ends the stream cleanly on both.
        for server in (theirs, ours):
            server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        assert ours.data_to_send() == theirs.data_to_send()
    finally:
        a.close()
        b.close()


class _Handle:
    def __init__(self) -> None:
        self.written: list[object] = []

    def on_written(self, tag: object, woke_ns: int, send_ns: int) -> None:
        self.written.append(tag)


@pytest.mark.parametrize("sizes", [(5,), (16379,), (16380, 40), (16384,), (40000,), (32768, 9), (70000,), (7, 9)])
def test_a_state_stream_written_at_once_sends_what_the_general_path_sends(sizes):
    """``Outbound._write_state`` (one list that fits, framed at once) against ``_pump`` on
    an identical connection: the same bytes reach the socket, the same windows are left,
    the same messages are confirmed; a list longer than a frame goes in several (40,000
    bytes: three), and one that does not fit the window (70,000 bytes: past the 65,535
    initial window) goes the general way on both."""
    from devplug.kubelet.transport.calls import Stream

    client, general, fast, sid = _server_pair()
    results = []
    for server, shortcut in ((general, False), (fast, True)):
        a, b = socket.socketpair()
        try:
            out = Outbound(a, server, Limits())
            server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            stream = Stream(sid, None, None)
            stream.headers_sent = True
            stream.handle = handle = _Handle()  # type: ignore[assignment]
            lists = iter(enumerate(bytes([n % 251]) * n for n in sizes))
            stream.source = lambda: next(lists, (None, None))
            if not shortcut:
                out._write_state = lambda s: False  # type: ignore[method-assign]
            for _ in sizes:
                stream.cooling = False  # as the writer task leaves it between changes
                out.changed(stream, 0)
            b.setblocking(False)
            got = b""
            try:
                while chunk := b.recv(1 << 20):
                    got += chunk
            except BlockingIOError:
                pass
            results.append((got, server.outbound_flow_control_window, server.local_flow_control_window(sid),
                            handle.written, out.queued, len(out.out)))
        finally:
            a.close()
            b.close()
    assert results[0] == results[1]
    got = results[1][0]
    # What a client makes of it: the lists, in order, as far as the window let them go.
    events = client.receive_data(got)
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"".join(bytes([n % 251]) * n for n in sizes)[:len(data)]
    assert len(data) == min(sum(sizes), 65535)
