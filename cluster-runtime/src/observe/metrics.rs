//! Prometheus metrics: one [`Registry`] per node, served as text at
//! `/metrics` on the metrics address (and on the health address).
//!
//! Every metric the platform records is created here, with its labels, so
//! `docs/observability.md` can list them from one place. Users register
//! their own metrics on the same registry ([`Metrics::registry`], or
//! `ctx.metrics()`); they appear on the same page.
//!
//! ```
//! use cluster_runtime::observe::Metrics;
//! use cluster_runtime::prometheus::{IntCounter, Opts};
//!
//! let metrics = Metrics::new("prod").unwrap();
//! let orders = IntCounter::with_opts(Opts::new("shop_orders_total", "Orders taken")).unwrap();
//! metrics.registry().register(Box::new(orders.clone())).unwrap();
//! orders.inc();
//! assert!(metrics.render().contains("shop_orders_total 1"));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::{Error, Result};

/// Which end of an RPC a measurement comes from (label `side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller: from send to reply, retries included.
    Client,
    /// The serving instance: from arrival to reply.
    Server,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The node's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    platform: String,
    registry: Registry,
    leader: IntGaugeVec,
    members: IntGaugeVec,
    epoch: IntGaugeVec,
    lock_held: HistogramVec,
    rpc_duration: HistogramVec,
    rpc_errors: IntCounterVec,
    health: IntGaugeVec,
    partitions: IntGaugeVec,
    audit_dropped: IntCounterVec,
    election_errors: IntCounterVec,
    backend_up: IntGaugeVec,
    vip_held: IntGaugeVec,
    activation_step: HistogramVec,
    replication_lag: prometheus::GaugeVec,
    wal_bytes: IntCounterVec,
    snapshot_size: IntGaugeVec,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("platform", &self.inner.platform)
            .finish_non_exhaustive()
    }
}

/// Activation step buckets (seconds): 1 ms to 60 s.
const STEP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Latency buckets for RPC (seconds): 50 µs to 10 s.
const RPC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Lock hold-time buckets (seconds): 1 ms to 10 min.
const LOCK_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

fn metric_err(e: prometheus::Error) -> Error {
    Error::config(format!("metrics registry: {e}"))
}

