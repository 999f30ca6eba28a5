"""The DevicePlugin service of one resource: what each call answers, and the lists it pushes.

ListAndWatch streams are pushed to, not woken: :meth:`DevicePluginService.notify` runs on
the event path right after a change and hands the resource's current list, pre-encoded, to
every open stream, which writes it at once when the socket and the flow-control window
allow (``transport``). A stream that cannot take it now gets the newest list later, never a
backlog; the event path never waits for a stream. One service per resource outlives the
servers that come and go with kubelet restarts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection
from typing import Optional, Protocol

from google.protobuf.message import DecodeError

from ..core.view import DeviceView
from ..lib.logs import kv
from . import allocation, api_pb2
from .listing import DeviceList
from .transport import Method, RpcError, ServerStream, Status

log = logging.getLogger("devplug.kubelet")

SERVICE = "v1beta1.DevicePlugin"


class KubeletObserver(Protocol):
    """What the adapter reports as it works (``devplug.telemetry.Telemetry`` is one)."""

    def on_sent(self, resource: str, version: int, previous: Optional[int], woke_ns: Optional[int] = None,
                send_ns: Optional[int] = None) -> None: ...
    def on_registration(self, resource: str, ok: bool) -> None: ...
    def on_kubelet_restart(self) -> None: ...
    def on_allocate(self, resource: str, result: str) -> None: ...


class _Watch:
    """One ListAndWatch stream: the version last handed to it, and the last one written."""

    __slots__ = ("queued", "sent")

    def __init__(self) -> None:
        self.queued: Optional[int] = None
        self.sent: Optional[int] = None


class DevicePluginService:
    """Serves one resource from the ``DeviceView`` it is given."""

    def __init__(
        self,
        resource: str,
        view: DeviceView,
        *,
        pre_start_check: bool = False,
        cdi: Optional[allocation.CdiNames] = None,
        telemetry: Optional[KubeletObserver] = None,
    ) -> None:
        self.resource = resource
        self._view = view
        self._list = DeviceList(resource, view)
        self._pre_start_check = pre_start_check
        self._cdi = cdi
        self._telemetry = telemetry
        self._watches: dict[ServerStream, _Watch] = {}
        self.methods: dict[bytes, Method] = {
            _path("GetDevicePluginOptions"): Method(unary=self.get_options),
            _path("ListAndWatch"): Method(stream=self.list_and_watch),
            _path("GetPreferredAllocation"): Method(unary=self.get_preferred_allocation),
            _path("Allocate"): Method(unary=self.allocate),
            _path("PreStartContainer"): Method(unary=self.pre_start_container),
        }

    @property
    def streams(self) -> int:
        """Open ListAndWatch streams."""
        return len(self._watches)

    def notify(self, ids: Optional[Collection[str]] = None) -> None:
        """The resource may have changed (``ids``: one change, and the IDs it touched): every
        stream writes its list now where the socket takes it, later (the newest) where it
        does not; the list is built only to be sent."""
        self._list.hint(ids)
        if not self._watches:
            return
        woke = time.perf_counter_ns()
        for stream in list(self._watches):
            stream.changed(woke)

    # ---- ListAndWatch -------------------------------------------------------------------------
    def list_and_watch(self, request: bytes, stream: ServerStream) -> None:
        watch = self._watches[stream] = _Watch()
        # Partials, not lambdas: the source runs on every list written, and a partial is
        # one Python frame less on the event path.
        stream.on_written = functools.partial(self._written, watch)
        stream.on_close = functools.partial(self._closed, stream)
        stream.source = functools.partial(self._next_list, watch)
        log.debug("stream opened", extra=kv(resource=self.resource, open=len(self._watches)))
        stream.changed(time.perf_counter_ns())

    def _next_list(self, watch: _Watch) -> tuple[int, Optional[bytes]]:
        """The list to write on a stream now; None when it already has this version."""
        version, message = self._list.current()
        if version == watch.queued:
            return version, None
        watch.queued = version
        return version, message

    def _written(self, watch: _Watch, version: int, woke_ns: int, send_ns: int) -> None:
        previous, watch.sent = watch.sent, version
        if self._telemetry is not None:
            self._telemetry.on_sent(self.resource, version, previous, woke_ns, send_ns)

    def _closed(self, stream: ServerStream) -> None:
        if self._watches.pop(stream, None) is not None:
            log.debug("stream closed", extra=kv(resource=self.resource, open=len(self._watches)))

    # ---- unary calls --------------------------------------------------------------------------
    @property
    def options(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=self._pre_start_check, get_preferred_allocation_available=True)

    def get_options(self, request: bytes) -> bytes:
        return self.options.SerializeToString()

    def get_preferred_allocation(self, request: bytes) -> bytes:
        req = _decode(api_pb2.PreferredAllocationRequest, request)
        lookup = self._lookup()
        try:
            responses = [
                api_pb2.ContainerPreferredAllocationResponse(deviceIDs=allocation.preferred(
                    creq.available_deviceIDs, creq.must_include_deviceIDs, creq.allocation_size, lookup))
                for creq in req.container_requests
            ]
        except allocation.DeviceRequestError as e:
            log.warning("preferred allocation refused", extra=kv(resource=self.resource, error=e.message))
            raise _status(e) from None
        return api_pb2.PreferredAllocationResponse(container_responses=responses).SerializeToString()

    def allocate(self, request: bytes) -> bytes:
        req = _decode(api_pb2.AllocateRequest, request)
        try:
            response = allocation.allocate(self.resource, req, self._lookup(), self._cdi).SerializeToString()
        except allocation.DeviceRequestError as e:
            log.warning("allocate refused", extra=kv(resource=self.resource, error=e.message))
            self._count_allocate(e.code.name.lower())
            raise _status(e) from None
        except Exception:
            self._count_allocate("error")
            raise
        self._count_allocate("ok")
        log.info("allocated", extra=kv(
            resource=self.resource, ids=",".join(i for c in req.container_requests for i in c.devices_ids)))
        return response

    def pre_start_container(self, request: bytes) -> bytes:
        req = _decode(api_pb2.PreStartContainerRequest, request)
        if self._pre_start_check:
            try:
                allocation.check_present(self.resource, req.devices_ids, self._lookup())
            except allocation.DeviceRequestError as e:
                log.warning("pre-start refused", extra=kv(resource=self.resource, error=e.message))
                raise _status(e) from None
        return b""  # PreStartContainerResponse has no fields

    def _lookup(self) -> allocation.Lookup:
        resource, get = self.resource, self._view.get
        return lambda device_id: get(resource, device_id)

    def _count_allocate(self, result: str) -> None:
        if self._telemetry is not None:
            self._telemetry.on_allocate(self.resource, result)


def _path(method: str) -> bytes:
    return f"/{SERVICE}/{method}".encode()


def _status(e: allocation.DeviceRequestError) -> RpcError:
    return RpcError(e.code, e.message)


def _decode(message_type: Callable, data: bytes):
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise RpcError(Status.INTERNAL, f"cannot decode {message_type.__name__}: {exc}") from None
