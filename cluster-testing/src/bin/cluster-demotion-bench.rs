//! Benchmark (not a test): how soon after its lease deadline an active
//! that is cut off from NATS stops acting — its VIP gone from its
//! interface and its backend dead (DESIGN §4.7 "lease lost", §8 invariants
//! 4 and 9). Run through `scripts/bench.sh safety` (as root); needs root:
//! network namespaces.
//!
//! Two nodes of a singleton with a VIP and a process backend (ttl 1 s; the
//! node record keeps the runtime's default 3 s, so the app lease is what
//! lapses first) on two hosts in network namespaces, nats-server on the
//! gateway. One trial: the active's switch port is disabled (the node keeps
//! running, its link stays up, no frame passes); from this process a
//! sampler thread reads the active's namespace's `fib_trie` (through a
//! parked `sleep`, see `cluster_testing::hostwatch`) and `/proc/<backend
//! pid>/stat` every `--poll-us`, and records when the VIP's local route
//! disappears and when the backend is dead (gone or a zombie). The lease
//! deadline is the `valid_until_ns` of the node's `Role(Standby)` event —
//! `CLOCK_MONOTONIC`, the clock the sampler uses. Then the port is
//! re-enabled, the node rejoins as a standby, and the next trial cuts the
//! other node (the new active).
//!
//! Prints one JSON line:
//! `{"bench":"demotion.lease_lost","unit":"ms","p50":..,"p99":..,"trials":N,
//!   "vip_p50":..,"vip_p99":..,"backend_p50":..,"backend_p99":..,..}`
//! where the headline is, per trial, the later of the two (both done).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use cluster_runtime::app::Role;
use cluster_runtime::clock::monotonic_ns;
use cluster_testing::hostwatch::{alive, programs_in, Anchor, Sampler};
use cluster_testing::netns::{Host, Lab};
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};

const APP: &str = "web";
const PLATFORM: &str = "bench";
const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);
const TTL_SECS: u64 = 1;
/// The runtime's default node-record TTL.
const NODE_TTL_SECS: u64 = 3;
/// DESIGN §4.7: "within ~100 ms of the deadline".
const TARGET_MS: f64 = 100.0;
const BACKEND: &str = "cluster-test-http";

#[derive(Debug, Parser)]
#[command(name = "cluster-demotion-bench")]
struct Args {
    /// Number of partitions of the active.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Sampling period of the VIP and the backend pid, in µs.
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
    /// `RUST_LOG` for the nodes; the cut-off node's log lines of each
    /// trial are printed to stderr (e.g. `info` shows when the lease was
    /// declared lost and when the VIP and the backend went).
    #[arg(long)]
    node_log: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !is_root() {
        eprintln!(
            "error: the demotion bench needs root (it builds network namespaces and moves a VIP)"
        );
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether we run as root: `/proc/self` belongs to the effective uid.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build the cluster-testing binaries first",
            bin.display()
        ))
    }
}

fn node_spec(
    bin: &Path,
    http: &Path,
    nats: &str,
    host: &Host,
    vip: Ipv4Addr,
    log: Option<&str>,
) -> NodeSpec {
    let mut spec = NodeSpec::new(bin, &format!("h{}", host.index()), nats);
    spec.env = vec![("RUST_LOG".into(), log.unwrap_or("warn").into())];
    spec.app = APP.into();
    spec.platform = PLATFORM.into();
    spec.lease_ttl_secs = TTL_SECS;
    spec.tick_ms = 0;
    spec.netns = Some(host.name().to_owned());
    spec.extra_args = vec![
        "--node-lease-ttl".into(),
        NODE_TTL_SECS.to_string(),
        "--vip".into(),
        format!("{vip}/24 dev eth0"),
        "--backend".into(),
        format!("process:{} --listen 0.0.0.0:{PORT}", http.display()),
        "--backend-health".into(),
        format!("http://127.0.0.1:{PORT}/health"),
    ];
    spec
}

