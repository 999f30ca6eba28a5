"""Checks for devplug's assignment values: Kubernetes names, permissions, share counts, mounts.

Each check returns ``None`` when the value is fine, else a one-line message for the user.
The Kubernetes rules are those of ``k8s.io/apimachinery`` validation (``IsQualifiedName``,
``IsDNS1123Subdomain``) and ``IsExtendedResourceName`` in ``k8s.io/kubernetes``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Optional

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PERMISSION_CHARS = "rwm"
MAX_SHARE = 10000


def check_dns_subdomain(value: str) -> Optional[str]:
    if not value:
        return "empty domain"
    if len(value) > 253:
        return f"domain {value!r} is longer than 253 characters"
    if not _DNS_SUBDOMAIN.fullmatch(value):
        return f"domain {value!r} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
    return None


def check_name_part(value: str) -> Optional[str]:
    if not value:
        return "empty name"
    if len(value) > 63:
        return f"name {value!r} is longer than 63 characters"
    if not _NAME_PART.fullmatch(value):
        return (f"name {value!r} must consist of letters, digits, '-', '_' or '.', "
                "and start and end with a letter or digit")
    return None


def check_domain(domain: str) -> Optional[str]:
    """A resource domain (``devplug.io``): a DNS subdomain outside ``kubernetes.io``."""
    err = check_dns_subdomain(domain)
    if err:
        return err
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return f"domain {domain!r} is reserved for Kubernetes' own resources"
    if domain.startswith("requests."):
        return f"domain {domain!r} must not start with 'requests.'"
    if len("requests." + domain) > 253:
        return f"domain {domain!r} is too long for a resource quota name"
    return None


def _check_qualified(value: str, label: str, context: str,
                     check_prefix: Callable[[str], Optional[str]]) -> Optional[str]:
    """``[prefix/]name`` as Kubernetes qualifies names: one '/', a checked prefix, a name part."""
    if value.count("/") > 1:
        return f"{label} {value!r} has more than one '/'"
    prefix, slash, name = value.rpartition("/")
    err = (check_prefix(prefix) if slash else None) or check_name_part(name)
    return f"{context}: {err}" if err else None


def check_resource(value: str) -> Optional[str]:
    """A ``RESOURCE`` value: a short name (``serial``) or a full extended resource name."""
    return _check_qualified(value, "resource", f"invalid resource {value!r}", check_domain)


def full_resource(value: str, domain: str) -> str:
    return value if "/" in value else f"{domain}/{value}"


def check_permissions(value: str) -> Optional[str]:
    if not value or any(c not in PERMISSION_CHARS for c in value) or len(set(value)) != len(value):
        return f"PERMISSIONS must be a non-empty subset of 'rwm', got {value!r}"
    return None


def canonical_permissions(value: str) -> str:
    return "".join(c for c in PERMISSION_CHARS if c in value)


def check_share(value: str) -> Optional[str]:
    if not value.isdigit() or not 1 <= int(value) <= MAX_SHARE:
        return f"SHARE must be an integer from 1 to {MAX_SHARE}, got {value!r}"
    return None


def check_env_name(value: str) -> Optional[str]:
    if not _ENV_NAME.fullmatch(value):
        return f"environment variable name {value!r} must match [A-Za-z_][A-Za-z0-9_]*"
    return None


def check_annotation_key(value: str) -> Optional[str]:
    """A Kubernetes qualified name: ``[prefix/]name``."""
    return _check_qualified(value, "annotation key", f"annotation key {value!r}", check_dns_subdomain)


def split_mount(value: str) -> tuple[str, str, bool] | str:
    """``host:container[:ro|rw]`` → parts, or an error message. Paths must be absolute."""
    parts = value.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) != 2:
        return f"MOUNT must be 'host:container' or 'host:container:ro', got {value!r}"
    host, container = parts
    for what, path in (("host", host), ("container", container)):
        # A template (%N, $env{...}) is checked once expanded, against the device.
        if not path.startswith(("/", "%", "$")):
            return f"MOUNT {what} path must be absolute, got {path!r}"
    return host, container, read_only
