//! The standby side of replication against a real nats-server, real SQLite
//! files and stock Litestream 0.5.17:
//!
//! - a bucket `litestream replicate` wrote (NATS replica, mixed workload) is
//!   restored by `wal::restorer::restore` with the same rows as the source
//!   and as `litestream restore`;
//! - corrupt, truncated and misnamed objects are refused by name and
//!   nothing is written (restore) or applied (follower);
//! - a new node bootstraps from an L9 snapshot plus later L0 files, follows
//!   new files (also out of order), resumes from its position file, and
//!   repairs a replica ahead of its recorded position;
//! - promotion moves a followed replica onto the data path in WAL mode and
//!   refuses a corrupt one without touching the data path;
//! - manual snapshots round-trip.
//!
//! Needs nats-server and Litestream (`scripts/test.sh` installs both).

mod support;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use cluster_runtime::naming::Names;
use cluster_runtime::wal::bucket::{object_name, WalBucket};
use cluster_runtime::wal::ltx::{self, Header, FLAG_NO_CHECKSUM};
use cluster_runtime::wal::promote::{promote, replica_path_for};
use cluster_runtime::wal::restorer::{self, position_path_for, Restorer};
use cluster_runtime::wal::snapshots::Snapshots;
use cluster_runtime::wal::WalError;
use rusqlite::Connection;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PAGE_SIZE: usize = 4096;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The Litestream binary, or a failure telling how to get it. Never skips.
fn litestream_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LITESTREAM_BIN") {
        return PathBuf::from(bin);
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
        "Litestream not found: run scripts/test.sh (it installs Litestream 0.5.17 into .tools/bin)"
    );
}

async fn jetstream_for(server: &cluster_runtime::nats_server::NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url()).await.expect("connect");
    jetstream::new(client)
}

async fn create_store(js: &jetstream::Context, name: &str) -> object_store::ObjectStore {
    js.create_object_store(object_store::Config {
        bucket: name.to_owned(),
        ..Default::default()
    })
    .await
    .expect("create object store")
}

/// Stores raw bytes under any name, bypassing `WalBucket::put`'s naming.
async fn put_raw(store: &object_store::ObjectStore, name: &str, bytes: &[u8]) {
    let mut reader = bytes;
    store.put(name, &mut reader).await.expect("put raw object");
}

/// `integrity_check` and a hash of every row of `t` in id order, read from
/// a copy so the original is never opened by SQLite (a followed replica
/// must not be).
fn contents(path: &Path) -> (String, u64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("copy.db");
    std::fs::copy(path, &copy).expect("copy database");
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        std::fs::copy(&wal, dir.path().join("copy.db-wal")).expect("copy WAL");
    }
    let conn = Connection::open(&copy).expect("open database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut h);
    (check, h.finish(), rows.len())
}

