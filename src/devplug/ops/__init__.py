"""What operators and other programs read: the debug socket and ``/metrics``/``/healthz``
(HTTP over h11), telemetry, and CDI specs for container runtimes."""
