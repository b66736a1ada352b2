//! The fencing checker: once a holder's write is stored, no write of an
//! older holder is stored after it.
//!
//! Input: every stored revision of one KV key, in stream order, each value
//! carrying the writer's epoch (`{"value": .., "epoch": ..}`). [`check`]
//! reports each stored write whose epoch is lower than the highest epoch
//! stored before it — a deposed holder's write the server accepted — and
//! each stored write that carries no epoch at all (its handler ran without
//! a valid lease). [`StreamWatch`] reads that input from the bucket's stream
//! with plain async-nats (no `ctx`), so the check rests on what the server
//! stored, not on what the app believes.
//!
//! Rings: [`StreamWatch::start_prefix`] follows every key under a prefix
//! (one register per key) and [`check_keys`] applies [`check`] to each
//! key's writes on its own — the epoch is then the fencing token of the
//! key's partition, which grows with every change of its owner.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Revisions per key a watched stream keeps (far more than a run writes).
pub const KEEP_PER_KEY: i64 = 100_000_000;

/// One stored revision of the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWrite {
    /// Stream sequence (the KV revision).
    pub seq: u64,
    /// The writer's epoch, if the value carried one.
    pub epoch: Option<u64>,
    /// The raw value.
    pub value: serde_json::Value,
}

/// A stored write that should have been refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FencedWriteAccepted {
    /// The offending write.
    pub write: StoredWrite,
    /// The highest epoch stored before it.
    pub max_epoch_before: Option<u64>,
    /// Sequence of the write that set that epoch.
    pub max_epoch_seq: Option<u64>,
}

/// What the fencing checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FencingReport {
    /// Stored writes examined.
    pub writes: usize,
    /// Distinct epochs among them.
    pub epochs: usize,
    /// Writes stored after a newer epoch's write (first 20 listed).
    pub stale_accepted: Vec<FencedWriteAccepted>,
    /// How many stale writes there were in all.
    pub stale_count: usize,
    /// Writes stored without an epoch.
    pub without_epoch: usize,
    /// False if the stream had gaps (revisions removed before they were
    /// read): the check then covers only what was read.
    pub complete: bool,
    /// Stream sequences never read (gaps), any subject.
    pub missing_revisions: u64,
    /// Times the stream consumer had to be recreated.
    pub consumer_restarts: u32,
}

impl FencingReport {
    /// Stale writes plus writes without an epoch.
    pub fn violations(&self) -> usize {
        self.stale_count + self.without_epoch
    }
}

/// What the fencing checker found for each key of a keyed watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyedFencingReport {
    /// Keys with at least one stored write.
    pub keys: usize,
    /// Stored writes examined, all keys.
    pub writes: usize,
    /// Stale writes, all keys.
    pub stale_count: usize,
    /// Writes without an epoch, all keys.
    pub without_epoch: usize,
    /// Per key with a violation: its report (first 20 stale writes each).
    pub failing: std::collections::BTreeMap<String, FencingReport>,
    /// False if the stream had gaps (see [`FencingReport::complete`]).
    pub complete: bool,
    /// Stream sequences never read (gaps), any subject.
    pub missing_revisions: u64,
    /// Times the stream consumer had to be recreated.
    pub consumer_restarts: u32,
}

impl KeyedFencingReport {
    /// Stale writes plus writes without an epoch, all keys.
    pub fn violations(&self) -> usize {
        self.stale_count + self.without_epoch
    }
}

/// Checks each key's stored writes (each in stream order) on its own.
pub fn check_keys(
    by_key: &std::collections::BTreeMap<String, Vec<StoredWrite>>,
) -> KeyedFencingReport {
    let mut out = KeyedFencingReport {
        complete: true,
        ..KeyedFencingReport::default()
    };
    for (key, writes) in by_key {
        let r = check(writes);
        out.keys += 1;
        out.writes += r.writes;
        out.stale_count += r.stale_count;
        out.without_epoch += r.without_epoch;
        if r.violations() > 0 {
            out.failing.insert(key.clone(), r);
        }
    }
    out
}

/// Checks stored writes (in stream order).
pub fn check(writes: &[StoredWrite]) -> FencingReport {
    let mut report = FencingReport {
        writes: writes.len(),
        complete: true,
        ..FencingReport::default()
    };
    let mut max: Option<(u64, u64)> = None;
    let mut epochs = std::collections::BTreeSet::new();
    for w in writes {
        let Some(e) = w.epoch else {
            report.without_epoch += 1;
            continue;
        };
        epochs.insert(e);
        match max {
            Some((m, seq)) if e < m => {
                report.stale_count += 1;
                if report.stale_accepted.len() < 20 {
                    report.stale_accepted.push(FencedWriteAccepted {
                        write: w.clone(),
                        max_epoch_before: Some(m),
                        max_epoch_seq: Some(seq),
                    });
                }
            }
            Some((m, _)) if e == m => {}
            _ => max = Some((e, w.seq)),
        }
    }
    report.epochs = epochs.len();
    report
}

