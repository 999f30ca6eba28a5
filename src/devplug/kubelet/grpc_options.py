"""gRPC channel arguments for calling kubelet over unix sockets (Register, PodResources).

The plugin servers no longer run on grpcio (``kubelet.transport``); what follows is one
reason why. Idle wake-ups (measured with bench/idle_wakeups.py on the 2-core VM, grpcio
1.85): a bare grpc.aio server with no calls wakes 5-13 times a second, and the adapter with
a registered resource and an open ListAndWatch stream is no different. Every one of them comes from
gRPC core's event engine, whose constants are compiled in: the thread pool's "lifeguard"
checks at most 1 s apart, its idle workers back off from 15 ms to 3 s, and the timer
thread ticks once a second. No channel or server argument (keepalive, BDP probing,
channelz, retries, so_reuseport) and no environment knob (GRPC_ENABLE_FORK_SUPPORT,
GRPC_POLL_STRATEGY, GRPC_EXPERIMENTS, GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS) changed
the rate beyond its run-to-run noise; devplug's own threads (trio + the asyncio loop) add
about 0.1/s. A channel's threads end with it, so Register costs nothing once it returned.
"""

from __future__ import annotations

# Registration: fail at once when kubelet refuses or is gone, so devplug's own backoff
# (event-driven by inotify on kubelet.sock) decides when to try again.
CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.enable_channelz", 0),
    ("grpc.enable_retries", 0),
    # A connection of its own for every Register: gRPC otherwise shares subchannels per
    # address across channels, and a new kubelet at the same socket path would be reached
    # through the old kubelet's still-open connection (a hung or dying process).
    ("grpc.use_local_subchannel_pool", 1),
]
