//! The seed's "Convex backend manager": on three hosts, exactly one runs the
//! Convex backend, on a SQLite database every commit of which is shipped to
//! NATS within milliseconds, behind a virtual IP. Kill that host and another
//! one promotes its caught-up replica, takes the VIP (gratuitous ARP), starts
//! the backend and serves — about one second with `lease_ttl = "1s"`
//! (`scripts/bench.sh failover-full`: p99 1.2 s).
//!
//! `docs/operations.md` deploys it (systemd units, capabilities, NATS).

use cluster::prelude::*;

#[cluster::app(
    mode = "singleton",
    sqlite = "/var/lib/convex/convex_local_backend.sqlite3",
    vip = "192.168.1.100/24 dev eth0",
    backend = "process:/usr/local/bin/convex-local-backend --port 3210 /var/lib/convex/convex_local_backend.sqlite3"
)]
#[derive(Debug, Default)]
pub struct Convex;

#[cluster::app]
impl Convex {
    /// Where this node's copy of the database stands (`cluster call convex position`).
    #[handle]
    async fn position(&self, ctx: &AppContext, _: ()) -> cluster::Result<Option<u64>> {
        Ok(ctx.wal().position().await.map(|p| p.txid))
    }
}

cluster::main!();
