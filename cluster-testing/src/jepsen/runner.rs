//! One chaos run: nodes, concurrent clients, a nemesis, then the checkers.
//!
//! [`run`] starts N node processes on real nats-server (one server, or a
//! 3-node R3 cluster for [`Suite::Nats`]), drives C client tasks that call
//! the app through the RPC wire contract as fast as they can for S seconds
//! (each with a per-op deadline), runs a seeded [`Nemesis`] meanwhile, then
//! heals (resumes and restarts everything), waits for a single active
//! (for [`Suite::Ring`]: every partition owned once), does final reads,
//! runs the suite's checkers and returns a [`Report`].
//!
//! Guarantees: every operation a client invoked is in the history with an
//! honest outcome (see [`history`](super::history)); a run whose checkers
//! could not finish (search bound, incomplete KV stream read, no final
//! read) is reported as *unverified*, never as a pass ([`Report::passed`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::nats_server::{NatsCluster, NatsServer, ServerOptions};
use cluster_runtime::rpc::wire;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::exec;
use super::fencing::{self, StreamWatch};
use super::history::{Call, History, Op, Outcome, Recorder};
use super::linearizable::{self, CounterModel, Limits, RegisterModel};
use super::nemesis::{FaultKind, Nemesis, Schedule, SplitMix64};
use super::nodes::{free_port, ChaosNode, NodeCommand, NodeSet};
use super::set;

/// A chaos suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Suite {
    /// `examples/quickstart` (singleton counter, lease TTL 3 s): is the
    /// counter linearizable; no two acknowledged increments return the same
    /// count.
    Counter,
    /// The chaos node's `register` (lease TTL 1 s): linearizable register,
    /// no overlapping handler executions, no stale-epoch write stored.
    Register,
    /// The chaos node's `set`: no acknowledged add lost.
    Set,
    /// `register` on a 3-node R3 NATS cluster with server kills as well.
    Nats,
    /// The chaos node's `kvring` (`ring(16)`, lease TTL 1 s, one register
    /// per key over [`RING_KEYS`] keys, a spare node that joins and
    /// leaves): per-key linearizable registers, no stale partition token
    /// stored after a newer one on any key, no two nodes running one
    /// partition's handlers at once while both own it.
    Ring,
}

/// Partitions of the `ring` suite's app.
pub const RING_PARTITIONS: u32 = 16;

/// Simulated work (ms) of the `ring` suite's writing handlers between
/// reading the partition token and storing: a real handler computes
/// before it stores, and a pause landing there resumes into a write
/// under the old token.
pub const RING_WORK_MS: u64 = 1;

/// Keys (registers) of the `ring` suite's workload: `k0`, `k1`, ...
pub const RING_KEYS: usize = 24;

/// The `ring` suite's keys.
pub fn ring_keys() -> Vec<String> {
    (0..RING_KEYS).map(|i| format!("k{i}")).collect()
}

/// The partition of a `ring` suite key (the wire contract's hash).
pub fn ring_partition(key: &str) -> u32 {
    cluster_runtime::ring::xxh3_partition(key.as_bytes(), RING_PARTITIONS)
}

impl Suite {
    /// Every suite.
    pub const ALL: [Suite; 5] = [
        Suite::Counter,
        Suite::Register,
        Suite::Set,
        Suite::Nats,
        Suite::Ring,
    ];

    /// The suite's name (`counter`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::Counter => "counter",
            Suite::Register => "register",
            Suite::Set => "set",
            Suite::Nats => "nats",
            Suite::Ring => "ring",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn app(self) -> &'static str {
        match self {
            Suite::Counter => "counter",
            Suite::Register | Suite::Nats => "register",
            Suite::Set => "set",
            Suite::Ring => "kvring",
        }
    }

    fn platform(self) -> &'static str {
        match self {
            Suite::Counter => "default",
            _ => "chaos",
        }
    }

    fn lease_ttl(self) -> Duration {
        match self {
            // quickstart runs with the framework defaults.
            Suite::Counter => Duration::from_secs(3),
            _ => Duration::from_secs(1),
        }
    }

    fn faults(self) -> Vec<FaultKind> {
        let mut kinds = vec![
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::PauseKillSuccessor,
            FaultKind::Term,
        ];
        if self == Suite::Nats {
            kinds.push(FaultKind::NatsKill);
            kinds.push(FaultKind::NatsKill);
        }
        if self == Suite::Ring {
            // Joins alternate with leaves of the spare node.
            kinds.push(FaultKind::Join);
            kinds.push(FaultKind::Join);
        }
        kinds
    }
}

