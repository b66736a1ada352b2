//! The primary side of replication: follow the SQLite WAL and ship every
//! commit to the replica bucket as an L0 LTX file within milliseconds.
//!
//! # Model
//!
//! Two workers share one accumulating *batch*:
//!
//! - the **capture thread** owns three SQLite connections to the database
//!   and the `-wal` file. It wakes on [`Replicator::notify`] (the app's
//!   commit hook) or every `poll_interval` (two small reads: the WAL header
//!   and the next frame header), reads newly committed transactions
//!   ([`wal_file`](super::wal_file)), numbers each commit with the next TXID
//!   and merges its pages into the batch;
//! - the **uploader task** takes the whole batch whenever it is idle,
//!   reserves its TXIDs ([`fence`](super::fence)) and stores it as one L0
//!   file. While an upload is in flight, later commits accumulate into the
//!   next file, so under load several commits share a file.
//!
//! # Guarantees
//!
//! - TXIDs are contiguous from 1, the first file is a full image; every
//!   file holds the newest version of each page its commits changed and the
//!   database size after its last commit.
//! - One of our connections always holds a read transaction. A read
//!   transaction either pins a WAL read mark (no checkpoint may copy frames
//!   past it and the WAL cannot restart) or, taken when the WAL was fully
//!   checkpointed, blocks checkpoints outright. We only move to a newer read
//!   transaction right after reading the WAL to its end, so the WAL can
//!   restart only over frames we already hold. We checkpoint ourselves
//!   (PASSIVE once the WAL holds `checkpoint_pages` frames and everything is
//!   shipped) and then let the next writer restart the WAL.
//! - A WAL generation change we cannot prove safe (salt-1 not incremented,
//!   or not under a read transaction taken after a full read) is answered
//!   with a full image as the next TXID: pages are never lost silently.
//! - On start the position is recovered from the bucket (max TXID over all
//!   levels). We continue from the WAL offset the last L0 file records when
//!   the WAL still holds that generation; with `known_position` equal to the
//!   bucket's maximum we continue without an image; otherwise we ship a full
//!   image as the next TXID.
//! - With fencing, no file is written without a successful reservation; a
//!   deposed primary stops with [`WalError::Fenced`].
//! - With a lease [`Validity`], the uploader checks it before each
//!   reservation and before each put, and a stored file counts as shipped
//!   (advances [`Position::txid`], so `sync()` returns) only if the
//!   validity still holds *after* the put was acknowledged — the ack gate,
//!   argued at `ack_gate`. Once it fails the replicator stops with
//!   [`WalError::Deposed`].
//! - [`Replicator::abort`] (lease lost) returns at once and makes every
//!   `sync()` in flight fail with `Deposed`, without waiting on NATS;
//!   [`Replicator::finish`] (graceful) gives up when the validity ends.
//!
//! ```no_run
//! # async fn demo(js: async_nats::jetstream::Context) -> Result<(), cluster_runtime::wal::WalError> {
//! use cluster_runtime::wal::bucket::WalBucket;
//! use cluster_runtime::wal::replicator::{Replicator, ReplicatorConfig};
//!
//! let bucket = WalBucket::open_or_create(&js, "prod_orders_wal", 1).await?;
//! let replicator = Replicator::start(ReplicatorConfig::new("orders.db", bucket)).await?;
//! // ... after a commit on any connection:
//! replicator.notify();
//! let txid = replicator.sync().await?; // the commit is stored in JetStream
//! let position = replicator.stop().await?;
//! assert!(position.txid >= txid);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::{oneshot, watch, Notify};

use super::bucket::{WalBucket, SNAPSHOT_LEVEL};
use super::compact::{CompactionConfig, Compactor};
use super::fence::{Fence, HEAD_KEY};
use super::ltx::{self, Header, FLAG_NO_CHECKSUM};
use super::wal_file::{read_header, WalCommit, WalCursor, WalHeader};
use super::WalError;
use crate::lease::Validity;

/// Fencing settings: the coordination bucket, key and our epoch.
#[derive(Clone)]
pub struct FenceConfig {
    /// The app's coordination KV bucket (`P_A_coord`).
    pub kv: kv::Store,
    /// The key holding `{epoch, txid}`; normally [`HEAD_KEY`].
    pub key: String,
    /// Our epoch from the election (fencing token).
    pub epoch: u64,
}

impl FenceConfig {
    /// Fencing on [`HEAD_KEY`] with `epoch`.
    pub fn new(kv: kv::Store, epoch: u64) -> Self {
        FenceConfig {
            kv,
            key: HEAD_KEY.to_owned(),
            epoch,
        }
    }
}

impl std::fmt::Debug for FenceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceConfig")
            .field("key", &self.key)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// How to run a [`Replicator`].
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// The SQLite database file (WAL mode; switched to it if not).
    pub db_path: PathBuf,
    /// Where files go.
    pub bucket: WalBucket,
    /// TXID reservation; `None` for a standalone replicator (or when the
    /// fence is taken beforehand: [`Replicator::start_fenced`]).
    pub fence: Option<FenceConfig>,
    /// The lease this primary ships under: checked before each
    /// reservation, before each put and after each put's ack. `None`: no
    /// lease (standalone replication).
    pub validity: Option<Validity>,
    /// The TXID the local database file is known to be at (e.g. a promoted
    /// replica): continue at the next one without a full image.
    pub known_position: Option<u64>,
    /// How often the WAL is checked for new frames without a `notify`.
    pub poll_interval: Duration,
    /// WAL frames after which we checkpoint (PASSIVE) and let it restart.
    pub checkpoint_pages: u64,
    /// Compaction, snapshots and retention; `None` to leave the bucket's
    /// higher levels alone.
    pub compaction: Option<CompactionConfig>,
}

