//! The app's own key-value store: `ctx.kv()`, the JetStream KV bucket `P_A`.
//!
//! Guarantees:
//! - **Isolation.** A [`Kv`] is bound to its app's bucket when the platform
//!   creates the context; no method takes a bucket name, and keys cannot
//!   contain wildcards or spaces, so there is no path to another app's data.
//!   (With app-scoped NATS credentials the server enforces it too.)
//! - **Invalid keys fail before any I/O**, with [`KvError::InvalidKey`]
//!   saying why. Keys are NATS subject tokens: `[-/_=.a-zA-Z0-9]`, `.`
//!   separating non-empty tokens.
//! - **Fenced writes (singletons).** A singleton's `ctx.kv()` writes only
//!   while its instance is active, and JetStream refuses them once a
//!   successor has activated ([`KvError::Fenced`]): `put`, `delete` and
//!   `purge` carry the fence of the instance's epoch record, checked by the
//!   server; `create`, `update` and `delete_if` carry their own revision
//!   check and are fenced by the local lease validity only. A ring app's
//!   writes inside a partition's handler (or through [`Kv::for_partition`])
//!   are fenced by that partition's record; pools write unfenced;
//!   [`Kv::unfenced`] is the explicit escape hatch. Keys starting with
//!   `_cluster.` are reserved.
//! - **Compare-and-set.** [`Kv::create`] fails with
//!   [`KvError::AlreadyExists`] when the key holds a value;
//!   [`Kv::update`] fails with [`KvError::WrongRevision`] when the key's
//!   latest revision is not the expected one. Both are decided by the server
//!   (`Nats-Expected-Last-Subject-Sequence`), never by a read first.
//! - **Durability.** A write returns once JetStream acknowledged it: on a
//!   NATS cluster of ≥ 3 servers the bucket has 3 replicas (file storage)
//!   by default, so an acknowledged write survives the loss of one server.
//!   Replicated buckets read through the stream leader (direct gets off), so
//!   a read sees every write acknowledged before it.
//! - **Watch order.** [`Kv::watch`] yields the latest value of each matching
//!   key, then every put, delete and purge in the order they were stored.
//!
//! The bucket is created on first use with [`KvOptions`] (set with
//! [`AppBuilder::kv`](crate::app::AppBuilder::kv)) and is readable with the
//! stock `nats kv` tools.
//!
//! ```no_run
//! # async fn demo(ctx: cluster_runtime::AppContext) -> Result<(), cluster_runtime::kv::KvError> {
//! use cluster_runtime::kv::KvError;
//! let kv = ctx.kv();
//! let rev = kv.put("config.color", "blue").await?;
//! match kv.update("config.color", "green", rev - 1).await {
//!     Err(KvError::WrongRevision { .. }) => { /* someone else wrote first: re-read */ }
//!     other => { other?; }
//! }
//! kv.put_json("user.1", &serde_json::json!({"name": "ada"})).await?;
//! let user: Option<serde_json::Value> = kv.get_json("user.1").await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;

mod fence;

use fence::Fence;
pub(crate) use fence::{FenceSlot, PartitionFences};
pub use fence::{EPOCH_KEY, RESERVED_TOKEN};

/// Longest key accepted (NATS subjects are bounded by the control line).
pub const MAX_KEY_LEN: usize = 1024;

/// Where the bucket keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStorage {
    /// On disk (default): survives server restarts.
    #[default]
    File,
    /// In memory: faster, lost when the servers restart.
    Memory,
}

/// How the app's bucket is created.
///
/// ```
/// use cluster_runtime::kv::{KvOptions, KvStorage};
/// let opts = KvOptions::default().replicas(3).history(20).storage(KvStorage::File);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOptions {
    replicas: Option<usize>,
    storage: KvStorage,
    history: i64,
    max_bytes: i64,
    max_value_size: i32,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            replicas: None,
            storage: KvStorage::File,
            history: 10,
            max_bytes: -1,
            max_value_size: -1,
        }
    }
}

