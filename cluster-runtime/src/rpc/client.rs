//! The calling side: [`RpcClient`] and its call builder.
//!
//! A call names an app, a method and a route, then sends:
//!
//! ```no_run
//! # async fn demo(rpc: cluster_runtime::rpc::RpcClient) -> Result<(), cluster_runtime::rpc::RpcError> {
//! use std::time::Duration;
//! let n: u64 = rpc.app("counter").method("incr").send(&5u64).await?;            // active / pool
//! let v: Option<String> = rpc.app("cache").ring(64).method("get")
//!     .key("user:1").send(&"user:1").await?;                                     // key owner
//! let s: String = rpc.app("counter").method("status").instance("node-2").send(&()).await?;
//! let all = rpc.app("counter").method("status").broadcast(Duration::from_millis(200))
//!     .send::<_, String>(&()).await?;                                            // every instance
//! let far: u64 = rpc.app("counter").on_platform("prod").method("incr").send(&1u64).await?;
//! # Ok(()) }
//! ```
//!
//! Semantics:
//! - **Deadline**: 5 s unless set (client, app or call). Inside a handler the
//!   call's deadline is also capped by the inbound call's, and it carries the
//!   inbound trace id (with a new parent id). Outside a handler a call sends
//!   a `traceparent` only if given one ([`Call::trace`]); otherwise the
//!   serving node starts the trace.
//! - **Retries**: only when NATS reports *no responders* (the request
//!   provably reached no handler: a singleton between actives, a partition
//!   mid-hand-off). The call is re-sent with backoff (2 ms doubling to 100 ms)
//!   until the deadline, then fails with `unavailable`. Nothing else is
//!   retried.
//! - **Size**: a request larger than the connection's `max_payload` fails
//!   before anything is sent.
//! - **Cancellation**: dropping the future abandons the call (a handler
//!   already running finishes; its reply is discarded).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::error::RpcError;
use super::handler::is_method_name;
use super::request::{RequestInfo, TraceContext};
use super::wire::{self, ErrorBody, ErrorCode};
use crate::naming::{self, NameError, Names};
use crate::observe::{RpcMetrics, Side};
use tracing::Instrument;

/// A partition function: key bytes and partition count → partition.
pub type PartitionFn = fn(&[u8], u32) -> u32;

/// The default partition function, part of the wire contract; defined (once)
/// in [`crate::ring`], which owners use too.
pub use crate::ring::xxh3_partition;

type FencingSource = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Calls handlers of any app. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    client: Client,
    names: Names,
    caller_app: Option<String>,
    caller_node: Option<String>,
    codec: Codec,
    default_deadline: Duration,
    partitioner: PartitionFn,
    fencing: Option<FencingSource>,
    backoff_initial: Duration,
    backoff_max: Duration,
    metrics: Option<RpcMetrics>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RpcClient")
            .field("platform", &i.names.platform())
            .field("caller_app", &i.caller_app)
            .field("caller_node", &i.caller_node)
            .field("codec", &i.codec)
            .field("default_deadline", &i.default_deadline)
            .finish_non_exhaustive()
    }
}

/// Options of an [`RpcClient`].
#[must_use]
pub struct RpcClientBuilder {
    client: Client,
    names: Names,
    caller_app: Option<String>,
    caller_node: Option<String>,
    codec: Codec,
    default_deadline: Duration,
    partitioner: PartitionFn,
    fencing: Option<FencingSource>,
    backoff_initial: Duration,
    backoff_max: Duration,
    metrics: Option<RpcMetrics>,
}

impl fmt::Debug for RpcClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClientBuilder")
            .field("platform", &self.names.platform())
            .field("caller_app", &self.caller_app)
            .field("caller_node", &self.caller_node)
            .finish_non_exhaustive()
    }
}

impl RpcClientBuilder {
    /// Identifies the caller (sent as `Cluster-Caller-App`/`-Node`).
    pub fn caller(mut self, app: &str, node: &str) -> Self {
        self.caller_app = Some(app.to_owned());
        self.caller_node = Some(node.to_owned());
        self
    }

    /// Identifies only the calling node (a caller that is not an app).
    pub fn caller_node(mut self, node: &str) -> Self {
        self.caller_node = Some(node.to_owned());
        self
    }

    /// The codec of requests (default JSON).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The deadline of calls that set none (default 5 s).
    pub fn default_deadline(mut self, d: Duration) -> Self {
        self.default_deadline = d;
        self
    }

