//! Distributed locks on the [`lease`] primitive: `ctx.lock(name)`
//! (in the app's coordination bucket `P_A_coord`) and `platform.lock(name)`
//! (in `P_platform`).
//!
//! Guarantees:
//! - **At most one holder.** Acquiring is the lease's conditional write on
//!   key `lock.NAME`; a read never makes a holder.
//! - **Fencing.** The [`LockGuard::token`] is the lease epoch (the revision
//!   of the acquiring write): it strictly increases from one holder to the
//!   next, so a store that remembers the highest token it saw can refuse a
//!   stale holder's writes.
//! - **A holder that cannot renew knows before anyone else can acquire.**
//!   [`LockGuard::is_valid`] turns false at the lease deadline (measured on
//!   the monotonic clock from the last acknowledged renew), which is before
//!   the key's TTL runs out on the server. A paused or cut-off holder
//!   therefore sees `is_valid() == false` before another holder exists.
//!   Check it before each side effect, and pass the token along.
//! - **A crashed holder's lock frees after its TTL** (default 3 s); a
//!   released one at once (waiters watch the key).
//!
//! Waiting is by watch, not polling: a waiter tries again as soon as the
//! key is deleted or expires. There is no queue: under contention any
//! waiter may win.
//!
//! ```no_run
//! # async fn demo(ctx: cluster_runtime::AppContext) -> Result<(), cluster_runtime::lock::LockError> {
//! use std::time::Duration;
//! let lock = ctx.lock("nightly-report")?;
//! let rows = lock
//!     .with_lock(Duration::from_secs(10), |guard| async move {
//!         // guard.token() fences writes; guard.is_valid() before each one.
//!         assert!(guard.is_valid());
//!         42
//!     })
//!     .await?;
//! if let Some(guard) = lock.try_acquire().await? {
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use std::collections::HashMap;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, OnceCell};
use tokio::time::Instant;
use tracing::Instrument;

use crate::lease::{self, HeldLease, KeyState, LeaseKey, LeaseTiming, LostReason, Validity};
use crate::naming::{Names, PLATFORM_SCOPE};
use crate::observe::{AppAudit, Metrics};

/// Why a lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock name is not valid (nothing was sent).
    #[error("invalid lock name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// [`Lock::acquire`] did not get the lock in time.
    #[error("lock `{name}` not acquired within {waited:?} (held by {holder})")]
    Timeout {
        /// The lock.
        name: String,
        /// How long it waited.
        waited: Duration,
        /// Who held it last time we looked.
        holder: String,
    },
    /// NATS failed.
    #[error("lock `{name}`: {op} failed: {message}")]
    Nats {
        /// The lock.
        name: String,
        /// What was being done.
        op: String,
        /// The error.
        message: String,
    },
}

impl From<LockError> for crate::rpc::HandlerError {
    fn from(e: LockError) -> Self {
        crate::rpc::HandlerError::new(e)
    }
}

/// Who holds a lock, as stored in its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holding node.
    pub node: String,
    /// The holding guard (`NODE/unique id`): tells apart tasks of one node.
    pub owner: String,
    /// The fencing token (lease epoch).
    #[serde(skip)]
    pub token: u64,
    /// When it was acquired (holder's clock, unix ms).
    pub since_ms: u64,
}

/// A set of locks in one coordination bucket: an app's (`P_A_coord`) or
/// the platform's (`P_platform`). Cheap to clone.
#[derive(Clone)]
pub struct Locks {
    inner: Arc<LocksInner>,
}

struct LocksInner {
    js: jetstream::Context,
    names: Names,
    bucket: String,
    replicas: usize,
    scope: Option<String>,
    node: String,
    timing: LeaseTiming,
    audit: Option<AppAudit>,
    metrics: Option<Metrics>,
    store: OnceCell<kv::Store>,
    /// One watch per contended key, shared by every waiter of this process
    /// (a watch is a JetStream consumer: one per waiter would not scale).
    watchers: std::sync::Mutex<HashMap<String, KeyWatcher>>,
}

/// A shared watch of one lock key: every change, and whether the watch is
/// established (changes before that are caught by re-reading the key).
#[derive(Clone)]
struct KeyWatcher {
    events: broadcast::Sender<KeyState>,
    ready: watch::Receiver<bool>,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks")
            .field("bucket", &self.inner.bucket)
            .field("node", &self.inner.node)
            .field("timing", &self.inner.timing)
            .finish_non_exhaustive()
    }
}

