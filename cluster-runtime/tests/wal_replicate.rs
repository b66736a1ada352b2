//! The primary replicator against a real nats-server and real SQLite files,
//! checked with stock `litestream restore` (0.5.17, NATS replica):
//!
//! - a mixed workload (inserts, updates, deletes, growth, shrink by VACUUM,
//!   an app checkpoint, WAL restarts after our checkpoints) restores to a
//!   database equal to the source, before and after compaction (L1 + L9);
//! - TXIDs are contiguous from 1 and the first file is a full image;
//! - a restarted replicator continues at max+1 (from the WAL when it can
//!   prove the position, with a full image when it cannot, without one
//!   when told the position);
//! - fencing: once epoch 6 took `wal.head`, epoch 5 writes no object;
//! - `sync()` returns only when the commit's file is listed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_runtime::wal::bucket::{WalBucket, SNAPSHOT_LEVEL};
use cluster_runtime::wal::compact::{CompactionConfig, Compactor};
use cluster_runtime::wal::fence::HEAD_KEY;
use cluster_runtime::wal::replicator::{FenceConfig, Replicator, ReplicatorConfig};
use cluster_runtime::wal::wal_file::read_header;
use cluster_runtime::wal::WalError;
use rusqlite::Connection;

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
    panic!("Litestream not found; run scripts/test.sh or `source scripts/lib/tools.sh; ensure_litestream`");
}

/// `litestream restore` of `bucket` (NATS replica) into `out`.
fn litestream_restore(url: &str, bucket: &str, db: &Path, out: &Path) {
    let dir = out.parent().expect("parent");
    let config = dir.join(format!("{bucket}.yml"));
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: nats\n      url: {url}/{bucket}\n      bucket: {bucket}\n",
            db.display()
        ),
    )
    .expect("write config");
    let output = Command::new(litestream_bin())
        .arg("restore")
        .arg("-config")
        .arg(&config)
        .arg("-o")
        .arg(out)
        .arg(db)
        .output()
        .expect("run litestream restore");
    assert!(
        output.status.success(),
        "litestream restore failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// integrity_check and a digest of every row of `t`.
fn contents(path: &Path) -> (String, u64, Vec<(i64, Vec<u8>)>) {
    let conn = Connection::open(path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, v) in &rows {
        for b in id.to_le_bytes().iter().chain(v) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    (check, h, rows)
}

fn assert_same(source: &Path, restored: &Path) {
    let (check, hash, rows) = contents(restored);
    let (_, src_hash, src_rows) = contents(source);
    assert_eq!(check, "ok", "restored database fails integrity_check");
    assert_eq!(rows.len(), src_rows.len(), "row count differs");
    assert_eq!(hash, src_hash, "row checksums differ");
}

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

/// Inserts (some overflowing), updates and deletes in one transaction;
/// step 7 deletes most rows and VACUUMs so the database shrinks.
fn workload_step(conn: &Connection, step: i64) {
    conn.execute_batch("BEGIN").expect("begin");
    for i in 0..8 {
        let id = step * 100 + i;
        let len = ((id * 37) % 9000) as usize + 1;
        conn.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            (id, value(id, len)),
        )
        .expect("insert");
    }
    conn.execute(
        "UPDATE t SET v = ?1 WHERE id % 7 = ?2",
        (value(step, 300), step % 7),
    )
    .expect("update");
    conn.execute("DELETE FROM t WHERE id % 11 = ?1", [step % 11])
        .expect("delete");
    conn.execute_batch("COMMIT").expect("commit");
    if step == 7 {
        conn.execute_batch("DELETE FROM t WHERE id % 4 != 0; VACUUM;")
            .expect("shrink");
    }
}

struct Setup {
    server: cluster_runtime::nats_server::NatsServer,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    db: PathBuf,
    app: Connection,
}

async fn setup() -> Setup {
    let server = support::start_server().await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).expect("open app db");
    app.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("create");
    Setup {
        server,
        js,
        dir,
        db,
        app,
    }
}

