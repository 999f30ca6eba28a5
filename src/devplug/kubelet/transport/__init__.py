"""gRPC over HTTP/2 on trio, written on the ``h2`` state machine: the device plugin's server
and the unary client devplug calls kubelet with.

``wire`` (framing, statuses, timeouts), ``calls`` (methods, limits, one call's state),
``connection`` (one HTTP/2 connection: reading, synchronous writing, flow control),
``server`` (listening, the connection cap, graceful stop), ``client`` (one unary call on a
connection of its own: Register, PodResources). It knows nothing of kubelet:
``kubelet.servicer`` supplies the methods, ``kubelet.registration`` and
``kubelet.podresources`` the calls.
"""

from .calls import Limits, Method, ServerStream
from .client import Unavailable, unary_call
from .server import Server, listen
from .wire import RpcError, Status, frame

__all__ = ["Limits", "Method", "RpcError", "Server", "ServerStream", "Status", "Unavailable", "frame", "listen",
           "unary_call"]