impl KvOptions {
    /// Replicas (default: 3 on a NATS cluster of ≥ 3 servers, else 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = Some(n);
        self
    }

    /// Storage (default file).
    pub fn storage(mut self, storage: KvStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Revisions kept per key, 1–64 (default 10): what [`Kv::history`]
    /// returns.
    pub fn history(mut self, n: i64) -> Self {
        self.history = n;
        self
    }

    /// Size limit of the bucket in bytes (default unlimited).
    pub fn max_bytes(mut self, n: i64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Largest value in bytes (default: the server's max payload).
    pub fn max_value_size(mut self, n: i32) -> Self {
        self.max_value_size = n;
        self
    }

    /// Checks the options; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.history) {
            return Err(format!(
                "kv history must be between 1 and 64, got {}",
                self.history
            ));
        }
        if self.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(format!(
                "kv replicas must be between 1 and 5, got {:?}",
                self.replicas
            ));
        }
        Ok(())
    }

    pub(crate) fn replicas_or(&self, default: usize) -> usize {
        self.replicas.unwrap_or(default).max(1)
    }
}

/// What kind of KV error (matches async-nats' `*ErrorKind` vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvErrorKind {
    /// The key (or watch pattern) is not valid.
    InvalidKey,
    /// `create` found a value.
    AlreadyExists,
    /// `update` expected another revision.
    WrongRevision,
    /// A typed value did not (de)serialize.
    Codec,
    /// A fenced write was refused: this instance is not (or no longer)
    /// the active one.
    Fenced,
    /// NATS failed.
    Nats,
}

/// Why a KV operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key is invalid; nothing was sent.
    #[error("invalid KV key `{key}`: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// [`Kv::create`]: the key already holds a value.
    #[error("KV key `{key}` already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// [`Kv::update`] / [`Kv::delete_if`]: the key's latest revision is not
    /// `expected` (someone else wrote it, or it does not exist).
    #[error("KV key `{key}` is not at revision {expected}")]
    WrongRevision {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
    },
    /// A typed value could not be encoded or decoded as JSON.
    #[error("KV key `{key}`: {message}")]
    Codec {
        /// The key.
        key: String,
        /// The serde message.
        message: String,
    },
    /// A fenced write was refused — by the server (a later active has
    /// written its epoch record) or before sending (this instance is not
    /// active, or its lease is no longer valid). Nothing was written.
    #[error("KV write of `{key}` refused (fenced, epoch {epoch}): {reason}")]
    Fenced {
        /// The key.
        key: String,
        /// The epoch the write was made under (0: not active).
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// NATS failed (unreachable, timed out, bucket misconfigured).
    #[error("KV {op} on bucket `{bucket}` failed: {message}")]
    Nats {
        /// The operation.
        op: String,
        /// The bucket.
        bucket: String,
        /// The error.
        message: String,
    },
}

impl KvError {
    /// The error's kind.
    pub fn kind(&self) -> KvErrorKind {
        match self {
            KvError::InvalidKey { .. } => KvErrorKind::InvalidKey,
            KvError::AlreadyExists { .. } => KvErrorKind::AlreadyExists,
            KvError::WrongRevision { .. } => KvErrorKind::WrongRevision,
            KvError::Codec { .. } => KvErrorKind::Codec,
            KvError::Fenced { .. } => KvErrorKind::Fenced,
            KvError::Nats { .. } => KvErrorKind::Nats,
        }
    }
}

impl From<KvError> for crate::rpc::HandlerError {
    fn from(e: KvError) -> Self {
        crate::rpc::HandlerError::new(e)
    }
}

fn check_tokens(key: &str, wildcards: bool) -> Result<(), String> {
    if key.is_empty() {
        return Err("keys must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "keys are at most {MAX_KEY_LEN} bytes (this one has {})",
            key.len()
        ));
    }
    let tokens: Vec<&str> = key.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(
                "`.` separates non-empty tokens (no leading, trailing or double `.`)".into(),
            );
        }
        if wildcards && (*token == "*" || (*token == ">" && i + 1 == tokens.len())) {
            continue;
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=')))
        {
            return Err(if wildcards && (c == '*' || c == '>') {
                "wildcards are whole tokens: `*` anywhere, `>` last".to_owned()
            } else {
                format!("character `{c}` is not allowed (use letters, digits and - / _ = .)")
            });
        }
    }
    Ok(())
}