/// Records everything stored on `$KV.<bucket>.<key>` while a run goes on.
///
/// A KV bucket keeps only the last few revisions of a key, so the history
/// must be read as it is written: [`StreamWatch::start`] follows the whole
/// `KV_<bucket>` stream with an ordered consumer from its first message,
/// and [`StreamWatch::finish`] waits until it has read up to the stream's
/// last sequence. A gap in stream sequences (a revision removed before it
/// was read) marks the result incomplete.
#[derive(Debug)]
pub struct StreamWatch {
    js: jetstream::Context,
    stream_name: String,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`StreamWatch`] read.
#[derive(Debug, Clone, Default)]
pub struct WatchResult {
    /// The key's stored writes, in stream order (every matched key's, for
    /// [`StreamWatch::start_prefix`]).
    pub writes: Vec<StoredWrite>,
    /// The stored writes by key (the part after the bucket's subject
    /// prefix), each in stream order.
    pub by_key: std::collections::BTreeMap<String, Vec<StoredWrite>>,
    /// No gaps, and caught up with the stream's last sequence.
    pub complete: bool,
    /// Stream sequences never read.
    pub missing: u64,
    /// Consumer re-creations.
    pub restarts: u32,
}

/// Which subjects of the stream a [`StreamWatch`] records.
#[derive(Debug, Clone)]
enum Subjects {
    /// One key: `$KV.<bucket>.<key>`.
    Exact(String),
    /// Every key starting with the prefix: `$KV.<bucket>.<prefix>...`.
    Prefix(String),
}

impl Subjects {
    fn matches(&self, subject: &str) -> bool {
        match self {
            Subjects::Exact(s) => subject == s,
            Subjects::Prefix(p) => subject.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    writes: Vec<(String, StoredWrite)>,
    last_seq: u64,
    complete: bool,
    error: Option<String>,
    restarts: u32,
    missing: u64,
}

/// Reads the stream from sequence `*expected` until the consumer fails.
async fn follow(
    js: &jetstream::Context,
    stream_name: &str,
    subjects: &Subjects,
    key_prefix: &str,
    seen: &std::sync::Mutex<Seen>,
    expected: &mut u64,
) -> Result<(), String> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *expected,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(next) = messages.next().await {
        let msg = next.map_err(|e| e.to_string())?;
        let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
        let mut seen = seen.lock().map_err(|_| "poisoned".to_owned())?;
        if seq != *expected {
            seen.complete = false;
            seen.missing += seq.saturating_sub(*expected);
        }
        *expected = seq + 1;
        seen.last_seq = seq;
        if subjects.matches(msg.subject.as_str()) && !msg.payload.is_empty() {
            let value: serde_json::Value =
                serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
            let epoch = value.get("epoch").and_then(serde_json::Value::as_u64);
            let key = msg
                .subject
                .as_str()
                .strip_prefix(key_prefix)
                .unwrap_or(msg.subject.as_str())
                .to_owned();
            seen.writes.push((key, StoredWrite { seq, epoch, value }));
        }
    }
    Err("consumer ended".into())
}

impl StreamWatch {
    /// Starts following the stream of `bucket` (which must exist). The
    /// consumer is recreated from the next sequence whenever it fails (a
    /// NATS server restart), so only revisions the stream itself dropped
    /// meanwhile are missed — and those show as gaps.
    pub async fn start(js: &jetstream::Context, bucket: &str, key: &str) -> Result<Self, String> {
        Self::follow_subjects(js, bucket, Subjects::Exact(format!("$KV.{bucket}.{key}"))).await
    }

    /// Like [`start`](Self::start), for every key of `bucket` that starts
    /// with `prefix` (e.g. `reg.` for a ring's per-key registers).
    pub async fn start_prefix(
        js: &jetstream::Context,
        bucket: &str,
        prefix: &str,
    ) -> Result<Self, String> {
        Self::follow_subjects(
            js,
            bucket,
            Subjects::Prefix(format!("$KV.{bucket}.{prefix}")),
        )
        .await
    }