impl ReplicatorConfig {
    /// Defaults: 2 ms polling, checkpoint at 1000 frames, default
    /// compaction, no fencing.
    pub fn new(db_path: impl Into<PathBuf>, bucket: WalBucket) -> Self {
        ReplicatorConfig {
            db_path: db_path.into(),
            bucket,
            fence: None,
            validity: None,
            known_position: None,
            poll_interval: Duration::from_millis(2),
            checkpoint_pages: 1000,
            compaction: Some(CompactionConfig::default()),
        }
    }
}

/// Where replication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Highest TXID stored in the bucket.
    pub txid: u64,
    /// When that file was acknowledged.
    pub shipped_at: Option<SystemTime>,
    /// Highest TXID read from the WAL (>= `txid`).
    pub captured_txid: u64,
    /// WAL frames read but not yet stored.
    pub pending_frames: u64,
    /// Page bytes read but not yet stored.
    pub pending_bytes: u64,
}

/// Counters for metrics (`gc_wal_bytes_total`, files shipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicationStats {
    /// Bytes of LTX files stored (compressed, as uploaded).
    pub bytes_shipped: u64,
    /// Uncompressed page bytes shipped.
    pub page_bytes_shipped: u64,
    /// L0 files stored.
    pub files_shipped: u64,
    /// Full images shipped (start-up and recoveries).
    pub full_images: u64,
    /// Checkpoints run by the replicator.
    pub checkpoints: u64,
}

/// The WAL bytes a batch came from (recorded in the LTX header so a
/// restarted replicator can continue from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    salts: (u32, u32),
    offset: u64,
    end: u64,
}

/// Commits read but not yet taken by the uploader.
#[derive(Debug, Default)]
struct Batch {
    pages: BTreeMap<u32, Vec<u8>>,
    page_size: u32,
    commit: u32,
    min_txid: u64,
    max_txid: u64,
    segment: Option<Segment>,
    /// Also store the result as a level-9 snapshot (a full image after a
    /// possible TXID gap, so a restore never needs what is missing).
    snapshot: bool,
    full_image: bool,
    frames: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.max_txid == 0
    }

    fn push(&mut self, txid: u64, commit: WalCommit, page_size: u32, salts: (u32, u32)) {
        if self.is_empty() {
            self.min_txid = txid;
        }
        self.max_txid = txid;
        self.page_size = page_size;
        self.commit = commit.db_size;
        self.frames += commit.frames;
        self.pages.retain(|&p, _| p <= commit.db_size);
        self.pages.extend(commit.pages);
        let seg = Segment {
            salts,
            offset: commit.offset,
            end: commit.end,
        };
        self.segment = Some(match self.segment {
            Some(s) if s.salts == salts && s.end == seg.offset => Segment { end: seg.end, ..s },
            _ => seg,
        });
    }

    fn push_full(
        &mut self,
        txid: u64,
        pages: BTreeMap<u32, Vec<u8>>,
        commit: u32,
        page_size: u32,
        segment: Option<Segment>,
        snapshot: bool,
    ) {
        if self.is_empty() {
            self.min_txid = txid;
        }
        self.max_txid = txid;
        self.page_size = page_size;
        self.commit = commit;
        self.frames += pages.len() as u64;
        self.pages = pages;
        self.segment = segment;
        self.snapshot |= snapshot;
        self.full_image = true;
    }

    fn page_bytes(&self) -> u64 {
        self.pages.len() as u64 * u64::from(self.page_size)
    }
}

enum Cmd {
    Notify,
    /// Read the WAL to its end; reply with the highest TXID captured.
    Capture(oneshot::Sender<Result<u64, WalError>>),
    Exit,
}

struct Shared {
    bucket: WalBucket,
    batch: Mutex<Batch>,
    wake_uploader: Notify,
    position: watch::Sender<Position>,
    failure: Mutex<Option<WalError>>,
    failed: AtomicBool,
    /// Set (once) by `fail`: wakes everything that waits, on NATS or not.
    halted: watch::Sender<bool>,
    stopping: AtomicBool,
    /// The lease we ship under, and its epoch (0 without fencing).
    validity: Option<Validity>,
    epoch: u64,
    notified: AtomicBool,
    bytes_shipped: AtomicU64,
    page_bytes_shipped: AtomicU64,
    files_shipped: AtomicU64,
    full_images: AtomicU64,
    checkpoints: AtomicU64,
}

impl Shared {
    fn fail(&self, e: WalError) {
        tracing::error!(bucket = %self.bucket.name(), error = %e, "replication stopped");
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.halted.send_replace(true);
        // Wake every waiter of the position so they see the failure.
        self.position.send_modify(|_| {});
        self.wake_uploader.notify_one();
    }

    /// `Err(Deposed)` once the lease we ship under is no longer valid.
    fn check_valid(&self, what: &'static str) -> Result<(), WalError> {
        match &self.validity {
            Some(v) if !v.is_valid() => Err(WalError::Deposed {
                epoch: self.epoch,
                what,
            }),
            _ => Ok(()),
        }
    }

    /// Resolves when the replicator failed or was aborted.
    async fn halted(&self) {
        let mut rx = self.halted.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Resolves when the lease's validity has ended (never without one).
    async fn validity_ended(&self) {
        match &self.validity {
            Some(v) => validity_ended(v).await,
            None => std::future::pending().await,
        }
    }

    fn error(&self) -> Option<WalError> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.as_ref().map(|e| match e {
            WalError::Fenced { ours, current } => WalError::Fenced {
                ours: *ours,
                current: *current,
            },
            WalError::Stopped(what) => WalError::Stopped(what),
            WalError::Deposed { epoch, what } => WalError::Deposed {
                epoch: *epoch,
                what,
            },
            other => WalError::Nats {
                bucket: self.bucket.name().to_owned(),
                action: "replicate".to_owned(),
                reason: other.to_string(),
            },
        })
    }

