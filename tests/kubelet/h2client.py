"""A bare gRPC client on h2 and trio, for what grpcio and grpc-go will not do on purpose:
grant tiny flow-control windows, reset a stream mid-message, send a compressed flag, send
half a request, ignore the stream limit, or never read.

    c = await H2Client.connect(path, window=1000)
    sid = await c.call("/v1beta1.DevicePlugin/ListAndWatch", b"")
    await c.until(lambda: c.calls[sid].messages)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Optional

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

PREFIX = struct.Struct(">BI")


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return PREFIX.pack(1 if compressed else 0, len(payload)) + payload


class Call:
    """What one stream received."""

    def __init__(self) -> None:
        self.headers: Optional[dict[bytes, bytes]] = None
        self.trailers: Optional[dict[bytes, bytes]] = None
        self.data = bytearray()
        self.frames: list[int] = []  # the size of each DATA frame
        self.reset: Optional[int] = None  # RST_STREAM error code
        self.ended = False

    @property
    def messages(self) -> list[bytes]:
        """The whole gRPC messages received so far (a partial one is left out)."""
        out, off = [], 0
        while off + 5 <= len(self.data):
            flag, n = PREFIX.unpack_from(self.data, off)
            if off + 5 + n > len(self.data):
                break
            out.append(bytes(self.data[off + 5:off + 5 + n]))
            off += 5 + n
        return out

    @property
    def status(self) -> Optional[int]:
        """grpc-status, from trailers or a trailers-only response."""
        for h in (self.trailers, self.headers):
            if h and b"grpc-status" in h:
                return int(h[b"grpc-status"])
        return None

    @property
    def message(self) -> str:
        for h in (self.trailers, self.headers):
            if h and b"grpc-message" in h:
                return h[b"grpc-message"].decode()
        return ""


class GoAway:
    def __init__(self, payload: bytes) -> None:
        self.last_stream_id, self.error_code = struct.unpack_from(">II", payload)
        self.last_stream_id &= 0x7FFFFFFF


class H2Client:
    def __init__(self, stream: trio.SocketStream, *, window: int, auto_ack: bool) -> None:
        self.stream = stream
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.initiate_connection()
        self.calls: dict[int, Call] = {}
        self.goaway: Optional[GoAway] = None
        self._inbuf = bytearray()
        self.remote_settings: dict[int, int] = {}
        self.eof = False
        self.broken = False

    @classmethod
    async def connect(cls, path: str, *, window: int = 65535, auto_ack: bool = True,
                      connection_window: Optional[int] = None) -> H2Client:
        c = cls(await trio.open_unix_socket(path), window=window, auto_ack=auto_ack)
        if connection_window is not None and connection_window > 65535:
            c.conn.increment_flow_control_window(connection_window - 65535)
        await c.flush()
        return c

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.broken:
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:  # the server closed; what it sent is still readable
                self.broken = True

    def open(self, path: str, *, headers: Sequence[tuple[bytes, bytes]] = ()) -> int:
        sid = self.conn.get_next_available_stream_id()
        base = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                (b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        self.conn.send_headers(sid, base + list(headers))
        self.calls[sid] = Call()
        return sid

    async def call(self, path: str, payload: Optional[bytes] = b"", *, end: bool = True,
                   headers: Sequence[tuple[bytes, bytes]] = (), raw: Optional[bytes] = None) -> int:
        """Open a call and send its request (``raw``: these bytes instead of one message)."""
        sid = self.open(path, headers=headers)
        body = raw if raw is not None else (grpc_message(payload) if payload is not None else b"")
        await self.send(sid, body, end=end)
        return sid

    async def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """Send in frames the server's limits allow, waiting for window when it runs out."""
        view = memoryview(data)
        while True:
            room = min(len(view), self.conn.max_outbound_frame_size, self.conn.local_flow_control_window(sid))
            if view and room == 0:
                await self.flush()
                await self.receive()  # a WINDOW_UPDATE
                continue
            last = room == len(view)
            self.conn.send_data(sid, bytes(view[:room]), end_stream=end and last)
            view = view[room:]
            if last:
                break
        await self.flush()

    async def reset(self, sid: int, code: int = 8) -> None:  # CANCEL
        self.conn.reset_stream(sid, code)
        await self.flush()

    async def grant(self, sid: int, n: int) -> None:
        """Give back ``n`` bytes of window on the stream and the connection."""
        self.conn.acknowledge_received_data(n, sid)
        await self.flush()

    async def receive(self) -> None:
        """Read once and record what arrived."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # ECONNRESET
            data = b""
        if not data:
            self.eof = True
            return
        for ev in self.conn.receive_data(self._without_goaway(data)):
            sid = getattr(ev, "stream_id", None)
            call = self.calls.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and call:
                call.headers = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived) and call:
                call.trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived) and call:
                call.data += ev.data
                call.frames.append(len(ev.data))
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and call:
                call.ended = True
            elif isinstance(ev, h2.events.StreamReset) and call:
                call.reset = ev.error_code
                call.ended = True
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})
        await self.flush()

    def _without_goaway(self, data: bytes) -> bytes:
        """GOAWAY frames are kept here: h2 stops processing a connection once it sees one,
        while a graceful GOAWAY lets the calls in flight finish (as grpc-go and grpcio do)."""
        buf = self._inbuf
        buf += data
        out, off = bytearray(), 0
        while len(buf) - off >= 9:
            length = int.from_bytes(buf[off:off + 3], "big")
            if len(buf) - off < 9 + length:
                break
            if buf[off + 3] == 0x7:
                self.goaway = GoAway(bytes(buf[off + 9:off + 17]))
            else:
                out += buf[off:off + 9 + length]
            off += 9 + length
        del buf[:off]
        return bytes(out)

    async def until(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not pred():
                if self.eof:
                    raise AssertionError("the server closed the connection")
                await self.receive()

    async def aclose(self) -> None:
        await self.stream.aclose()