    /// The function mapping keys to partitions (default [`xxh3_partition`]).
    pub fn partitioner(mut self, f: PartitionFn) -> Self {
        self.partitioner = f;
        self
    }

    /// Where the caller's current fencing token comes from (read at every
    /// call; e.g. the app's current epoch while it is active).
    pub fn fencing_token_source(
        mut self,
        f: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        self.fencing = Some(Arc::new(f));
        self
    }

    /// Backoff between retries after *no responders* (default 2 ms doubling
    /// to 100 ms).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial.max(Duration::from_micros(100));
        self.backoff_max = max.max(self.backoff_initial);
        self
    }

    /// Records every call's latency and errors (`gc_rpc_duration_seconds`,
    /// `gc_rpc_errors_total`, side `client`).
    pub fn metrics(mut self, metrics: RpcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the client, validating the caller names.
    pub fn build(self) -> Result<RpcClient, NameError> {
        if let Some(app) = &self.caller_app {
            naming::validate_app(app)?;
        }
        if let Some(node) = &self.caller_node {
            naming::validate_node(node)?;
        }
        Ok(RpcClient {
            inner: Arc::new(ClientInner {
                client: self.client,
                names: self.names,
                caller_app: self.caller_app,
                caller_node: self.caller_node,
                codec: self.codec,
                default_deadline: self.default_deadline,
                partitioner: self.partitioner,
                fencing: self.fencing,
                backoff_initial: self.backoff_initial,
                backoff_max: self.backoff_max,
                metrics: self.metrics,
            }),
        })
    }
}

impl RpcClient {
    /// A client with defaults and no caller identity.
    pub fn new(client: Client, names: Names) -> Self {
        RpcClient {
            inner: Arc::new(ClientInner {
                client,
                names,
                caller_app: None,
                caller_node: None,
                codec: Codec::Json,
                default_deadline: wire::DEFAULT_DEADLINE,
                partitioner: xxh3_partition,
                fencing: None,
                backoff_initial: Duration::from_millis(2),
                backoff_max: Duration::from_millis(100),
                metrics: None,
            }),
        }
    }

    /// A builder for a client with options.
    pub fn builder(client: Client, names: Names) -> RpcClientBuilder {
        RpcClientBuilder {
            client,
            names,
            caller_app: None,
            caller_node: None,
            codec: Codec::Json,
            default_deadline: wire::DEFAULT_DEADLINE,
            partitioner: xxh3_partition,
            fencing: None,
            backoff_initial: Duration::from_millis(2),
            backoff_max: Duration::from_millis(100),
            metrics: None,
        }
    }

    /// Targets app `app` of this platform.
    pub fn app(&self, app: &str) -> AppRef {
        AppRef {
            client: self.clone(),
            app: app.to_owned(),
            platform: None,
            partitions: None,
            deadline: None,
            codec: None,
        }
    }

    /// The typed client of `A` (what `cluster::call::<A>(ctx)` returns).
    pub fn typed<A: RemoteApp>(&self) -> A::Client {
        let mut app = self.app(A::NAME);
        if let Some(p) = A::PARTITIONS {
            app = app.ring(p);
        }
        A::Client::from_app(app)
    }

    /// The platform's names.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The NATS connection.
    pub fn nats(&self) -> &Client {
        &self.inner.client
    }
}

/// An app to call: platform, partition count, default deadline and codec.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppRef {
    client: RpcClient,
    app: String,
    platform: Option<Result<Names, NameError>>,
    partitions: Option<u32>,
    deadline: Option<Duration>,
    codec: Option<Codec>,
}