    fn lock_batch(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves once `v` is no longer valid (deadline passed or marked lost);
/// re-reads it at least every 20 ms, as renewals move the deadline and a
/// loss does not.
pub(crate) async fn validity_ended(v: &Validity) {
    while v.is_valid() {
        let next = tokio::time::Instant::now() + Duration::from_millis(20);
        tokio::time::sleep_until(v.valid_until().min(next)).await;
    }
}

/// A running primary replicator; see the module docs.
pub struct Replicator {
    shared: Arc<Shared>,
    cmd: Mutex<std_mpsc::Sender<Cmd>>,
    capture: Mutex<Option<std::thread::JoinHandle<()>>>,
    uploader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    compactor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    position: watch::Receiver<Position>,
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("bucket", &self.shared.bucket.name())
            .field("position", &*self.position.borrow())
            .finish_non_exhaustive()
    }
}

/// Where the capture thread starts.
#[derive(Debug, Clone, Copy)]
enum Resume {
    /// Ship a full image as `next_txid` (TXID 1 on an empty bucket).
    FullImage { snapshot: bool },
    /// Everything in the database and WAL now is already shipped.
    AtWalEnd,
    /// The bucket ends where this WAL generation's commit ending at `end` is.
    AtWalOffset { salts: (u32, u32), end: u64 },
}

/// How long a new primary waits for an upload its predecessor reserved.
const RESERVED_UPLOAD_WAIT: Duration = Duration::from_millis(200);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Replicator {
    /// Recovers the position from the bucket (and `wal.head` with fencing),
    /// opens the database and starts shipping. Fails with
    /// [`WalError::Fenced`] when an equal or higher epoch holds `wal.head`.
    pub async fn start(config: ReplicatorConfig) -> Result<Replicator, WalError> {
        let fence = match &config.fence {
            Some(fc) => Some(Fence::acquire(fc.kv.clone(), &fc.key, fc.epoch).await?),
            None => None,
        };
        Self::start_inner(config, fence).await
    }

    /// Like [`start`](Self::start), with `wal.head` already taken over by
    /// `fence` (a new primary takes it before its catch-up, so nothing the
    /// predecessor reserves afterwards can land unnoticed). `config.fence`
    /// is ignored.
    pub async fn start_fenced(
        config: ReplicatorConfig,
        fence: Fence,
    ) -> Result<Replicator, WalError> {
        Self::start_inner(config, Some(fence)).await
    }

    async fn start_inner(
        config: ReplicatorConfig,
        fence: Option<Fence>,
    ) -> Result<Replicator, WalError> {
        let bucket = config.bucket.clone();
        let head_txid = fence
            .as_ref()
            .and_then(Fence::previous)
            .map_or(0, |h| h.txid);
        let epoch = fence.as_ref().map_or(0, Fence::epoch);
        if let Some(v) = &config.validity {
            if !v.is_valid() {
                return Err(WalError::Deposed {
                    epoch: v.epoch(),
                    what: "starting replication",
                });
            }
        }
        let mut bucket_max = max_txid(&bucket).await?;
        if head_txid > bucket_max {
            // A previous primary reserved TXIDs it may still be uploading:
            // give an upload already in flight a moment to land so we do
            // not leave a gap. Only a put on the wire can still arrive (a
            // primary stops shipping at its lease deadline, a killed one
            // never ships), so the wait is short: it sits on the failover
            // path (it was 2 s, ~10% of crash failovers paid it in
            // `scripts/bench.sh failover-full`). A gap it misses is closed
            // by the full image and snapshot below.
            let deadline = Instant::now() + RESERVED_UPLOAD_WAIT;
            while bucket_max < head_txid && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                bucket_max = max_txid(&bucket).await?;
            }
        }
        let last = bucket_max.max(head_txid);
        let resume = if last == 0 {
            Resume::FullImage { snapshot: false }
        } else if head_txid > bucket_max {
            tracing::warn!(
                bucket = %bucket.name(), head_txid, bucket_max,
                "reserved TXIDs never arrived; shipping a full image and a snapshot"
            );
            Resume::FullImage { snapshot: true }
        } else if let Some(known) = config.known_position {
            if known == last {
                Resume::AtWalEnd
            } else {
                tracing::warn!(
                    bucket = %bucket.name(), known, bucket_max = last,
                    "local database is not at the bucket's position; shipping a full image"
                );
                Resume::FullImage { snapshot: false }
            }
        } else {
            match last_wal_segment(&bucket, last).await? {
                Some((salts, end)) => Resume::AtWalOffset { salts, end },
                None => Resume::FullImage { snapshot: false },
            }
        };
        let next_txid = last + 1;

        let (position_tx, position_rx) = watch::channel(Position {
            txid: last,
            shipped_at: None,
            captured_txid: last,
            pending_frames: 0,
            pending_bytes: 0,
        });
        let shared = Arc::new(Shared {
            bucket: bucket.clone(),
            batch: Mutex::new(Batch::default()),
            wake_uploader: Notify::new(),
            position: position_tx,
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            halted: watch::channel(false).0,
            stopping: AtomicBool::new(false),
            validity: config.validity.clone(),
            epoch: config.validity.as_ref().map_or(epoch, Validity::epoch),
            notified: AtomicBool::new(false),
            bytes_shipped: AtomicU64::new(0),
            page_bytes_shipped: AtomicU64::new(0),
            files_shipped: AtomicU64::new(0),
            full_images: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
        });

        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let capture_shared = shared.clone();
        let db_path = config.db_path.clone();
        let poll = config.poll_interval;
        let checkpoint_pages = config.checkpoint_pages.max(1);
        let capture = std::thread::Builder::new()
            .name("wal-capture".into())
            .spawn(move || {
                match Capture::open(
                    &db_path,
                    capture_shared.clone(),
                    next_txid,
                    resume,
                    checkpoint_pages,
                ) {
                    Ok(mut capture) => {
                        let _ = ready_tx.send(Ok(()));
                        capture.run(&cmd_rx, poll);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| WalError::io(&config.db_path, e))?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = capture.join();
                return Err(e);
            }
            Err(_) => return Err(WalError::Stopped("WAL capture thread")),
        }

        let uploader = tokio::spawn(upload_loop(shared.clone(), fence));
        let compactor = config.compaction.clone().map(|cc| {
            let compactor = Compactor::new(bucket.clone(), cc);
            let shared = shared.clone();
            tokio::spawn(async move {
                // A deposed primary stops compacting too (its compactions
                // only merge files already stored, but a new primary owns
                // the bucket's retention from now on).
                let failed = move || {
                    shared.failed.load(Ordering::SeqCst)
                        || shared.stopping.load(Ordering::SeqCst)
                        || shared.check_valid("compaction").is_err()
                };
                compactor.run(failed).await;
            })
        });
        Ok(Replicator {
            shared,
            cmd: Mutex::new(cmd_tx),
            capture: Mutex::new(Some(capture)),
            uploader: Mutex::new(Some(uploader)),
            compactor: Mutex::new(compactor),
            position: position_rx,
        })
    }

    /// Tells the replicator a commit just happened (cheap; call it from a
    /// commit hook). Without it, the WAL is still polled.
    pub fn notify(&self) {
        if !self.shared.notified.swap(true, Ordering::AcqRel) {
            self.send(Cmd::Notify);
        }
    }

    fn send(&self, cmd: Cmd) -> bool {
        let tx = self.cmd.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(cmd).is_ok()
    }

    fn stopped_error(&self) -> WalError {
        self.shared
            .error()
            .unwrap_or(WalError::Stopped("replicator"))
    }

    /// Returns once every transaction committed before the call is stored
    /// in the bucket (and acknowledged while the lease was valid: the ack
    /// gate); yields the TXID stored. Fails at once when the replicator
    /// fails or is aborted, whatever NATS is doing.
    pub async fn sync(&self) -> Result<u64, WalError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Cmd::Capture(tx)) {
            return Err(self.stopped_error());
        }
        let target = tokio::select! {
            r = rx => match r {
                Ok(r) => r?,
                Err(_) => return Err(self.stopped_error()),
            },
            () = self.shared.halted() => return Err(self.stopped_error()),
        };
        self.wait_shipped(target).await
    }

    async fn wait_shipped(&self, target: u64) -> Result<u64, WalError> {
        let mut rx = self.position.clone();
        loop {
            if let Some(e) = self.shared.error() {
                return Err(e);
            }
            let txid = rx.borrow_and_update().txid;
            if txid >= target {
                return Ok(txid);
            }
            if rx.changed().await.is_err() {
                return Err(WalError::Stopped("replicator"));
            }
        }
    }

    /// The current position; changes after every stored file.
    pub fn position(&self) -> watch::Receiver<Position> {
        self.position.clone()
    }

    /// Counters since start.
    pub fn stats(&self) -> ReplicationStats {
        let s = &self.shared;
        ReplicationStats {
            bytes_shipped: s.bytes_shipped.load(Ordering::Relaxed),
            page_bytes_shipped: s.page_bytes_shipped.load(Ordering::Relaxed),
            files_shipped: s.files_shipped.load(Ordering::Relaxed),
            full_images: s.full_images.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// The first error that stopped replication, if any (e.g. `Fenced`).
    pub fn error(&self) -> Option<WalError> {
        self.shared.error()
    }

    /// Ships everything committed, stops, and releases the read
    /// transaction. Returns the final position, or the error that stopped
    /// replication earlier. See [`finish`](Self::finish).
    pub async fn stop(self) -> Result<Position, WalError> {
        self.finish().await
    }

    /// Graceful stop, bounded by the lease: ships everything committed,
    /// then stops the workers and releases the read transaction. If the
    /// lease's validity ends first (NATS slow or unreachable), gives up —
    /// aborts as [`abort`](Self::abort) does — and returns
    /// [`WalError::Deposed`]; the caller then takes the lease-lost path.
    /// Without a lease it waits as long as the upload keeps retrying.
    pub async fn finish(&self) -> Result<Position, WalError> {
        let flushed = if let Some(e) = self.shared.error() {
            Err(e)
        } else {
            tokio::select! {
                r = self.sync() => r,
                () = self.shared.validity_ended() => Err(WalError::Deposed {
                    epoch: self.shared.epoch,
                    what: "the final flush was not stored before the lease's validity ended",
                }),
            }
        };
        if let Err(e) = flushed {
            self.shared.fail(e);
            let e = self.stopped_error();
            self.abort_workers();
            return Err(e);
        }
        // Everything is stored: the uploader exits on an empty batch.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_uploader.notify_one();
        if let Some(mut uploader) = take(&self.uploader) {
            tokio::select! {
                _ = &mut uploader => {}
                () = self.shared.validity_ended() => {
                    uploader.abort();
                    self.shared.fail(WalError::Deposed {
                        epoch: self.shared.epoch,
                        what: "the final flush was not stored before the lease's validity ended",
                    });
                }
            }
        }
        if let Some(compactor) = take(&self.compactor) {
            compactor.abort();
            let _ = compactor.await;
        }
        self.send(Cmd::Exit);
        if let Some(capture) = take(&self.capture) {
            let _ = tokio::task::spawn_blocking(move || capture.join()).await;
        }
        if let Some(e) = self.shared.error() {
            return Err(e);
        }
        let position = *self.position.borrow();
        Ok(position)
    }

    /// Resolves when the lease this replicator ships under has ended
    /// (never without a lease).
    pub(crate) async fn lease_ended(&self) {
        self.shared.validity_ended().await;
    }

    /// Lease lost: stops at once without waiting on NATS. Every `sync()`
    /// in flight (and later) fails with [`WalError::Deposed`]; an upload in
    /// flight is abandoned (it may still land — the new primary's catch-up
    /// or full image covers it — but it is never acknowledged). The capture
    /// thread exits on its own and releases the read transaction.
    pub fn abort(&self) {
        self.shared.fail(WalError::Deposed {
            epoch: self.shared.epoch,
            what: "replication aborted: the lease was lost",
        });
        self.abort_workers();
    }

    fn abort_workers(&self) {
        if let Some(u) = take(&self.uploader) {
            u.abort();
        }
        if let Some(c) = take(&self.compactor) {
            c.abort();
        }
        self.send(Cmd::Exit);
        // The capture thread is not joined: it sees `Exit` (or `failed`)
        // within one poll interval and ends its read transaction itself.
        drop(take(&self.capture));
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        // Dropped without stop(): stop the workers; the thread releases
        // the read transaction when it sees Exit. The uploader drains the
        // batch (bounded by the lease's validity, if any) and exits.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_uploader.notify_one();
        if let Some(c) = take(&self.compactor) {
            c.abort();
        }
        self.send(Cmd::Exit);
    }
}

/// Highest TXID in any level of the bucket.
async fn max_txid(bucket: &WalBucket) -> Result<u64, WalError> {
    Ok(bucket
        .list()
        .await?
        .values()
        .flatten()
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0))
}

