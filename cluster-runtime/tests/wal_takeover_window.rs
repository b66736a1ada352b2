//! The takeover window of WAL replication (code review §2.4), aimed at on
//! purpose, in-process, with a real nats-server and real SQLite files.
//!
//! The old primary A reaches NATS through a TCP proxy the test can freeze:
//! a frozen proxy is what A sees when it is SIGSTOPped or cut off (its lease
//! renewals stop, its reservation or put in flight is held on the wire).
//! A commits, asks for `sync()` and is frozen a few hundred µs later, so the
//! commit is captured but not yet stored. Its lease expires; B wins it,
//! catches up from the bucket and starts replicating. A is thawed at a
//! different point of B's takeover in each round (right after B's win,
//! after B's catch-up, after B's catch-up plus a delay), so A's held
//! reservation or put reaches the server during B's promotion.
//!
//! Asserted every round: every commit whose `sync()` A acknowledged is in
//! B's database and in the bucket's restore; the bucket holds no TXID of A
//! beyond what A had reserved when B took `wal.head` (A's later
//! reservations are refused); `wal.head` ends up B's. Counted: A's syncs
//! acknowledged after the takeover (none expected) and refused, by reason.
//!
//! On the base commit (fence taken only when B's replication starts, no
//! validity checks in the uploader) the same rounds lose acknowledged
//! commits in 19 of 20 rounds.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_runtime::lease::{KeyState, LeaseKey, LeaseTiming};
use cluster_runtime::wal::bucket::WalBucket;
use cluster_runtime::wal::fence::{Fence, HEAD_KEY};
use cluster_runtime::wal::replicator::{FenceConfig, Replicator, ReplicatorConfig};
use cluster_runtime::wal::restorer::{restore_with, RestoreOptions};
use cluster_runtime::wal::WalError;
use rusqlite::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const ROUNDS: usize = 20;

/// A TCP proxy to the NATS server that can be frozen: while frozen no
/// byte moves in either direction (bytes already read wait in the proxy).
struct Proxy {
    url: String,
    frozen: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("nats://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let (frozen, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.expect("upstream");
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, rx.clone()));
                tokio::spawn(pipe(sr, cw, rx.clone()));
            }
        });
        Proxy { url, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn open_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("create");
    conn
}

fn ids(path: &Path) -> Vec<i64> {
    let conn = Connection::open(path).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "{}", path.display());
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").expect("q");
    let rows = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("ids");
    rows
}

/// When A is thawed: after B's win, after B's catch-up, or 30 ms after it.
#[derive(Debug, Clone, Copy)]
enum Thaw {
    Win,
    CatchUp,
    CatchUpLate,
}

#[derive(Debug, Default)]
struct Outcome {
    acked_after_takeover: usize,
    refused_fenced: usize,
    refused_deposed: usize,
    lost: Vec<i64>,
}

