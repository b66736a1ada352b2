//! Ring: `P` partitions of an app's keys, each owned by exactly one node at
//! a time, moved between nodes as members join and leave.
//!
//! # Guarantees
//!
//! - **At most one owner per partition at any instant** (DESIGN §8,
//!   invariant 2). A node owns partition `p` only while the claim key `p.<p>`
//!   in `P_A_coord` names it *and* the member lease its claim names is valid
//!   on its clock. [The protocol](#the-protocol) below says how.
//! - **One partition function, part of the wire contract**:
//!   [`xxh3_partition`] — `xxh3_64(key bytes, seed 0) mod P`. Callers route
//!   with it ([`crate::rpc::Call::key`]), owners use it
//!   ([`Ring::partition_of`]); `docs/ring-partitions.json` holds golden
//!   vectors for any other implementation.
//! - **Balanced, minimal movement**: desired owners come from rendezvous
//!   hashing with bounded loads ([`assign`]): every member gets at most
//!   `⌈P/N⌉` partitions, and a join or leave moves about `P/N` of them.
//! - **Planned moves cost callers nothing**: the losing owner unsubscribes and
//!   drains before it frees the claim; the gaining owner claims, runs
//!   `on_own`, then subscribes. Between the two a call sees *no responders*
//!   and the client retries within its deadline.
//!
//! # The protocol
//!
//! Keys in the app's coordination bucket `P_A_coord`:
//!
//! | Key | Value | Written |
//! |---|---|---|
//! | `ring` | `{"partitions": P}` | once, by the first node; a node with another `P` refuses to start |
//! | `member.<node>` | `{"node", "epoch"}` | a [lease](crate::lease) per ring member: acquired on join, renewed every `renew`, deleted on leave, expires `ttl` after a crash |
//! | `p.<N>` | `{"owner", "epoch"}` | claim of partition `N`: written with compare-and-set, naming the owner and the *epoch* (acquiring revision) of its member lease; never renewed |
//!
//! A claim `{X, e}` is **valid** while `member.X` is held with epoch `e`.
//! Every node watches `ring`, `member.>` and `p.>` through one ordered
//! consumer, so it sees the keys' changes in stream order; once the initial
//! snapshot is complete its view is exact as of the last message seen.
//!
//! - *Claim*: a node whose lease is valid writes `p.<N> = {me, my_epoch}`
//!   with `Nats-Expected-Last-Subject-Sequence` equal to the sequence it saw
//!   for `p.<N>` — only when that key is free (deleted) or its claim is
//!   stale. The write that wins makes it the owner, provided its lease is
//!   still valid when the acknowledgement arrives.
//! - *Hand-off* (graceful): the owner stops serving `p` (unsubscribe, drain
//!   calls in flight), runs `on_release`, then deletes `p.<N>` expecting its
//!   own revision. Only then can the next owner's compare-and-set succeed.
//!   A claim a node has given up is never owned again: its delete may land
//!   late (an acknowledgement can be lost) and the node's watch may show the
//!   claim only after it was given up, so the node deletes it (again) and
//!   claims afresh.
//! - *Leave* (graceful): the node hands off everything locally, then deletes
//!   its member lease — one write that makes all its claims stale at once.
//! - *Crash or pause*: the member lease stops being renewed. The owner's
//!   validity ends `deadline` after its last acknowledged renew was *sent*;
//!   the server expires the key `ttl` after it *stored* that renew, later.
//!   Only the expiry marker makes the claims stale, so nobody can claim a
//!   partition before its previous owner has stopped owning it.
//!
//! **Why two owners are impossible**: writes to `p.<N>` are serialised by
//! compare-and-set, and a node overwrites a claim `{X, e}` only after its
//! ordered view showed `member.X` leaving epoch `e` — by X's own delete (after
//! X released everything) or by expiry (after X's validity ended) — or after
//! X deleted the claim itself (after X released `p`). A node that lost its
//! lease never writes a claim, and one whose claim was stored too late finds
//! its lease invalid when the acknowledgement arrives and does not own.
//!
//! Cost: in steady state a node writes **one message per renew interval**
//! (its member lease), whatever `P` is. Each moved partition costs one
//! delete and one claim, pipelined per batch.
//!
//! Handlers of a ring app served on a partition subject are gated by
//! [`Ring::owns`]: a node that resumes after a pause longer than its lease
//! answers `unavailable` for partitions it no longer owns instead of running
//! the handler.

