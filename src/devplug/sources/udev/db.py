"""Read udev's database (``/run/udev/data``) for devices seen through the kernel source.

Kernel uevents carry only what the kernel knows. When ``/run/udev`` is readable (a host with
a udevd, or a pod mounting it) the database adds what udevd's rules computed: ``S:``
symlinks, ``E:`` properties, ``G:``/``Q:`` tags. The file is named after the device:
``c``/``b`` + ``major:minor`` for device nodes, ``n`` + ifindex for network interfaces,
``+subsystem:sysname`` for everything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Optional

import attrs

from ...core.device import Device

DEFAULT_DB_DIR = "/run/udev/data"


@attrs.frozen
class DbEntry:
    """One parsed udev database file."""

    properties: dict[str, str] = attrs.field(factory=dict)
    symlinks: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    current_tags: tuple[str, ...] = ()
    usec_initialized: Optional[str] = None
    #: ``V:`` line: databases of udev ≥ 247 have it and keep current tags in ``Q:`` lines.
    version: Optional[str] = None
    #: (inode, ctime) of the file read: udevd renames a new file into place on every write,
    #: so an unchanged stamp means this content is still current.
    stamp: Optional[tuple[int, int]] = None
    #: What :func:`merged` adds to an event naming no symlinks, worked out once per file read.
    layers: Optional[Layers] = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Layers:
    """An entry as merged into an event's properties: ``under`` them (the entry's ``E:``
    properties, ``USEC_INITIALIZED``) and ``over`` them (``DEVLINKS``, ``TAGS``,
    ``CURRENT_TAGS``, which libudev synthesizes from the entry), and its sorted links."""

    under: dict[str, str]
    over: dict[str, str]
    links: tuple[str, ...]


def db_id(device: Device) -> Optional[str]:
    """The database file name udev uses for ``device``, or ``None`` when it has no subsystem."""
    return db_name(device.subsystem, device.devpath, device.properties)


def db_name(subsystem: Optional[str], devpath: str, props: Mapping[str, str]) -> Optional[str]:
    """:func:`db_id` from what a uevent says (its ``SUBSYSTEM``, ``DEVPATH`` and properties)."""
    major, minor = props.get("MAJOR"), props.get("MINOR")
    if major is not None and minor is not None:
        return f"{'b' if subsystem == 'block' else 'c'}{major}:{minor}"
    ifindex = props.get("IFINDEX")
    if subsystem == "net" and ifindex and ifindex != "0":
        return f"n{ifindex}"
    if subsystem is None:
        return None
    sysname = devpath.rpartition("/")[2].replace("!", "/")
    if subsystem == "drivers":  # /sys/bus/X/drivers/Y: udev names it by the bus
        parts = devpath.split("/")
        return f"+drivers:{parts[2]}:{sysname}" if len(parts) > 3 else None
    return f"+{subsystem}:{sysname}"


def parse_db(text: str) -> DbEntry:
    """Parse the ``X:value`` lines of a database file; unknown line kinds are ignored."""
    props: dict[str, str] = {}
    links: list[str] = []
    tags: list[str] = []
    current: list[str] = []
    usec: Optional[str] = None
    version: Optional[str] = None
    for line in text.splitlines():
        if len(line) < 2 or line[1] != ":":
            continue
        kind, value = line[0], line[2:]
        if kind == "S":
            links.append("/dev/" + value)
        elif kind == "E":
            key, sep, val = value.partition("=")
            if sep:
                props[key] = val
        elif kind == "G":
            tags.append(value)
        elif kind == "Q":
            current.append(value)
        elif kind == "I":
            usec = value
        elif kind == "V":
            version = value
    entry = DbEntry(props, tuple(links), tuple(tags), tuple(current), usec, version)
    under, sorted_links = _merged(props, (), entry)
    over = {key: under.pop(key) for key in ("DEVLINKS", "TAGS", "CURRENT_TAGS") if key in under}
    if props.keys() & over.keys():  # E: lines naming those keys: merge them the long way
        return entry
    return attrs.evolve(entry, layers=Layers(under, over, sorted_links))


def read_db(device: Device, db_dir: str = DEFAULT_DB_DIR) -> Optional[DbEntry]:
    """The database entry for ``device``, or ``None`` (no file, not readable)."""
    name = db_id(device)
    return None if name is None else read_db_file(name, db_dir)


def read_db_file(name: str, db_dir: str = DEFAULT_DB_DIR) -> Optional[DbEntry]:
    """The database entry in file ``name`` (see :func:`db_id`), or ``None``. A name with a
    ``/`` (a kernel name with ``!``) is no file of the flat database directory, and never a
    path elsewhere."""
    if "/" in name:
        return None
    try:
        fd = os.open(f"{db_dir}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 1 << 20)
        st = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return attrs.evolve(parse_db(raw.decode("utf-8", "surrogateescape")), stamp=(st.st_ino, st.st_ctime_ns))


def db_stamp(name: str, db_dir: str = DEFAULT_DB_DIR) -> Optional[tuple[int, int]]:
    """The (inode, ctime) of a database file now, or ``None`` when it is not there."""
    if "/" in name:
        return None
    try:
        st = os.stat(f"{db_dir}/{name}")
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _tag_string(tags: tuple[str, ...]) -> str:
    return ":" + ":".join(tags) + ":"


def enrich(device: Device, entry: Optional[DbEntry]) -> Device:
    """``device`` (from a kernel uevent) with the database's view merged in as libudev does.

    The uevent's own properties win over the database's; ``DEVLINKS``, ``TAGS``,
    ``CURRENT_TAGS`` and ``USEC_INITIALIZED`` are synthesized as libudev synthesizes them.
    """
    if entry is None:
        return device
    props, symlinks = merged(device.properties, device.symlinks, entry)
    current = entry.current_tags if entry.version is not None else entry.tags
    return attrs.evolve(device, symlinks=symlinks, properties=props, tags=frozenset(current))


def merged(props: Mapping[str, str], symlinks: Iterable[str], entry: DbEntry) -> tuple[dict[str, str], tuple[str, ...]]:
    """The properties and symlinks of :func:`enrich`: of a record, or of a uevent as it
    said them (``symlinks``: its ``DEVLINKS``), which is what the recall compares. An event
    naming no symlinks (every kernel uevent) takes the entry's :class:`Layers`: two dict
    copies instead of sorting its links and tags again on every event."""
    layers = entry.layers
    if layers is not None and not symlinks:
        out = dict(layers.under)
        out.update(props)
        out.update(layers.over)
        return out, layers.links
    return _merged(props, symlinks, entry)


def _merged(props: Mapping[str, str], symlinks: Iterable[str], entry: DbEntry) -> tuple[dict[str, str], tuple[str, ...]]:
    out = dict(entry.properties)
    out.update(props)
    links = tuple(sorted(set(symlinks) | set(entry.symlinks)))
    if links:
        out["DEVLINKS"] = " ".join(links)
    all_tags = tuple(sorted(set(entry.tags) | set(entry.current_tags)))
    if all_tags:
        out["TAGS"] = _tag_string(all_tags)
    if entry.current_tags:
        out["CURRENT_TAGS"] = _tag_string(tuple(sorted(entry.current_tags)))
    if entry.usec_initialized is not None:
        out.setdefault("USEC_INITIALIZED", entry.usec_initialized)
    return out, links
