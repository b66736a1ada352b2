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
//! ```no_run
//! # async fn demo(rpc: cluster::runtime::rpc::RpcClient) -> Result<(), cluster::runtime::rpc::RpcError> {
//! let cache = cache::CacheClient::new(&rpc);
//! cache.put("user:1", "Ada").await?;
//! assert_eq!(cache.get("user:1").await?.as_deref(), Some("Ada"));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use cluster::prelude::*;
use cluster::runtime::ring::Partitions;
use cluster::runtime::rpc::{AppRef, HandlerError, RequestInfo, RpcClient, RpcError};
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

/// This node's entries, by partition (so a partition moves as one map).
#[derive(Debug, Default, Clone)]
pub struct Store {
    partitions: Arc<Mutex<HashMap<u32, BTreeMap<String, String>>>>,
}

impl Store {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u32, BTreeMap<String, String>>) -> T) -> T {
        f(&mut self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// How many entries this node holds.
    pub fn len(&self) -> usize {
        self.with(|m| m.values().map(BTreeMap::len).sum())
    }

    /// Whether this node holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// The cache app, keeping its entries in `store`.
pub fn app_with(store: Store) -> cluster::Result<App> {
    let (on_own, on_release, put, get) = (store.clone(), store.clone(), store.clone(), store);
    App::builder(NAME)
        .mode(Mode::Ring(PARTITIONS))
        .on_own(move |ctx, partitions: Partitions| {
            let store = on_own.clone();
            async move {
                for p in &partitions {
                    let key = handoff_key(p);
                    let Some(entries) = ctx.kv().get_json::<BTreeMap<String, String>>(&key).await?
                    else {
                        continue;
                    };
                    store.with(|m| m.entry(p).or_default().extend(entries));
                    ctx.kv().delete(&key).await?;
                }
                Ok(())
            }
        })
        .on_release(move |ctx, partitions: Partitions| {
            let store = on_release.clone();
            async move {
                for p in &partitions {
                    let Some(entries) = store.with(|m| m.remove(&p)) else {
                        continue;
                    };
                    if entries.is_empty() {
                        continue;
                    }
                    if let Err(e) = ctx.kv().put_json(&handoff_key(p), &entries).await {
                        // Keep them: better served again later than lost.
                        store.with(|m| m.insert(p, entries));
                        return Err(e.into());
                    }
                }
                Ok(())
            }
        })
        .handle("put", move |ctx, req: Put| {
            let store = put.clone();
            async move {
                let p = check_route(&ctx, &req.key)?;
                Ok::<_, HandlerError>(
                    store.with(|m| m.entry(p).or_default().insert(req.key, req.value)),
                )
            }
        })
        .handle("get", move |ctx, req: Get| {
            let store = get.clone();
            async move {
                let p = check_route(&ctx, &req.key)?;
                Ok::<_, HandlerError>(
                    store.with(|m| m.get(&p).and_then(|e| e.get(&req.key)).cloned()),
                )
            }
        })
        .build()
}

/// The cache app with a fresh store.
pub fn app() -> cluster::Result<App> {
    app_with(Store::default())
}

/// Calls the cache, routing each call to the owner of its key.
#[derive(Debug, Clone)]
pub struct CacheClient {
    app: AppRef,
}

impl CacheClient {
    /// A client calling through `rpc`.
    pub fn new(rpc: &RpcClient) -> Self {
        CacheClient {
            app: rpc.app(NAME).ring(PARTITIONS),
        }
    }

    /// Stores `value` under `key`; returns the previous value.
    pub async fn put(&self, key: &str, value: &str) -> Result<Option<String>, RpcError> {
        let req = Put {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        self.app.method("put").key(key).send(&req).await
    }

    /// Reads `key`.
    pub async fn get(&self, key: &str) -> Result<Option<String>, RpcError> {
        let req = Get {
            key: key.to_owned(),
        };
        self.app.method("get").key(key).send(&req).await
    }
}
