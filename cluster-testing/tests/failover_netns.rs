//! The full failover of a singleton with a VIP and a process backend, on
//! three hosts in network namespaces (plus a client host) on one bridge,
//! with nats-server on the gateway. Privileged (root): run by `.ci/run`
//! with `cargo test -p cluster-testing --test failover_netns -- --ignored`.
//!
//! - the VIP is on the active's host only, and a client reaches the
//!   active's backend through it; SIGKILL of the active's host → the VIP
//!   and the backend move to the new active;
//! - cutting the active's host off the network makes it release the VIP and
//!   stop its backend before the new active takes over (role-change
//!   timestamps on the machine-wide monotonic clock).

use std::time::{Duration, Instant};

use cluster_runtime::app::Role;
use cluster_testing::netns::{Host, Lab};
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const HTTP: &str = env!("CARGO_BIN_EXE_cluster-test-http");
const APP: &str = "web";
const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 8080;

fn node_spec(nats: &str, host: &Host, vip: &str) -> NodeSpec {
    let mut spec = NodeSpec::new(BIN, &format!("h{}", host.index()), nats);
    spec.app = APP.into();
    spec.netns = Some(host.name().to_owned());
    spec.extra_args = vec![
        "--vip".into(),
        format!("{vip}/24 dev eth0"),
        "--backend".into(),
        format!("process:{HTTP} --listen 0.0.0.0:{PORT}"),
        "--backend-health".into(),
        format!("http://127.0.0.1:{PORT}/health"),
    ];
    spec
}

fn has_vip(host: &Host, vip: &str) -> bool {
    host.ip(&["-o", "addr", "show", "dev", "eth0"])
        .map(|out| out.contains(&format!(" {vip}/24 ")))
        .unwrap_or(false)
}

/// `GET http://VIP:PORT/` from the client: the node id in the body.
fn served_by(client: &Host, vip: &str) -> Option<String> {
    let out = client
        .command("curl")
        .args(["-s", "--max-time", "1", &format!("http://{vip}:{PORT}/")])
        .output()
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !body.is_empty())
        .then(|| body.strip_prefix("node ").unwrap_or(&body).to_owned())
}

/// Whether a backend process runs inside `host`'s namespace.
fn backend_runs(host: &Host) -> bool {
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", host.name()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    pids.split_whitespace().any(|pid| {
        // The program itself, not a node whose arguments name it.
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(argv0).ends_with("cluster-test-http")
            })
            .unwrap_or(false)
    })
}

/// "The host died": every process in its namespace killed, its port off
/// the bridge.
fn kill_host(lab: &Lab, host: &Host) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "pids", host.name()])
        .output()
        .map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        });
    lab.partition(host).expect("cut the host off");
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn host_of<'a>(lab: &'a Lab, node: &str) -> &'a Host {
    let i: usize = node.trim_start_matches('h').parse().expect("node id h<i>");
    lab.host(i)
}