fn config(s: &Setup, bucket: &WalBucket) -> ReplicatorConfig {
    let mut c = ReplicatorConfig::new(&s.db, bucket.clone());
    c.compaction = None;
    c
}

/// L0 ranges in order; asserts contiguity from 1.
async fn l0_ranges(bucket: &WalBucket) -> Vec<(u64, u64)> {
    let files = bucket.list_level(0).await.expect("list");
    let ranges: Vec<_> = files.iter().map(|f| (f.min_txid, f.max_txid)).collect();
    let mut next = ranges.first().map_or(1, |r| r.0);
    for r in &ranges {
        assert_eq!(r.0, next, "TXIDs not contiguous: {ranges:?}");
        next = r.1 + 1;
    }
    ranges
}

fn wal_salts(db: &Path) -> (u32, u32) {
    let path = PathBuf::from(format!("{}-wal", db.display()));
    let mut f = std::fs::File::open(&path).expect("open wal");
    read_header(&mut f, &path)
        .expect("read")
        .expect("valid header")
        .salts()
}

#[tokio::test]
async fn mixed_workload_restores_with_stock_litestream_before_and_after_compaction() {
    let s = setup().await;
    let bucket = WalBucket::open_or_create(&s.js, "t_mixed_wal", 1)
        .await
        .expect("bucket");
    let mut c = config(&s, &bucket);
    // Small, so our checkpoints and WAL restarts happen during the test.
    c.checkpoint_pages = 40;
    let replicator = Replicator::start(c).await.expect("start");
    let salts_before = wal_salts(&s.db);
    for step in 0..14 {
        workload_step(&s.app, step);
        replicator.notify();
        if step == 4 {
            // An app checkpoint in the middle (stops at our read mark).
            s.app
                .execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
                .expect("checkpoint");
        }
        if step % 3 == 0 {
            replicator.sync().await.expect("sync");
        }
    }
    // The replicator checkpoints on its own once everything is shipped and
    // the WAL holds enough frames; on a busy box that can come after the
    // last write: wait for it (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replicator.stats().checkpoints == 0 && std::time::Instant::now() < deadline {
        replicator.notify();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let txid = replicator.sync().await.expect("sync");
    let stats = replicator.stats();
    assert!(stats.checkpoints > 0, "replicator never checkpointed");
    assert_ne!(wal_salts(&s.db), salts_before, "the WAL never restarted");
    assert_eq!(stats.full_images, 1, "only the initial image: {stats:?}");

    // TXIDs contiguous from 1; the first file is a full image.
    let ranges = l0_ranges(&bucket).await;
    assert_eq!(ranges[0].0, 1);
    assert_eq!(ranges.last().map(|r| r.1), Some(txid));
    let first = bucket.list_level(0).await.expect("list")[0].clone();
    let first = bucket.get_decoded(&first).await.expect("decode");
    assert_eq!(first.pages.len() as u32, first.header.commit);

    let out = s.dir.path().join("restored1.db");
    litestream_restore(&s.server.url(), "t_mixed_wal", &s.db, &out);
    assert_same(&s.db, &out);

    // Compaction: L1 + L9, then more commits, then retention.
    let compactor = Compactor::new(
        bucket.clone(),
        CompactionConfig {
            l0_retention: Duration::ZERO,
            ..CompactionConfig::default()
        },
    );
    let l1 = compactor
        .compact_level(1)
        .await
        .expect("compact")
        .expect("an L1 file");
    assert_eq!((l1.min_txid, l1.max_txid), (1, txid));
    let snap = compactor
        .snapshot()
        .await
        .expect("snapshot")
        .expect("an L9 file");
    assert_eq!((snap.level, snap.max_txid), (SNAPSHOT_LEVEL, txid));
    for step in 14..18 {
        workload_step(&s.app, step);
        replicator.notify();
    }
    let txid2 = replicator.sync().await.expect("sync");
    assert!(txid2 > txid);
    let deleted = compactor.retain().await.expect("retain");
    assert!(
        deleted.iter().all(|f| f.level == 0 && f.max_txid <= txid),
        "retention deleted something still needed: {deleted:?}"
    );
    assert!(!deleted.is_empty(), "L0 files covered by L1 were kept");
    let levels = bucket.list().await.expect("list");
    assert!(levels.contains_key(&1) && levels.contains_key(&SNAPSHOT_LEVEL));

    let out = s.dir.path().join("restored2.db");
    litestream_restore(&s.server.url(), "t_mixed_wal", &s.db, &out);
    assert_same(&s.db, &out);
    replicator.stop().await.expect("stop");
}

