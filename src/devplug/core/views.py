"""The JSON shape of what the rules made of a device: one function, one set of field names.

``/inventory`` (each entry's ``claim``), ``/explain`` and ``devplug rules test --json`` all
show a device's rule results; they render them here so a tool reading one reads the others.
Field names follow the kubelet API (``host_path``, ``container_path``, ``envs``). Pure.
"""

from __future__ import annotations

from typing import Any, Optional

from .inventory import HOSTPATH_PREFIX, Refusal
from .rules.model import Claim


def refusal_json(r: Refusal) -> dict[str, Any]:
    """A claimed device that is not offered, and why."""
    hostpath = r.key.startswith(HOSTPATH_PREFIX)
    return {
        "resource": r.resource,
        "id": r.base_id,
        "syspath": None if hostpath else r.key,
        "hostpath": hostpath,
        "devnode": r.devnode,
        "subsystem": r.subsystem,
        "rule": r.rule,
        "reason": r.reason,
    }


def claim_json(claim: Claim, *, base_id: Optional[str] = None, refusal: Optional[Refusal] = None) -> dict[str, Any]:
    """The final assignments of all rules for one device.

    ``id`` is the device's base ID (before ``SHARE`` copies); ``errors`` the assignments
    whose templates gave no safe value; ``refused`` why the device is not offered (those
    errors, or a path the kernel gave), else ``None``.
    """
    return {
        "resource": claim.resource,
        "id": base_id,
        "rule": str(claim.rule) if claim.rule else None,
        "matched": [str(r) for r in claim.matched],
        "permissions": claim.permissions,
        "share": claim.share,
        "device_id": claim.device_id,
        "container_path": claim.container_path,
        "mounts": [{"host_path": m.host_path, "container_path": m.container_path, "read_only": m.read_only}
                   for m in claim.mounts],
        "envs": dict(claim.envs),
        "annotations": dict(claim.annotations),
        "options": sorted(claim.options),
        "errors": [str(e) for e in claim.errors],
        "refused": None if refusal is None else {"rule": refusal.rule, "reason": refusal.reason},
    }