/// The WAL generation and end offset the L0 file ending at `txid` records.
async fn last_wal_segment(
    bucket: &WalBucket,
    txid: u64,
) -> Result<Option<((u32, u32), u64)>, WalError> {
    let Some(file) = bucket
        .list_level(0)
        .await?
        .into_iter()
        .find(|f| f.max_txid == txid)
    else {
        return Ok(None);
    };
    let bytes = bucket.get(&file).await?;
    let h = ltx::decode_header(&bytes)?;
    if h.wal_size <= 0 || h.wal_offset <= 0 {
        return Ok(None);
    }
    let end = u64::try_from(h.wal_offset + h.wal_size).unwrap_or(0);
    Ok(Some(((h.wal_salt1, h.wal_salt2), end)))
}

// ---------------------------------------------------------------- capture

struct Capture {
    db_path: PathBuf,
    wal_path: PathBuf,
    /// Runs our checkpoints; never inside a transaction.
    ck: Connection,
    /// Two readers; `readers[active]` holds the read transaction.
    readers: [Connection; 2],
    active: usize,
    wal: Option<File>,
    /// Position in the current WAL generation; `None` while no WAL content
    /// has been seen (then the database file alone is what is shipped).
    cursor: Option<WalCursor>,
    next_txid: u64,
    /// The read transaction we hold was taken after reading the WAL to its
    /// end: a WAL restart seen now overwrote only frames we hold.
    safe_restart: bool,
    need_full_image: bool,
    full_image_snapshot: bool,
    shared: Arc<Shared>,
    checkpoint_pages: u64,
    last_checkpoint: Option<Instant>,
}

