#!/usr/bin/env bash
# Jepsen-style safety suites (docs/chaos.md): real node processes, real
# nats-server, seeded faults, client histories checked for linearizability,
# lost adds, overlapping executions and stale-epoch writes. Prints one JSON
# line per suite; exits non-zero if any suite found a violation or could
# not verify. A failing run's history is saved and its path printed.
#   scripts/chaos.sh [--seconds N] [--seed S] [--suite counter|register|set|nats|ring|all]
#
# Debug build on purpose: the workspace's target/ is kept warm in debug by
# every test run, a release build would compile the whole tree again on a
# shared 2-core box, and the workload is bound by NATS round trips and
# fault timing (lease TTLs), not by CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
ensure_nats_server

SECONDS_ARG=60 SEED=1 SUITE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_ARG=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "error: unknown argument \`$1\` (use --seconds N, --seed S, --suite NAME|all)" >&2; exit 2 ;;
  esac
done

cargo build --quiet -p cluster-testing --bin cluster-chaos --bin cluster-chaos-node
if [ "$SUITE" = all ] || [ "$SUITE" = counter ]; then
  cargo build --quiet -p quickstart
fi
mkdir -p target/chaos
exec ./target/debug/cluster-chaos run --suite "$SUITE" --seed "$SEED" \
  --seconds "$SECONDS_ARG" --out-dir target/chaos
