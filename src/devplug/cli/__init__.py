"""Command line: ``devplug run | inventory | devices | rules check | rules test``.

One module per command; each registers its own sub-parser. ``run`` parses only its own
flags, so the daemon never imports the other commands. User errors end in one clear line
and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .. import __version__
from . import run


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """All commands; for ``run`` only itself, so the daemon never imports the others."""
    parser = argparse.ArgumentParser(
        prog="devplug",
        description="Kubernetes device plugin for hot-pluggable host devices, matched by udev-style rules.",
    )
    parser.add_argument("--version", action="version", version=f"devplug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.register(sub)
    if command != "run":
        from . import devices, inventory, rules

        rules.register(sub)
        devices.register(sub)
        inventory.register(sub)
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
