"""``devplug run``: wires udev source, rules, inventory and kubelet plugins in one nursery.

Order matters at start: the netlink monitor opens *before* coldplug enumerates, so a
device plugged in between is seen by the event stream (and folding it twice is a no-op).
SIGTERM/SIGINT cancel the nursery; every adapter removes what it created on the way out.
"""

from __future__ import annotations

import logging
import signal
from typing import Optional

import trio
import trio_asyncio

from .config import Config
from .core.claims import Pipeline
from .core.inventory import Change, Inventory
from .core.rules import RulesError, RuleSet
from .kubelet import KubeletAdapter
from .lib.logs import kv
from .ops import debug
from .ops.cdi import CdiWriter
from .ops.telemetry import Telemetry
from .sources import hostpath, rulefiles, system
from .sources.udev import DeviceEvent, Resync, UdevSource, find_device

log = logging.getLogger("devplug")


class Daemon:
    """The running daemon's state, shared by its tasks (all on one trio thread)."""

    def __init__(self, config: Config, ruleset: RuleSet) -> None:
        self.config = config
        self.ruleset = ruleset
        self.rules_error: Optional[str] = None
        self.inventory = Inventory()
        self.telemetry = Telemetry(self.inventory)
        self.monitor_running = False
        self.pipeline = Pipeline(ruleset, self.inventory, domain=config.domain, path_mode=system.host())
        self.cdi = CdiWriter(config.cdi_spec_dir, vendor_domain=config.domain) if config.cdi_spec_dir else None
        self.kubelet = KubeletAdapter(
            plugin_dir=config.plugin_dir,
            inventory=self.inventory,
            pre_start_check=config.pre_start_check,
            register=config.register,
            cdi=self.cdi.qualified_names if self.cdi else None,
            telemetry=self.telemetry,
        )
        self.source = self._new_source(ruleset)
        self._served: set[str] = set(ruleset.resources(config.domain))
        self._nursery: Optional[trio.Nursery] = None
        self._consume_scope: Optional[trio.CancelScope] = None
        self._consume_done = trio.Event()
        self._hostpath_scope: Optional[trio.CancelScope] = None

    def _new_source(self, ruleset: RuleSet) -> UdevSource:
        return UdevSource(source=self.config.udev_source, subsystems=ruleset.subsystems,
                          receive_buffer=self.config.netlink_buffer)

    def publish(self, change: Change) -> None:
        """Hand a change to kubelet: new resources get servers, streams wake up."""
        if not change:
            return
        if self.cdi is not None:
            self._write_cdi(change.resources)
        # A resource the change dropped (forgotten on reload) must not come back here.
        new = (change.resources & self.inventory.resources()) - self._served
        if new:
            self._served |= new
            self.kubelet.set_resources(self._served)
        self.kubelet.notify(change)

    def _write_cdi(self, resources: frozenset[str]) -> None:
        """Specs first, streams after: any ID kubelet can allocate is already in the spec."""
        assert self.cdi is not None
        for resource in sorted(resources):
            try:
                if resource in self.inventory.resources():
                    self.cdi.update(resource, self.inventory.entries(resource))
                else:
                    self.cdi.remove(resource)
            except OSError as exc:
                log.error("cannot write CDI spec", extra=kv(resource=resource, path=exc.filename,
                                                            error=exc.strerror))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.source.open()
        log.info("starting", extra=kv(
            node=self.config.node_name, source=self.source.source_kind,
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
                change = self.pipeline.resync(self.source.enumerate())
                self.publish(change)
                _log_resync("coldplug", change)
                self.telemetry.on_resync("coldplug", change)
                self.kubelet.set_resources(self._served)
                await nursery.start(self.kubelet.run)
                await self._start_hostpaths()
                await nursery.start(self._consume)
                await nursery.start(rulefiles.watch, self.config.rules_paths, self.reload)
                task_status.started(self)
        finally:
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
            source=lambda: self.source.source_kind,
            rules_error=lambda: self.rules_error,
            find_device=find_device,
        )

    # ---- tasks ------------------------------------------------------------------------
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
        async for item in self.source.events():
            if isinstance(item, DeviceEvent):
                change = self.pipeline.handle(item.device, item.action)
                self.publish(change)
                if change:
                    # No checkpoint between events: a burst drained in one wake-up reaches
                    # each stream as one message with the final state.
                    self._log_change(change, item.action, item.device.syspath)
                d = item.device
                self.telemetry.on_event(item.action, d.subsystem, d.devpath, item.seqnum, item.received_ns, change)
            elif isinstance(item, Resync):  # the source has logged why
                change = self.pipeline.resync(item.devices)
                self.publish(change)
                _log_resync(item.reason, change)
                if item.reason == "overflow":
                    self.telemetry.on_overflow()
                self.telemetry.on_resync(item.reason, change)

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

    def _log_change(self, change: Change, action: str, syspath: str) -> None:
        """One line per ID whose state changed (logged after kubelet was told)."""
        for resource, entry_id in change.ids:
            entry = self.inventory.get(resource, entry_id)
            if entry is not None:
                log.info("device %s", entry.health.lower(), extra=kv(
                    action=action, resource=resource, id=entry_id, devnode=entry.devnode, syspath=syspath))
            else:
                log.info("device left resource", extra=kv(action=action, resource=resource, id=entry_id))

    # ---- live reload --------------------------------------------------------------------
    async def reload(self) -> None:
        """New rules: keep the last good ones on error, else re-evaluate everything."""
        try:
            ruleset = rulefiles.read_rules(self.config.rules_paths, max_bytes=self.config.max_rules_bytes)
        except RulesError as exc:
            self.rules_error = str(exc)
            for err in exc.errors:
                log.error("rules reload failed", extra=kv(error=str(err)))
            log.error("keeping the last good rules", extra=kv(errors=len(exc.errors)))
            self.telemetry.on_reload(False, self.rules_error)
            return
        except OSError as exc:
            self.rules_error = f"{exc.filename}: {exc.strerror}"
            log.error("rules reload failed", extra=kv(path=exc.filename, error=exc.strerror))
            self.telemetry.on_reload(False, self.rules_error)
            return
        old, self.ruleset = self.ruleset, ruleset
        self.rules_error = None
        self.telemetry.on_reload(True)
        self.pipeline.ruleset = ruleset
        if ruleset.subsystems != old.subsystems:
            await self._reopen_source(ruleset)
        changes = [self.pipeline.resync(self.source.enumerate())]
        if ruleset.hostpath_patterns() != old.hostpath_patterns():
            await self._start_hostpaths()
        else:
            changes.append(self.pipeline.resync_paths(hostpath.expand(ruleset.hostpath_patterns())))
        keep = set(ruleset.resources(self.config.domain)) | self.inventory.bound_resources()
        changes.append(self.inventory.forget(self.inventory.resources() - keep))
        self._served = set(keep)
        self.kubelet.set_resources(self._served)
        for change in changes:
            self.publish(change)
        log.info("rules reloaded", extra=kv(rules=len(ruleset.rules), resources=",".join(sorted(keep))))

    async def _reopen_source(self, ruleset: RuleSet) -> None:
        """The subsystem filter changed: a new monitor (opened before enumeration)."""
        if self._consume_scope is not None:
            self._consume_scope.cancel()
            await self._consume_done.wait()  # never close a monitor a task still reads
        self.source.close()
        self.source = self._new_source(ruleset)
        self.source.open()
        assert self._nursery is not None
        await self._nursery.start(self._consume)


async def _serve(config: Config, ruleset: RuleSet) -> None:
    async with trio_asyncio.open_loop():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                daemon = Daemon(config, ruleset)
                await nursery.start(daemon.run)

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("stopping", extra=kv(signal=signal.Signals(signum).name))
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
    log.info("stopped")


def load(config: Config) -> RuleSet:
    return rulefiles.read_rules(config.rules_paths, max_bytes=config.max_rules_bytes)


def _log_resync(reason: str, change: Change) -> None:
    if change:
        log.info("resync", extra=kv(reason=reason, changed=len(change.ids),
                                    resources=",".join(sorted(change.resources))))


def _leaves(group: BaseExceptionGroup) -> list[OSError]:
    out: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        elif isinstance(exc, OSError):
            out.append(exc)
    return out


def main(config: Config) -> int:
    try:
        ruleset = load(config)
    except RulesError as exc:
        for err in exc.errors:
            log.error("rules invalid", extra=kv(error=str(err)))
        log.error("rules invalid, not starting", extra=kv(errors=len(exc.errors)))
        return 2
    except OSError as exc:
        log.error("cannot read rules", extra=kv(path=exc.filename, error=exc.strerror))
        return 2
    failed: list[OSError] = []
    try:
        try:
            trio.run(_serve, config, ruleset)
        except* OSError as group:  # a socket path taken, a directory not writable: user-fixable
            failed.extend(_leaves(group))
    except KeyboardInterrupt:
        pass
    for exc in failed:
        log.error("cannot run", extra=kv(path=exc.filename, error=exc.strerror or str(exc)))
    return 1 if failed else 0