fn sqlite_err(path: &Path, e: impl std::fmt::Display) -> WalError {
    WalError::Sqlite {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn wal_path_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

impl Capture {
    fn open(
        db_path: &Path,
        shared: Arc<Shared>,
        next_txid: u64,
        resume: Resume,
        checkpoint_pages: u64,
    ) -> Result<Capture, WalError> {
        let open = || -> Result<Connection, WalError> {
            let conn = Connection::open(db_path).map_err(|e| sqlite_err(db_path, e))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| sqlite_err(db_path, e))?;
            Ok(conn)
        };
        let ck = open()?;
        // `ck` blocks writers briefly before a WAL restart; never wait long
        // for the lock (we retry on a later round).
        ck.busy_timeout(Duration::from_millis(100))
            .map_err(|e| sqlite_err(db_path, e))?;
        let mode: String = ck
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sqlite_err(db_path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(sqlite_err(
                db_path,
                format!("cannot switch to WAL mode (journal_mode is {mode})"),
            ));
        }
        let readers = [open()?, open()?];
        let mut c = Capture {
            db_path: db_path.to_owned(),
            wal_path: wal_path_of(db_path),
            ck,
            readers,
            active: 0,
            wal: None,
            cursor: None,
            next_txid,
            safe_restart: false,
            need_full_image: false,
            full_image_snapshot: false,
            shared,
            checkpoint_pages,
            last_checkpoint: None,
        };
        c.begin_read(0)?;
        c.open_wal()?;
        match resume {
            Resume::FullImage { snapshot } => {
                c.need_full_image = true;
                c.full_image_snapshot = snapshot;
            }
            Resume::AtWalEnd => {
                if let Some((mut file, header)) = c.wal_header()? {
                    let mut cursor = WalCursor::new(header);
                    cursor.read_commits(&mut file, &c.wal_path)?;
                    c.cursor = Some(cursor);
                }
            }
            Resume::AtWalOffset { salts, end } => {
                let mut resumed = false;
                if let Some((mut file, header)) = c.wal_header()? {
                    if header.salts() == salts {
                        let mut cursor = WalCursor::new(header);
                        let commits = cursor.read_commits(&mut file, &c.wal_path)?;
                        if let Some(i) = commits.iter().position(|t| t.end == end) {
                            let later: Vec<_> = commits.into_iter().skip(i + 1).collect();
                            tracing::info!(
                                txid = c.next_txid - 1,
                                unshipped = later.len(),
                                "resuming in the WAL where the bucket ends"
                            );
                            c.cursor = Some(cursor);
                            c.push_commits(later, header);
                            resumed = true;
                        }
                    }
                }
                if !resumed {
                    tracing::info!(
                        db = %c.db_path.display(),
                        "cannot prove the database is at the bucket's position; shipping a full image"
                    );
                    c.need_full_image = true;
                }
            }
        }
        c.capture()?;
        if !c.need_full_image {
            c.swap()?;
        }
        Ok(c)
    }

    fn begin_read(&mut self, i: usize) -> Result<(), WalError> {
        self.readers[i]
            .execute_batch("BEGIN; SELECT COUNT(*) FROM sqlite_master;")
            .map_err(|e| sqlite_err(&self.db_path, e))?;
        self.active = i;
        Ok(())
    }

    /// Takes a fresh read transaction on the other reader, then ends the
    /// old one: a read transaction is held at every instant. Call only
    /// right after reading the WAL to its end.
    fn swap(&mut self) -> Result<(), WalError> {
        let old = self.active;
        self.begin_read(1 - old)?;
        self.readers[old]
            .execute_batch("COMMIT")
            .map_err(|e| sqlite_err(&self.db_path, e))?;
        self.safe_restart = true;
        Ok(())
    }

    fn open_wal(&mut self) -> Result<(), WalError> {
        if self.wal.is_none() {
            match File::open(&self.wal_path) {
                Ok(f) => self.wal = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(&self.wal_path, e)),
            }
        }
        Ok(())
    }

    /// The WAL file (a new handle) and its header, if it has a valid one.
    fn wal_header(&mut self) -> Result<Option<(File, WalHeader)>, WalError> {
        self.open_wal()?;
        let Some(file) = &self.wal else {
            return Ok(None);
        };
        let mut file = file
            .try_clone()
            .map_err(|e| WalError::io(&self.wal_path, e))?;
        Ok(read_header(&mut file, &self.wal_path)?.map(|h| (file, h)))
    }

    fn push_commits(&mut self, commits: Vec<WalCommit>, header: WalHeader) {
        if commits.is_empty() {
            return;
        }
        let mut batch = self.shared.lock_batch();
        for commit in commits {
            batch.push(self.next_txid, commit, header.page_size, header.salts());
            self.next_txid += 1;
        }
        let (frames, bytes) = (batch.frames, batch.page_bytes());
        drop(batch);
        let captured = self.next_txid - 1;
        self.shared.position.send_modify(|p| {
            p.captured_txid = captured;
            p.pending_frames = frames;
            p.pending_bytes = bytes;
        });
        self.shared.wake_uploader.notify_one();
    }

    /// Cheap test for new WAL content: the header and the next frame header.
    fn changed(&mut self) -> Result<bool, WalError> {
        self.open_wal()?;
        let Some(file) = &mut self.wal else {
            return Ok(false);
        };
        let header = read_header(file, &self.wal_path)?;
        match (&self.cursor, header) {
            (_, None) => Ok(false),
            (None, Some(_)) => Ok(true),
            (Some(c), Some(h)) if c.header.salts() != h.salts() => Ok(true),
            (Some(c), Some(_)) => c.has_next_frame(file, &self.wal_path),
        }
    }

    /// Reads everything committed since the last call into the batch.
    fn capture(&mut self) -> Result<(), WalError> {
        if self.need_full_image {
            return self.full_image();
        }
        let Some((mut file, header)) = self.wal_header()? else {
            return Ok(());
        };
        let mut cursor = match self.cursor {
            None => WalCursor::new(header),
            Some(c) if c.header.salts() == header.salts() => c,
            Some(c) => {
                if self.safe_restart && header.salt1 == c.header.salt1.wrapping_add(1) {
                    tracing::debug!("WAL restarted after a checkpoint");
                    self.safe_restart = false;
                    let commits = {
                        let mut cursor = WalCursor::new(header);
                        let commits = cursor.read_commits(&mut file, &self.wal_path)?;
                        self.cursor = Some(cursor);
                        commits
                    };
                    self.push_commits(commits, header);
                    // Pin the new generation.
                    return self.swap();
                }
                tracing::warn!(
                    wal = %self.wal_path.display(),
                    "WAL restarted outside our control; shipping a full image"
                );
                return self.full_image();
            }
        };
        let commits = cursor.read_commits(&mut file, &self.wal_path)?;
        self.cursor = Some(cursor);
        self.push_commits(commits, header);
        Ok(())
    }

    /// Merges the database file and the whole current WAL generation into
    /// one full image and queues it as the next TXID. Our read transaction
    /// keeps checkpoints from changing database pages the WAL does not
    /// also hold (those we take from the WAL).
    fn full_image(&mut self) -> Result<(), WalError> {
        let mut pages = BTreeMap::new();
        let mut db_size = None;
        let mut page_size = None;
        let mut segment = None;
        let wal = self.wal_header()?;
        if let Some((mut file, header)) = wal {
            let mut cursor = WalCursor::new(header);
            let commits = cursor.read_commits(&mut file, &self.wal_path)?;
            page_size = Some(header.page_size);
            if let (Some(first), Some(last)) = (commits.first(), commits.last()) {
                segment = Some(Segment {
                    salts: header.salts(),
                    offset: first.offset,
                    end: last.end,
                });
            }
            for c in commits {
                db_size = Some(c.db_size);
                pages.retain(|&p, _| p <= c.db_size);
                pages.extend(c.pages);
            }
            self.cursor = Some(cursor);
        } else {
            self.cursor = None;
        }
        let mut db = match File::open(&self.db_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(WalError::io(&self.db_path, e)),
        };
        let db_len = match &db {
            Some(f) => f
                .metadata()
                .map_err(|e| WalError::io(&self.db_path, e))?
                .len(),
            None => 0,
        };
        if page_size.is_none() && db_len >= 100 {
            let mut head = [0u8; 100];
            if let Some(f) = &mut db {
                read_at(f, 0, &mut head).map_err(|e| WalError::io(&self.db_path, e))?;
            }
            let raw = u32::from(u16::from_be_bytes([head[16], head[17]]));
            page_size = Some(if raw == 1 { 65536 } else { raw });
        }
        let Some(page_size) = page_size.filter(|p| (512..=65536).contains(p)) else {
            // Nothing committed yet: the image waits for the first commit.
            return Ok(());
        };
        let db_size = match db_size {
            Some(s) => s,
            None => u32::try_from(db_len / u64::from(page_size)).unwrap_or(u32::MAX),
        };
        if db_size == 0 {
            return Ok(());
        }
        let lock = ltx::lock_pgno(page_size);
        for pgno in 1..=db_size {
            if pgno == lock || pages.contains_key(&pgno) {
                continue;
            }
            let mut page = vec![0u8; page_size as usize];
            let offset = u64::from(pgno - 1) * u64::from(page_size);
            if let Some(f) = &mut db {
                if offset < db_len {
                    read_at(f, offset, &mut page).map_err(|e| WalError::io(&self.db_path, e))?;
                }
            }
            pages.insert(pgno, page);
        }
        pages.remove(&lock);
        let txid = self.next_txid;
        self.next_txid += 1;
        {
            let mut batch = self.shared.lock_batch();
            batch.push_full(
                txid,
                pages,
                db_size,
                page_size,
                segment,
                self.full_image_snapshot,
            );
        }
        self.shared.full_images.fetch_add(1, Ordering::Relaxed);
        self.shared.position.send_modify(|p| p.captured_txid = txid);
        self.shared.wake_uploader.notify_one();
        self.need_full_image = false;
        self.full_image_snapshot = false;
        tracing::info!(txid, db_size, "queued a full image");
        self.swap()
    }

    /// Once the WAL holds `checkpoint_pages` frames and everything is
    /// shipped: block writers with a write transaction on `ck`, read and
    /// ship what is left, checkpoint (PASSIVE, from our idle reader: it
    /// needs no write lock) and take our read transaction again after the
    /// fully copied WAL, so the next writer restarts the WAL. Writers wait
    /// for at most one upload.
    fn maybe_checkpoint(&mut self) -> Result<(), WalError> {
        let Some(cursor) = self.cursor else {
            return Ok(());
        };
        if cursor.frames_before() < self.checkpoint_pages {
            return Ok(());
        }
        if self
            .last_checkpoint
            .is_some_and(|t| t.elapsed() < Duration::from_millis(20))
        {
            return Ok(());
        }
        if self.shared.position.borrow().txid + 1 < self.next_txid {
            return Ok(());
        }
        self.last_checkpoint = Some(Instant::now());
        if let Err(e) = self.ck.execute_batch("BEGIN IMMEDIATE") {
            tracing::debug!(error = %e, "checkpoint skipped: a writer is busy");
            return Ok(());
        }
        let result = self.checkpoint_locked();
        let rolled_back = self
            .ck
            .execute_batch("ROLLBACK")
            .map_err(|e| sqlite_err(&self.db_path, e));
        result.and(rolled_back)
    }

    fn checkpoint_locked(&mut self) -> Result<(), WalError> {
        self.capture()?;
        // Everything shipped before the WAL may restart.
        let target = self.next_txid - 1;
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.shared.position.borrow().txid < target {
            if Instant::now() > deadline || self.shared.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.swap()?;
        let idle = 1 - self.active;
        let (busy, log, done): (i64, i64, i64) = self.readers[idle]
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| sqlite_err(&self.db_path, e))?;
        self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(busy, log, done, "checkpoint");
        if busy == 0 && log > 0 && log == done {
            // Nothing can have been appended: writers are blocked. The new
            // read transaction ignores the WAL, so the next writer restarts it.
            self.swap()?;
        }
        Ok(())
    }

    fn run(&mut self, rx: &std_mpsc::Receiver<Cmd>, poll: Duration) {
        loop {
            if self.shared.failed.load(Ordering::SeqCst) {
                break;
            }
            let mut reply = None;
            let force = match rx.recv_timeout(poll) {
                Ok(Cmd::Notify) => {
                    self.shared.notified.store(false, Ordering::Release);
                    true
                }
                Ok(Cmd::Capture(tx)) => {
                    reply = Some(tx);
                    true
                }
                Ok(Cmd::Exit) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => false,
            };
            let result = (|| {
                if force || self.need_full_image || self.changed()? {
                    self.capture()?;
                }
                self.maybe_checkpoint()
            })();
            match result {
                Ok(()) => {
                    if let Some(tx) = reply {
                        let _ = tx.send(Ok(self.next_txid - 1));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.shared.fail(e);
                    if let Some(tx) = reply {
                        let _ = tx.send(Err(WalError::Sqlite {
                            path: self.db_path.clone(),
                            reason: msg,
                        }));
                    }
                    break;
                }
            }
        }
        // Dropping the connections ends the read transaction.
        let _ = self.readers[self.active].execute_batch("COMMIT");
    }
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

// ---------------------------------------------------------------- upload

async fn upload_loop(shared: Arc<Shared>, mut fence: Option<Fence>) {
    let mut backoff = Duration::from_millis(20);
    let mut failed_batch: Option<Batch> = None;
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return;
        }
        let batch = match failed_batch.take() {
            Some(b) => b,
            None => std::mem::take(&mut *shared.lock_batch()),
        };
        if batch.is_empty() {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                () = shared.wake_uploader.notified() => {}
                () = shared.halted() => return,
            }
            continue;
        }
        let stored = tokio::select! {
            r = upload(&shared, &mut fence, &batch) => r,
            // Aborted (lease lost): abandon the put on the wire; it is
            // never acknowledged (nothing advances the position below).
            () = shared.halted() => return,
        };
        match stored.and_then(|()| ack_gate(&shared)) {
            Ok(()) => {
                backoff = Duration::from_millis(20);
                let (frames, bytes) = {
                    let b = shared.lock_batch();
                    (b.frames, b.page_bytes())
                };
                // The only place `txid` moves forward: what `sync()` and
                // `commit_synced()` acknowledge.
                shared.position.send_modify(|p| {
                    p.txid = batch.max_txid;
                    p.shipped_at = Some(SystemTime::now());
                    p.pending_frames = frames;
                    p.pending_bytes = bytes;
                });
            }
            Err(e @ (WalError::Fenced { .. } | WalError::Deposed { .. })) => {
                shared.fail(e);
                return;
            }
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) && backoff > Duration::from_secs(2) {
                    shared.fail(e);
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "upload failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.halted() => return,
                    () = shared.validity_ended() => {
                        shared.fail(WalError::Deposed {
                            epoch: shared.epoch,
                            what: "retrying an upload",
                        });
                        return;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                failed_batch = Some(batch);
            }
        }
    }
}

