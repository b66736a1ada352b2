//! The ring's keys in `P_A_coord`: their names and values, the ordered view
//! a node keeps of them, the rule that says whether a claim still holds, and
//! the compare-and-set writes (pipelined: a batch is sent, then its
//! acknowledgements are awaited together).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv, message::PublishMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RingTable;
use crate::error::{Error, Result};

/// The key holding the ring's partition count.
pub(crate) const CONFIG_KEY: &str = crate::naming::RING_CONFIG_KEY;
/// The keys every ring node watches, in one ordered consumer.
pub(crate) const WATCH_KEYS: [&str; 3] = crate::naming::RING_WATCH_KEYS;
const MEMBER_PREFIX: &str = crate::naming::RING_MEMBER_PREFIX;
const CLAIM_PREFIX: &str = crate::naming::RING_CLAIM_PREFIX;

/// The key of `node`'s ring member lease.
pub(crate) fn member_key(node: &str) -> String {
    format!("{MEMBER_PREFIX}{node}")
}

/// The claim key of `partition`.
pub(crate) fn claim_key(partition: u32) -> String {
    format!("{CLAIM_PREFIX}{partition}")
}

/// The value of `ring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RingConfig {
    pub(crate) partitions: u32,
}

/// The value of `member.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub(crate) node: String,
    /// Absent in the acquiring write, whose revision *is* the epoch; every
    /// renew carries it.
    #[serde(default)]
    pub(crate) epoch: Option<u64>,
}

/// The value of `p.<N>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClaimRecord {
    pub(crate) owner: String,
    /// The epoch of the owner's member lease when it claimed.
    pub(crate) epoch: u64,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// One member key as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberState {
    /// Sequence of the key's last message.
    pub(crate) seq: u64,
    /// The epoch of the lease while held; `None` after a delete or expiry.
    pub(crate) epoch: Option<u64>,
}

/// One claim key as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimState {
    /// Sequence of the key's last message (what a compare-and-set expects).
    pub(crate) seq: u64,
    /// Who claimed it, with the epoch their claim names; `None` once deleted.
    pub(crate) holder: Option<(String, u64)>,
}

/// Whether a partition can be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimStatus {
    /// Nobody claims it: claim expecting `seq`.
    Free { seq: u64 },
    /// Claimed under a member lease that has ended: claim over it,
    /// expecting `seq`.
    Stale { seq: u64, owner: String },
    /// Owned by `owner` (possibly this node) under epoch `epoch`; the
    /// claim's revision is `seq`.
    Valid { owner: String, epoch: u64, seq: u64 },
}

/// The ring's keys as this node has seen them, in stream order.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub(crate) config: Option<u32>,
    pub(crate) members: BTreeMap<String, MemberState>,
    pub(crate) claims: BTreeMap<u32, ClaimState>,
}

