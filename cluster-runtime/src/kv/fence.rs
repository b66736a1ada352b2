//! Fenced writes: the server refuses a deposed active's writes.
//!
//! When a singleton instance becomes active it writes an *epoch record*
//! (key [`EPOCH_KEY`] of the app's own bucket) by compare-and-set, before
//! any user code runs. Every fenced write then carries
//! `Nats-Expected-Last-Subject-Sequence: <the record's sequence>` with
//! `Nats-Expected-Last-Subject-Sequence-Subject: <the record's subject>`
//! (nats-server ≥ 2.11), so JetStream stores it only while the record is
//! still ours. Once a successor has written its own record, every write
//! of ours fails with [`KvError::Fenced`], whatever our clock says.
//!
//! Invariant (kept by [`take`]): record epochs only grow in stream order.
//! A record is written only by a CAS against a read that showed a lower
//! epoch (or none), so a holder that lost a race, or was paused past its
//! lease and resumed, cannot overwrite a successor's record.
//!
//! What is *not* fenced by the server: `create`/`update`/`delete_if`
//! already carry their own expected-revision check on the key, and one
//! message carries one such check; they are checked against the local
//! lease validity only (see `docs/data.md`).

use std::sync::Mutex;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, message::PublishMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::KvError;
use crate::lease::Validity;

/// The key of the epoch record. Its first token, [`RESERVED_TOKEN`], is
/// reserved: user keys cannot start with it.
pub const EPOCH_KEY: &str = "_cluster.epoch";

/// The first key token reserved for the framework's own records.
pub const RESERVED_TOKEN: &str = "_cluster";

/// Header naming the subject whose last sequence is checked instead of the
/// message's own (nats-server ≥ 2.11).
const EXPECTED_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// How often `take` re-reads after losing a CAS race to a writer with a
/// lower epoch (a predecessor's late write) before giving up.
const TAKE_ATTEMPTS: usize = 5;

/// The value of the epoch record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EpochRecord {
    pub(crate) epoch: u64,
    pub(crate) node: String,
}

/// The right to write, as the server checks it: the lease's validity and
/// the sequence of our epoch record.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    validity: Validity,
    epoch: u64,
    record_subject: String,
    record_seq: u64,
}

impl Fence {
    /// The epoch this fence writes under.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    fn is_valid(&self) -> bool {
        self.validity.is_valid()
    }

    /// A message carrying the fence check (and nothing else).
    pub(crate) fn message(&self) -> PublishMessage {
        PublishMessage::build()
            .expected_last_subject_sequence(self.record_seq)
            .header(EXPECTED_SUBJECT_HEADER, self.record_subject.as_str())
    }
}

/// Shared by a singleton's context and its [`Kv`](super::Kv): filled when
/// the instance activates, emptied when it stops being active.
#[derive(Debug, Default)]
pub(crate) struct FenceSlot {
    fence: Mutex<Option<Fence>>,
}

impl FenceSlot {
    /// The fence, if this instance is active and its lease still valid.
    pub(crate) fn valid(&self) -> Option<Fence> {
        let fence = self.fence.lock().ok()?.clone()?;
        fence.is_valid().then_some(fence)
    }

    pub(crate) fn set(&self, fence: Option<Fence>) {
        if let Ok(mut slot) = self.fence.lock() {
            *slot = fence;
        }
    }
}

/// A ring app's fences, one per partition this node owns: armed when it
/// starts owning a partition (before `on_own` and before serving it),
/// removed when it stops. Valid while the member lease the claims name is.
#[derive(Debug, Default)]
pub(crate) struct PartitionFences {
    fences: Mutex<std::collections::HashMap<u32, Fence>>,
}

impl PartitionFences {
    pub(crate) fn valid(&self, partition: u32) -> Option<Fence> {
        let fence = self.fences.lock().ok()?.get(&partition)?.clone();
        fence.is_valid().then_some(fence)
    }

    pub(crate) fn set(&self, partition: u32, fence: Fence) {
        if let Ok(mut map) = self.fences.lock() {
            map.insert(partition, fence);
        }
    }

    pub(crate) fn remove(&self, partitions: &[u32]) {
        if let Ok(mut map) = self.fences.lock() {
            for p in partitions {
                map.remove(p);
            }
        }
    }
}

