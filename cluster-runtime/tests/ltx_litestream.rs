//! Compatibility of `wal::ltx` with stock Litestream 0.5.17, both ways,
//! through a file replica (no NATS involved):
//!
//! - Litestream replicates a live SQLite database; we decode every file it
//!   wrote at every level and rebuild the database three ways (L0 chain,
//!   L1 chain, L9 snapshot + later L0) — each identical to the source and to
//!   what `litestream restore` produces.
//! - We write a replica directory (full image at TXID 1, then incremental L0
//!   files, one of them spanning two TXIDs); `litestream restore` rebuilds
//!   the source byte for byte, also at an earlier `-txid`, also from an L9
//!   snapshot we wrote.
//!
//! Needs the Litestream binary: `$LITESTREAM_BIN` or `.tools/bin/litestream`
//! in a parent directory, installed by `scripts/test.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_runtime::wal::ltx::{self, Header};
use rusqlite::Connection;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PAGE_SIZE: usize = 4096;

/// The Litestream binary, or a failure telling how to get it. Never skips.
fn litestream_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LITESTREAM_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "LITESTREAM_BIN={} does not exist; run scripts/test.sh (it installs Litestream 0.5.17 into .tools/bin)",
            bin.display()
        );
        return bin;
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let bin = d.join(".tools/bin/litestream");
        if bin.is_file() {
            return bin;
        }
        dir = d.parent();
    }
    panic!(
        "Litestream not found (neither $LITESTREAM_BIN nor .tools/bin/litestream above {}); \
         run scripts/test.sh, or `bash -c 'source scripts/lib/tools.sh; ensure_litestream'`",
        env!("CARGO_MANIFEST_DIR")
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `litestream restore -o <out> [extra] file://<replica>`; panics with its
/// output if it fails.
fn litestream_restore(replica: &Path, out: &Path, extra: &[&str]) {
    let url = format!("file://{}", replica.display());
    let output = Command::new(litestream_bin())
        .arg("restore")
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg(&url)
        .output()
        .expect("run litestream restore");
    assert!(
        output.status.success(),
        "litestream restore {extra:?} {url} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Everything a user can see in table `t`, plus the integrity check.
fn contents(path: &Path) -> (String, Vec<(i64, Vec<u8>)>) {
    let conn = Connection::open(path).expect("open database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    (check, rows)
}

/// A value of `len` bytes that compresses somewhere between well and not at all.
fn value(seed: i64, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if (seed + i as i64 / 64) % 3 == 0 {
                b'a' + (i % 26) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// One step of the shared workload on `conn`: inserts of growing and
/// overflowing values, updates and deletes; step 7 deletes most rows and
/// VACUUMs so the database shrinks.
fn workload_step(conn: &Connection, step: i64) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    for i in 0..8 {
        let id = step * 100 + i;
        let len = ((id * 37) % 9000) as usize + 1;
        conn.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            (id, value(id, len)),
        )?;
    }
    conn.execute(
        "UPDATE t SET v = ?1 WHERE id % 7 = ?2",
        (value(step, 300), step % 7),
    )?;
    conn.execute("DELETE FROM t WHERE id % 11 = ?1", [step % 11])?;
    conn.execute_batch("COMMIT")?;
    if step == 7 {
        conn.execute_batch("DELETE FROM t WHERE id % 4 != 0; VACUUM;")?;
    }
    Ok(())
}

fn create_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);"
    ))?;
    Ok(conn)
}

/// Sends SIGTERM to Litestream on drop and waits for it, so a failing test
/// never leaves it running.
struct Replicating(Option<Child>);