/// SQLite's journal-mode bytes (offsets 18 and 19 of the header).
fn journal_mode_bytes(path: &Path) -> (u8, u8) {
    let bytes = std::fs::read(path).expect("read database");
    (bytes[18], bytes[19])
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

/// One step of a mixed workload: inserts (some overflowing a page),
/// updates, deletes; step 5 deletes most rows and VACUUMs (shrink).
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
    if step == 5 {
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

/// A source database whose every transaction becomes an LTX file, the way
/// a primary would ship it: checkpoint, then diff the file's pages against
/// the previous state.
struct Source {
    path: PathBuf,
    conn: Connection,
    prev: Vec<u8>,
    txid: u64,
    /// Per TXID: the LTX file ending there and the database's contents.
    files: HashMap<u64, Bytes>,
    states: HashMap<u64, (String, u64, usize)>,
}

impl Source {
    fn new(dir: &Path) -> Self {
        let path = dir.join("source.db");
        let conn = create_db(&path).expect("create source");
        let mut s = Source {
            path,
            conn,
            prev: Vec::new(),
            txid: 0,
            files: HashMap::new(),
            states: HashMap::new(),
        };
        s.commit();
        s
    }

    /// Records the current state as the next TXID (1 = full image).
    fn commit(&mut self) -> u64 {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let cur = std::fs::read(&self.path).expect("read source");
        self.txid += 1;
        let txid = self.txid;
        let ts = 1_700_000_000_000 + txid as i64;
        let bytes = if txid == 1 {
            ltx::snapshot_from_db(&self.path, 1, ts).expect("snapshot")
        } else {
            let commit = (cur.len() / PAGE_SIZE) as u32;
            let header = Header {
                flags: FLAG_NO_CHECKSUM,
                page_size: PAGE_SIZE as u32,
                commit,
                min_txid: txid,
                max_txid: txid,
                timestamp_ms: ts,
                ..Header::default()
            };
            let pages: Vec<(u32, &[u8])> = cur
                .chunks(PAGE_SIZE)
                .enumerate()
                .filter(|(i, page)| {
                    self.prev.get(i * PAGE_SIZE..(i + 1) * PAGE_SIZE) != Some(*page)
                })
                .map(|(i, page)| (i as u32 + 1, page))
                .collect();
            ltx::encode(&header, pages).expect("encode")
        };
        self.files.insert(txid, Bytes::from(bytes));
        self.states.insert(txid, contents(&self.path));
        self.prev = cur;
        txid
    }

    fn step(&mut self, step: i64) -> u64 {
        workload_step(&self.conn, step).expect("workload");
        self.commit()
    }

    /// A full image of the current state covering TXIDs `1..=txid`.
    fn snapshot_now(&self) -> Bytes {
        Bytes::from(
            ltx::snapshot_from_db(&self.path, self.txid, 1_700_000_000_000).expect("snapshot"),
        )
    }
}

/// Sends SIGTERM to Litestream on drop and waits for it.
struct Replicating(Option<Child>);

impl Replicating {
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

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Stock `litestream replicate` writes a NATS bucket; our restore rebuilds
/// the same rows, as `litestream restore` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_a_bucket_litestream_replicated() -> TestResult {
    let server = support::start_server().await;
    let js = jetstream_for(&server).await;
    create_store(&js, "p_a_wal").await;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let conn = create_db(&db)?;
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "levels:\n  - interval: 1s\nsnapshot:\n  interval: 2s\n\
             dbs:\n  - path: {}\n    monitor-interval: 50ms\n    replica:\n      \
             type: nats\n      url: {}/p_a_wal\n      bucket: p_a_wal\n      sync-interval: 50ms\n",
            db.display(),
            server.url()
        ),
    )?;
    let log_path = dir.path().join("litestream.log");
    let log = std::fs::File::create(&log_path)?;
    let mut litestream = Replicating(Some(
        Command::new(litestream_bin())
            .arg("replicate")
            .arg("-config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    ));
    let bucket = WalBucket::open(&js, "p_a_wal").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket.list().await.is_ok_and(|l| l.contains_key(&9)) {
        assert!(
            Instant::now() < deadline,
            "no snapshot from Litestream; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for step in 0..12 {
        workload_step(&conn, step)?;
        if step == 8 {
            conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")?;
        }
        tokio::time::sleep(Duration::from_millis(if step % 3 == 0 { 10 } else { 150 })).await;
    }
    let source = contents(&db);
    assert_eq!(source.0, "ok");

    // Litestream ships asynchronously: restore until the rows match.
    let out = dir.path().join("ours.db");
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::fs::remove_file(&out);
        let info = restorer::restore(&bucket, &out, None).await?;
        if contents(&out) == source {
            last = Some(info);
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listing = bucket.list().await?;
    let count = |l: u8| listing.get(&l).map_or(0, Vec::len);
    let info = last.ok_or_else(|| {
        format!(
            "our restore never matched the source (last: {:?} vs {source:?});\nlitestream log:\n{}",
            contents(&out),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    })?;
    eprintln!(
        "restored {info:?} from L0 {} / L1 {} / L9 {} files",
        count(0),
        count(1),
        count(9)
    );
    assert!(count(0) > 0 && count(1) > 0 && count(9) > 0, "{listing:?}");
    assert_eq!(
        journal_mode_bytes(&out),
        (2, 2),
        "restored file is not in WAL mode"
    );
    litestream.stop();

    // Stock restore of the same bucket: the same rows.
    let theirs = dir.path().join("theirs.db");
    let output = Command::new(litestream_bin())
        .arg("restore")
        .arg("-o")
        .arg(&theirs)
        .arg(format!("{}/p_a_wal", server.url()))
        .output()?;
    assert!(
        output.status.success(),
        "litestream restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_file(&out);
    restorer::restore(&bucket, &out, None).await?;
    assert_eq!(contents(&out), contents(&theirs));
    assert_eq!(contents(&out), source);
    // A restore never clobbers an existing database unasked.
    let again = restorer::restore(&bucket, &out, None).await;
    assert!(
        matches!(&again, Err(WalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{again:?}"
    );
    Ok(())
}

/// Corrupt, truncated and misnamed objects are refused by name; the out
/// path is never created and no temporary file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_corrupt_truncated_and_misnamed_objects() -> TestResult {
    let server = support::start_server().await;
    let js = jetstream_for(&server).await;
    let dir = tempfile::tempdir()?;
    let mut src = Source::new(dir.path());
    for step in 0..5 {
        src.step(step);
    }
    let l0 = |txid: u64| object_name(0, txid, txid);

    let mut flipped = src.files[&3].to_vec();
    flipped[103] ^= 0x40; // the first page header's page number
    let truncated = src.files[&3].slice(..src.files[&3].len() - 100);
    // (bucket, objects to store in place of the good ones, the name refused)
    type Case = (&'static str, Vec<(String, Bytes)>, String);
    let cases: Vec<Case> = vec![
        ("flipped", vec![(l0(3), Bytes::from(flipped))], l0(3)),
        ("truncated", vec![(l0(3), truncated)], l0(3)),
        ("misnamed", vec![(l0(5), src.files[&6].clone())], l0(5)),
        (
            "stray",
            vec![(
                "ltx/0/garbage.ltx".to_owned(),
                Bytes::from_static(b"not an LTX file"),
            )],
            "ltx/0/garbage.ltx".to_owned(),
        ),
    ];
    for (case, replaced, refused) in cases {
        let store = create_store(&js, case).await;
        for txid in 1..=6 {
            if !replaced.iter().any(|(name, _)| *name == l0(txid)) {
                put_raw(&store, &l0(txid), &src.files[&txid]).await;
            }
        }
        for (name, bytes) in &replaced {
            put_raw(&store, name, bytes).await;
        }
        let bucket = WalBucket::open(&js, case).await?;
        let out_dir = dir.path().join(case);
        std::fs::create_dir(&out_dir)?;
        let out = out_dir.join("restored.db");
        let result = restorer::restore(&bucket, &out, None).await;
        match &result {
            Err(e @ WalError::Corrupt { name, .. }) => {
                assert_eq!(name, &refused, "{case}: {e}");
                eprintln!("{case}: {e}");
            }
            other => panic!("{case}: expected a refusal of {refused}, got {other:?}"),
        }
        assert!(
            files_in(&out_dir).is_empty(),
            "{case}: left {:?}",
            files_in(&out_dir)
        );
    }

    // A follower at TXID 4 refuses a corrupt TXID 5 and stays as it was.
    let store = create_store(&js, "follower").await;
    for txid in 1..=4 {
        put_raw(&store, &l0(txid), &src.files[&txid]).await;
    }
    let bucket = WalBucket::open(&js, "follower").await?;
    let replica = dir.path().join("replica.db");
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    assert_eq!(restorer.position().borrow().txid, 4);
    let before = (
        std::fs::read(&replica)?,
        std::fs::read(position_path_for(&replica))?,
    );
    let mut bad = src.files[&5].to_vec();
    bad[103] ^= 0x40;
    put_raw(&store, &l0(5), &bad).await;
    match restorer.catch_up().await {
        Err(WalError::Corrupt { name, .. }) => assert_eq!(name, l0(5)),
        other => panic!("expected the corrupt TXID 5 to be refused, got {other:?}"),
    }
    let after = (
        std::fs::read(&replica)?,
        std::fs::read(position_path_for(&replica))?,
    );
    assert!(before == after, "the replica or its position changed");
    assert_eq!(restorer.position().borrow().txid, 4);
    assert_eq!(contents(&replica), src.states[&4]);
    restorer.stop().await;
    Ok(())
}

/// A new node bootstraps from an L9 snapshot plus later L0 files, follows
/// new files (also out of order), resumes from its position, and repairs a
/// replica that is ahead of its recorded position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_from_a_snapshot_then_follows() -> TestResult {
    let server = support::start_server().await;
    let js = jetstream_for(&server).await;
    let dir = tempfile::tempdir()?;
    let bucket = WalBucket::open_or_create(&js, "p_a_wal", 1).await?;
    let mut src = Source::new(dir.path());
    src.step(0);
    src.step(1);
    // Retention has removed L0 1..=3: only the snapshot covers them.
    bucket.put(9, src.snapshot_now()).await?;
    let t4 = src.step(2);
    let t5 = src.step(3);
    bucket.put(0, src.files[&t4].clone()).await?;
    bucket.put(0, src.files[&t5].clone()).await?;

    let replica = dir.path().join("app.db-replica");
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    let mut position = restorer.position();
    assert_eq!(position.borrow().txid, 5);
    assert_eq!(contents(&replica), src.states[&5]);
    assert_eq!(journal_mode_bytes(&replica), (2, 2));

    // New files as the primary stores them.
    for step in 4..6 {
        let t = src.step(step);
        bucket.put(0, src.files[&t].clone()).await?;
    }
    let reached = tokio::time::timeout(Duration::from_secs(10), position.wait_for(|p| p.txid >= 7))
        .await
        .is_ok();
    assert!(reached, "follower stuck at {}", position.borrow().txid);
    assert_eq!(contents(&replica), src.states[&7]);

    // Out of order: 9 arrives before 8.
    let t8 = src.step(6);
    let t9 = src.step(7);
    bucket.put(0, src.files[&t9].clone()).await?;
    bucket.put(0, src.files[&t8].clone()).await?;
    let reached = tokio::time::timeout(Duration::from_secs(10), position.wait_for(|p| p.txid >= 9))
        .await
        .is_ok();
    assert!(reached, "follower stuck at {}", position.borrow().txid);
    assert_eq!(restorer.catch_up().await?, 9);
    assert_eq!(contents(&replica), src.states[&9]);
    assert!(restorer.lag() < Duration::from_secs(3600 * 24 * 365 * 100));
    let stopped = restorer.stop().await;
    assert_eq!(stopped.txid, 9);

    // Resume from the position file: with the snapshot and early files
    // gone a bootstrap could not even start, so this proves a resume.
    let listing = bucket.list().await?;
    let early: Vec<_> = listing
        .values()
        .flatten()
        .filter(|f| f.max_txid <= 5)
        .cloned()
        .collect();
    bucket.delete(&early).await?;
    let t10 = src.step(8);
    bucket.put(0, src.files[&t10].clone()).await?;
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    assert_eq!(restorer.position().borrow().txid, 10);
    assert_eq!(contents(&replica), src.states[&10]);
    restorer.stop().await;

    // A crash after applying TXID 10 but before recording it: the replica
    // is ahead of its position. Re-applying from the position repairs it.
    let pos = position_path_for(&replica);
    let text = std::fs::read_to_string(&pos)?;
    std::fs::write(
        &pos,
        text.replace(&format!("{t10:016x}"), &format!("{t9:016x}")),
    )?;
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    assert_eq!(restorer.position().borrow().txid, 10);
    assert_eq!(contents(&replica), src.states[&10]);
    restorer.stop().await;

    // A replica ahead of the bucket (the bucket was reset) is rebuilt.
    std::fs::write(
        &pos,
        text.replace(&format!("{t10:016x}"), &format!("{:016x}", 99)),
    )?;
    bucket.put(9, src.snapshot_now()).await?;
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    assert_eq!(restorer.position().borrow().txid, 10);
    assert_eq!(contents(&replica), src.states[&10]);
    restorer.stop().await;
    Ok(())
}

/// Promotion moves a followed replica onto the data path (stale WAL
/// removed) in WAL mode; a corrupt replica is refused and the data path
/// keeps its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotes_a_replica_and_refuses_a_corrupt_one() -> TestResult {
    let server = support::start_server().await;
    let js = jetstream_for(&server).await;
    let dir = tempfile::tempdir()?;
    let bucket = WalBucket::open_or_create(&js, "p_a_wal", 1).await?;
    let mut src = Source::new(dir.path());
    bucket.put(0, src.files[&1].clone()).await?;
    for step in 0..4 {
        let t = src.step(step);
        bucket.put(0, src.files[&t].clone()).await?;
    }
    let data = dir.path().join("app.db");
    let replica = replica_path_for(&data);
    assert_eq!(replica, dir.path().join("app.db-replica"));
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    let t = src.step(4);
    bucket.put(0, src.files[&t].clone()).await?;
    assert_eq!(restorer.catch_up().await?, t);
    restorer.stop().await;

    // The old database and a stale WAL of it sit on the data path.
    {
        let old = Connection::open(&data)?;
        old.execute_batch("CREATE TABLE old (x); INSERT INTO old VALUES (1);")?;
    }
    std::fs::write(dir.path().join("app.db-wal"), vec![0xa5u8; 8192])?;

    let info = promote(&replica, &data).await?;
    assert_eq!(info.txid, Some(t));
    assert!(!replica.exists() && !position_path_for(&replica).exists());
    let conn = Connection::open(&data)?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    assert_eq!(mode, "wal");
    drop(conn);
    assert_eq!(contents(&data), src.states[&t]);

    // A corrupt replica: refused, the data path keeps its bytes.
    let restorer = Restorer::start(bucket.clone(), &replica).await?;
    restorer.stop().await;
    let mut bytes = std::fs::read(&replica)?;
    for b in &mut bytes[PAGE_SIZE..2 * PAGE_SIZE] {
        *b = 0x5a;
    }
    std::fs::write(&replica, &bytes)?;
    let before = std::fs::read(&data)?;
    let refused = promote(&replica, &data).await;
    assert!(
        matches!(refused, Err(WalError::Sqlite { .. })),
        "{refused:?}"
    );
    eprintln!(
        "corrupt replica: {}",
        refused.err().map(|e| e.to_string()).unwrap_or_default()
    );
    assert!(std::fs::read(&data)? == before, "the data path changed");
    assert!(replica.exists());
    Ok(())
}

/// Manual snapshots: create, latest, list and restore round-trip, taken
/// consistently while the WAL holds uncheckpointed commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_snapshots_round_trip() -> TestResult {
    let server = support::start_server().await;
    let js = jetstream_for(&server).await;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let conn = create_db(&db)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
    for step in 0..4 {
        workload_step(&conn, step)?;
    }
    let names = Names::new("p")?;
    let snapshots = Snapshots::open_or_create(&js, &names.app_snapshots_bucket("a"), 1).await?;
    assert!(snapshots.latest().await?.is_none());
    let first = snapshots.create(&db).await?;
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct ids (ms resolution)
    workload_step(&conn, 4)?;
    let second = snapshots.create_at(&db, Some(42)).await?;
    assert!(second.id > first.id && second.size > 0 && second.txid == Some(42));
    assert_eq!(snapshots.latest().await?, Some(second.clone()));
    assert_eq!(snapshots.list().await?, vec![first.clone(), second.clone()]);

    let out = dir.path().join("restored.db");
    let info = snapshots.restore(&second.id, &out).await?;
    assert_eq!(info.txid, 42);
    assert_eq!(contents(&out), contents(&db));
    assert_eq!(journal_mode_bytes(&out), (2, 2));
    assert!(
        snapshots.restore(&second.id, &out).await.is_err(),
        "clobbered an existing database"
    );
    let older = dir.path().join("older.db");
    snapshots.restore(&first.id, &older).await?;
    assert_ne!(contents(&older).1, contents(&db).1);
    assert!(snapshots
        .restore("nonsense", &dir.path().join("x.db"))
        .await
        .is_err());
    Ok(())
}
