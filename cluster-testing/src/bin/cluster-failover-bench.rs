//! Benchmark (not a test): the full crash failover of a singleton with a
//! replicated SQLite database, a VIP and a process backend, on three hosts
//! in network namespaces plus a client host. Run through
//! `scripts/bench.sh failover-full`; needs root.
//!
//! One trial: SIGKILL the active node's process (and whatever else runs in
//! its namespace: the backend outlives its manager), then time how long
//! until the client host gets an HTTP answer through the VIP from the new
//! active's backend. The client side is this same binary in `probe` mode,
//! run inside the client's namespace (`ip netns exec` keeps
//! `CLOCK_MONOTONIC`): it polls the VIP every few ms and prints the
//! monotonic time whenever the answer changes. The killed node is then
//! restarted as a standby and the VIP must answer again before the next
//! trial.
//!
//! The breakdown comes from the new active: `detect_ms` is kill → its
//! `Role(Active)` event (lease won), the steps are the `ms` of its audit
//! entries (`wal.promoted`, `vip.acquired`, `wal.replicating`,
//! `backend.started`) for the new epoch, read back by an in-process
//! observer platform with no apps.
//!
//! Prints one JSON line:
//! `{"bench":"failover.full","unit":"ms","p50":..,"p99":..,"ttl_ms":1000,
//!   "target_ms":2500,"trials":N,"steps":{"detect_ms":{"p50":..,"p99":..},..}}`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use cluster_runtime::app::Role;
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::config::Config;
use cluster_runtime::observe::AuditFilter;
use cluster_runtime::platform::Platform;
use cluster_testing::netns::{Host, Lab};
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};
use cluster_testing::process::ChildProcess;

const APP: &str = "web";
const PLATFORM: &str = "bench";
const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);
const TTL_SECS: u64 = 1;
/// The goal for this path: p99 ≤ TTL + 1.5 s.
const TARGET_OVER_TTL_MS: u64 = 1_500;
/// The audit actions of the activation steps, by step name (§4.7 order).
const STEPS: [(&str, &str); 4] = [
    ("wal.promote", "wal.promoted"),
    ("vip", "vip.acquired"),
    ("wal.replicate", "wal.replicating"),
    ("backend", "backend.started"),
];

#[derive(Debug, Parser)]
#[command(name = "cluster-failover-bench")]
struct Args {
    #[command(subcommand)]
    probe: Option<Probe>,
    /// Number of SIGKILLs.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// The active's writer inserts a row every this many ms.
    #[arg(long, default_value_t = 5)]
    writer_ms: u64,
    /// Let the writer fill the database this long before the first trial.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Probe {
    /// Internal: poll `http://ADDR/` every `--every-ms` and print
    /// `{"t_ns":..,"node":..}` whenever the answering node changes.
    Probe {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5)]
        every_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Probe::Probe { addr, every_ms }) = args.probe {
        probe(addr, Duration::from_millis(every_ms));
        return ExitCode::SUCCESS;
    }
    if !is_root() {
        eprintln!("error: failover-full needs root (it builds network namespaces and moves a VIP)");
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

// ---------------------------------------------------------------- client

/// `GET /` on `addr`: the node named in a 200 answer. Short timeouts: a
/// SYN that goes unanswered (the client's ARP entry still names the dead
/// host) is given up and retried on the next tick with a fresh connection.
fn ask(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(50)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.trim().strip_prefix("node ").map(str::to_owned))
        .flatten()
}

fn probe(addr: SocketAddr, every: Duration) {
    let mut last: Option<Option<String>> = None;
    loop {
        let started = std::time::Instant::now();
        let now = ask(addr);
        let t_ns = monotonic_ns();
        if last.as_ref() != Some(&now) {
            let line = serde_json::json!({ "t_ns": t_ns, "node": now });
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return; // the bench went away
            }
            last = Some(now);
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

/// The probe's reports so far: (t_ns, answering node).
fn answers(probe: &ChildProcess) -> Vec<(u64, Option<String>)> {
    probe
        .lines_seen()
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["t_ns"].as_u64()?, v["node"].as_str().map(str::to_owned)))
        })
        .collect()
}

// ---------------------------------------------------------------- cluster

