//! Singleton and pool behaviour with in-process nodes on a real nats-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_runtime::app::{App, Mode, Role};
use cluster_runtime::config::Config;
use cluster_runtime::instance::RoleEvent;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::platform::Platform;
use cluster_testing::invariants::History;
use cluster_testing::{NatsServer, ServerOptions};

fn config(url: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = "t".into();
    c.health_addr = None;
    c
}

async fn start(url: &str, node: &str, app: App, log: Arc<Mutex<Vec<RoleEvent>>>) -> Platform {
    Platform::builder()
        .config(config(url, node))
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(app)
        .on_role_change(move |e| log.lock().expect("log").push(e.clone()))
        .start()
        .await
        .expect("start")
}

async fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn singleton() -> App {
    App::builder("counter")
        .mode(Mode::Singleton)
        .lease_ttl(Duration::from_secs(1))
        .build()
        .expect("app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_contenders_one_active_then_stepdown_hands_over() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for n in ["n1", "n2", "n3"] {
        nodes.push(start(&server.url(), n, singleton(), log.clone()).await);
    }
    let roles = |nodes: &[Platform]| -> Vec<Role> {
        nodes
            .iter()
            .map(|p| p.app("counter").expect("app").role())
            .collect()
    };
    wait_until("one active, two standby", Duration::from_secs(10), || {
        let r = roles(&nodes);
        r.iter().filter(|r| **r == Role::Active).count() == 1
            && r.iter().filter(|r| **r == Role::Standby).count() == 2
    })
    .await;
    let first = nodes
        .iter()
        .position(|p| p.app("counter").expect("app").is_active())
        .expect("active");
    let epoch1 = nodes[first]
        .app("counter")
        .expect("app")
        .epoch()
        .expect("epoch");
    nodes[first]
        .app("counter")
        .expect("app")
        .stepdown()
        .await
        .expect("stepdown");
    wait_until("another node active", Duration::from_secs(10), || {
        nodes
            .iter()
            .enumerate()
            .any(|(i, p)| i != first && p.app("counter").expect("app").is_active())
    })
    .await;
    let second = nodes
        .iter()
        .position(|p| p.app("counter").expect("app").is_active())
        .expect("active");
    assert_ne!(first, second);
    let epoch2 = nodes[second]
        .app("counter")
        .expect("app")
        .epoch()
        .expect("epoch");
    assert!(epoch2 > epoch1, "epoch must grow: {epoch1} -> {epoch2}");
    for p in nodes {
        p.shutdown().await;
    }
    let history = History {
        roles: log.lock().expect("log").clone(),
        ..Default::default()
    };
    history.check("counter").expect("invariants");
    assert!(history.intervals("counter").len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_on_active_gives_up_the_lease_and_another_node_takes_over() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let log = Arc::new(Mutex::new(Vec::new()));
    let failing = App::builder("counter")
        .lease_ttl(Duration::from_secs(1))
        .on_active(|_ctx| async move { Err("cannot restore state".into()) })
        .build()
        .expect("app");
    let bad = start(&server.url(), "bad", failing, log.clone()).await;
    // Alone, the failing node keeps trying (with backoff) but never stays active.
    wait_until("a failed activation", Duration::from_secs(10), || {
        let l = log.lock().expect("log");
        l.iter().any(|e| e.node == "bad" && e.role == Role::Active)
            && l.iter().any(|e| e.node == "bad" && e.role == Role::Standby)
    })
    .await;
    let good = start(&server.url(), "good", singleton(), log.clone()).await;
    wait_until("the healthy node active", Duration::from_secs(15), || {
        good.app("counter").expect("app").is_active()
    })
    .await;
    // And it stays there: the failing node backs off instead of flapping.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(good.app("counter").expect("app").is_active());
    assert!(!bad.app("counter").expect("app").is_active());
    bad.shutdown().await;
    good.shutdown().await;
    let history = History {
        roles: log.lock().expect("log").clone(),
        ..Default::default()
    };
    history.check("counter").expect("invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_change_hook_fires_everywhere_and_health_endpoints_answer() {
    use cluster_runtime::nats_server::http_get;
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for n in ["h1", "h2"] {
        let seen = seen.clone();
        let app = App::builder("counter")
            .lease_ttl(Duration::from_secs(1))
            .on_leader_change(move |ctx, leader| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .expect("seen")
                        .push((ctx.node().to_owned(), leader));
                    Ok(())
                }
            })
            .build()
            .expect("app");
        let mut c = config(&server.url(), n);
        c.health_addr = Some("127.0.0.1:0".parse().expect("addr"));
        nodes.push(
            Platform::builder()
                .config(c)
                .app(app)
                .start()
                .await
                .expect("start"),
        );
    }
    wait_until("an active node", Duration::from_secs(10), || {
        nodes
            .iter()
            .any(|p| p.app("counter").expect("app").is_active())
    })
    .await;
    let leader = nodes
        .iter()
        .find(|p| p.app("counter").expect("app").is_active())
        .expect("leader")
        .node()
        .to_owned();
    wait_until(
        "both nodes told of the leader",
        Duration::from_secs(10),
        || {
            let s = seen.lock().expect("seen");
            ["h1", "h2"].iter().all(|n| {
                s.iter()
                    .any(|(at, l)| at == n && l.as_deref() == Some(leader.as_str()))
            })
        },
    )
    .await;
    for p in &nodes {
        let port = p.health_addr().expect("addr").port();
        let (code, body) = http_get(port, "/health").await.expect("health");
        assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
        let mut ready = (0, String::new());
        for _ in 0..100 {
            ready = http_get(port, "/ready").await.expect("ready");
            if ready.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ready.0, 200, "{}", ready.1);
    }
    // NATS gone: not ready any more (but still alive).
    let port = nodes[0].health_addr().expect("addr").port();
    drop(server);
    let mut code = 200;
    for _ in 0..100 {
        code = http_get(port, "/ready").await.expect("ready").0;
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, 503, "not ready without NATS");
    assert_eq!(http_get(port, "/health").await.expect("health").0, 200);
}

