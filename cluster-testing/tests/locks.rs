//! Distributed locks on a real nats-server: mutual exclusion under
//! contention from three nodes, fencing tokens, holders visible, and what a
//! SIGKILLed or SIGSTOPped holder does to the lock.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_runtime::app::{App, Mode};
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::config::Config;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::lock::{LockError, Locks};
use cluster_runtime::naming::Names;
use cluster_runtime::observe::AuditFilter;
use cluster_runtime::platform::Platform;
use cluster_testing::process::ChildProcess;
use cluster_testing::{NatsServer, ServerOptions};

const PLATFORM: &str = "locks";
const APP: &str = "jobs";

fn config(url: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = PLATFORM.into();
    c.health_addr = None;
    c
}

async fn node(url: &str, id: &str) -> Platform {
    Platform::builder()
        .config(config(url, id))
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(App::builder(APP).mode(Mode::Spread).build().expect("app"))
        .start()
        .await
        .expect("start")
}

/// One critical section: who held it, with which token, and when (on the
/// machine's monotonic clock): from just after the acquire was acknowledged
/// to just before the release was sent.
#[derive(Debug, Clone)]
struct Hold {
    owner: String,
    token: u64,
    acquired: u64,
    released: u64,
}

/// No two holds overlap, and tokens strictly increase in acquisition order.
fn check(mut holds: Vec<Hold>) -> Result<(), String> {
    holds.sort_by_key(|h| h.acquired);
    for w in holds.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.released > b.acquired {
            return Err(format!("overlap: {a:?} and {b:?}"));
        }
        if b.token <= a.token {
            return Err(format!("token did not grow: {a:?} then {b:?}"));
        }
    }
    Ok(())
}

#[test]
fn checker_catches_overlap_and_stale_tokens() {
    let h = |owner: &str, token, acquired, released| Hold {
        owner: owner.into(),
        token,
        acquired,
        released,
    };
    assert!(check(vec![h("a", 1, 0, 10), h("b", 2, 10, 20)]).is_ok());
    assert!(check(vec![h("a", 1, 0, 11), h("b", 2, 10, 20)]).is_err());
    assert!(check(vec![h("a", 2, 0, 10), h("b", 2, 10, 20)]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_four_tasks_mutual_exclusion_and_growing_tokens() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 200;
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nodes = vec![
        node(&server.url(), "n1").await,
        node(&server.url(), "n2").await,
        node(&server.url(), "n3").await,
    ];
    let holds = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for p in &nodes {
        let ctx = p.app(APP).expect("ctx");
        for _ in 0..TASKS {
            let lock = ctx.lock("shared").expect("lock");
            let holds = holds.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = lock
                        .acquire(Duration::from_secs(120))
                        .await
                        .map_err(|e| e.to_string())?;
                    let acquired = monotonic_ns();
                    if !guard.is_valid() {
                        return Err("fresh guard not valid".to_owned());
                    }
                    tokio::task::yield_now().await;
                    let released = monotonic_ns();
                    holds.lock().expect("holds").push(Hold {
                        owner: guard.owner().to_owned(),
                        token: guard.token(),
                        acquired,
                        released,
                    });
                    guard.release().await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            }));
        }
    }
    for t in tasks {
        t.await.expect("task").expect("lock rounds");
    }
    let holds = holds.lock().expect("holds").clone();
    assert_eq!(holds.len(), nodes.len() * TASKS * ROUNDS);
    let owners: std::collections::HashSet<&str> = holds
        .iter()
        .map(|h| h.owner.split('/').next().unwrap_or(""))
        .collect();
    assert_eq!(owners.len(), 3, "every node held the lock");
    check(holds).expect("mutual exclusion");
    for p in nodes {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_acquire_holder_with_lock_platform_locks_and_audit() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let n1 = node(&server.url(), "n1").await;
    let n2 = node(&server.url(), "n2").await;
    let c1 = n1.app(APP).expect("ctx");
    let c2 = n2.app(APP).expect("ctx");
    assert!(matches!(
        c1.lock("bad name"),
        Err(LockError::InvalidName { .. })
    ));

    let since = std::time::SystemTime::now();
    let lock1 = c1.lock("report").expect("lock");
    let lock2 = c2.lock("report").expect("lock");
    assert_eq!(lock1.holder().await.expect("holder"), None);
    let guard = lock1.try_acquire().await.expect("try").expect("free");
    let holder = lock2.holder().await.expect("holder").expect("held");
    assert_eq!(holder.node, "n1");
    assert_eq!(holder.owner, guard.owner());
    assert_eq!(holder.token, guard.token());
    assert!(lock2.try_acquire().await.expect("try").is_none());
    let err = lock2
        .acquire(Duration::from_millis(300))
        .await
        .expect_err("held elsewhere");
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("n1/"), "{err}");

    // A waiter gets the lock as soon as it is released.
    let waiter = tokio::spawn(async move { lock2.acquire(Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first_token = guard.token();
    guard.release().await.expect("release");
    let second = waiter.await.expect("join").expect("acquired after release");
    assert!(second.token() > first_token);
    second.release().await.expect("release");

    // with_lock releases at the end and hands the closure a valid guard.
    let token = lock1
        .with_lock(Duration::from_secs(5), |g| async move {
            assert!(g.is_valid());
            g.token()
        })
        .await
        .expect("with_lock");
    assert!(lock1.holder().await.expect("holder").is_none());
    assert!(token > first_token);

    // Platform locks live in P_platform, apart from app locks of the same name.
    let p1 = n1.lock("report").expect("lock");
    let pg = p1.try_acquire().await.expect("try").expect("free");
    let app_guard = lock1
        .try_acquire()
        .await
        .expect("try")
        .expect("app lock is separate");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    let names = Names::new(PLATFORM).expect("names");
    let bucket = js
        .get_key_value(names.platform_bucket())
        .await
        .expect("bucket");
    assert!(bucket.get("lock.report").await.expect("get").is_some());
    pg.release().await.expect("release");
    app_guard.release().await.expect("release");

    // Audit: acquisitions and releases, in order, for the app.
    let filter = AuditFilter::new().app(APP).category("lock").since(since);
    let entries = loop {
        let entries = c1.audit().query(filter.clone()).await.expect("query");
        if entries.len() >= 8 {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        &actions[..4],
        [
            "lock.acquired",
            "lock.released",
            "lock.acquired",
            "lock.released"
        ]
    );
    assert_eq!(entries[0].data["token"], first_token);
    assert_eq!(entries[0].node, "n1");
    assert_eq!(entries[2].node, "n2");
    let platform_entries = c1
        .audit()
        .query(
            AuditFilter::new()
                .platform_wide()
                .category("lock")
                .since(since),
        )
        .await
        .expect("query");
    assert_eq!(platform_entries.len(), 2);
    assert_eq!(platform_entries[0].app, None);
    n1.shutdown().await;
    n2.shutdown().await;
}

fn holder_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cluster-lock-holder"))
}

fn spawn_holder(url: &str, lock: &str) -> ChildProcess {
    ChildProcess::spawn(
        Command::new(holder_binary())
            .args(["--nats", url, "--platform", PLATFORM, "--app", APP])
            .args(["--node", "holder", "--lock", lock, "--ttl", "1"]),
    )
    .expect("spawn holder")
}

async fn event(holder: &ChildProcess, name: &str) -> serde_json::Value {
    let line = holder
        .wait_for_line(
            |l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["event"] == name || v["event"] == "error")
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("no `{name}` from holder; stderr: {}", holder.stderr_text()));
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["event"], name, "{v}");
    v
}

