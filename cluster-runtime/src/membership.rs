//! Node records, labels, and the live member set.
//!
//! Each node holds a lease on its own key in `P_nodes` whose value is its
//! [`NodeRecord`] (labels, address, apps and roles). Watching the bucket
//! yields joins (a new key) and leaves (delete on graceful exit, expiry
//! marker on a crash). A node whose own record lapses treats itself as
//! partitioned: [`Membership::registered`] turns false and the platform
//! demotes every app until the record is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::app::{Mode, Role};
use crate::error::Result;
use crate::lease::{self, KeyState, LeaseKey, LeaseTiming};
use crate::placement::Labels;
use crate::transport::Transport;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub node: String,
    /// Platform name.
    pub platform: String,
    /// Labels (`key` → value, `""` for presence-only labels).
    #[serde(default)]
    pub labels: Labels,
    /// Address of the node's health/status HTTP endpoint.
    #[serde(default)]
    pub health_addr: Option<String>,
    /// Runtime version.
    pub version: String,
    /// Process start, unix milliseconds.
    pub started_at_ms: u64,
    /// Process id (helps operators find the process).
    #[serde(default)]
    pub pid: u32,
    /// Host name of the process.
    #[serde(default)]
    pub host: String,
    /// Apps this node runs and their roles.
    #[serde(default)]
    pub apps: BTreeMap<String, AppRecord>,
    /// Cordoned nodes take no new work (placement issue).
    #[serde(default)]
    pub cordoned: bool,
}

/// One app as seen in a node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app's mode.
    pub mode: Mode,
    /// This node's role.
    pub role: Role,
    /// The epoch this node holds (active singletons).
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// A join or leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node appeared.
    Joined(NodeRecord),
    /// A node left (graceful delete or record expiry).
    Left(NodeRecord),
}

/// This node's membership: its own record and the view of all members.
#[derive(Debug, Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: LeaseKey,
    kv: async_nats::jetstream::kv::Store,
    record: watch::Sender<NodeRecord>,
    members: watch::Sender<BTreeMap<String, NodeRecord>>,
    registered: watch::Sender<bool>,
    events: broadcast::Sender<MemberEvent>,
    shutdown: watch::Sender<bool>,
}

impl Membership {
    /// Opens `P_nodes` and starts registering `record` and watching members.
    pub async fn start(
        transport: &Transport,
        bucket: &str,
        replicas: usize,
        timing: LeaseTiming,
        record: NodeRecord,
    ) -> Result<Membership> {
        let kv = lease::open_bucket(transport.jetstream(), bucket, replicas).await?;
        let key = LeaseKey::new(
            transport.jetstream().clone(),
            kv.clone(),
            &record.node,
            timing,
        );
        refuse_if_in_use(&key, &record).await?;
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            key,
            kv,
            record: watch::Sender::new(record),
            members: watch::Sender::new(BTreeMap::new()),
            registered: watch::Sender::new(false),
            events,
            shutdown: watch::Sender::new(false),
        });
        tokio::spawn(register_loop(inner.clone()));
        tokio::spawn(watch_loop(inner.clone(), transport.generation()));
        Ok(Membership { inner })
    }

    /// Whether this node's record is currently held (false = partitioned).
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.inner.registered.subscribe()
    }

    /// The live members (including this node once registered).
    pub fn members(&self) -> watch::Receiver<BTreeMap<String, NodeRecord>> {
        self.inner.members.subscribe()
    }

    /// Join and leave events.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// This node's record.
    pub fn record(&self) -> NodeRecord {
        self.inner.record.borrow().clone()
    }

    /// Updates this node's record; published at once.
    pub fn update(&self, f: impl FnOnce(&mut NodeRecord)) {
        self.inner.record.send_modify(f);
    }

    /// Deletes this node's record so others see it leave at once.
    pub async fn leave(&self) {
        self.inner.shutdown.send_replace(true);
        // The register loop releases the lease when it sees shutdown; wait
        // until it reports that it is no longer registered.
        let mut reg = self.inner.registered.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), reg.wait_for(|r| !*r)).await;
    }
}

