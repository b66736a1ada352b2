//! A ring app written with `#[cluster::app]`: `#[on_own]` and
//! `#[on_release]` run with the node's partitions, and a key-routed
//! `#[handle(key = ...)]` is reached through the generated client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::__private::build_app;
use cluster::prelude::*;
use cluster::runtime::nats_server::{NatsServer, ServerOptions};
use serde::{Deserialize, Serialize};

static OWNED: AtomicUsize = AtomicUsize::new(0);
static RELEASED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Where {
    pub key: String,
}

#[cluster::app(mode = "ring(16)", name = "ring-macro", lease_ttl = "1s")]
#[derive(Debug, Default)]
pub struct RingMacro;

#[cluster::app]
impl RingMacro {
    #[on_own]
    async fn own(&self, _ctx: &AppContext, partitions: Partitions) -> cluster::Result<()> {
        OWNED.fetch_add(partitions.len(), Ordering::SeqCst);
        Ok(())
    }

    #[on_release]
    async fn release(&self, _ctx: &AppContext, partitions: Partitions) -> cluster::Result<()> {
        RELEASED.fetch_add(partitions.len(), Ordering::SeqCst);
        Ok(())
    }

    /// The partition that served `key`, checked against the ring.
    #[handle(key = req.key)]
    async fn locate(&self, ctx: &AppContext, req: Where) -> cluster::Result<u32> {
        let p = ctx.ring().partition_of(&req.key);
        assert!(ctx.ring().owns(p), "served by the owner");
        Ok(p)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hooks_and_key_routed_handlers_run_on_a_real_platform() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats-server (set NATS_SERVER_BIN or run scripts/test.sh once)");
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.node = "rm1".into();
    config.platform = "macros".into();
    config.health_addr = None;
    let platform = Platform::builder()
        .config(config)
        .app(build_app::<RingMacro>().expect("ring app"))
        .start()
        .await
        .expect("platform starts");
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while OWNED.load(Ordering::SeqCst) < 16 {
        assert!(
            tokio::time::Instant::now() < end,
            "on_own got every partition"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ctx = platform.app("ring-macro").expect("context");
    assert_eq!(ctx.ring().owned().len(), 16);
    for key in ["user:1", "user:2", "order:9"] {
        let p = cluster::call::<RingMacro>(&ctx)
            .locate(Where { key: key.into() })
            .await
            .expect("key-routed call");
        assert_eq!(p, ctx.ring().partition_of(key), "{key}");
    }
    platform.shutdown().await;
    assert_eq!(RELEASED.load(Ordering::SeqCst), 16, "on_release on leave");
}
