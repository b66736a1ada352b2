//! RPC through the platform: routing follows roles, and callers see no
//! errors across a graceful hand-over or (with a long enough deadline) a
//! crash of the active.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::naming::Names;
use cluster_runtime::platform::StepDownRequest;
use cluster_runtime::rpc::RpcClient;
use cluster_testing::node::{NodeSpec, Nodes, Whoami};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const WAIT: Duration = Duration::from_secs(20);

async fn client(url: &str) -> (async_nats::Client, RpcClient) {
    let nats = async_nats::connect(url).await.expect("connect");
    let rpc = RpcClient::new(nats.clone(), Names::new("test").expect("names"));
    (nats, rpc)
}

/// Calls `whoami` in a loop until `stop`; returns (ok, errors, wrong), where
/// errors carry the monotonic instant the failed call started, and `wrong`
/// counts replies from a node that was not active when it answered.
type Outcome = (usize, Vec<(u64, String)>, usize);

fn caller(
    rpc: RpcClient,
    deadline: Duration,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(async move {
        let (mut ok, mut errors, mut wrong) = (0, Vec::new(), 0);
        while !stop.load(Ordering::SeqCst) {
            let started = monotonic_ns();
            match rpc
                .app("counter")
                .deadline(deadline)
                .method("whoami")
                .send::<(), Whoami>(&())
                .await
            {
                Ok(w) => {
                    ok += 1;
                    progress.fetch_add(1, Ordering::SeqCst);
                    if !w.active {
                        wrong += 1;
                    }
                }
                Err(e) => errors.push((started, e.to_string())),
            }
        }
        (ok, errors, wrong)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_calls_reach_only_the_active_and_survive_hand_overs_and_a_crash() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let mut nodes = Nodes::start(
        ["s1", "s2", "s3"]
            .iter()
            .map(|id| NodeSpec::new(BIN, id, &url))
            .collect(),
    )
    .await
    .expect("nodes");
    let (nats, rpc) = client(&url).await;

    // Graceful hand-overs under continuous calls: zero errors.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let calls = caller(
        rpc.clone(),
        Duration::from_secs(5),
        stop.clone(),
        progress.clone(),
    );
    let names = Names::new("test").expect("names");
    // Waits until the caller has completed `n` more calls.
    let calls_made = |n: usize| {
        let progress = progress.clone();
        async move {
            let target = progress.load(Ordering::SeqCst) + n;
            while progress.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for _ in 0..3 {
        tokio::time::timeout(WAIT, calls_made(20))
            .await
            .expect("calls flowing");
        let old = nodes
            .wait_for_active("counter", WAIT)
            .await
            .expect("active");
        let body = serde_json::to_vec(&StepDownRequest {
            app: "counter".into(),
        })
        .expect("json");
        nats.request(names.control_subject("stepdown"), body.into())
            .await
            .expect("stepdown");
        nodes
            .wait_until(WAIT, || {
                nodes
                    .with_role("counter", cluster_runtime::Role::Active)
                    .into_iter()
                    .find(|n| *n != old)
            })
            .await
            .expect("hand-over");
    }
    tokio::time::timeout(WAIT, calls_made(20))
        .await
        .expect("calls flowing");
    stop.store(true, Ordering::SeqCst);
    let (ok, errors, wrong) = calls.await.expect("caller");
    assert!(ok >= 80, "calls went through ({ok})");
    assert!(
        errors.is_empty(),
        "no caller errors across hand-overs: {errors:?}"
    );
    assert_eq!(wrong, 0, "only the active answers");

    // Crash of the active: every call *started after* the kill, with a
    // deadline > ttl + 1 s, succeeds (it finds no responders and is retried
    // until the new active serves). A call already delivered to the killed
    // process when it died cannot be answered and is not retried (it may
    // have run): at most that one call times out.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = caller(
        rpc.clone(),
        Duration::from_millis(2500),
        stop.clone(),
        progress.clone(),
    );
    let old = nodes
        .wait_for_active("counter", WAIT)
        .await
        .expect("active");
    tokio::time::timeout(WAIT, calls_made(20))
        .await
        .expect("calls flowing");
    nodes.get(&old).expect("node").kill();
    // After kill() returns the process is dead and reaped.
    let killed_at = monotonic_ns();
    nodes
        .wait_until(WAIT, || {
            nodes
                .with_role("counter", cluster_runtime::Role::Active)
                .into_iter()
                .find(|n| *n != old)
        })
        .await
        .expect("failover");
    tokio::time::timeout(WAIT, calls_made(20))
        .await
        .expect("calls flowing after failover");
    stop.store(true, Ordering::SeqCst);
    let (ok, errors, wrong) = calls.await.expect("caller");
    assert!(ok >= 40);
    let after_kill: Vec<_> = errors.iter().filter(|(t, _)| *t > killed_at).collect();
    assert!(
        after_kill.is_empty(),
        "no errors for calls started after the crash: {after_kill:?}"
    );
    assert!(
        errors.len() <= 1,
        "at most the call in flight at the kill fails: {errors:?}"
    );
    assert_eq!(wrong, 0);
    nodes.history().check("counter").expect("invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_calls_spread_and_instance_and_broadcast_calls_reach_the_named_nodes() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let nodes = Nodes::start(
        ["p1", "p2", "p3"]
            .iter()
            .map(|id| {
                let mut s = NodeSpec::new(BIN, id, &url);
                s.mode = "spread".into();
                s
            })
            .collect(),
    )
    .await
    .expect("nodes");
    nodes
        .wait_until(WAIT, || {
            (nodes
                .with_role("counter", cluster_runtime::Role::Running)
                .len()
                == 3)
                .then_some(())
        })
        .await
        .expect("all running");
    let (_, rpc) = client(&url).await;
    let seen = AtomicUsize::new(0);
    let mut by_node = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let w: Whoami = rpc
            .app("counter")
            .method("whoami")
            .send(&())
            .await
            .expect("call");
        *by_node.entry(w.node).or_insert(0) += 1;
        seen.fetch_add(1, Ordering::SeqCst);
    }
    assert!(by_node.len() >= 2, "queue group spreads calls: {by_node:?}");
    for id in ["p1", "p2", "p3"] {
        let w: Whoami = rpc
            .app("counter")
            .method("whoami")
            .instance(id)
            .send(&())
            .await
            .expect("instance call");
        assert_eq!(w.node, id);
    }
    let replies = rpc
        .app("counter")
        .method("whoami")
        .broadcast(Duration::from_millis(500))
        .send::<(), Whoami>(&())
        .await
        .expect("broadcast");
    let mut answered: Vec<String> = replies
        .into_iter()
        .map(|r| r.result.expect("reply").node)
        .collect();
    answered.sort();
    assert_eq!(answered, ["p1", "p2", "p3"]);
}
