#!/usr/bin/env bash
# Build bench/gokubelet/gokubelet (the Go kubelet receiver of the latency benchmarks) from
# Debian's Go packages only, offline: GOPATH mode against /usr/share/gocode, with the device
# plugin messages and stubs generated from src/devplug/kubelet/api.proto by protoc-gen-go and
# protoc-gen-go-grpc. Needs (see README.md here, or `scripts/setup --bench`):
#   apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#       golang-github-golang-protobuf-1-5-dev golang-golang-x-sys-dev \
#       protobuf-compiler protoc-gen-go protoc-gen-go-grpc
# Cached: does nothing when the binary is newer than every input (-f forces a rebuild).
# Everything generated lives in .build/ (gitignored), the binary beside this script.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
proto="$root/src/devplug/kubelet/api.proto"
bin="$here/gokubelet"

force=0
[ "${1:-}" = "-f" ] && force=1
if [ "$force" = 0 ] && [ -x "$bin" ]; then
    stale=0
    for f in "$here"/*.go "$proto" "$here/build.sh"; do
        [ "$f" -nt "$bin" ] && stale=1
    done
    [ "$stale" = 0 ] && { echo "$bin is up to date"; exit 0; }
fi

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (scripts/setup --bench)" >&2; exit 3; }
done
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || { echo "build.sh: golang-google-grpc-dev is missing" >&2; exit 3; }

gopath="$here/.build/gopath"
pkg="$gopath/src/gokubelet"
rm -rf "$pkg"
mkdir -p "$pkg/v1beta1"
cp "$here"/*.go "$pkg/"
cp "$proto" "$pkg/v1beta1/api.proto"
# api.proto has no go_package option (it is shared with the Python side): M maps it.
(cd "$pkg/v1beta1" && protoc -I. \
    --go_out=. --go_opt=paths=source_relative --go_opt=Mapi.proto=gokubelet/v1beta1 \
    --go-grpc_out=. --go-grpc_opt=paths=source_relative --go-grpc_opt=Mapi.proto=gokubelet/v1beta1 \
    api.proto)

export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS= GOPROXY=off
export GOCACHE="${GOCACHE:-$here/.build/cache}"
(cd "$pkg" && go vet . && go build -trimpath -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
echo "built $bin ($(go version | cut -d' ' -f3), grpc-go $(dpkg-query -W -f='${Version}' golang-google-grpc-dev 2>/dev/null || echo '?'))"
