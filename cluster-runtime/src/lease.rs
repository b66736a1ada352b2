//! TTL'd, CAS-renewed ownership of one KV key — the primitive behind
//! election, membership records, locks and partition claims.
//!
//! Guarantees (DESIGN §4.1):
//! - **At most one holder.** Only a successful conditional write
//!   (`Nats-Expected-Last-Subject-Sequence` = the last sequence the candidate
//!   saw for the key) makes a holder; a read never does.
//! - **The epoch only grows.** It is the revision of the acquiring write, the
//!   fencing token handed to user code.
//! - **A holder that cannot renew gives up before its TTL.** Validity ends at
//!   `t_sent(last acknowledged renew) + deadline` on the monotonic clock,
//!   with `ttl > deadline > 1.2 × renew`. The server expires the key at
//!   `t_stored + ttl`, which is later, so a cut-off or paused holder is
//!   invalid before anyone else can acquire.
//!
//! Renewal publishes directly to `$KV.<bucket>.<key>` with a `Nats-TTL`
//! header: async-nats' `update()` would make the key permanent and
//! `create_with_ttl` drops the TTL over a delete marker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// How long a lease lives, how often it is renewed, and when a holder that
/// could not renew gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Server-side time to live (whole seconds, ≥ 1 s).
    pub ttl: Duration,
    /// Renew interval.
    pub renew: Duration,
    /// Self-demotion deadline after the last acknowledged renew was sent.
    pub deadline: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(3),
            renew: Duration::from_secs(1),
            deadline: Duration::from_millis(2400),
        }
    }
}

impl LeaseTiming {
    /// Validated timings: `ttl` whole seconds ≥ 1 s and
    /// `ttl > deadline > 1.2 × renew`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_runtime::lease::LeaseTiming;
    /// assert!(LeaseTiming::new(Duration::from_secs(3), Duration::from_secs(1), Duration::from_millis(2400)).is_ok());
    /// assert!(LeaseTiming::new(Duration::from_secs(2), Duration::from_secs(1), Duration::from_secs(2)).is_err());
    /// ```
    pub fn new(ttl: Duration, renew: Duration, deadline: Duration) -> Result<Self> {
        cluster_spec::lease::check_timing(ttl, renew, deadline).map_err(Error::config)?;
        Ok(LeaseTiming {
            ttl,
            renew,
            deadline,
        })
    }

    /// The default proportions for a given TTL: renew every `ttl / 3`, give
    /// up after `0.8 × ttl` (3 s → 1 s / 2.4 s; 1 s → 333 ms / 800 ms).
    pub fn from_ttl(ttl: Duration) -> Result<Self> {
        let (renew, deadline) = cluster_spec::lease::proportions(ttl);
        Self::new(ttl, renew, deadline)
    }
}

/// What the key says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Nobody holds it. `seq` is the sequence to expect when acquiring
    /// (0 if the key never existed or its marker is gone).
    Free {
        /// Last sequence of the key's subject (a delete/expiry marker), or 0.
        seq: u64,
    },
    /// Someone holds it.
    Held {
        /// Revision of the latest write (acquire or renew).
        seq: u64,
        /// The holder's value.
        value: Bytes,
    },
}

impl KeyState {
    pub(crate) fn from_entry(entry: Option<&kv::Entry>) -> KeyState {
        match entry {
            None => KeyState::Free { seq: 0 },
            Some(e) if e.operation == kv::Operation::Put => KeyState::Held {
                seq: e.revision,
                value: e.value.clone(),
            },
            Some(e) => KeyState::Free { seq: e.revision },
        }
    }
}

/// Opens (creating if needed) a KV bucket suitable for leases: history 1,
/// per-message TTLs and limit markers on, so expiries reach watchers.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(bucket).await {
        check_lease_bucket(js, bucket).await?;
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        num_replicas: replicas.max(1),
        storage: jetstream::stream::StorageType::File,
        // Markers must outlive the slowest watcher's reaction; they are
        // removed after this so the bucket does not accumulate them.
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another node created it between our get and create.
        Err(create_err) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| Error::nats(format!("create KV bucket {bucket}"), create_err)),
    }
}

