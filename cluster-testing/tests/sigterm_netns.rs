//! SIGTERM of an active that has just been cut off from NATS: the graceful
//! step-down cannot reach NATS (no final flush, no key delete, no record
//! delete), yet the process must exit, leave no VIP on its interface and no
//! backend running, and no other node may become active before its VIP
//! is gone (DESIGN §4.7: "a process never exits holding the VIP"; §8
//! invariants 4 and 9). Two hosts in network namespaces, nats-server on
//! the gateway. Privileged (root): run by `.ci/run` with
//! `cargo test -p cluster-testing --test sigterm_netns -- --ignored`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cluster_runtime::app::Role;
use cluster_runtime::clock::monotonic_ns;
use cluster_testing::hostwatch::{alive, programs_in, Anchor, Sampler};
use cluster_testing::netns::{Host, Lab};
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");
const HTTP: &str = env!("CARGO_BIN_EXE_cluster-test-http");
const APP: &str = "web";
const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);
/// Generous: the graceful path is bounded by the lease (1 s ttl), the
/// shutdown's NATS calls by their own timeouts.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

fn node_spec(nats: &str, host: &Host, vip: Ipv4Addr) -> NodeSpec {
    let mut spec = NodeSpec::new(BIN, &format!("h{}", host.index()), nats);
    spec.app = APP.into();
    spec.netns = Some(host.name().to_owned());
    spec.env = vec![(
        "RUST_LOG".into(),
        std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
    )];
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

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn index(node: &str) -> usize {
    node.trim_start_matches('h').parse().expect("node id h<i>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by .ci/run"]
async fn sigterm_while_cut_off_from_nats_exits_without_the_vip() {
    let lab = Lab::new("stm", 2).expect("lab");
    let nats = lab.nats_server().expect("nats on the gateway");
    let vip = lab.addr(100);
    let specs = (1..=2)
        .map(|i| node_spec(&nats.url(), lab.host(i), vip))
        .collect();
    let mut nodes = Nodes::start(specs).await.expect("nodes");
    let anchors: Vec<Anchor> = lab
        .hosts()
        .iter()
        .map(|h| Anchor::new(h).expect("anchor"))
        .collect();

    let first = nodes.wait_for_active(APP, WAIT).await.expect("active");
    let i = index(&first);
    let other = format!("h{}", 3 - i);
    let host = lab.host(i).clone();
    let backend = until("the active holds the VIP and runs its backend", || {
        let pids = programs_in(&host, "cluster-test-http");
        (anchors[i - 1].has_addr(vip).unwrap_or(false) && pids.len() == 1).then(|| pids[0])
    })
    .await;
    assert!(
        !anchors[2 - i].has_addr(vip).expect("fib"),
        "VIP on the standby"
    );
    // Let the activation finish (serving starts after the backend is
    // healthy): SIGTERM must meet the graceful step-down of an active that
    // serves, not an activation still waiting on NATS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut vip_probe = anchors[i - 1].addr_probe(vip);
    let sampler = Sampler::start(Duration::from_millis(1), move || {
        (vip_probe(), alive(backend))
    });

    // Cut off, then at once SIGTERM.
    let t_cut = monotonic_ns();
    lab.partition(&host).expect("partition");
    nodes
        .get(&first)
        .expect("node")
        .terminate()
        .expect("SIGTERM");
    let started = Instant::now();
    let status = nodes
        .get(&first)
        .expect("node")
        .wait_exit(EXIT_WITHIN)
        .await;
    let took = started.elapsed();
    let stderr = nodes.get(&first).expect("node").stderr();
    let status = status.unwrap_or_else(|| {
        panic!("{first} still runs {EXIT_WITHIN:?} after SIGTERM while cut off; stderr:\n{stderr}")
    });
    let t_exit = monotonic_ns();
    eprintln!("{first} exited {took:?} after SIGTERM while cut off: {status}; stderr:\n{stderr}");

    // After exit: no VIP on its interface, no backend.
    assert!(
        !anchors[i - 1].has_addr(vip).expect("fib"),
        "{first} exited holding the VIP; stderr:\n{stderr}"
    );
    let addrs = host
        .ip(&["-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    assert!(
        !addrs.contains(&format!(" {vip}/")),
        "VIP still on eth0: {addrs}"
    );
    assert!(
        !alive(backend),
        "the backend (pid {backend}) outlived its node"
    );
    assert!(
        programs_in(&host, "cluster-test-http").is_empty(),
        "a backend still runs in {}",
        host.name()
    );

    // The other node takes over — only after the VIP was gone.
    let successor = until("the other node becomes active", || {
        let n = nodes.nodes.iter().find(|n| n.id() == other)?;
        n.current_events().into_iter().find_map(|e| match e {
            NodeEvent::Role(r) if r.app == APP && r.role == Role::Active && r.t_ns > t_cut => {
                Some(r.t_ns)
            }
            _ => None,
        })
    })
    .await;
    let samples = sampler.stop();
    let t_vip = samples
        .first_after(t_cut, |v| !v.0)
        .expect("the sampler saw the VIP go");
    let t_backend = samples
        .first_after(t_cut, |v| !v.1)
        .expect("the sampler saw the backend die");
    let ms = |t: u64| (t as f64 - t_cut as f64) / 1e6;
    eprintln!(
        "after the cut: VIP gone {:.1} ms, backend dead {:.1} ms, exit ≤ {:.1} ms, {other} active {:.1} ms (sampling gap ≤ {:.1} ms)",
        ms(t_vip),
        ms(t_backend),
        ms(t_exit),
        ms(successor),
        samples.max_gap_ns as f64 / 1e6
    );
    assert!(
        t_vip < successor,
        "{other} became active {:.1} ms after the cut, before {first}'s VIP was gone ({:.1} ms)",
        ms(successor),
        ms(t_vip)
    );
    assert!(
        t_backend < successor,
        "{other} became active {:.1} ms after the cut, before {first}'s backend died ({:.1} ms)",
        ms(successor),
        ms(t_backend)
    );
    // The cut-off node's own record of stepping down (after its VIP step)
    // precedes the successor too.
    let stepped_down = nodes
        .get(&first)
        .expect("node")
        .current_events()
        .into_iter()
        .filter_map(|e| match e {
            NodeEvent::Role(r) if r.app == APP && r.role != Role::Active && r.t_ns > t_cut => {
                Some(r.t_ns)
            }
            _ => None,
        })
        .next();
    if let Some(t) = stepped_down {
        assert!(
            t < successor,
            "{first} stepped down after {other} took over"
        );
    }
    assert_eq!(nodes.with_role(APP, Role::Active), vec![other.clone()]);
    lab.heal(&host).expect("heal");
}
