"""The DevicePlugin gRPC service of one resource (runs on the asyncio side of trio-asyncio).

Streams never copy state: each ListAndWatch stream remembers the inventory version it
last sent and waits on a :class:`Pulse`; when woken it sends the *current* list if the
version moved. So the event path only flips an event (it never waits for a stream), a slow
stream skips straight to the latest list, and an idle stream costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional, Protocol

import grpc

from ..core.view import DeviceView
from ..lib.logs import kv
from . import allocation, api_pb2, api_pb2_grpc
from .grpc_options import SERVER_OPTIONS

log = logging.getLogger("devplug.kubelet")


class KubeletObserver(Protocol):
    """What the adapter reports as it works (``devplug.telemetry.Telemetry`` is one)."""

    def on_sent(self, resource: str, version: int, previous: Optional[int], woke_ns: Optional[int] = None) -> None: ...
    def on_registration(self, resource: str, ok: bool) -> None: ...
    def on_kubelet_restart(self) -> None: ...
    def on_allocate(self, resource: str, result: str) -> None: ...


class Pulse:
    """Wakes every waiting stream at once. ``fire`` is synchronous and never blocks, so trio
    code (same thread, same loop under trio-asyncio) can call it from the event path."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        # Waiters already woken stay woken; clearing re-arms the event for the next change.
        self._event.set()
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


class StreamCounter:
    """Open ListAndWatch streams of one resource, across server restarts."""

    def __init__(self) -> None:
        self.open = 0


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """Serves one resource from the live inventory until :meth:`close`."""

    def __init__(
        self,
        resource: str,
        inventory: DeviceView,
        pulse: Pulse,
        streams: StreamCounter,
        *,
        pre_start_check: bool = False,
        cdi: Optional[allocation.CdiNames] = None,
        telemetry: Optional[KubeletObserver] = None,
    ) -> None:
        self.resource = resource
        self._telemetry = telemetry
        self._inventory = inventory
        self._pulse = pulse
        self._streams = streams
        self._pre_start_check = pre_start_check
        self._cdi = cdi
        self._closing = False
        # Rebuilt only when the resource's version moves: the list every stream sends.
        # Allocate and GetPreferredAllocation look IDs up in the inventory directly.
        self._version: Optional[int] = None
        self._response = b""  # pre-encoded ListAndWatchResponse
        self._chunks: dict[tuple[str, str], bytes] = {}

    @property
    def options(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=self._pre_start_check, get_preferred_allocation_available=True
        )

    def close(self) -> None:
        """End every stream of this server (they return normally, so clients see OK)."""
        self._closing = True
        self._pulse.fire()

    def _refresh(self) -> int:
        version = self._inventory.version(self.resource)
        if version != self._version:
            entries = self._inventory.entries(self.resource)
            # The list kubelet gets after every change, pre-encoded: each device's bytes are
            # cached, so a change in a resource of 1,000 devices costs a join, not a rebuild.
            chunks = self._chunks
            if len(chunks) > 2 * len(entries) + 64:
                chunks.clear()  # forgotten IDs (replugs with new serials): stay near the live size
            self._response = b"".join(
                chunks.get((e.id, e.health)) or _device_chunk(chunks, e.id, e.health) for e in entries
            )
            self._version = version
        return version

    def _lookup(self) -> allocation.Lookup:
        resource, get = self.resource, self._inventory.get
        return lambda device_id: get(resource, device_id)

    # ---- RPCs ---------------------------------------------------------------------------
    async def GetDevicePluginOptions(self, request, context):  # noqa: N802 (gRPC names)
        return self.options

    async def ListAndWatch(self, request, context):  # noqa: N802
        self._streams.open += 1
        log.debug("stream opened", extra=kv(resource=self.resource, open=self._streams.open))
        try:
            sent: Optional[int] = None
            woke = time.perf_counter_ns()
            while not self._closing:
                version = self._refresh()
                if version != sent:
                    await context.write(self._response)
                    if self._telemetry is not None:
                        self._telemetry.on_sent(self.resource, version, sent, woke)
                    sent = version
                    continue
                await self._pulse.wait()
                woke = time.perf_counter_ns()
        finally:
            self._streams.open -= 1
            log.debug("stream closed", extra=kv(resource=self.resource, open=self._streams.open))

    async def GetPreferredAllocation(self, request, context):  # noqa: N802
        lookup = self._lookup()
        try:
            responses = [
                api_pb2.ContainerPreferredAllocationResponse(deviceIDs=allocation.preferred(
                    creq.available_deviceIDs, creq.must_include_deviceIDs, creq.allocation_size, lookup))
                for creq in request.container_requests
            ]
        except allocation.DeviceRequestError as e:
            log.warning("preferred allocation refused", extra=kv(resource=self.resource, error=e.message))
            await context.abort(e.code, e.message)
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(self, request, context):  # noqa: N802
        try:
            response = allocation.allocate(self.resource, request, self._lookup(), self._cdi)
        except allocation.DeviceRequestError as e:
            log.warning("allocate refused", extra=kv(resource=self.resource, error=e.message))
            self._count_allocate(e.code.name.lower())
            await context.abort(e.code, e.message)
        except Exception:
            self._count_allocate("error")
            raise
        self._count_allocate("ok")
        log.info("allocated", extra=kv(
            resource=self.resource, ids=",".join(i for c in request.container_requests for i in c.devices_ids)))
        return response

    def _count_allocate(self, result: str) -> None:
        if self._telemetry is not None:
            self._telemetry.on_allocate(self.resource, result)

    async def PreStartContainer(self, request, context):  # noqa: N802
        if self._pre_start_check:
            try:
                allocation.check_present(self.resource, request.devices_ids, self._lookup())
            except allocation.DeviceRequestError as e:
                log.warning("pre-start refused", extra=kv(resource=self.resource, error=e.message))
                await context.abort(e.code, e.message)
        return api_pb2.PreStartContainerResponse()


