"""The writing half of a connection: h2's bytes to the kernel, synchronously first.

h2 never does I/O and never buffers for flow control, so this does both. What h2 produces
goes to ``send(2)`` at once, so a :meth:`ServerStream.send` from the event path costs no
task switch; bytes the kernel does not take wait in ``out`` for the writer task. While
``out`` holds more than ``limits.out_high`` no more DATA goes into h2 (and the reader stops
reading): a client that does not read costs a bounded buffer, and its state streams
coalesce meanwhile. A message the peer's flow-control window holds back stays with its
stream (``Stream.data``), and its trailers wait for its last byte. DATA frames of a stream
h2 says is open are framed here (:meth:`Outbound._data_frame`, counted against h2's
windows); everything else (headers, trailers, resets, settings) is h2's.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import time
from typing import Any, Optional

import h2.connection
import h2.errors
import h2.exceptions
import h2.stream
import trio
from h2.connection import ConnectionState
from h2.stream import StreamState

from ...lib.logs import kv
from .calls import Limits, Stream
from .wire import RESPONSE_HEADERS, Status, trailers

log = logging.getLogger("devplug.kubelet.transport")

_ERR = h2.errors.ErrorCodes
#: A DATA frame's header (RFC 9113 §4.1): length (24 bits) and type 0 in one word, flags, stream.
_DATA_HEADER = struct.Struct(">IBI")
#: A tuple, not a set: ConnectionState is a plain Enum, whose hash is a Python call.
_CONN_OPEN = (ConnectionState.SERVER_OPEN, ConnectionState.CLIENT_OPEN)
#: Stream states in which h2 lets DATA go out (and does nothing else when it does).
_STREAM_SENDS = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})


def _frames_here(h2conn: h2.connection.H2Connection, h2stream: Optional[h2.stream.H2Stream]) -> bool:
    """Whether DATA of this stream may be framed here (:meth:`Outbound._data_frame`): h2 says
    the connection and the stream are open, so ``send_data`` would only count the windows."""
    return (h2stream is not None and h2conn.state_machine.state in _CONN_OPEN
            and h2stream.state_machine.state in _STREAM_SENDS)


class Outbound:
    """State and writing of one connection; :class:`~.connection.Connection` adds the rest."""

    def __init__(self, sock: socket.socket, conn: h2.connection.H2Connection, limits: Limits) -> None:
        self.sock = sock
        self.h2 = conn
        self.limits = limits
        self.sending: dict[int, Stream] = {}  # streams with output waiting (insertion order)
        self.out = bytearray()
        self.queued = 0  # bytes ever put in ``out``
        self.written = 0  # bytes ever taken by the kernel
        self.closing = False
        self._written_marks: collections.deque[tuple[int, Stream, Any]] = collections.deque()
        self._cooling: list[Stream] = []
        self._wake = trio.Event()  # the writer: ``out`` waits for the socket, or a burst ended
        self._room = trio.Event()  # the reader: ``out`` went below out_high

    def _forget(self, stream: Stream) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    async def _writer(self) -> None:
        """Runs once the event path yields after a synchronous write (the newest message of a
        burst goes out now), and while the socket is full."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._cooling:
                for stream in self._cooling:
                    stream.cooling = False
                self._cooling.clear()
                self.drive()
            while self.out and not self.closing:
                await trio.lowlevel.wait_writable(self.sock)
                self.drive()
                if len(self.out) <= self.limits.out_high:
                    self._room.set()
            self._room.set()  # also when a synchronous write emptied ``out``

    # ---- what goes out ----------------------------------------------------------------------
    def _send_headers(self, stream: Stream) -> None:
        if not stream.headers_sent and not stream.done:
            self.h2.send_headers(stream.id, RESPONSE_HEADERS)
            stream.headers_sent = True

    def queue_message(self, stream: Stream, message: bytes, tag: Any, woke_ns: Optional[int],
                      drive: bool = True) -> None:
        """A framed message for ``stream``, replacing one that has not started to go out."""
        stream.next, stream.next_tag = message, tag
        if drive:
            self.changed(stream, woke_ns)
        elif stream.id not in self.sending:
            self.sending[stream.id] = stream

    def changed(self, stream: Stream, woke_ns: Optional[int]) -> None:
        """``stream`` has something new: written now unless it is busy or cooling (then the
        writer task sends the newest once the event path yields, or the socket drains)."""
        busy = stream.data is not None or stream.cooling
        before = self.queued
        if busy or self.sending or stream.source is None or not self._write_state(stream):
            if stream.source is not None:
                stream.dirty = True
            if stream.id not in self.sending:
                self.sending[stream.id] = stream
            if busy:
                return
            self.drive(woke_ns)
        elif self.out:  # framed, with h2's own bytes before it: nothing else to ask h2
            self._send_out(woke_ns if woke_ns is not None else time.perf_counter_ns())
        if self.queued != before and stream.handle is not None and not stream.done:
            stream.cooling = True
            self._cooling.append(stream)
            self._wake.set()

    def _write_state(self, stream: Stream) -> bool:
        """The common case of a state stream changing, framed at once: nothing else of this
        connection waits, and the source's newest list fits both windows (in as many frames
        as the peer's frame size needs). What ``_pump`` would do for it, without its
        per-stream bookkeeping (each line counts on a CPU that just woke: this is the last
        step before ``send(2)``). False: the general path takes it (with the list, if one was
        taken, as the stream's next message)."""
        h2conn = self.h2
        h2stream = h2conn.streams.get(stream.id)
        if (self.closing or stream.done or not stream.headers_sent or stream.next is not None
                or not _frames_here(h2conn, h2stream)):
            return False
        assert stream.source is not None and h2stream is not None
        stream.dirty = False
        tag, message = stream.source()
        if message is None:
            return True  # this stream has the newest already
        n = len(message)
        if (n > h2conn.outbound_flow_control_window or n > h2stream.outbound_flow_control_window
                or len(self.out) >= self.limits.out_high):
            stream.next, stream.next_tag = message, tag
            return False
        self._take()  # h2's frames (a WINDOW_UPDATE, a PING's ACK) go first
        frame_size = h2conn.max_outbound_frame_size
        if n <= frame_size:
            self._data_frame(stream.id, message, h2conn, h2stream)
        else:
            view = memoryview(message)
            for offset in range(0, n, frame_size):
                self._data_frame(stream.id, view[offset:offset + frame_size], h2conn, h2stream)
        if stream.handle is not None:
            self._written_marks.append((self.queued, stream, tag))
        return True

    def finish(self, stream: Stream, code: Status, message: str = "",
               extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """End a call. OK: trailers after the messages queued; trailers-only when nothing was
        sent. An error drops what is queued, and resets the stream if it interrupts a
        half-written message."""
        if stream.done:
            return
        if code != Status.OK:
            stream.next, stream.dirty = None, False
        if not stream.idle:
            if code == Status.OK:
                stream.trailers = (code, message)
                self.sending.setdefault(stream.id, stream)
            else:
                self._reset(stream.id, _ERR.CANCEL)
                self._forget(stream)
            return
        headers = trailers(code, message)
        if not stream.headers_sent:
            headers = [*RESPONSE_HEADERS, *headers, *extra]
        try:
            self.h2.send_headers(stream.id, headers, end_stream=True)
            if stream.body is not None:  # the request is still coming: tell the client to stop
                self.h2.reset_stream(stream.id, _ERR.NO_ERROR)
        except h2.exceptions.StreamClosedError:
            pass  # reset by the client in data not read yet
        self._forget(stream)

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            pass

    def drive(self, woke_ns: Optional[int] = None) -> None:
        """Hand what flow control allows to h2 and h2's bytes to the kernel, now."""
        if self.closing:
            return
        if woke_ns is None:
            woke_ns = time.perf_counter_ns()
        try:
            while True:
                more = self._pump() if self.sending else False
                if self.closing:
                    return
                self._take()
                if self.out and not self._send_out(woke_ns):
                    return
                if not more:
                    return
        except h2.exceptions.ProtocolError as exc:  # h2 and we disagree: this connection only
            log.warning("gRPC connection dropped", extra=kv(error=repr(exc)))
            self._drop()

    def _send_out(self, woke_ns: int) -> bool:
        """``out`` to the kernel now; False when some of it must wait for room (the writer
        task takes over) or the peer is gone."""
        send_ns = time.perf_counter_ns()
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            n = 0
        except OSError:  # the peer is gone
            self._drop()
            return False
        if n:
            del self.out[:n]
            self.written += n
            if self._written_marks:
                self._confirm(woke_ns, send_ns)
        if self.out:
            self._wake.set()  # the writer waits for room
            return False
        return True

    def _take(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.out += data
            self.queued += len(data)

    def _pump(self) -> bool:
        """Move messages into h2 as far as the windows allow; True when it stopped because
        ``out`` is full (more could go once the kernel takes it)."""
        h2conn = self.h2
        frame_size = h2conn.max_outbound_frame_size
        for stream in list(self.sending.values()):
            if stream.done:
                continue
            sid = stream.id
            try:
                while True:
                    if stream.data is None and not self._start(stream):
                        break
                    if len(self.out) >= self.limits.out_high:
                        return True
                    h2stream = h2conn.streams.get(sid)
                    if _frames_here(h2conn, h2stream):
                        assert h2stream is not None
                        room = min(h2conn.outbound_flow_control_window, h2stream.outbound_flow_control_window,
                                   frame_size)
                        if room <= 0:
                            break  # a WINDOW_UPDATE will resume it
                        self._take()  # h2's frames (the headers) go first
                        chunk = memoryview(stream.data)[stream.offset:stream.offset + room]
                        self._data_frame(sid, chunk, h2conn, h2stream)
                        stream.offset += len(chunk)
                    else:  # h2 says why not (a reset stream, a closed connection)
                        room = min(h2conn.local_flow_control_window(sid), frame_size)
                        if room <= 0:
                            break
                        end = stream.offset + room
                        h2conn.send_data(sid, memoryview(stream.data)[stream.offset:end])
                        stream.offset = min(end, len(stream.data))
                        self._take()
                    if stream.offset == len(stream.data):
                        stream.data = None
                        if stream.handle is not None:
                            self._written_marks.append((self.queued, stream, stream.tag))
                if stream.idle:
                    del self.sending[sid]
                    if stream.trailers is not None:
                        code, message = stream.trailers
                        h2conn.send_headers(sid, trailers(code, message), end_stream=True)
                        self._forget(stream)
            except h2.exceptions.StreamClosedError:  # reset by the client in data not read yet
                self._forget(stream)
        return False

    def _data_frame(self, sid: int, chunk: bytes | memoryview, h2conn: h2.connection.H2Connection,
                    h2stream: h2.stream.H2Stream) -> None:
        """One DATA frame, framed here and counted against h2's send windows as
        ``H2Connection.send_data`` would: what h2 adds for an open stream on an open
        connection (two state-machine steps that change nothing, a frame object, its
        serialisation, debug logging) was ~70 µs of each list on the event path.
        ``tests/kubelet/test_transport_frames.py`` holds this to h2's own bytes and windows."""
        n = len(chunk)
        out = self.out
        out += _DATA_HEADER.pack(n << 8, 0, sid)
        out += chunk
        self.queued += _DATA_HEADER.size + n
        h2conn.outbound_flow_control_window -= n
        h2stream.outbound_flow_control_window -= n

    def _start(self, stream: Stream) -> bool:
        """Take the stream's next message to write: a queued one, else its source's newest."""
        if stream.next is not None:
            stream.data, stream.tag, stream.next = stream.next, stream.next_tag, None
        elif stream.dirty and stream.source is not None:
            stream.dirty = False
            tag, message = stream.source()
            if message is None:
                return False
            stream.data, stream.tag = message, tag
        else:
            return False
        stream.offset = 0
        return True

    def _confirm(self, woke_ns: int, send_ns: int) -> None:
        marks = self._written_marks
        while marks and marks[0][0] <= self.written:
            _, stream, tag = marks.popleft()
            handle = stream.handle
            if handle is not None and handle.on_written is not None and not stream.done:
                handle.on_written(tag, woke_ns, send_ns)