/// The binaries a run starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `cluster-chaos-node`.
    pub chaos_node: PathBuf,
    /// `quickstart` (from `examples/quickstart`).
    pub quickstart: PathBuf,
}

impl Binaries {
    /// Both binaries in one cargo profile directory (`target/debug`).
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries {
            chaos_node: dir.join("cluster-chaos-node"),
            quickstart: dir.join("quickstart"),
        }
    }
}

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Which suite.
    pub suite: Suite,
    /// The nemesis seed (clients draw from it too).
    pub seed: u64,
    /// Seconds of workload.
    pub seconds: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Node processes.
    pub nodes: usize,
    /// Per-operation deadline.
    pub op_timeout: Duration,
    /// Search bound of the linearizability checker.
    pub limits: Limits,
    /// The binaries.
    pub binaries: Binaries,
    /// Where run artifacts go (a subdirectory per run).
    pub out_dir: PathBuf,
    /// Keep the artifacts of passing runs too.
    pub keep: bool,
}

impl RunConfig {
    /// Defaults: 3 nodes, 4 clients, 1 s per-op deadline.
    pub fn new(suite: Suite, seed: u64, seconds: u64, binaries: Binaries) -> RunConfig {
        RunConfig {
            suite,
            seed,
            seconds,
            clients: 4,
            nodes: 3,
            op_timeout: Duration::from_secs(1),
            limits: Limits::default(),
            binaries,
            out_dir: std::env::temp_dir(),
            keep: false,
        }
    }
}

/// The result of a run (one JSON line in `scripts/chaos.sh`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The suite.
    pub suite: String,
    /// The seed.
    pub seed: u64,
    /// Seconds of workload asked for.
    pub seconds: u64,
    /// Operations invoked (final reads included).
    pub ops: u64,
    /// Acknowledged.
    pub ok: u64,
    /// Definitely not done.
    pub failed: u64,
    /// Unknown outcome.
    pub indeterminate: u64,
    /// Operations per second during the workload.
    pub ops_per_sec: f64,
    /// Faults executed, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Safety violations found (all checkers).
    pub violations: u64,
    /// Checks that could not be completed (search bound, incomplete read).
    pub unverified: u64,
    /// Per-checker results.
    pub details: serde_json::Value,
    /// Where the run's history and logs were saved (failing runs, or
    /// `keep`).
    pub artifacts: Option<String>,
}

impl Report {
    /// No violation and everything verified.
    pub fn passed(&self) -> bool {
        self.violations == 0 && self.unverified == 0
    }
}

/// A run that could not take place (set-up failed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("chaos {suite}: {message}")]
pub struct RunError {
    /// The suite.
    pub suite: &'static str,
    /// What went wrong.
    pub message: String,
}

fn run_err(suite: Suite) -> impl Fn(String) -> RunError {
    move |message| RunError {
        suite: suite.as_str(),
        message,
    }
}

enum Nats {
    Single(NatsServer),
    Cluster(Arc<Mutex<NatsCluster>>),
}