impl Locks {
    /// Locks in `bucket` (a lease bucket, created on first use with
    /// `replicas`), taken by node `node`. `scope` is the app they belong to
    /// (`None` for platform locks): it labels audit entries and metrics.
    pub fn new(
        js: jetstream::Context,
        names: Names,
        bucket: String,
        replicas: usize,
        scope: Option<&str>,
        node: &str,
    ) -> Locks {
        Self::with_observe(js, names, bucket, replicas, scope, node, None, None)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_observe(
        js: jetstream::Context,
        names: Names,
        bucket: String,
        replicas: usize,
        scope: Option<&str>,
        node: &str,
        audit: Option<AppAudit>,
        metrics: Option<Metrics>,
    ) -> Locks {
        Locks {
            inner: Arc::new(LocksInner {
                js,
                names,
                bucket,
                replicas,
                scope: scope.map(str::to_owned),
                node: node.to_owned(),
                timing: LeaseTiming::default(),
                audit,
                metrics,
                store: OnceCell::new(),
                watchers: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The lock `name` (`[-/_=a-zA-Z0-9]` tokens separated by `.`), with the
    /// default timings (TTL 3 s, renew 1 s, deadline 2.4 s).
    pub fn lock(&self, name: &str) -> Result<Lock, LockError> {
        crate::kv::validate_key(name).map_err(|e| LockError::InvalidName {
            name: name.to_owned(),
            reason: match e {
                crate::kv::KvError::InvalidKey { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(Lock {
            locks: self.clone(),
            name: name.to_owned(),
            timing: self.inner.timing,
        })
    }

    async fn store(&self) -> Result<&kv::Store, crate::Error> {
        self.inner
            .store
            .get_or_try_init(|| {
                lease::open_bucket(&self.inner.js, &self.inner.bucket, self.inner.replicas)
            })
            .await
    }

    /// The shared watcher of `key`, started if nobody watches it yet. It
    /// stops once no waiter is subscribed.
    fn watcher(&self, key: &LeaseKey) -> KeyWatcher {
        let mut watchers = match self.inner.watchers.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(w) = watchers.get(key.key()) {
            if w.ready.has_changed().is_ok() {
                return w.clone();
            }
        }
        // Forget watchers whose task has ended.
        watchers.retain(|_, w| w.ready.has_changed().is_ok());
        let (events, _) = broadcast::channel(64);
        let (ready_tx, ready) = watch::channel(false);
        let w = KeyWatcher {
            events: events.clone(),
            ready,
        };
        watchers.insert(key.key().to_owned(), w.clone());
        tokio::spawn(run_watcher(key.clone(), events, ready_tx));
        w
    }

    fn scope_label(&self) -> &str {
        self.inner.scope.as_deref().unwrap_or(PLATFORM_SCOPE)
    }
}

/// One named lock. Cheap to clone; clones are the same lock.
#[derive(Clone)]
pub struct Lock {
    locks: Locks,
    name: String,
    timing: LeaseTiming,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.name)
            .field("bucket", &self.locks.inner.bucket)
            .field("timing", &self.timing)
            .finish()
    }
}

impl Lock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Uses other lease timings (e.g. `LeaseTiming::from_ttl(1s)` so a
    /// crashed holder frees the lock sooner).
    pub fn timing(mut self, timing: LeaseTiming) -> Self {
        self.timing = timing;
        self
    }

    fn err(&self, op: &str, e: impl fmt::Display) -> LockError {
        LockError::Nats {
            name: self.name.clone(),
            op: op.to_owned(),
            message: e.to_string(),
        }
    }

    async fn key(&self) -> Result<LeaseKey, LockError> {
        let store = self
            .locks
            .store()
            .await
            .map_err(|e| self.err("open bucket", e))?;
        Ok(LeaseKey::new(
            self.locks.inner.js.clone(),
            store.clone(),
            &self.locks.inner.names.lock_key(&self.name),
            self.timing,
        ))
    }

    /// Who holds the lock now, if anyone.
    pub async fn holder(&self) -> Result<Option<LockHolder>, LockError> {
        let key = self.key().await?;
        match key.read().await.map_err(|e| self.err("read", e))? {
            KeyState::Free { .. } => Ok(None),
            KeyState::Held { seq, value } => Ok(decode_holder(seq, &value)),
        }
    }

    /// Tries once: the lock if it was free, `None` if someone holds it.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>, LockError> {
        let span = self.span();
        async {
            let key = self.key().await?;
            let state = key.read().await.map_err(|e| self.err("read", e))?;
            self.attempt(&key, &state).await
        }
        .instrument(span)
        .await
    }

    /// Waits up to `timeout` for the lock.
    pub async fn acquire(&self, timeout: Duration) -> Result<LockGuard, LockError> {
        let span = self.span();
        self.acquire_inner(timeout).instrument(span).await
    }

    /// Runs `f` holding the lock (waiting up to `timeout` for it), then
    /// releases it — also when `f` panics or is cancelled (then in the
    /// background). `f` gets a clone of the guard to check
    /// [`is_valid`](LockGuard::is_valid) and read the token.
    pub async fn with_lock<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, LockError>
    where
        F: FnOnce(LockGuard) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire(timeout).await?;
        let out = f(guard.clone()).await;
        if !guard.is_valid() {
            tracing::warn!(lock = %self.name, "lock was lost before the critical section ended");
        }
        guard.release().await?;
        Ok(out)
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "lock.acquire",
            lock = %self.name,
            app = %self.locks.scope_label(),
            token = tracing::field::Empty
        )
    }

    async fn acquire_inner(&self, timeout: Duration) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let key = self.key().await?;
        // Fast path: one read and one conditional write.
        let mut state = key.read().await.map_err(|e| self.err("read", e))?;
        if let Some(guard) = self.attempt(&key, &state).await? {
            return Ok(guard);
        }
        // Slow path: follow the key's shared watch and try whenever it is
        // free. The watch only reports changes, so the key is read again once
        // the watch is established (and whenever events were missed).
        let watcher = self.locks.watcher(&key);
        let mut events = watcher.events.subscribe();
        let mut ready = watcher.ready.clone();
        let mut reread = true;
        loop {
            if reread {
                reread = false;
                let established = tokio::select! {
                    r = ready.wait_for(|r| *r) => r.is_ok(),
                    _ = tokio::time::sleep_until(deadline) => false,
                };
                if established {
                    state = key.read().await.map_err(|e| self.err("read", e))?;
                    if let Some(guard) = self.attempt(&key, &state).await? {
                        return Ok(guard);
                    }
                }
            }
            let timed_out = || LockError::Timeout {
                name: self.name.clone(),
                waited: started.elapsed(),
                holder: match &state {
                    KeyState::Held { seq, value } => decode_holder(*seq, value)
                        .map(|h| h.owner)
                        .unwrap_or_else(|| "unknown".into()),
                    KeyState::Free { .. } => "nobody".into(),
                },
            };
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            let next = tokio::select! {
                item = events.recv() => match item {
                    Ok(state) => Some(state),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The watcher ended (its watch broke): start another.
                        let w = self.locks.watcher(&key);
                        events = w.events.subscribe();
                        ready = w.ready.clone();
                        None
                    }
                },
                // Watches can miss events across reconnects: re-read now and then.
                _ = tokio::time::sleep(self.timing.ttl) => None,
                _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            };
            let Some(next) = next else {
                reread = true;
                continue;
            };
            state = next;
            if let Some(guard) = self.attempt(&key, &state).await? {
                return Ok(guard);
            }
        }
    }

    /// One conditional write if `state` says the key is free.
    async fn attempt(
        &self,
        key: &LeaseKey,
        state: &KeyState,
    ) -> Result<Option<LockGuard>, LockError> {
        let KeyState::Free { seq } = state else {
            return Ok(None);
        };
        let inner = &self.locks.inner;
        let holder = LockHolder {
            node: inner.node.clone(),
            owner: format!("{}/{}", inner.node, nuid::next()),
            token: 0,
            since_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let value = Bytes::from(serde_json::to_vec(&holder).unwrap_or_default());
        let held = key
            .try_acquire(*seq, value)
            .await
            .map_err(|e| self.err("acquire", e))?;
        let Some(held) = held else {
            return Ok(None);
        };
        let token = held.epoch();
        tracing::Span::current().record("token", token);
        if let Some(audit) = &inner.audit {
            audit.record(
                "lock.acquired",
                serde_json::json!({"name": self.name, "token": token, "owner": holder.owner}),
                None,
            );
        }
        Ok(Some(LockGuard {
            inner: Arc::new(GuardInner {
                held: Some(held),
                name: self.name.clone(),
                owner: holder.owner,
                token,
                acquired: Instant::now(),
                released: AtomicBool::new(false),
                locks: self.locks.clone(),
            }),
        }))
    }
}

/// Forwards every change of `key` to `events` until nobody listens (checked
/// at each change and every TTL) or the watch breaks.
async fn run_watcher(
    key: LeaseKey,
    events: broadcast::Sender<KeyState>,
    ready: watch::Sender<bool>,
) {
    let mut watch = match key.watch().await {
        Ok(w) => Box::pin(w),
        Err(e) => {
            tracing::debug!(key = %key.key(), error = %e, "lock watch failed");
            return;
        }
    };
    ready.send_replace(true);
    loop {
        if events.receiver_count() == 0 {
            return;
        }
        tokio::select! {
            item = watch.next() => match item {
                Some(state) => {
                    let _ = events.send(state);
                }
                None => return,
            },
            _ = tokio::time::sleep(key.timing().ttl) => {}
        }
    }
}

fn decode_holder(seq: u64, value: &[u8]) -> Option<LockHolder> {
    let mut h: LockHolder = serde_json::from_slice(value).ok()?;
    h.token = seq;
    Some(h)
}

/// A held lock. Cheap to clone: clones are the same hold. Released by
/// [`release`](Self::release); dropping the last clone releases it in the
/// background.
#[derive(Clone)]
pub struct LockGuard {
    inner: Arc<GuardInner>,
}

struct GuardInner {
    held: Option<HeldLease>,
    name: String,
    owner: String,
    token: u64,
    acquired: Instant,
    released: AtomicBool,
    locks: Locks,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.inner.name)
            .field("owner", &self.inner.owner)
            .field("token", &self.inner.token)
            .field("valid", &self.is_valid())
            .finish()
    }
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The fencing token: the lease epoch of this hold. Strictly greater
    /// than every earlier holder's.
    pub fn token(&self) -> u64 {
        self.inner.token
    }

    /// This hold's owner id (`NODE/unique id`), as [`Lock::holder`] shows it.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// True while the lock is held and its lease deadline has not passed
    /// (checked against the monotonic clock, so it turns false on time even
    /// in a process that was paused).
    pub fn is_valid(&self) -> bool {
        !self.inner.released.load(Ordering::SeqCst)
            && self.inner.held.as_ref().is_some_and(HeldLease::is_valid)
    }

    /// The validity handle (cheap to clone into other tasks).
    pub fn validity(&self) -> Option<Validity> {
        self.inner.held.as_ref().map(HeldLease::validity)
    }

    /// Resolves when the hold ends (lost, or released).
    pub async fn lost(&self) -> LostReason {
        match &self.inner.held {
            Some(h) => h.lost().await,
            None => LostReason::Released,
        }
    }

    /// Releases the lock (for every clone): stops renewing and deletes the
    /// key so a waiter gets it at once. Releasing twice is a no-op.
    pub async fn release(self) -> Result<(), LockError> {
        self.inner.release().await
    }
}

impl GuardInner {
    async fn release(&self) -> Result<(), LockError> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(held) = &self.held else {
            return Ok(());
        };
        let was_valid = held.is_valid();
        // Audited before the delete, so the next holder's `lock.acquired`
        // cannot come first in the stream.
        let data = self.release_data(if was_valid { "released" } else { "lost" });
        if let Some(audit) = &self.locks.inner.audit {
            audit.record_sent("lock.released", data).await;
        }
        let result = held.release().await;
        result.map_err(|e| LockError::Nats {
            name: self.name.clone(),
            op: "release".into(),
            message: e.to_string(),
        })
    }