/// Checks a key without touching NATS.
///
/// ```
/// use cluster_runtime::kv::validate_key;
/// assert!(validate_key("user.1/profile").is_ok());
/// assert!(validate_key("a..b").is_err());
/// assert!(validate_key("a b").is_err());
/// assert!(validate_key("a.*").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), KvError> {
    check_tokens(key, false).map_err(|reason| KvError::InvalidKey {
        key: key.to_owned(),
        reason,
    })?;
    if fence::is_reserved(key) {
        return Err(KvError::InvalidKey {
            key: key.to_owned(),
            reason: format!(
                "keys starting with `{RESERVED_TOKEN}.` are reserved for the framework"
            ),
        });
    }
    Ok(())
}

/// Checks a watch pattern: a key whose tokens may be `*`, or `>` last.
pub fn validate_pattern(pattern: &str) -> Result<(), KvError> {
    check_tokens(pattern, true).map_err(|reason| KvError::InvalidKey {
        key: pattern.to_owned(),
        reason,
    })
}

/// What a stored revision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOperation {
    /// A value was written.
    Put,
    /// The key was deleted (history kept).
    Delete,
    /// The key was purged (history dropped).
    Purge,
}

/// One revision of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value (empty for deletes and purges).
    pub value: Bytes,
    /// The revision (the bucket stream's sequence): grows with every write
    /// to the bucket.
    pub revision: u64,
    /// What happened.
    pub operation: KvOperation,
    /// When the server stored it.
    pub created: SystemTime,
}

impl KvEntry {
    fn from_nats(e: kv::Entry) -> KvEntry {
        KvEntry {
            key: e.key,
            value: e.value,
            revision: e.revision,
            operation: match e.operation {
                kv::Operation::Put => KvOperation::Put,
                kv::Operation::Delete => KvOperation::Delete,
                kv::Operation::Purge => KvOperation::Purge,
            },
            created: SystemTime::from(e.created),
        }
    }

    /// Decodes the value as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, KvError> {
        serde_json::from_slice(&self.value).map_err(|e| KvError::Codec {
            key: self.key.clone(),
            message: format!("value is not the expected JSON: {e}"),
        })
    }
}

/// The app's KV bucket. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
    writes: Writes,
}

/// Whether writes carry a fence.
#[derive(Debug, Clone)]
enum Writes {
    /// Written as they are (pools, rings, data the active does not own).
    Unfenced,
    /// A singleton's writes: only while active, refused by the server once
    /// a successor has activated.
    Fenced(Arc<FenceSlot>),
    /// A ring app's writes: made in a partition's handler (or through
    /// [`Kv::for_partition`]) they are fenced by that partition's record;
    /// others are unfenced.
    Ring(Arc<PartitionFences>, Option<u32>),
}

struct Inner {
    js: jetstream::Context,
    bucket: String,
    options: KvOptions,
    default_replicas: usize,
    store: OnceCell<kv::Store>,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv")
            .field("bucket", &self.inner.bucket)
            .field("options", &self.inner.options)
            .field("fenced", &self.is_fenced())
            .finish_non_exhaustive()
    }
}

impl Kv {
    /// The KV bucket `bucket` (created on first use with `options`;
    /// `default_replicas` applies when the options set none).
    pub fn new(
        js: jetstream::Context,
        bucket: String,
        options: KvOptions,
        default_replicas: usize,
    ) -> Kv {
        Kv {
            inner: Arc::new(Inner {
                js,
                bucket,
                options,
                default_replicas,
                store: OnceCell::new(),
            }),
            writes: Writes::Unfenced,
        }
    }

    /// This bucket with writes fenced by `slot` (a singleton's context).
    pub(crate) fn fenced_by(mut self, slot: Arc<FenceSlot>) -> Kv {
        self.writes = Writes::Fenced(slot);
        self
    }

    /// This bucket with writes fenced per ring partition (a ring app's
    /// context).
    pub(crate) fn fenced_by_partitions(mut self, fences: Arc<PartitionFences>) -> Kv {
        self.writes = Writes::Ring(fences, None);
        self
    }

    /// A ring app's bucket with every write fenced by partition `p`: the
    /// server refuses them once another node owns `p` (and they fail at once
    /// while this node does not). Inside a partition's handler
    /// `ctx.kv()` does this by itself for the partition the call arrived on.
    /// On other apps this is the same handle.
    pub fn for_partition(&self, p: u32) -> Kv {
        let writes = match &self.writes {
            Writes::Ring(fences, _) => Writes::Ring(Arc::clone(fences), Some(p)),
            other => other.clone(),
        };
        Kv {
            inner: Arc::clone(&self.inner),
            writes,
        }
    }