impl Replicating {
    /// Stops Litestream once; later calls do nothing (its pid may be reused).
    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Replicating {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `replica/ltx/<level>/<min>-<max>.ltx` → level → (min, max) → bytes.
type Levels = BTreeMap<u32, BTreeMap<(u64, u64), Vec<u8>>>;

fn read_replica(replica: &Path) -> Result<Levels, Box<dyn std::error::Error>> {
    let mut levels = Levels::new();
    for level in std::fs::read_dir(replica.join("ltx"))? {
        let level = level?;
        let n: u32 = level.file_name().to_string_lossy().parse()?;
        let files = levels.entry(n).or_default();
        for file in std::fs::read_dir(level.path())? {
            let file = file?;
            let range = ltx::parse_file_name(&file.file_name().to_string_lossy())?;
            files.insert(range, std::fs::read(file.path())?);
        }
    }
    Ok(levels)
}

/// Applies `chain` in order onto a fresh `out`, checking TXIDs are
/// contiguous from the first file; returns the last TXID.
fn rebuild(
    chain: &[(&(u64, u64), &Vec<u8>)],
    out: &Path,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut next = chain.first().map_or(1, |(r, _)| r.0);
    assert_eq!(next, 1, "chain must start with a snapshot");
    for ((min, max), bytes) in chain {
        assert_eq!(*min, next, "gap before {}", ltx::file_name(*min, *max));
        let file = ltx::decode(bytes)?;
        assert_eq!((file.header.min_txid, file.header.max_txid), (*min, *max));
        ltx::apply_to_db(&file, out)?;
        next = max + 1;
    }
    Ok(next - 1)
}

/// Stock Litestream writes, we read.
#[test]
fn we_read_what_litestream_0_5_17_replicates() -> TestResult {
    let bin = litestream_bin();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let conn = create_db(&db)?;
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "levels:\n  - interval: 1s\nsnapshot:\n  interval: 3s\n\
             dbs:\n  - path: {}\n    monitor-interval: 50ms\n    replicas:\n      \
             - type: file\n        path: {}\n        sync-interval: 50ms\n",
            db.display(),
            replica.display()
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("litestream.log"))?;
    let mut litestream = Replicating(Some(
        Command::new(&bin)
            .arg("replicate")
            .arg("-config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    ));
    std::thread::sleep(Duration::from_millis(1500));
    for step in 0..16 {
        workload_step(&conn, step)?;
        std::thread::sleep(Duration::from_millis(if step % 4 == 0 { 20 } else { 250 }));
    }
    std::thread::sleep(Duration::from_millis(4000));
    litestream.stop();
    drop(conn);
    let log = std::fs::read_to_string(dir.path().join("litestream.log"))?;
    let source = contents(&db);
    assert_eq!(source.0, "ok");

    let levels = read_replica(&replica)?;
    let mut decoded = 0;
    for (level, files) in &levels {
        for ((min, max), bytes) in files {
            ltx::decode(bytes).map_err(|e| {
                format!(
                    "L{level} {}: {e}\nlitestream log:\n{log}",
                    ltx::file_name(*min, *max)
                )
            })?;
            decoded += 1;
        }
    }
    let count = |l: u32| levels.get(&l).map_or(0, BTreeMap::len);
    eprintln!(
        "decoded {decoded} Litestream files: L0 {}, L1 {}, L9 {}",
        count(0),
        count(1),
        count(9)
    );
    assert!(
        count(0) >= 8 && count(1) >= 2 && count(9) >= 2,
        "too few files:\n{log}"
    );

    // Litestream's own restore is the reference image.
    let reference = dir.path().join("reference.db");
    litestream_restore(&replica, &reference, &[]);
    let reference_bytes = std::fs::read(&reference)?;
    assert_eq!(contents(&reference), source);

    let l0: Vec<_> = levels[&0].iter().collect();
    let last_txid = l0.last().map_or(0, |(r, _)| r.1);

    // 1. Every L0 file from TXID 1.
    let out = dir.path().join("from-l0.db");
    assert_eq!(rebuild(&l0, &out)?, last_txid);
    // 2. The L1 chain, then L0 files past its end.
    let mut chain: Vec<_> = levels[&1].iter().collect();
    let l1_end = chain.last().map_or(0, |(r, _)| r.1);
    chain.extend(l0.iter().filter(|(r, _)| r.0 > l1_end).cloned());
    let out_l1 = dir.path().join("from-l1.db");
    assert_eq!(rebuild(&chain, &out_l1)?, last_txid);
    // 3. The latest L9 snapshot, then L0 files past it.
    let (snap_range, snap) = levels[&9].iter().next_back().ok_or("no L9 snapshot")?;
    let mut chain = vec![(snap_range, snap)];
    chain.extend(l0.iter().filter(|(r, _)| r.0 > snap_range.1).cloned());
    let out_l9 = dir.path().join("from-l9.db");
    assert_eq!(rebuild(&chain, &out_l9)?, last_txid);

    for out in [&out, &out_l1, &out_l9] {
        assert_eq!(contents(out), source, "{}", out.display());
        assert!(
            std::fs::read(out)? == reference_bytes,
            "{} differs from litestream restore's output",
            out.display()
        );
    }
    Ok(())
}

/// We write, stock Litestream restores.
#[test]
fn litestream_0_5_17_restores_what_we_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let replica_l9 = dir.path().join("replica-l9");
    for r in [&replica, &replica_l9] {
        std::fs::create_dir_all(r.join("ltx/0"))?;
        std::fs::create_dir_all(r.join("ltx/9"))?;
    }
    let conn = create_db(&db)?;
    let checkpoint = |conn: &Connection| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    checkpoint(&conn)?;

    // TXID 1: full image.
    let snapshot = ltx::snapshot_from_db(&db, 1, now_ms())?;
    std::fs::write(replica.join("ltx/0").join(ltx::file_name(1, 1)), &snapshot)?;

    // TXIDs 2..=10: changed pages of each step; 9 and 10 share one file.
    let mut images = vec![std::fs::read(&db)?];
    let mut pending: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for txid in 2..=10u64 {
        workload_step(&conn, txid as i64)?;
        checkpoint(&conn)?;
        let before = images.last().ok_or("no image")?.clone();
        let after = std::fs::read(&db)?;
        for (i, page) in after.chunks(PAGE_SIZE).enumerate() {
            if before.get(i * PAGE_SIZE..(i + 1) * PAGE_SIZE) != Some(page) {
                pending.insert(i as u32 + 1, page.to_vec());
            }
        }
        images.push(after.clone());
        if txid == 9 {
            continue; // merged with 10
        }
        let commit = (after.len() / PAGE_SIZE) as u32;
        pending.retain(|&pgno, _| pgno <= commit);
        let min_txid = if txid == 10 { 9 } else { txid };
        let header = Header {
            page_size: PAGE_SIZE as u32,
            commit,
            min_txid,
            max_txid: txid,
            timestamp_ms: now_ms(),
            ..Header::default()
        };
        let bytes = ltx::encode(&header, pending.iter().map(|(p, d)| (*p, d.as_slice())))?;
        pending.clear();
        let name = ltx::file_name(min_txid, txid);
        std::fs::write(replica.join("ltx/0").join(&name), &bytes)?;
        if txid > 4 {
            std::fs::write(replica_l9.join("ltx/0").join(&name), &bytes)?;
        }
        if txid == 4 {
            let snap = ltx::snapshot_from_db(&db, 4, now_ms())?;
            std::fs::write(replica_l9.join("ltx/9").join(ltx::file_name(1, 4)), snap)?;
        }
    }
    drop(conn);
    let source = contents(&db);
    assert_eq!(source.0, "ok");
    let final_image = images.last().ok_or("no image")?;
    assert!(
        images.iter().map(Vec::len).max() > Some(final_image.len()),
        "the workload should shrink the database at least once"
    );

    let out = dir.path().join("restored.db");
    litestream_restore(&replica, &out, &[]);
    assert!(
        std::fs::read(&out)? == *final_image,
        "restored image differs"
    );
    assert_eq!(contents(&out), source);

    // Point in time: TXID 6 is images[5].
    let out6 = dir.path().join("restored-6.db");
    litestream_restore(&replica, &out6, &["-txid", &format!("{:016x}", 6)]);
    assert!(std::fs::read(&out6)? == images[5], "TXID 6 image differs");

    // Our L9 snapshot (1-4) plus L0 files 5..=10.
    let out_l9 = dir.path().join("restored-l9.db");
    litestream_restore(&replica_l9, &out_l9, &[]);
    assert!(
        std::fs::read(&out_l9)? == *final_image,
        "restore via L9 differs"
    );
    Ok(())
}
