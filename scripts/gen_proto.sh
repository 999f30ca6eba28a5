#!/bin/sh
# Regenerate devplug's kubelet gRPC modules from src/devplug/kubelet/api.proto (device
# plugin v1beta1) and podresources.proto (PodResources v1).
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
for name in api podresources; do
    "$python" -m grpc_tools.protoc \
        -I "$src" \
        --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
        "$src/$name.proto"
    sed -i "s/^import ${name}_pb2 as ${name}__pb2\$/from . import ${name}_pb2 as ${name}__pb2/" "$out/${name}_pb2_grpc.py"
    grep -q "^from \. import ${name}_pb2 as ${name}__pb2\$" "$out/${name}_pb2_grpc.py" || {
        echo "gen_proto.sh: could not rewrite the ${name}_pb2 import" >&2
        exit 1
    }
done
