//! Quick start: a counter with exactly one active instance, whose count
//! survives failover in the app's own KV bucket.
//!
//! Run three of these against one NATS (or none: a node without `--nats`
//! starts a local nats-server); one is active and serves `incr`, the others
//! stand by. Kill the active one and a standby takes over within the lease
//! TTL, reloading the count. `scripts/demo.sh` does exactly that.
//!
//! ```sh
//! quickstart --nats nats://127.0.0.1:4222 --node n1 --health-addr 127.0.0.1:8081
//! cluster call counter incr 5        # or: nats req default._.api.counter.incr 5
//! ```

use cluster::prelude::*;
use tokio::sync::Mutex;

/// A counter with exactly one active instance; standbys take over on failure.
#[cluster::app(mode = "singleton")]
#[derive(Debug, Default)]
pub struct Counter {
    /// The count, loaded from KV on activation. The lock also serialises
    /// `incr`, so writes reach KV in order.
    value: Mutex<u64>,
}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, ctx: &AppContext) -> cluster::Result<()> {
        let saved = ctx.kv().get_json::<u64>("value").await?.unwrap_or(0);
        *self.value.lock().await = saved;
        println!(
            "{}: ACTIVE for counter (epoch {:?}, count {saved})",
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

    /// Adds `by`, stores the new count, returns it.
    #[handle]
    async fn incr(&self, ctx: &AppContext, by: u64) -> cluster::Result<u64> {
        let mut value = self.value.lock().await;
        let next = *value + by;
        ctx.kv().put_json("value", &next).await?;
        *value = next;
        Ok(next)
    }
}

cluster::main!();