#[tokio::test]
async fn restart_continues_at_max_plus_one() {
    let s = setup().await;
    let bucket = WalBucket::open_or_create(&s.js, "t_restart_wal", 1)
        .await
        .expect("bucket");
    let r = Replicator::start(config(&s, &bucket)).await.expect("start");
    for step in 0..3 {
        workload_step(&s.app, step);
        r.notify();
    }
    let p1 = r.stop().await.expect("stop").txid;
    assert_eq!(l0_ranges(&bucket).await.last().map(|r| r.1), Some(p1));

    // Commits while stopped; the WAL still holds the generation the last
    // file names, so no full image is needed.
    workload_step(&s.app, 3);
    workload_step(&s.app, 4);
    let r = Replicator::start(config(&s, &bucket))
        .await
        .expect("restart");
    let p2 = r.sync().await.expect("sync");
    assert_eq!(p2, p1 + 2, "each commit is one TXID");
    assert_eq!(r.stats().full_images, 0);
    let p2 = r.stop().await.expect("stop").txid;
    let ranges = l0_ranges(&bucket).await;
    assert_eq!(ranges[0].0, 1);

    // The WAL is checkpointed away while stopped: the position cannot be
    // proven, so the next TXID is a full image.
    s.app
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("truncate");
    workload_step(&s.app, 5);
    let r = Replicator::start(config(&s, &bucket))
        .await
        .expect("restart");
    let p3 = r.sync().await.expect("sync");
    assert_eq!(p3, p2 + 1);
    assert_eq!(r.stats().full_images, 1);
    let p3 = r.stop().await.expect("stop").txid;

    // Told the position (a promoted replica): no image, even though the
    // WAL the last file names is gone.
    s.app
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("truncate");
    let mut c = config(&s, &bucket);
    c.known_position = Some(p3);
    let r = Replicator::start(c).await.expect("restart with position");
    workload_step(&s.app, 6);
    r.notify();
    let p4 = r.sync().await.expect("sync");
    assert_eq!(p4, p3 + 1);
    assert_eq!(r.stats().full_images, 0);
    r.stop().await.expect("stop");
    let ranges = l0_ranges(&bucket).await;
    assert_eq!(ranges.last().map(|r| r.1), Some(p4));
}

#[tokio::test]
async fn restored_after_restart_equals_source() {
    let s = setup().await;
    let bucket = WalBucket::open_or_create(&s.js, "t_restart2_wal", 1)
        .await
        .expect("bucket");
    let r = Replicator::start(config(&s, &bucket)).await.expect("start");
    for step in 0..4 {
        workload_step(&s.app, step);
        r.notify();
    }
    r.stop().await.expect("stop");
    workload_step(&s.app, 4);
    s.app
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("truncate");
    workload_step(&s.app, 5);
    let r = Replicator::start(config(&s, &bucket))
        .await
        .expect("restart");
    workload_step(&s.app, 6);
    r.notify();
    r.stop().await.expect("stop");
    l0_ranges(&bucket).await;
    let out = s.dir.path().join("restored.db");
    litestream_restore(&s.server.url(), "t_restart2_wal", &s.db, &out);
    assert_same(&s.db, &out);
}