fn node_spec(
    bin: &Path,
    http: &Path,
    nats: &str,
    host: &Host,
    vip: &str,
    db: &Path,
    writer_ms: u64,
) -> NodeSpec {
    let id = format!("h{}", host.index());
    let mut spec = NodeSpec::new(bin, &id, nats);
    spec.app = APP.into();
    spec.platform = PLATFORM.into();
    spec.lease_ttl_secs = TTL_SECS;
    spec.tick_ms = 0;
    spec.netns = Some(host.name().to_owned());
    spec.extra_args = vec![
        "--vip".into(),
        format!("{vip}/24 dev eth0"),
        "--backend".into(),
        format!("process:{} --listen 0.0.0.0:{PORT}", http.display()),
        "--backend-health".into(),
        format!("http://127.0.0.1:{PORT}/health"),
        "--sqlite".into(),
        db.join(&id).join("data.db").display().to_string(),
        "--writer-ms".into(),
        writer_ms.to_string(),
    ];
    spec
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

/// "The process died with its cgroup": SIGKILL everything left in the
/// host's namespace (the backend outlives its SIGKILLed manager). Returns
/// how many processes were signalled.
fn kill_namespace(host: &Host) -> usize {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", host.name()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        })
        .count()
}

fn host_of<'a>(lab: &'a Lab, node: &str) -> Result<&'a Host, String> {
    node.trim_start_matches('h')
        .parse::<usize>()
        .ok()
        .filter(|i| (1..=3).contains(i))
        .map(|i| lab.host(i))
        .ok_or_else(|| format!("unexpected node id `{node}`"))
}

/// The t_ns of the first `Role(Active)` of `node`'s current incarnation
/// after `since`, with its epoch.
fn active_since(nodes: &Nodes, node: &str, since: u64) -> Option<(u64, u64)> {
    let n = nodes.nodes.iter().find(|n| n.id() == node)?;
    n.current_events().into_iter().find_map(|e| match e {
        NodeEvent::Role(r) if r.app == APP && r.role == Role::Active && r.t_ns > since => {
            Some((r.t_ns, r.epoch?))
        }
        _ => None,
    })
}

