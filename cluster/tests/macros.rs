//! Apps defined with `#[cluster::app]`: what the generated code builds, and
//! that the macros accept exactly what the runtime's grammars accept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster::__private::{build_app, registered_apps, registered_names, AppSpec};
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
    assert_eq!(
        registered_names(),
        [
            "counter",
            "http-api",
            "legacy",
            "live-pool",
            "live-single",
            "rpc-counter",
            "rpc-greeter",
            "workers"
        ]
    );
    // Apps with handlers cannot run through `main!` until the runtime's app
    // builder serves handlers: refused with a message naming them.
    let err = registered_apps().expect_err("handlers refused");
    assert!(err.to_string().contains("#[handle]"), "{err}");
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

/// Handlers written with `#[handle]`, called through generated clients on a
/// real nats-server, for singleton and spread apps, and interop with apps
/// served through the builder-level RPC API in both directions.
///
/// The runtime's app builder cannot take handlers yet, so this test serves
/// the generated `Handlers` with an `RpcServer` and the app's context from
/// the platform — what the platform will do once it serves app APIs.
mod rpc {
    use std::sync::atomic::{AtomicU64, Ordering};

    use cluster::__private::build_parts;
    use cluster::prelude::*;
    use cluster::runtime::nats_server::{NatsServer, ServerOptions};
    use cluster::runtime::rpc::{ApiMode, Handlers, RpcServer};
    use serde::{Deserialize, Serialize};

    #[cluster::app(mode = "singleton", name = "rpc-counter")]
    #[derive(Debug, Default)]
    pub struct Counter {
        value: AtomicU64,
    }

    #[cluster::app]
    impl Counter {
        /// Adds `by` and returns the new value.
        #[handle]
        async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<u64> {
            Ok(self.value.fetch_add(by, Ordering::SeqCst) + by)
        }

        #[handle(name = "current")]
        async fn get(&self, _ctx: &AppContext) -> cluster::Result<u64> {
            Ok(self.value.load(Ordering::SeqCst))
        }

        #[handle]
        async fn fail(&self, _ctx: &AppContext, why: String) -> Result<(), HandlerError> {
            Err(HandlerError::bad_request(why))
        }

        /// Calls the builder-API app `legacy` through its generated client.
        #[handle]
        // `Result<_, HandlerError>`: a failed nested call keeps its code.
        // (`?` into `cluster::Result` needs `From<RpcError> for cluster::Error`,
        // which the runtime does not have yet.)
        async fn relay(&self, ctx: &AppContext, text: String) -> Result<String, HandlerError> {
            Ok(cluster::call::<Legacy>(ctx).shout(text).await?)
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Greeting {
        pub name: String,
        pub excited: bool,
    }

    #[cluster::app(mode = "spread", name = "rpc-greeter")]
    #[derive(Debug, Default)]
    pub struct Greeter;

    #[cluster::app]
    impl Greeter {
        #[handle]
        async fn greet(&self, ctx: &AppContext, g: Greeting) -> cluster::Result<String> {
            let bang = if g.excited { "!" } else { "." };
            Ok(format!("hello {}{bang} (from {})", g.name, ctx.node()))
        }
    }

    /// The typed view of an app served without macros (below).
    #[cluster::app(mode = "singleton", name = "legacy")]
    #[derive(Debug, Default)]
    pub struct Legacy;

    #[cluster::app]
    impl Legacy {
        #[handle]
        async fn shout(&self, _ctx: &AppContext, text: String) -> cluster::Result<String> {
            Ok(text.to_uppercase())
        }
    }

    fn config(url: &str, node: &str) -> Config {
        let mut c = Config::default();
        c.nats.urls = vec![url.to_owned()];
        c.node = node.to_owned();
        c.platform = "rpc".into();
        c.health_addr = None;
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn generated_clients_call_generated_and_builder_handlers() {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("nats-server (set NATS_SERVER_BIN or run scripts/test.sh once)");

        let (counter_app, counter_handlers) = build_parts::<Counter>().expect("counter");
        let (greeter_app, greeter_handlers) = build_parts::<Greeter>().expect("greeter");
        assert_eq!(
            counter_handlers.methods().collect::<Vec<_>>(),
            ["current", "fail", "incr", "relay"]
        );
        // `main!` refuses an app whose handlers the runtime cannot serve yet.
        let refused = cluster::__private::build_app::<Counter>().expect_err("refused");
        assert!(refused.to_string().contains("#[handle]"), "{refused}");

        // The builder-level app: a plain name, plain Handlers, no macros.
        let legacy_app = App::builder("legacy").build().expect("legacy");
        let platform = Platform::builder()
            .config(config(&server.url(), "r1"))
            .app(counter_app)
            .app(greeter_app)
            .app(legacy_app)
            .start()
            .await
            .expect("platform starts");
        let ctx = |app: &str| platform.app(app).expect("app context");

        let serve = |app: &str, handlers: Handlers<AppContext>| {
            let ctx = ctx(app);
            let node = ctx.node().to_owned();
            RpcServer::new(
                ctx.nats().clone(),
                ctx.names().clone(),
                app,
                &node,
                handlers,
                ctx,
            )
            .expect("server")
        };
        let counter_server = serve("rpc-counter", counter_handlers);
        counter_server.start().await.expect("start");
        counter_server
            .serve_api(ApiMode::Exclusive)
            .await
            .expect("serve");
        let greeter_server = serve("rpc-greeter", greeter_handlers);
        greeter_server.start().await.expect("start");
        greeter_server
            .serve_api(ApiMode::Pool)
            .await
            .expect("serve");
        let legacy_handlers =
            Handlers::new().handle("shout", |_ctx: AppContext, text: String| async move {
                Ok::<_, HandlerError>(format!("{}!", text.to_uppercase()))
            });
        let legacy_server = serve("legacy", legacy_handlers);
        legacy_server.start().await.expect("start");
        legacy_server
            .serve_api(ApiMode::Exclusive)
            .await
            .expect("serve");

        // Typed calls through generated clients.
        let caller = ctx("legacy");
        let counter = cluster::call::<Counter>(&caller);
        assert_eq!(counter.incr(5).await.expect("incr"), 5);
        assert_eq!(counter.incr(2).await.expect("incr"), 7);
        assert_eq!(counter.get().await.expect("current"), 7);
        let err = counter.fail("no".into()).await.expect_err("fails");
        assert_eq!(
            err.code(),
            cluster::runtime::rpc::ErrorCode::BadRequest,
            "{err}"
        );
        let greeting = Greeting {
            name: "ada".into(),
            excited: true,
        };
        assert_eq!(
            cluster::call::<Greeter>(&caller)
                .greet(greeting.clone())
                .await
                .expect("greet"),
            "hello ada! (from r1)"
        );

        // A macro handler calls the builder app through a generated client...
        assert_eq!(counter.relay("hi".into()).await.expect("relay"), "HI!");
        // ...and an untyped builder-level call reaches a macro handler.
        let rpc =
            cluster::runtime::rpc::RpcClient::new(caller.nats().clone(), caller.names().clone());
        let n: u64 = rpc
            .app("rpc-counter")
            .method("incr")
            .send(&1u64)
            .await
            .expect("untyped incr");
        assert_eq!(n, 8);
        let text: String = rpc
            .app("rpc-greeter")
            .method("greet")
            .send(&greeting)
            .await
            .expect("untyped greet");
        assert!(text.starts_with("hello ada!"), "{text}");

        for s in [&counter_server, &greeter_server, &legacy_server] {
            s.shutdown().await;
        }
        platform.shutdown().await;
    }
}