async fn round(server_url: &str, dir: &Path, n: usize) -> Outcome {
    let thaw = [Thaw::Win, Thaw::CatchUp, Thaw::CatchUpLate][n % 3];
    let direct = async_nats::connect(server_url).await.expect("connect");
    let js = async_nats::jetstream::new(direct);
    let proxy = Proxy::start(server_url).await;
    let a_client = async_nats::connect(&proxy.url).await.expect("connect A");
    let js_a = async_nats::jetstream::new(a_client);

    let wal = format!("t_win{n}_wal");
    let coord_name = format!("t_win{n}_coord");
    let lease_name = format!("t_win{n}_lease");
    WalBucket::open_or_create(&js, &wal, 1).await.expect("wal");
    cluster_runtime::lease::open_bucket(&js, &coord_name, 1)
        .await
        .expect("coord");
    cluster_runtime::lease::open_bucket(&js, &lease_name, 1)
        .await
        .expect("lease bucket");
    let timing = LeaseTiming::new(
        Duration::from_secs(1),
        Duration::from_millis(300),
        Duration::from_millis(800),
    )
    .expect("timing");

    // A: lease, fence and uploads all through the proxy.
    let a_lease_kv = js_a.get_key_value(&lease_name).await.expect("kv A");
    let a_key = LeaseKey::new(js_a.clone(), a_lease_kv, "leader", timing);
    let a_held = a_key
        .try_acquire(0, Bytes::from_static(b"a"))
        .await
        .expect("acquire A")
        .expect("A holds");
    let a_coord = js_a.get_key_value(&coord_name).await.expect("coord A");
    let a_bucket = WalBucket::open(&js_a, &wal).await.expect("bucket A");
    let a_db = dir.join(format!("a{n}.db"));
    let a_conn = open_db(&a_db);
    let mut ca = ReplicatorConfig::new(&a_db, a_bucket);
    ca.compaction = None;
    ca.fence = Some(FenceConfig::new(a_coord, a_held.epoch()));
    ca.validity = Some(a_held.validity());
    let a = Arc::new(Replicator::start(ca).await.expect("start A"));

    let mut acked = Vec::new();
    for id in 0..3i64 {
        a_conn
            .execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                (id, vec![7u8; 600]),
            )
            .expect("insert");
        a.notify();
        a.sync().await.expect("sync A");
        acked.push(id);
    }
    // Commits whose sync is in flight when A freezes.
    let takeover_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut pending = Vec::new();
    let spread = Duration::from_micros(100 * (n as u64 % 7));
    for id in 3..6i64 {
        a_conn
            .execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                (id, vec![9u8; 600]),
            )
            .expect("insert");
        a.notify();
        let r = Arc::clone(&a);
        let at = Arc::clone(&takeover_at);
        pending.push(tokio::spawn(async move {
            let result = r.sync().await;
            let after = at.lock().expect("lock").is_some_and(|t| Instant::now() > t);
            (id, result, after, Instant::now())
        }));
    }
    // Freeze `spread` after the last commit (a spin: timers are ms-grained).
    let t0 = Instant::now();
    while t0.elapsed() < spread {
        std::hint::spin_loop();
    }
    proxy.freeze(true);
    let frozen_at = Instant::now();

    // B: wins the lease once A's expires, then takes over.
    let lease_kv = js.get_key_value(&lease_name).await.expect("kv");
    let b_key = LeaseKey::new(js.clone(), lease_kv, "leader", timing);
    let b_held = loop {
        if let KeyState::Free { seq } = b_key.read().await.expect("read") {
            if let Some(h) = b_key
                .try_acquire(seq, Bytes::from_static(b"b"))
                .await
                .expect("acquire B")
            {
                break h;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    *takeover_at.lock().expect("lock") = Some(Instant::now());
    assert!(!a_held.is_valid(), "A still valid when B won");
    let coord = js.get_key_value(&coord_name).await.expect("coord");
    let bucket = WalBucket::open(&js, &wal).await.expect("bucket");
    // The first thing B does: take `wal.head` for its epoch.
    let fence = Fence::acquire(coord.clone(), HEAD_KEY, b_held.epoch())
        .await
        .expect("B takes wal.head");
    let head_at_takeover = fence.previous().map_or(0, |h| h.txid);
    let b_db = dir.join(format!("b{n}.db"));
    if matches!(thaw, Thaw::Win) {
        proxy.freeze(false);
    }
    let restored = restore_with(
        &bucket,
        &b_db,
        &RestoreOptions {
            target: None,
            overwrite: true,
        },
    )
    .await
    .expect("catch up");
    match thaw {
        Thaw::Win => {}
        Thaw::CatchUp => proxy.freeze(false),
        Thaw::CatchUpLate => {
            proxy.freeze(false);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    // Let A's held traffic reach the server before B starts shipping.
    let mut out = Outcome::default();
    for p in pending {
        let (id, result, after, at) = tokio::time::timeout(Duration::from_secs(15), p)
            .await
            .expect("A's sync resolves")
            .expect("join");
        let rel = if at > frozen_at {
            format!("+{:?}", at - frozen_at)
        } else {
            format!("-{:?}", frozen_at - at)
        };
        eprintln!(
            "  sync {id}: {} at {rel} from the freeze",
            if result.is_ok() { "ok" } else { "refused" }
        );
        match result {
            Ok(_) => {
                acked.push(id);
                if after {
                    out.acked_after_takeover += 1;
                }
            }
            Err(WalError::Fenced { .. }) => out.refused_fenced += 1,
            Err(WalError::Deposed { .. }) => out.refused_deposed += 1,
            Err(e) => panic!("A's sync failed otherwise: {e}"),
        }
    }
    let mut cb = ReplicatorConfig::new(&b_db, bucket.clone());
    cb.compaction = None;
    cb.validity = Some(b_held.validity());
    cb.known_position = Some(restored.txid);
    // Nothing A stored after B took wal.head lies beyond what it had
    // reserved before: its later reservations were refused.
    let a_max = bucket
        .list()
        .await
        .expect("list")
        .values()
        .flatten()
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0);
    assert!(
        a_max <= head_at_takeover.max(restored.txid),
        "A stored TXID {a_max} after B took wal.head at {head_at_takeover}"
    );
    let b = Replicator::start_fenced(cb, fence).await.expect("start B");
    {
        let b_conn = Connection::open(&b_db).expect("open b");
        b_conn
            .execute("INSERT INTO t (id, v) VALUES (1000, x'00')", [])
            .expect("insert b");
    }
    b.notify();
    b.sync().await.expect("sync B");

    let head: serde_json::Value =
        serde_json::from_slice(&coord.get(HEAD_KEY).await.expect("get").expect("head"))
            .expect("json");
    assert_eq!(head["epoch"], b_held.epoch(), "wal.head is not B's");

    let in_b = ids(&b_db);
    let check = dir.join(format!("check{n}.db"));
    restore_with(&bucket, &check, &RestoreOptions::default())
        .await
        .expect("restore");
    let in_bucket = ids(&check);
    assert_eq!(in_b, in_bucket, "bucket and B differ");
    out.lost = acked
        .iter()
        .copied()
        .filter(|id| !in_b.contains(id))
        .collect();
    eprintln!(
        "round {n} (thaw after {thaw:?}, freeze {spread:?} after the commits): acked {:?}, {} acked after takeover, refused {} fenced + {} deposed, lost {:?}",
        acked, out.acked_after_takeover, out.refused_fenced, out.refused_deposed, out.lost
    );
    let _ = b.stop().await;
    drop(a);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_syncs_of_a_deposed_primary_survive_a_takeover_it_resumes_into() {
    let server = support::start_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lost = Vec::new();
    let (mut acked_after, mut fenced, mut deposed) = (0, 0, 0);
    for n in 0..ROUNDS {
        let o = round(&server.url(), dir.path(), n).await;
        acked_after += o.acked_after_takeover;
        fenced += o.refused_fenced;
        deposed += o.refused_deposed;
        if !o.lost.is_empty() {
            lost.push((n, o.lost));
        }
    }
    eprintln!(
        "{ROUNDS} rounds: {acked_after} syncs acked by A after the takeover, refused {fenced} fenced + {deposed} deposed; rounds losing acked commits: {lost:?}"
    );
    assert!(
        lost.is_empty(),
        "acknowledged synced commits lost: {lost:?}"
    );
}
