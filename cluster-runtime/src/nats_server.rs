//! Local `nats-server` child processes (for `--dev` and the test harness).
