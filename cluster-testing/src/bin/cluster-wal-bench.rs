//! WAL replication benchmark (not a test): the same SQLite workload on the
//! same nats-server through our replicator and through stock Litestream
//! 0.5.17 (defaults, and tuned to 100 ms monitor/sync intervals). Prints
//! JSON lines; run through `scripts/bench.sh wal`.
//!
//! Lag = commit returned → an L0 file covering it is visible to a bucket
//! watcher. Files are matched to commits by the WAL position they record
//! (salts + offset + size, which both writers fill in): the bench follows
//! the WAL itself and notes, per commit, its generation and end offset.
//! Throughput = the row bytes of a fixed write-heavy workload (1 500
//! commits × 64 KiB) divided by the time from its first commit until its
//! last commit is visible in the bucket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_runtime::wal::bucket::WalBucket;
use cluster_runtime::wal::ltx;
use cluster_runtime::wal::replicator::{Replicator, ReplicatorConfig};
use cluster_runtime::wal::wal_file::{read_header, WalCursor};
use cluster_testing::litestream::{Litestream, LitestreamConfig, Replicating};
use cluster_testing::{NatsServer, ServerOptions};
use futures::StreamExt;
use rusqlite::Connection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-wal-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Ours,
    Litestream { tuned: bool },
}

/// A file as the watcher saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    salts: (u32, u32),
    end: u64,
}

/// A commit as the workload saw it.
#[derive(Debug, Clone, Copy)]
struct Committed {
    at: Instant,
    generation: usize,
    end: u64,
}

/// Follows the WAL from the bench's side: generation and end per commit.
struct WalFollower {
    path: PathBuf,
    cursor: Option<WalCursor>,
    generations: Vec<(u32, u32)>,
}

impl WalFollower {
    fn new(db: &Path) -> Self {
        WalFollower {
            path: PathBuf::from(format!("{}-wal", db.display())),
            cursor: None,
            generations: Vec::new(),
        }
    }

    /// (generation, end) of the last commit in the WAL now.
    fn position(&mut self) -> Result<(usize, u64), BoxError> {
        let mut file = std::fs::File::open(&self.path)?;
        let header = read_header(&mut file, &self.path)?.ok_or("WAL without a header")?;
        let mut cursor = match self.cursor {
            Some(c) if c.header.salts() == header.salts() => c,
            _ => WalCursor::new(header),
        };
        if self.generations.last() != Some(&header.salts()) {
            self.generations.push(header.salts());
        }
        cursor.read_commits(&mut file, &self.path)?;
        self.cursor = Some(cursor);
        Ok((self.generations.len() - 1, cursor.offset))
    }
}

struct Run {
    _dir: tempfile::TempDir,
    db: PathBuf,
    app: Connection,
    bucket: WalBucket,
    seen: Arc<Mutex<Vec<Seen>>>,
    watcher: tokio::task::JoinHandle<()>,
    ours: Option<Replicator>,
    litestream: Option<Replicating>,
    follower: WalFollower,
}

