//! The audit log: who did what, when, on which node — stored in the
//! JetStream stream `P_audit` (subjects `P._.audit.APP.CATEGORY.NAME`).
//!
//! # Model
//!
//! An [`AuditEntry`] is `{ts, node, app, category, action, data, trace_id}`.
//! `action` is `category.name` (`election.leader_acquired`); its tokens form
//! the end of the subject, so a filter by app and category is a subject
//! filter the server applies. Platform-wide entries (membership, platform
//! locks) have no app and use the token `_`.
//!
//! - **Automatic entries** — `election.leader_acquired`/`leader_lost`,
//!   `member.joined`/`left`, `lock.acquired`/`released`,
//!   `app.started`/`stopped` — are queued and published in order by one
//!   background task per node, without waiting for the server's
//!   acknowledgement, so recording never slows the transition it records.
//!   Facts that several nodes observe (a crashed leader's loss, a crashed
//!   node's leave) are published by every observer with the same
//!   `Nats-Msg-Id`, and the stream's duplicate window keeps exactly one.
//! - **User entries** ([`AppAudit::log`]) are acknowledged by JetStream
//!   before `log` returns. Categories the platform writes (`election`,
//!   `member`, `lock`, `app`, `backend`, `wal`, `placement`) are refused for
//!   user entries, so they cannot be forged through the API.
//! - **Queries** ([`AppAudit::query`]) read the stream with an ephemeral
//!   ordered consumer filtered by subject (app, category) and start time;
//!   node and end time are checked on the client. Time filters use the time
//!   the *server* stored the entry.
//! - **Retention**: 30 days and 1 GiB by default, set with
//!   [`PlatformBuilder::audit`](crate::platform::PlatformBuilder::audit).
//!
//! ```no_run
//! # async fn demo(ctx: cluster_runtime::AppContext) -> cluster_runtime::Result<()> {
//! use cluster_runtime::observe::AuditFilter;
//! ctx.audit().log("order.refunded", &serde_json::json!({"order": 17})).await?;
//! let elections = ctx.audit().query(AuditFilter::new().category("election")).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::naming::{Names, PLATFORM_SCOPE};
use crate::rpc::RequestInfo;

/// Categories only the platform writes.
pub const RESERVED_CATEGORIES: &[&str] = &[
    "election",
    "member",
    "lock",
    "app",
    "backend",
    "vip",
    "wal",
    "placement",
];

/// How many automatic entries may wait for the publisher before new ones
/// are dropped (and counted in `gc_audit_dropped_total`).
const QUEUE: usize = 4096;

/// How long a query waits for the next stored entry before giving up.
const QUERY_IDLE: Duration = Duration::from_secs(5);

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the node recorded it (its wall clock), RFC 3339 on the wire.
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    /// The node that recorded it.
    pub node: String,
    /// The app it concerns (`None`: platform-wide).
    #[serde(default)]
    pub app: Option<String>,
    /// The first token of `action` (`election`).
    pub category: String,
    /// What happened, `category.name` (`election.leader_acquired`).
    pub action: String,
    /// Details (JSON).
    #[serde(default)]
    pub data: serde_json::Value,
    /// The trace id of the call that caused it, if any.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Stream sequence (filled in when read back; not sent).
    #[serde(skip)]
    pub seq: u64,
    /// When the server stored it (filled in when read back; not sent).
    #[serde(skip)]
    pub stored: Option<SystemTime>,
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let text = OffsetDateTime::from(*t)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(SystemTime::from)
            .map_err(serde::de::Error::custom)
    }
}

/// What to read from the audit log. Every part is optional.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use cluster_runtime::observe::AuditFilter;
/// let f = AuditFilter::new()
///     .app("counter")
///     .category("election")
///     .since(SystemTime::now() - Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    category: Option<String>,
    app: Option<String>,
    platform_only: bool,
    node: Option<String>,
    limit: Option<usize>,
}