/// The ack gate: a stored file counts as shipped — and the commits in it
/// may be acknowledged by `sync()` / `commit_synced()` — only if our lease
/// is still valid *after* the put was acknowledged.
///
/// Why that makes an acknowledged commit survive a takeover (DESIGN §4.1,
/// §4.7). Let A be this primary, its validity ending at `V_A = t_sent(last
/// acknowledged renew) + deadline`, and B the successor.
///
/// 1. A acknowledges a file only after this check passed at some `t_c`
///    with `t_c < V_A`; the check runs after the put's ack was received,
///    and the server stored the file before acking it: `t_stored < t_c <
///    V_A`.
/// 2. The server keeps A's lease key until `t_stored(renew) + ttl >
///    t_sent(renew) + ttl > V_A` (`ttl > deadline`; the margin `ttl −
///    deadline`, 0.6 s at the defaults, absorbs clock-rate differences and
///    the server's expiry tick only makes it later). B can only win by a
///    conditional write after the key expired or was deleted by A's
///    release, which A sends after its replicator stopped. So B's win is at
///    `t_win > V_A`.
/// 3. B, becoming active, takes `wal.head` first, then catches up to the
///    bucket's maximum with a fresh listing at `t_list > t_win`, then
///    starts replicating (a full image if the bucket moved past its
///    catch-up). Hence `t_stored < V_A < t_win < t_list`: every file A
///    acknowledged is in B's catch-up, so in B's database.
///
/// A file A stored but did not acknowledge (its put was reserved before
/// B's takeover and landed after B's listing) may be missing from B's
/// database: B starts above it (`wal.head` told B its TXIDs) with a full
/// image, so it never mixes with B's files; its commits were never
/// acknowledged as synced. After B's takeover A's reservations fail by
/// compare-and-set (server-enforced, independent of A's clock), and A's
/// own checks below refuse to reserve or put once `V_A` passed.
///
/// The argument relies on A's monotonic clock not running slower than the
/// server's by more than the margin over one lease period — the same
/// assumption the lease itself makes.
fn ack_gate(shared: &Shared) -> Result<(), WalError> {
    shared.check_valid("acknowledging a stored file after the lease's validity ended")
}

