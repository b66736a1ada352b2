//! Pools (spread, replicas), placement by label and node id, member hooks.

use std::time::Duration;

use cluster_runtime::app::Role;
use cluster_runtime::pool::rendezvous_choice;
use cluster_testing::node::{NodeEvent, NodeProcess, NodeSpec, Nodes};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const WAIT: Duration = Duration::from_secs(20);

fn spec(nats: &str, id: &str, app: &str, mode: &str, placement: &str, labels: &str) -> NodeSpec {
    let mut s = NodeSpec::new(BIN, id, nats);
    s.app = app.into();
    s.mode = mode.into();
    s.placement = placement.into();
    s.labels = labels.into();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_runs_on_every_eligible_node_only() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let nodes = Nodes::start(vec![
        spec(&url, "a1", "api", "spread", "label=zone=a", "zone=a"),
        spec(&url, "a2", "api", "spread", "label=zone=a", "zone=a,ssd"),
        spec(&url, "b1", "api", "spread", "label=zone=a", "zone=b"),
    ])
    .await
    .expect("nodes");
    nodes
        .wait_until(WAIT, || {
            let mut running = nodes.with_role("api", Role::Running);
            running.sort();
            // b1 reports its first role asynchronously after start-up.
            let stopped = nodes.with_role("api", Role::Stopped);
            (running == ["a1", "a2"] && stopped == ["b1"]).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("spread on a1, a2 only: {:?}", nodes.roles("api")));
    let b1 = nodes.nodes.iter().find(|n| n.id() == "b1").expect("b1");
    assert!(
        !b1.events()
            .iter()
            .any(|e| matches!(e, NodeEvent::Hook { hook, .. } if hook == "on_start")),
        "on_start must not fire on an ineligible node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_two_of_four_converges_and_moves_when_a_runner_leaves() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let mut nodes = Nodes::start(
        ["r1", "r2", "r3", "r4"]
            .iter()
            .map(|id| spec(&url, id, "worker", "replicas(2)", "", ""))
            .collect(),
    )
    .await
    .expect("nodes");
    let running = |nodes: &Nodes| {
        let mut r = nodes.with_role("worker", Role::Running);
        r.sort();
        r
    };
    // Converged = exactly the rendezvous choice over all four members.
    let mut expected = rendezvous_choice("worker", ["r1", "r2", "r3", "r4"].into_iter(), 2);
    expected.sort();
    nodes
        .wait_until(WAIT, || (running(&nodes) == expected).then_some(()))
        .await
        .unwrap_or_else(|| {
            panic!(
                "expected {expected:?} running, got {:?}",
                nodes.roles("worker")
            )
        });

    let leaving = expected[0].clone();
    let node = nodes.get(&leaving).expect("node");
    node.terminate().expect("SIGTERM");
    node.wait_exit(WAIT).await.expect("exit");
    let rest: Vec<&str> = ["r1", "r2", "r3", "r4"]
        .into_iter()
        .filter(|n| *n != leaving)
        .collect();
    let mut after = rendezvous_choice("worker", rest.into_iter(), 2);
    after.sort();
    assert!(
        after.contains(&expected[1]),
        "rendezvous keeps the surviving replica"
    );
    nodes
        .wait_until(WAIT, || (running(&nodes) == after).then_some(()))
        .await
        .unwrap_or_else(|| {
            panic!(
                "expected {after:?} running after {leaving} left, got {:?}",
                nodes.roles("worker")
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_id_placement_and_member_hooks_name_the_right_node() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let nodes = Nodes::start(vec![
        spec(&url, "m1", "counter", "singleton", "node=m2|m3", ""),
        spec(&url, "m2", "counter", "singleton", "node=m2|m3", ""),
    ])
    .await
    .expect("nodes");
    let active = nodes
        .wait_for_active("counter", WAIT)
        .await
        .expect("active");
    assert_eq!(active, "m2", "m1 is not eligible");
    nodes
        .wait_until(WAIT, || {
            (nodes.nodes[0].role("counter") == Some(Role::Stopped)).then_some(())
        })
        .await
        .expect("m1 reports stopped: it is not eligible");
    assert_eq!(nodes.active_count("counter"), 1);

    let mut joiner =
        NodeProcess::spawn(spec(&url, "m3", "counter", "singleton", "node=m2|m3", "")).expect("m3");
    joiner.wait_ready(WAIT).await.expect("m3 ready");
    for n in &nodes.nodes {
        n.wait_event(|e| *e == NodeEvent::MemberJoin { node: "m3".into() }, WAIT)
            .await
            .unwrap_or_else(|| panic!("{} saw m3 join", n.id()));
    }
    joiner.kill();
    for n in &nodes.nodes {
        n.wait_event(|e| *e == NodeEvent::MemberLeave { node: "m3".into() }, WAIT)
            .await
            .unwrap_or_else(|| panic!("{} saw m3 leave (record expiry after SIGKILL)", n.id()));
    }
}