/// Runs one suite.
pub async fn run(cfg: &RunConfig) -> Result<Report, RunError> {
    let err = run_err(cfg.suite);
    let suite = cfg.suite;
    let dir = cfg.out_dir.join(format!(
        "chaos-{}-seed{}-{}",
        suite.as_str(),
        cfg.seed,
        monotonic_ns()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;

    let nats = if suite == Suite::Nats {
        let c = NatsCluster::start(3)
            .await
            .map_err(|e| err(format!("nats cluster: {e}")))?;
        Nats::Cluster(Arc::new(Mutex::new(c)))
    } else {
        Nats::Single(
            NatsServer::start(ServerOptions::default())
                .await
                .map_err(|e| err(format!("nats: {e}")))?,
        )
    };
    let urls = match &nats {
        Nats::Single(s) => s.url(),
        Nats::Cluster(c) => c.lock().await.urls(),
    };
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("nats url `{urls}`: {e}")))?;

    // Nodes (a ring has one more: the spare).
    let mut set = NodeSet::default();
    let spare = (suite == Suite::Ring).then_some(cfg.nodes);
    let total = cfg.nodes + usize::from(spare.is_some());
    for i in 1..=total {
        let id = format!("n{i}");
        let port = free_port().map_err(|e| err(format!("free port: {e}")))?;
        let mut args = vec![
            "--nats".to_owned(),
            urls.clone(),
            "--platform".into(),
            suite.platform().into(),
            "--node".into(),
            id.clone(),
            "--health-addr".into(),
            format!("127.0.0.1:{port}"),
        ];
        let binary = match suite {
            Suite::Counter => cfg.binaries.quickstart.clone(),
            _ => {
                args.extend([
                    "--app".to_owned(),
                    suite.app().into(),
                    "--lease-ttl".into(),
                    suite.lease_ttl().as_secs().to_string(),
                    "--exec-log".into(),
                    dir.join(format!("exec-{id}.jsonl")).display().to_string(),
                ]);
                if suite == Suite::Ring {
                    args.extend([
                        "--partitions".to_owned(),
                        RING_PARTITIONS.to_string(),
                        "--work-ms".into(),
                        RING_WORK_MS.to_string(),
                    ]);
                }
                cfg.binaries.chaos_node.clone()
            }
        };
        if !binary.exists() {
            return Err(err(format!(
                "binary {} not found (build it first)",
                binary.display()
            )));
        }
        let command = NodeCommand {
            id,
            binary,
            args,
            health_port: port,
        };
        // The ring's spare (the last node) joins and leaves on the
        // nemesis's schedule.
        let node = if spare == Some(i - 1) {
            ChaosNode::stopped(command)
        } else {
            ChaosNode::spawn(command).map_err(|e| err(format!("spawn: {e}")))?
        };
        set.nodes.push(node);
    }
    let app = suite.app();
    if !set.settled(suite, Duration::from_secs(30)).await {
        let stderr: Vec<String> = set.nodes.iter().map(|n| n.stderr()).collect();
        return Err(err(format!(
            "no single active (ring: partitions not all owned) within 30s; stderr: {stderr:?}"
        )));
    }
    let nodes = Arc::new(Mutex::new(set));

    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(cfg.op_timeout + Duration::from_millis(500)))
        .connect(addrs.clone())
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    let js = async_nats::jetstream::new(client.clone());
    let bucket = format!("{}_{}", suite.platform(), app);

    // The KV stream's full history, read live.
    let watch = if matches!(suite, Suite::Register | Suite::Nats | Suite::Ring) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let started = if suite == Suite::Ring {
                StreamWatch::start_prefix(&js, &bucket, "reg.").await
            } else {
                StreamWatch::start(&js, &bucket, "reg").await
            };
            match started {
                Ok(w) => break Some(w),
                Err(e) if Instant::now() >= deadline => {
                    return Err(err(format!("watching {bucket}: {e}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    } else {
        None
    };

    // Workload and nemesis.
    let keys: Arc<Vec<String>> = Arc::new(if suite == Suite::Ring {
        ring_keys()
    } else {
        vec![app.to_owned()]
    });
    let recorder = Recorder::default();
    let started = Instant::now();
    let until = started + Duration::from_secs(cfg.seconds);
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let conn = async_nats::ConnectOptions::new()
            .request_timeout(Some(cfg.op_timeout + Duration::from_millis(500)))
            .connect(addrs.clone())
            .await
            .map_err(|e| err(format!("connect: {e}")))?;
        let worker = Client {
            suite,
            process: c,
            conn,
            recorder: recorder.clone(),
            timeout: cfg.op_timeout,
            rng: SplitMix64::new(cfg.seed ^ (u64::from(c) + 1).wrapping_mul(0x9e37_79b9)),
            keys: keys.clone(),
        };
        tasks.push(tokio::spawn(worker.run(until)));
    }
    let schedule = Schedule::generate(cfg.seed, &suite.faults(), cfg.seconds);
    let mut nemesis = if suite == Suite::Ring {
        let partitions: BTreeSet<u32> = keys.iter().map(|k| ring_partition(k)).collect();
        Nemesis::ring(
            app,
            suite.lease_ttl(),
            partitions.into_iter().collect(),
            spare,
        )
    } else {
        Nemesis::new(app, suite.lease_ttl())
    };
    let cluster = match &nats {
        Nats::Cluster(c) => Some(c.clone()),
        Nats::Single(_) => None,
    };
    nemesis
        .run(&schedule, &nodes, cluster.as_deref(), until)
        .await;
    for t in tasks {
        let _ = t.await;
    }
    let workload_secs = started.elapsed().as_secs_f64();
    let workload_ops = recorder.snapshot().ops.len();

    // Heal and wait for quiet.
    if let Some(c) = &cluster {
        let mut c = c.lock().await;
        for i in 0..c.len() {
            if !c.server(i).is_running() {
                let _ = c.server(i).restart().await;
            }
        }
        let _ = c.wait_ready().await;
    }
    let quiet = {
        let mut set = nodes.lock().await;
        set.heal().map_err(|e| err(format!("heal: {e}")))?;
        set.settled(suite, Duration::from_secs(30)).await
    };

    // Final reads, retried until one is acknowledged.
    let mut final_client = Client {
        suite,
        process: cfg.clients,
        conn: client.clone(),
        recorder: recorder.clone(),
        timeout: Duration::from_secs(2),
        rng: SplitMix64::new(cfg.seed),
        keys: keys.clone(),
    };
    let final_value = final_client.final_read(Duration::from_secs(30)).await;

    let history = recorder.snapshot();
    let tally = history.tally();
    let mut violations = 0u64;
    let mut unverified = 0u64;
    let mut details = serde_json::Map::new();
    details.insert("quiet_after_heal".into(), quiet.into());
    if final_value.is_none() {
        unverified += 1;
        details.insert("final_read".into(), "none acknowledged within 30s".into());
    }
    match suite {
        Suite::Counter => {
            // The exact counter check when it applies (the general
            // search gives up on long, busy histories).
            let lin = if super::counter::applies(&history) {
                super::counter::check(&history)
            } else {
                linearizable::check(&CounterModel, &history, cfg.limits)
            };
            violations += lin.violations() as u64;
            unverified += lin.unknown() as u64;
            let dups = duplicate_counts(&history);
            violations += dups.len() as u64;
            details.insert("linearizable".into(), json(&lin));
            details.insert("duplicate_acks".into(), dups.len().into());
            details.insert(
                "duplicate_ack_examples".into(),
                json(&dups.iter().take(10).collect::<Vec<_>>()),
            );
        }
        Suite::Register | Suite::Nats | Suite::Ring => {
            // Per key (`Op::key`): one register per key in `ring`.
            let lin = linearizable::check(&RegisterModel, &history, cfg.limits);
            violations += lin.violations() as u64;
            unverified += lin.unknown() as u64;
            details.insert("linearizable".into(), json(&lin));
        }
        Suite::Set => {
            let elements: BTreeSet<u64> = final_value
                .as_ref()
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let r = set::check(&history, &elements);
            violations += r.violations() as u64;
            details.insert("set".into(), json(&r));
        }
    }
    let mut stored = None;
    if let Some(watch) = watch {
        match watch.finish(Duration::from_secs(20)).await {
            Ok(read) if suite == Suite::Ring => {
                let mut r = fencing::check_keys(&read.by_key);
                r.complete = read.complete;
                r.missing_revisions = read.missing;
                r.consumer_restarts = read.restarts;
                violations += r.violations() as u64;
                if !read.complete {
                    unverified += 1;
                }
                details.insert("fencing".into(), json(&r));
                stored = Some(read.by_key);
            }
            Ok(read) => {
                let mut r = fencing::check(&read.writes);
                r.complete = read.complete;
                r.missing_revisions = read.missing;
                r.consumer_restarts = read.restarts;
                violations += r.violations() as u64;
                if !read.complete {
                    unverified += 1;
                }
                details.insert("fencing".into(), json(&r));
                stored = Some(read.by_key);
            }
            Err(e) => {
                unverified += 1;
                details.insert("fencing".into(), format!("not checked: {e}").into());
            }
        }
    }
    if suite != Suite::Counter {
        let mut execs = Vec::new();
        let mut cut = 0;
        for i in 1..=total {
            let (e, bad) = exec::load(&dir.join(format!("exec-n{i}.jsonl")))
                .map_err(|e| err(format!("exec log: {e}")))?;
            execs.extend(e);
            cut += bad;
        }
        let overlaps = exec::check(&execs, app);
        // The set suite reports overlaps but does not count them: its claim
        // is about acknowledged adds.
        if suite != Suite::Set {
            violations += overlaps.len() as u64;
        }
        details.insert(
            "exec_overlap".into(),
            serde_json::json!({
                "executions": execs.len(),
                "unparsable_lines": cut,
                "overlapping_holder_pairs": overlaps.len(),
                "overlapping_execution_pairs": overlaps.iter().map(|o| o.pairs).sum::<usize>(),
                "examples": json(&overlaps.iter().take(5).collect::<Vec<_>>()),
            }),
        );
    }

    details.insert("faults_log".into(), json(&nemesis.records));
    let mut report = Report {
        suite: suite.as_str().to_owned(),
        seed: cfg.seed,
        seconds: cfg.seconds,
        ops: tally.ops,
        ok: tally.ok,
        failed: tally.failed,
        indeterminate: tally.indeterminate,
        ops_per_sec: (workload_ops as f64 / workload_secs.max(0.001) * 10.0).round() / 10.0,
        faults: nemesis.counts(),
        violations,
        unverified,
        details: serde_json::Value::Object(details),
        artifacts: None,
    };
    if report.passed() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        save(
            &dir,
            &history,
            &report,
            &nodes.lock().await.nodes,
            stored.as_ref(),
        )
        .map_err(|e| err(format!("saving {}: {e}", dir.display())))?;
        report.artifacts = Some(dir.display().to_string());
    }
    drop(nats);
    Ok(report)
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn save(
    dir: &Path,
    history: &History,
    report: &Report,
    nodes: &[ChaosNode],
    stored: Option<&BTreeMap<String, Vec<fencing::StoredWrite>>>,
) -> std::io::Result<()> {
    history.save(&dir.join("history.jsonl"))?;
    if let Some(stored) = stored {
        // Every stored revision of the watched keys, in stream order.
        let mut all: Vec<(&str, &fencing::StoredWrite)> = stored
            .iter()
            .flat_map(|(k, ws)| ws.iter().map(move |w| (k.as_str(), w)))
            .collect();
        all.sort_by_key(|(_, w)| w.seq);
        let mut text = String::new();
        for (key, w) in all {
            let line =
                serde_json::json!({"key": key, "seq": w.seq, "epoch": w.epoch, "value": w.value});
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(dir.join("kv-writes.jsonl"), text)?;
    }
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), text)?;
    for n in nodes {
        std::fs::write(dir.join(format!("stderr-{}.log", n.id())), n.stderr())?;
    }
    Ok(())
}

/// Acknowledged increments (by > 0) that returned a count another
/// acknowledged increment also returned: `(count, op ids)`.
pub fn duplicate_counts(history: &History) -> Vec<(u64, Vec<usize>)> {
    let mut by_value: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for op in &history.ops {
        if let (Call::Incr { by }, Outcome::Ok { value }) = (&op.call, &op.outcome) {
            if let (true, Some(v)) = (*by > 0, value.as_u64()) {
                by_value.entry(v).or_default().push(op.id);
            }
        }
    }
    by_value
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect()
}

impl NodeSet {
    /// Waits for the suite's steady state: a single active, or (ring)
    /// every partition owned by exactly one node.
    async fn settled(&self, suite: Suite, timeout: Duration) -> bool {
        if suite == Suite::Ring {
            self.wait_ring_complete(suite.app(), RING_PARTITIONS, timeout)
                .await
        } else {
            self.wait_single_active(suite.app(), None, timeout)
                .await
                .is_some()
        }
    }
}

/// One client: one operation in flight at a time.
struct Client {
    suite: Suite,
    process: u32,
    conn: async_nats::Client,
    recorder: Recorder,
    timeout: Duration,
    rng: SplitMix64,
    /// The registers (`Op::key`): the app's name, or the ring's keys.
    keys: Arc<Vec<String>>,
}

impl Client {
    async fn run(mut self, until: Instant) {
        let mut seq = 0i64;
        let mut last_seen: BTreeMap<String, i64> = BTreeMap::new();
        while Instant::now() < until {
            seq += 1;
            let unique = i64::from(self.process + 1) * 1_000_000_000 + seq;
            let key = match self.keys.len() {
                0 | 1 => self.suite.app().to_owned(),
                n => self.keys[(self.rng.next_u64() % n as u64) as usize].clone(),
            };
            let roll = self.rng.next_u64() % 100;
            let from = last_seen.get(&key).copied().unwrap_or(0);
            let call = match self.suite {
                Suite::Counter if roll < 20 => Call::Incr { by: 0 },
                Suite::Counter => Call::Incr { by: 1 },
                Suite::Register | Suite::Nats | Suite::Ring if roll < 40 => Call::Read,
                Suite::Register | Suite::Nats | Suite::Ring if roll < 80 => {
                    Call::Write { value: unique }
                }
                Suite::Register | Suite::Nats | Suite::Ring => Call::Cas { from, to: unique },
                Suite::Set => Call::Add {
                    element: unique as u64,
                },
            };
            let op = self.call(&key, call).await;
            if let (Call::Read, Outcome::Ok { value }) = (&op.call, &op.outcome) {
                match value.as_i64() {
                    Some(v) => last_seen.insert(key.clone(), v),
                    None => last_seen.remove(&key),
                };
            }
            if let (Call::Write { value }, true) = (&op.call, op.outcome.is_ok()) {
                last_seen.insert(key.clone(), *value);
            }
            let failed_fast = matches!(op.outcome, Outcome::Failed { .. });
            self.recorder.record(op);
            if failed_fast {
                // No active right now: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Retries the suite's read until acknowledged or `within` passes
    /// (ring: a read of every key; `None` unless all were acknowledged).
    async fn final_read(&mut self, within: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        if self.suite == Suite::Ring {
            let mut values = serde_json::Map::new();
            for key in self.keys.iter() {
                loop {
                    let op = self.call(key, Call::Read).await;
                    let value = match &op.outcome {
                        Outcome::Ok { value } => Some(value.clone()),
                        _ => None,
                    };
                    self.recorder.record(op);
                    if let Some(v) = value {
                        values.insert(key.clone(), v);
                        break;
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            return Some(serde_json::Value::Object(values));
        }
        let key = self.suite.app().to_owned();
        while Instant::now() < deadline {
            let call = match self.suite {
                Suite::Counter => Call::Incr { by: 0 },
                Suite::Set => Call::ReadSet,
                _ => Call::Read,
            };
            let op = self.call(&key, call).await;
            let value = match &op.outcome {
                Outcome::Ok { value } => Some(value.clone()),
                _ => None,
            };
            self.recorder.record(op);
            if value.is_some() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn call(&self, key: &str, call: Call) -> Op {
        let app = self.suite.app();
        let ring = self.suite == Suite::Ring;
        let (method, payload) = match &call {
            Call::Incr { by } => ("incr", serde_json::json!(by)),
            Call::Read | Call::ReadSet if ring => ("read", serde_json::json!({"key": key})),
            Call::Read | Call::ReadSet => ("read", serde_json::Value::Null),
            Call::Write { value } if ring => {
                ("write", serde_json::json!({"key": key, "value": value}))
            }
            Call::Write { value } => ("write", serde_json::json!(value)),
            Call::Cas { from, to } if ring => (
                "cas",
                serde_json::json!({"key": key, "from": from, "to": to}),
            ),
            Call::Cas { from, to } => ("cas", serde_json::json!({"from": from, "to": to})),
            Call::Add { element } => ("add", serde_json::json!(element)),
        };
        // Rings: routed by key to the partition's owner
        // (`P._.api.A.p.PART.METHOD`).
        let subject = if ring {
            format!(
                "{}._.api.{app}.p.{}.{method}",
                self.suite.platform(),
                ring_partition(key)
            )
        } else {
            format!("{}._.api.{app}.{method}", self.suite.platform())
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::TIMEOUT_MS,
            self.timeout.as_millis().to_string().as_str(),
        );
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let invoke_ns = monotonic_ns();
        let reply = tokio::time::timeout(
            self.timeout + Duration::from_millis(250),
            self.conn
                .request_with_headers(subject, headers, body.into()),
        )
        .await;
        let complete_ns = monotonic_ns();
        let (outcome, node, epoch) = classify(reply);
        Op {
            id: 0,
            process: self.process,
            key: key.to_owned(),
            call,
            invoke_ns,
            complete_ns,
            outcome,
            node,
            epoch,
        }
    }
}

type Reply =
    Result<Result<async_nats::Message, async_nats::RequestError>, tokio::time::error::Elapsed>;

/// Maps a reply to an outcome (and the node and epoch it names).
fn classify(reply: Reply) -> (Outcome, Option<String>, Option<u64>) {
    use async_nats::RequestErrorKind;
    let msg = match reply {
        Err(_) => {
            return (
                Outcome::Indeterminate {
                    reason: "client deadline".into(),
                },
                None,
                None,
            )
        }
        Ok(Err(e)) => {
            let outcome = match e.kind() {
                RequestErrorKind::NoResponders => Outcome::Failed {
                    reason: "no responders".into(),
                },
                RequestErrorKind::TimedOut => Outcome::Indeterminate {
                    reason: "timed out".into(),
                },
                _ => Outcome::Indeterminate {
                    reason: format!("request error: {e}"),
                },
            };
            return (outcome, None, None);
        }
        Ok(Ok(m)) => m,
    };
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let node = header(wire::NODE);
    if let Some(code) = header(wire::ERROR) {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let outcome = if code == "not_executed" || code == "unavailable" {
            Outcome::Failed {
                reason: format!("{code}: {text}"),
            }
        } else {
            Outcome::Indeterminate {
                reason: format!("{code}: {text}"),
            }
        };
        return (outcome, node, None);
    }
    let body: serde_json::Value = match serde_json::from_slice(&msg.payload) {
        Ok(v) => v,
        Err(e) => {
            return (
                Outcome::Indeterminate {
                    reason: format!("undecodable reply: {e}"),
                },
                node,
                None,
            )
        }
    };
    // The chaos node wraps results; quickstart replies with the bare count.
    match body {
        serde_json::Value::Object(mut o) if o.contains_key("node") => {
            let epoch = o.get("epoch").and_then(serde_json::Value::as_u64);
            let node = o
                .get("node")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .or(node);
            let value = o.remove("value").unwrap_or(serde_json::Value::Null);
            (Outcome::Ok { value }, node, epoch)
        }
        value => (Outcome::Ok { value }, node, None),
    }
}