    /// Writes the epoch records of ring partitions `owned` (partition,
    /// claim revision) and arms their fences (before the node serves them).
    /// Fails with [`KvError::Fenced`] when a later owner of one of them has
    /// already written its record.
    pub(crate) async fn arm_partition_fences(
        &self,
        validity: &crate::lease::Validity,
        owned: &[(u32, u64)],
        node: &str,
    ) -> Result<(), KvError> {
        let Writes::Ring(fences, _) = &self.writes else {
            return Ok(());
        };
        let store = self.store().await?;
        let taken = futures::future::join_all(owned.iter().map(|&(p, token)| async move {
            let key = fence::partition_record_key(p);
            fence::take(&self.inner.js, store, &key, validity, token, node)
                .await
                .map(|f| (p, f))
        }))
        .await;
        let mut first_error = None;
        for result in taken {
            match result {
                Ok((p, f)) => fences.set(p, f),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Disarms the fences of ring partitions this node stops owning.
    pub(crate) fn disarm_partition_fences(&self, partitions: &[u32]) {
        if let Writes::Ring(fences, _) = &self.writes {
            fences.remove(partitions);
        }
    }

    /// The same bucket with unfenced writes: for data the active instance
    /// does not own (a standby's own notes, a pool's shared records).
    /// Writes through it are never refused for being stale — use it only
    /// where a deposed writer cannot do harm.
    ///
    /// ```no_run
    /// # async fn demo(ctx: cluster_runtime::AppContext) -> Result<(), cluster_runtime::kv::KvError> {
    /// ctx.kv().unfenced().put("standby.seen", "yes").await?;
    /// # Ok(()) }
    /// ```
    pub fn unfenced(&self) -> Kv {
        Kv {
            inner: Arc::clone(&self.inner),
            writes: Writes::Unfenced,
        }
    }

    /// A handle on this bucket whose writes are fenced by a lock hold:
    /// writes the lock's epoch record (`_cluster.epoch.lock.NAME`, by the
    /// same CAS rule as an active's) and returns a handle whose `put`,
    /// `delete` and `purge` JetStream refuses once a later holder of the
    /// lock has done the same — even if this holder was paused and its own
    /// clock still says it holds the lock. Fails with [`KvError::Fenced`]
    /// when the hold has ended or a later holder already took the record.
    ///
    /// ```no_run
    /// # async fn demo(ctx: cluster_runtime::AppContext) -> Result<(), Box<dyn std::error::Error>> {
    /// let guard = ctx.lock("report")?.acquire(std::time::Duration::from_secs(5)).await?;
    /// let kv = ctx.kv().fenced_by_lock(&guard).await?;
    /// kv.put("report.latest", "done").await?; // refused once someone else holds `report`
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced_by_lock(&self, guard: &crate::lock::LockGuard) -> Result<Kv, KvError> {
        let record = format!("{EPOCH_KEY}.lock.{}", guard.name());
        let Some(validity) = guard.validity().filter(crate::lease::Validity::is_valid) else {
            return Err(KvError::Fenced {
                key: record,
                epoch: guard.token(),
                reason: format!("the hold of lock `{}` has ended", guard.name()),
            });
        };
        let store = self.store().await?;
        let fence = fence::take(
            &self.inner.js,
            store,
            &record,
            &validity,
            guard.token(),
            guard.owner(),
        )
        .await?;
        let slot = Arc::new(FenceSlot::default());
        slot.set(Some(fence));
        Ok(Kv {
            inner: Arc::clone(&self.inner),
            writes: Writes::Fenced(slot),
        })
    }

    /// Whether writes through this handle are fenced: a singleton's
    /// `ctx.kv()`, or a ring app's inside a partition's handler or through
    /// [`for_partition`](Self::for_partition).
    pub fn is_fenced(&self) -> bool {
        match &self.writes {
            Writes::Unfenced => false,
            Writes::Fenced(_) => true,
            Writes::Ring(_, p) => p.or_else(current_partition).is_some(),
        }
    }

    /// Writes the epoch record for the holder of `validity` and arms the
    /// fence: from here until [`disarm`](Self::disarm) (or the end of
    /// validity) writes carry it. Fails with [`KvError::Fenced`] when a
    /// later holder has already activated.
    pub(crate) async fn arm_fence(
        &self,
        validity: &crate::lease::Validity,
        node: &str,
    ) -> Result<(), KvError> {
        let Writes::Fenced(slot) = &self.writes else {
            return Ok(());
        };
        let store = self.store().await?;
        let fence = fence::take(
            &self.inner.js,
            store,
            EPOCH_KEY,
            validity,
            validity.epoch(),
            node,
        )
        .await?;
        slot.set(Some(fence));
        Ok(())
    }

    /// Stops fencing writes under the current epoch: every fenced write
    /// fails until the next [`arm_fence`](Self::arm_fence).
    pub(crate) fn disarm_fence(&self) {
        if let Writes::Fenced(slot) = &self.writes {
            slot.set(None);
        }
    }

    /// The fence a write must carry: `Ok(None)` for unfenced writes,
    /// `Err(Fenced)` when this instance may not write now.
    fn fence_for(&self, key: &str) -> Result<Option<Fence>, KvError> {
        match &self.writes {
            Writes::Unfenced => Ok(None),
            Writes::Ring(fences, explicit) => match explicit.or_else(current_partition) {
                None => Ok(None),
                Some(p) => fences.valid(p).map(Some).ok_or_else(|| KvError::Fenced {
                    key: key.to_owned(),
                    epoch: 0,
                    reason: format!("this node does not own ring partition {p} (any more)"),
                }),
            },
            Writes::Fenced(slot) => slot.valid().map(Some).ok_or_else(|| KvError::Fenced {
                key: key.to_owned(),
                epoch: 0,
                reason: "this instance is not the active one (or its lease is no longer \
                         valid); a singleton's KV writes are fenced — use \
                         `ctx.kv().unfenced()` for data the active does not own"
                    .to_owned(),
            }),
        }
    }

    /// Publishes a fenced write (`message` carries the fence check) and
    /// maps the server's refusal to [`KvError::Fenced`].
    async fn send_fenced(
        &self,
        key: &str,
        op: &str,
        fence: &Fence,
        message: jetstream::message::PublishMessage,
    ) -> Result<u64, KvError> {
        let store = self.store().await?;
        let subject = fence::key_subject(store, key)?;
        let sent = async { self.inner.js.send_publish(subject, message).await?.await };
        match sent.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(KvError::Fenced {
                    key: key.to_owned(),
                    epoch: fence.epoch(),
                    reason: "refused by the server: a later active has taken over".to_owned(),
                })
            }
            Err(e) => Err(self.nats_err(&format!("{op} `{key}`"), e)),
        }
    }

    /// The bucket's name (`P_A`).
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    fn nats_err(&self, op: &str, e: impl fmt::Display) -> KvError {
        KvError::Nats {
            op: op.to_owned(),
            bucket: self.inner.bucket.clone(),
            message: e.to_string(),
        }
    }

    /// Opens (creating if needed) the bucket now rather than on first use.
    pub async fn open(&self) -> Result<(), KvError> {
        self.store().await.map(|_| ())
    }

    async fn store(&self) -> Result<&kv::Store, KvError> {
        self.inner
            .store
            .get_or_try_init(|| async {
                open_bucket(
                    &self.inner.js,
                    &self.inner.bucket,
                    &self.inner.options,
                    self.inner.default_replicas,
                )
                .await
                .map_err(|e| self.nats_err("open", e))
            })
            .await
    }

    /// The latest value of `key` (`None` if absent or deleted).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self.entry(key).await?.map(|e| e.value))
    }