#[tokio::test]
async fn deposed_primary_writes_no_object_after_a_newer_epoch_reserved() {
    let s = setup().await;
    let bucket = WalBucket::open_or_create(&s.js, "t_fence_wal", 1)
        .await
        .expect("bucket");
    let coord = cluster_runtime::lease::open_bucket(&s.js, "t_fence_coord", 1)
        .await
        .expect("coord");
    let mut ca = config(&s, &bucket);
    ca.fence = Some(FenceConfig::new(coord.clone(), 5));
    let a = Replicator::start(ca).await.expect("start A");
    workload_step(&s.app, 0);
    a.notify();
    let a_pos = a.sync().await.expect("A sync");

    // B: the new primary on its own copy of the database at A's position.
    let b_db = s.dir.path().join("b.db");
    s.app
        .execute(&format!("VACUUM INTO '{}'", b_db.display()), [])
        .expect("copy");
    let b_app = Connection::open(&b_db).expect("open b");
    b_app
        .execute_batch("PRAGMA journal_mode = WAL;")
        .expect("wal");
    let mut cb = ReplicatorConfig::new(&b_db, bucket.clone());
    cb.compaction = None;
    cb.fence = Some(FenceConfig::new(coord.clone(), 6));
    cb.known_position = Some(a_pos);
    let b = Replicator::start(cb).await.expect("start B");
    let after_b_start = bucket.list().await.expect("list");

    // A commits and tries to ship: fenced, and nothing lands.
    workload_step(&s.app, 1);
    a.notify();
    match a.sync().await {
        Err(WalError::Fenced {
            ours: 5,
            current: 6,
        }) => {}
        other => panic!("A was not fenced: {other:?}"),
    }
    assert_eq!(
        bucket.list().await.expect("list"),
        after_b_start,
        "the deposed primary wrote an object"
    );
    assert!(matches!(a.stop().await, Err(WalError::Fenced { .. })));

    // B ships at A's position + 1; wal.head is B's.
    workload_step(&b_app, 2);
    b.notify();
    let b_pos = b.sync().await.expect("B sync");
    assert_eq!(b_pos, a_pos + 1);
    let ranges = l0_ranges(&bucket).await;
    assert_eq!(ranges.last(), Some(&(a_pos + 1, a_pos + 1)));
    let head: serde_json::Value =
        serde_json::from_slice(&coord.get(HEAD_KEY).await.expect("get").expect("head"))
            .expect("json");
    assert_eq!(head["epoch"], 6);
    assert_eq!(head["txid"], b_pos);

    // A cannot come back with its old epoch.
    let mut ca = config(&s, &bucket);
    ca.fence = Some(FenceConfig::new(coord.clone(), 5));
    assert!(matches!(
        Replicator::start(ca).await,
        Err(WalError::Fenced {
            ours: 5,
            current: 6
        })
    ));
    b.stop().await.expect("stop B");
}

#[tokio::test]
async fn sync_returns_after_the_commits_file_is_listed() {
    let s = setup().await;
    let bucket = WalBucket::open_or_create(&s.js, "t_sync_wal", 1)
        .await
        .expect("bucket");
    let r = Replicator::start(config(&s, &bucket)).await.expect("start");
    for i in 0..20i64 {
        s.app
            .execute("INSERT INTO t (id, v) VALUES (?1, ?2)", (i, value(i, 100)))
            .expect("insert");
        // No notify: sync alone must find the commit.
        let txid = r.sync().await.expect("sync");
        let files = bucket.list_level(0).await.expect("list");
        assert!(
            files
                .iter()
                .any(|f| f.min_txid <= txid && txid <= f.max_txid),
            "sync returned {txid} but no file holds it"
        );
        assert!(r.position().borrow().txid >= txid);
    }
    r.stop().await.expect("stop");
}
