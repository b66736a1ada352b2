//! Apps defined with `#[cluster::app]`: what the generated code builds, and
//! that the macros accept exactly what the runtime's grammars accept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster::__private::{build_app, registered_apps, AppSpec};
use cluster::prelude::*;

/// A counter with exactly one active instance.
#[cluster::app(mode = "singleton", lease_ttl = "2s", hook_timeout = "5s")]
#[derive(Debug, Default)]
pub struct Counter {
    value: AtomicU64,
}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        self.value.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[on_standby]
    async fn standby(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[on_leader_change]
    async fn leader(&self, _ctx: &AppContext, _leader: Option<String>) -> cluster::Result<()> {
        Ok(())
    }

    #[on_member_join]
    async fn joined(&self, _ctx: &AppContext, _node: NodeRecord) -> cluster::Result<()> {
        Ok(())
    }

    /// Not a hook: left alone.
    fn value(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }
}

/// A pool app without an impl block.
#[cluster::app(mode = "spread", placement = "label=zone=a, avoid-label=draining")]
#[derive(Debug, Default)]
pub struct HttpApi;

/// A replicated app named explicitly.
#[cluster::app(mode = "replicas(2)", name = "workers")]
#[derive(Debug, Default)]
pub struct WorkerPool;

#[cluster::app]
impl WorkerPool {
    #[on_start]
    async fn start(&self, _ctx: &AppContext) -> Result<(), std::io::Error> {
        Ok(())
    }

    #[on_stop]
    async fn stop(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[on_migration_start]
    async fn moving(&self, _ctx: &AppContext, _from: String, _to: String) -> cluster::Result<()> {
        Ok(())
    }
}

#[test]
fn names_and_modes_come_from_the_attribute() {
    assert_eq!(Counter::NAME, "counter");
    assert_eq!(HttpApi::NAME, "http-api");
    assert_eq!(WorkerPool::NAME, "workers");

    let counter = build_app::<Counter>().expect("counter builds");
    assert_eq!(counter.name(), "counter");
    assert_eq!(counter.mode(), Mode::Singleton);
    assert_eq!(counter.lease_timing().ttl, Duration::from_secs(2));

    let api = build_app::<HttpApi>().expect("api builds");
    assert_eq!(api.mode(), Mode::Spread);
    let workers = build_app::<WorkerPool>().expect("workers build");
    assert_eq!(workers.mode(), Mode::Replicas(2));
    assert_eq!(Counter::default().value(), 0);
}

#[test]
fn inventory_finds_every_app_sorted_by_name() {
    let apps = registered_apps().expect("registered apps build");
    let names: Vec<&str> = apps.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["counter", "http-api", "workers"]);
}