fn contender(js: async_nats::jetstream::Context) -> Locks {
    let names = Names::new(PLATFORM).expect("names");
    Locks::new(
        js,
        names.clone(),
        names.app_coord_bucket(APP),
        1,
        Some(APP),
        "contender",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holder_frees_the_lock_after_its_ttl() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut holder = spawn_holder(&server.url(), "k");
    let acquired = event(&holder, "acquired").await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    let lock = contender(js)
        .lock("k")
        .expect("lock")
        .timing(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"));
    assert!(lock.try_acquire().await.expect("try").is_none(), "held");
    let killed_at = monotonic_ns();
    holder.kill();
    let guard = lock
        .acquire(Duration::from_secs(30))
        .await
        .expect("freed after the TTL");
    let got_at = monotonic_ns();
    assert!(got_at > killed_at);
    assert!(guard.token() > acquired["token"].as_u64().expect("token"));
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_holder_is_invalid_before_anyone_else_acquires() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut holder = spawn_holder(&server.url(), "s");
    let acquired = event(&holder, "acquired").await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    let lock = contender(js)
        .lock("s")
        .expect("lock")
        .timing(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"));
    holder.pause().expect("SIGSTOP");
    // Paused past its TTL: the key expires and the contender gets it.
    let guard = lock
        .acquire(Duration::from_secs(30))
        .await
        .expect("acquired while the holder is paused");
    let contender_acquired = monotonic_ns();
    assert!(guard.token() > acquired["token"].as_u64().expect("token"));
    holder.resume().expect("SIGCONT");
    // Resumed, the old holder's guard reports invalid — and its validity had
    // ended before the contender acquired.
    let invalid = event(&holder, "invalid").await;
    let valid_until = invalid["valid_until_ns"].as_u64().expect("valid_until_ns");
    assert!(
        valid_until < contender_acquired,
        "old guard valid until {valid_until}, new holder from {contender_acquired}"
    );
    assert!(guard.is_valid());
    guard.release().await.expect("release");
    holder.kill();
}

/// Writes fenced by a lock hold: stored while the hold lasts, refused once
/// it ended, and the next holder's record fences the previous one's handle
/// (the server-side refusal itself is unit-tested in `kv::fence`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fenced_by_a_lock_hold_stop_when_the_hold_ends() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let n1 = node(&server.url(), "n1").await;
    let n2 = node(&server.url(), "n2").await;
    let (c1, c2) = (n1.app(APP).expect("ctx"), n2.app(APP).expect("ctx"));
    let g1 = c1
        .lock("report")
        .expect("lock")
        .try_acquire()
        .await
        .expect("try")
        .expect("free");
    let kv1 = c1.kv().fenced_by_lock(&g1).await.expect("fence 1");
    assert!(kv1.is_fenced() && !c1.kv().is_fenced());
    kv1.put("report.latest", "one")
        .await
        .expect("holder 1 writes");
    let token1 = g1.token();
    g1.release().await.expect("release");
    let err = kv1
        .put("report.latest", "late")
        .await
        .expect_err("released");
    assert_eq!(
        err.kind(),
        cluster_runtime::kv::KvErrorKind::Fenced,
        "{err}"
    );

    let g2 = c2
        .lock("report")
        .expect("lock")
        .try_acquire()
        .await
        .expect("try")
        .expect("free");
    assert!(g2.token() > token1);
    let kv2 = c2.kv().fenced_by_lock(&g2).await.expect("fence 2");
    kv2.put("report.latest", "two")
        .await
        .expect("holder 2 writes");
    let values: Vec<String> = c2
        .kv()
        .history("report.latest")
        .await
        .expect("history")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect();
    assert_eq!(values, ["one", "two"]);
    g2.release().await.expect("release");
}
