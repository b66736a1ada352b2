//! What a handler knows about the call it serves: [`RequestInfo`], and the
//! W3C trace context that follows a call through nested calls.
//!
//! While a handler runs, its `RequestInfo` is the task-local
//! [`RequestInfo::current`]. [`RpcClient`](super::RpcClient) reads it, so a
//! call made from inside a handler carries the same trace id (with a new
//! parent id) and never outlives the inbound call's deadline. Work spawned
//! onto other tasks keeps this only if wrapped in [`RequestInfo::scope`].

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::codec::Codec;

tokio::task_local! {
    static CURRENT: RequestInfo;
}

/// A W3C trace context (`traceparent` header, version `00`).
///
/// ```
/// use cluster_runtime::rpc::TraceContext;
/// let t = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// let child = t.child();
/// assert_eq!(child.trace_id(), t.trace_id());
/// assert_ne!(child.parent_id(), t.parent_id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceContext {
    /// A new trace (random ids, flags `00`: not sampled).
    ///
    /// Nothing here records spans, so new traces do not claim to be sampled.
    /// That also keeps the NATS server fast: a sampled `traceparent` makes it
    /// parse every header of the message looking for its own message-tracing
    /// configuration, a few microseconds per hop.
    pub fn new_root() -> Self {
        let trace_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        TraceContext {
            trace_id: trace_id.max(1),
            parent_id: random_u64().max(1),
            flags: 0x00,
        }
    }

    /// The same trace with other flags (bit 0: sampled).
    pub fn with_flags(self, flags: u8) -> Self {
        TraceContext { flags, ..self }
    }

    /// Parses a `traceparent` value. Returns `None` for anything malformed
    /// (the server then starts a new trace rather than refusing the call).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace with a new parent (span) id: what an outgoing call
    /// carries.
    pub fn child(&self) -> Self {
        TraceContext {
            parent_id: random_u64().max(1),
            ..*self
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent (span) id, 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        format!("{:016x}", self.parent_id)
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The `traceparent` header value.
    pub fn to_header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

/// Non-cryptographic random ids: xxh3 of a counter under a per-process
/// random seed. Unique within a process, unpredictable enough for tracing.
fn random_u64() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed)
}

/// Which of the app's subjects a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `P._.api.A.METHOD`: the active instance or any pool instance.
    Api,
    /// `P._.api.A.p.PART.METHOD`: the owner of ring partition `PART`.
    Partition(u32),
    /// `P.A.node.NODE.METHOD`: this instance, by name.
    Instance,
    /// `P.A.all.METHOD`: every instance.
    Broadcast,
}

/// Facts about the call a handler is serving.
///
/// Cheap to clone. Inside a handler, [`RequestInfo::current`] returns it.
#[derive(Clone)]
pub struct RequestInfo {
    inner: Arc<Inner>,
}

struct Inner {
    app: Arc<str>,
    node: Arc<str>,
    method: String,
    subject: async_nats::Subject,
    route: Route,
    caller_app: Option<String>,
    caller_node: Option<String>,
    caller_platform: Option<String>,
    fencing_token: Option<u64>,
    trace: TraceContext,
    deadline: Instant,
    codec: Codec,
}

/// The parts of a [`RequestInfo`] (used by the server to build one).
#[derive(Debug, Clone)]
pub(crate) struct RequestParts {
    pub app: Arc<str>,
    pub node: Arc<str>,
    pub method: String,
    pub subject: async_nats::Subject,
    pub route: Route,
    pub caller_app: Option<String>,
    pub caller_node: Option<String>,
    pub caller_platform: Option<String>,
    pub fencing_token: Option<u64>,
    pub trace: TraceContext,
    pub deadline: Instant,
    pub codec: Codec,
}

impl RequestInfo {
    pub(crate) fn new(parts: RequestParts) -> Self {
        let RequestParts {
            app,
            node,
            method,
            subject,
            route,
            caller_app,
            caller_node,
            caller_platform,
            fencing_token,
            trace,
            deadline,
            codec,
        } = parts;
        RequestInfo {
            inner: Arc::new(Inner {
                app,
                node,
                method,
                subject,
                route,
                caller_app,
                caller_node,
                caller_platform,
                fencing_token,
                trace,
                deadline,
                codec,
            }),
        }
    }

    /// The request being served by the current task, if any.
    pub fn current() -> Option<RequestInfo> {
        CURRENT.try_with(RequestInfo::clone).ok()
    }

    /// Runs `fut` with `self` as [`RequestInfo::current`] (use it for work a
    /// handler spawns that makes calls on the request's behalf).
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// The app being called.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// The node serving the call.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The method being called.
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// The subject the request arrived on.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// How the request was routed here.
    pub fn route(&self) -> Route {
        self.inner.route
    }

    /// The ring partition, for partition-routed calls.
    pub fn partition(&self) -> Option<u32> {
        match self.inner.route {
            Route::Partition(p) => Some(p),
            _ => None,
        }
    }

    /// The calling app, if the caller said.
    pub fn caller_app(&self) -> Option<&str> {
        self.inner.caller_app.as_deref()
    }

    /// The calling node, if the caller said.
    pub fn caller_node(&self) -> Option<&str> {
        self.inner.caller_node.as_deref()
    }

    /// The caller's platform, if the caller said.
    pub fn caller_platform(&self) -> Option<&str> {
        self.inner.caller_platform.as_deref()
    }

    /// The caller's fencing token, if it sent one.
    pub fn fencing_token(&self) -> Option<u64> {
        self.inner.fencing_token
    }

    /// The call's trace context (the caller's, or a new trace if the caller
    /// sent none).
    pub fn trace(&self) -> TraceContext {
        self.inner.trace
    }

    /// The instant by which the caller stops waiting.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.inner
            .deadline
            .saturating_duration_since(Instant::now())
    }

    /// The codec of the request (and of the reply).
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }
}

impl fmt::Debug for RequestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RequestInfo")
            .field("app", &i.app)
            .field("method", &i.method)
            .field("route", &i.route)
            .field("caller_app", &i.caller_app)
            .field("caller_node", &i.caller_node)
            .field("fencing_token", &i.fencing_token)
            .field("trace", &i.trace)
            .field("remaining", &self.remaining())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects_garbage() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&t.to_header()), Some(t));
        assert_eq!(t.to_header().len(), 55);
        for bad in [
            "",
            "00-0-0-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_differ() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.child().parent_id(), a.child().parent_id());
    }
}
