"""The debug socket and the metrics endpoint: what devplug holds, why, and whether it is well.

Routes (all GET):

``/inventory``  every device with its resource, health, rule and allocation settings, the
                claimed devices that are refused (and why), the loaded rules files, the
                last rules error and each plugin's kubelet state.
``/events``     the last uevents and re-enumerations, with timings and what they changed
                (``?limit=N``).
``/explain``    ``?syspath=`` | ``devpath=`` | ``devnode=``: for a live device, which rules
                matched and why the others did not, and what devplug made of it.
``/stages``     where the last uevents' time went on their way to kubelet: percentiles of
                each stage (record, rules and inventory, publish, stream wake-up, write
                until ``send(2)``, the ``send(2)`` call), their total and ``own`` (the
                total without the ``send(2)`` call).
``/healthz``    200 ``ok`` while the udev monitor runs and every resource holding devices is
                served (and registered with kubelet, unless registration is off); 503 with
                the reason otherwise.
``/metrics``    Prometheus text format (``ops/metrics.py``).

The unix socket serves all of them; the TCP metrics address only ``/metrics`` and
``/healthz``, since the inventory carries allocation details (envs, annotations).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Optional, Protocol

import attrs
import trio

from ..core.claims import Pipeline
from ..core.device import Device
from ..core.inventory import Entry, Inventory
from ..core.views import claim_json, refusal_json
from . import httpserve
from .httpserve import Response
from . import metrics
from .telemetry import EventRecord, Telemetry

log = logging.getLogger("devplug.debug")

JSON = "application/json"


def rfc3339(epoch: float) -> str:
    """UTC with milliseconds: ``2024-05-01T10:00:00.123Z``."""
    dt = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class ResourceStatus(Protocol):
    """What health needs of a front door's per-resource state (``kubelet.ResourceStatus``)."""

    @property
    def serving(self) -> bool: ...

    @property
    def registered(self) -> bool: ...


# ---- health -------------------------------------------------------------------------------
@attrs.frozen
class Health:
    ok: bool
    reason: str


def check_health(
    inventory: Inventory,
    *,
    monitor_running: bool,
    plugins: Mapping[str, ResourceStatus],
    register: bool = True,
) -> Health:
    """Healthy while the monitor runs and each resource holding devices is served (and
    registered, when registering). ``plugins`` maps resource → an object with ``serving``
    and ``registered`` (``KubeletAdapter.status()``)."""
    if not monitor_running:
        return Health(False, "udev monitor is not running")
    unserved: list[str] = []
    unregistered: list[str] = []
    for resource in sorted(inventory.resources()):
        if not inventory.entries(resource):
            continue
        status = plugins.get(resource)
        if status is None or not status.serving:
            unserved.append(resource)
        elif register and not status.registered:
            unregistered.append(resource)
    problems = []
    if unserved:
        problems.append("not serving: " + ", ".join(unserved))
    if unregistered:
        problems.append("not registered with kubelet: " + ", ".join(unregistered))
    if problems:
        return Health(False, "; ".join(problems))
    return Health(True, "ok")


# ---- JSON views ---------------------------------------------------------------------------
def _time(epoch: Optional[float]) -> dict[str, Any]:
    if not epoch:
        return {"since": None, "since_epoch": None}
    return {"since": rfc3339(epoch), "since_epoch": round(epoch, 6)}


def entry_json(e: Entry, held_by: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """One device; ``held_by`` lists the containers holding it (None: not known)."""
    c = e.claim
    return {
        "id": e.id,
        "resource": e.resource,
        "health": e.health,
        "devnode": e.devnode,
        "syspath": e.syspath,
        "subsystem": e.subsystem,
        "rule": str(c.rule) if c.rule else None,
        **_time(e.since),
        "symlinks": list(e.symlinks),
        "physical": e.physical,
        "usb_node": e.usb_node,
        "topology": e.topology,
        "hostpath": e.hostpath,
        "share": c.share,
        "claim": claim_json(c, base_id=e.physical),
        "held_by": held_by,
    }


def event_json(r: EventRecord) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "action": r.action,
        "subsystem": r.subsystem,
        "devpath": r.devpath,
        "seqnum": r.seqnum,
        "received": rfc3339(r.received),
        "received_epoch": round(r.received, 6),
        "processing_us": round(r.processing_ns / 1000, 1),
        "changes": [{"resource": c.resource, "id": c.id, "state": c.state} for c in r.changes],
    }


