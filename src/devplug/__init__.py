"""devplug: hot-pluggable host devices as Kubernetes extended resources."""

__version__ = "0.1.0"
