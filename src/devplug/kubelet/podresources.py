"""Which pod holds which device ID: kubelet's PodResources API (v1 ``List``).

devplug forgets an Unhealthy ID only once no pod holds it, and ``devplug inventory``
shows who holds each allocated ID — the first question when a dongle is pulled. kubelet
serves the API on its own unix socket (``/var/lib/kubelet/pod-resources/kubelet.sock``).
An absent, slow or failing kubelet means *unknown* (``None``), never "nobody holds it".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

import attrs
from google.protobuf.message import DecodeError

from ..lib.logs import kv
from . import podresources_pb2
from .transport import RpcError, Status, unary_call

log = logging.getLogger("devplug.podresources")

#: One List may take this long (kubelet answers from memory in well under a millisecond).
LIST_TIMEOUT = 2.0
LIST_METHOD = "/v1.PodResourcesLister/List"


@attrs.frozen(slots=True)
class Holder:
    """One container that holds a device ID."""

    namespace: str
    pod: str
    container: str


#: (resource, device ID) → the containers holding it.
Holders = Mapping[tuple[str, str], tuple[Holder, ...]]


def holders_of(response: podresources_pb2.ListPodResourcesResponse) -> dict[tuple[str, str], tuple[Holder, ...]]:
    out: dict[tuple[str, str], tuple[Holder, ...]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            holder = Holder(pod.namespace, pod.name, container.name)
            for devices in container.devices:
                for device_id in devices.device_ids:
                    key = (devices.resource_name, device_id)
                    out[key] = (*out.get(key, ()), holder)
    return out


async def list_pod_resources(socket: str, timeout: float) -> podresources_pb2.ListPodResourcesResponse:
    """One ``List`` (its answer may be large: up to the client's 16 MiB); raises
    :class:`~.transport.RpcError`, an undecodable answer included (``INTERNAL``)."""
    raw = await unary_call(socket, LIST_METHOD, podresources_pb2.ListPodResourcesRequest().SerializeToString(),
                           timeout=timeout)
    try:
        return podresources_pb2.ListPodResourcesResponse.FromString(raw)
    except DecodeError as exc:
        raise RpcError(Status.INTERNAL, f"cannot decode ListPodResourcesResponse: {exc}") from None


class PodResources:
    """A client that logs once when kubelet's answer goes missing and once when it is back."""

    def __init__(self, socket: str, *, timeout: float = LIST_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout
        self._failing: Optional[str] = None

    async def holders(self) -> Optional[dict[tuple[str, str], tuple[Holder, ...]]]:
        """Who holds what right now, or None when kubelet cannot say (from trio)."""
        try:
            response = await list_pod_resources(self.socket, self.timeout)
        except RpcError as exc:
            error = f"{exc.code.name}: {exc.message}"
            if self._failing is None:
                log.info("pod resources unknown: unhealthy IDs are kept (capped per resource)",
                         extra=kv(socket=self.socket, error=error))
            self._failing = error
            return None
        if self._failing is not None:
            log.info("pod resources known again", extra=kv(socket=self.socket))
            self._failing = None
        return holders_of(response)