/// Waits until `f` returns `Some`, polling every 5 ms.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!("timed out after {WAIT:?} waiting until {what}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The first `role` event of `node`'s current incarnation after `since`.
fn role_after(
    nodes: &Nodes,
    node: &str,
    role: Role,
    since: u64,
) -> Option<cluster_runtime::instance::RoleEvent> {
    let n = nodes.nodes.iter().find(|n| n.id() == node)?;
    n.current_events().into_iter().find_map(|e| match e {
        NodeEvent::Role(r) if r.app == APP && r.role == role && r.t_ns > since => Some(r),
        _ => None,
    })
}

/// One trial's figures, in ms after the lease deadline.
#[derive(Debug)]
struct Trial {
    vip: f64,
    backend: f64,
    /// Cut → deadline (how much of its validity the node had left).
    cut_to_deadline: f64,
    /// Both done → the successor's `Role(Active)`.
    successor_margin: f64,
}

struct Bench {
    lab: Lab,
    nodes: Nodes,
    anchors: Vec<Anchor>,
    vip: Ipv4Addr,
    poll: Duration,
    max_gap_ns: u64,
    /// Print the cut-off node's new log lines after each trial.
    show_logs: bool,
    /// Log lines of each node's incarnation already printed.
    logged: std::collections::BTreeMap<String, usize>,
}

impl Bench {
    fn index(node: &str) -> Result<usize, String> {
        node.trim_start_matches('h')
            .parse::<usize>()
            .ok()
            .filter(|i| (1..=2).contains(i))
            .ok_or_else(|| format!("unexpected node id `{node}`"))
    }

    /// Steady state: one active holding the VIP and running one backend,
    /// one standby with neither. Returns (active, its backend pid).
    async fn settled(&self) -> Result<(String, u32), String> {
        until(
            "one active with the VIP and its backend, one standby",
            || {
                let active = self.nodes.with_role(APP, Role::Active);
                let standby = self.nodes.with_role(APP, Role::Standby);
                if active.len() != 1 || standby.len() != 1 {
                    return None;
                }
                let a = Self::index(&active[0]).ok()?;
                let s = Self::index(&standby[0]).ok()?;
                let vip_ok = self.anchors[a - 1].has_addr(self.vip).ok()?
                    && !self.anchors[s - 1].has_addr(self.vip).ok()?;
                let backends = programs_in(self.lab.host(a), BACKEND);
                (vip_ok && backends.len() == 1 && programs_in(self.lab.host(s), BACKEND).is_empty())
                    .then(|| (active[0].clone(), backends[0]))
            },
        )
        .await
    }

    async fn trial(&mut self, round: usize) -> Result<Trial, String> {
        let (old, backend) = self.settled().await?;
        let i = Self::index(&old)?;
        let new = format!("h{}", 3 - i);
        let mut probe_vip = self.anchors[i - 1].addr_probe(self.vip);
        let sampler = Sampler::start(self.poll, move || (probe_vip(), alive(backend)));
        if sampler.samples().changes.first().map(|c| c.1) != Some((true, true)) {
            return Err(format!(
                "round {round}: {old} lost the VIP or its backend before the cut"
            ));
        }
        let host = self.lab.host(i).clone();
        let t_cut = monotonic_ns();
        self.lab.partition(&host).map_err(|e| e.to_string())?;

        let (t_vip, t_backend) = until("the VIP gone and the backend dead", || {
            let s = sampler.samples();
            Some((
                s.first_after(t_cut, |v| !v.0)?,
                s.first_after(t_cut, |v| !v.1)?,
            ))
        })
        .await?;
        let demoted = until("the cut-off node's Role(Standby)", || {
            role_after(&self.nodes, &old, Role::Standby, t_cut)
        })
        .await?;
        let successor = until("the successor's Role(Active)", || {
            role_after(&self.nodes, &new, Role::Active, t_cut)
        })
        .await?;
        let samples = sampler.stop();
        self.max_gap_ns = self.max_gap_ns.max(samples.max_gap_ns);
        let deadline = demoted.valid_until_ns.ok_or_else(|| {
            format!(
                "round {round}: {old} demoted at {} without a passed deadline (not the lease-lost path?)",
                demoted.t_ns
            )
        })?;
        let ms = |t: u64, from: u64| (t as f64 - from as f64) / 1e6;
        let trial = Trial {
            vip: ms(t_vip, deadline),
            backend: ms(t_backend, deadline),
            cut_to_deadline: ms(deadline, t_cut),
            successor_margin: ms(successor.t_ns, t_vip.max(t_backend)),
        };
        eprintln!(
            "round {round}: {old} cut off; deadline {:.1} ms after the cut; VIP gone +{:.1} ms, backend dead +{:.1} ms, Role(Standby) +{:.1} ms; {new} active {:.1} ms after both",
            trial.cut_to_deadline,
            trial.vip,
            trial.backend,
            ms(demoted.t_ns, deadline),
            trial.successor_margin,
        );

        if self.show_logs {
            let stderr = self
                .nodes
                .nodes
                .iter()
                .find(|n| n.id() == old)
                .map(|n| n.stderr())
                .unwrap_or_default();
            let seen = self.logged.entry(old.clone()).or_default();
            for line in stderr.lines().skip(*seen) {
                eprintln!("round {round}: {old}: {line}");
            }
            *seen = stderr.lines().count();
        }

        // Back to steady state: the node rejoins as a standby.
        self.lab.heal(&host).map_err(|e| e.to_string())?;
        Ok(trial)
    }
}

