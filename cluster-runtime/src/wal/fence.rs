//! TXID reservation: at most one writer of the replica bucket.
//!
//! Before a primary uploads the file holding TXIDs up to `t`, it writes
//! `wal.head = {"epoch": e, "txid": t}` in the app's coordination bucket
//! (`P_A_coord`) with a compare-and-set on the revision it last wrote. A new
//! primary takes the key over with its own compare-and-set — as the *first*
//! step of becoming active, before its catch-up (DESIGN §4.7) — which moves
//! the revision: the deposed primary's next reservation fails and it stops
//! with [`WalError::Fenced`] *before* writing another object.
//!
//! The transitions of `wal.head` (each one compare-and-set on the revision
//! read or last written, so the server decides between racing writers):
//!
//! | from                 | by                 | to                     | allowed when           |
//! |----------------------|--------------------|------------------------|------------------------|
//! | absent / deleted     | `acquire(e)`       | `{e, 0}`               | always                 |
//! | `{e0, t}`            | `acquire(e)`       | `{e, t}`               | `e > e0` (strictly)    |
//! | `{e0, t}`            | `acquire(e)`       | unchanged, `Fenced`    | `e <= e0`              |
//! | `{e, t}` (ours, rev) | `reserve(t' >= t)` | `{e, t'}`              | revision still ours    |
//! | anything else        | `reserve`          | unchanged, `Fenced`    | revision moved         |
//!
//! Invariant: the epoch in `wal.head` never decreases, and only the writer
//! holding the latest revision can raise `txid`. So once epoch `e` wrote the
//! key, no writer of an epoch `< e` reserves again, and an epoch is taken
//! over at most once (a second `acquire` with the same epoch is refused, so
//! two replicators of one epoch cannot interleave either).
//!
//! One window is inherent to a store without conditional object writes: an
//! upload reserved just before the takeover may still land after it. Its
//! TXIDs are at most the `txid` the new primary read from the key, so the
//! two writers' files never share a name; the new primary starts above it.
//! Such a late file is never *acknowledged* to the deposed primary's user
//! (the replicator checks its lease validity after the put's ack; see
//! `replicator.rs`, "the ack gate").
//!
//! ```no_run
//! # async fn demo(kv: async_nats::jetstream::kv::Store) -> Result<(), cluster_runtime::wal::WalError> {
//! use cluster_runtime::wal::fence::Fence;
//! let mut fence = Fence::acquire(kv, "wal.head", 6).await?;
//! let next = fence.previous().map_or(1, |h| h.txid + 1);
//! fence.reserve(next).await?; // Err(Fenced) once epoch 7 took over
//! # Ok(()) }
//! ```

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::WalError;

/// The default key in the coordination bucket.
pub const HEAD_KEY: &str = "wal.head";

/// The value of `wal.head`: who reserved up to which TXID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The reserving primary's epoch (fencing token).
    pub epoch: u64,
    /// The highest TXID reserved.
    pub txid: u64,
}

/// This writer's hold on `wal.head`.
pub struct Fence {
    kv: kv::Store,
    key: String,
    epoch: u64,
    revision: u64,
    head: Head,
    previous: Option<Head>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("key", &self.key)
            .field("epoch", &self.epoch)
            .field("revision", &self.revision)
            .field("head", &self.head)
            .field("previous", &self.previous)
            .finish()
    }
}

fn nats(action: &str, e: impl std::fmt::Display) -> WalError {
    WalError::Nats {
        bucket: "coord".to_owned(),
        action: action.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads the key: (revision to compare against, head if one is set).
async fn read(kv: &kv::Store, key: &str) -> Result<(u64, Option<Head>), WalError> {
    let entry = kv
        .entry(key)
        .await
        .map_err(|e| nats(&format!("read {key}"), e))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let head: Head = serde_json::from_slice(&e.value).map_err(|err| WalError::Corrupt {
                name: key.to_owned(),
                reason: format!("not a {{epoch, txid}} JSON object: {err}"),
            })?;
            Ok((e.revision, Some(head)))
        }
        Some(e) => Ok((e.revision, None)),
        None => Ok((0, None)),
    }
}

fn encode(head: &Head) -> Result<Bytes, WalError> {
    serde_json::to_vec(head)
        .map(Bytes::from)
        .map_err(|e| nats("encode wal.head", e))
}

impl Fence {
    /// Takes `key` over for `epoch` (the transition table above): fails
    /// with [`WalError::Fenced`] if an equal or higher epoch holds it;
    /// otherwise writes `{epoch, txid}` (keeping the reserved TXID) by
    /// compare-and-set on the revision just read. A lost race is read
    /// again and decided again, so a higher epoch that wrote meanwhile is
    /// never overwritten. [`previous`](Self::previous) is the head found.
    pub async fn acquire(kv: kv::Store, key: &str, epoch: u64) -> Result<Fence, WalError> {
        for _ in 0..16 {
            let (revision, found) = read(&kv, key).await?;
            if let Some(h) = found {
                // Invariant: the recorded epoch never decreases, and one
                // epoch takes the key over at most once.
                if h.epoch >= epoch {
                    return Err(WalError::Fenced {
                        ours: epoch,
                        current: h.epoch,
                    });
                }
            }
            let head = Head {
                epoch,
                txid: found.map_or(0, |h| h.txid),
            };
            let value = encode(&head)?;
            // CAS: succeeds only if nobody wrote since our read (revision 0:
            // only if the key does not exist).
            let written = if revision == 0 {
                kv.create(key, value).await.map_err(|e| e.to_string())
            } else {
                kv.update(key, value, revision)
                    .await
                    .map_err(|e| e.to_string())
            };
            match written {
                Ok(revision) => {
                    let fence = Fence {
                        kv,
                        key: key.to_owned(),
                        epoch,
                        revision,
                        head,
                        previous: found,
                    };
                    return Ok(fence);
                }
                // Raced another writer: read again and decide again.
                Err(e) => tracing::debug!(key, error = %e, "wal.head takeover raced; retrying"),
            }
        }
        Err(nats(
            &format!("take over {key}"),
            "compare-and-set kept failing",
        ))
    }

    /// The head found when the key was taken over (the previous primary's
    /// last reservation), `None` if the key was empty.
    pub fn previous(&self) -> Option<Head> {
        self.previous
    }

    /// Our epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What we last wrote.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Reserves TXIDs up to `txid`. A conflicting write means another
    /// primary took the key: returns [`WalError::Fenced`] and the caller
    /// must not upload.
    pub async fn reserve(&mut self, txid: u64) -> Result<(), WalError> {
        let head = Head {
            epoch: self.epoch,
            txid,
        };
        let value = encode(&head)?;
        // CAS on the revision we last wrote: fails once anyone else wrote.
        match self.kv.update(&self.key, value, self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.head = head;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let current = match read(&self.kv, &self.key).await {
                    Ok((_, Some(h))) => h.epoch,
                    _ => self.epoch,
                };
                Err(WalError::Fenced {
                    ours: self.epoch,
                    current,
                })
            }
            Err(e) => Err(nats(&format!("reserve {}", self.key), e)),
        }
    }
}
