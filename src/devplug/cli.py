"""Command line: ``devplug run | rules check | rules test | devices``.

Every ``run`` flag has a ``DEVPLUG_<FLAG>`` environment equivalent (flags win), so a
DaemonSet can be configured either way. User errors end in one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from . import __version__


def _env(name: str, default: Optional[str]) -> Optional[str]:
    return os.environ.get("DEVPLUG_" + name.upper().replace("-", "_"), default)


def _env_bool(name: str) -> bool:
    return (_env(name, "") or "").lower() in ("1", "true", "yes", "on")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="serve the matched devices to kubelet (the daemon)",
        description="Watch udev, keep the live inventory and serve each resource to kubelet. "
        "Every flag can also be set as DEVPLUG_<FLAG> in the environment.",
    )
    p.add_argument("--rules", action="append", default=None, metavar="PATH",
                   help="rules file or directory (repeatable; default: the embedded rules; env DEVPLUG_RULES, ':'-separated)")
    p.add_argument("--domain", default=_env("domain", "devplug.io"), help="resource domain (default devplug.io)")
    p.add_argument("--plugin-dir", default=_env("plugin-dir", "/var/lib/kubelet/device-plugins"),
                   help="kubelet's device plugin directory")
    p.add_argument("--debug-socket", default=_env("debug-socket", "/run/devplug/debug.sock"),
                   help="unix socket serving the inventory (empty disables)")
    p.add_argument("--udev-source", choices=("auto", "udev", "kernel"), default=_env("udev-source", "auto"),
                   help="netlink source: udev (processed events, needs a udevd), kernel (raw uevents), auto")
    p.add_argument("--netlink-buffer", type=int, default=int(_env("netlink-buffer", str(128 * 1024 * 1024)) or 0),
                   metavar="BYTES", help="netlink receive buffer to ask for (default 128 MiB; above "
                   "net.core.rmem_max it needs CAP_NET_ADMIN)")
    p.add_argument("--node-name", default=_env("node-name", os.environ.get("NODE_NAME") or os.uname().nodename),
                   help="node name for logs and annotations (default: $NODE_NAME or the host name)")
    p.add_argument("--metrics-address", default=_env("metrics-address", ""),
                   help="HOST:PORT serving /metrics and /healthz (empty disables)")
    p.add_argument("--pre-start-check", action="store_true", default=_env_bool("pre-start-check"),
                   help="ask kubelet to call PreStartContainer and re-check the device node then")
    p.add_argument("--cdi-spec-dir", default=_env("cdi-spec-dir", ""),
                   help="write CDI specs here (e.g. /var/run/cdi) and return CDI names from Allocate")
    p.add_argument("--no-register", action="store_true", default=_env_bool("no-register"),
                   help="serve the plugin sockets without registering with kubelet (testing)")
    p.add_argument("--log-level", default=_env("log-level", "info"),
                   choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default=_env("log-format", "text"), choices=("text", "json"))
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from . import app, logs

    logs.setup(args.log_level, args.log_format)
    rules = args.rules
    if rules is None:
        env_rules = _env("rules", None)
        rules = env_rules.split(":") if env_rules else None
    config = app.Config(
        rules=tuple(rules) if rules else (),
        domain=args.domain,
        plugin_dir=args.plugin_dir,
        debug_socket=args.debug_socket or None,
        udev_source=args.udev_source,
        netlink_buffer=args.netlink_buffer,
        node_name=args.node_name,
        metrics_address=args.metrics_address or None,
        pre_start_check=args.pre_start_check,
        cdi_spec_dir=args.cdi_spec_dir or None,
        register=not args.no_register,
    )
    return app.main(config)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """All commands; for ``run`` only itself, so the daemon never imports the others."""
    parser = argparse.ArgumentParser(
        prog="devplug",
        description="Kubernetes device plugin for hot-pluggable host devices, matched by udev-style rules.",
    )
    parser.add_argument("--version", action="version", version=f"devplug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    if command != "run":
        from . import cmd_devices, cmd_inventory, cmd_rules

        cmd_rules.register(sub)
        cmd_devices.register(sub)
        cmd_inventory.register(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `devplug devices | head` must not end in a traceback.
        sys.stderr.close()
        return 0