/// (p50, p99) nearest-rank, rounded to 0.1 ms.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        round1(samples[i.clamp(1, samples.len()) - 1])
    };
    (rank(50.0), rank(99.0))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

async fn run(args: Args) -> Result<(), String> {
    if args.trials == 0 {
        return Err("--trials must be at least 1".into());
    }
    let bin = sibling("cluster-test-node")?;
    let http = sibling(BACKEND)?;
    let lab = Lab::new("dmb", 2).map_err(|e| format!("network lab: {e}"))?;
    let nats = lab.nats_server().map_err(|e| format!("nats-server: {e}"))?;
    let vip = lab.addr(100);
    let specs = (1..=2)
        .map(|i| {
            node_spec(
                &bin,
                &http,
                &nats.url(),
                lab.host(i),
                vip,
                args.node_log.as_deref(),
            )
        })
        .collect();
    let nodes = Nodes::start(specs).await?;
    let anchors = lab
        .hosts()
        .iter()
        .map(Anchor::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("anchor: {e}"))?;
    let mut bench = Bench {
        lab,
        nodes,
        anchors,
        vip,
        poll: Duration::from_micros(args.poll_us),
        max_gap_ns: 0,
        show_logs: args.node_log.is_some(),
        logged: std::collections::BTreeMap::new(),
    };
    let mut trials = Vec::new();
    for round in 1..=args.trials {
        trials.push(bench.trial(round).await?);
    }
    if let Err(e) = bench.nodes.history().check(APP) {
        eprintln!("warning: invariant checker: {e}");
    }
    let col = |f: fn(&Trial) -> f64| trials.iter().map(f).collect::<Vec<_>>();
    let (p50, p99) = percentiles(col(|t| t.vip.max(t.backend)));
    let (vip_p50, vip_p99) = percentiles(col(|t| t.vip));
    let (backend_p50, backend_p99) = percentiles(col(|t| t.backend));
    let (cut_p50, cut_p99) = percentiles(col(|t| t.cut_to_deadline));
    let (margin_p50, _) = percentiles(col(|t| t.successor_margin));
    let line = serde_json::json!({
        "bench": "demotion.lease_lost",
        "unit": "ms",
        "p50": p50,
        "p99": p99,
        "max": round1(col(|t| t.vip.max(t.backend)).into_iter().fold(f64::MIN, f64::max)),
        "trials": trials.len(),
        "vip_p50": vip_p50,
        "vip_p99": vip_p99,
        "backend_p50": backend_p50,
        "backend_p99": backend_p99,
        "target_ms": TARGET_MS,
        "ttl_ms": TTL_SECS * 1000,
        "poll_us": args.poll_us,
        "max_poll_gap_ms": round1(bench.max_gap_ns as f64 / 1e6),
        "cut_to_deadline_ms": { "p50": cut_p50, "p99": cut_p99 },
        "successor_margin_ms": {
            "p50": margin_p50,
            "min": round1(col(|t| t.successor_margin).into_iter().fold(f64::MAX, f64::min)),
        },
    });
    println!("{line}");
    Ok(())
}