fn encode_batch(batch: &Batch, min_txid: u64) -> Result<Vec<u8>, WalError> {
    let (wal_offset, wal_size, (salt1, salt2)) = match batch.segment {
        Some(s) => (
            i64::try_from(s.offset).unwrap_or(0),
            i64::try_from(s.end - s.offset).unwrap_or(0),
            s.salts,
        ),
        _ => (0, 0, (0, 0)),
    };
    let header = Header {
        flags: FLAG_NO_CHECKSUM,
        page_size: batch.page_size,
        commit: batch.commit,
        min_txid,
        max_txid: batch.max_txid,
        timestamp_ms: now_ms(),
        wal_offset,
        wal_size,
        wal_salt1: salt1,
        wal_salt2: salt2,
        ..Header::default()
    };
    let mut enc = ltx::Encoder::new(Vec::new(), header)?;
    for (&pgno, page) in batch.pages.range(..=batch.commit) {
        enc.add_page(pgno, page)?;
    }
    Ok(enc.finish()?.0)
}

async fn upload(shared: &Shared, fence: &mut Option<Fence>, batch: &Batch) -> Result<(), WalError> {
    let bytes = Bytes::from(encode_batch(batch, batch.min_txid)?);
    // Invariant: no reservation and no put without a valid lease; the
    // checks are local (no NATS round trip) and run right before each call.
    shared.check_valid("reserving TXIDs")?;
    if let Some(f) = fence {
        f.reserve(batch.max_txid).await?;
    }
    if batch.snapshot {
        let snap = Bytes::from(encode_batch(batch, 1)?);
        shared.check_valid("storing a snapshot")?;
        shared.bucket.put(SNAPSHOT_LEVEL, snap).await?;
    }
    shared.check_valid("storing an LTX file")?;
    let len = bytes.len() as u64;
    shared.bucket.put(0, bytes).await?;
    shared.bytes_shipped.fetch_add(len, Ordering::Relaxed);
    shared
        .page_bytes_shipped
        .fetch_add(batch.page_bytes(), Ordering::Relaxed);
    shared.files_shipped.fetch_add(1, Ordering::Relaxed);
    tracing::trace!(
        min = batch.min_txid,
        max = batch.max_txid,
        pages = batch.pages.len(),
        "stored"
    );
    Ok(())
}

/// Replicates `db_path` into the object store `bucket_name` (created if
/// missing) until `shutdown` resolves, then ships what is committed and
/// stops — `cluster replicate` without a cluster. No fencing.
///
/// ```no_run
/// # async fn demo(js: async_nats::jetstream::Context) -> Result<(), cluster_runtime::wal::WalError> {
/// cluster_runtime::wal::replicator::replicate(
///     "app.db".as_ref(), js, "prod_app_wal", async { let _ = tokio::signal::ctrl_c().await; },
/// ).await
/// # }
/// ```
pub async fn replicate(
    db_path: &Path,
    js: jetstream::Context,
    bucket_name: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WalError> {
    let bucket = WalBucket::open_or_create(&js, bucket_name, 1).await?;
    let replicator = Replicator::start(ReplicatorConfig::new(db_path, bucket)).await?;
    let mut position = replicator.position();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed = position.changed() => {
                if changed.is_err() || replicator.error().is_some() {
                    break;
                }
            }
        }
    }
    replicator.stop().await.map(|_| ())
}
