//! The replicated-database API on in-process nodes against a real
//! nats-server and real SQLite files: `ctx.db()` only on the active,
//! `commit_synced`, `ctx.wal()` on both sides, manual snapshots, the data
//! directory for relative paths, and the replication metrics.

use std::time::Duration;

use cluster_runtime::app::{App, AppContext, Mode, Role};
use cluster_runtime::config::Config;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::platform::Platform;
use cluster_runtime::Error;
use cluster_testing::{NatsServer, ServerOptions};

const APP: &str = "ledger";
const WAIT: Duration = Duration::from_secs(20);

async fn start(url: &str, node: &str, dir: &std::path::Path) -> Platform {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = "t".into();
    c.health_addr = None;
    c.data_dir = Some(dir.join(node));
    let app = App::builder(APP)
        .mode(Mode::Singleton)
        .lease_ttl(Duration::from_secs(1))
        // Relative: under this node's data directory.
        .sqlite("db/ledger.db")
        .build()
        .expect("app");
    Platform::builder()
        .config(c)
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(app)
        .start()
        .await
        .expect("start")
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sum(ctx: &AppContext) -> i64 {
    ctx.db()
        .expect("db")
        .query_row("SELECT coalesce(sum(amount), 0) FROM entries", [], |r| {
            r.get(0)
        })
        .expect("sum")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_wal_and_snapshots_on_active_and_standby() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(&server.url(), "a", dir.path()).await;
    let ctx_a = a.app(APP).expect("ctx");
    until("a active", async || ctx_a.is_active().then_some(())).await;
    let b = start(&server.url(), "b", dir.path()).await;
    let ctx_b = b.app(APP).expect("ctx");
    until("b standby", async || {
        (ctx_b.role() == Role::Standby).then_some(())
    })
    .await;

    // The database lives under a's data directory.
    assert!(dir.path().join("a/db/ledger.db").exists());
    {
        let db = ctx_a.db().expect("db on the active");
        db.execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)")
            .expect("create");
        for amount in 1..=100 {
            db.execute("INSERT INTO entries (amount) VALUES (?1)", [amount])
                .expect("insert");
        }
        let txid = db.commit_synced().await.expect("synced");
        let pos = ctx_a.wal().position().await.expect("primary position");
        assert!(pos.primary && pos.txid >= txid, "{pos:?} vs {txid}");
    }
    // A standby has no writable database; it follows the bucket.
    assert!(matches!(ctx_b.db(), Err(Error::NotActive { .. })));
    let applied = ctx_b.wal().sync().await.expect("standby catch-up");
    let pos_b = ctx_b.wal().position().await.expect("replica position");
    assert!(!pos_b.primary && pos_b.txid == applied, "{pos_b:?}");
    assert!(dir.path().join("b/db/ledger.db-replica").exists());

    // Manual snapshot round trip.
    let snap = ctx_a.snapshots().create().await.expect("snapshot");
    assert_eq!(
        ctx_a.snapshots().latest().await.expect("latest"),
        Some(snap.clone())
    );
    let restored = dir.path().join("restored.db");
    ctx_b
        .snapshots()
        .restore(&snap.id, &restored)
        .await
        .expect("restore");
    let total: i64 = rusqlite::Connection::open(&restored)
        .expect("open")
        .query_row("SELECT sum(amount) FROM entries", [], |r| r.get(0))
        .expect("sum");
    assert_eq!(total, 5050);

    // Metrics: bytes shipped and the snapshot size are recorded.
    let metrics = until("replication metrics", async || {
        let text = a.metrics().render();
        let shipped = text
            .lines()
            .any(|l| l.starts_with("gc_wal_bytes_total{") && !l.ends_with(" 0"));
        shipped.then_some(text)
    })
    .await;
    assert!(
        metrics.contains(&format!(
            "gc_snapshot_size_bytes{{app=\"{APP}\",platform=\"t\"}} {}",
            snap.size
        )),
        "{metrics}"
    );
    assert!(metrics.contains("gc_replication_lag_seconds{"));

    // Hand over: b promotes its replica and holds every row.
    ctx_a.stepdown().await.expect("stepdown");
    until("b active", async || ctx_b.is_active().then_some(())).await;
    until("b serves the database", async || {
        ctx_b.db().ok().map(|_| ())
    })
    .await;
    assert_eq!(sum(&ctx_b), 5050);
    a.shutdown().await;
    b.shutdown().await;
}
