"""One HTTP/2 connection of the gRPC server: h2's state machine over a non-blocking socket.

The reader hands what arrives to h2 and acts on its events: a call starts (its method,
encoding and deadline checked), its request arrives (size-checked as it comes), it is
dispatched once complete; a reset forgets it. Writing is :class:`~.outbound.Outbound`'s.
Three tasks per connection, none on a timer unless a call has a deadline: the reader, the
writer (after a synchronous write, and while the socket is full) and the deadline watch.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Mapping

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ...lib.logs import kv
from .calls import Limits, Method, ServerStream, Stream
from .outbound import Outbound
from .wire import MessageBody, RpcError, Status, frame, parse_timeout

log = logging.getLogger("devplug.kubelet.transport")

RECV_SIZE = 65536
_ERR = h2.errors.ErrorCodes


def goaway_frame(last_stream_id: int, code: int = 0) -> bytes:
    """A GOAWAY frame, built here because h2 closes its state machine when it sends one, and
    the first GOAWAY of a graceful stop must leave the open calls running."""
    return struct.pack(">I", 8)[1:] + b"\x07\x00" + struct.pack(">III", 0, last_stream_id & 0x7FFFFFFF, code)


def new_h2(limits: Limits) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
    })
    return conn


class Connection(Outbound):
    """One HTTP/2 connection: reading, calls, deadlines and ending (writing: :class:`Outbound`)."""

    def __init__(self, sock: socket.socket, methods: Mapping[bytes, Method], limits: Limits,
                 on_closed: Callable[[Connection], None]) -> None:
        super().__init__(sock, new_h2(limits), limits)
        self.methods = methods
        self.scope = trio.CancelScope(shield=True)  # only the server ends a connection
        self.streams: dict[int, Stream] = {}
        self.deadlines: dict[int, float] = {}
        self.buffered = 0  # request bytes held for calls whose request is incomplete
        self.draining = False  # a GOAWAY went out: no new calls
        self._on_closed = on_closed
        self._new_deadlines: list[Stream] = []
        self._deadline_changed = trio.Event()

    @property
    def idle(self) -> bool:
        return not self.streams

    def held(self) -> int:
        """Bytes this connection holds of its own (not the shared messages it writes)."""
        return len(self.out) + self.buffered

    # ---- the tasks ------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until the peer leaves, breaks the protocol, or the server ends the scope."""
        try:
            self.h2.initiate_connection()
            self.drive()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._deadline_watch)
                await self._reader()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug of ours: this connection ends, the server and the daemon do not
            log.exception("gRPC connection failed")
        finally:
            self._close()

    async def _reader(self) -> None:
        while not self.closing:
            if len(self.out) > self.limits.out_high:  # the peer does not read: neither do we
                self._room = trio.Event()
                self._wake.set()
                await self._room.wait()
                continue
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info("gRPC client broke the protocol; closing", extra=kv(error=str(exc)))
                self.drive()  # h2 queued a GOAWAY
                return
            self._handle(events)
            if self.closing:
                return
            self.drive()

    async def _deadline_watch(self) -> None:
        while True:
            if self.deadlines:
                with trio.move_on_at(min(self.deadlines.values())):
                    await self._deadline_changed.wait()
            else:
                await self._deadline_changed.wait()
            self._deadline_changed = trio.Event()
            now = trio.current_time()
            expired = [sid for sid, at in self.deadlines.items() if at <= now]
            for sid in expired:
                del self.deadlines[sid]
                stream = self.streams.get(sid)
                if stream is not None:
                    self.finish(stream, Status.DEADLINE_EXCEEDED, "deadline exceeded")
            if expired:
                self.drive()

    # ---- what the peer sent -----------------------------------------------------------------
    def _handle(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._on_data(ev)
            elif isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                stream = self.streams.get(ev.stream_id)
                if stream is not None and stream.body is not None:
                    self._dispatch(stream)
            elif isinstance(ev, h2.events.StreamReset):  # the client cancelled
                stream = self.streams.get(ev.stream_id)
                if stream is not None:
                    self._forget(stream)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                pass  # drive() after the batch sends what the window now allows
            elif isinstance(ev, h2.events.ConnectionTerminated):  # the client's GOAWAY
                self._drop()
                return
        for stream in self._new_deadlines:
            if not stream.done and stream.deadline is not None:
                self._arm_deadline(stream)
        self._new_deadlines.clear()

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.draining:
            self._reset(sid, _ERR.REFUSED_STREAM)
            return
        headers = dict(ev.headers or ())
        path = headers.get(b":path", b"")
        if headers.get(b":method") != b"POST":
            self._reset(sid, _ERR.PROTOCOL_ERROR)
            return
        stream = self.streams[sid] = Stream(sid, self.methods.get(path), MessageBody(self.limits.max_message))
        content_type = headers.get(b"content-type", b"")
        if not (content_type == b"application/grpc" or content_type.startswith((b"application/grpc+",
                                                                                  b"application/grpc;"))):
            self.finish(stream, Status.INTERNAL, f"not a gRPC request (content-type {content_type!r})")
            return
        if stream.method is None:
            self.finish(stream, Status.UNIMPLEMENTED, f"unknown method {path.decode('utf-8', 'replace')}")
            return
        encoding = headers.get(b"grpc-encoding", b"identity")
        if encoding != b"identity":
            self.finish(stream, Status.UNIMPLEMENTED,
                        f"grpc-encoding {encoding.decode('ascii', 'replace')} is not supported (identity only)",
                        extra=((b"grpc-accept-encoding", b"identity"),))
            return
        timeout = headers.get(b"grpc-timeout")
        if timeout is not None:
            try:
                stream.deadline = trio.current_time() + parse_timeout(timeout)
            except ValueError as exc:
                self.finish(stream, Status.INTERNAL, str(exc))
                return
            self._new_deadlines.append(stream)

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        # Always give the window back: a call we refused must not stall the connection.
        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        stream = self.streams.get(ev.stream_id)
        if stream is None or stream.body is None:
            return
        before = len(stream.body)
        try:
            stream.body.feed(ev.data)
        except RpcError as exc:
            self.buffered += len(stream.body) - before
            self.finish(stream, exc.code, exc.message)
            return
        self.buffered += len(stream.body) - before
        if self.buffered > self.limits.max_message:
            self.finish(stream, Status.RESOURCE_EXHAUSTED,
                        f"requests on this connection hold more than {self.limits.max_message} bytes")

    def _dispatch(self, stream: Stream) -> None:
        """The request is complete: run the handler."""
        body, stream.body = stream.body, None
        assert body is not None and stream.method is not None
        self.buffered -= len(body)
        method = stream.method
        try:
            request = body.message()
            if method.unary is not None:
                reply = method.unary(request)
            else:
                assert method.stream is not None
                self._send_headers(stream)
                stream.handle = ServerStream(self, stream)
                method.stream(request, stream.handle)
                return
        except RpcError as exc:
            self.finish(stream, exc.code, exc.message)
            return
        except Exception as exc:  # a bug in a handler is the caller's INTERNAL, not a dropped connection
            log.exception("gRPC handler failed", extra=kv(stream=stream.id))
            self.finish(stream, Status.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        self._send_headers(stream)
        self.queue_message(stream, frame(reply), None, None, drive=False)
        self.finish(stream, Status.OK)

    def _arm_deadline(self, stream: Stream) -> None:
        assert stream.deadline is not None
        if not self.deadlines or stream.deadline < min(self.deadlines.values()):
            self._deadline_changed.set()
        self.deadlines[stream.id] = stream.deadline

    # ---- ending -----------------------------------------------------------------------------
    def _forget(self, stream: Stream) -> None:
        if stream.done:
            return
        stream.done = True
        self.streams.pop(stream.id, None)
        self.sending.pop(stream.id, None)
        self.deadlines.pop(stream.id, None)
        if stream.body is not None:
            self.buffered -= len(stream.body)
            stream.body = None
        stream.data = stream.next = None
        handle = stream.handle
        if handle is not None and handle.on_close is not None:
            handle.on_close()
        if self.draining and not self.streams and not self.closing:
            self._goodbye()

    def shutdown(self) -> None:
        """Begin a graceful stop: OK trailers on every server stream (after its message in
        flight), GOAWAY (no new calls); unary calls still arriving may finish."""
        if self.draining or self.closing:
            return
        for stream in list(self.streams.values()):
            if stream.handle is not None:
                stream.next, stream.dirty = None, False  # the client gets a fresh list from the next server
                self.finish(stream, Status.OK)
        self.draining = True
        if not self.streams:
            self._goodbye()
            return
        self._take()  # the trailers first: some clients stop reading at a GOAWAY
        self.out += goaway_frame(self.h2.highest_inbound_stream_id)
        self.queued += 9 + 8
        self.drive()

    def abort(self) -> None:
        """The grace is over: reset what is left, a last GOAWAY, and close."""
        for stream in list(self.streams.values()):
            self._reset(stream.id, _ERR.CANCEL)
            self._forget(stream)
        if not self.closing:
            self._goodbye()

    def close_idle(self) -> None:
        """Leave to make room for a new connection (only called while no call is open)."""
        self.draining = True
        self._goodbye()

    def _goodbye(self) -> None:
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass  # the client closed first
        self.drive()
        self._drop()

    def _drop(self) -> None:
        """Stop now (from any task or the event path): the run's ``finally`` closes the socket."""
        if self.closing:
            return
        self.closing = True
        for stream in list(self.streams.values()):
            self._forget(stream)
        self.scope.cancel()

    def _close(self) -> None:
        self._drop()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        self._on_closed(self)