    async fn follow_subjects(
        js: &jetstream::Context,
        bucket: &str,
        subjects: Subjects,
    ) -> Result<Self, String> {
        let stream_name = format!("KV_{bucket}");
        // Fail early if the bucket does not exist yet.
        let mut stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| format!("stream {stream_name}: {e}"))?;
        // Keep every revision (a KV bucket keeps at most 64 per key): a
        // consumer recreated after a server loss then resumes where it
        // stopped and misses nothing. The app's reads are unaffected (KV
        // reads the last revision); only the observation gets complete.
        // Not "unlimited" (-1): async-nats refuses to open a bucket whose
        // stream keeps fewer than 1 message per subject, so every node
        // opening the bucket afterwards would fail.
        let mut config = stream
            .info()
            .await
            .map_err(|e| format!("stream {stream_name}: {e}"))?
            .config
            .clone();
        if config.max_messages_per_subject < KEEP_PER_KEY {
            config.max_messages_per_subject = KEEP_PER_KEY;
            js.update_stream(config)
                .await
                .map_err(|e| format!("keep the history of {stream_name}: {e}"))?;
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen {
            complete: true,
            ..Seen::default()
        }));
        let key_prefix = format!("$KV.{bucket}.");
        let (shared, js2, name) = (seen.clone(), js.clone(), stream_name.clone());
        let task = tokio::spawn(async move {
            let mut expected = 1u64;
            loop {
                if let Err(e) =
                    follow(&js2, &name, &subjects, &key_prefix, &shared, &mut expected).await
                {
                    if let Ok(mut seen) = shared.lock() {
                        seen.error = Some(e);
                        seen.restarts += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(StreamWatch {
            js: js.clone(),
            stream_name,
            seen,
            task,
        })
    }

    /// Waits (up to `timeout`) until everything stored so far was read;
    /// returns the writes of the key in stream order, whether the read was
    /// complete (no gaps, caught up), the number of stream sequences never
    /// read and how often the consumer was recreated.
    pub async fn finish(self, timeout: Duration) -> Result<WatchResult, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let last = loop {
            let got = match self.js.get_stream(&self.stream_name).await {
                Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).ok(),
                Err(_) => None,
            };
            if let Some(last) = got {
                break last;
            }
            if tokio::time::Instant::now() >= deadline {
                self.task.abort();
                return Err(format!(
                    "stream {}: no info before the deadline",
                    self.stream_name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let caught_up = loop {
            let reached = self
                .seen
                .lock()
                .map(|s| s.last_seq >= last)
                .unwrap_or(false);
            if reached {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.task.abort();
        let seen = self
            .seen
            .lock()
            .map_err(|_| "stream watch poisoned".to_owned())?;
        let mut by_key: std::collections::BTreeMap<String, Vec<StoredWrite>> =
            std::collections::BTreeMap::new();
        for (key, w) in &seen.writes {
            by_key.entry(key.clone()).or_default().push(w.clone());
        }
        Ok(WatchResult {
            writes: seen.writes.iter().map(|(_, w)| w.clone()).collect(),
            by_key,
            complete: seen.complete && caught_up,
            missing: seen.missing,
            restarts: seen.restarts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seq: u64, epoch: Option<u64>) -> StoredWrite {
        StoredWrite {
            seq,
            epoch,
            value: serde_json::json!({"value": seq, "epoch": epoch}),
        }
    }

    #[test]
    fn growing_epochs_pass() {
        let r = check(&[w(1, Some(3)), w(2, Some(3)), w(5, Some(9)), w(6, Some(9))]);
        assert_eq!(r.violations(), 0);
        assert_eq!(r.epochs, 2);
    }

    #[test]
    fn a_deposed_holders_write_after_its_successors_is_reported() {
        let r = check(&[w(1, Some(3)), w(5, Some(9)), w(6, Some(3)), w(7, None)]);
        assert_eq!(r.stale_count, 1);
        assert_eq!(r.without_epoch, 1);
        assert_eq!(r.violations(), 2);
        assert_eq!(r.stale_accepted[0].write.seq, 6);
        assert_eq!(r.stale_accepted[0].max_epoch_seq, Some(5));
    }

    #[test]
    fn keys_are_fenced_independently() {
        // Partition tokens differ per key: a lower token on another key is
        // no stale write; on the same key it is.
        let mut by_key = std::collections::BTreeMap::new();
        by_key.insert("reg.a".to_owned(), vec![w(1, Some(9)), w(3, Some(9))]);
        by_key.insert("reg.b".to_owned(), vec![w(2, Some(4)), w(4, Some(12))]);
        assert_eq!(check_keys(&by_key).violations(), 0);
        by_key.insert("reg.c".to_owned(), vec![w(5, Some(20)), w(6, Some(14))]);
        let r = check_keys(&by_key);
        assert_eq!(r.violations(), 1);
        assert_eq!(r.keys, 3);
        assert_eq!(r.failing["reg.c"].stale_accepted[0].write.seq, 6);
    }
}
