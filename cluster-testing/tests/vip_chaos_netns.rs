//! The VIP is never on two hosts at once (DESIGN §8 invariant 9) while the
//! active is cut off the network over and over. Three nodes of a singleton
//! with a VIP and a process backend (ttl 1 s) on three hosts in network
//! namespaces; a sampler thread reads every host's local addresses (their
//! `fib_trie`) about every millisecond for the whole run and records each
//! change of who holds the VIP. Each round partitions the current active,
//! waits until another node holds the VIP, and heals. The backend: the
//! cut-off node's backend must be dead before the successor's
//! `Role(Active)` (its backend starts after that). Privileged (root): run
//! by `.ci/run` with
//! `cargo test -p cluster-testing --test vip_chaos_netns -- --ignored`.

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
const HOSTS: usize = 3;
const ROUNDS: usize = 10;

fn node_spec(nats: &str, host: &Host, vip: Ipv4Addr) -> NodeSpec {
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

/// Bit `i - 1` set: host `i` holds the VIP.
fn holders(mask: u8) -> Vec<usize> {
    (1..=HOSTS).filter(|i| mask & (1 << (i - 1)) != 0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by .ci/run"]
async fn vip_never_on_two_hosts_under_repeated_partitions() {
    let lab = Lab::new("vch", HOSTS).expect("lab");
    let nats = lab.nats_server().expect("nats on the gateway");
    let vip = lab.addr(100);
    let specs = (1..=HOSTS)
        .map(|i| node_spec(&nats.url(), lab.host(i), vip))
        .collect();
    let nodes = Nodes::start(specs).await.expect("nodes");
    let anchors: Vec<Anchor> = lab
        .hosts()
        .iter()
        .map(|h| Anchor::new(h).expect("anchor"))
        .collect();
    let mut probes: Vec<_> = anchors.iter().map(|a| a.addr_probe(vip)).collect();
    let vip_holders = Sampler::start(Duration::from_millis(1), move || {
        probes
            .iter_mut()
            .enumerate()
            .fold(0u8, |m, (i, p)| if p() { m | (1 << i) } else { m })
    });

    let mut previous = None::<String>;
    for round in 1..=ROUNDS {
        // Settled: one active, other than the one just cut off, holding
        // the VIP alone and running its backend.
        let (active, backend) = until("one active with the VIP and its backend", || {
            let active = nodes.with_role(APP, Role::Active);
            if active.len() != 1 || Some(&active[0]) == previous.as_ref() {
                return None;
            }
            let i = index(&active[0]);
            let pids = programs_in(lab.host(i), "cluster-test-http");
            (vip_holders.samples().changes.last()?.1 == 1 << (i - 1) && pids.len() == 1)
                .then(|| (active[0].clone(), pids[0]))
        })
        .await;
        let host = lab.host(index(&active)).clone();
        let backend_alive = Sampler::start(Duration::from_millis(1), move || alive(backend));

        let t_cut = monotonic_ns();
        lab.partition(&host).expect("partition");
        let (successor, t_successor) = until("another node becomes active", || {
            nodes.nodes.iter().find_map(|n| {
                if n.id() == active {
                    return None;
                }
                n.current_events().into_iter().find_map(|e| match e {
                    NodeEvent::Role(r)
                        if r.app == APP && r.role == Role::Active && r.t_ns > t_cut =>
                    {
                        Some((n.id().to_owned(), r.t_ns))
                    }
                    _ => None,
                })
            })
        })
        .await;
        until("the successor holds the VIP", || {
            (vip_holders.samples().changes.last()?.1 == 1 << (index(&successor) - 1)).then_some(())
        })
        .await;
        let t_dead = backend_alive
            .stop()
            .first_after(t_cut, |a| !*a)
            .expect("the cut-off node's backend died");
        let ms = |t: u64| (t as f64 - t_cut as f64) / 1e6;
        eprintln!(
            "round {round}: {active} cut off; its backend dead {:.1} ms after the cut; {successor} active {:.1} ms",
            ms(t_dead),
            ms(t_successor)
        );
        assert!(
            t_dead < t_successor,
            "round {round}: {successor} became active ({:.1} ms after the cut) while {active}'s backend still ran (dead at {:.1} ms)",
            ms(t_successor),
            ms(t_dead)
        );
        lab.heal(&host).expect("heal");
        previous = Some(active);
    }

    let samples = vip_holders.stop();
    let t0 = samples.changes.first().map(|c| c.0).unwrap_or_default();
    let doubles: Vec<String> = samples
        .changes
        .windows(2)
        .filter(|w| w[0].1.count_ones() >= 2)
        .map(|w| {
            format!(
                "hosts {:?} from {:.1} ms to {:.1} ms",
                holders(w[0].1),
                (w[0].0 - t0) as f64 / 1e6,
                (w[1].0 - t0) as f64 / 1e6
            )
        })
        .collect();
    eprintln!(
        "{} samples, longest gap {:.1} ms, {} changes of VIP holders",
        samples.count,
        samples.max_gap_ns as f64 / 1e6,
        samples.changes.len()
    );
    assert!(
        samples.changes.last().is_none_or(|c| c.1.count_ones() < 2),
        "the VIP is on two hosts at the end"
    );
    assert!(
        doubles.is_empty(),
        "the VIP was on two hosts at once: {doubles:?}"
    );
    if let Err(e) = nodes.history().check(APP) {
        panic!("invariant checker: {e}");
    }
}