mod assign;
pub(crate) mod claims;
pub(crate) mod task;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::lease::Validity;

pub use assign::assign;

/// The partition function, part of the wire contract: `xxh3_64(key) mod
/// partitions`, xxh3 with seed 0, the key's bytes as they are. It never
/// changes; `docs/ring-partitions.json` holds golden vectors. `partitions`
/// 0 yields 0.
///
/// ```
/// use cluster_runtime::ring::xxh3_partition;
/// let p = xxh3_partition(b"user:1", 64);
/// assert!(p < 64);
/// assert_eq!(p, xxh3_partition(b"user:1", 64));
/// assert_eq!(xxh3_partition(b"anything", 1), 0);
/// ```
pub fn xxh3_partition(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let p = xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions);
    // p < partitions ≤ u32::MAX
    u32::try_from(p).unwrap_or(0)
}

/// A batch of partitions, in ascending order without duplicates: what
/// `on_own` and `on_release` receive, and what [`Ring::owned`] returns.
///
/// ```
/// use cluster_runtime::ring::Partitions;
/// let p = Partitions::new([7, 3, 7]);
/// assert_eq!(p.as_slice(), &[3, 7]);
/// assert!(p.contains(7) && !p.contains(4));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partitions(Vec<u32>);

impl Partitions {
    /// The partitions, sorted and without duplicates.
    pub fn new(partitions: impl IntoIterator<Item = u32>) -> Self {
        let mut v: Vec<u32> = partitions.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Partitions(v)
    }

    /// The partitions as a slice.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// Iterates over the partitions.
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, u32>> {
        self.0.iter().copied()
    }

    /// How many partitions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `partition` is one of them.
    pub fn contains(&self, partition: u32) -> bool {
        self.0.binary_search(&partition).is_ok()
    }
}

impl From<Vec<u32>> for Partitions {
    fn from(v: Vec<u32>) -> Self {
        Partitions::new(v)
    }
}

impl FromIterator<u32> for Partitions {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        Partitions::new(iter)
    }
}

impl IntoIterator for Partitions {
    type Item = u32;
    type IntoIter = std::vec::IntoIter<u32>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Partitions {
    type Item = u32;
    type IntoIter = std::iter::Copied<std::slice::Iter<'a, u32>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Who owns what, as this node sees it (from its watch of the claim keys).
/// While a partition is being handed off it has no owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingTable {
    /// The partition count `P`.
    pub partitions: u32,
    /// The owner of each partition (index = partition), `None` while
    /// unowned.
    pub owners: Vec<Option<String>>,
    /// Live ring members (holders of a ring member lease), sorted.
    pub members: Vec<String>,
}

impl RingTable {
    /// The owner of `partition`, if any.
    pub fn owner(&self, partition: u32) -> Option<&str> {
        self.owners
            .get(partition as usize)
            .and_then(|o| o.as_deref())
    }

    /// The partitions `node` owns.
    pub fn owned_by(&self, node: &str) -> Partitions {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_deref() == Some(node))
            .filter_map(|(p, _)| u32::try_from(p).ok())
            .collect()
    }

    /// Whether every partition has an owner.
    pub fn is_complete(&self) -> bool {
        self.owners.iter().all(Option::is_some)
    }
}

/// The ring as seen from one node: the partition function, this node's
/// partitions, and the ownership table. Reached through
/// [`AppContext::ring`](crate::app::AppContext::ring); cheap to clone.
///
/// For an app that is not a ring, `partitions()` is 0, nothing is owned and
/// the table is empty.
///
/// ```no_run
/// # async fn demo(ctx: cluster_runtime::AppContext) {
/// let ring = ctx.ring();
/// let p = ring.partition_of("user:1");
/// if ring.owns(p) {
///     // serve from local state
/// } else if let Some(owner) = ring.owner_of("user:1") {
///     println!("user:1 lives on {owner}");
/// }
/// let mut table = ring.watch();
/// table.changed().await.ok();
/// # }
/// ```
#[derive(Clone)]
pub struct Ring {
    inner: Arc<RingInner>,
}

