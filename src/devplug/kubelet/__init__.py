"""Kubelet device plugin API v1beta1: generated messages, servicer, and the adapter."""

from .adapter import (
    API_VERSION,
    KUBELET_SOCKET,
    KubeletAdapter,
    ResourceStatus,
    socket_name,
)
from .allocation import env_name

__all__ = [
    "API_VERSION",
    "KUBELET_SOCKET",
    "KubeletAdapter",
    "ResourceStatus",
    "env_name",
    "socket_name",
]
