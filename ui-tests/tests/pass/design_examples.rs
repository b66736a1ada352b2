// The examples of DESIGN §1, minus handlers.
use cluster::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with exactly one active instance; standbys take over on failure.
#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter {
    value: AtomicU64,
}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, ctx: &AppContext) -> cluster::Result<()> {
        let _ = ctx.node();
        self.value.store(0, Ordering::SeqCst);
        Ok(())
    }

    #[on_standby]
    async fn standby(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

/// A cache sharded over 64 partitions on nodes labelled `zone-a`.
#[cluster::app(mode = "ring(64)", placement = "label=zone-a")]
#[derive(Default)]
pub struct Cache {}

#[cluster::app]
impl Cache {
    #[on_own]
    async fn own(&self, _ctx: &AppContext, partitions: Partitions) -> cluster::Result<()> {
        let _ = partitions.len();
        Ok(())
    }

    #[on_release]
    async fn release(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> {
        Ok(())
    }
}

#[cluster::app(
    mode = "singleton",
    sqlite = "/var/lib/myapp/data.db",
    vip = "192.168.1.100/24 dev eth0",
    backend = "systemd:myapp-backend",
)]
#[derive(Default)]
pub struct MyApp;

mod entry {
    cluster::main!();

    pub fn generated() {
        let _ = main;
    }
}

fn main() {
    entry::generated();
}