impl Metrics {
    /// A registry with every platform metric of platform `platform`
    /// registered (and no samples yet).
    pub fn new(platform: &str) -> Result<Metrics> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(metric_err)?;
            registry.register(Box::new(g.clone())).map_err(metric_err)?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64], labels: &[&str]| -> Result<HistogramVec> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .map_err(metric_err)?;
                registry.register(Box::new(h.clone())).map_err(metric_err)?;
                Ok(h)
            };
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(metric_err)?;
            registry.register(Box::new(c.clone())).map_err(metric_err)?;
            Ok(c)
        };
        let inner = Inner {
            platform: platform.to_owned(),
            leader: gauge(
                "gc_leader",
                "1 while this node is the active instance of the singleton app, else 0",
                &["platform", "app", "node"],
            )?,
            members: gauge(
                "gc_members_total",
                "Live nodes of the platform as seen by this node",
                &["platform"],
            )?,
            epoch: gauge(
                "gc_election_epoch",
                "Epoch (fencing token) of the singleton's current leader as seen by this node",
                &["platform", "app"],
            )?,
            lock_held: histogram(
                "gc_lock_held_seconds",
                "How long locks were held by this node, observed at release or loss",
                LOCK_BUCKETS,
                &["platform", "app", "name"],
            )?,
            rpc_duration: histogram(
                "gc_rpc_duration_seconds",
                "RPC latency: caller side from send to reply (retries included), server side from arrival to reply",
                RPC_BUCKETS,
                &["platform", "app", "method", "side"],
            )?,
            rpc_errors: counter(
                "gc_rpc_errors_total",
                "RPC calls that ended in an error, by wire error code",
                &["platform", "app", "method", "side", "code"],
            )?,
            health: gauge(
                "gc_health",
                "1 while the health check passes, else 0",
                &["platform", "node", "check"],
            )?,
            partitions: gauge(
                "gc_partitions_owned",
                "Ring partitions this node owns for the app",
                &["platform", "app", "node"],
            )?,
            audit_dropped: counter(
                "gc_audit_dropped_total",
                "Automatic audit entries dropped because the publisher queue was full",
                &["platform"],
            )?,
            election_errors: counter(
                "gc_election_errors_total",
                "Failed reads or writes of the app's election key (the app cannot become active while they last)",
                &["platform", "app"],
            )?,
            backend_up: gauge(
                "gc_backend_up",
                "1 while this node runs the app's managed backend and it is healthy, else 0",
                &["platform", "app", "node"],
            )?,
            vip_held: gauge(
                "gc_vip_held",
                "1 while this node holds the app's virtual IP, else 0",
                &["platform", "app", "node"],
            )?,
            activation_step: histogram(
                "gc_activation_step_seconds",
                "Duration of each step of becoming active (up) or stepping down (down)",
                STEP_BUCKETS,
                &["platform", "app", "step", "direction"],
            )?,
            replication_lag: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "gc_replication_lag_seconds",
                        "Primary: age of the oldest commit not yet stored in JetStream; replica: how far the local replica trails the newest stored commit",
                    ),
                    &["platform", "app", "node"],
                )
                .map_err(metric_err)?;
                registry.register(Box::new(g.clone())).map_err(metric_err)?;
                g
            },
            wal_bytes: counter(
                "gc_wal_bytes_total",
                "Bytes of LTX files this node shipped to the app's replica bucket",
                &["platform", "app"],
            )?,
            snapshot_size: gauge(
                "gc_snapshot_size_bytes",
                "Size of the app's latest snapshot written by this node",
                &["platform", "app"],
            )?,
            registry,
        };
        Ok(Metrics {
            inner: Arc::new(inner),
        })
    }

    /// The registry: register your own metrics here to have them served.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Everything in the registry, in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.inner.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }

    pub(crate) fn set_leader(&self, app: &str, node: &str, active: bool) {
        self.inner
            .leader
            .with_label_values(&[&self.inner.platform, app, node])
            .set(i64::from(active));
    }

    pub(crate) fn set_epoch(&self, app: &str, epoch: u64) {
        self.inner
            .epoch
            .with_label_values(&[&self.inner.platform, app])
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_members(&self, n: usize) {
        self.inner
            .members
            .with_label_values(&[&self.inner.platform])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn observe_lock_held(&self, app: &str, name: &str, held: Duration) {
        self.inner
            .lock_held
            .with_label_values(&[&self.inner.platform, app, name])
            .observe(held.as_secs_f64());
    }

    pub(crate) fn set_health(&self, node: &str, check: &str, ok: bool) {
        self.inner
            .health
            .with_label_values(&[&self.inner.platform, node, check])
            .set(i64::from(ok));
    }

    pub(crate) fn election_error(&self, app: &str) {
        self.inner
            .election_errors
            .with_label_values(&[&self.inner.platform, app])
            .inc();
    }

    pub(crate) fn audit_dropped(&self) {
        self.inner
            .audit_dropped
            .with_label_values(&[&self.inner.platform])
            .inc();
    }

    pub(crate) fn set_backend_up(&self, app: &str, node: &str, up: bool) {
        self.inner
            .backend_up
            .with_label_values(&[&self.inner.platform, app, node])
            .set(i64::from(up));
    }

    pub(crate) fn set_vip_held(&self, app: &str, node: &str, held: bool) {
        self.inner
            .vip_held
            .with_label_values(&[&self.inner.platform, app, node])
            .set(i64::from(held));
    }

    pub(crate) fn observe_step(&self, app: &str, step: &str, up: bool, took: Duration) {
        let direction = if up { "up" } else { "down" };
        self.inner
            .activation_step
            .with_label_values(&[&self.inner.platform, app, step, direction])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn set_replication_lag(&self, app: &str, node: &str, lag: Duration) {
        self.inner
            .replication_lag
            .with_label_values(&[&self.inner.platform, app, node])
            .set(lag.as_secs_f64());
    }

    pub(crate) fn add_wal_bytes(&self, app: &str, bytes: u64) {
        self.inner
            .wal_bytes
            .with_label_values(&[&self.inner.platform, app])
            .inc_by(bytes);
    }

    pub(crate) fn set_snapshot_size(&self, app: &str, bytes: u64) {
        self.inner
            .snapshot_size
            .with_label_values(&[&self.inner.platform, app])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The gauge `gc_partitions_owned{app, node}` (set by ring apps).
    pub fn partitions_owned(&self, app: &str, node: &str) -> IntGauge {
        self.inner
            .partitions
            .with_label_values(&[&self.inner.platform, app, node])
    }

    /// RPC measurements of app `app` (the called app), for a client or a
    /// server.
    pub fn rpc(&self) -> RpcMetrics {
        RpcMetrics {
            metrics: self.clone(),
        }
    }
}

/// RPC latency and error counters, handed to an
/// [`RpcClient`](crate::rpc::RpcClient) or [`RpcServer`](crate::rpc::RpcServer).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    metrics: Metrics,
}

impl RpcMetrics {
    /// Records one call of `app.method` that took `elapsed` and failed with
    /// wire error code `error` (if it failed).
    pub fn record(
        &self,
        side: Side,
        app: &str,
        method: &str,
        elapsed: Duration,
        error: Option<&str>,
    ) {
        let i = &self.metrics.inner;
        i.rpc_duration
            .with_label_values(&[&i.platform, app, method, side.as_str()])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error {
            i.rpc_errors
                .with_label_values(&[&i.platform, app, method, side.as_str(), code])
                .inc();
        }
    }

    /// Pre-resolved server-side histograms for `methods` of `app`, so the
    /// hot path does no label lookup.
    pub(crate) fn server_histograms<'a>(
        &self,
        app: &str,
        methods: impl Iterator<Item = &'a str>,
    ) -> HashMap<String, Histogram> {
        let i = &self.metrics.inner;
        methods
            .map(|m| {
                (
                    m.to_owned(),
                    i.rpc_duration
                        .with_label_values(&[&i.platform, app, m, Side::Server.as_str()]),
                )
            })
            .collect()
    }

    pub(crate) fn server_error(&self, app: &str, method: &str, code: &str) {
        let i = &self.metrics.inner;
        i.rpc_errors
            .with_label_values(&[&i.platform, app, method, Side::Server.as_str(), code])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_platform_metrics() {
        let m = Metrics::new("prod").expect("metrics");
        m.set_leader("counter", "n1", true);
        m.set_members(3);
        m.set_epoch("counter", 42);
        m.rpc().record(
            Side::Client,
            "counter",
            "incr",
            Duration::from_millis(1),
            Some("timeout"),
        );
        let text = m.render();
        assert!(text.contains(r#"gc_leader{app="counter",node="n1",platform="prod"} 1"#));
        assert!(text.contains(r#"gc_members_total{platform="prod"} 3"#));
        assert!(text.contains(r#"gc_election_epoch{app="counter",platform="prod"} 42"#));
        assert!(text.contains(
            r#"gc_rpc_errors_total{app="counter",code="timeout",method="incr",platform="prod",side="client"} 1"#
        ));
        assert!(text.contains("gc_rpc_duration_seconds_bucket"));
    }
}
