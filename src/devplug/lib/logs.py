"""Logging as key=value lines (people) or JSON lines (machines), through stdlib logging.

Call sites log a short event name plus context: ``log.info("device healthy", extra=kv(id=..., resource=...))``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

def kv(**fields: Any) -> dict[str, Any]:
    """Context fields for ``extra=``; kept under one attribute so they never clash with LogRecord's."""
    return {"kv": fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return dict(getattr(record, "kv", {}) or {})


def _quote(value: Any) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' "=\t\n'):
        return json.dumps(s)
    return s


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