impl AuditFilter {
    /// Everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries stored at or after `t`.
    pub fn since(mut self, t: SystemTime) -> Self {
        self.since = Some(t);
        self
    }

    /// Entries stored at or before `t`.
    pub fn until(mut self, t: SystemTime) -> Self {
        self.until = Some(t);
        self
    }

    /// Entries of category `category` (`election`, `lock`, …).
    pub fn category(mut self, category: &str) -> Self {
        self.category = Some(category.to_owned());
        self
    }

    /// Entries about app `app`.
    pub fn app(mut self, app: &str) -> Self {
        self.app = Some(app.to_owned());
        self.platform_only = false;
        self
    }

    /// Only platform-wide entries (membership, platform locks).
    pub fn platform_wide(mut self) -> Self {
        self.app = None;
        self.platform_only = true;
        self
    }

    /// Entries recorded by node `node`.
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// At most `n` entries (the oldest matching ones).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    fn subject(&self, names: &Names) -> String {
        let app = if self.platform_only {
            Some(PLATFORM_SCOPE)
        } else {
            self.app.as_deref()
        };
        names.audit_filter(app, self.category.as_deref())
    }

    fn deliver_policy(&self) -> consumer::DeliverPolicy {
        match self.since {
            Some(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(t),
            },
            None => consumer::DeliverPolicy::All,
        }
    }

    fn keeps(&self, e: &AuditEntry) -> bool {
        self.node.as_ref().is_none_or(|n| *n == e.node)
    }

    fn past_end(&self, stored: Option<SystemTime>) -> bool {
        matches!((self.until, stored), (Some(until), Some(at)) if at > until)
    }
}

/// Retention and placement of the `P_audit` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Entries older than this are removed (default 30 days).
    pub max_age: Duration,
    /// The stream's size limit; the oldest entries go first (default 1 GiB).
    pub max_bytes: i64,
    /// Replicas (default: 3 on a NATS cluster of ≥ 3 servers, else 1).
    pub replicas: Option<usize>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 1 << 30,
            replicas: None,
        }
    }
}

/// Why an audit operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The action is not `category.name` with tokens of `[a-z0-9_-]`, or
    /// uses a category only the platform may write.
    #[error("audit action `{action}` is invalid: {reason}")]
    InvalidAction {
        /// The refused action.
        action: String,
        /// Why.
        reason: String,
    },
    /// The data did not serialize to JSON.
    #[error("audit data of `{action}` is not serializable: {message}")]
    Data {
        /// The action.
        action: String,
        /// The serializer's message.
        message: String,
    },
    /// JetStream failed.
    #[error("audit {op} failed: {message}")]
    JetStream {
        /// What was being done.
        op: String,
        /// The error.
        message: String,
    },
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks `category.name[.more]`; returns the category.
fn check_action(action: &str) -> std::result::Result<&str, AuditError> {
    let invalid = |reason: &str| AuditError::InvalidAction {
        action: action.to_owned(),
        reason: reason.to_owned(),
    };
    let mut tokens = action.split('.');
    let category = tokens.next().unwrap_or("");
    let rest: Vec<&str> = tokens.collect();
    if rest.is_empty() {
        return Err(invalid(
            "use `category.name`, e.g. `order.refunded` (the category is the first token)",
        ));
    }
    if !is_token(category) || !rest.iter().all(|t| is_token(t)) {
        return Err(invalid(
            "each `.`-separated token must be non-empty and use only [a-z0-9_-]",
        ));
    }
    Ok(category)
}

fn now_trace_id() -> Option<String> {
    RequestInfo::current().map(|i| i.trace().trace_id())
}

