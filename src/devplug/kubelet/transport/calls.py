"""What a served method is, the limits a server keeps, and one call's state on a connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Protocol

import attrs

from .wire import MessageBody, Status


@attrs.frozen
class Method:
    """A served method. ``unary(request) -> response`` or ``stream(request, ServerStream)``;
    requests and responses are protobuf bytes. Handlers run on the trio thread, between two
    reads of the connection: they must not block (raise :class:`~.wire.RpcError` to refuse)."""

    unary: Optional[Callable[[bytes], bytes]] = None
    stream: Optional[Callable[[bytes, ServerStream], None]] = None


@attrs.frozen
class Limits:
    """What one client can make a server hold."""

    #: Largest request message (gRPC's own default); also the request bytes one connection
    #: may hold across its calls at once.
    max_message: int = 4 << 20
    #: Concurrent calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS; kubelet uses 1-3).
    max_streams: int = 32
    #: Connections per socket; a new one makes the oldest idle one leave, else it is refused.
    max_connections: int = 16
    #: Bytes h2 produced that the kernel has not taken yet, above which no more DATA is handed
    #: to h2 and nothing more is read: the bound on what a client that does not read costs.
    out_high: int = 128 << 10


class _Conn(Protocol):
    def queue_message(self, stream: Stream, message: bytes, tag: Any, woke_ns: Optional[int]) -> None: ...
    def changed(self, stream: Stream, woke_ns: Optional[int]) -> None: ...
    def finish(self, stream: Stream, code: Status, message: str = "") -> None: ...
    def drive(self, woke_ns: Optional[int] = None) -> None: ...


class Stream:
    """One call (one HTTP/2 stream) as a connection tracks it."""

    __slots__ = ("id", "method", "body", "deadline", "headers_sent", "data", "offset", "tag", "next",
                 "next_tag", "source", "dirty", "trailers", "handle", "done", "cooling")

    def __init__(self, stream_id: int, method: Optional[Method], body: Optional[MessageBody]) -> None:
        self.id = stream_id
        self.method = method
        self.body = body  # the request while it arrives; None once complete
        self.deadline: Optional[float] = None  # trio clock
        self.headers_sent = False
        # Outbound: the framed message being written and how far; the one queued after it.
        self.data: Optional[bytes] = None
        self.offset = 0
        self.tag: Any = None
        self.next: Optional[bytes] = None
        self.next_tag: Any = None
        #: Server streams of states: what to send is asked for only when it can go out.
        self.source: Optional[Callable[[], tuple[Any, Optional[bytes]]]] = None
        self.dirty = False
        self.trailers: Optional[tuple[Status, str]] = None  # to send once the data is out
        self.handle: Optional[ServerStream] = None
        self.done = False
        #: Wrote synchronously since the event path last yielded: what follows waits for the
        #: writer task, so a burst of changes in one wake-up sends two lists, not one per change.
        self.cooling = False

    @property
    def idle(self) -> bool:
        """Nothing of this call's output waits."""
        return self.data is None and self.next is None and not self.dirty


class ServerStream:
    """A server-streaming call as its handler keeps it.

    Its messages are states. With a :attr:`source` (``() -> (tag, framed message or None)``),
    :meth:`changed` says the state moved and the source is asked for the message only when
    it can go out: at once if the socket and the flow-control window take it, else once they
    do, so a client that reads slowly gets the newest state later, never a backlog, and the
    caller builds nothing it will not send. :meth:`send` queues a ready message instead
    (replacing one that has not started to go out). The first write after the caller yielded
    is synchronous; more in the same turn (a burst) go out as one, the newest, once it yields.
    ``on_written(tag, woke_ns, send_ns)`` is called once a message's last byte is in the
    kernel (``woke_ns``: when the write that finished it started; ``send_ns``: when the
    ``send(2)`` that took the last byte was called); ``on_close()`` once the call is over,
    whoever ended it.
    """

    __slots__ = ("_conn", "_stream", "on_written", "on_close")

    def __init__(self, conn: _Conn, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        self.on_written: Optional[Callable[[Any, int, int], None]] = None
        self.on_close: Optional[Callable[[], None]] = None

    @property
    def closed(self) -> bool:
        return self._stream.done

    @property
    def source(self) -> Optional[Callable[[], tuple[Any, Optional[bytes]]]]:
        return self._stream.source

    @source.setter
    def source(self, source: Optional[Callable[[], tuple[Any, Optional[bytes]]]]) -> None:
        self._stream.source = source

    def changed(self, woke_ns: Optional[int] = None) -> None:
        """The state moved: write the source's message now or as soon as possible; never blocks."""
        if not self._stream.done:
            self._conn.changed(self._stream, woke_ns)

    def send(self, message: bytes, tag: Any = None, woke_ns: Optional[int] = None) -> None:
        """Write ``message`` (a framed gRPC message) now if the socket and the flow-control
        window take it, else as soon as they do; never blocks."""
        if not self._stream.done:
            self._conn.queue_message(self._stream, message, tag, woke_ns)

    def end(self, code: Status = Status.OK, message: str = "") -> None:
        """End the call with a status (after the message being written, if any)."""
        if not self._stream.done:
            self._conn.finish(self._stream, code, message)
            self._conn.drive()