impl fmt::Debug for AppRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppRef")
            .field("app", &self.app)
            .field("platform", &self.platform)
            .field("partitions", &self.partitions)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl AppRef {
    /// Calls the app on another platform (reached over a leaf connection).
    pub fn on_platform(mut self, platform: &str) -> Self {
        self.platform = Some(Names::new(platform));
        self
    }

    /// Declares the app a ring of `partitions` partitions (needed for
    /// [`Call::key`]).
    pub fn ring(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Deadline of calls to this app that set none.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Codec of calls to this app.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.app
    }

    /// The partition of `key`, if the partition count is known.
    pub fn partition_of(&self, key: &[u8]) -> Option<u32> {
        self.partitions
            .map(|p| (self.client.inner.partitioner)(key, p))
    }

    /// A call of `method`, routed to the app API subject unless changed.
    pub fn method(&self, method: &str) -> Call {
        Call {
            app: self.clone(),
            method: method.to_owned(),
            target: Target::Api,
            deadline: None,
            fencing: None,
            trace: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Api,
    Partition(u32),
    Key(Vec<u8>),
    Instance(String),
}

/// One call being built. Send it with [`send`](Call::send) (typed) or
/// [`send_raw`](Call::send_raw).
#[must_use = "a call does nothing until sent"]
#[derive(Debug, Clone)]
pub struct Call {
    app: AppRef,
    method: String,
    target: Target,
    deadline: Option<Duration>,
    fencing: Option<u64>,
    trace: Option<TraceContext>,
}

/// A successful raw reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The payload as sent by the handler.
    pub payload: Bytes,
    /// Its codec (from the reply's `Content-Type`).
    pub codec: Codec,
    /// The node that answered.
    pub node: Option<String>,
}

impl Reply {
    /// Decodes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, super::codec::CodecError> {
        self.codec.decode(&self.payload)
    }
}

/// Everything a send needs, resolved from the builder.
struct Prepared {
    subject: String,
    budget: Duration,
    deadline: Instant,
    /// The deadline is an inbound call's (shorter than `budget` allows).
    capped: bool,
    codec: Codec,
    trace: Option<String>,
    fencing: Option<u64>,
    caller_platform: Option<String>,
}

impl Call {
    /// Routes to the owner of ring partition `partition`.
    pub fn partition(mut self, partition: u32) -> Self {
        self.target = Target::Partition(partition);
        self
    }

