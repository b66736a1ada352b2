//! An app's replicated SQLite database on this node (`sqlite = "PATH"`):
//! the user API (`ctx.db()`, `ctx.wal()`, `ctx.snapshots()`) and the state
//! the failover steps drive (DESIGN §4.7, §4.8).
//!
//! On the active node a [`Replicator`] ships every commit of `PATH` to the
//! app's replica bucket `P_A_wal`, fenced by the election epoch; on standbys
//! a [`Restorer`] follows that bucket into `PATH-replica`. Becoming active
//! promotes the caught-up replica onto `PATH` and starts replicating from
//! its TXID; stepping down flushes and stops replication, then follows
//! again.
//!
//! Guarantees: a commit followed by [`Db::commit_synced`] (or
//! [`Wal::sync`]) returning `Ok` is stored in JetStream and survives any
//! failover (RPO 0), also when this node is paused or cut off and resumes
//! after a successor took over: `Ok` needs the lease still valid after the
//! file's put was acknowledged, and the successor takes `wal.head` and
//! catches up only after that validity ended (the argument is at
//! `wal::replicator::ack_gate`). Other commits are shipped within
//! milliseconds and can be lost only with the active node itself. A
//! deposed primary reserves nothing once a successor took `wal.head`
//! (compare-and-set) or once its own validity ended (local check); an
//! upload reserved before the takeover can still land after it, above
//! nothing the successor holds and never acknowledged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::lease::Validity;
use crate::observe::Metrics;
use crate::wal::bucket::WalBucket;
use crate::wal::fence::{Fence, Head, HEAD_KEY};
use crate::wal::replicator::{Replicator, ReplicatorConfig};
use crate::wal::restorer::{restore_with, RestoreOptions, Restorer};
use crate::wal::snapshots::{SnapshotInfo, Snapshots};
use crate::wal::WalError;

/// What standby-side following is doing.
enum Follower {
    Idle,
    /// Waiting for the bucket to hold a database (or retrying).
    Starting(JoinHandle<()>),
    Following(Restorer),
}

/// The replicated database of one app on this node.
pub(crate) struct Replicated {
    app: String,
    node: String,
    data_path: PathBuf,
    replica_path: PathBuf,
    js: jetstream::Context,
    wal_bucket: String,
    snapshots_bucket: String,
    replicas: usize,
    coord: jetstream::kv::Store,
    metrics: Metrics,
    replicator: Mutex<Option<Arc<Replicator>>>,
    follower: tokio::sync::Mutex<Follower>,
    /// The TXID the promoted database is at, for the replicator.
    promoted: Mutex<Option<u64>>,
    /// `wal.head`, taken over by this node's epoch at the start of becoming
    /// active and handed to the replicator when it starts.
    fence: Mutex<Option<Fence>>,
    /// Whether `ctx.db()` commits are accepted: only while replicating.
    /// Cleared before the final flush, so no commit lands after it.
    accepting: Arc<AtomicBool>,
}

impl std::fmt::Debug for Replicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("app", &self.app)
            .field("data_path", &self.data_path)
            .finish_non_exhaustive()
    }
}

/// How long a standby waits before retrying to follow an empty or
/// unreachable bucket.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

