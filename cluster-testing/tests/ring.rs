//! Ring apps with node processes on a real nats-server: convergence and
//! balance, hand-off on join / graceful leave / SIGKILL, key-routed calls
//! through hand-offs, and SIGSTOP of an owner past its TTL. Every test ends
//! with the partition invariant checker over all recorded ownership events
//! (no partition with two owners at any instant, fencing tokens growing).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_runtime::naming::Names;
use cluster_runtime::platform::Status;
use cluster_runtime::ring::assign;
use cluster_runtime::rpc::RpcClient;
use cluster_testing::node::{NodeEvent, NodeProcess, NodeSpec, Nodes, Whoami};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const APP: &str = "cache";
const P: u32 = 256;
const WAIT: Duration = Duration::from_secs(30);

fn spec(nats: &str, id: &str) -> NodeSpec {
    let mut s = NodeSpec::new(BIN, id, nats);
    s.app = APP.into();
    s.mode = format!("ring({P})");
    s.tick_ms = 0;
    s
}

/// The desired table for `members`: partition → node.
fn desired(members: &[&str]) -> BTreeMap<u32, String> {
    assign(APP, P, members)
        .into_iter()
        .enumerate()
        .filter_map(|(p, o)| Some((p as u32, members[o?].to_owned())))
        .collect()
}

/// Every partition owned — and served — by exactly its desired owner, as
/// the nodes reported it.
fn converged_to(nodes: &Nodes, members: &[&str]) -> Option<BTreeMap<u32, String>> {
    let h = nodes.history();
    let want = desired(members);
    let owners = h.owners_now(APP);
    let serving = h.serving_now(APP);
    let ok = (0..P).all(|p| {
        let one = |m: &BTreeMap<u32, BTreeSet<String>>| {
            m.get(&p)
                .is_some_and(|s| s.len() == 1 && s.contains(&want[&p]))
        };
        one(&owners) && one(&serving)
    });
    ok.then_some(want)
}

async fn wait_converged(nodes: &Nodes, members: &[&str]) -> BTreeMap<u32, String> {
    match nodes
        .wait_until(WAIT, || converged_to(nodes, members))
        .await
    {
        Some(t) => t,
        None => {
            let owners = nodes.history().owners_now(APP);
            let per_node: BTreeMap<String, usize> =
                owners.values().flatten().fold(BTreeMap::new(), |mut m, n| {
                    *m.entry(n.clone()).or_default() += 1;
                    m
                });
            panic!(
                "ring did not converge to {members:?} within {WAIT:?}: {} partitions owned, per node {per_node:?}",
                owners.len()
            )
        }
    }
}

fn check(nodes: &Nodes) {
    check_history(&nodes.history());
}

fn check_history(history: &cluster_testing::invariants::History) {
    if let Err(e) = history.check_partitions(APP) {
        // Everything the nodes said about the partitions involved.
        let parts: BTreeSet<u32> = e
            .split("partition: ")
            .skip(1)
            .filter_map(|s| s.split(',').next()?.trim().parse().ok())
            .collect();
        let mut said: Vec<String> = history
            .ownership
            .iter()
            .filter(|o| o.partitions.iter().any(|p| parts.contains(p)))
            .map(|o| {
                let i = o
                    .partitions
                    .iter()
                    .position(|p| parts.contains(p))
                    .unwrap_or(0);
                format!(
                    "{} {} {:?} p{} token {:?} valid_until {:?}",
                    o.t_ns,
                    o.node,
                    o.change,
                    o.partitions[i],
                    o.tokens.get(i),
                    o.valid_until_ns
                )
            })
            .collect();
        said.extend(history.roles.iter().filter(|r| r.app == APP).map(|r| {
            format!(
                "{} {} role {:?} valid_until {:?}",
                r.t_ns, r.node, r.role, r.valid_until_ns
            )
        }));
        said.extend(
            history
                .kills
                .iter()
                .flat_map(|(n, ks)| ks.iter().map(move |k| format!("{k} {n} KILLED"))),
        );
        said.sort();
        panic!("ring invariants: {e}\n{}", said.join("\n"));
    }
}