    /// Routes to the owner of `key`'s partition (needs [`AppRef::ring`]).
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.target = Target::Key(key.as_ref().to_vec());
        self
    }

    /// Routes to the instance on node `node`.
    pub fn instance(mut self, node: &str) -> Self {
        self.target = Target::Instance(node.to_owned());
        self
    }

    /// Sets the call's deadline (budget from now).
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sends a fencing token (overrides the client's token source).
    pub fn fencing_token(mut self, token: u64) -> Self {
        self.fencing = Some(token);
        self
    }

    /// Sends this trace context instead of the inherited or a new one.
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sends to every instance and gathers replies for `window` (capped by
    /// the deadline).
    pub fn broadcast(self, window: Duration) -> Broadcast {
        Broadcast { call: self, window }
    }

    /// Sends `req` and decodes the reply.
    pub async fn send<Req, Resp>(self, req: &Req) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let p = self.prepare(false)?;
        let started = Instant::now();
        let result = async {
            let payload = p
                .codec
                .encode(req)
                .map_err(|e| RpcError::encode(&p.subject, e))?;
            let msg = self.request(&p, payload).await?;
            let reply = reply_of(&p.subject, msg)?;
            reply
                .codec
                .decode(&reply.payload)
                .map_err(|e| RpcError::decode(&p.subject, reply.codec, e.message))
        }
        .instrument(self.span(&p))
        .await;
        self.record(started, result.as_ref().err());
        result
    }

    /// Sends `payload` as it is (labelled with the call's codec) and returns
    /// the reply payload.
    pub async fn send_raw(self, payload: Bytes) -> Result<Reply, RpcError> {
        let p = self.prepare(false)?;
        let started = Instant::now();
        let result = async {
            let msg = self.request(&p, payload).await?;
            reply_of(&p.subject, msg)
        }
        .instrument(self.span(&p))
        .await;
        self.record(started, result.as_ref().err());
        result
    }

    /// The `rpc.client` span (its `trace_id` is filled only when enabled).
    fn span(&self, p: &Prepared) -> tracing::Span {
        let span = tracing::info_span!(
            "rpc.client",
            app = %self.app.app,
            method = %self.method,
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if let Some(id) = p.trace.as_deref().and_then(|t| t.get(3..35)) {
                span.record("trace_id", id);
            }
        }
        span
    }

    fn record(&self, started: Instant, error: Option<&RpcError>) {
        if let Some(m) = &self.app.client.inner.metrics {
            m.record(
                Side::Client,
                &self.app.app,
                &self.method,
                started.elapsed(),
                error.map(|e| e.code().as_str()),
            );
        }
    }

    fn prepare(&self, broadcast: bool) -> Result<Prepared, RpcError> {
        let inner = &self.app.client.inner;
        let app = &self.app.app;
        let invalid = |what: String| RpcError::InvalidCall(what);
        naming::validate_app(app).map_err(|e| invalid(e.to_string()))?;
        if !is_method_name(&self.method) {
            return Err(invalid(format!(
                "method name `{}` is invalid: use letters, digits, `_` and `-` only",
                self.method
            )));
        }
        let names = match &self.app.platform {
            None => &inner.names,
            Some(Ok(names)) => names,
            Some(Err(e)) => return Err(invalid(e.to_string())),
        };
        let subject = if broadcast {
            names.broadcast_subject(app, &self.method)
        } else {
            match &self.target {
                Target::Api => names.api_subject(app, &self.method),
                Target::Partition(p) => {
                    if let Some(count) = self.app.partitions {
                        if *p >= count {
                            return Err(invalid(format!(
                                "partition {p} is out of range: app `{app}` has {count} partitions"
                            )));
                        }
                    }
                    names.partition_subject(app, *p, &self.method)
                }
                Target::Key(key) => {
                    let Some(count) = self.app.partitions else {
                        return Err(invalid(format!(
                            "routing by key needs the partition count of `{app}`: use .ring(P)"
                        )));
                    };
                    let p = (inner.partitioner)(key, count);
                    names.partition_subject(app, p, &self.method)
                }
                Target::Instance(node) => {
                    naming::validate_node(node).map_err(|e| invalid(e.to_string()))?;
                    names.instance_subject(app, node, &self.method)
                }
            }
        };
        let budget = self
            .deadline
            .or(self.app.deadline)
            .unwrap_or(inner.default_deadline);
        let mut deadline = Instant::now() + budget;
        let current = RequestInfo::current();
        let mut capped = false;
        if let Some(info) = &current {
            capped = info.deadline() < deadline;
            deadline = deadline.min(info.deadline());
        }
        // Without a trace to continue, none is sent: the server starts one
        // (saves a header on the hot path of calls made outside handlers).
        let trace = self
            .trace
            .or_else(|| current.as_ref().map(|i| i.trace().child()))
            .map(|t| t.to_header());
        let fencing = self
            .fencing
            .or_else(|| inner.fencing.as_ref().and_then(|f| f()));
        let caller_platform =
            (names.platform() != inner.names.platform()).then(|| inner.names.platform().to_owned());
        Ok(Prepared {
            subject,
            budget,
            deadline,
            capped,
            codec: self.app.codec.unwrap_or(inner.codec),
            trace,
            fencing,
            caller_platform,
        })
    }

    /// The request headers; `remaining` is `None` when the server's default
    /// deadline is the call's (first attempt with the default budget), so a
    /// plain call carries no header at all and takes the server's fast path.
    fn headers(&self, p: &Prepared, remaining: Option<Duration>) -> HeaderMap {
        let inner = &self.app.client.inner;
        let mut h = HeaderMap::new();
        if let Some(remaining) = remaining {
            // Round up so a sub-millisecond remainder is not sent as
            // "expired"; the caller enforces its own deadline anyway.
            let ms = remaining.as_micros().div_ceil(1000);
            h.insert(wire::name::TIMEOUT_MS, ms.to_string());
        }
        if let Some(trace) = &p.trace {
            h.insert(wire::name::TRACEPARENT, trace.as_str());
        }
        if let Some(app) = &inner.caller_app {
            h.insert(wire::name::CALLER_APP, app.as_str());
        }
        if let Some(node) = &inner.caller_node {
            h.insert(wire::name::CALLER_NODE, node.as_str());
        }
        if let Some(platform) = &p.caller_platform {
            h.insert(wire::name::CALLER_PLATFORM, platform.as_str());
        }
        if let Some(token) = p.fencing {
            h.insert(wire::name::FENCING_TOKEN, token.to_string());
        }
        if p.codec != Codec::Json {
            h.insert(wire::name::CONTENT_TYPE, p.codec.content_type());
        }
        h
    }

    fn check_size(
        &self,
        p: &Prepared,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<(), RpcError> {
        let max = self.app.client.inner.client.max_payload();
        let size = header_wire_len(headers) + payload.len();
        if size > max {
            return Err(RpcError::PayloadTooLarge {
                subject: p.subject.clone(),
                size,
                max,
            });
        }
        Ok(())
    }

    /// Sends until a reply, retrying only where the call provably did not
    /// run: no responders, or a `not_executed` refusal.
    async fn request(&self, p: &Prepared, payload: Bytes) -> Result<Message, RpcError> {
        let inner = &self.app.client.inner;
        let started = Instant::now();
        let mut backoff = inner.backoff_initial;
        let mut attempts = 0u32;
        loop {
            let remaining = p.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if attempts > 0 {
                    RpcError::Unavailable {
                        subject: p.subject.clone(),
                        waited: started.elapsed(),
                        attempts,
                    }
                } else {
                    RpcError::Timeout {
                        subject: p.subject.clone(),
                        deadline: p.budget,
                    }
                });
            }
            let default_budget = attempts == 0 && p.budget == wire::DEFAULT_DEADLINE && !p.capped;
            let headers = self.headers(p, (!default_budget).then_some(remaining));
            if attempts == 0 {
                self.check_size(p, &headers, &payload)?;
            }
            attempts += 1;
            let mut request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(remaining));
            if !headers.is_empty() {
                request = request.headers(headers);
            }
            let err = match inner.client.send_request(p.subject.clone(), request).await {
                // Refused before its handler ran (the instance is no longer
                // active / the owner): provably not executed, so it is
                // sent again, like a call that found no responders.
                Ok(msg) if is_not_executed(&msg) => None,
                Ok(msg) => return Ok(msg),
                Err(err) => Some(err),
            };
            match err.as_ref().map(|e| e.kind()) {
                None | Some(RequestErrorKind::NoResponders) => {
                    let left = p.deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        continue; // reports Unavailable above
                    }
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(inner.backoff_max);
                }
                Some(RequestErrorKind::TimedOut) => {
                    return Err(RpcError::Timeout {
                        subject: p.subject.clone(),
                        deadline: p.budget,
                    })
                }
                Some(RequestErrorKind::MaxPayloadExceeded) => {
                    return Err(RpcError::PayloadTooLarge {
                        subject: p.subject.clone(),
                        size: payload.len(),
                        max: inner.client.max_payload(),
                    })
                }
                Some(RequestErrorKind::InvalidSubject) => {
                    return Err(RpcError::InvalidCall(format!(
                        "`{}` is not a valid subject",
                        p.subject
                    )))
                }
                Some(_) => {
                    return Err(RpcError::Transport {
                        subject: p.subject.clone(),
                        message: err.map(|e| e.to_string()).unwrap_or_default(),
                    })
                }
            }
        }
    }
}