struct Queued {
    subject: String,
    msg_id: Option<String>,
    payload: Bytes,
    /// Told once the entry is handed to the connection.
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The node's audit log writer and reader. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    js: jetstream::Context,
    names: Names,
    node: String,
    queue: mpsc::Sender<Queued>,
    metrics: Metrics,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("platform", &self.names.platform())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Creates (or updates the retention of) `P_audit` and starts the
    /// publisher of automatic entries.
    pub async fn start(
        client: &async_nats::Client,
        js: &jetstream::Context,
        names: &Names,
        node: &str,
        metrics: Metrics,
        options: &AuditOptions,
        default_replicas: usize,
    ) -> Result<Audit> {
        ensure_stream(js, names, options, default_replicas).await?;
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publisher(client.clone(), rx));
        Ok(Audit {
            js: js.clone(),
            names: names.clone(),
            node: node.to_owned(),
            queue,
            metrics,
        })
    }

    /// The audit log as seen from app `app` (`None`: platform-wide).
    pub fn scoped(&self, app: Option<&str>) -> AppAudit {
        AppAudit {
            audit: self.clone(),
            app: app.map(str::to_owned),
        }
    }

    fn entry(&self, app: Option<&str>, action: &str, data: serde_json::Value) -> AuditEntry {
        AuditEntry {
            ts: SystemTime::now(),
            node: self.node.clone(),
            app: app.map(str::to_owned),
            category: action.split('.').next().unwrap_or(action).to_owned(),
            action: action.to_owned(),
            data,
            trace_id: now_trace_id(),
            seq: 0,
            stored: None,
        }
    }

    fn subject(&self, app: Option<&str>, action: &str) -> String {
        self.names
            .audit_subject(app.unwrap_or(PLATFORM_SCOPE), action)
    }

    /// Queues an automatic entry (never blocks). `msg_id`, when given,
    /// deduplicates the same fact reported by several nodes.
    pub(crate) fn record(
        &self,
        app: Option<&str>,
        action: &str,
        data: serde_json::Value,
        msg_id: Option<String>,
    ) {
        let Some(queued) = self.queued(app, action, data, msg_id) else {
            return;
        };
        if self.queue.try_send(queued).is_err() {
            self.metrics.audit_dropped();
            tracing::warn!(action, "audit queue full: entry dropped");
        }
    }

    /// Like [`record`](Self::record), but returns only once the entry (and
    /// every entry queued before it) is on the connection: use it before an
    /// action whose effect other nodes may audit next (a lock's release), so
    /// the stream keeps cause before effect.
    pub(crate) async fn record_sent(
        &self,
        app: Option<&str>,
        action: &str,
        data: serde_json::Value,
    ) {
        let Some(mut queued) = self.queued(app, action, data, None) else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        queued.sent = Some(tx);
        if self.queue.send(queued).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn queued(
        &self,
        app: Option<&str>,
        action: &str,
        data: serde_json::Value,
        msg_id: Option<String>,
    ) -> Option<Queued> {
        let entry = self.entry(app, action, data);
        let payload = serde_json::to_vec(&entry).ok()?;
        Some(Queued {
            subject: self.subject(app, action),
            msg_id,
            payload: payload.into(),
            sent: None,
        })
    }

    async fn log(
        &self,
        app: Option<&str>,
        action: &str,
        data: serde_json::Value,
    ) -> std::result::Result<u64, AuditError> {
        let category = check_action(action)?;
        if RESERVED_CATEGORIES.contains(&category) {
            return Err(AuditError::InvalidAction {
                action: action.to_owned(),
                reason: format!(
                    "category `{category}` is written only by the platform (reserved: {})",
                    RESERVED_CATEGORIES.join(", ")
                ),
            });
        }
        let entry = self.entry(app, action, data);
        let payload = serde_json::to_vec(&entry).map_err(|e| AuditError::Data {
            action: action.to_owned(),
            message: e.to_string(),
        })?;
        let js_err = |e: &dyn fmt::Display| AuditError::JetStream {
            op: format!("log `{action}`"),
            message: e.to_string(),
        };
        let ack = self
            .js
            .publish(self.subject(app, action), payload.into())
            .await
            .map_err(|e| js_err(&e))?
            .await
            .map_err(|e| js_err(&e))?;
        Ok(ack.sequence)
    }

    /// Reads the entries matching `filter`, oldest first, up to the last
    /// entry stored when the query started.
    pub async fn query(
        &self,
        filter: &AuditFilter,
    ) -> std::result::Result<Vec<AuditEntry>, AuditError> {
        let js_err = |e: &dyn fmt::Display| AuditError::JetStream {
            op: "query".into(),
            message: e.to_string(),
        };
        let stream = self
            .js
            .get_stream(self.names.audit_stream())
            .await
            .map_err(|e| js_err(&e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.subject(&self.names),
                deliver_policy: filter.deliver_policy(),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&e))?;
        let mut pending = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| js_err(&e))?;
        while pending > 0 {
            let msg = match tokio::time::timeout(QUERY_IDLE, messages.next()).await {
                Err(_) => return Err(js_err(&"no entry arrived within 5 s")),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(js_err(&e)),
                Ok(Some(Ok(m))) => m,
            };
            let (seq, stored, left) = match msg.info() {
                Ok(info) => (
                    info.stream_sequence,
                    Some(SystemTime::from(info.published)),
                    info.pending,
                ),
                Err(_) => (0, None, pending.saturating_sub(1)),
            };
            pending = left;
            if filter.past_end(stored) {
                break;
            }
            let Ok(mut entry) = serde_json::from_slice::<AuditEntry>(&msg.payload) else {
                continue;
            };
            entry.seq = seq;
            entry.stored = stored;
            if filter.keeps(&entry) {
                out.push(entry);
                if filter.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Entries matching `filter` as they are stored (from `since` if set,
    /// else from now on). Ends at `until`, if set.
    pub async fn stream(
        &self,
        filter: &AuditFilter,
    ) -> std::result::Result<AuditStream, AuditError> {
        let js_err = |e: &dyn fmt::Display| AuditError::JetStream {
            op: "stream".into(),
            message: e.to_string(),
        };
        let stream = self
            .js
            .get_stream(self.names.audit_stream())
            .await
            .map_err(|e| js_err(&e))?;
        let deliver_policy = match filter.since {
            Some(_) => filter.deliver_policy(),
            None => consumer::DeliverPolicy::New,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.subject(&self.names),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&e))?;
        let messages = consumer.messages().await.map_err(|e| js_err(&e))?;
        let filter = filter.clone();
        let entries = messages.filter_map(|m| async move { m.ok() }).map(|msg| {
            let info = msg
                .info()
                .ok()
                .map(|i| (i.stream_sequence, SystemTime::from(i.published)));
            let entry = serde_json::from_slice::<AuditEntry>(&msg.payload).ok();
            (info, entry)
        });
        let until_filter = filter.clone();
        let entries = entries
            .take_while(move |(info, _)| {
                futures::future::ready(!until_filter.past_end(info.map(|(_, t)| t)))
            })
            .filter_map(move |(info, entry)| {
                let keep = entry.and_then(|mut e| {
                    if let Some((seq, stored)) = info {
                        e.seq = seq;
                        e.stored = Some(stored);
                    }
                    filter.keeps(&e).then_some(e)
                });
                futures::future::ready(keep)
            });
        Ok(AuditStream {
            inner: Box::pin(entries),
        })
    }
}

/// Live audit entries ([`AppAudit::stream`]).
pub struct AuditStream {
    inner: Pin<Box<dyn Stream<Item = AuditEntry> + Send>>,
}

impl fmt::Debug for AuditStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditStream").finish_non_exhaustive()
    }
}