/// Refuses an existing bucket that cannot hold leases: without per-message
/// TTLs every renew fails, and without limit markers expiries never reach
/// watchers — an app would silently never activate.
async fn check_lease_bucket(js: &jetstream::Context, bucket: &str) -> Result<()> {
    let stream = format!("KV_{bucket}");
    // The configuration cannot always be read at once (a stream just
    // created on a NATS cluster has no leader yet): then the check is
    // skipped rather than failing a start over a transient error.
    let info = match js.get_stream(&stream).await {
        Ok(mut s) => s
            .info()
            .await
            .map(|i| i.config.clone())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let config = match info {
        Ok(config) => config,
        Err(e) => {
            tracing::debug!(bucket, error = %e, "cannot read the bucket's configuration; not checked");
            return Ok(());
        }
    };
    let mut missing = Vec::new();
    if !config.allow_message_ttl {
        missing.push("per-message TTLs (allow_msg_ttl)");
    }
    if config.subject_delete_marker_ttl.is_none() {
        missing.push("limit markers (subject_delete_marker_ttl)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::config(format!(
        "KV bucket `{bucket}` exists but cannot hold leases: it lacks {}. It was \
         probably created by hand or by an older version; delete it (`nats kv del \
         {bucket}`) and the node recreates it with history 1, per-message TTLs and \
         limit markers",
        missing.join(" and ")
    )))
}

/// One lease key: read, watch, acquire.
#[derive(Debug, Clone)]
pub struct LeaseKey {
    js: jetstream::Context,
    kv: kv::Store,
    key: String,
    subject: String,
    timing: LeaseTiming,
}

/// Why a holder lost its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// No renew was acknowledged within the deadline (cut off, paused, slow).
    Expired,
    /// A renew was refused: the key changed under us (expired and re-taken).
    Conflict,
    /// Released on purpose.
    Released,
}

impl LeaseKey {
    /// A lease on `key` in the lease bucket `kv`.
    pub fn new(js: jetstream::Context, kv: kv::Store, key: &str, timing: LeaseTiming) -> Self {
        let subject = format!("$KV.{}.{}", kv.name, key);
        LeaseKey {
            js,
            kv,
            key: key.to_owned(),
            subject,
            timing,
        }
    }

    /// The key's name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The timings this lease uses.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// Reads the key's current state (including delete/expiry markers).
    pub async fn read(&self) -> Result<KeyState> {
        let entry = self
            .kv
            .entry(self.key.clone())
            .await
            .map_err(|e| Error::nats(format!("read lease {}/{}", self.kv.name, self.key), e))?;
        Ok(KeyState::from_entry(entry.as_ref()))
    }

    /// Watches the key: every put, delete and expiry (as `KeyState`).
    pub async fn watch(&self) -> Result<impl futures::Stream<Item = KeyState> + Send + 'static> {
        use futures::StreamExt;
        let watch =
            self.kv.watch(&self.key).await.map_err(|e| {
                Error::nats(format!("watch lease {}/{}", self.kv.name, self.key), e)
            })?;
        Ok(watch
            .filter_map(|item| async move { item.ok().map(|e| KeyState::from_entry(Some(&e))) }))
    }

    fn publish(&self, value: Bytes, expected_seq: u64) -> PublishMessage {
        PublishMessage::build()
            .payload(value)
            .ttl(self.timing.ttl)
            .expected_last_subject_sequence(expected_seq)
    }

    /// Tries to become the holder, expecting the key's last sequence to be
    /// `expected_seq` (from [`read`](Self::read) or a watch event). Returns
    /// `None` when someone else got there first.
    #[tracing::instrument(name = "lease.acquire", level = "debug", skip_all, fields(key = %self.key, expected_seq))]
    pub async fn try_acquire(&self, expected_seq: u64, value: Bytes) -> Result<Option<HeldLease>> {
        let sent = Instant::now();
        match self
            .conditional_publish(value.clone(), expected_seq, sent + self.timing.deadline)
            .await
        {
            Publish::Acked(revision) => {
                Ok(Some(HeldLease::start(self.clone(), revision, sent, value)))
            }
            Publish::Conflict => Ok(None),
            Publish::Failed(e) => Err(e),
        }
    }

    async fn conditional_publish(
        &self,
        value: Bytes,
        expected_seq: u64,
        give_up_at: Instant,
    ) -> Publish {
        let op = || format!("write lease {}/{}", self.kv.name, self.key);
        let publish = self.publish(value, expected_seq);
        let attempt = async {
            let ack = self.js.send_publish(self.subject.clone(), publish).await?;
            ack.await
        };
        match tokio::time::timeout_at(give_up_at, attempt).await {
            Err(_) => Publish::Failed(Error::nats(
                op(),
                "no acknowledgement before the lease deadline",
            )),
            Ok(Ok(ack)) => Publish::Acked(ack.sequence),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Publish::Conflict,
            Ok(Err(e)) => Publish::Failed(Error::nats(op(), e)),
        }
    }

    /// Deletes the key if its last revision is still `revision`.
    async fn delete(&self, revision: u64) -> Result<()> {
        let publish = PublishMessage::build()
            .header("KV-Operation", "DEL")
            .expected_last_subject_sequence(revision);
        let op = || format!("release lease {}/{}", self.kv.name, self.key);
        let attempt = async {
            let ack = self.js.send_publish(self.subject.clone(), publish).await?;
            ack.await
        };
        match tokio::time::timeout(self.timing.ttl, attempt).await {
            Err(_) => Err(Error::nats(op(), "no acknowledgement")),
            Ok(Ok(_)) => Ok(()),
            // Someone else already holds it: nothing of ours to delete.
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
            Ok(Err(e)) => Err(Error::nats(op(), e)),
        }
    }
}

