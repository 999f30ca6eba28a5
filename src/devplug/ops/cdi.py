"""CDI (Container Device Interface) specs for the devices devplug serves.

With ``--cdi-spec-dir`` devplug keeps one spec file per resource in that directory
(``/var/run/cdi`` for containerd ≥ 1.7 and CRI-O), and Allocate names the devices as
``devplug.io/<resource>=<id>`` in ``cdi_devices``: the runtime then injects the nodes,
mounts and environment itself. The same files let ``podman run --device
devplug.io/ftdi-serial=<id>`` use a device with no Kubernetes at all.

What goes into a device is what Allocate returns, both rendered from ``devplug.core.edits``:
the node at its container path, its udev symlinks and the USB node when the rule's
``OPTIONS`` ask for them, the rule's mounts and ``CONTAINER_ENV``. Only healthy entries
are written: an unplugged device's last devnode may already belong to another device.

Files are replaced atomically (a temporary file in the same directory, then
``os.replace``), because runtimes watch the directory and may read at any moment; a spec
that would list no device is removed instead, since CDI rejects a spec without devices
and older CDI libraries then refuse every spec in the directory.

``cdiVersion`` is the lowest version that allows what we emit, so older runtimes accept
it: 0.5.0 (``hostPath`` in device nodes and device names starting with a digit are 0.5.0
features; containerd 1.7.0 ships a CDI library whose newest spec version is 0.5.0),
0.6.0 only when the class name contains a dot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ..core.edits import entry_edits
from ..core.inventory import Entry
from ..core.view import PublishedView, State
from ..lib.logs import kv

log = logging.getLogger("devplug.cdi")

#: CDI device names: ASCII letters and digits at both ends, ``_ - . :`` allowed between.
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
#: CDI vendor and class names: a letter first, a letter or digit last, ``_ - .`` between.
VENDOR_CLASS_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")

_NOT_NAME = re.compile(r"[^A-Za-z0-9_.:-]+")
_NOT_CLASS = re.compile(r"[^A-Za-z0-9_.-]+")


def _digest(raw: str) -> str:
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def device_name(device_id: str) -> str:
    """The CDI device name for a devplug device ID: the ID itself when CDI accepts it
    (devplug's IDs, ``[A-Za-z0-9._-]`` with clean ends, always are), else a cleaned
    form plus a hash of the original so two IDs never share a name."""
    if DEVICE_NAME_RE.match(device_id):
        return device_id
    cleaned = _NOT_NAME.sub("_", device_id).strip("_.:-")
    return f"{cleaned}-{_digest(device_id)}" if cleaned else _digest(device_id)


def _vendor_or_class(name: str) -> str:
    if VENDOR_CLASS_RE.match(name):
        return name
    cleaned = _NOT_CLASS.sub("_", name).strip("_.-")
    # A class must start with a letter; Kubernetes resource names may start with a digit.
    return f"x-{cleaned}-{_digest(name)}" if cleaned else f"x-{_digest(name)}"


def spec_version(cls: str) -> str:
    """The lowest cdiVersion for a spec of this class (see the module docstring)."""
    return "0.6.0" if "." in cls else "0.5.0"


def container_edits(entry: Entry) -> dict[str, Any]:
    """The CDI ``containerEdits`` of one entry: ``devplug.core.edits`` rendered as CDI JSON,
    the same nodes, mounts and environment Allocate hands kubelet for it."""
    edits = entry_edits(entry)
    out: dict[str, Any] = {}
    if edits.envs:
        out["env"] = [f"{k}={v}" for k, v in edits.envs]
    if edits.devices:
        # Always name the permissions: CDI's default for an empty value is "rwm".
        out["deviceNodes"] = [{"path": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}
                              for d in edits.devices]
    if edits.mounts:
        out["mounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path, "type": "bind",
                          "options": ["rbind", "ro" if m.read_only else "rw"]} for m in edits.mounts]
    return out


class CdiWriter:
    """Writes and keeps current ``<spec_dir>/<vendor>-<class>.json``, one file per resource.

    ``update`` is cheap when nothing changed (the last bytes written are remembered), so
    the app may call it after every inventory change of a resource. It must run before
    the change reaches kubelet (ListAndWatch), so that any ID kubelet can allocate is
    already in the spec the runtime reads. I/O errors propagate: the caller logs them.
    """

    def __init__(self, spec_dir: str, *, vendor_domain: str) -> None:
        self.spec_dir = spec_dir
        self.vendor_domain = vendor_domain
        self._written: dict[str, bytes] = {}
        os.makedirs(spec_dir, mode=0o755, exist_ok=True)

    # ---- names -----------------------------------------------------------------------
    def kind(self, resource: str) -> str:
        """``devplug.io/ftdi-serial`` for the resource ``devplug.io/ftdi-serial`` (or the
        bare ``ftdi-serial``); a resource of another domain keeps its own domain."""
        vendor, _, cls = resource.rpartition("/")
        return f"{_vendor_or_class(vendor or self.vendor_domain)}/{_vendor_or_class(cls)}"

    def path(self, resource: str) -> str:
        """The spec file of a resource (CDI's own naming: ``<vendor>-<class>.json``)."""
        vendor, _, cls = self.kind(resource).partition("/")
        return os.path.join(self.spec_dir, f"{vendor}-{cls}.json")

    def qualified_names(self, entry: Entry) -> list[str]:
        """The fully qualified CDI names of an entry, as Allocate returns them."""
        return [f"{self.kind(entry.resource)}={device_name(entry.id)}"]

    # ---- files -----------------------------------------------------------------------
    def render(self, resource: str, entries: Sequence[Entry]) -> dict[str, Any]:
        """The spec document for the healthy ``entries`` (sorted by ID) of a resource."""
        kind = self.kind(resource)
        devices = [
            {"name": device_name(e.id), "containerEdits": container_edits(e)}
            for e in sorted(entries, key=lambda e: e.id)
            if e.healthy
        ]
        return {"cdiVersion": spec_version(kind.partition("/")[2]), "kind": kind, "devices": devices}

    def update(self, resource: str, entries: Sequence[Entry]) -> bool:
        """Make the resource's spec file describe ``entries``; True when the file changed.

        No healthy entry → the file is removed (CDI rejects a spec without devices).
        """
        path = self.path(resource)
        spec = self.render(resource, entries)
        if not spec["devices"]:
            return self._remove(path)
        data = (json.dumps(spec, indent=2) + "\n").encode()
        if self._written.get(path) == data:
            return False
        self._write_atomically(path, data)
        self._written[path] = data
        return True

    def remove(self, resource: str) -> bool:
        """Remove one resource's spec (its last rule is gone); True when a file went."""
        return self._remove(self.path(resource))

    def remove_all(self) -> None:
        """Remove every spec this writer wrote (on shutdown)."""
        for path in list(self._written):
            self._remove(path)

    def _remove(self, path: str) -> bool:
        self._written.pop(path, None)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _write_atomically(self, path: str, data: bytes) -> None:
        # The temporary name ends in .tmp, which CDI registries ignore (they load *.json
        # and *.yaml), and lives in the same directory so os.replace is a rename.
        fd, tmp = tempfile.mkstemp(dir=self.spec_dir, prefix=".devplug-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


class CdiPublisher:
    """Keeps the specs current off the trio thread, and streams after the specs.

    The daemon marks the resources a change touched; one task writes their specs in a
    worker thread (the fsync must not block events or RPCs), then publishes the state it
    wrote to the front doors' :class:`~devplug.core.view.PublishedView` and wakes them. So
    any ID kubelet can list is already in the spec the runtime reads.
    """

    def __init__(self, writer: CdiWriter, view: PublishedView, notify: Callable[[frozenset[str]], None]) -> None:
        self.writer = writer
        self._view = view
        self._notify = notify
        self._pending: set[str] = set()
        self._wake = trio.Event()
        self._lock = trio.Lock()

    def mark(self, resources: Iterable[str]) -> None:
        """These resources changed (synchronous: called on the event path)."""
        self._pending.update(resources)
        self._wake.set()

    async def flush(self) -> None:
        """Write what changed since the last flush, publish it, wake the streams."""
        async with self._lock:
            pending, self._pending = self._pending, set()
            if not pending:
                return
            # Entry tuples are immutable: the snapshot is safe in the worker thread.
            snapshot = self._view.snapshot(sorted(pending))
            await trio.to_thread.run_sync(self._write, snapshot)
            # The state the specs were written from, not what changed meanwhile: the next
            # flush publishes that, after its own write.
            self._view.publish(snapshot)
            self._notify(frozenset(pending))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()

    def _write(self, snapshot: dict[str, State]) -> None:
        for resource, state in snapshot.items():
            try:
                if state is None:
                    self.writer.remove(resource)
                else:
                    self.writer.update(resource, state[1])
            except OSError as exc:
                log.error("cannot write CDI spec", extra=kv(resource=resource, path=exc.filename, error=exc.strerror))