/// Partitions whose own/release events `node` reported after `since`.
fn moved_on(nodes: &Nodes, node: &str, since: u64) -> BTreeSet<u32> {
    nodes
        .history()
        .ownership
        .iter()
        .filter(|e| e.node == node && e.t_ns > since)
        .flat_map(|e| e.partitions.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_own_every_partition_once_and_evenly_and_status_shows_it() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let ids = ["r1", "r2", "r3", "r4", "r5"];
    let nodes = Nodes::start(ids.iter().map(|id| spec(&server.url(), id)).collect())
        .await
        .expect("nodes");
    let table = wait_converged(&nodes, &ids).await;
    for n in &nodes.nodes {
        assert!(
            n.events()
                .iter()
                .any(|e| matches!(e, NodeEvent::Hook { hook, .. } if hook == "on_start")),
            "on_start ran on {}",
            n.id()
        );
    }
    // Calls without a key go to any instance (queue group).
    let nats = async_nats::connect(server.url().as_str())
        .await
        .expect("connect");
    let rpc = RpcClient::new(nats, Names::new("test").expect("names"));
    let mut answered = BTreeSet::new();
    for _ in 0..50 {
        let w: Whoami = rpc
            .app(APP)
            .method("whoami")
            .send(&())
            .await
            .expect("keyless call");
        answered.insert(w.node);
    }
    assert!(
        answered.len() > 1,
        "queue group spreads keyless calls: {answered:?}"
    );
    let fair = f64::from(P) / ids.len() as f64;
    for id in ids {
        let share = table.values().filter(|n| *n == id).count() as f64;
        assert!(
            (share - fair).abs() <= 0.25 * fair,
            "{id} owns {share} partitions, P/N = {fair}"
        );
    }
    // `/status` shows each node's partitions, and they are the table's.
    for n in &nodes.nodes {
        let addr = n
            .wait_ready(WAIT)
            .await
            .expect("ready")
            .expect("health address");
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let want: Vec<u32> = table
            .iter()
            .filter(|(_, o)| *o == n.id())
            .map(|(p, _)| *p)
            .collect();
        let mut got = Vec::new();
        for _ in 0..200 {
            let (code, body) = cluster_runtime::nats_server::http_get(port, "/status")
                .await
                .expect("status");
            assert_eq!(code, 200);
            let status: Status = serde_json::from_str(&body).expect("status json");
            let app = &status.apps[APP];
            assert_eq!(app.mode, format!("ring({P})"));
            got = app.partitions.clone();
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(got, want, "/status partitions of {}", n.id());
    }
    check(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_graceful_leave_and_sigkill_hand_off_without_two_owners() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let mut nodes = Nodes::start(
        ["r1", "r2", "r3", "r4"]
            .iter()
            .map(|id| spec(&url, id))
            .collect(),
    )
    .await
    .expect("nodes");
    let before = wait_converged(&nodes, &["r1", "r2", "r3", "r4"]).await;

    // Join: only partitions whose desired owner changed move.
    let since = cluster_runtime::clock::monotonic_ns();
    let joiner = NodeProcess::spawn(spec(&url, "r5")).expect("r5");
    joiner.wait_ready(WAIT).await.expect("r5 ready");
    nodes.nodes.push(joiner);
    let five = ["r1", "r2", "r3", "r4", "r5"];
    let after = wait_converged(&nodes, &five).await;
    let should_move: BTreeSet<u32> = (0..P).filter(|p| before[p] != after[p]).collect();
    let moved: BTreeSet<u32> = ["r1", "r2", "r3", "r4"]
        .iter()
        .flat_map(|n| moved_on(&nodes, n, since))
        .collect();
    assert_eq!(
        moved, should_move,
        "exactly the re-assigned partitions move"
    );
    assert!(
        should_move.len() as f64 <= 1.3 * f64::from(P) / 5.0,
        "{} partitions moved on a join",
        should_move.len()
    );
    check(&nodes);

    // Graceful leave: its partitions move to the survivors.
    let leaver = nodes.get("r2").expect("r2");
    leaver.terminate().expect("SIGTERM");
    let status = leaver.wait_exit(WAIT).await.expect("r2 exited");
    assert!(status.success(), "graceful exit: {status:?}");
    wait_converged(&nodes, &["r1", "r3", "r4", "r5"]).await;
    check(&nodes);

    // SIGKILL: its claims free when its member lease expires.
    nodes.get("r4").expect("r4").kill();
    wait_converged(&nodes, &["r1", "r3", "r5"]).await;
    check(&nodes);

    // The killed node comes back (after its old lease expired) and rejoins.
    let r4 = nodes.get("r4").expect("r4");
    r4.restart().expect("restart r4");
    r4.wait_ready(WAIT).await.expect("r4 ready");
    wait_converged(&nodes, &["r1", "r3", "r4", "r5"]).await;
    check(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_routed_calls_see_no_errors_through_a_join_and_a_leave() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let mut nodes = Nodes::start(["k1", "k2", "k3"].iter().map(|id| spec(&url, id)).collect())
        .await
        .expect("nodes");
    wait_converged(&nodes, &["k1", "k2", "k3"]).await;

    let nats = async_nats::connect(url.as_str()).await.expect("connect");
    let rpc = RpcClient::new(nats, Names::new("test").expect("names"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..4u64 {
        let (rpc, stop) = (rpc.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut i) = (0usize, Vec::new(), 0u64);
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let key = format!("user:{c}:{i}");
                let reply = rpc
                    .app(APP)
                    .ring(P)
                    .deadline(Duration::from_secs(10))
                    .method("whoami")
                    .key(&key)
                    .send::<(), Whoami>(&())
                    .await;
                match reply {
                    // The answering node owned the key's partition.
                    Ok(w) if w.active && w.epoch.is_some() => ok += 1,
                    Ok(w) => errors.push(format!("{key}: answered by a non-owner {w:?}")),
                    Err(e) => errors.push(format!("{key}: {e}")),
                }
            }
            (ok, errors)
        }));
    }
    let joiner = NodeProcess::spawn(spec(&url, "k4")).expect("k4");
    joiner.wait_ready(WAIT).await.expect("k4 ready");
    nodes.nodes.push(joiner);
    wait_converged(&nodes, &["k1", "k2", "k3", "k4"]).await;

    let leaver = nodes.get("k1").expect("k1");
    leaver.terminate().expect("SIGTERM");
    leaver.wait_exit(WAIT).await.expect("k1 exited");
    wait_converged(&nodes, &["k2", "k3", "k4"]).await;

    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut errors) = (0, Vec::new());
    for c in callers {
        let (o, e) = c.await.expect("caller");
        ok += o;
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} of {} calls failed: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(ok > 100, "calls flowed throughout ({ok})");
    check(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_ttl_re_owns_only_after_the_paused_owner_stopped() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nodes_ids = ["s1", "s2", "s3"];
    let mut nodes = Nodes::start(nodes_ids.iter().map(|id| spec(&server.url(), id)).collect())
        .await
        .expect("nodes");
    let table = wait_converged(&nodes, &nodes_ids).await;
    let paused_parts: BTreeSet<u32> = table
        .iter()
        .filter(|(_, o)| *o == "s1")
        .map(|(p, _)| *p)
        .collect();
    assert!(!paused_parts.is_empty());

    let paused_at = cluster_runtime::clock::monotonic_ns();
    nodes.get("s1").expect("s1").pause().expect("SIGSTOP");
    // The paused node cannot report; wait until the others own everything
    // it had (after its member lease expired, well past the 1 s TTL).
    nodes
        .wait_until(WAIT, || {
            let serving = nodes.history().serving_now(APP);
            paused_parts
                .iter()
                .all(|p| serving.get(p).is_some_and(|s| s.iter().any(|n| n != "s1")))
                .then_some(())
        })
        .await
        .expect("the others took the paused node's partitions over");
    nodes.get("s1").expect("s1").resume().expect("SIGCONT");
    // It notices it lost its lease, releases with its deadline, rejoins and
    // the ring converges over all three again.
    let s1 = nodes.nodes.iter().find(|n| n.id() == "s1").expect("s1");
    let late = s1
        .wait_event(
            |e| {
                matches!(e, NodeEvent::Ownership(o)
                    if o.t_ns > paused_at && o.valid_until_ns.is_some())
            },
            WAIT,
        )
        .await
        .expect("the resumed node recorded a late release with its deadline");
    let NodeEvent::Ownership(late) = late else {
        unreachable!()
    };
    wait_converged(&nodes, &nodes_ids).await;

    let history = nodes.history();
    check_history(&history);
    // Every partition it owned when it was paused was re-owned elsewhere
    // only after its validity ended.
    let deadline = late.valid_until_ns.expect("deadline");
    let intervals = history.partition_intervals(APP);
    let mut checked = 0;
    for p in &paused_parts {
        let Some(paused) = intervals[p]
            .iter()
            .find(|i| i.node == "s1" && i.start <= paused_at && paused_at < i.end)
        else {
            continue; // not owned at the pause (load made it move earlier)
        };
        assert_eq!(
            paused.end, deadline,
            "partition {p}: owned until the deadline"
        );
        checked += 1;
        let next = intervals[p]
            .iter()
            .find(|i| i.node != "s1" && i.start > paused.start)
            .expect("re-owned elsewhere");
        assert!(
            next.start > deadline,
            "partition {p} re-owned at {} before s1's deadline {deadline}",
            next.start
        );
    }
    assert!(checked > 0, "the paused node owned partitions when paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_partition_count_is_refused_at_start_up() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nodes = Nodes::start(vec![spec(&server.url(), "a1")])
        .await
        .expect("first node");
    wait_converged(&nodes, &["a1"]).await;
    let mut other = spec(&server.url(), "a2");
    other.mode = "ring(64)".into();
    let mut other = NodeProcess::spawn(other).expect("spawn");
    let err = other
        .wait_ready(WAIT)
        .await
        .expect_err("a ring(64) node must be refused next to ring(256)");
    assert!(
        err.contains("ring(64) does not match") && err.contains("ring(256)"),
        "{err}"
    );
    assert!(other.wait_exit(WAIT).await.is_some_and(|s| !s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_converges_again_without_two_owners() {
    let mut server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let ids = ["t1", "t2", "t3"];
    let nodes = Nodes::start(ids.iter().map(|id| spec(&server.url(), id)).collect())
        .await
        .expect("nodes");
    wait_converged(&nodes, &ids).await;

    server.kill();
    // Without NATS no node can renew: each stops owning by itself.
    nodes
        .wait_until(WAIT, || {
            nodes.history().owners_now(APP).is_empty().then_some(())
        })
        .await
        .expect("every node released its partitions without NATS");
    server.restart().await.expect("restart nats");
    wait_converged(&nodes, &ids).await;
    check(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_on_release_gives_the_partitions_up_after_the_hand_off_timeout() {
    use std::sync::Mutex;

    use cluster_runtime::app::{App, Mode};
    use cluster_runtime::config::Config;
    use cluster_runtime::platform::Platform;
    use cluster_testing::invariants::History;

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let history = Arc::new(Mutex::new(History::default()));
    let start = |node: &'static str, hang: bool| {
        let (url, history) = (server.url(), history.clone());
        async move {
            let mut c = Config::default();
            c.nats.urls = vec![url];
            c.node = node.into();
            c.platform = "t".into();
            c.health_addr = None;
            let app = App::builder(APP)
                .mode(Mode::Ring(16))
                .lease_ttl(Duration::from_secs(1))
                .handoff_timeout(Duration::from_millis(300))
                .on_release(move |_, _| async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                })
                .build()
                .expect("app");
            Platform::builder()
                .config(c)
                .app(app)
                .on_ownership_change(move |e| {
                    if let Ok(mut h) = history.lock() {
                        h.ownership.push(e.clone());
                    }
                })
                .start()
                .await
                .expect("start")
        }
    };
    let owned = |p: &Platform| p.app(APP).expect("app").ring().owned().len();
    let h1 = start("h1", true).await;
    let end = tokio::time::Instant::now() + WAIT;
    while owned(&h1) != 16 {
        assert!(tokio::time::Instant::now() < end, "h1 owns everything");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // h2 joins: h1 must hand half over although its on_release never ends.
    let h2 = start("h2", false).await;
    let want = assign(APP, 16, &["h1", "h2"]);
    let h2_share = want.iter().filter(|o| **o == Some(1)).count();
    let end = tokio::time::Instant::now() + WAIT;
    while owned(&h2) != h2_share || owned(&h1) != 16 - h2_share {
        assert!(
            tokio::time::Instant::now() < end,
            "partitions moved despite the hanging on_release: h1 {} h2 {}",
            owned(&h1),
            owned(&h2)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    history
        .lock()
        .expect("history")
        .check_partitions(APP)
        .expect("ring invariants");
    h2.shutdown().await;
    h1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_calls_run_only_while_the_gate_says_owned() {
    use std::sync::atomic::AtomicU32;

    use cluster_runtime::rpc::{ErrorCode, HandlerError, Handlers, RpcError, RpcServer};

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nats = async_nats::connect(server.url().as_str())
        .await
        .expect("connect");
    let names = Names::new("test").expect("names");
    let ran = Arc::new(AtomicU32::new(0));
    let handlers = Handlers::new().handle("hit", |ran: Arc<AtomicU32>, (): ()| async move {
        Ok::<_, HandlerError>(ran.fetch_add(1, Ordering::SeqCst) + 1)
    });
    let rpc_server = RpcServer::new(
        nats.clone(),
        names.clone(),
        APP,
        "g1",
        handlers,
        ran.clone(),
    )
    .expect("server");
    let owned = Arc::new(AtomicBool::new(true));
    rpc_server.gate_partitions({
        let owned = owned.clone();
        move |p| p != 3 || owned.load(Ordering::SeqCst)
    });
    rpc_server.serve_partitions([3, 4]).await.expect("serve");
    let nats_raw = nats.clone();
    let rpc = RpcClient::new(nats, names);
    let call = |p: u32| {
        rpc.app(APP)
            .method("hit")
            .partition(p)
            .deadline(Duration::from_millis(500))
            .send::<(), u32>(&())
    };
    assert_eq!(call(3).await.expect("owned"), 1);
    owned.store(false, Ordering::SeqCst);
    // Refused with `not_executed` before the handler runs; the client sends
    // it again until the deadline, then reports no instance served it.
    match call(3).await {
        Err(e @ RpcError::Unavailable { attempts, .. }) => {
            assert_eq!(e.code(), ErrorCode::Unavailable);
            assert!(attempts > 1, "retried after not_executed: {attempts}");
        }
        other => panic!("a call of a partition no longer owned must be refused: {other:?}"),
    }
    // A plain NATS request sees the refusal itself.
    let raw = nats_raw
        .request(format!("test._.api.{APP}.p.3.hit"), "null".into())
        .await
        .expect("reply");
    let code = raw
        .headers
        .as_ref()
        .and_then(|h| h.get("Cluster-Error"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("not_executed"));
    assert_eq!(call(4).await.expect("other partitions unaffected"), 2);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2,
        "the refused call ran no handler"
    );
    rpc_server.shutdown().await;
}