struct RingInner {
    count: u32,
    /// Bit `p` set while this node owns partition `p`.
    owned: Box<[AtomicU64]>,
    /// The claim revision (per-partition fencing token) of each owned
    /// partition.
    tokens: Mutex<BTreeMap<u32, u64>>,
    /// Validity of the member lease the claims name.
    validity: Mutex<Option<Validity>>,
    table: watch::Sender<RingTable>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("partitions", &self.inner.count)
            .field("owned", &self.owned())
            .finish()
    }
}

impl Ring {
    /// A view of a ring of `partitions` partitions (0 for apps that are not
    /// rings).
    pub(crate) fn new(partitions: u32) -> Self {
        let words = (partitions as usize).div_ceil(64);
        Ring {
            inner: Arc::new(RingInner {
                count: partitions,
                owned: (0..words).map(|_| AtomicU64::new(0)).collect(),
                tokens: Mutex::new(BTreeMap::new()),
                validity: Mutex::new(None),
                table: watch::Sender::new(RingTable {
                    partitions,
                    owners: vec![None; partitions as usize],
                    members: Vec::new(),
                }),
            }),
        }
    }

    /// The partition count `P` (0 for apps that are not rings).
    pub fn partitions(&self) -> u32 {
        self.inner.count
    }

    /// The partition of `key` ([`xxh3_partition`]).
    pub fn partition_of(&self, key: impl AsRef<[u8]>) -> u32 {
        xxh3_partition(key.as_ref(), self.inner.count)
    }

    /// The owner of `key`'s partition as this node last saw it, if any.
    pub fn owner_of(&self, key: impl AsRef<[u8]>) -> Option<String> {
        let p = self.partition_of(key);
        self.inner.table.borrow().owner(p).map(str::to_owned)
    }

    /// True while this node owns `partition`: it holds the claim and its
    /// lease is valid. Checked against the clock, so it turns false on time
    /// even when the node was paused or cut off.
    pub fn owns(&self, partition: u32) -> bool {
        let (word, bit) = (partition as usize / 64, partition % 64);
        let set = self
            .inner
            .owned
            .get(word)
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << bit) != 0);
        set && self.lease_valid()
    }

    /// True while this node owns `key`'s partition.
    pub fn owns_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.owns(self.partition_of(key))
    }

    /// The partitions this node owns now (empty once its lease is invalid).
    pub fn owned(&self) -> Partitions {
        if !self.lease_valid() {
            return Partitions::default();
        }
        self.owned_bits()
    }

    /// The fencing token of `partition` while this node owns it: the
    /// revision of its claim, which grows with every change of owner.
    pub fn fencing_token(&self, partition: u32) -> Option<u64> {
        if !self.owns(partition) {
            return None;
        }
        self.inner.tokens.lock().ok()?.get(&partition).copied()
    }

    /// The ownership table as last seen.
    pub fn table(&self) -> RingTable {
        self.inner.table.borrow().clone()
    }

    /// Watches the ownership table.
    pub fn watch(&self) -> watch::Receiver<RingTable> {
        self.inner.table.subscribe()
    }

    fn lease_valid(&self) -> bool {
        match self.inner.validity.lock() {
            Ok(v) => v.as_ref().is_some_and(Validity::is_valid),
            Err(_) => false,
        }
    }

    fn owned_bits(&self) -> Partitions {
        let mut out = Vec::new();
        for (w, word) in self.inner.owned.iter().enumerate() {
            let mut bits = word.load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                out.push(w as u32 * 64 + b);
                bits &= bits - 1;
            }
        }
        Partitions(out)
    }

    pub(crate) fn set_validity(&self, validity: Option<Validity>) {
        if let Ok(mut v) = self.inner.validity.lock() {
            *v = validity;
        }
    }

    /// Marks `partitions` owned with their claim revisions.
    pub(crate) fn mark_owned(&self, partitions: &[(u32, u64)]) {
        if let Ok(mut tokens) = self.inner.tokens.lock() {
            for &(p, token) in partitions {
                tokens.insert(p, token);
            }
        }
        for &(p, _) in partitions {
            if let Some(w) = self.inner.owned.get(p as usize / 64) {
                w.fetch_or(1 << (p % 64), Ordering::SeqCst);
            }
        }
    }

    /// Marks `partitions` not owned.
    pub(crate) fn mark_released(&self, partitions: &[u32]) {
        for &p in partitions {
            if let Some(w) = self.inner.owned.get(p as usize / 64) {
                w.fetch_and(!(1 << (p % 64)), Ordering::SeqCst);
            }
        }
        if let Ok(mut tokens) = self.inner.tokens.lock() {
            for p in partitions {
                tokens.remove(p);
            }
        }
    }

    pub(crate) fn publish_table(&self, table: RingTable) {
        self.inner.table.send_if_modified(|t| {
            let changed = *t != table;
            *t = table;
            changed
        });
    }
}