async fn start(
    server: &NatsServer,
    js: &async_nats::jetstream::Context,
    target: Target,
    name: &str,
) -> Result<Run, BoxError> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let app = Connection::open(&db)?;
    app.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
    )?;
    let bucket = WalBucket::open_or_create(js, name, 1).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stream = Box::pin(bucket.watch().await?);
    let watch_bucket = bucket.clone();
    let watch_seen = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(info)) = stream.next().await {
            let at = Instant::now();
            if info.level != 0 {
                continue;
            }
            let Ok(bytes) = watch_bucket.get(&info).await else {
                continue;
            };
            let Ok(file) = ltx::decode(&bytes) else {
                continue;
            };
            let h = file.header;
            watch_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Seen {
                    at,
                    salts: (h.wal_salt1, h.wal_salt2),
                    end: u64::try_from(h.wal_offset + h.wal_size).unwrap_or(0),
                });
        }
    });
    let mut run = Run {
        _dir: dir,
        db: db.clone(),
        app,
        bucket: bucket.clone(),
        seen,
        watcher,
        ours: None,
        litestream: None,
        follower: WalFollower::new(&db),
    };
    match target {
        Target::Ours => {
            let mut config = ReplicatorConfig::new(&db, bucket);
            config.compaction = None;
            let r = Replicator::start(config).await?;
            r.sync().await?;
            run.ours = Some(r);
        }
        Target::Litestream { tuned } => {
            let mut config = LitestreamConfig::new(&db, &server.url(), name);
            if tuned {
                config.monitor_interval = Some(Duration::from_millis(100));
                config.sync_interval = Some(Duration::from_millis(100));
            }
            let ls = Litestream::new(run._dir.path(), config)?;
            run.litestream = Some(ls.replicate()?);
            // Wait for its first file (the full image).
            let deadline = Instant::now() + Duration::from_secs(30);
            while run
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                if Instant::now() > deadline {
                    let log = run.litestream.as_ref().map(|l| l.log()).unwrap_or_default();
                    return Err(format!("litestream shipped nothing:\n{log}").into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    run.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Ok(run)
}

impl Run {
    fn commit(&mut self, id: i64, rows: usize, len: usize) -> Result<Committed, BoxError> {
        self.app.execute_batch("BEGIN")?;
        for r in 0..rows {
            let id = id * 1000 + r as i64;
            self.app.execute(
                "INSERT INTO t (id, v) VALUES (?1, randomblob(?2))",
                (id, len as i64),
            )?;
        }
        self.app.execute_batch("COMMIT")?;
        let at = Instant::now();
        if let Some(r) = &self.ours {
            r.notify();
        }
        let (generation, end) = self.follower.position()?;
        Ok(Committed {
            at,
            generation,
            end,
        })
    }

    /// Arrival time of the first file covering each commit, waiting up to
    /// 60 s for the last one.
    async fn arrivals(&self, commits: &[Committed]) -> Result<Vec<Instant>, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut out = Vec::with_capacity(commits.len());
            let mut k = 0;
            for file in &seen {
                let Some(g) = self
                    .follower
                    .generations
                    .iter()
                    .position(|s| *s == file.salts)
                else {
                    continue;
                };
                while k < commits.len()
                    && (commits[k].generation < g
                        || (commits[k].generation == g && commits[k].end <= file.end))
                {
                    out.push(file.at);
                    k += 1;
                }
            }
            if k == commits.len() {
                return Ok(out);
            }
            if Instant::now() > deadline {
                return Err(format!("only {k} of {} commits became visible", commits.len()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(mut self) {
        if let Some(r) = self.ours.take() {
            let _ = r.stop().await;
        }
        if let Some(mut l) = self.litestream.take() {
            l.stop();
        }
        self.watcher.abort();
        let _ = self.bucket.name();
        let _ = &self.db;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Commit lags in ms at `rate` commits/s for `n` commits.
async fn lag(
    server: &NatsServer,
    js: &async_nats::jetstream::Context,
    target: Target,
    name: &str,
    rate: u32,
    n: usize,
) -> Result<Vec<f64>, BoxError> {
    let mut run = start(server, js, target, name).await?;
    let mut commits = Vec::with_capacity(n);
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    for i in 0..n {
        let due = t0 + period * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        commits.push(run.commit(i as i64, 1, 200)?);
    }
    let arrivals = run.arrivals(&commits).await?;
    let mut lags: Vec<f64> = commits
        .iter()
        .zip(&arrivals)
        .map(|(c, a)| a.saturating_duration_since(c.at).as_secs_f64() * 1000.0)
        .collect();
    lags.sort_by(f64::total_cmp);
    run.finish().await;
    Ok(lags)
}

/// MB/s of a fixed write-heavy workload (`commits` commits of 16 rows of
/// 4 KiB incompressible bytes, written as fast as SQLite takes them): the
/// workload's row bytes divided by the time from its first commit until its
/// last commit is visible in the bucket. The same bytes for both
/// replicators, so the figure compares how fast each gets them into NATS
/// (including what it costs the writer on this 2-core machine).
async fn throughput(
    server: &NatsServer,
    js: &async_nats::jetstream::Context,
    target: Target,
    name: &str,
    commits_total: u64,
) -> Result<f64, BoxError> {
    const ROWS: u64 = 16;
    const ROW_BYTES: u64 = 4096;
    let mut run = start(server, js, target, name).await?;
    let mut commits = Vec::new();
    let t0 = Instant::now();
    for i in 0..commits_total {
        commits.push(run.commit(i as i64, ROWS as usize, ROW_BYTES as usize)?);
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let arrivals = run.arrivals(&commits).await?;
    let last = arrivals.iter().max().copied().unwrap_or(t0);
    let elapsed = last.saturating_duration_since(t0).as_secs_f64();
    run.finish().await;
    let bytes = commits_total * ROWS * ROW_BYTES;
    Ok(bytes as f64 / 1e6 / elapsed.max(1e-9))
}

async fn run() -> Result<(), BoxError> {
    let server = NatsServer::start(ServerOptions::default()).await?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client);
    let secs = |rate: u32| if rate >= 1000 { 3000 } else { 500 };

    let mut ours_p99_100 = f64::NAN;
    for rate in [100u32, 1000] {
        let lags = lag(
            &server,
            &js,
            Target::Ours,
            &format!("bench_ours_{rate}"),
            rate,
            secs(rate),
        )
        .await?;
        let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
        if rate == 100 {
            ours_p99_100 = p99;
        }
        println!(
            "{}",
            serde_json::json!({"bench": format!("wal.lag_{rate}"), "unit": "ms",
                "p50": p50, "p99": p99, "commits": lags.len()})
        );
    }
    let mut tuned_p99 = f64::NAN;
    for (tuned, label) in [(true, "tuned"), (false, "defaults")] {
        let lags = lag(
            &server,
            &js,
            Target::Litestream { tuned },
            &format!("bench_ls_{label}"),
            100,
            if tuned { 300 } else { 100 },
        )
        .await?;
        let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
        if tuned {
            tuned_p99 = p99;
        }
        println!(
            "{}",
            serde_json::json!({"bench": format!("wal.litestream_lag_100_{label}"), "unit": "ms",
                "p50": p50, "p99": p99, "commits": lags.len()})
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "wal.lag_vs_litestream", "ratio_p99": ours_p99_100 / tuned_p99,
            "ours_p99": ours_p99_100, "litestream_p99": tuned_p99})
    );
    let ours = throughput(&server, &js, Target::Ours, "bench_tp_ours", 1500).await?;
    let theirs = throughput(
        &server,
        &js,
        Target::Litestream { tuned: true },
        "bench_tp_ls",
        1500,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"bench": "wal.throughput", "unit": "MB/s", "value": ours,
            "baseline": theirs, "ratio": ours / theirs})
    );
    Ok(())
}
