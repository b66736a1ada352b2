#!/usr/bin/env bash
# Runs one benchmark scenario and prints JSON lines (DESIGN §6). Benchmarks
# are not tests: figures go to docs/benchmarks.md, never into assertions.
#   scripts/bench.sh failover
#   scripts/bench.sh data
#   scripts/bench.sh safety          (fenced KV put vs raw put; as root also
#                                     the lease-lost demotion in netns)
#   scripts/bench.sh ring
#   scripts/bench.sh wal
#   scripts/bench.sh failover-full   (root: network namespaces)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
ensure_nats_server
if [ $# -ne 1 ]; then
  echo "usage: scripts/bench.sh <scenario>   (scenarios: failover, failover-full, rpc, data, safety, ring, wal)" >&2
  exit 2
fi
if [ "$1" = failover-full ] && [ "$(id -u)" -ne 0 ]; then
  echo "error: failover-full needs root: it builds network namespaces and moves a VIP (run: sudo scripts/bench.sh failover-full)" >&2
  exit 1
fi
cargo build --release --quiet -p cluster-testing --bins
if [ "$1" = failover-full ]; then
  # SIGKILL of the active (sqlite + VIP + process backend, ttl 1 s) → a
  # client in another namespace is answered through the VIP by the new
  # active. Extra arguments: FAILOVER_FULL_ARGS="--trials 30".
  # shellcheck disable=SC2086
  exec ./target/release/cluster-failover-bench ${FAILOVER_FULL_ARGS:-}
fi
if [ "$1" = wal ]; then
  # Our replicator vs stock Litestream 0.5.17 on the same nats-server.
  ensure_litestream
  ./target/release/cluster-wal-bench
  # Restore of a ~100 MB database, ours vs `litestream restore`.
  exec ./target/release/cluster-wal-restore-bench
fi
./target/release/cluster-bench "$1"
if [ "$1" = safety ]; then
  # A cut-off active (VIP + process backend, ttl 1 s, network namespaces):
  # lease deadline → VIP gone / backend dead. Extra arguments:
  # DEMOTION_ARGS="--trials 50".
  if [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2086
    ./target/release/cluster-demotion-bench ${DEMOTION_ARGS:-}
  else
    echo "note: skipping demotion.lease_lost: it needs root (network namespaces, a VIP); run: sudo scripts/bench.sh safety" >&2
  fi
fi
if [ "$1" = rpc ]; then
  # The generated-client line needs the macros, which live in `cluster`.
  cargo run --release --quiet -p cluster --example typed_bench
fi