impl Replicated {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        app: &str,
        node: &str,
        data_path: PathBuf,
        js: jetstream::Context,
        names: &crate::naming::Names,
        replicas: usize,
        coord: jetstream::kv::Store,
        metrics: Metrics,
    ) -> Arc<Replicated> {
        let replica_path = crate::wal::promote::replica_path_for(&data_path);
        Arc::new(Replicated {
            app: app.to_owned(),
            node: node.to_owned(),
            data_path,
            replica_path,
            js,
            wal_bucket: names.app_wal_bucket(app),
            snapshots_bucket: names.app_snapshots_bucket(app),
            replicas,
            coord,
            metrics,
            replicator: Mutex::new(None),
            follower: tokio::sync::Mutex::new(Follower::Idle),
            promoted: Mutex::new(None),
            fence: Mutex::new(None),
            accepting: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Creates the database's directory (a node that never held the
    /// database has none yet).
    fn ensure_dir(&self) -> std::result::Result<(), WalError> {
        match self
            .data_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            Some(dir) => std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e)),
            None => Ok(()),
        }
    }

    fn replicator(&self) -> Option<Arc<Replicator>> {
        self.replicator.lock().ok().and_then(|r| r.clone())
    }

    /// Standby: follow the bucket into the replica file (idempotent). Until
    /// the bucket holds a database, retries in the background.
    pub(crate) async fn start_following(self: &Arc<Self>) {
        let mut follower = self.follower.lock().await;
        if !matches!(*follower, Follower::Idle) {
            return;
        }
        let this = Arc::clone(self);
        *follower = Follower::Starting(tokio::spawn(async move {
            loop {
                match this.open_follower().await {
                    Ok(restorer) => {
                        let mut follower = this.follower.lock().await;
                        if matches!(*follower, Follower::Starting(_)) {
                            *follower = Follower::Following(restorer);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(app = %this.app, error = %e, "not following the replica bucket yet");
                        tokio::time::sleep(FOLLOW_RETRY).await;
                    }
                }
            }
        }));
    }

    async fn open_follower(&self) -> std::result::Result<Restorer, WalError> {
        self.ensure_dir()?;
        let bucket = WalBucket::open(&self.js, &self.wal_bucket).await?;
        Restorer::start(bucket, self.replica_path.clone()).await
    }

    /// Stops following; with `catch_up`, first applies everything the
    /// bucket holds. Returns the replica's TXID if it was following.
    async fn stop_following(&self, catch_up: bool) -> std::result::Result<Option<u64>, WalError> {
        let mut follower = self.follower.lock().await;
        match std::mem::replace(&mut *follower, Follower::Idle) {
            Follower::Idle => Ok(None),
            Follower::Starting(task) => {
                task.abort();
                Ok(None)
            }
            Follower::Following(restorer) => {
                let caught_up = if catch_up {
                    restorer.catch_up().await.map(Some)
                } else {
                    Ok(None)
                };
                let position = restorer.stop().await;
                caught_up.map(|t| Some(t.unwrap_or(position.txid)))
            }
        }
    }

    /// Becoming active: final catch-up, stop following, promote the replica
    /// onto the data path. A node that never followed restores from the
    /// bucket first; an empty bucket means a new database (nothing to
    /// promote). Returns the TXID the data path is now at.
    pub(crate) async fn promote(&self) -> std::result::Result<Option<u64>, WalError> {
        self.ensure_dir()?;
        let mut txid = self.stop_following(true).await?;
        if txid.is_none() {
            match WalBucket::open(&self.js, &self.wal_bucket).await {
                Err(WalError::NoBucket(_)) => {}
                Err(e) => return Err(e),
                Ok(bucket) => {
                    let options = RestoreOptions {
                        target: None,
                        overwrite: true,
                    };
                    match restore_with(&bucket, &self.replica_path, &options).await {
                        Ok(info) => txid = Some(info.txid),
                        Err(WalError::Unavailable { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if let Some(at) = txid {
            crate::wal::promote::promote(&self.replica_path, &self.data_path).await?;
            tracing::info!(app = %self.app, txid = at, "replica promoted");
        }
        if let Ok(mut p) = self.promoted.lock() {
            *p = txid;
        }
        Ok(txid)
    }

    /// The first thing of becoming active, before catch-up and promotion:
    /// takes `wal.head` over for the lease's epoch (compare-and-set; refused
    /// if an equal or higher epoch holds it). From here on the previous
    /// primary's reservations fail, so nothing it stores later can hold
    /// TXIDs beyond what the catch-up that follows will see or what
    /// `wal.head` told us. Returns the previous primary's last reservation.
    pub(crate) async fn take_fence(
        &self,
        lease: &Validity,
    ) -> std::result::Result<Option<Head>, WalError> {
        if !lease.is_valid() {
            return Err(WalError::Deposed {
                epoch: lease.epoch(),
                what: "taking over wal.head",
            });
        }
        let fence = Fence::acquire(self.coord.clone(), HEAD_KEY, lease.epoch()).await?;
        let previous = fence.previous();
        tracing::info!(app = %self.app, epoch = lease.epoch(), ?previous, "wal.head taken over");
        if let Ok(mut f) = self.fence.lock() {
            *f = Some(fence);
        }
        Ok(previous)
    }

    /// Forgets a fence not handed to a replicator (activation undone).
    pub(crate) fn drop_fence(&self) {
        if let Ok(mut f) = self.fence.lock() {
            f.take();
        }
    }

    /// Starts shipping the data path's commits under the lease `lease`:
    /// with the fence [`take_fence`](Self::take_fence) took for its epoch
    /// (or takes it now), checking `lease` before every reservation and put
    /// and after every put's ack.
    pub(crate) async fn start_replicating(
        &self,
        lease: &Validity,
    ) -> std::result::Result<u64, WalError> {
        self.ensure_dir()?;
        let held = self
            .fence
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .filter(|f| f.epoch() == lease.epoch());
        let fence = match held {
            Some(f) => f,
            None => Fence::acquire(self.coord.clone(), HEAD_KEY, lease.epoch()).await?,
        };
        let bucket = WalBucket::open_or_create(&self.js, &self.wal_bucket, self.replicas).await?;
        let mut config = ReplicatorConfig::new(&self.data_path, bucket);
        config.validity = Some(lease.clone());
        config.known_position = self.promoted.lock().ok().and_then(|mut p| p.take());
        let replicator = Replicator::start_fenced(config, fence).await?;
        let txid = replicator.position().borrow().txid;
        if let Ok(mut r) = self.replicator.lock() {
            *r = Some(Arc::new(replicator));
        }
        self.accepting.store(true, Ordering::SeqCst);
        Ok(txid)
    }

    /// Stops shipping.
    ///
    /// With `flush` (graceful step-down): everything committed is stored
    /// first, bounded by the lease's validity — if it ends first (NATS slow
    /// or unreachable) this gives up with [`WalError::Deposed`] and the
    /// caller must take the lease-lost path.
    ///
    /// Without (lease lost): returns at once, waiting on nothing. A
    /// `commit_synced()` in flight fails with `Deposed`; no `Arc` is
    /// awaited (the last clone, dropped by that call, stops the workers).
    pub(crate) async fn stop_replicating(
        &self,
        flush: bool,
    ) -> std::result::Result<Option<u64>, WalError> {
        // From here on `ctx.db()` commits roll back.
        self.accepting.store(false, Ordering::SeqCst);
        self.drop_fence();
        let Some(replicator) = self.replicator.lock().ok().and_then(|mut r| r.take()) else {
            return Ok(None);
        };
        if !flush {
            replicator.abort();
            let txid = replicator.position().borrow().txid;
            return Ok(Some(txid));
        }
        // Wait for a commit already committing (a write lock is granted
        // only after it), so the final flush ships every commit this node
        // accepted; bounded by SQLite's busy timeout and the flush below by
        // the lease.
        if self.data_path.exists() {
            let path = self.data_path.clone();
            let wait = tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
                let conn = rusqlite::Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(2))?;
                conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            });
            tokio::select! {
                _ = wait => {}
                () = replicator.lease_ended() => {}
            }
        }
        replicator.finish().await.map(|p| Some(p.txid))
    }

    /// Keeps `gc_replication_lag_seconds` and `gc_wal_bytes_total` current.
    pub(crate) async fn report_metrics(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut shipped = 0u64;
        let mut last_replicator: Option<Weak<Replicator>> = None;
        loop {
            let lag = if let Some(r) = self.replicator() {
                let same = last_replicator
                    .as_ref()
                    .and_then(Weak::upgrade)
                    .is_some_and(|l| Arc::ptr_eq(&l, &r));
                if !same {
                    shipped = 0;
                    last_replicator = Some(Arc::downgrade(&r));
                }
                let total = r.stats().bytes_shipped;
                self.metrics
                    .add_wal_bytes(&self.app, total.saturating_sub(shipped));
                shipped = total;
                let p = *r.position().borrow();
                match (p.pending_frames, p.shipped_at) {
                    (0, _) | (_, None) => Duration::ZERO,
                    (_, Some(at)) => SystemTime::now().duration_since(at).unwrap_or_default(),
                }
            } else {
                match &*self.follower.lock().await {
                    Follower::Following(r) => r.lag(),
                    _ => Duration::ZERO,
                }
            };
            self.metrics.set_replication_lag(&self.app, &self.node, lag);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn snapshots(&self) -> std::result::Result<Snapshots, WalError> {
        Snapshots::open_or_create(&self.js, &self.snapshots_bucket, self.replicas).await
    }
}

/// A connection to the app's database on the active instance
/// ([`AppContext::db`](crate::app::AppContext::db)): a `rusqlite`
/// connection in WAL mode whose commits the replicator ships.
///
/// ```no_run
/// # async fn f(ctx: cluster_runtime::app::AppContext) -> cluster_runtime::Result<()> {
/// let db = ctx.db()?;
/// db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)", [])
///     .map_err(|e| cluster_runtime::Error::config(e.to_string()))?;
/// db.execute("INSERT INTO orders (item) VALUES (?1)", ["book"])
///     .map_err(|e| cluster_runtime::Error::config(e.to_string()))?;
/// // Returns once the commit is stored in JetStream: it survives failover.
/// db.commit_synced().await?;
/// # Ok(()) }
/// ```
pub struct Db {
    conn: rusqlite::Connection,
    replicator: Weak<Replicator>,
    app: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Db {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Db {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

impl Db {
    pub(crate) fn open(replicated: &Replicated) -> Result<Db> {
        let app = replicated.app.clone();
        let replicator = replicated
            .replicator()
            .ok_or_else(|| Error::NotActive { app: app.clone() })?;
        let sqlite = |e: rusqlite::Error| {
            Error::Wal(WalError::Sqlite {
                path: replicated.data_path.clone(),
                reason: e.to_string(),
            })
        };
        let mut conn = rusqlite::Connection::open(&replicated.data_path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Wal(WalError::Sqlite {
                path: replicated.data_path.clone(),
                reason: format!("journal_mode is {mode}; replication needs WAL"),
            }));
        }
        let weak = Arc::downgrade(&replicator);
        let hook = weak.clone();
        let accepting = Arc::clone(&replicated.accepting);
        // Ship at once instead of at the next WAL poll; once replication is
        // stopping (this node is stepping down), turn commits into
        // rollbacks: they would never be shipped.
        conn.commit_hook(Some(move || {
            if !accepting.load(Ordering::SeqCst) {
                return true;
            }
            if let Some(r) = hook.upgrade() {
                r.notify();
            }
            false
        }))
        .map_err(sqlite)?;
        Ok(Db {
            conn,
            replicator: weak,
            app,
        })
    }

    /// Returns once every transaction committed so far (on any connection)
    /// is stored in JetStream; yields the TXID stored. RPO 0 for those
    /// commits. Fails if this node stopped being the primary meanwhile.
    pub fn commit_synced(&self) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        let replicator = self.replicator.upgrade();
        let app = self.app.clone();
        async move {
            let r = replicator.ok_or(Error::NotActive { app })?;
            Ok(r.sync().await?)
        }
    }
}

/// Where the app's replication stands on this node
/// ([`AppContext::wal`](crate::app::AppContext::wal)).
#[derive(Debug, Clone)]
pub struct Wal {
    replicated: Option<Arc<Replicated>>,
}

/// A node's replication position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// The newest TXID stored in the bucket by this primary, or applied to
    /// this standby's replica.
    pub txid: u64,
    /// Whether this node is the primary (shipping) or a replica.
    pub primary: bool,
}

impl Wal {
    pub(crate) fn new(replicated: Option<Arc<Replicated>>) -> Wal {
        Wal { replicated }
    }

    /// The current position (`None`: no database configured, or a standby
    /// not following yet).
    pub async fn position(&self) -> Option<WalPosition> {
        let r = self.replicated.as_ref()?;
        if let Some(rep) = r.replicator() {
            return Some(WalPosition {
                txid: rep.position().borrow().txid,
                primary: true,
            });
        }
        match &*r.follower.lock().await {
            Follower::Following(f) => Some(WalPosition {
                txid: f.position().borrow().txid,
                primary: false,
            }),
            _ => None,
        }
    }

    /// Primary: how long the oldest unshipped commit has waited; replica:
    /// how far the replica trails the bucket.
    pub async fn lag(&self) -> Duration {
        let Some(r) = self.replicated.as_ref() else {
            return Duration::ZERO;
        };
        if let Some(rep) = r.replicator() {
            let p = *rep.position().borrow();
            return match (p.pending_frames, p.shipped_at) {
                (0, _) | (_, None) => Duration::ZERO,
                (_, Some(at)) => SystemTime::now().duration_since(at).unwrap_or_default(),
            };
        }
        match &*r.follower.lock().await {
            Follower::Following(f) => f.lag(),
            _ => Duration::ZERO,
        }
    }

    /// Primary: returns once every commit so far is stored in JetStream;
    /// replica: once everything the bucket holds is applied. Yields the TXID.
    pub async fn sync(&self) -> Result<u64> {
        let r = self
            .replicated
            .as_ref()
            .ok_or_else(|| Error::config("this app has no `sqlite` database"))?;
        if let Some(rep) = r.replicator() {
            return Ok(rep.sync().await?);
        }
        match &*r.follower.lock().await {
            Follower::Following(f) => Ok(f.catch_up().await?),
            _ => Err(Error::Wal(WalError::Stopped("replica follower"))),
        }
    }
}

/// Manual snapshots of the app's database in `P_A_snapshots`
/// ([`AppContext::snapshots`](crate::app::AppContext::snapshots)).
#[derive(Debug, Clone)]
pub struct AppSnapshots {
    replicated: Option<Arc<Replicated>>,
}

impl AppSnapshots {
    pub(crate) fn new(replicated: Option<Arc<Replicated>>) -> AppSnapshots {
        AppSnapshots { replicated }
    }

    fn replicated(&self) -> Result<&Arc<Replicated>> {
        self.replicated
            .as_ref()
            .ok_or_else(|| Error::config("this app has no `sqlite` database"))
    }

    /// Takes a consistent snapshot of the database (on the active node)
    /// and stores it; records `gc_snapshot_size_bytes`.
    pub async fn create(&self) -> Result<SnapshotInfo> {
        let r = self.replicated()?;
        let replicator = r
            .replicator()
            .ok_or_else(|| Error::NotActive { app: r.app.clone() })?;
        let txid = replicator.position().borrow().txid;
        let info = r
            .snapshots()
            .await?
            .create_at(&r.data_path, Some(txid))
            .await?;
        r.metrics.set_snapshot_size(&r.app, info.size);
        Ok(info)
    }

    /// The newest snapshot, if any.
    pub async fn latest(&self) -> Result<Option<SnapshotInfo>> {
        Ok(self.replicated()?.snapshots().await?.latest().await?)
    }

    /// Every snapshot, oldest first.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self.replicated()?.snapshots().await?.list().await?)
    }

    /// Writes snapshot `id` as a database file at `dest` (which must not
    /// exist), verified.
    pub async fn restore(
        &self,
        id: &str,
        dest: &Path,
    ) -> Result<crate::wal::restorer::RestoreInfo> {
        Ok(self
            .replicated()?
            .snapshots()
            .await?
            .restore(id, dest)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    //! Stopping replication with NATS unreachable (a SIGSTOPped
    //! nats-server), on real files: the lease-lost stop returns at once and
    //! fails the `commit_synced()` in flight; the graceful stop gives up at
    //! the end of the lease's validity.

    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::lease::{HeldLease, LeaseKey, LeaseTiming};
    use crate::nats_server::{NatsServer, ServerOptions};

    struct Active {
        server: NatsServer,
        replicated: Arc<Replicated>,
        held: HeldLease,
        _dir: tempfile::TempDir,
    }

    /// One node made active by hand: lease, fence, promotion (empty
    /// bucket), replication, one synced commit.
    async fn active(name: &str) -> Active {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("nats-server (scripts/test.sh installs it)");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        let names = crate::naming::Names::new("t").expect("names");
        let coord = crate::lease::open_bucket(&js, &names.app_coord_bucket(name), 1)
            .await
            .expect("coord");
        let leases = crate::lease::open_bucket(&js, &format!("t_{name}_lease"), 1)
            .await
            .expect("lease bucket");
        let timing = LeaseTiming::new(
            Duration::from_secs(1),
            Duration::from_millis(300),
            Duration::from_millis(800),
        )
        .expect("timing");
        let held = LeaseKey::new(js.clone(), leases, "leader", timing)
            .try_acquire(0, Bytes::from_static(b"n1"))
            .await
            .expect("acquire")
            .expect("held");
        let dir = tempfile::tempdir().expect("tempdir");
        let replicated = Replicated::new(
            name,
            "n1",
            dir.path().join("data.db"),
            js,
            &names,
            1,
            coord,
            Metrics::new("t").expect("metrics"),
        );
        let validity = held.validity();
        replicated.take_fence(&validity).await.expect("fence");
        replicated.promote().await.expect("promote");
        replicated
            .start_replicating(&validity)
            .await
            .expect("replicate");
        let db = Db::open(&replicated).expect("db");
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .expect("write");
        db.commit_synced().await.expect("first synced commit");
        Active {
            server,
            replicated,
            held,
            _dir: dir,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_lost_stop_returns_at_once_with_a_synced_commit_in_flight_and_nats_stopped() {
        let a = active("abort").await;
        let db = Db::open(&a.replicated).expect("db");
        a.server.pause().expect("SIGSTOP nats-server");
        db.execute("INSERT INTO t VALUES (2)", []).expect("write");
        let in_flight = tokio::spawn(db.commit_synced());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!in_flight.is_finished(), "the sync cannot complete");

        let t0 = Instant::now();
        let stopped =
            tokio::time::timeout(Duration::from_secs(5), a.replicated.stop_replicating(false))
                .await
                .expect("stop_replicating(false) returned");
        let took = t0.elapsed();
        let synced = tokio::time::timeout(Duration::from_secs(5), in_flight)
            .await
            .expect("commit_synced returned")
            .expect("join");
        let failed_after = t0.elapsed();
        eprintln!(
            "stop_replicating(false) with NATS stopped: returned {stopped:?} in {took:?}; \
             the commit_synced in flight failed after {failed_after:?}: {synced:?}"
        );
        assert!(stopped.is_ok());
        assert!(
            matches!(synced, Err(Error::Wal(WalError::Deposed { .. }))),
            "{synced:?}"
        );
        a.server.resume().expect("SIGCONT");
        drop(a.held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_stop_gives_up_when_the_lease_validity_ends_with_nats_stopped() {
        let a = active("graceful").await;
        let db = Db::open(&a.replicated).expect("db");
        a.server.pause().expect("SIGSTOP nats-server");
        db.execute("INSERT INTO t VALUES (2)", []).expect("write");
        let validity = a.held.validity();
        let t0 = Instant::now();
        let stopped =
            tokio::time::timeout(Duration::from_secs(10), a.replicated.stop_replicating(true))
                .await
                .expect("stop_replicating(true) returned");
        let took = t0.elapsed();
        let late = tokio::time::Instant::now().saturating_duration_since(validity.valid_until());
        eprintln!(
            "stop_replicating(true) with NATS stopped: {stopped:?} after {took:?} \
             ({late:?} after the validity ended)"
        );
        assert!(!validity.is_valid(), "gave up before the validity ended");
        match stopped {
            Err(WalError::Deposed { what, .. }) => assert!(what.contains("validity"), "{what}"),
            other => panic!("expected Deposed at the end of validity, got {other:?}"),
        }
        assert!(a.replicated.stop_replicating(false).await.is_ok());
        a.server.resume().expect("SIGCONT");
    }
}
