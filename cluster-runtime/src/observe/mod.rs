//! Observability that comes for free: the audit log ([`audit`]), Prometheus
//! metrics ([`metrics`]), health checks ([`health`]) and tracing.
//!
//! # Tracing
//!
//! The runtime emits [`tracing`] spans; install any subscriber to see them:
//!
//! | Span | Where | Fields |
//! |---|---|---|
//! | `rpc.client` | every call sent by an [`RpcClient`](crate::rpc::RpcClient) | `app`, `method`, `trace_id` |
//! | `rpc.server` | every call served by an [`RpcServer`](crate::rpc::RpcServer) | `app`, `method`, `node`, `trace_id` |
//! | `lock.acquire` | [`Lock::acquire`](crate::lock::Lock::acquire) / `try_acquire` | `lock`, `app`, `token` |
//! | `lease.acquire`, `lease.release` | every lease write (elections, locks, node records) | `key` |
//! | `role` events | every role change ([`Instance`](crate::instance)) | `app`, `role`, `epoch` |
//!
//! The W3C `traceparent` travels in NATS headers (see `docs/rpc.md`): a call
//! made inside a handler carries the handler's trace id, so a chain of calls
//! across apps shares one `trace_id` field. With the cargo feature `otel`,
//! `observe::otel` exports the spans to an OTLP collector and parents server spans
//! on the caller's `traceparent`.

pub mod audit;
pub mod health;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;

pub use audit::{AppAudit, Audit, AuditEntry, AuditError, AuditFilter, AuditOptions, AuditStream};
pub use health::{AppHealth, Check, CheckStatus, Health, HealthChange};
pub use metrics::{Metrics, RpcMetrics, Side};

/// Everything observability a node has, handed to each app context.
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    pub(crate) audit: Audit,
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
}