    /// The latest revision of `key` (`None` if absent or deleted).
    pub async fn entry(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        validate_key(key)?;
        let store = self.store().await?;
        let entry = store
            .entry(key)
            .await
            .map_err(|e| self.nats_err(&format!("get `{key}`"), e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(KvEntry::from_nats))
    }

    /// Writes `value`; returns the new revision.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64, KvError> {
        validate_key(key)?;
        if let Some(fence) = self.fence_for(key)? {
            let message = fence.message().payload(value.into());
            return self.send_fenced(key, "put", &fence, message).await;
        }
        let store = self.store().await?;
        store
            .put(key, value.into())
            .await
            .map_err(|e| self.nats_err(&format!("put `{key}`"), e))
    }

    /// Writes `value` only if `key` holds no value (absent or deleted);
    /// otherwise fails with [`KvError::AlreadyExists`].
    pub async fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<u64, KvError> {
        validate_key(key)?;
        self.fence_for(key)?;
        let store = self.store().await?;
        match store.create(key, value.into()).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(KvError::AlreadyExists {
                    key: key.to_owned(),
                })
            }
            Err(e) => Err(self.nats_err(&format!("create `{key}`"), e)),
        }
    }

    /// Writes `value` only if the latest revision of `key` is `expected`;
    /// otherwise fails with [`KvError::WrongRevision`].
    pub async fn update(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        expected: u64,
    ) -> Result<u64, KvError> {
        validate_key(key)?;
        self.fence_for(key)?;
        let store = self.store().await?;
        match store.update(key, value.into(), expected).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(KvError::WrongRevision {
                    key: key.to_owned(),
                    expected,
                })
            }
            Err(e) => Err(self.nats_err(&format!("update `{key}`"), e)),
        }
    }

    /// Deletes `key` (its history is kept; watchers see a delete).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        validate_key(key)?;
        if let Some(fence) = self.fence_for(key)? {
            let message = fence.message().header("KV-Operation", "DEL");
            return self
                .send_fenced(key, "delete", &fence, message)
                .await
                .map(|_| ());
        }
        let store = self.store().await?;
        store
            .delete(key)
            .await
            .map_err(|e| self.nats_err(&format!("delete `{key}`"), e))
    }

    /// Deletes `key` only if its latest revision is `expected`.
    pub async fn delete_if(&self, key: &str, expected: u64) -> Result<(), KvError> {
        validate_key(key)?;
        self.fence_for(key)?;
        let store = self.store().await?;
        // Published directly so the server's verdict is visible as an error
        // kind (async-nats' delete folds it into an opaque error).
        let publish = jetstream::message::PublishMessage::build()
            .header("KV-Operation", "DEL")
            .expected_last_subject_sequence(expected);
        let op = format!("delete `{key}`");
        let sent = async {
            self.inner
                .js
                .send_publish(format!("$KV.{}.{key}", store.name), publish)
                .await?
                .await
        };
        match sent.await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(KvError::WrongRevision {
                    key: key.to_owned(),
                    expected,
                })
            }
            Err(e) => Err(self.nats_err(&op, e)),
        }
    }

    /// Deletes `key` and drops its history.
    pub async fn purge(&self, key: &str) -> Result<(), KvError> {
        validate_key(key)?;
        if let Some(fence) = self.fence_for(key)? {
            let message = fence
                .message()
                .header("KV-Operation", "PURGE")
                .header("Nats-Rollup", "sub");
            return self
                .send_fenced(key, "purge", &fence, message)
                .await
                .map(|_| ());
        }
        let store = self.store().await?;
        store
            .purge(key)
            .await
            .map_err(|e| self.nats_err(&format!("purge `{key}`"), e))
    }

    /// Every key holding a value.
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let store = self.store().await?;
        let keys = store.keys().await.map_err(|e| self.nats_err("keys", e))?;
        let keys: Vec<Result<String, _>> = keys.collect().await;
        let mut out = keys
            .into_iter()
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.nats_err("keys", e))?;
        out.retain(|k| !fence::is_reserved(k));
        out.sort();
        Ok(out)
    }

    /// The revisions of `key` still kept (up to the bucket's history),
    /// oldest first, deletes included.
    pub async fn history(&self, key: &str) -> Result<Vec<KvEntry>, KvError> {
        validate_key(key)?;
        let store = self.store().await?;
        let op = format!("history of `{key}`");
        let history = store
            .history(key)
            .await
            .map_err(|e| self.nats_err(&op, e))?;
        let entries: Vec<Result<kv::Entry, _>> = history.collect().await;
        entries
            .into_iter()
            .map(|e| e.map(KvEntry::from_nats).map_err(|e| self.nats_err(&op, e)))
            .collect()
    }

    /// The latest value of every key matching `pattern` (NATS wildcards:
    /// `*` one token, `>` the rest), then every change, in order.
    pub async fn watch(&self, pattern: &str) -> Result<KvWatch, KvError> {
        validate_pattern(pattern)?;
        let store = self.store().await?;
        let watch = store
            .watch_with_history(pattern)
            .await
            .map_err(|e| self.nats_err(&format!("watch `{pattern}`"), e))?;
        Ok(KvWatch {
            inner: Box::pin(watch.filter_map(|e| async move {
                e.ok()
                    .filter(|e| !fence::is_reserved(&e.key))
                    .map(KvEntry::from_nats)
            })),
        })
    }

    /// Every key: [`watch`](Self::watch) with `>`.
    pub async fn watch_all(&self) -> Result<KvWatch, KvError> {
        self.watch(">").await
    }

    // ---- typed (JSON) helpers ----------------------------------------------

    fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Bytes, KvError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| KvError::Codec {
                key: key.to_owned(),
                message: format!("value does not serialize: {e}"),
            })
    }

    /// [`get`](Self::get), decoding JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        match self.entry(key).await? {
            Some(e) => e.json().map(Some),
            None => Ok(None),
        }
    }

    /// [`entry`](Self::entry), decoding JSON: `(value, revision)`.
    pub async fn entry_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, KvError> {
        match self.entry(key).await? {
            Some(e) => Ok(Some((e.json()?, e.revision))),
            None => Ok(None),
        }
    }

    /// [`put`](Self::put), encoding JSON.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<u64, KvError> {
        validate_key(key)?;
        self.put(key, Self::encode(key, value)?).await
    }

    /// [`create`](Self::create), encoding JSON.
    pub async fn create_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<u64, KvError> {
        validate_key(key)?;
        self.create(key, Self::encode(key, value)?).await
    }

    /// [`update`](Self::update), encoding JSON.
    pub async fn update_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expected: u64,
    ) -> Result<u64, KvError> {
        validate_key(key)?;
        self.update(key, Self::encode(key, value)?, expected).await
    }
}

