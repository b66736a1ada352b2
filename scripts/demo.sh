#!/usr/bin/env bash
# The main job, end to end: a local nats-server, three nodes of
# examples/quickstart, which one is active, kill it, the new active.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
ensure_nats_server

echo "== building quickstart and the cluster CLI"
cargo build --quiet -p quickstart -p cluster

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
NATS="nats://127.0.0.1:$PORT"
nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
CLI="./target/debug/cluster --nats $NATS --platform demo"

# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds (15 s).
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $what" >&2
  exit 1
}
wait_for "nats-server" bash -c "echo > /dev/tcp/127.0.0.1/$PORT"

declare -A NODE_PID
for n in n1 n2 n3; do
  ./target/debug/quickstart --nats "$NATS" --platform demo --node "$n" \
    --health-addr "127.0.0.1:$(free_port)" >"$WORK/$n.log" 2>&1 &
  NODE_PID[$n]=$!
  PIDS+=($!)
done

leader() { $CLI status --json 2>/dev/null | python3 -c 'import sys,json; a=json.load(sys.stdin)["apps"].get("counter",{}); print(a.get("leader") or "")'; }
has_leader() { [ -n "$(leader)" ]; }
wait_for "an active node" has_leader
wait_for "two standbys" bash -c "$CLI status --json | python3 -c 'import sys,json; sys.exit(len(json.load(sys.stdin)[\"apps\"][\"counter\"][\"standbys\"])!=2)'"

echo
$CLI status
echo
echo "== calling counter.incr through NATS (served by the active node only)"
echo "incr 5 -> $($CLI call counter incr 5)"
echo "incr 2 -> $($CLI call counter incr 2)"
ACTIVE=$(leader)
echo
echo "== killing the active node $ACTIVE (SIGKILL, pid ${NODE_PID[$ACTIVE]})"
START=$(date +%s%N)
kill -KILL "${NODE_PID[$ACTIVE]}"
new_leader() { local l; l=$(leader); [ -n "$l" ] && [ "$l" != "$ACTIVE" ]; }
wait_for "a new active node" new_leader
END=$(date +%s%N)
echo "== $(leader) took over after $(( (END - START) / 1000000 )) ms (lease TTL 3 s)"
echo
$CLI status
echo
echo "incr 1 -> $($CLI call counter incr 1)   (the new active reloaded the count from the app's KV)"
echo
echo "== shutting down (SIGTERM: active hands over, nodes leave)"