    /// Observes the hold time and describes the release for the audit log.
    fn release_data(&self, how: &str) -> serde_json::Value {
        let held_for = self.acquired.elapsed();
        if let Some(m) = &self.locks.inner.metrics {
            m.observe_lock_held(self.locks.scope_label(), &self.name, held_for);
        }
        serde_json::json!({
            "name": self.name,
            "token": self.token,
            "owner": self.owner,
            "held_ms": held_for.as_millis() as u64,
            "how": how,
        })
    }
}

impl Drop for GuardInner {
    fn drop(&mut self) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(held) = self.held.take() else {
            return;
        };
        let was_valid = held.is_valid();
        let data = self.release_data(if was_valid { "dropped" } else { "lost" });
        if let Some(audit) = &self.locks.inner.audit {
            audit.record("lock.released", data, None);
        }
        // Delete the key in the background so waiters need not wait for the
        // TTL; without a runtime the lease just expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = held.release().await {
                    tracing::debug!(error = %e, "could not release a dropped lock; it will expire");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_round_trip() {
        let h = LockHolder {
            node: "n1".into(),
            owner: "n1/abc".into(),
            token: 0,
            since_ms: 5,
        };
        let bytes = serde_json::to_vec(&h).expect("json");
        let back = decode_holder(17, &bytes).expect("decode");
        assert_eq!(back.token, 17);
        assert_eq!(back.owner, "n1/abc");
        assert_eq!(decode_holder(1, b"garbage"), None);
    }
}