/// The t_ns of `node`'s last change to `role`.
fn role_change_ns(nodes: &Nodes, node: &str, role: Role) -> Option<u64> {
    let process = nodes.nodes.iter().find(|n| n.id() == node)?;
    process.current_events().iter().rev().find_map(|e| match e {
        NodeEvent::Role(r) if r.app == APP && r.role == role => Some(r.t_ns),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by .ci/run"]
async fn vip_and_backend_follow_the_active_across_sigkill_and_partition() {
    let lab = Lab::new("fo", 4).expect("lab");
    let nats = lab.nats_server().expect("nats on the gateway");
    let vip = lab.addr(100).to_string();
    let client = lab.host(4);
    let specs = (1..=3)
        .map(|i| node_spec(&nats.url(), lab.host(i), &vip))
        .collect();
    let mut nodes = Nodes::start(specs).await.expect("nodes");

    // One active; the VIP is on its host only and leads to its backend.
    let first = nodes.wait_for_active(APP, WAIT).await.expect("active");
    let served = until("the client reaches the active through the VIP", || {
        served_by(client, &vip)
    })
    .await;
    assert_eq!(served, first);
    for i in 1..=3 {
        let is_first = lab.host(i).name() == host_of(&lab, &first).name();
        assert_eq!(has_vip(lab.host(i), &vip), is_first, "VIP on host {i}");
        assert_eq!(backend_runs(lab.host(i)), is_first, "backend on host {i}");
    }

    // The active's host dies: the VIP and the backend move to a new active,
    // and the client, whose ARP cache pointed at the dead host, follows
    // (gratuitous ARP).
    kill_host(&lab, host_of(&lab, &first));
    nodes.get(&first).expect("node").kill();
    let second = until("the client reaches a new active through the VIP", || {
        served_by(client, &vip).filter(|by| *by != first)
    })
    .await;
    assert!(has_vip(host_of(&lab, &second), &vip));
    assert_eq!(nodes.with_role(APP, Role::Active), vec![second.clone()]);

    // Cut the new active off NATS: it releases the VIP and stops its
    // backend on its own, before a third node becomes active.
    let cut = host_of(&lab, &second);
    lab.partition(cut).expect("partition");
    let third = nodes
        .wait_until(WAIT, || {
            let active = nodes.with_role(APP, Role::Active);
            (active.len() == 1 && active[0] != first && active[0] != second)
                .then(|| active[0].clone())
        })
        .await
        .expect("a third active");
    let cut_ns = role_change_ns(&nodes, &second, Role::Standby).expect("cut node demoted");
    let third_ns = role_change_ns(&nodes, &third, Role::Active).expect("third active");
    assert!(
        cut_ns < third_ns,
        "{second} finished stepping down at {cut_ns} ns, after {third} became active at {third_ns} ns"
    );
    assert!(!has_vip(cut, &vip), "the cut-off node still holds the VIP");
    assert!(
        !backend_runs(cut),
        "the cut-off node still runs its backend"
    );
    let served = until("the client reaches the third active", || {
        served_by(client, &vip).filter(|by| *by == third)
    })
    .await;
    assert_eq!(served, third);
    // Healed, the cut-off node rejoins as a standby without the VIP.
    lab.heal(cut).expect("heal");
    until("the healed node is standby", || {
        (nodes
            .roles(APP)
            .iter()
            .any(|(n, r)| *n == second && *r == Some(Role::Standby)))
        .then_some(())
    })
    .await;
    assert!(!has_vip(cut, &vip));
    assert_eq!(nodes.with_role(APP, Role::Active), vec![third.clone()]);

    // Graceful step-down (SIGTERM): the backend is stopped before the VIP
    // is released, as the audit log records it.
    let since = std::time::SystemTime::now();
    nodes
        .get(&third)
        .expect("node")
        .terminate()
        .expect("SIGTERM");
    let mut config = cluster_runtime::config::Config::default();
    config.nats.urls = vec![nats.url()];
    config.node = "auditor".into();
    config.platform = "test".into();
    config.health_addr = None;
    let auditor = cluster_runtime::platform::Platform::builder()
        .config(config)
        .start()
        .await
        .expect("auditor");
    let filter = cluster_runtime::observe::AuditFilter::new()
        .app(APP)
        .since(since);
    let mut entries = Vec::new();
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        entries = auditor
            .audit()
            .query(filter.clone())
            .await
            .unwrap_or_default();
        if entries
            .iter()
            .any(|e| e.node == third && e.action == "vip.released")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seq = |action: &str| {
        entries
            .iter()
            .find(|e| e.node == third && e.action == action)
            .map(|e| e.seq)
            .unwrap_or_else(|| panic!("no {action} by {third}: {entries:?}"))
    };
    assert!(
        seq("backend.stopped") < seq("vip.released"),
        "the VIP was released before the backend stopped"
    );
    auditor.shutdown().await;
}