def _status_json(status: Any) -> Any:
    if attrs.has(type(status)):
        return attrs.asdict(status)
    return status


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def _json(status: int, obj: Any) -> Response:
    return Response(status, JSON, _dumps(obj))


# ---- explain ------------------------------------------------------------------------------
def _trace_json(trace: Any) -> dict[str, Any]:
    return {"rule": str(trace.rule), "text": trace.rule.text, "matched": trace.matched,
            "reason": trace.reason or None}


def explain_device(pipeline: Pipeline, device: Device) -> dict[str, Any]:
    """Rules verdicts and the resulting claim for one device (does sysfs I/O: run in a thread).

    ``claim`` is ``core.views.claim_json`` (``null`` when no rule claims the device), with
    the reason when the device is refused."""
    traces = pipeline.ruleset.explain(device, action="add", domain=pipeline.domain, path_mode=pipeline.path_mode)
    sighting = pipeline.sight(device, "add", recall=False)  # a worker thread: not the event path's memory
    claim = sighting.claim
    base_id = sighting.refusal.base_id if sighting.refusal is not None else sighting.base_id
    return {
        "device": {
            "syspath": device.syspath,
            "devpath": device.devpath,
            "subsystem": device.subsystem,
            "driver": device.driver,
            "devnode": device.devnode,
            "symlinks": list(device.symlinks),
        },
        "rules": [_trace_json(t) for t in traces],
        "claim": None if claim is None else claim_json(claim, base_id=base_id, refusal=sighting.refusal),
    }


