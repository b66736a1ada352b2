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
    assert_eq!(
        names,
        ["counter", "http-api", "live-pool", "live-single", "workers"]
    );
}

/// The macros check options with `cluster-spec`; the runtime builder parses
/// them with its own grammar until it is switched to `cluster-spec`. Both
/// must accept and refuse the same strings, with the same messages.
#[test]
fn macro_grammar_matches_the_runtime() {
    use cluster::runtime::placement::{parse_labels, Placement};

    let modes = [
        "singleton",
        "spread",
        " spread ",
        "replicas(1)",
        "replicas(12)",
        "replicas( 3 )",
        "ring(1)",
        "ring(64)",
        "ring(4096)",
        "replicas(0)",
        "ring(100)",
        "ring(8192)",
        "ring(0)",
        "ring(-1)",
        "replicas(x)",
        "replicas",
        "Singleton",
        "leader",
        "",
    ];
    for m in modes {
        let spec = cluster_spec::Mode::parse(m).map(|m| m.to_string());
        let runtime = Mode::parse(m).map(|m| m.to_string());
        assert_eq!(spec, runtime, "mode {m:?}");
    }

    let placements = [
        "",
        "label=zone=a",
        "label=zone-a, avoid-label=draining",
        "prefer-label=ssd@5, node=n1|n2, prefer-node=n1@3, with-app=db, away-from=cache",
        "zone=a",
        "label",
        "label=",
        "label=zone=us east",
        "prefer-label=ssd@0",
        "prefer-label=ssd@101",
        "node=N1",
        "node=n1||n2",
        "with-app=events",
        "away-from=Bad",
    ];
    for p in placements {
        let spec = cluster_spec::placement::Placement::parse(p).map(|p| p.terms.len());
        let runtime = Placement::parse(p).map(|p| p.terms.len());
        assert_eq!(spec, runtime, "placement {p:?}");
    }

    for labels in ["zone=us-east-1a,ssd", "", "zone=a b", "=x"] {
        let spec = cluster_spec::placement::parse_labels(labels);
        let runtime = parse_labels(labels);
        assert_eq!(spec, runtime, "labels {labels:?}");
    }

    for name in ["counter", "my-app", "", "My_App", "nodes", "audit", "a.b"] {
        let spec = cluster_spec::naming::validate_app(name).map_err(|e| e.to_string());
        let runtime = cluster::runtime::naming::validate_app(name).map_err(|e| e.to_string());
        assert_eq!(spec, runtime, "app name {name:?}");
    }

    for secs in [0u64, 1, 2, 3, 10] {
        for extra_ms in [0u64, 500] {
            let ttl = Duration::from_millis(secs * 1000 + extra_ms);
            let spec = cluster_spec::lease::check_ttl(ttl);
            let runtime = cluster::runtime::lease::LeaseTiming::from_ttl(ttl)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(
                spec.is_ok(),
                runtime.is_ok(),
                "lease_ttl {ttl:?}: {spec:?} / {runtime:?}"
            );
        }
    }
}

/// Hooks written with the macros run on a real platform: a singleton's
/// `#[on_active]` and a spread app's `#[on_start]`, `#[on_stop]` and
/// `#[on_member_join]` all fire.
mod live {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use cluster::__private::build_app;
    use cluster::prelude::*;
    use cluster::runtime::nats_server::{NatsServer, ServerOptions};

    static ACTIVATED: AtomicU64 = AtomicU64::new(0);
    static STARTED: AtomicU64 = AtomicU64::new(0);
    static STOPPED: AtomicU64 = AtomicU64::new(0);
    static JOINED: AtomicU64 = AtomicU64::new(0);

    #[cluster::app(mode = "singleton", name = "live-single", lease_ttl = "1s")]
    #[derive(Debug, Default)]
    pub struct LiveSingle;

    #[cluster::app]
    impl LiveSingle {
        #[on_active]
        async fn activate(&self, ctx: &AppContext) -> cluster::Result<()> {
            assert_eq!(ctx.app(), "live-single");
            ACTIVATED.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[cluster::app(mode = "spread", name = "live-pool")]
    #[derive(Debug, Default)]
    pub struct LivePool;

    #[cluster::app]
    impl LivePool {
        #[on_start]
        async fn start(&self, _ctx: &AppContext) -> cluster::Result<()> {
            STARTED.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        #[on_stop]
        async fn stop(&self, _ctx: &AppContext) -> cluster::Result<()> {
            STOPPED.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        #[on_member_join]
        async fn joined(&self, _ctx: &AppContext, node: NodeRecord) -> cluster::Result<()> {
            if node.node == "m2" {
                JOINED.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    fn config(url: &str, node: &str) -> Config {
        let mut c = Config::default();
        c.nats.urls = vec![url.to_owned()];
        c.node = node.to_owned();
        c.platform = "macros".into();
        c.health_addr = None;
        c
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_run_on_a_real_platform() {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("nats-server (set NATS_SERVER_BIN or run scripts/test.sh once)");
        let start = |node: &'static str| {
            let url = server.url();
            async move {
                Platform::builder()
                    .config(config(&url, node))
                    .app(build_app::<LiveSingle>().expect("single"))
                    .app(build_app::<LivePool>().expect("pool"))
                    .start()
                    .await
                    .expect("platform starts")
            }
        };
        let first = start("m1").await;
        wait_until("on_active", || ACTIVATED.load(Ordering::SeqCst) == 1).await;
        wait_until("on_start", || STARTED.load(Ordering::SeqCst) == 1).await;
        let second = start("m2").await;
        wait_until("on_start on m2", || STARTED.load(Ordering::SeqCst) == 2).await;
        wait_until("on_member_join of m2", || {
            JOINED.load(Ordering::SeqCst) >= 1
        })
        .await;
        assert_eq!(ACTIVATED.load(Ordering::SeqCst), 1, "one active singleton");
        second.shutdown().await;
        first.shutdown().await;
        assert_eq!(STOPPED.load(Ordering::SeqCst), 2, "on_stop on both nodes");
    }
}
