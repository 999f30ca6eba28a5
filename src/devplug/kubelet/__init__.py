"""The kubelet device plugin API v1beta1 front door.

``adapter`` (every resource's plugin, the plugin-directory watch and lock), ``plugin``
(one resource's serve → register → wait → tear down loop), ``registration``,
``servicer`` (the DevicePlugin service of one resource), ``transport`` (gRPC on HTTP/2 on
trio, written on h2: the plugin servers and the unary client of Register and PodResources),
``allocation`` (what Allocate and friends answer), ``podresources`` and ``collector``, and
the generated ``api_pb2``/``podresources_pb2`` (the ``*_pb2_grpc`` stubs beside them serve
the tests, which run grpcio; devplug never imports them).
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