# ---- the app ------------------------------------------------------------------------------
class DebugApp:
    """Routes over the daemon's live state. Everything it reads is passed in as callables so
    it always sees the current rules, plugins and monitor state."""

    def __init__(
        self,
        inventory: Inventory,
        telemetry: Telemetry,
        *,
        pipeline: Callable[[], Pipeline],
        plugins: Callable[[], Mapping[str, ResourceStatus]] = dict,
        monitor_running: Callable[[], bool] = lambda: True,
        register: bool = True,
        node: str = "",
        source: Callable[[], str] = lambda: "",
        rules_error: Callable[[], Optional[str]] | None = None,
        find_device: Callable[[str], Device],
        holders: Optional[Callable[[], Awaitable[Optional[Mapping[tuple[str, str], Any]]]]] = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.inventory = inventory
        self.telemetry = telemetry
        self._pipeline = pipeline
        self._plugins = plugins
        self._monitor_running = monitor_running
        self._register = register
        self._node = node
        self._source = source
        self._rules_error = rules_error or (lambda: telemetry.rules_error)
        self._find_device = find_device
        self._holders = holders
        self._clock = clock
        self._routes = {
            "/inventory": self._inventory,
            "/events": self._events,
            "/explain": self._explain,
            "/healthz": self._healthz,
            "/stages": self._stages,
            "/metrics": self._metrics,
            "/": self._index,
        }
        self._public = frozenset({"/metrics", "/healthz", "/"})

    async def handle(self, method: str, path: str, query: Mapping[str, str]) -> Response:
        """Every route (the unix debug socket)."""
        route = self._routes.get(path)
        if route is None:
            return httpserve.text(404, f"not found: {path} (try {', '.join(sorted(self._routes))})")
        return await route(query)

    async def handle_metrics(self, method: str, path: str, query: Mapping[str, str]) -> Response:
        """``/metrics`` and ``/healthz`` only (the TCP address)."""
        if path not in self._public:
            return httpserve.text(404, f"not found: {path} (try /metrics, /healthz)")
        return await self.handle(method, path, query)

    def health(self) -> Health:
        return check_health(self.inventory, monitor_running=self._monitor_running(),
                            plugins=self._plugins(), register=self._register)

    def inventory_json(self, holders: Optional[Mapping[tuple[str, str], Any]] = None) -> dict[str, Any]:
        """``holders``: (resource, ID) → the containers holding it (kubelet's PodResources),
        None when that is not known."""
        pipeline = self._pipeline()
        health = self.health()
        now = self._clock() if self._clock else time.time()

        def held(e: Entry) -> Optional[list[dict[str, Any]]]:
            if holders is None:
                return None
            return [attrs.asdict(h) for h in holders.get((e.resource, e.id), ())]

        return {
            "devices": [entry_json(e, held(e)) for e in self.inventory.all_entries()],
            "pod_resources": "known" if holders is not None else ("unknown" if self._holders else "off"),
            "refused": [refusal_json(r) for r in self.inventory.refused()],
            "rules": {"files": list(pipeline.ruleset.files), "error": self._rules_error()},
            "plugins": {name: _status_json(s) for name, s in self._plugins().items()},
            "health": {"ok": health.ok, "reason": health.reason},
            "node": self._node,
            "source": self._source(),
            "generated_at": rfc3339(now),
        }

    # ---- routes ------------------------------------------------------------------------------
    async def _index(self, query: Mapping[str, str]) -> Response:
        return httpserve.text(200, "devplug: " + " ".join(sorted(p for p in self._routes if p != "/")))

    async def _inventory(self, query: Mapping[str, str]) -> Response:
        holders = await self._holders() if self._holders is not None else None
        return _json(200, self.inventory_json(holders))

    async def _events(self, query: Mapping[str, str]) -> Response:
        limit = query.get("limit")
        if limit is not None and not limit.isdigit():
            return httpserve.text(400, "limit must be a non-negative integer")
        records = self.telemetry.recent(None if limit is None else int(limit))
        return _json(200, {"events": [event_json(r) for r in records]})

    async def _explain(self, query: Mapping[str, str]) -> Response:
        spec = query.get("syspath") or query.get("devpath") or query.get("devnode") or query.get("device")
        if not spec:
            return httpserve.text(400, "give syspath=, devpath= or devnode=")
        pipeline = self._pipeline()

        def lookup() -> dict[str, Any]:
            return explain_device(pipeline, self._find_device(spec))

        try:
            result = await trio.to_thread.run_sync(lookup)
        except LookupError as exc:  # udev.DeviceNotFound
            return _json(404, {"error": str(exc)})
        binding = self.inventory.binding(result["device"]["syspath"])
        result["inventory"] = None if binding is None else {"resource": binding[0], "physical": binding[1]}
        result["rules_error"] = self._rules_error()
        return _json(200, result)

    async def _stages(self, query: Mapping[str, str]) -> Response:
        return _json(200, self.telemetry.stage_summary())

    async def _healthz(self, query: Mapping[str, str]) -> Response:
        health = self.health()
        return httpserve.text(200 if health.ok else 503, health.reason)

    async def _metrics(self, query: Mapping[str, str]) -> Response:
        return Response(200, metrics.CONTENT_TYPE, metrics.exposition(self.telemetry.registry))


async def serve(app: DebugApp, debug_socket: Optional[str], metrics_address: Optional[str],
                *, limits: httpserve.Limits = httpserve.Limits(), task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the debug socket and the metrics address (either may be None: disabled), each
    with its own connection cap (``httpserve.Limits``): a flood on one never locks out the other.

    ``task_status.started`` gets the bound metrics ``(host, port)`` (or None) once both listen.
    """
    async with trio.open_nursery() as nursery:
        bound = None
        if debug_socket:
            await nursery.start(functools.partial(httpserve.serve_unix, debug_socket, app.handle,
                                                  limits=limits, stats=app.telemetry.listener("debug")))
        if metrics_address:
            host, port = httpserve.parse_address(metrics_address)
            bound = await nursery.start(functools.partial(httpserve.serve_tcp, host, port, app.handle_metrics,
                                                          limits=limits, stats=app.telemetry.listener("metrics")))
        task_status.started(bound)