/// The ring partition of the call being handled, if any.
fn current_partition() -> Option<u32> {
    crate::rpc::RequestInfo::current().and_then(|i| i.partition())
}

/// Changes of watched keys ([`Kv::watch`]).
pub struct KvWatch {
    inner: Pin<Box<dyn Stream<Item = KvEntry> + Send>>,
}

impl fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvWatch").finish_non_exhaustive()
    }
}

impl Stream for KvWatch {
    type Item = KvEntry;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KvEntry>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Opens the bucket, creating it with `options` if it does not exist.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    options: &KvOptions,
    default_replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    options.validate()?;
    let replicas = options.replicas_or(default_replicas);
    let config = kv::Config {
        bucket: bucket.to_owned(),
        history: options.history,
        num_replicas: replicas,
        storage: match options.storage {
            KvStorage::File => jetstream::stream::StorageType::File,
            KvStorage::Memory => jetstream::stream::StorageType::Memory,
        },
        max_bytes: options.max_bytes,
        max_value_size: options.max_value_size,
        ..Default::default()
    };
    let created = match js.create_key_value(config).await {
        Ok(store) => store,
        // Another node created it meanwhile.
        Err(e) => return js.get_key_value(bucket).await.map_err(|_| e.to_string()),
    };
    if replicas == 1 {
        return Ok(created);
    }
    // async-nats creates KV buckets with direct gets on: any replica may
    // answer a read, including one that has not applied the latest
    // acknowledged write. Reads go through the leader instead.
    let stream_name = format!("KV_{bucket}");
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| e.to_string())?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .config
        .clone();
    if config.allow_direct {
        config.allow_direct = false;
        js.update_stream(config).await.map_err(|e| e.to_string())?;
        // Give the update a moment to reach the replicas before the store
        // reads the stream's configuration again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for ok in ["a", "a.b", "user/1", "x=y", "A-b_c", "a.b.c.d"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a.>", "é", "$KV.x"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        for ok in [">", "a.*", "a.>", "*.b.*", "a"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["a.>.b", "a*", "", "a..>"] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
        let err = validate_key("a b").expect_err("space");
        assert_eq!(err.kind(), KvErrorKind::InvalidKey);
        assert!(err.to_string().contains("character ` `"), "{err}");
    }

    #[test]
    fn options_validate() {
        assert!(KvOptions::default().validate().is_ok());
        assert!(KvOptions::default().history(0).validate().is_err());
        assert!(KvOptions::default().history(65).validate().is_err());
        assert!(KvOptions::default().replicas(7).validate().is_err());
        assert_eq!(KvOptions::default().replicas_or(3), 3);
        assert_eq!(KvOptions::default().replicas(1).replicas_or(3), 1);
    }
}