/// Whether a reply says the call was refused before its handler ran.
fn is_not_executed(msg: &Message) -> bool {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(wire::name::ERROR))
        .is_some_and(|v| v.as_str() == ErrorCode::NotExecuted.as_str())
}

/// The size of a header block on the wire (`NATS/1.0\r\n`, each
/// `Name: value\r\n`, `\r\n`).
fn header_wire_len(headers: &HeaderMap) -> usize {
    let mut len = b"NATS/1.0\r\n".len() + 2;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for v in values {
            len += name.len() + 2 + v.as_str().len() + 2;
        }
    }
    len
}

/// A reply message → its payload, or the error it carries.
fn reply_of(subject: &str, msg: Message) -> Result<Reply, RpcError> {
    let header = |name: HeaderName| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let node = header(wire::name::NODE);
    if let Some(code) = header(wire::name::ERROR) {
        let body: Option<ErrorBody> = serde_json::from_slice(&msg.payload).ok();
        let (code, message) = match (code.parse::<ErrorCode>(), body) {
            (Ok(code), Some(body)) => (code, body.message),
            (Ok(code), None) => (code, String::from_utf8_lossy(&msg.payload).into_owned()),
            (Err(_), body) => (
                ErrorCode::Internal,
                format!(
                    "unknown error code `{code}`: {}",
                    body.map(|b| b.message).unwrap_or_default()
                ),
            ),
        };
        return Err(RpcError::Remote {
            subject: subject.to_owned(),
            code,
            message,
            node,
        });
    }
    if let Some(message) = header(wire::name::SERVICE_ERROR) {
        // A NATS micro service that is not ours.
        return Err(RpcError::Remote {
            subject: subject.to_owned(),
            code: ErrorCode::Handler,
            message,
            node,
        });
    }
    let codec = Codec::from_content_type(header(wire::name::CONTENT_TYPE).as_deref())
        .map_err(|e| RpcError::decode(subject, Codec::Json, e))?;
    Ok(Reply {
        payload: msg.payload,
        codec,
        node,
    })
}

