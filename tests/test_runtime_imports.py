"""``devplug run`` does not load grpcio or trio-asyncio (the kubelet calls go over our own
h2 transport): a fresh interpreter imports what the daemon imports and lists the modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

PROBE = """
import json, sys
import devplug.cli, devplug.cli.run, devplug.daemon.run, devplug.kubelet.podresources
print(json.dumps(sorted(sys.modules)))
"""


def test_devplug_run_imports_neither_grpc_nor_trio_asyncio():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, cwd=SRC, timeout=60)
    modules = set(json.loads(out.stdout))
    assert "devplug.daemon.daemon" in modules and "devplug.kubelet.transport.client" in modules
    for banned in ("grpc", "trio_asyncio", "devplug.kubelet.api_pb2_grpc", "devplug.kubelet.podresources_pb2_grpc"):
        assert banned not in modules, f"{banned} is imported by devplug run"
    assert not [m for m in modules if m.startswith("grpc.") or m.startswith("grpc_")]