/// A coordination bucket made by hand (no per-message TTLs, no limit
/// markers) would make every renew fail and the app never activate,
/// silently: the node refuses to start, naming the bucket and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordination_bucket_without_ttls_is_refused_with_the_fix() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "t_counter_coord".into(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("bucket made by hand");
    let err = Platform::builder()
        .config(config(&server.url(), "n1"))
        .app(singleton())
        .start()
        .await
        .expect_err("a bucket without TTLs cannot hold leases");
    let msg = err.to_string();
    assert!(msg.contains("t_counter_coord"), "{msg}");
    assert!(msg.contains("per-message TTLs"), "{msg}");
    assert!(msg.contains("nats kv del t_counter_coord"), "{msg}");
}

/// The health port in use fails the start before anything runs: no node
/// record, no election — nothing keeps electing behind the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_port_in_use_fails_the_start_with_nothing_left_running() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = config(&server.url(), "n1");
    c.health_addr = Some(taken.local_addr().expect("addr"));
    let err = Platform::builder()
        .config(c)
        .app(singleton())
        .start()
        .await
        .expect_err("port in use");
    assert!(err.to_string().contains("--health-addr"), "{err}");
    // Another node starts and becomes active; it sees no other member.
    let log = Arc::new(Mutex::new(Vec::new()));
    let other = start(&server.url(), "n2", singleton(), log).await;
    let ctx = other.app("counter").expect("app");
    wait_until("n2 active", Duration::from_secs(10), || ctx.is_active()).await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let nodes = js.get_key_value("t_nodes").await.expect("nodes bucket");
    assert!(
        nodes.get("n1").await.expect("read").is_none(),
        "the failed node registered"
    );
    other.shutdown().await;
}

/// Dropping a platform without `shutdown()` stops it: its active steps
/// down (a standby takes over at once, not after the TTL) and its node
/// record goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_platform_stops_it() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = start(&server.url(), "n1", singleton(), log.clone()).await;
    let ctx1 = first.app("counter").expect("app");
    wait_until("n1 active", Duration::from_secs(10), || ctx1.is_active()).await;
    let second = start(&server.url(), "n2", singleton(), log.clone()).await;
    let ctx2 = second.app("counter").expect("app");
    drop(first);
    wait_until("n2 takes over", Duration::from_secs(10), || {
        ctx2.is_active()
    })
    .await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let nodes = js.get_key_value("t_nodes").await.expect("nodes bucket");
    let mut gone = false;
    for _ in 0..200 {
        if nodes.get("n1").await.expect("read").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the dropped node's record stayed");
    // The hand-over was a release, not an expiry: n1's demotion is
    // recorded before n2's activation.
    let events = log.lock().expect("log").clone();
    let n1_up = events
        .iter()
        .find(|e| e.node == "n1" && e.role == Role::Active)
        .map(|e| e.t_ns)
        .expect("n1 was active");
    let n1_down = events
        .iter()
        .find(|e| e.node == "n1" && e.role != Role::Active && e.t_ns > n1_up)
        .map(|e| e.t_ns);
    let n2_up = events
        .iter()
        .find(|e| e.node == "n2" && e.role == Role::Active)
        .map(|e| e.t_ns);
    assert!(
        n1_down.is_some() && n2_up.is_some() && n1_down < n2_up,
        "{events:?}"
    );
    second.shutdown().await;
}

/// An app that cannot elect says so: when its coordination bucket is gone
/// (deleted under it), the election's reads fail — `/status` names the
/// problem, `/ready` fails with it, and `gc_election_errors_total` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_cannot_elect_is_not_ready_and_says_why() {
    use cluster_runtime::nats_server::http_get;

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut c = config(&server.url(), "n1");
    c.health_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let platform = Platform::builder()
        .config(c)
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(singleton())
        .start()
        .await
        .expect("start");
    let port = platform.health_addr().expect("bound").port();
    let ctx = platform.app("counter").expect("app");
    wait_until("active", Duration::from_secs(10), || ctx.is_active()).await;
    let (code, _) = http_get(port, "/ready").await.expect("ready");
    assert_eq!(code, 200);

    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.delete_stream("KV_t_counter_coord")
        .await
        .expect("delete the coordination bucket");
    let state = ctx.watch_state();
    wait_until("a problem reported", Duration::from_secs(10), || {
        state.borrow().problem.is_some()
    })
    .await;
    assert!(!ctx.is_active());
    let (code, body) = http_get(port, "/ready").await.expect("ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("election key"), "{body}");
    let (_, status) = http_get(port, "/status").await.expect("status");
    assert!(status.contains("cannot read the election key"), "{status}");
    let (_, metrics) = http_get(port, "/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gc_election_errors_total{") && l.contains("counter")),
        "{metrics}"
    );
    platform.shutdown().await;
}
