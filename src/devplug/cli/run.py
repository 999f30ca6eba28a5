"""``devplug run``: flags (or ``DEVPLUG_<FLAG>`` environment variables) → :class:`Config` → daemon."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, Optional

from .. import config


def _env(name: str, default: Optional[str]) -> Optional[str]:
    return os.environ.get("DEVPLUG_" + name.upper().replace("-", "_"), default)


def _env_bool(name: str) -> bool:
    return (_env(name, "") or "").lower() in ("1", "true", "yes", "on")


def _bytes(text: str) -> int:
    try:
        return config.parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 1048576, 512K, 4M)") from None


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number above zero."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero: {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="serve the matched devices to kubelet (the daemon)",
        description="Watch udev, keep the live inventory and serve each resource to kubelet. "
        "Every flag can also be set as DEVPLUG_<FLAG> in the environment.",
    )
    p.add_argument("--rules", action="append", default=None, metavar="PATH",
                   help="rules file or directory (repeatable; default: the embedded rules; env DEVPLUG_RULES, ':'-separated)")
    p.add_argument("--domain", default=_env("domain", config.DOMAIN), help=f"resource domain (default {config.DOMAIN})")
    p.add_argument("--plugin-dir", default=_env("plugin-dir", config.PLUGIN_DIR),
                   help="kubelet's device plugin directory")
    p.add_argument("--debug-socket", default=_env("debug-socket", config.DEBUG_SOCKET),
                   help="unix socket serving the inventory (empty disables)")
    p.add_argument("--udev-source", choices=config.UDEV_SOURCES, default=_env("udev-source", config.UDEV_SOURCE),
                   help="netlink source: udev (processed events, needs a udevd), kernel (raw uevents), auto")
    p.add_argument("--netlink-buffer", type=int, default=int(_env("netlink-buffer", str(config.NETLINK_BUFFER)) or 0),
                   metavar="BYTES", help="netlink receive buffer to ask for (default 128 MiB; above "
                   "net.core.rmem_max it needs CAP_NET_ADMIN)")
    p.add_argument("--max-rules-bytes", type=_bytes, default=_env("max-rules-bytes", str(config.MAX_RULES_BYTES)),
                   metavar="BYTES", help="refuse a rules set larger than this (all files together; 512K, 1M…; "
                   "default 1 MiB); on reload the last good rules stay")
    p.add_argument("--node-name", default=_env("node-name", os.environ.get("NODE_NAME") or os.uname().nodename),
                   help="node name for logs and annotations (default: $NODE_NAME or the host name)")
    p.add_argument("--metrics-address", default=_env("metrics-address", ""),
                   help="HOST:PORT serving /metrics and /healthz (empty disables)")
    p.add_argument("--pre-start-check", action="store_true", default=_env_bool("pre-start-check"),
                   help="ask kubelet to call PreStartContainer and re-check the device node then")
    p.add_argument("--cdi-spec-dir", default=_env("cdi-spec-dir", ""),
                   help="write CDI specs here (e.g. /var/run/cdi) and return CDI names from Allocate")
    p.add_argument("--pod-resources-socket", default=_env("pod-resources-socket", config.POD_RESOURCES_SOCKET),
                   help="kubelet's PodResources socket: which pod holds which ID (empty: unknown)")
    p.add_argument("--forget-after", type=_positive(float), metavar="SECONDS",
                   default=_env("forget-after", str(config.FORGET_AFTER)),
                   help=f"forget an Unhealthy ID no pod holds after this long (default {config.FORGET_AFTER:g})")
    p.add_argument("--max-unhealthy", type=_positive(int), metavar="N",
                   default=_env("max-unhealthy", str(config.MAX_UNHEALTHY)),
                   help="keep at most N Unhealthy IDs no pod is known to hold, per resource "
                   f"(default {config.MAX_UNHEALTHY})")
    p.add_argument("--no-register", action="store_true", default=_env_bool("no-register"),
                   help="serve the plugin sockets without registering with kubelet (testing)")
    p.add_argument("--log-level", default=_env("log-level", config.LOG_LEVEL),
                   choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default=_env("log-format", config.LOG_FORMAT), choices=("text", "json"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import daemon
    from ..lib import logs

    logs.setup(args.log_level, args.log_format)
    rules = args.rules
    if rules is None:
        env_rules = _env("rules", None)
        rules = env_rules.split(":") if env_rules else None
    cfg = config.Config(
        rules=tuple(rules) if rules else (),
        domain=args.domain,
        plugin_dir=args.plugin_dir,
        debug_socket=args.debug_socket or None,
        udev_source=args.udev_source,
        netlink_buffer=args.netlink_buffer,
        max_rules_bytes=args.max_rules_bytes,
        node_name=args.node_name,
        metrics_address=args.metrics_address or None,
        pre_start_check=args.pre_start_check,
        cdi_spec_dir=args.cdi_spec_dir or None,
        register=not args.no_register,
        pod_resources_socket=args.pod_resources_socket or None,
        forget_after=args.forget_after,
        max_unhealthy=args.max_unhealthy,
    )
    return daemon.main(cfg)
