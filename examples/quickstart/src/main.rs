//! Quick start: a counter with exactly one active instance.
//!
//! Run three of these against one NATS (or none: a node without `--nats`
//! starts a local nats-server); one is active and serves `incr`, the others
//! stand by. Kill the active one and a standby takes over within the lease
//! TTL. `scripts/demo.sh` does exactly that.
//!
//! ```sh
//! quickstart --nats nats://127.0.0.1:4222 --node n1 --health-addr 127.0.0.1:8081
//! nats req default._.api.counter.incr 5      # → 5 (JSON in, JSON out)
//! ```
//!
//! The count lives in memory, so a new active starts from zero; the app's
//! own KV store (`ctx.kv()`) is how state survives a failover.

use std::sync::atomic::{AtomicU64, Ordering};

use cluster::prelude::*;

/// A counter with exactly one active instance; standbys take over on failure.
#[cluster::app(mode = "singleton")]
#[derive(Debug, Default)]
pub struct Counter {
    value: AtomicU64,
}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, ctx: &AppContext) -> cluster::Result<()> {
        println!(
            "{}: ACTIVE for counter (epoch {:?})",
            ctx.node(),
            ctx.fencing_token()
        );
        Ok(())
    }

    #[on_standby]
    async fn standby(&self, ctx: &AppContext) -> cluster::Result<()> {
        println!(
            "{}: standby for counter (leader: {:?})",
            ctx.node(),
            ctx.leader()
        );
        Ok(())
    }

    /// Adds `by` and returns the new value.
    #[handle]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<u64> {
        Ok(self.value.fetch_add(by, Ordering::SeqCst) + by)
    }
}

cluster::main!();