impl Stream for AuditStream {
    type Item = AuditEntry;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AuditEntry>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The audit log as one app (or the platform) sees it: `ctx.audit()`.
#[derive(Debug, Clone)]
pub struct AppAudit {
    audit: Audit,
    app: Option<String>,
}

impl AppAudit {
    /// Records `action` (`category.name`) with `data`, attributed to this
    /// app and node (and to the current call's trace, inside a handler).
    /// Returns the entry's stream sequence once JetStream stored it.
    pub async fn log<T: Serialize + ?Sized>(
        &self,
        action: &str,
        data: &T,
    ) -> std::result::Result<u64, AuditError> {
        let data = serde_json::to_value(data).map_err(|e| AuditError::Data {
            action: action.to_owned(),
            message: e.to_string(),
        })?;
        self.audit.log(self.app.as_deref(), action, data).await
    }

    /// Entries matching `filter` (of every app unless the filter names one),
    /// oldest first.
    pub async fn query(
        &self,
        filter: AuditFilter,
    ) -> std::result::Result<Vec<AuditEntry>, AuditError> {
        self.audit.query(&filter).await
    }

    /// Entries matching `filter` as they are stored.
    pub async fn stream(
        &self,
        filter: AuditFilter,
    ) -> std::result::Result<AuditStream, AuditError> {
        self.audit.stream(&filter).await
    }

