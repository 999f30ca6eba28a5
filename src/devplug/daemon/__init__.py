"""The daemon: one trio nursery wiring sources → core → front doors (``daemon``), and its
start and stop (``run``)."""

from .daemon import Daemon, Source, SourceFactory
from .run import main, serve

__all__ = ["Daemon", "Source", "SourceFactory", "main", "serve"]
