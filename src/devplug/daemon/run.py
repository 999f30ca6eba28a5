"""Starting and stopping the daemon: load the rules, run until SIGTERM/SIGINT, and turn
user-fixable start-up failures (a socket path taken, a plugin directory busy) into one line
and a non-zero exit."""

from __future__ import annotations

import gc
import logging
import resource
import signal

import trio

from ..config import Config
from ..core.rules import RulesError, RuleSet
from ..lib.logs import kv
from ..sources import rulefiles
from .daemon import Daemon

log = logging.getLogger("devplug")


async def serve(config: Config, ruleset: RuleSet, **daemon_kw) -> None:
    """Run a daemon until SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Daemon(config, ruleset, **daemon_kw).run)
            # What exists now (modules, rules, the coldplugged inventory) lives as long as the
            # process: keep it out of the cyclic collector's full passes, which otherwise stop
            # the event path for tens of ms once the heap is large.
            gc.freeze()

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping", extra=kv(signal=signal.Signals(signum).name))
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
    log.info("stopped")


def _leaves(group: BaseExceptionGroup) -> list[OSError]:
    out: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        elif isinstance(exc, OSError):
            out.append(exc)
    return out


def _raise_fd_limit() -> None:
    """Use the hard descriptor limit, as Go programs (kubelet) do: the soft one is often
    1,024, and the HTTP listeners size their connection caps from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return


def main(config: Config) -> int:
    """Load the rules and run; user-fixable problems end in one line and a non-zero exit."""
    _raise_fd_limit()
    try:
        ruleset = rulefiles.read_rules(config.rules_paths, max_bytes=config.max_rules_bytes)
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
            trio.run(serve, config, ruleset)
        except* OSError as group:  # a socket path taken, a directory busy or not writable
            failed.extend(_leaves(group))
    except KeyboardInterrupt:
        pass
    for exc in failed:
        log.error("cannot run", extra=kv(path=exc.filename, error=exc.strerror or str(exc)))
    return 1 if failed else 0