fn rows_committed(nodes: &Nodes) -> usize {
    nodes
        .nodes
        .iter()
        .map(|n| {
            n.events()
                .iter()
                .filter(|e| matches!(e, NodeEvent::Committed { .. }))
                .count()
        })
        .sum()
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

/// One trial's figures, in ms.
#[derive(Debug, Default)]
struct Trial {
    total: f64,
    detect: f64,
    steps: BTreeMap<&'static str, f64>,
    /// total − detect − Σ steps: on_active, serving, the client noticing.
    rest: f64,
}

struct Bench {
    lab: Lab,
    nodes: Nodes,
    probe: ChildProcess,
    observer: Platform,
    /// WARN lines of each node's current incarnation already printed.
    warned: BTreeMap<String, usize>,
}

impl Bench {
    /// The node the client currently reaches through the VIP.
    fn serving(&self) -> Option<String> {
        answers(&self.probe).pop().and_then(|a| a.1)
    }

    /// Steady state: one active the client reaches, two standbys.
    async fn settled(&self) -> Result<String, String> {
        until(
            "one active serving through the VIP and two standbys",
            || {
                let active = self.nodes.with_role(APP, Role::Active);
                let standby = self.nodes.with_role(APP, Role::Standby);
                (active.len() == 1
                    && standby.len() == 2
                    && self.serving().as_ref() == Some(&active[0]))
                .then(|| active[0].clone())
            },
        )
        .await
    }

    async fn trial(&mut self, round: usize) -> Result<Trial, String> {
        let old = self.settled().await?;
        // A few fresh commits under this primary, so the successor has
        // something to catch up on.
        let before = rows_committed(&self.nodes);
        until("the writer commits", || {
            (rows_committed(&self.nodes) >= before + 20).then_some(())
        })
        .await?;

        let since = SystemTime::now() - Duration::from_secs(1);
        let t0 = self.nodes.get(&old).ok_or("active node vanished")?.kill();
        let killed = kill_namespace(host_of(&self.lab, &old)?);
        if killed == 0 {
            eprintln!("round {round}: nothing left to kill in {old}'s namespace (no backend?)");
        }

        let (t1, new) = until("the client reaches a new active through the VIP", || {
            answers(&self.probe)
                .into_iter()
                .find_map(|(t, by)| by.filter(|by| t > t0 && *by != old).map(|by| (t, by)))
        })
        .await?;
        let (t_active, epoch) = until("the new active's role event", || {
            active_since(&self.nodes, &new, t0)
        })
        .await?;

        // The new active's step timings, from the audit stream.
        let filter = AuditFilter::new().app(APP).node(&new).since(since);
        let mut steps = BTreeMap::new();
        let audit = self.observer.audit();
        let end = tokio::time::Instant::now() + WAIT;
        while steps.len() < STEPS.len() {
            if tokio::time::Instant::now() >= end {
                return Err(format!(
                    "round {round}: audit entries of {new} (epoch {epoch}) incomplete: {steps:?}"
                ));
            }
            let entries = audit
                .query(filter.clone())
                .await
                .map_err(|e| e.to_string())?;
            for (step, action) in STEPS {
                let ms = entries.iter().find_map(|e| {
                    (e.action == action && e.data["epoch"].as_u64() == Some(epoch))
                        .then(|| e.data["ms"].as_f64())
                        .flatten()
                });
                if let Some(ms) = ms {
                    steps.insert(step, ms);
                }
            }
            if steps.len() < STEPS.len() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        let total = (t1 - t0) as f64 / 1e6;
        let detect = (t_active.saturating_sub(t0)) as f64 / 1e6;
        let rest = total - detect - steps.values().sum::<f64>();
        eprintln!(
            "round {round}: {old} → {new} (epoch {epoch}): {total:.1} ms = detect {detect:.1} + {} + rest {rest:.1}",
            STEPS
                .iter()
                .map(|(s, _)| format!("{s} {:.1}", steps.get(s).copied().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(" + ")
        );

        // What the new active logged (the reason for an outlier, usually).
        let seen = self.warned.entry(new.clone()).or_default();
        if let Some(n) = self.nodes.nodes.iter().find(|n| n.id() == new) {
            let stderr = n.stderr();
            let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
            for line in lines.iter().skip(*seen) {
                eprintln!("round {round}: {new} logged: {line}");
            }
            *seen = lines.len();
        }
        self.warned.remove(&old);

        // Back to steady state: the killed node returns as a standby (its
        // VIP step removes the address its predecessor left behind) and the
        // client reaches the new active.
        let node = self.nodes.get(&old).ok_or("node vanished")?;
        node.restart().map_err(|e| e.to_string())?;
        node.wait_ready(WAIT).await?;
        self.settled().await?;
        Ok(Trial {
            total,
            detect,
            steps,
            rest,
        })
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

fn summary(samples: Vec<f64>) -> serde_json::Value {
    let (p50, p99) = percentiles(samples);
    serde_json::json!({ "p50": p50, "p99": p99 })
}

async fn run(args: Args) -> Result<(), String> {
    if args.trials == 0 {
        return Err("--trials must be at least 1".into());
    }
    let bin = sibling("cluster-test-node")?;
    let http = sibling("cluster-test-http")?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;

    let lab = Lab::new("fob", 4).map_err(|e| format!("network lab: {e}"))?;
    let nats = lab.nats_server().map_err(|e| format!("nats-server: {e}"))?;
    let vip = lab.addr(100);
    let db = tempfile::tempdir().map_err(|e| e.to_string())?;
    let specs = (1..=3)
        .map(|i| {
            node_spec(
                &bin,
                &http,
                &nats.url(),
                lab.host(i),
                &vip.to_string(),
                db.path(),
                args.writer_ms,
            )
        })
        .collect();
    let nodes = Nodes::start(specs).await?;

    let mut config = Config::default();
    config.nats.urls = vec![nats.url()];
    config.node = "bench-observer".into();
    config.platform = PLATFORM.into();
    let observer = Platform::builder()
        .config(config)
        .start()
        .await
        .map_err(|e| format!("observer: {e}"))?;

    let client = lab.host(4);
    let probe = ChildProcess::spawn(
        client
            .command(&me)
            .arg("probe")
            .arg(SocketAddr::from((vip, PORT)).to_string()),
    )
    .map_err(|e| format!("client probe: {e}"))?;

    let mut bench = Bench {
        lab,
        nodes,
        probe,
        observer,
        warned: BTreeMap::new(),
    };
    bench.settled().await?;
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;

    let mut trials = Vec::new();
    for round in 1..=args.trials {
        trials.push(bench.trial(round).await?);
    }
    if let Err(e) = bench.nodes.history().check(APP) {
        eprintln!("warning: invariant checker: {e}");
    }
    let db_rows = bench
        .nodes
        .nodes
        .iter()
        .flat_map(|n| n.events())
        .filter_map(|e| match e {
            NodeEvent::DbCheck { rows, .. } => Some(rows),
            _ => None,
        })
        .max()
        .unwrap_or(0);

    let ttl_ms = TTL_SECS * 1000;
    let (p50, p99) = percentiles(trials.iter().map(|t| t.total).collect());
    let mut steps = serde_json::Map::new();
    steps.insert(
        "detect_ms".into(),
        summary(trials.iter().map(|t| t.detect).collect()),
    );
    for (step, _) in STEPS {
        let samples = trials
            .iter()
            .filter_map(|t| t.steps.get(step).copied())
            .collect();
        steps.insert(step.into(), summary(samples));
    }
    let line = serde_json::json!({
        "bench": "failover.full",
        "unit": "ms",
        "p50": p50,
        "p99": p99,
        "min": round1(trials.iter().map(|t| t.total).fold(f64::INFINITY, f64::min)),
        "max": round1(trials.iter().map(|t| t.total).fold(0.0, f64::max)),
        "ttl_ms": ttl_ms,
        "target_ms": ttl_ms + TARGET_OVER_TTL_MS,
        "trials": trials.len(),
        "steps": steps,
        "rest_ms": summary(trials.iter().map(|t| t.rest).collect()),
        "db_rows_at_last_promote": db_rows,
        "wal_replicate_over_1s": trials
            .iter()
            .filter(|t| t.steps.get("wal.replicate").is_some_and(|ms| *ms > 1000.0))
            .count(),
    });
    println!("{line}");
    bench.observer.shutdown().await;
    Ok(())
}