def _device_chunk(cache: dict[tuple[str, str], bytes], device_id: str, health: str) -> bytes:
    """One ``devices`` element of ListAndWatchResponse on the wire (repeated fields concatenate)."""
    chunk = api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=device_id, health=health)]).SerializeToString()
    cache[(device_id, health)] = chunk
    return chunk


def _serialize_list(response: bytes | api_pb2.ListAndWatchResponse) -> bytes:
    """ListAndWatch answers are pre-encoded bytes; a message still works (tests, tools)."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _add_servicer(servicer: DevicePluginServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that ListAndWatch sends pre-encoded bytes."""
    empty = api_pb2.Empty.FromString
    handlers = {
        "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
            servicer.GetDevicePluginOptions, request_deserializer=empty,
            response_serializer=api_pb2.DevicePluginOptions.SerializeToString),
        "ListAndWatch": grpc.unary_stream_rpc_method_handler(
            servicer.ListAndWatch, request_deserializer=empty, response_serializer=_serialize_list),
        "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
            servicer.GetPreferredAllocation,
            request_deserializer=api_pb2.PreferredAllocationRequest.FromString,
            response_serializer=api_pb2.PreferredAllocationResponse.SerializeToString),
        "Allocate": grpc.unary_unary_rpc_method_handler(
            servicer.Allocate, request_deserializer=api_pb2.AllocateRequest.FromString,
            response_serializer=api_pb2.AllocateResponse.SerializeToString),
        "PreStartContainer": grpc.unary_unary_rpc_method_handler(
            servicer.PreStartContainer, request_deserializer=api_pb2.PreStartContainerRequest.FromString,
            response_serializer=api_pb2.PreStartContainerResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("v1beta1.DevicePlugin", handlers),))
    server.add_registered_method_handlers("v1beta1.DevicePlugin", handlers)


class BindError(Exception):
    """gRPC could not serve on the socket path (it reports that as a bare RuntimeError)."""


async def start_server(servicer: DevicePluginServicer, path: str) -> grpc.aio.Server:
    """Serve ``servicer`` on the unix socket ``path`` (asyncio side)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    _add_servicer(servicer, server)
    try:
        server.add_insecure_port("unix://" + path)
    except RuntimeError as exc:  # "Failed to bind to address unix:...": the only way grpc says it
        raise BindError(str(exc)) from None
    await server.start()
    return server
