"""A unary gRPC call over a unix socket, on h2 and trio: what devplug asks kubelet
(Register, PodResources ``List``), without grpcio.

One connection per call (both calls are rare): connect, the HTTP/2 preface, HEADERS and
the one request message, then read the response headers, the message (its flow-control
window given back as it arrives, so a large answer flows) and the trailers; GOAWAY and
close. Whatever happens, the socket is closed before :func:`unary_call` returns or raises,
and it starts no task. Every failure is an :class:`~.wire.RpcError`: the status the server
answered (``grpc-message`` percent-decoded), ``DEADLINE_EXCEEDED`` when the deadline
passed, ``RESOURCE_EXHAUSTED`` for an answer over ``max_receive``, and :class:`Unavailable`
when there is no server to talk to or it went away mid-call (no socket file, nobody
listening, the connection closed or reset, GOAWAY, RST_STREAM).
"""

from __future__ import annotations

from typing import Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from .wire import MessageBody, RpcError, Status, encode_timeout, frame, percent_decode

#: Largest response message (grpc-go's default receive limit is 4 MiB; kubelet's
#: PodResources answer grows with the pods of the node).
MAX_RECEIVE = 16 << 20
#: The receive window the client grants (per stream and for the connection).
WINDOW = 1 << 20
RECV_SIZE = 65536

#: gRPC's mapping of an HTTP status without grpc-status (PROTOCOL-HTTP2.md, http-grpc-status-mapping.md).
_HTTP_STATUS = {400: Status.INTERNAL, 401: Status.UNAUTHENTICATED, 403: Status.PERMISSION_DENIED,
                404: Status.UNIMPLEMENTED, 429: Status.UNAVAILABLE, 502: Status.UNAVAILABLE,
                503: Status.UNAVAILABLE, 504: Status.UNAVAILABLE}


class Unavailable(RpcError):
    """No server answered the call: not there, not listening, or gone mid-call (``UNAVAILABLE``)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.UNAVAILABLE, message)


async def unary_call(path: str, method: str, request: bytes, *, timeout: float,
                     max_receive: int = MAX_RECEIVE) -> bytes:
    """Call ``method`` (``/package.Service/Method``) on the gRPC server at unix socket
    ``path`` with the serialized ``request``; the serialized response, or :class:`RpcError`.
    Cancelling the caller cancels the call (and closes the socket)."""
    if timeout <= 0:
        raise RpcError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_unix_socket(path)
        except OSError as exc:
            raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        async with stream:  # closes the socket however the call ends
            call = _Call(method, request, timeout, max_receive)
            try:
                return await call.run(stream)
            except (trio.BrokenResourceError, OSError) as exc:
                raise Unavailable(f"connection to {path} failed: {_why(exc)}") from None
    assert scope.cancelled_caught
    raise RpcError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__


class _Call:
    """One call's HTTP/2 state: h2's state machine, what is still to send, what arrived."""

    def __init__(self, method: str, request: bytes, timeout: float, max_receive: int) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
        })
        self.headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
            (b":authority", b"localhost"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
            (b"grpc-accept-encoding", b"identity"), (b"grpc-timeout", encode_timeout(timeout)),
            (b"user-agent", b"devplug"),
        ]
        self.pending = memoryview(frame(request))  # request bytes h2 has not taken yet
        self.body = MessageBody(max_receive, kind="response")
        self.response: Optional[dict[bytes, bytes]] = None
        self.trailers: Optional[dict[bytes, bytes]] = None
        self.sid = 0
        self.ended = False

    async def run(self, stream: trio.SocketStream) -> bytes:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW - 65535)  # the connection's window, as the streams'
        self.sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self.sid, self.headers)
        self._send_request()
        await stream.send_all(self.h2.data_to_send())
        while not self.ended:
            data = await stream.receive_some(RECV_SIZE)
            if not data:
                raise Unavailable("the server closed the connection before the call ended")
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                raise RpcError(Status.INTERNAL, f"the server broke the HTTP/2 protocol: {exc}") from None
            for ev in events:
                self._on_event(ev)
                if self.ended:
                    break
            if not self.ended:
                self._send_request()
            out = self.h2.data_to_send()
            if out:
                await stream.send_all(out)
        result = self._result()
        try:  # a clean goodbye; the server may be gone already, which changes nothing
            self.h2.close_connection()
            await stream.send_all(self.h2.data_to_send())
        except (h2.exceptions.ProtocolError, trio.BrokenResourceError, OSError):
            pass
        return result

    def _send_request(self) -> None:
        """Hand h2 as much of the request as the server's windows allow (all of it, at once,
        for any request smaller than 64 KiB); END_STREAM with its last byte."""
        while self.pending:
            room = min(self.h2.local_flow_control_window(self.sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                return  # a WINDOW_UPDATE resumes it
            chunk, self.pending = self.pending[:room], self.pending[room:]
            self.h2.send_data(self.sid, bytes(chunk), end_stream=not self.pending)

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == self.sid:
            self.response = dict(ev.headers or ())
            if b"grpc-status" in self.response:  # trailers-only: the status is all there is
                self.trailers = self.response
        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == self.sid:
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self._check_headers()
            self.body.feed(ev.data)
        elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == self.sid:
            self.trailers = dict(ev.headers or ())
        elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == self.sid:
            self.ended = True
        elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == self.sid:
            raise Unavailable(f"the server reset the call ({_code_name(ev.error_code)})")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            detail = f": {ev.additional_data.decode('utf-8', 'replace')}" if ev.additional_data else ""
            raise Unavailable(f"the server went away (GOAWAY {_code_name(ev.error_code)}{detail})")

    def _check_headers(self) -> None:
        """A response that is not gRPC fails with what its HTTP status says."""
        headers = self.response
        if headers is None:
            raise RpcError(Status.INTERNAL, "response data before response headers")
        status = headers.get(b":status", b"")
        if status != b"200" and b"grpc-status" not in headers:
            code = _HTTP_STATUS.get(int(status) if status.isdigit() else 0, Status.UNKNOWN)
            raise RpcError(code, f"HTTP status {status.decode('ascii', 'replace')} without a gRPC status")
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            raise RpcError(Status.UNKNOWN, f"not a gRPC response (content-type {content_type.decode('ascii', 'replace')!r})")

    def _result(self) -> bytes:
        trailers = self.trailers
        if trailers is None or b"grpc-status" not in trailers:
            self._check_headers()  # a proxy's error page says more than "no status"
            raise RpcError(Status.INTERNAL, "the call ended without a grpc-status")
        raw = trailers[b"grpc-status"]
        try:
            code = Status(int(raw))
        except ValueError:
            code = Status.UNKNOWN
        if code != Status.OK:
            raise RpcError(code, percent_decode(trailers.get(b"grpc-message", b"")))
        self._check_headers()
        return self.body.message()


def _code_name(code: object) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)