enum Publish {
    Acked(u64),
    Conflict,
    Failed(Error),
}

/// The validity of a held lease, cheap to clone and check from anywhere
/// (user code checks it through `AppContext::is_active`).
#[derive(Debug, Clone)]
pub struct Validity {
    inner: Arc<ValidityInner>,
}

#[derive(Debug)]
struct ValidityInner {
    /// The epoch of the lease this validity belongs to: kept beside the
    /// deadline so the token and its validity are read together.
    epoch: u64,
    base: Instant,
    /// Nanoseconds after `base` at which the holder must consider itself
    /// demoted.
    valid_until_ns: AtomicU64,
    lost: AtomicBool,
}

impl Validity {
    fn new(epoch: u64, valid_until: Instant) -> Self {
        let base = Instant::now();
        let v = Validity {
            inner: Arc::new(ValidityInner {
                epoch,
                base,
                valid_until_ns: AtomicU64::new(0),
                lost: AtomicBool::new(false),
            }),
        };
        v.extend(valid_until);
        v
    }

    /// A validity of `epoch` lasting `for_` from now (tests of what is
    /// fenced by it).
    #[cfg(test)]
    pub(crate) fn for_test(epoch: u64, for_: Duration) -> Self {
        Validity::new(epoch, Instant::now() + for_)
    }

    /// The validity of work that holds no lease (a pool instance's
    /// activation steps): epoch 0, valid until marked lost.
    pub(crate) fn unleased() -> Self {
        Validity::new(
            0,
            Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        )
    }

    fn extend(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.inner.base).as_nanos() as u64;
        self.inner.valid_until_ns.store(ns, Ordering::SeqCst);
    }

    fn mark_lost(&self) {
        self.inner.lost.store(true, Ordering::SeqCst);
    }

    /// The epoch (fencing token) of the lease, valid or not.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The epoch while the lease is valid, `None` once validity ended: the
    /// token and the check come from one handle, so this can never return
    /// another holder's epoch.
    pub fn valid_epoch(&self) -> Option<u64> {
        self.is_valid().then_some(self.inner.epoch)
    }

    /// Time left before validity ends (zero once it has).
    pub fn remaining(&self) -> Duration {
        if self.inner.lost.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// When validity ends unless a renew is acknowledged first.
    pub fn valid_until(&self) -> Instant {
        self.inner.base + Duration::from_nanos(self.inner.valid_until_ns.load(Ordering::SeqCst))
    }

    /// Resolves once validity has ended (deadline passed with no renew, or
    /// lost/released). Follows renewals: while the lease keeps being
    /// renewed, this keeps waiting. Never waits on NATS.
    pub async fn ended(&self) {
        // A release or conflict marks the lease lost between deadlines:
        // look at least this often.
        const LOOK_EVERY: Duration = Duration::from_millis(50);
        while self.is_valid() {
            let wake = self.valid_until().min(Instant::now() + LOOK_EVERY);
            tokio::time::sleep_until(wake).await;
        }
    }

    /// True while the lease is held and its deadline has not passed. This is
    /// checked against the clock, not the renew task, so it turns false on
    /// time even if the process was paused.
    pub fn is_valid(&self) -> bool {
        !self.inner.lost.load(Ordering::SeqCst) && Instant::now() < self.valid_until()
    }
}

