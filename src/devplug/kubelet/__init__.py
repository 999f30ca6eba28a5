"""The kubelet device plugin API v1beta1 front door.

``adapter`` (every resource's plugin, the plugin-directory watch and lock), ``plugin``
(one resource's serve → register → wait → tear down loop), ``registration``,
``servicer`` (the DevicePlugin service of one resource), ``transport`` (the gRPC server:
HTTP/2 on trio, written on h2), ``allocation`` (what Allocate and friends answer), and the
generated ``api_pb2``/``api_pb2_grpc``.
"""

from .adapter import KubeletAdapter, PluginDirBusy, ResourceStatus
from .allocation import env_name
from .plugin import socket_name
from .registration import API_VERSION, KUBELET_SOCKET

__all__ = [
    "API_VERSION",
    "KUBELET_SOCKET",
    "KubeletAdapter",
    "PluginDirBusy",
    "ResourceStatus",
    "env_name",
    "socket_name",
]