/// A call sent to every instance, gathering replies for a window.
#[must_use = "a broadcast does nothing until sent"]
#[derive(Debug, Clone)]
pub struct Broadcast {
    call: Call,
    window: Duration,
}

/// One instance's answer to a broadcast.
#[derive(Debug, Clone)]
pub struct NodeReply<T> {
    /// The node that answered (empty if it did not say).
    pub node: String,
    /// Its result.
    pub result: Result<T, RpcError>,
}

impl Broadcast {
    /// Sends `req` to every instance; returns each answer received within
    /// the window, sorted by node. No instance at all → an empty list.
    pub async fn send<Req, Resp>(self, req: &Req) -> Result<Vec<NodeReply<Resp>>, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let p = self.call.prepare(true)?;
        let payload = p
            .codec
            .encode(req)
            .map_err(|e| RpcError::encode(&p.subject, e))?;
        let replies = self.gather(&p, payload).await?;
        Ok(replies
            .into_iter()
            .map(|r| NodeReply {
                node: r.node,
                result: r.result.and_then(|reply| {
                    reply
                        .codec
                        .decode(&reply.payload)
                        .map_err(|e| RpcError::decode(&p.subject, reply.codec, e.message))
                }),
            })
            .collect())
    }

    /// [`send`](Self::send) with raw payloads.
    pub async fn send_raw(self, payload: Bytes) -> Result<Vec<NodeReply<Reply>>, RpcError> {
        let p = self.call.prepare(true)?;
        self.gather(&p, payload).await
    }

    async fn gather(
        &self,
        p: &Prepared,
        payload: Bytes,
    ) -> Result<Vec<NodeReply<Reply>>, RpcError> {
        let client = &self.call.app.client.inner.client;
        let window = self
            .window
            .min(p.deadline.saturating_duration_since(Instant::now()));
        let headers = self.call.headers(p, Some(window));
        self.call.check_size(p, &headers, &payload)?;
        let transport = |e: &dyn fmt::Display| RpcError::Transport {
            subject: p.subject.clone(),
            message: e.to_string(),
        };
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| transport(&e))?;
        client
            .publish_with_reply_and_headers(p.subject.clone(), inbox, headers, payload)
            .await
            .map_err(|e| transport(&e))?;
        let end = tokio::time::Instant::now() + window;
        let mut replies = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout_at(end, sub.next()).await {
            if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                break;
            }
            let node = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(wire::name::NODE))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            replies.push(NodeReply {
                node,
                result: reply_of(&p.subject, msg),
            });
        }
        // Best effort: the inbox is unique, late replies are harmless.
        let _ = sub.unsubscribe().await;
        replies.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(replies)
    }
}

/// An app that can be called with a typed client. The `#[cluster::app]`
/// macro implements it for the app struct.
pub trait RemoteApp {
    /// The app's wire name.
    const NAME: &'static str;
    /// The partition count, for ring apps.
    const PARTITIONS: Option<u32> = None;
    /// The generated `{App}Client`.
    type Client: TypedClient;
}

/// The plumbing a generated `{App}Client` implements: it wraps an [`AppRef`]
/// and each of its methods is `self.app_ref().method("name")...send(&arg)`.
///
/// ```
/// use cluster_runtime::rpc::{AppRef, RemoteApp, RpcError, TypedClient};
///
/// pub struct Counter;
/// #[derive(Clone, Debug)]
/// pub struct CounterClient(AppRef);
///
/// impl TypedClient for CounterClient {
///     fn from_app(app: AppRef) -> Self { CounterClient(app) }
///     fn app_ref(&self) -> &AppRef { &self.0 }
/// }
/// impl RemoteApp for Counter {
///     const NAME: &'static str = "counter";
///     type Client = CounterClient;
/// }
/// impl CounterClient {
///     pub async fn incr(&self, by: u64) -> Result<u64, RpcError> {
///         self.app_ref().method("incr").send(&by).await
///     }
/// }
/// ```
pub trait TypedClient: Sized {
    /// Wraps an app reference.
    fn from_app(app: AppRef) -> Self;

    /// The wrapped app reference.
    fn app_ref(&self) -> &AppRef;

    /// The same client, calling the app on platform `platform`.
    fn on_platform(&self, platform: &str) -> Self {
        Self::from_app(self.app_ref().clone().on_platform(platform))
    }

    /// The same client with deadline `d` for its calls.
    fn with_deadline(&self, d: Duration) -> Self {
        Self::from_app(self.app_ref().clone().deadline(d))
    }
}