/// A lease this process holds, renewed in the background until it is lost
/// or released.
#[derive(Debug)]
pub struct HeldLease {
    key: LeaseKey,
    epoch: u64,
    validity: Validity,
    revision: Arc<AtomicU64>,
    value_tx: watch::Sender<Bytes>,
    lost_rx: watch::Receiver<Option<LostReason>>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HeldLease {
    fn start(key: LeaseKey, revision: u64, sent: Instant, value: Bytes) -> Self {
        let validity = Validity::new(revision, sent + key.timing.deadline);
        let revision_cell = Arc::new(AtomicU64::new(revision));
        let (value_tx, value_rx) = watch::channel(value);
        let (lost_tx, lost_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(renew_loop(
            key.clone(),
            validity.clone(),
            revision_cell.clone(),
            sent,
            value_rx,
            lost_tx,
            stop_rx,
        ));
        HeldLease {
            key,
            epoch: revision,
            validity,
            revision: revision_cell,
            value_tx,
            lost_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// The fencing token: the revision of the acquiring write.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The revision of the latest acknowledged write.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// The validity handle.
    pub fn validity(&self) -> Validity {
        self.validity.clone()
    }

    /// True while held and within the deadline.
    pub fn is_valid(&self) -> bool {
        self.validity.is_valid()
    }

    /// Replaces the value written on the next renew, and renews now.
    pub fn set_value(&self, value: Bytes) {
        self.value_tx.send_replace(value);
    }

    /// Resolves when the lease is lost (never for a lease that stays held).
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.lost_rx.clone();
        loop {
            if let Some(reason) = *rx.borrow_and_update() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return LostReason::Released;
            }
        }
    }

    /// Stops renewing and deletes the key with the expected revision so
    /// successors see the delete at once. The caller demotes first.
    #[tracing::instrument(name = "lease.release", level = "debug", skip_all, fields(key = %self.key.key, epoch = self.epoch))]
    pub async fn release(&self) -> Result<()> {
        self.validity.mark_lost();
        if let Some(stop) = self.stop_tx.lock().await.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        if self
            .lost_rx
            .borrow()
            .is_some_and(|r| r != LostReason::Released)
        {
            // Already lost: the key is someone else's or gone.
            return Ok(());
        }
        self.key.delete(self.revision()).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.validity.mark_lost();
        if let Ok(mut task) = self.task.try_lock() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}

/// Renews on every `renew` tick (or at once when the value changes) and
/// declares the lease lost when the deadline passes without an
/// acknowledgement, or when a renew is refused.
async fn renew_loop(
    key: LeaseKey,
    validity: Validity,
    revision: Arc<AtomicU64>,
    acquired_sent: Instant,
    mut value_rx: watch::Receiver<Bytes>,
    lost_tx: watch::Sender<Option<LostReason>>,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let timing = key.timing;
    let mut next = acquired_sent + timing.renew;
    let lose = |reason: LostReason| {
        validity.mark_lost();
        lost_tx.send_replace(Some(reason));
        tracing::warn!(key = %key.key, ?reason, "lease lost");
    };
    loop {
        let deadline = validity.valid_until();
        tokio::select! {
            biased;
            _ = &mut stop_rx => {
                lost_tx.send_replace(Some(LostReason::Released));
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                // Invariant: past `sent + deadline` the holder is no longer
                // valid, whatever NATS says later.
                return lose(LostReason::Expired);
            }
            _ = tokio::time::sleep_until(next) => {}
            changed = value_rx.changed() => {
                if changed.is_err() { return lose(LostReason::Released); }
            }
        }
        let sent = Instant::now();
        let value = value_rx.borrow_and_update().clone();
        let expected = revision.load(Ordering::SeqCst);
        // A renew in flight is always seen through (bounded by the
        // deadline), even when a release is requested meanwhile: abandoning
        // it could leave a newer revision on the server than the one the
        // release deletes with, and the delete would then miss.
        match key.conditional_publish(value, expected, deadline).await {
            Publish::Acked(seq) => {
                revision.store(seq, Ordering::SeqCst);
                // Validity is measured from when this renew was *sent*.
                validity.extend(sent + timing.deadline);
                next = sent + timing.renew;
            }
            Publish::Conflict => return lose(LostReason::Conflict),
            Publish::Failed(e) => {
                tracing::debug!(key = %key.key, error = %e, "lease renew failed; retrying");
                next = Instant::now() + (timing.renew / 5).max(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_rules() {
        assert!(LeaseTiming::from_ttl(Duration::from_secs(1)).is_ok());
        assert!(LeaseTiming::from_ttl(Duration::from_secs(3)).is_ok());
        assert!(LeaseTiming::from_ttl(Duration::from_millis(1500)).is_err());
        assert!(LeaseTiming::from_ttl(Duration::from_millis(0)).is_err());
        let err = LeaseTiming::new(
            Duration::from_secs(3),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .expect_err("deadline == ttl");
        assert!(err.to_string().contains("shorter than lease_ttl"));
        let err = LeaseTiming::new(
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_millis(2400),
        )
        .expect_err("deadline <= 1.2 renew");
        assert!(err.to_string().contains("1.2"));
        assert_eq!(
            LeaseTiming::from_ttl(Duration::from_secs(3)).ok(),
            Some(LeaseTiming::default())
        );
    }
}
