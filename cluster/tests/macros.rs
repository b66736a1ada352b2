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
            "rpc-workers",
            "workers"
        ]
    );
    // Every registered app builds, handlers included.
    let apps = registered_apps().expect("every registered app builds");
    assert_eq!(apps.len(), registered_names().len());
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

/// Handlers written with `#[handle]`, served by the platform and called
/// through generated clients on a real nats-server, for singleton and spread
/// apps, and interop with a builder-API app in both directions.
mod rpc {
    use std::sync::atomic::{AtomicU64, Ordering};

    use cluster::__private::build_app;
    use cluster::prelude::*;
    use cluster::runtime::nats_server::{NatsServer, ServerOptions};
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

        /// Calls the builder-API app `legacy` through its generated client;
        /// `?` turns a failed call into `cluster::Error` (keeping its code).
        #[handle]
        async fn relay(&self, ctx: &AppContext, text: String) -> cluster::Result<String> {
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

    #[cluster::app(mode = "replicas(2)", name = "rpc-workers")]
    #[derive(Debug, Default)]
    pub struct Workers;

    #[cluster::app]
    impl Workers {
        #[handle]
        async fn square(&self, _ctx: &AppContext, n: u64) -> cluster::Result<u64> {
            Ok(n * n)
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

        let counter_app = build_app::<Counter>().expect("counter");
        let greeter_app = build_app::<Greeter>().expect("greeter");
        let workers_app = build_app::<Workers>().expect("workers");
        // The builder-level app: a plain name and a plain handler, no macros.
        let legacy_app = App::builder("legacy")
            .handle("shout", |_ctx, text: String| async move {
                Ok::<_, HandlerError>(format!("{}!", text.to_uppercase()))
            })
            .build()
            .expect("legacy");
        let platform = Platform::builder()
            .config(config(&server.url(), "r1"))
            .app(counter_app)
            .app(greeter_app)
            .app(workers_app)
            .app(legacy_app)
            .start()
            .await
            .expect("platform starts");
        let ctx = |app: &str| platform.app(app).expect("app context");
        // Calls retry on "no responders" until the singletons are active
        // and the spread instance runs: no waiting needed here.

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

        assert_eq!(
            cluster::call::<Workers>(&caller)
                .square(7)
                .await
                .expect("square"),
            49
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

        platform.shutdown().await;
    }
}
