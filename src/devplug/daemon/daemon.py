"""The daemon: wires sources → core → front doors in one trio nursery.

Order matters at start: the netlink monitor opens *before* coldplug enumerates, so a
device plugged in between is seen by the event stream (and folding it twice is a no-op);
coldplug finishes before kubelet is served, so kubelet's first list is complete. Slow work
(probing udevd, enumerating, parsing rules, expanding host-path globs, fsyncing CDI specs)
runs in worker threads; its results are applied on the trio thread. SIGTERM/SIGINT cancel
the nursery; every adapter removes what it created on the way out.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Optional, Protocol

import trio

from ..config import Config
from ..core.claims import Pipeline
from ..core.device import Device, PathMode, Report
from ..core.inventory import Change, Inventory
from ..core.view import PublishedView
from ..core.rules import RulesError, RuleSet
from ..kubelet import KubeletAdapter
from ..kubelet.collector import Collector
from ..kubelet.podresources import Holders, PodResources
from ..lib.logs import kv
from ..ops import debug
from ..ops.cdi import CdiPublisher, CdiWriter
from ..ops.telemetry import Telemetry
from ..sources import hostpath, rulefiles, system
from ..sources.udev import DeviceEvent, Drained, Resync, SourceItem, UdevSource, Uevent, find_device, resolve_source

log = logging.getLogger("devplug")


class Source(Protocol):
    """What the daemon needs of an event source (``UdevSource``; tests feed records)."""

    source_kind: str

    def open(self) -> None: ...
    def close(self) -> None: ...
    def enumerate(self) -> Sequence[Device]: ...
    def events(self) -> AsyncIterator[SourceItem]: ...


#: ``(subsystems, resolved kind) -> Source``; the subsystems are the rules' netlink filter.
SourceFactory = Callable[[Optional[frozenset[str]], str], Source]


class Daemon:
    """The running daemon's state, shared by its tasks (all on one trio thread)."""

    def __init__(self, config: Config, ruleset: RuleSet, *, source_factory: Optional[SourceFactory] = None,
                 paths: Optional[PathMode] = None, find: Callable[[str], Device] = find_device) -> None:
        self.config = config
        self.ruleset = ruleset
        self.rules_error: Optional[str] = None
        self.inventory = Inventory()
        self.telemetry = Telemetry(self.inventory)
        self.monitor_running = False
        # The machine as rules see it: TEST{}, SYSCTL{}, CONST{}, other devices' attributes.
        self.pipeline = Pipeline(ruleset, self.inventory, domain=config.domain, path_mode=paths or system.host(),
                                 present=self._present, chain=self._chain_stamp)
        self.cdi = CdiWriter(config.cdi_spec_dir, vendor_domain=config.domain) if config.cdi_spec_dir else None
        # With CDI, kubelet lists what was published after the specs were written.
        self.view = PublishedView(self.inventory) if self.cdi else None
        self._cdi = CdiPublisher(self.cdi, self.view, self._notify) if self.cdi and self.view else None
        self.kubelet = KubeletAdapter(
            plugin_dir=config.plugin_dir,
            inventory=self.view or self.inventory,
            pre_start_check=config.pre_start_check,
            register=config.register,
            cdi=self.cdi.qualified_names if self.cdi else None,
            telemetry=self.telemetry,
        )
        self.pod_resources = PodResources(config.pod_resources_socket) if config.pod_resources_socket else None
        self.collector = Collector(self.inventory, self.publish, self._holders, grace=config.forget_after,
                                   cap=config.max_unhealthy, on_forgotten=self.telemetry.on_forgotten)
        self._source_factory = source_factory or self._udev_source
        self._find = find
        self.source_kind = config.udev_source if source_factory is None else "test"
        self.source: Optional[Source] = None
        self._served: set[str] = set(ruleset.resources(config.domain))
        self._nursery: Optional[trio.Nursery] = None
        self._consume_scope: Optional[trio.CancelScope] = None
        self._consume_done = trio.Event()
        self._hostpath_scope: Optional[trio.CancelScope] = None

    async def _holders(self) -> Optional[Holders]:
        return await self.pod_resources.holders() if self.pod_resources is not None else None

    def _present(self, device: Device) -> bool:
        """Whether the source still sees the device (a source that cannot tell: yes)."""
        present = getattr(self.source, "present", None)
        return present(device) if present is not None else True

    def _chain_stamp(self, report: Report) -> Optional[int]:
        """The source's stamp for the device's parent chain (None: it cannot vouch)."""
        stamp = getattr(self.source, "chain_stamp", None)
        return stamp(report) if stamp is not None else None

    def _udev_source(self, subsystems: Optional[frozenset[str]], kind: str) -> Source:
        return UdevSource(source=kind, subsystems=subsystems, receive_buffer=self.config.netlink_buffer)

    # ---- publishing changes --------------------------------------------------------------
    def publish(self, change: Change) -> None:
        """Hand a change to the front doors: new resources get servers, streams wake up.

        With CDI, the streams wake only after the specs are written (a worker thread does
        the fsync), so any ID kubelet can allocate is already in the spec."""
        if change.refused or change.twins:
            for refusal in change.refused:  # once per device, whether or not a resource changed
                log.warning("device refused", extra=kv(**refusal.fields()))
            for twin in change.twins:
                log.warning("devices derive the same ID, told apart by kernel path", extra=kv(**twin.fields()))
            self.telemetry.on_refused(change.refused)
        if not change.resources:  # bool(change), without the call: every uevent passes here
            return
        if not change.resources <= self._served:
            # A resource the change dropped (forgotten on reload) must not come back here.
            new = (change.resources & self.inventory.resources()) - self._served
            if new:
                self._served |= new
                self.kubelet.set_resources(self._served)
        if self._cdi is None:
            self.kubelet.notify(change)
        else:
            self._cdi.mark(change.resources)
        self.collector.wake(change)  # after the lists went out: it only plans, later

    def _notify(self, resources: frozenset[str]) -> None:
        self.kubelet.notify(Change(resources=resources))

    # ---- lifetime ---------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._source_factory == self._udev_source:
            # "auto" asks udevd over its control socket, retrying while it is busy.
            self.source_kind = await trio.to_thread.run_sync(resolve_source, self.config.udev_source)
        self.source = self._source_factory(self.ruleset.subsystems, self.source_kind)
        self.source.open()
        log.info("starting", extra=kv(
            node=self.config.node_name, source=self.source_kind,
            rules=",".join(self.ruleset.files), resources=",".join(sorted(self._served)),
            subsystems=",".join(sorted(self.ruleset.subsystems)) if self.ruleset.subsystems else "*"))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.config.debug_socket or self.config.metrics_address:
                    # First: a taken socket or port fails the start before kubelet sees us.
                    await nursery.start(debug.serve, self.debug_app(), self.config.debug_socket,
                                        self.config.metrics_address)
                # Coldplug before serving: kubelet's first list is already complete.
                await self._resync("coldplug")
                if self._cdi is not None:
                    await self._cdi.flush()
                    nursery.start_soon(self._cdi.run)
                self.kubelet.set_resources(self._served)
                await nursery.start(self.kubelet.run)
                nursery.start_soon(self.collector.run)
                await self._start_hostpaths()
                await nursery.start(self._consume)
                await nursery.start(rulefiles.watch, self.config.rules_paths, self.reload)
                task_status.started(self)
        finally:
            if self.source is not None:
                self.source.close()
            if self.cdi is not None:
                self.cdi.remove_all()

    def debug_app(self) -> debug.DebugApp:
        return debug.DebugApp(
            self.inventory, self.telemetry,
            pipeline=lambda: self.pipeline,
            plugins=self.kubelet.status,
            monitor_running=lambda: self.monitor_running,
            register=self.config.register,
            node=self.config.node_name,
            source=lambda: self.source_kind,
            rules_error=lambda: self.rules_error,
            find_device=self._find,
            holders=self._holders if self.pod_resources is not None else None,
        )

    # ---- events -----------------------------------------------------------------------
    async def _resync(self, reason: str, devices: Optional[Sequence[Device]] = None) -> Change:
        """Fold a full enumeration in: enumerating and evaluating the rules (which reads
        sysfs attributes) run in a worker thread, the inventory update on this one."""
        assert self.source is not None
        source, pipeline = self.source, self.pipeline

        def sight() -> list:
            found = source.enumerate() if devices is None else devices
            return pipeline.sight_all(found)

        t0 = trio.current_time()
        sightings = await trio.to_thread.run_sync(sight)
        change = self.inventory.resync(sightings, hostpath=False)
        self.publish(change)
        if change:
            log.info("resync", extra=kv(reason=reason, changed=len(change.ids),
                                        resources=",".join(sorted(change.resources)),
                                        ms=round((trio.current_time() - t0) * 1e3, 1)))
        self.telemetry.on_resync(reason, change)
        return change

    async def _consume(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        done = self._consume_done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._consume_scope = scope
                task_status.started()
                self.monitor_running = True
                await self._consume_events()
        finally:
            self.monitor_running = False
            done.set()

    async def _consume_events(self) -> None:
        """Fold events in as they are read. The first change a stream gets is written inside
        ``publish``; nothing checkpoints between the events of one wake-up, so the rest of a
        burst reaches it as one more message with the final state, written once the queue is
        drained; only then is the batch logged and counted (off the path from uevent to
        kubelet)."""
        assert self.source is not None
        done: list[tuple[DeviceEvent | Uevent, Change]] = []
        async for item in self.source.events():
            kind = type(item)
            if kind is Uevent or kind is DeviceEvent:
                built = perf_counter_ns()
                # A Uevent builds its record only if the pipeline asks (see ``Uevent``).
                change = self.pipeline.handle(item if kind is Uevent else item.device, item.action)
                handled = perf_counter_ns()
                if change.resources:  # before publish: the streams send (and report it) inside publish
                    self.telemetry.mark(change, item.received_ns, built, handled, item.read_ns)
                self.publish(change)
                done.append((item, change))
            elif isinstance(item, Drained):
                if done:
                    await trio.lowlevel.checkpoint()  # the woken streams write now
                    self._account(done)
                    done = []
            elif isinstance(item, Resync):  # the source has logged why
                if done:
                    self._account(done)
                    done = []
                if item.reason == "overflow":
                    self.telemetry.on_overflow()
                await self._resync(item.reason, item.devices)

    def _account(self, done: list[tuple[DeviceEvent | Uevent, Change]]) -> None:
        for item, change in done:
            if change:
                self._log_change(change, item.action if item.origin == "uevent" else f"{item.action} ({item.origin})",
                                 item.syspath)
            if item.origin == "uevent":
                self.telemetry.on_event(item.action, item.subsystem, item.devpath, item.seqnum, item.received_ns,
                                        change)

    def _log_change(self, change: Change, action: str, syspath: str) -> None:
        """One line per ID whose state changed (logged after kubelet was told)."""
        for resource, entry_id in change.ids:
            entry = self.inventory.get(resource, entry_id)
            if entry is not None:
                log.info("device %s", entry.health.lower(), extra=kv(
                    action=action, resource=resource, id=entry_id, devnode=entry.devnode, syspath=syspath))
            else:
                log.info("device left resource", extra=kv(action=action, resource=resource, id=entry_id))

    # ---- host paths -------------------------------------------------------------------
    async def _start_hostpaths(self) -> None:
        if self._hostpath_scope is not None:
            self._hostpath_scope.cancel()
            self._hostpath_scope = None
        patterns = self.ruleset.hostpath_patterns()
        if not patterns:
            self.publish(self.pipeline.resync_paths(()))
            return
        assert self._nursery is not None
        await self._nursery.start(self._watch_hostpaths, patterns)

    async def _watch_hostpaths(self, patterns: tuple[str, ...], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._hostpath_scope = scope
            await hostpath.watch(patterns, self._on_paths, task_status=task_status)

    def _on_paths(self, paths: list[str]) -> None:
        change = self.pipeline.resync_paths(paths)
        if change:
            log.info("host paths changed", extra=kv(ids=",".join(i for _r, i in change.ids)))
        self.publish(change)

    # ---- live reload ------------------------------------------------------------------
    async def reload(self) -> None:
        """New rules: keep the last good ones on any error, else re-evaluate everything.

        An unexpected error here is logged and counted, never allowed to stop the daemon:
        the devices keep being served under the last good rules."""
        try:
            ruleset = await trio.to_thread.run_sync(self._read_rules)
        except RulesError as exc:
            for err in exc.errors:
                log.error("rules reload failed", extra=kv(error=str(err)))
            self._reload_failed(str(exc), f"{len(exc.errors)} errors")
            return
        except OSError as exc:
            log.error("rules reload failed", extra=kv(path=exc.filename, error=exc.strerror))
            self._reload_failed(f"{exc.filename}: {exc.strerror}", "unreadable")
            return
        try:
            await self._apply_rules(ruleset)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("rules reload failed unexpectedly", extra=kv(error=repr(exc)))
            self._reload_failed(f"internal error while applying the rules: {exc!r}", "internal error")

    def _read_rules(self) -> RuleSet:
        """Parse the rules (a worker thread: a large set takes seconds)."""
        return rulefiles.read_rules(self.config.rules_paths, max_bytes=self.config.max_rules_bytes)

    def _reload_failed(self, error: str, summary: str) -> None:
        self.rules_error = error
        log.error("keeping the last good rules", extra=kv(reason=summary))
        self.telemetry.on_reload(False, error)

    async def _apply_rules(self, ruleset: RuleSet) -> None:
        old = self.ruleset
        self.pipeline.ruleset = self.ruleset = ruleset
        try:
            if ruleset.subsystems != old.subsystems:
                await self._reopen_source(ruleset)
            await self._resync("reload")
        except BaseException:
            self.pipeline.ruleset = self.ruleset = old
            raise
        self.rules_error = None
        self.telemetry.on_reload(True)
        if ruleset.hostpath_patterns() != old.hostpath_patterns():
            await self._start_hostpaths()
        else:
            paths = await trio.to_thread.run_sync(hostpath.expand, ruleset.hostpath_patterns())
            self.publish(self.pipeline.resync_paths(paths))
        keep = set(ruleset.resources(self.config.domain)) | self.inventory.bound_resources()
        self.publish(self.inventory.forget(self.inventory.resources() - keep))
        self._served = set(keep)
        self.kubelet.set_resources(self._served)
        log.info("rules reloaded", extra=kv(rules=len(ruleset.rules), resources=",".join(sorted(keep))))

    async def _reopen_source(self, ruleset: RuleSet) -> None:
        """The subsystem filter changed: a new monitor (opened before enumeration)."""
        if self._consume_scope is not None:
            self._consume_scope.cancel()
            await self._consume_done.wait()  # never close a monitor a task still reads
        if self.source is not None:
            self.source.close()
        self.source = self._source_factory(ruleset.subsystems, self.source_kind)
        self.source.open()
        assert self._nursery is not None
        await self._nursery.start(self._consume)