/// What happened to a batch of partitions on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnershipChange {
    /// Claimed: this node owns them from now on (before `on_own` runs).
    Own,
    /// Subscribed (with a server round trip): calls reach this node.
    Serve,
    /// No longer owned: unsubscribed, drained, `on_release` ran (graceful),
    /// or the lease was lost.
    Release,
}

/// A change of ownership, recorded with the machine-wide monotonic clock
/// (like [`RoleEvent`](crate::instance::RoleEvent)) so the invariant checker
/// can compare node processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipEvent {
    /// Node id.
    pub node: String,
    /// App name.
    pub app: String,
    /// What happened.
    pub change: OwnershipChange,
    /// The partitions, ascending.
    pub partitions: Vec<u32>,
    /// For `own`: each partition's claim revision (fencing token), in the
    /// order of `partitions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u64>,
    /// `CLOCK_MONOTONIC` nanoseconds of the change.
    pub t_ns: u64,
    /// For a release after the lease was lost: when its validity ended, if
    /// that was earlier than `t_ns` (a paused or cut-off node notices late,
    /// but stopped owning at its deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until_ns: Option<u64>,
}

/// Receives every ownership change of every ring app on this node.
pub type OwnershipObserver = Arc<dyn Fn(&OwnershipEvent) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh3_matches_the_reference_for_the_empty_input() {
        // XXH3_64bits("") from xxHash's own sanity test vectors.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(
            xxh3_partition(b"", 4096),
            (0x2D06_8005_38D3_94C2u64 % 4096) as u32
        );
    }

    #[derive(Deserialize)]
    struct Golden {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        key_hex: String,
        xxh3_64: String,
        partitions: BTreeMap<String, u32>,
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }

    #[test]
    fn partition_function_matches_the_golden_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ring-partitions.json");
        let text = std::fs::read_to_string(path).expect("docs/ring-partitions.json");
        let golden: Golden = serde_json::from_str(&text).expect("golden vectors parse");
        assert!(golden.vectors.len() >= 20);
        for v in &golden.vectors {
            let key = unhex(&v.key_hex);
            assert_eq!(
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&key)),
                v.xxh3_64,
                "xxh3_64 of {}",
                v.key_hex
            );
            assert_eq!(v.partitions.len(), 4);
            for (p, want) in &v.partitions {
                let p: u32 = p.parse().expect("partition count");
                assert_eq!(xxh3_partition(&key, p), *want, "{} mod {p}", v.key_hex);
            }
        }
    }

    #[test]
    fn ownership_bits() {
        let ring = Ring::new(256);
        assert!(ring.owned().is_empty());
        ring.mark_owned(&[(3, 10), (64, 11), (255, 12)]);
        assert_eq!(ring.owned_bits().as_slice(), &[3, 64, 255]);
        // Without a valid lease nothing counts as owned.
        assert!(!ring.owns(3));
        assert!(ring.owned().is_empty());
        assert_eq!(ring.fencing_token(255), None);
        ring.mark_released(&[64]);
        assert_eq!(ring.owned_bits().as_slice(), &[3, 255]);
        let none = Ring::new(0);
        assert_eq!(none.partition_of("x"), 0);
        assert!(!none.owns(0));
    }

    #[test]
    fn table_queries() {
        let t = RingTable {
            partitions: 4,
            owners: vec![Some("a".into()), None, Some("b".into()), Some("a".into())],
            members: vec!["a".into(), "b".into()],
        };
        assert_eq!(t.owner(0), Some("a"));
        assert_eq!(t.owner(1), None);
        assert_eq!(t.owner(9), None);
        assert_eq!(t.owned_by("a").as_slice(), &[0, 3]);
        assert!(!t.is_complete());
    }
}
