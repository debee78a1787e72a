#!/usr/bin/env bash
# Decode + count of a big jobrequests answer, ado-scaler beside a KEDA-shaped Go decoder on
# the same file and machine (BENCHMARKS.md). Installs Debian's golang-go if `go` is missing.
#   scripts/bench-decode.sh [iterations]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-20}"

if ! command -v go >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  echo "installing Debian's golang-go"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends golang-go >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build -q --release --example decode
./target/release/examples/decode write "$work/body.json"
(cd benches/keda-anchor && GOFLAGS=-mod=mod go build -o "$work/keda-anchor" .)

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(go version)"
"$work/keda-anchor" "$work/body.json" "$iterations"
./target/release/examples/decode run "$work/body.json" "$iterations" 1
./target/release/examples/decode run "$work/body.json" "$iterations" 10