    pub(crate) fn record(&self, action: &str, data: serde_json::Value, msg_id: Option<String>) {
        self.audit.record(self.app.as_deref(), action, data, msg_id);
    }

    pub(crate) async fn record_sent(&self, action: &str, data: serde_json::Value) {
        self.audit
            .record_sent(self.app.as_deref(), action, data)
            .await;
    }
}

/// Publishes queued automatic entries in order, without waiting for acks.
async fn publisher(client: async_nats::Client, mut rx: mpsc::Receiver<Queued>) {
    while let Some(q) = rx.recv().await {
        let sent = match q.msg_id {
            Some(id) => {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                client
                    .publish_with_headers(q.subject, headers, q.payload)
                    .await
            }
            None => client.publish(q.subject, q.payload).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "could not publish audit entry");
        }
        if let Some(done) = q.sent {
            let _ = done.send(());
        }
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    options: &AuditOptions,
    default_replicas: usize,
) -> Result<()> {
    let name = names.audit_stream();
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![names.audit_wildcard()],
        max_age: options.max_age,
        max_bytes: options.max_bytes,
        storage: stream::StorageType::File,
        num_replicas: options.replicas.unwrap_or(default_replicas).max(1),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let op = || format!("create audit stream {name}");
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| Error::nats(op(), e))?;
            let current = &info.config;
            if current.max_age != config.max_age || current.max_bytes != config.max_bytes {
                let mut updated = current.clone();
                updated.max_age = config.max_age;
                updated.max_bytes = config.max_bytes;
                js.update_stream(updated)
                    .await
                    .map_err(|e| Error::nats(format!("update retention of {name}"), e))?;
            }
            Ok(())
        }
        Err(_) => match js.create_stream(config).await {
            Ok(_) => Ok(()),
            // Another node created it meanwhile.
            Err(e) => js
                .get_stream(&name)
                .await
                .map(|_| ())
                .map_err(|_| Error::nats(op(), e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(check_action("order.refunded"), Ok("order"));
        assert_eq!(check_action("a.b.c"), Ok("a"));
        for bad in [
            "order", "Order.x", "a..b", ".a", "a.", "a.b c", "a.*", "a.>",
        ] {
            assert!(check_action(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_wire_format() {
        let e = AuditEntry {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            node: "n1".into(),
            app: Some("counter".into()),
            category: "election".into(),
            action: "election.leader_acquired".into(),
            data: serde_json::json!({"epoch": 7}),
            trace_id: None,
            seq: 9,
            stored: None,
        };
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["ts"], "2023-11-14T22:13:20.123Z");
        assert!(json.get("seq").is_none());
        let back: AuditEntry = serde_json::from_value(json).expect("back");
        assert_eq!(back.ts, e.ts);
        assert_eq!(back.seq, 0);
    }

    #[test]
    fn filter_subjects() {
        let names = Names::new("p").expect("names");
        assert_eq!(AuditFilter::new().subject(&names), "p._.audit.>");
        assert_eq!(
            AuditFilter::new().app("a").category("lock").subject(&names),
            "p._.audit.a.lock.>"
        );
        assert_eq!(
            AuditFilter::new().platform_wide().subject(&names),
            "p._.audit._.*.>"
        );
    }
}
