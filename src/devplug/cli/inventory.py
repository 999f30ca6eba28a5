"""``devplug inventory``: ask a running daemon what it holds, over its debug socket.

A plain blocking HTTP/1.1 client (h11 over an ``AF_UNIX`` socket): the CLI makes one
request and exits, so there is nothing to gain from an event loop here.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, Optional, TextIO

import attrs
import h11

from .. import config

TIMEOUT = 10.0
COLUMNS = ("RESOURCE", "ID", "HEALTH", "DEVNODE", "HELD BY", "RULE", "SINCE")

_REASONS = {
    errno.ENOENT: "no such file",
    errno.ECONNREFUSED: "connection refused",
    errno.EACCES: "permission denied",
    errno.ENOTSOCK: "not a socket",
}


class ClientError(Exception):
    """One line for the user."""


@attrs.frozen
class HttpResult:
    status: int
    content_type: str
    body: bytes


def http_get(socket_path: str, target: str, *, timeout: float = TIMEOUT) -> HttpResult:
    """GET ``target`` from the HTTP server on a unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
            hint = " (is devplug run started with --debug-socket?)" if exc.errno in (
                errno.ENOENT, errno.ECONNREFUSED) else ""
            raise ClientError(f"cannot connect to {socket_path}: {reason}{hint}") from None
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=target,
                              headers=[("host", "devplug"), ("connection", "close")])
        try:
            sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
            return _read_response(conn, sock)
        except (OSError, h11.ProtocolError) as exc:
            raise ClientError(f"{socket_path}: {exc.__class__.__name__}: {exc}") from None
    finally:
        sock.close()


def _read_response(conn: h11.Connection, sock: socket.socket) -> HttpResult:
    status = 0
    content_type = ""
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            content_type = dict(event.headers).get(b"content-type", b"").decode("latin-1")
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return HttpResult(status, content_type, bytes(body))


def fetch_inventory(socket_path: str) -> dict[str, Any]:
    result = http_get(socket_path, "/inventory")
    if result.status != 200:
        first = result.body.decode("utf-8", "replace").strip().splitlines()[:1]
        raise ClientError(f"{socket_path} answered {result.status}" + (f": {first[0]}" if first else ""))
    try:
        return json.loads(result.body)
    except ValueError as exc:
        raise ClientError(f"{socket_path}: answer is not JSON ({exc})") from None


# ---- table ----------------------------------------------------------------------------------
def _since(device: dict[str, Any]) -> str:
    epoch = device.get("since_epoch")
    if not epoch:
        return "-"
    dt = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _held_by(device: dict[str, Any]) -> str:
    """``namespace/pod/container`` of each holder; ``?`` when kubelet could not say."""
    held = device.get("held_by")
    if held is None:
        return "?"
    return ",".join(f"{h['namespace']}/{h['pod']}/{h['container']}" for h in held) or "-"


def rows(inventory: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (d.get("resource") or "-", d.get("id") or "-", d.get("health") or "-",
         d.get("devnode") or "-", _held_by(d), d.get("rule") or "-", _since(d))
        for d in inventory.get("devices", [])
    ]


def format_table(table: Sequence[Sequence[str]], header: Sequence[str] = COLUMNS) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one unpadded."""
    all_rows = [tuple(header), *(tuple(r) for r in table)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = []
    for r in all_rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def print_inventory(inventory: dict[str, Any], out: TextIO, err: TextIO) -> None:
    out.write(format_table(rows(inventory)))
    rules = inventory.get("rules") or {}
    if rules.get("error"):
        err.write(f"warning: serving the last good rules; the current ones are invalid:\n{rules['error']}\n")
    for r in inventory.get("refused") or ():
        where = r.get("devnode") or r.get("syspath") or "-"
        err.write(f"refused: {where} ({r.get('resource')}, not offered): {r.get('reason')}\n")


# ---- command --------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inventory",
        help="show the devices a running daemon holds",
        description="Ask a running `devplug run` for its inventory over the debug socket.",
    )
    p.add_argument("--debug-socket", default=os.environ.get("DEVPLUG_DEBUG_SOCKET") or config.DEBUG_SOCKET,
                   metavar="PATH", help=f"the daemon's debug socket (default {config.DEBUG_SOCKET}; "
                   "env DEVPLUG_DEBUG_SOCKET)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON as is")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        inventory = fetch_inventory(args.debug_socket)
    except ClientError as exc:
        err.write(f"devplug inventory: {exc}\n")
        return 1
    if args.json:
        out.write(json.dumps(inventory, indent=2) + "\n")
    else:
        print_inventory(inventory, out, err)
    return 0
