//! Benchmark (not a test): restoring a ~100 MB SQLite database from a NATS
//! replica bucket, `cluster_runtime::wal::restorer::restore` vs stock
//! `litestream restore` 0.5.17, on the very same bucket.
//!
//! Stock `litestream replicate` writes the bucket (NATS replica), so both
//! read what Litestream wrote. Runs are interleaved (the order alternates)
//! and each side runs at least 3 times; the medians are compared. Prints
//!
//! ```text
//! {"bench":"wal.restore","unit":"s","value":OURS,"baseline":LITESTREAM,"ratio":OURS/LITESTREAM}
//! ```
//!
//! Our restore always runs `PRAGMA integrity_check`; stock Litestream does
//! not by default, so the baseline is its default (less work than ours). A
//! second line reports Litestream with `-integrity-check full` for the
//! like-for-like figure.
//!
//! Needs `NATS_SERVER_BIN` and `LITESTREAM_BIN` (scripts/lib/tools.sh).
//! Options: `cluster-wal-restore-bench [MB] [RUNS]` (defaults 100 and 5).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store};
use cluster_runtime::wal::bucket::WalBucket;
use cluster_runtime::wal::restorer;
use cluster_testing::{NatsServer, ServerOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

const BUCKET: &str = "bench_db_wal";

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
            eprintln!("cluster-wal-restore-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn litestream_bin() -> Result<PathBuf, Error> {
    std::env::var_os("LITESTREAM_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "LITESTREAM_BIN is not set (source scripts/lib/tools.sh; ensure_litestream)".into()
        })
}

/// Rows of ~1 KiB, half of each compressible: ~`mb` MB of database.
fn build_db(path: &Path, mb: usize) -> Result<(), Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, n TEXT);
         CREATE INDEX t_n ON t (n);",
    )?;
    let rows = mb * 1024 * 1024 / 1460;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    conn.execute_batch("BEGIN")?;
    {
        let mut stmt = conn.prepare("INSERT INTO t (id, v, n) VALUES (?1, ?2, ?3)")?;
        let mut v = vec![0u8; 1000];
        for id in 0..rows {
            for (i, b) in v.iter_mut().enumerate() {
                *b = if i < 500 {
                    b'a' + (i % 26) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                };
            }
            stmt.execute((id as i64, &v, format!("name-{:08}", (id * 7919) % rows)))?;
        }
    }
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Integrity check result and a digest of every row, for comparing outputs.
fn digest(path: &Path) -> Result<(String, u64), Error> {
    use std::hash::{Hash, Hasher};
    let conn = rusqlite::Connection::open(path)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stmt = conn.prepare("SELECT id, v, n FROM t ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        row.get::<_, i64>(0)?.hash(&mut h);
        row.get::<_, Vec<u8>>(1)?.hash(&mut h);
        row.get::<_, String>(2)?.hash(&mut h);
    }
    Ok((check, h.finish()))
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-txid"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn run() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mb: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let runs: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5)
        .max(3);
    let litestream = litestream_bin()?;
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(ServerOptions::default()).await?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    js.create_object_store(object_store::Config {
        bucket: BUCKET.to_owned(),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;

    let db = dir.path().join("source.db");
    let t = Instant::now();
    build_db(&db, mb)?;
    let size = std::fs::metadata(&db)?.len();
    eprintln!(
        "built {:.1} MB source in {:.1}s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Stock Litestream replicates it into the bucket.
    let url = format!("{}/{BUCKET}", server.url());
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: nats\n      url: {url}\n      bucket: {BUCKET}\n",
            db.display()
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("litestream.log"))?;
    let mut child = Command::new(&litestream)
        .arg("replicate")
        .arg("-config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let bucket = WalBucket::open(&js, BUCKET).await?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    loop {
        if bucket.list().await.is_ok_and(|l| l.contains_key(&9)) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("Litestream wrote no snapshot within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let listing = bucket.list().await?;
    let mut levels: Vec<_> = listing.iter().map(|(l, f)| (*l, f.len())).collect();
    levels.sort();
    eprintln!(
        "litestream replicated in {:.1}s; bucket levels (level, files): {levels:?}",
        t.elapsed().as_secs_f64()
    );

    let ours_out = dir.path().join("ours.db");
    let theirs_out = dir.path().join("theirs.db");
    let litestream_restore = |out: &Path, extra: &[&str]| -> Result<f64, Error> {
        remove_db(out);
        let t = Instant::now();
        let output = Command::new(&litestream)
            .arg("restore")
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(&url)
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        if !output.status.success() {
            return Err(format!(
                "litestream restore failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(secs)
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut theirs_full = Vec::new();
    for i in 0..runs {
        let ours_run = async || -> Result<f64, Error> {
            remove_db(&ours_out);
            let t = Instant::now();
            restorer::restore(&bucket, &ours_out, None).await?;
            Ok(t.elapsed().as_secs_f64())
        };
        if i % 2 == 0 {
            ours.push(ours_run().await?);
            theirs.push(litestream_restore(&theirs_out, &[])?);
        } else {
            theirs.push(litestream_restore(&theirs_out, &[])?);
            ours.push(ours_run().await?);
        }
        theirs_full.push(litestream_restore(
            &theirs_out,
            &["-integrity-check", "full"],
        )?);
        eprintln!(
            "run {i}: ours {:.3}s, litestream {:.3}s, litestream -integrity-check full {:.3}s",
            ours[i], theirs[i], theirs_full[i]
        );
    }
    let (a, b) = (digest(&ours_out)?, digest(&theirs_out)?);
    if a != b || a.0 != "ok" {
        return Err(format!("restores differ: ours {a:?}, litestream {b:?}").into());
    }
    let (value, baseline, full) = (
        median(&mut ours),
        median(&mut theirs),
        median(&mut theirs_full),
    );
    println!(
        "{{\"bench\":\"wal.restore\",\"unit\":\"s\",\"value\":{value:.3},\"baseline\":{baseline:.3},\"ratio\":{:.3}}}",
        value / baseline
    );
    println!(
        "{{\"bench\":\"wal.restore.vs_litestream_integrity_full\",\"unit\":\"s\",\"value\":{value:.3},\"baseline\":{full:.3},\"ratio\":{:.3}}}",
        value / full
    );
    Ok(())
}
