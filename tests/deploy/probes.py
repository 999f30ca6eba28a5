"""Small programs the deployment tests run in another namespace or with dropped privileges.

Run as scripts (``python probes.py listen ...`` / ``python probes.py privileges ...``) so
each check happens in a fresh process that really has the namespaces and capabilities a
devplug container would have. Standard library only: the probe must not depend on the
environment it is checking.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import sys
import time

NETLINK_KOBJECT_UEVENT = 15
SO_RCVBUFFORCE = 33
KERNEL_GROUP, UDEV_GROUP = 1, 2


def uevent_socket(group: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT)
    s.bind((0, group))
    return s


def wait_for(s: socket.socket, needle: bytes, seconds: float) -> bool:
    """True once a message containing ``needle`` arrives within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0]:
            try:
                data = s.recv(1 << 16)
            except BlockingIOError:
                continue
            if needle in data:
                return True
    return False


def listen(group: int, seconds: float, needle: str) -> None:
    """Print READY once bound, then GOT or NONE."""
    s = uevent_socket(group)
    print("READY", flush=True)
    print("GOT" if wait_for(s, needle.encode(), seconds) else "NONE", flush=True)


def _status(field: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    return ""


def _try(fn) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


def _bind_unix(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()


def _connect_unix(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()


def _inotify(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(path), 0x100 | 0x200) < 0:  # IN_CREATE|IN_DELETE
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
    finally:
        os.close(fd)


def privileges(config_json: str) -> None:
    """What devplug needs, tried as the process we are (uid 0, no capabilities).

    Prints READY, waits for uevents (the parent triggers them), then prints one JSON line.
    """
    cfg = json.loads(config_json)
    result: dict[str, object] = {
        "uid": os.getuid(),
        "cap_eff": _status("CapEff"),
        "no_new_privs": _status("NoNewPrivs"),
    }
    kernel = uevent_socket(KERNEL_GROUP)
    udev = uevent_socket(UDEV_GROUP)
    # libudev's order: SO_RCVBUF (capped at net.core.rmem_max), then SO_RCVBUFFORCE.
    result["rcvbuf_set"] = _try(
        lambda: kernel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
    )
    result["rcvbuf_capped"] = kernel.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    result["rcvbufforce"] = _try(
        lambda: kernel.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
    )
    result["rcvbuf"] = kernel.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    result["bind_in_root_dir"] = _try(lambda: _bind_unix(cfg["root_dir_socket"]))
    result["bind_in_foreign_dir"] = _try(lambda: _bind_unix(cfg["foreign_dir_socket"]))
    result["connect_root_socket"] = _try(lambda: _connect_unix(cfg["root_socket"]))
    result["inotify"] = _try(lambda: _inotify(cfg["watch_dir"]))
    result["read_udev_db"] = _try(lambda: open(cfg["udev_db_file"], "rb").close()) if cfg.get("udev_db_file") else "skipped"
    result["stat_devnode"] = _try(lambda: os.stat(cfg["devnode"]))
    print("READY", flush=True)
    needle = cfg["needle"].encode()
    result["kernel_uevent"] = wait_for(kernel, needle, cfg["seconds"])
    result["udev_uevent"] = wait_for(udev, needle, cfg["seconds"]) if cfg.get("udev") else None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "privileges":
        privileges(sys.argv[2])
    else:
        sys.exit(f"unknown probe {sys.argv[1]!r}")