impl View {
    /// Applies one message of the watch (a put, delete or expiry marker).
    /// Returns false for a message that changes nothing about ownership (a
    /// member lease renewed under the same epoch).
    pub(crate) fn apply(
        &mut self,
        key: &str,
        op: kv::Operation,
        revision: u64,
        value: &[u8],
    ) -> bool {
        let put = op == kv::Operation::Put;
        if key == CONFIG_KEY {
            self.config = put
                .then(|| serde_json::from_slice::<RingConfig>(value).ok())
                .flatten()
                .map(|c| c.partitions);
        } else if let Some(node) = key.strip_prefix(MEMBER_PREFIX) {
            let epoch = put
                .then(|| serde_json::from_slice::<MemberRecord>(value).ok())
                .flatten()
                .map(|r| r.epoch.unwrap_or(revision));
            let before = self.members.insert(
                node.to_owned(),
                MemberState {
                    seq: revision,
                    epoch,
                },
            );
            return before.is_none_or(|b| b.epoch != epoch);
        } else if let Some(p) = key
            .strip_prefix(CLAIM_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        {
            let holder = put
                .then(|| serde_json::from_slice::<ClaimRecord>(value).ok())
                .flatten()
                .map(|c| (c.owner, c.epoch));
            self.claims.insert(
                p,
                ClaimState {
                    seq: revision,
                    holder,
                },
            );
        }
        true
    }

    /// Members whose lease is held, with their epochs.
    pub(crate) fn live(&self) -> impl Iterator<Item = (&str, u64)> {
        self.members
            .iter()
            .filter_map(|(n, m)| m.epoch.map(|e| (n.as_str(), e)))
    }

    /// The epoch `node`'s member lease is held with, as seen.
    pub(crate) fn member_epoch(&self, node: &str) -> Option<u64> {
        self.members.get(node).and_then(|m| m.epoch)
    }

    /// The claim rule. A claim `{X, e}` holds while `member.X` is held with
    /// epoch `e`. In a complete, ordered view anything else proves that
    /// lease `e` has ended: `member.X` was deleted (X released everything
    /// first), expired (after X's validity ended), re-acquired with another
    /// epoch (after the old one ended), or never existed.
    pub(crate) fn status(&self, partition: u32) -> ClaimStatus {
        match self.claims.get(&partition) {
            None => ClaimStatus::Free { seq: 0 },
            Some(ClaimState { seq, holder: None }) => ClaimStatus::Free { seq: *seq },
            Some(ClaimState {
                seq,
                holder: Some((owner, epoch)),
            }) => {
                if self.member_epoch(owner) == Some(*epoch) {
                    ClaimStatus::Valid {
                        owner: owner.clone(),
                        epoch: *epoch,
                        seq: *seq,
                    }
                } else {
                    ClaimStatus::Stale {
                        seq: *seq,
                        owner: owner.clone(),
                    }
                }
            }
        }
    }

    /// The ownership table this view implies.
    pub(crate) fn table(&self, partitions: u32) -> RingTable {
        RingTable {
            partitions,
            owners: (0..partitions)
                .map(|p| match self.status(p) {
                    ClaimStatus::Valid { owner, .. } => Some(owner),
                    _ => None,
                })
                .collect(),
            members: self.live().map(|(n, _)| n.to_owned()).collect(),
        }
    }
}

/// The outcome of one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// Stored at this revision.
    Ok(u64),
    /// The key had changed: someone else wrote first.
    Conflict,
    /// No acknowledgement, or an error: the outcome is unknown, the watch
    /// will tell.
    Failed(String),
}

/// Writes claim keys of one bucket.
#[derive(Debug, Clone)]
pub(crate) struct ClaimWriter {
    js: jetstream::Context,
    bucket: String,
    timeout: Duration,
}

impl ClaimWriter {
    pub(crate) fn new(js: jetstream::Context, bucket: &str, timeout: Duration) -> Self {
        ClaimWriter {
            js,
            bucket: bucket.to_owned(),
            timeout,
        }
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{}", self.bucket, key)
    }

