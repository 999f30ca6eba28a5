"""gRPC over HTTP/2 on trio: the device plugin's server, written on the ``h2`` state machine.

``wire`` (framing, statuses, timeouts), ``calls`` (methods, limits, one call's state),
``connection`` (one HTTP/2 connection: reading, synchronous writing, flow control),
``server`` (listening, the connection cap, graceful stop). It knows nothing of kubelet:
``kubelet.servicer`` supplies the methods.
"""

from .calls import Limits, Method, ServerStream
from .server import Server, listen
from .wire import RpcError, Status, frame

__all__ = ["Limits", "Method", "RpcError", "Server", "ServerStream", "Status", "frame", "listen"]
