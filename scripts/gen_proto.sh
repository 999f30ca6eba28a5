#!/bin/sh
# Regenerate devplug's kubelet v1beta1 gRPC modules from src/devplug/kubelet/api.proto.
#
#   scripts/gen_proto.sh [OUTDIR]     (default: src/devplug/kubelet)
#
# Needs grpcio-tools (a test dependency only: the generated files are committed, so the
# runtime never needs it). protoc writes `import api_pb2` in the service module, which only
# works with the output directory on sys.path; we rewrite it to a package-relative import.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/src/devplug/kubelet"
out="${1:-$src}"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc \
    -I "$src" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$src/api.proto"
sed -i 's/^import api_pb2 as api__pb2$/from . import api_pb2 as api__pb2/' "$out/api_pb2_grpc.py"
grep -q '^from \. import api_pb2 as api__pb2$' "$out/api_pb2_grpc.py" || {
    echo "gen_proto.sh: could not rewrite the api_pb2 import" >&2
    exit 1
}
