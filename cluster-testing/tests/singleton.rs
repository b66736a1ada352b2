//! Singleton failover with node processes on real nats-server: SIGKILL,
//! SIGTERM, SIGSTOP past the TTL, NATS restarts. Every test ends with the
//! invariant checker over all recorded role changes and active ticks.

use std::time::Duration;

use cluster_runtime::app::Role;
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};
use cluster_testing::{NatsCluster, NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const APP: &str = "counter";
const WAIT: Duration = Duration::from_secs(20);

fn specs(nats: &str, ids: &[&str]) -> Vec<NodeSpec> {
    ids.iter().map(|id| NodeSpec::new(BIN, id, nats)).collect()
}

fn epoch_of(nodes: &Nodes, id: &str) -> Option<u64> {
    let node = nodes.nodes.iter().find(|n| n.id() == id)?;
    node.current_events().iter().rev().find_map(|e| match e {
        NodeEvent::Role(r) if r.app == APP && r.role == Role::Active => r.epoch,
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_active_fails_over_with_greater_epoch() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Nodes::start(specs(&server.url(), &["n1", "n2", "n3"]))
        .await
        .expect("nodes");
    let first = nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");
    nodes
        .wait_until(WAIT, || {
            (nodes.with_role(APP, Role::Standby).len() == 2).then_some(())
        })
        .await
        .expect("standbys");
    let epoch1 = epoch_of(&nodes, &first).expect("epoch");

    nodes.get(&first).expect("node").kill();
    let second = nodes.wait_for_active(APP, WAIT).await.expect("new active");
    assert_ne!(first, second);
    let epoch2 = epoch_of(&nodes, &second).expect("epoch");
    assert!(epoch2 > epoch1, "epoch must grow: {epoch1} -> {epoch2}");
    nodes.history().check(APP).expect("invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_and_exits_cleanly() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Nodes::start(specs(&server.url(), &["n1", "n2", "n3"]))
        .await
        .expect("nodes");
    let first = nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");
    nodes
        .wait_until(WAIT, || {
            (nodes.with_role(APP, Role::Standby).len() == 2).then_some(())
        })
        .await
        .expect("standbys");

    let node = nodes.get(&first).expect("node");
    node.terminate().expect("SIGTERM");
    let status = node.wait_exit(WAIT).await.expect("exited");
    assert!(status.success(), "graceful exit, got {status:?}");
    assert!(node.current_events().contains(&NodeEvent::Exited));
    let second = nodes.wait_for_active(APP, WAIT).await.expect("new active");
    assert_ne!(first, second);
    nodes.history().check(APP).expect("invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_ttl_demotes_before_the_new_active_and_rejoins_as_standby() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Nodes::start(specs(&server.url(), &["n1", "n2", "n3"]))
        .await
        .expect("nodes");
    let first = nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");

    nodes.get(&first).expect("node").pause().expect("SIGSTOP");
    // The paused process still *reports* active (it cannot speak); wait
    // until another node has taken over, well past the 1 s TTL.
    let second = nodes
        .wait_until(WAIT, || {
            nodes
                .with_role(APP, Role::Active)
                .into_iter()
                .find(|n| *n != first)
        })
        .await
        .expect("another node took over");
    nodes.get(&first).expect("node").resume().expect("SIGCONT");
    nodes
        .wait_until(WAIT, || {
            (nodes.nodes.iter().find(|n| n.id() == first)?.role(APP) == Some(Role::Standby))
                .then_some(())
        })
        .await
        .expect("old active rejoined as standby");
    assert_eq!(
        nodes.wait_for_active(APP, WAIT).await.expect("one active"),
        second
    );
    // The checker proves the paused node's validity ended (at its deadline)
    // before the new active started, and that it did no work after it.
    let history = nodes.history();
    history.check(APP).expect("invariants");
    let demotion = history
        .roles
        .iter()
        .find(|r| r.node == first && r.role == Role::Standby && r.valid_until_ns.is_some())
        .expect("the paused node recorded a late demotion with its deadline");
    let takeover = history
        .intervals(APP)
        .into_iter()
        .find(|i| i.node == second)
        .expect("interval");
    assert!(demotion.valid_until_ns.expect("deadline") < takeover.start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_recovers_with_one_active() {
    let mut server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nodes = Nodes::start(specs(&server.url(), &["n1", "n2", "n3"]))
        .await
        .expect("nodes");
    nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");

    server.kill();
    // With NATS gone the active cannot renew: it must demote by itself.
    nodes
        .wait_until(WAIT, || (nodes.active_count(APP) == 0).then_some(()))
        .await
        .expect("the active demoted itself without NATS");
    server.restart().await.expect("restart nats");
    nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("one active after restart");
    // Stays exactly one for a while (no flapping into two).
    for _ in 0..20 {
        assert!(nodes.active_count(APP) <= 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes.history().check(APP).expect("invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_server_of_a_three_node_nats_cluster_keeps_one_active() {
    let mut cluster = NatsCluster::start(3).await.expect("nats cluster");
    let nodes = Nodes::start(specs(&cluster.urls(), &["n1", "n2", "n3"]))
        .await
        .expect("nodes");
    nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");

    cluster.server(0).kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("one active with a server down");
    cluster.server(0).restart().await.expect("restart server 0");
    nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("one active after the server is back");
    nodes.history().check(APP).expect("invariants");
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name.
                let rest = stat.rsplit_once(')')?.1;
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    })
}

/// DESIGN §8 invariant 1, as callers see it: calls sent to an active that
/// is SIGSTOPped past its TTL sit in its socket; when it resumes, its
/// validity has ended, so it runs none of them — it answers `not_executed`
/// and the callers' retries reach the new active. Every call succeeds, and
/// every one was served by the new active while it was active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_buffered_at_a_paused_active_run_only_on_its_successor() {
    use cluster_runtime::naming::Names;
    use cluster_runtime::rpc::RpcClient;
    use cluster_testing::node::Whoami;

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Nodes::start(specs(&server.url(), &["n1", "n2"]))
        .await
        .expect("nodes");
    let first = nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let rpc = RpcClient::new(nats, Names::new("test").expect("names"));
    let call = || {
        rpc.app(APP)
            .method("whoami")
            .deadline(Duration::from_secs(20))
            .send::<(), Whoami>(&())
    };
    let before = call().await.expect("served before the pause");
    assert_eq!(before.node, first);

    let paused = nodes.get(&first).expect("node");
    paused.pause().expect("SIGSTOP");
    // SIGSTOP takes effect on each thread when it next enters the kernel:
    // wait until every thread is stopped, so no call below can be served
    // in the instant before.
    let pid = paused.pid();
    nodes
        .wait_until(WAIT, || all_threads_stopped(pid).then_some(()))
        .await
        .expect("the active stopped");
    // Sent while the active is paused: the server routes them to it (it is
    // still subscribed), where they wait.
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(call())).collect();
    let second = nodes
        .wait_until(WAIT, || {
            nodes
                .with_role(APP, Role::Active)
                .into_iter()
                .find(|n| *n != first)
        })
        .await
        .expect("another node took over");
    nodes.get(&first).expect("node").resume().expect("SIGCONT");
    for c in calls {
        let who = c.await.expect("task").expect("every call succeeds");
        assert_eq!(
            who.node, second,
            "a call ran on the deposed active after its lease ended: {who:?}"
        );
        assert!(who.active, "served while active: {who:?}");
    }
    nodes.history().check(APP).expect("invariants");
}

/// Hooks never hold up the protocol (DESIGN §4.7): with `on_leader_change`
/// and `on_standby` sleeping 10 s on every node, a standby still takes over
/// a SIGKILLed active at the lease expiry — before its own hooks, queued
/// when the old leader vanished, have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_does_not_delay_a_crash_failover() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut specs = specs(&server.url(), &["n1", "n2"]);
    for s in &mut specs {
        s.extra_args = vec!["--hook-sleep-ms".into(), "10000".into()];
    }
    let mut nodes = Nodes::start(specs).await.expect("nodes");
    let first = nodes
        .wait_for_active(APP, WAIT)
        .await
        .expect("first active");
    nodes
        .wait_until(WAIT, || {
            (nodes.with_role(APP, Role::Standby).len() == 1).then_some(())
        })
        .await
        .expect("standby");
    let killed_at = nodes.get(&first).expect("node").kill();
    let second = nodes
        .wait_until(WAIT, || {
            nodes
                .with_role(APP, Role::Active)
                .into_iter()
                .find(|n| *n != first)
        })
        .await
        .expect("the standby took over");
    let node = nodes
        .nodes
        .iter()
        .find(|n| n.id() == second)
        .expect("second");
    let events = node.current_events();
    let active_at = events
        .iter()
        .find_map(|e| match e {
            NodeEvent::Role(r) if r.role == Role::Active && r.t_ns > killed_at => Some(r.t_ns),
            _ => None,
        })
        .expect("active event after the kill");
    // The hooks queued by the takeover are still sleeping: none of them
    // finished between the kill and the activation.
    let hook_done_between = events.iter().any(|e| {
        matches!(e, NodeEvent::Hook { hook, t_ns, .. }
            if hook.ends_with(".done") && *t_ns > killed_at && *t_ns < active_at)
    });
    assert!(
        !hook_done_between,
        "the takeover waited for a sleeping hook: {events:?}"
    );
    nodes.history().check(APP).expect("invariants");
}

/// Two processes started with one node id would take the record from each
/// other forever; the second refuses to start, naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_node_id_in_use_refuses_to_start() {
    use cluster_testing::node::NodeProcess;

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let nodes = Nodes::start(specs(&server.url(), &["n1"]))
        .await
        .expect("nodes");
    nodes.wait_for_active(APP, WAIT).await.expect("active");
    let holder_pid = nodes.nodes[0].pid();
    let mut twin = NodeProcess::spawn(NodeSpec::new(BIN, "n1", &server.url())).expect("spawn");
    let status = twin.wait_exit(WAIT).await.expect("the twin exits");
    assert!(!status.success());
    let stderr = twin.stderr();
    assert!(
        stderr.contains("node id `n1` is in use by pid")
            && stderr.contains(&holder_pid.to_string()),
        "{stderr}"
    );
    // The holder was not disturbed.
    assert_eq!(nodes.with_role(APP, Role::Active), vec!["n1".to_owned()]);
    nodes.history().check(APP).expect("invariants");
}