/// The epoch record of ring partition `p`.
pub(crate) fn partition_record_key(p: u32) -> String {
    format!("{EPOCH_KEY}.p.{p}")
}

/// Whether `key` is reserved for the framework.
pub(crate) fn is_reserved(key: &str) -> bool {
    key.split('.').next() == Some(RESERVED_TOKEN)
}

/// The subject a write of `key` is published on (as async-nats' `put`
/// builds it). Buckets reached through a JetStream domain prefix are not
/// supported for fenced writes (the prefix is private to async-nats).
pub(crate) fn key_subject(store: &kv::Store, key: &str) -> Result<String, KvError> {
    if store.use_jetstream_prefix {
        return Err(KvError::Nats {
            op: format!("fenced write of `{key}`"),
            bucket: store.name.clone(),
            message: "fenced writes through a JetStream domain prefix are not supported".to_owned(),
        });
    }
    let mut subject = store
        .put_prefix
        .clone()
        .unwrap_or_else(|| store.prefix.clone());
    subject.push_str(key);
    Ok(subject)
}

/// Writes the epoch record for the holder of `validity` (by CAS), and
/// returns the fence its writes carry. Fails with [`KvError::Fenced`] when
/// a later holder's record is already there or the lease is no longer
/// valid.
///
/// `record_key` is [`EPOCH_KEY`] for a singleton, a partition's record
/// ([`partition_record_key`]) for a ring owner, whose `epoch` is the
/// partition's claim revision.
pub(crate) async fn take(
    js: &jetstream::Context,
    store: &kv::Store,
    record_key: &str,
    validity: &Validity,
    epoch: u64,
    node: &str,
) -> Result<Fence, KvError> {
    let subject = key_subject(store, record_key)?;
    let fenced = |by: Option<u64>| KvError::Fenced {
        key: record_key.to_owned(),
        epoch,
        reason: match by {
            Some(e) => format!("a later active (epoch {e}) has taken over"),
            None => "the lease is no longer valid".to_owned(),
        },
    };
    let nats = |e: &dyn std::fmt::Display| KvError::Nats {
        op: "write the epoch record".to_owned(),
        bucket: store.name.clone(),
        message: e.to_string(),
    };
    let value = Bytes::from(
        serde_json::to_vec(&EpochRecord {
            epoch,
            node: node.to_owned(),
        })
        .map_err(|e| nats(&e))?,
    );
    for _ in 0..TAKE_ATTEMPTS {
        if !validity.is_valid() {
            return Err(fenced(None));
        }
        let entry = store.entry(record_key).await.map_err(|e| nats(&e))?;
        let last_seq = entry.as_ref().map_or(0, |e| e.revision);
        let recorded = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<EpochRecord>(&e.value).ok());
        match recorded {
            // Transition refused: a successor's record stays.
            Some(r) if r.epoch > epoch => return Err(fenced(Some(r.epoch))),
            // Ours already (an earlier attempt whose ack was lost).
            Some(r) if r.epoch == epoch => {
                return Ok(Fence {
                    validity: validity.clone(),
                    epoch,
                    record_subject: subject,
                    record_seq: last_seq,
                })
            }
            _ => {}
        }
        // Transition: lower (or no) epoch → ours, only if nothing was
        // written since the read (the invariant above).
        let publish = PublishMessage::build()
            .payload(value.clone())
            .expected_last_subject_sequence(last_seq);
        let sent = async { js.send_publish(subject.clone(), publish).await?.await };
        match sent.await {
            Ok(ack) => {
                return Ok(Fence {
                    validity: validity.clone(),
                    epoch,
                    record_subject: subject,
                    record_seq: ack.sequence,
                })
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
            Err(e) => return Err(nats(&e)),
        }
    }
    Err(nats(&"the epoch record kept changing under us"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::kv::{Kv, KvErrorKind, KvOptions};
    use crate::nats_server::{NatsServer, ServerOptions};

    fn fenced(js: &jetstream::Context) -> Kv {
        Kv::new(js.clone(), "t_app".into(), KvOptions::default(), 1)
            .fenced_by(Arc::new(FenceSlot::default()))
    }

    /// A holder whose own clock still says "valid" (paused between its
    /// check and its send) is refused by the server once a successor has
    /// written its epoch record.
    #[tokio::test]
    async fn the_server_refuses_a_deposed_holders_writes() {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("nats");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        let old = fenced(&js);
        let new = fenced(&js);
        let long = Duration::from_secs(60);

        let err = old.put("x", "before").await.expect_err("not armed");
        assert_eq!(err.kind(), KvErrorKind::Fenced);

        old.arm_fence(&Validity::for_test(5, long), "a")
            .await
            .expect("arm 5");
        old.put("x", "a1").await.expect("holder 5 writes");
        old.delete("y").await.expect("holder 5 deletes");

        new.arm_fence(&Validity::for_test(7, long), "b")
            .await
            .expect("arm 7");
        let err = old.put("x", "a2").await.expect_err("deposed");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        assert!(err.to_string().contains("refused by the server"), "{err}");
        let err = old.delete("x").await.expect_err("deposed delete");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        let err = old.purge("x").await.expect_err("deposed purge");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        new.put("x", "b1").await.expect("holder 7 writes");

        // A late activation of an older epoch does not overwrite the
        // successor's record.
        let late = fenced(&js);
        let err = late
            .arm_fence(&Validity::for_test(6, long), "c")
            .await
            .expect_err("6 < 7");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        new.put("x", "b2").await.expect("7 still writes");

        // An ended validity is refused before anything is sent.
        let expired = fenced(&js);
        let err = expired
            .arm_fence(&Validity::for_test(9, Duration::ZERO), "d")
            .await
            .expect_err("expired");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");

        // Unfenced writes are explicit and never refused for staleness.
        old.unfenced().put("notes", "n").await.expect("unfenced");

        let history: Vec<String> = new
            .history("x")
            .await
            .expect("history")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            .collect();
        assert_eq!(history, ["a1", "b1", "b2"]);
        assert_eq!(new.keys().await.expect("keys"), ["notes", "x"]);
        let err = new.put(EPOCH_KEY, "x").await.expect_err("reserved");
        assert_eq!(err.kind(), KvErrorKind::InvalidKey);
    }

    /// Ring owners: a write in partition 3 by its previous owner is refused
    /// by the server once the new owner (a higher claim revision) has
    /// written the partition's record; other partitions are unaffected.
    #[tokio::test]
    async fn the_server_refuses_a_previous_partition_owners_writes() {
        let server = NatsServer::start(ServerOptions::default())
            .await
            .expect("nats");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        let ring = |js: &jetstream::Context| {
            Kv::new(js.clone(), "t_ring".into(), KvOptions::default(), 1)
                .fenced_by_partitions(Arc::new(PartitionFences::default()))
        };
        let (old, new) = (ring(&js), ring(&js));
        let long = Validity::for_test(1, Duration::from_secs(60));
        old.arm_partition_fences(&long, &[(3, 10), (4, 11)], "a")
            .await
            .expect("arm old");
        old.for_partition(3)
            .put("k", "a1")
            .await
            .expect("owner writes");
        new.arm_partition_fences(&long, &[(3, 12)], "b")
            .await
            .expect("arm new");
        let err = old
            .for_partition(3)
            .put("k", "a2")
            .await
            .expect_err("stale");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        assert!(err.to_string().contains("refused by the server"), "{err}");
        old.for_partition(4)
            .put("j", "a")
            .await
            .expect("partition 4 is still ours");
        new.for_partition(3)
            .put("k", "b1")
            .await
            .expect("new owner writes");
        let err = new
            .for_partition(4)
            .put("j", "b")
            .await
            .expect_err("not owned");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        // A late arm of an older claim revision is refused.
        let late = ring(&js);
        let err = late
            .arm_partition_fences(&long, &[(3, 11)], "c")
            .await
            .expect_err("11 < 12");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
        // Outside a partition's handler a ring write is unfenced.
        assert!(!old.is_fenced());
        old.put("free", "x").await.expect("unfenced");
        old.disarm_partition_fences(&[4]);
        let err = old
            .for_partition(4)
            .put("j", "a")
            .await
            .expect_err("released");
        assert_eq!(err.kind(), KvErrorKind::Fenced, "{err}");
    }
}