/// Refuses to start when another live process holds this node id.
///
/// A record held by another incarnation is either a live process (it
/// renews within its renew interval) or a crashed one (it expires within
/// its TTL). So watch the key for up to a TTL: a renew means the id is in
/// use; an expiry or delete means it is free. Two processes with one id
/// would otherwise take the record from each other forever.
async fn refuse_if_in_use(key: &LeaseKey, ours: &NodeRecord) -> Result<()> {
    // A bucket just created on a NATS cluster answers "no responders" until
    // its stream has a leader: retry for a while, as the register loop does.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut backoff = Duration::from_millis(50);
    let state = loop {
        match key.read().await {
            Ok(state) => break state,
            Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read this node's record yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    let KeyState::Held { seq, value } = state else {
        return Ok(());
    };
    let Ok(other) = serde_json::from_slice::<NodeRecord>(&value) else {
        return Ok(());
    };
    if other.pid == ours.pid && other.started_at_ms == ours.started_at_ms && other.host == ours.host
    {
        return Ok(());
    }
    let mut watch = Box::pin(key.watch().await?);
    let window = key.timing().ttl + Duration::from_millis(500);
    let verdict = tokio::time::timeout(window, async {
        while let Some(state) = watch.next().await {
            match state {
                KeyState::Held { seq: s, .. } if s > seq => return true,
                KeyState::Held { .. } => {}
                KeyState::Free { .. } => return false,
            }
        }
        false
    })
    .await;
    match verdict {
        Ok(true) => Err(crate::error::Error::config(format!(
            "node id `{}` is in use by pid {} on host {} (started at unix ms {}): give \
             each node its own --node/NODE_ID",
            ours.node,
            other.pid,
            if other.host.is_empty() {
                "?"
            } else {
                &other.host
            },
            other.started_at_ms
        ))),
        // Expired or deleted (a previous incarnation), or no renew seen
        // within a TTL: the id is free.
        Ok(false) | Err(_) => Ok(()),
    }
}

fn encode(record: &NodeRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

async fn register_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let value = encode(&inner.record.borrow());
        let held = match inner.key.read().await {
            // Our own key: take it over whoever held it (a previous
            // incarnation of this node that has not expired yet).
            Ok(KeyState::Free { seq }) | Ok(KeyState::Held { seq, .. }) => {
                inner.key.try_acquire(seq, value).await
            }
            Err(e) => Err(e),
        };
        let held = match held {
            Ok(Some(held)) => held,
            // Someone wrote our key between the read and the write: back
            // off instead of fighting over it in a hot loop.
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register node record; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        inner.registered.send_replace(true);
        let mut record_rx = inner.record.subscribe();
        loop {
            tokio::select! {
                reason = held.lost() => {
                    tracing::error!(?reason, "this node's membership record lapsed; demoting everything");
                    inner.registered.send_replace(false);
                    break;
                }
                changed = record_rx.changed() => {
                    if changed.is_ok() {
                        held.set_value(encode(&record_rx.borrow_and_update()));
                    }
                }
                _ = until_set(&mut shutdown) => {
                    if let Err(e) = held.release().await {
                        tracing::warn!(error = %e, "could not delete node record on leave");
                    }
                    // Only now: `leave()` waits for this, and the process may
                    // exit (closing the connection) as soon as it returns.
                    inner.registered.send_replace(false);
                    return;
                }
            }
        }
    }
}

/// Keeps the member map current; on reconnect the watch is re-created and
/// the map rebuilt, emitting joins/leaves for what changed meanwhile.
async fn watch_loop(inner: Arc<Inner>, mut generation: watch::Receiver<u64>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        generation.borrow_and_update();
        // `watch_all` would deliver only new changes; the history watch
        // starts with every key's latest entry, so the map is exact at once.
        let watch = match inner.kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch node records; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        // Rebuild from scratch: the watch delivers every current record
        // first; entries that never reappear have left while we were away.
        let mut fresh: BTreeMap<String, NodeRecord> = BTreeMap::new();
        let mut initial_done = false;
        let mut watch = watch;
        loop {
            let next = tokio::select! {
                item = watch.next() => item,
                _ = generation.changed() => break,
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_millis(500)), if !initial_done => {
                    // Empty bucket: no initial entries will come.
                    initial_done = true;
                    apply_snapshot(&inner, std::mem::take(&mut fresh));
                    continue;
                }
            };
            let Some(Ok(entry)) = next else { break };
            let seen_current = entry.delta == 0;
            match entry.operation {
                async_nats::jetstream::kv::Operation::Put => {
                    if let Ok(record) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                        if initial_done {
                            upsert(&inner, record);
                        } else {
                            fresh.insert(record.node.clone(), record);
                        }
                    }
                }
                _ => {
                    if initial_done {
                        remove(&inner, &entry.key);
                    } else {
                        fresh.remove(&entry.key);
                    }
                }
            }
            if !initial_done && seen_current {
                initial_done = true;
                apply_snapshot(&inner, std::mem::take(&mut fresh));
            }
        }
    }
}

fn apply_snapshot(inner: &Inner, fresh: BTreeMap<String, NodeRecord>) {
    let old = inner.members.borrow().clone();
    for (id, rec) in &old {
        if !fresh.contains_key(id) {
            let _ = inner.events.send(MemberEvent::Left(rec.clone()));
        }
    }
    for (id, rec) in &fresh {
        if !old.contains_key(id) {
            let _ = inner.events.send(MemberEvent::Joined(rec.clone()));
        }
    }
    inner.members.send_replace(fresh);
}

fn upsert(inner: &Inner, record: NodeRecord) {
    let mut joined = false;
    inner.members.send_if_modified(|m| {
        let changed = m.get(&record.node) != Some(&record);
        joined = !m.contains_key(&record.node);
        m.insert(record.node.clone(), record.clone());
        changed
    });
    if joined {
        let _ = inner.events.send(MemberEvent::Joined(record));
    }
}

fn remove(inner: &Inner, node: &str) {
    let mut left = None;
    inner.members.send_if_modified(|m| {
        left = m.remove(node);
        left.is_some()
    });
    if let Some(rec) = left {
        let _ = inner.events.send(MemberEvent::Left(rec));
    }
}

/// Resolves once the flag is true (without holding the watch guard).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