    /// Sends every write, then awaits the acknowledgements together (one
    /// round trip for the batch instead of one per key). No TTL: a claim
    /// lives until it is deleted or claimed over.
    async fn write_all(&self, writes: Vec<(String, PublishMessage)>) -> Vec<Written> {
        let mut pending = Vec::with_capacity(writes.len());
        for (key, msg) in writes {
            pending.push(self.js.send_publish(self.subject(&key), msg).await);
        }
        let acks = pending.into_iter().map(|sent| async move {
            let ack = match sent {
                Ok(ack) => ack,
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Written::Conflict
                }
                Err(e) => return Written::Failed(e.to_string()),
            };
            match tokio::time::timeout(self.timeout, ack).await {
                Err(_) => Written::Failed("no acknowledgement".into()),
                Ok(Ok(ack)) => Written::Ok(ack.sequence),
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Written::Conflict,
                Ok(Err(e)) => Written::Failed(e.to_string()),
            }
        });
        futures::future::join_all(acks).await
    }

    /// Claims each `(partition, expected sequence)` for `owner` under
    /// `epoch`.
    pub(crate) async fn claim(
        &self,
        batch: &[(u32, u64)],
        owner: &str,
        epoch: u64,
    ) -> Vec<Written> {
        let value = encode(&ClaimRecord {
            owner: owner.to_owned(),
            epoch,
        });
        let writes = batch
            .iter()
            .map(|&(p, expected)| {
                let msg = PublishMessage::build()
                    .payload(value.clone())
                    .expected_last_subject_sequence(expected);
                (claim_key(p), msg)
            })
            .collect();
        self.write_all(writes).await
    }

    /// Deletes each `(partition, claim revision)` if the claim is still
    /// that revision (a claim someone else already took over is left alone).
    pub(crate) async fn release(&self, batch: &[(u32, u64)]) -> Vec<Written> {
        let writes = batch
            .iter()
            .map(|&(p, revision)| {
                let msg = PublishMessage::build()
                    .header("KV-Operation", "DEL")
                    .expected_last_subject_sequence(revision);
                (claim_key(p), msg)
            })
            .collect();
        self.write_all(writes).await
    }

    /// Records the ring's partition count in `ring`, or checks it against
    /// the one recorded: every node of a ring must split keys the same way.
    pub(crate) async fn ensure_config(&self, kv: &kv::Store, partitions: u32) -> Result<()> {
        let value = encode(&RingConfig { partitions });
        for _ in 0..10 {
            let entry = kv
                .entry(CONFIG_KEY)
                .await
                .map_err(|e| Error::nats(format!("read {}/{CONFIG_KEY}", self.bucket), e))?;
            let expected = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let recorded = serde_json::from_slice::<RingConfig>(&e.value)
                        .map(|c| c.partitions)
                        .ok();
                    if recorded == Some(partitions) {
                        return Ok(());
                    }
                    return Err(Error::config(format!(
                        "mode ring({partitions}) does not match the ring already running in {} ({}): every node of a ring app must use the same partition count",
                        self.bucket,
                        recorded.map_or_else(|| "unreadable".to_owned(), |p| format!("ring({p})")),
                    )));
                }
                Some(e) => e.revision,
                None => 0,
            };
            let msg = PublishMessage::build()
                .payload(value.clone())
                .expected_last_subject_sequence(expected);
            match self
                .write_all(vec![(CONFIG_KEY.to_owned(), msg)])
                .await
                .pop()
            {
                Some(Written::Ok(_)) => return Ok(()),
                Some(Written::Conflict) => continue,
                Some(Written::Failed(e)) => {
                    return Err(Error::nats(
                        format!("write {}/{CONFIG_KEY}", self.bucket),
                        e,
                    ))
                }
                None => continue,
            }
        }
        Err(Error::nats(
            format!("write {}/{CONFIG_KEY}", self.bucket),
            "too many concurrent writers",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv::Operation::{Delete, Purge, Put};

    fn member(node: &str, epoch: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&MemberRecord {
            node: node.into(),
            epoch,
        })
        .expect("json")
    }

    fn claim(owner: &str, epoch: u64) -> Vec<u8> {
        serde_json::to_vec(&ClaimRecord {
            owner: owner.into(),
            epoch,
        })
        .expect("json")
    }

    #[test]
    fn claims_hold_only_under_the_epoch_they_name() {
        let mut v = View::default();
        assert_eq!(v.status(3), ClaimStatus::Free { seq: 0 });
        // a acquires its member lease at 10 (no epoch in the value), claims
        // 3 at 11, renews at 12.
        v.apply("member.a", Put, 10, &member("a", None));
        v.apply("p.3", Put, 11, &claim("a", 10));
        let valid = ClaimStatus::Valid {
            owner: "a".into(),
            epoch: 10,
            seq: 11,
        };
        assert_eq!(v.status(3), valid);
        assert!(
            !v.apply("member.a", Put, 12, &member("a", Some(10))),
            "a renew changes nothing"
        );
        assert_eq!(v.status(3), valid);
        assert_eq!(v.table(4).owners[3].as_deref(), Some("a"));
        assert_eq!(v.table(4).members, ["a"]);
        // The lease expires: the claim is stale.
        v.apply("member.a", Purge, 20, b"");
        assert_eq!(
            v.status(3),
            ClaimStatus::Stale {
                seq: 11,
                owner: "a".into()
            }
        );
        assert_eq!(v.table(4).owners[3], None);
        // a comes back with a new epoch: its old claim stays stale.
        v.apply("member.a", Put, 21, &member("a", None));
        assert!(matches!(v.status(3), ClaimStatus::Stale { .. }));
        // A claim naming a member never seen is stale.
        v.apply("p.1", Put, 22, &claim("ghost", 5));
        assert!(matches!(v.status(1), ClaimStatus::Stale { .. }));
        // A deleted claim is free at its marker's sequence.
        v.apply("p.3", Delete, 23, b"");
        assert_eq!(v.status(3), ClaimStatus::Free { seq: 23 });
        // Unrelated keys are ignored; the config is read.
        v.apply("election", Put, 24, b"{}");
        v.apply("ring", Put, 25, br#"{"partitions":4}"#);
        assert_eq!(v.config, Some(4));
    }
}
