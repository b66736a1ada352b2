//! A sharded in-memory cache on a ring: each key lives on the node that owns
//! its partition, and when partitions move (a node joins or leaves) their
//! entries move with them.
//!
//! How the state moves — the part to copy for your own ring apps:
//!
//! - `on_release(partitions)` runs on the losing node after calls for those
//!   partitions stopped reaching it and the calls in flight finished. It
//!   writes each partition's entries to the app's KV (`ctx.kv()`, bucket
//!   `P_cache`, key `handoff.<partition>`) and forgets them.
//! - The next owner can claim a partition only after that, and its
//!   `on_own(partitions)` runs before calls are routed to it: it loads
//!   `handoff.<partition>` and deletes the key.
//!
//! So a graceful join or leave loses no entry and no caller sees an error
//! (calls during the hand-off are retried by the client). A crashed node's
//! entries are lost — this is a cache; a store would write through to KV.
//!
//! Callers use the generated client; each call is routed to the owner of
//! its key's partition:
//!
//! ```no_run
//! # async fn demo(ctx: &cluster::AppContext) -> Result<(), cluster::runtime::rpc::RpcError> {
//! use cache::{Cache, Get, Put};
//! let cache = cluster::call::<Cache>(ctx);
//! cache.put(Put { key: "user:1".into(), value: "Ada".into() }).await?;
//! assert_eq!(cache.get(Get { key: "user:1".into() }).await?.as_deref(), Some("Ada"));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use cluster::prelude::*;
use cluster::runtime::rpc::{HandlerError, RequestInfo};
use serde::{Deserialize, Serialize};

/// The app's wire name.
pub const NAME: &str = "cache";
/// Its partition count.
pub const PARTITIONS: u32 = 64;

/// `put`: store `value` under `key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Put {
    /// The key (routes the call).
    pub key: String,
    /// The value.
    pub value: String,
}

/// `get`: read `key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Get {
    /// The key (routes the call).
    pub key: String,
}

/// The cache: this node's entries, by partition (so a partition moves as
/// one map).
#[cluster::app(mode = "ring(64)", name = "cache")]
#[derive(Debug, Default)]
pub struct Cache {
    partitions: Mutex<HashMap<u32, BTreeMap<String, String>>>,
}

fn handoff_key(partition: u32) -> String {
    format!("handoff.{partition}")
}

/// The partition a call was routed to must be its key's: a client with
/// another partition function would otherwise read and write the wrong map.
fn check_route(ctx: &AppContext, key: &str) -> Result<u32, HandlerError> {
    let p = ctx.ring().partition_of(key);
    match RequestInfo::current().and_then(|i| i.partition()) {
        Some(routed) if routed != p => Err(HandlerError::bad_request(format!(
            "key `{key}` belongs to partition {p}, not {routed}"
        ))),
        _ => Ok(p),
    }
}

impl Cache {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u32, BTreeMap<String, String>>) -> T) -> T {
        f(&mut self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

#[cluster::app]
impl Cache {
    /// Loads the entries the previous owner handed over.
    #[on_own]
    async fn own(&self, ctx: &AppContext, partitions: Partitions) -> cluster::Result<()> {
        for p in &partitions {
            let key = handoff_key(p);
            let Some(entries) = ctx.kv().get_json::<BTreeMap<String, String>>(&key).await? else {
                continue;
            };
            self.with(|m| m.entry(p).or_default().extend(entries));
            ctx.kv().delete(&key).await?;
        }
        Ok(())
    }

    /// Hands the partitions' entries over through the app's KV.
    #[on_release]
    async fn release(&self, ctx: &AppContext, partitions: Partitions) -> cluster::Result<()> {
        for p in &partitions {
            let Some(entries) = self.with(|m| m.remove(&p)) else {
                continue;
            };
            if entries.is_empty() {
                continue;
            }
            if let Err(e) = ctx.kv().put_json(&handoff_key(p), &entries).await {
                // Keep them: better served again later than lost.
                self.with(|m| m.insert(p, entries));
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Stores `value` under `key`; returns the previous value.
    #[handle(key = req.key)]
    async fn put(&self, ctx: &AppContext, req: Put) -> Result<Option<String>, HandlerError> {
        let p = check_route(ctx, &req.key)?;
        Ok(self.with(|m| m.entry(p).or_default().insert(req.key, req.value)))
    }

    /// Reads `key`.
    #[handle(key = req.key)]
    async fn get(&self, ctx: &AppContext, req: Get) -> Result<Option<String>, HandlerError> {
        let p = check_route(ctx, &req.key)?;
        Ok(self.with(|m| m.get(&p).and_then(|e| e.get(&req.key)).cloned()))
    }

    /// How many entries this instance holds (call it per instance).
    #[handle]
    async fn entries(&self, _ctx: &AppContext) -> cluster::Result<usize> {
        Ok(self.with(|m| m.values().map(BTreeMap::len).sum()))
    }
}
