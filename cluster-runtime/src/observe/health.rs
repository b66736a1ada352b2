//! Health checks: named probes run on an interval with a timeout, listed in
//! `/status`, exported as `gc_health`, and announced to apps through
//! `on_health_change`.
//!
//! # Model
//!
//! - A [`Check`] is an async probe. Each registered check runs in its own
//!   task: once at registration, then every `interval` (default 10 s); a run
//!   that does not finish within `timeout` (default 5 s) fails.
//! - Built-in checks: `nats` (connected, with the round-trip time; critical)
//!   and one per app, named after the app (fails while its role is still
//!   `pending`). `ctx.health().register("db", check)` registers `APP/db`.
//! - A **critical** check that fails makes the node not ready (`/ready`
//!   answers 503), and — for singleton apps built with
//!   [`AppBuilder::step_down_on_critical`](crate::app::AppBuilder::step_down_on_critical)
//!   — makes the active instance step down so a healthy node takes over.
//! - Every change of a check's outcome (pass ↔ fail) is broadcast as a
//!   [`HealthChange`]; apps see it in `on_health_change`.
//!
//! ```no_run
//! # fn demo(ctx: cluster_runtime::AppContext) {
//! use std::time::Duration;
//! use cluster_runtime::observe::Check;
//! ctx.health().register(
//!     "disk",
//!     Check::new(|| async {
//!         let free = 10u64; // probe something
//!         if free > 5 { Ok(()) } else { Err(format!("only {free}% free")) }
//!     })
//!     .interval(Duration::from_secs(30))
//!     .critical(),
//! );
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::metrics::Metrics;

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// A health check: a probe with its schedule.
#[derive(Clone)]
pub struct Check {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    critical: bool,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A check passing when `probe` returns `Ok`; an `Err`'s text is the
    /// failure message.
    pub fn new<F, Fut, E>(probe: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        Self::with_detail(move || {
            let fut = probe();
            async move { fut.await.map(|()| "ok".to_owned()) }
        })
    }

    /// A check whose success also carries a message (shown in `/status`).
    pub fn with_detail<F, Fut, E>(probe: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        Check {
            probe: Arc::new(move || {
                let fut = probe();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            critical: false,
        }
    }

    /// How often it runs (default 10 s, at least 10 ms).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(10));
        self
    }

    /// How long one run may take before it counts as failed (default 5 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Marks it critical: while it fails the node is not ready (and
    /// singletons configured so step down).
    pub fn critical(mut self) -> Self {
        self.critical = true;
        self
    }
}

/// One check's latest outcome, as listed in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckStatus {
    /// Passing.
    pub ok: bool,
    /// Detail (the failure message when failing).
    pub message: String,
    /// A critical check: failing makes the node not ready.
    #[serde(default)]
    pub critical: bool,
}

/// A check that started passing or failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// The check's full name (`nats`, `counter`, `counter/db`).
    pub check: String,
    /// Passing now.
    pub ok: bool,
    /// Its message.
    pub message: String,
    /// Whether it is critical.
    pub critical: bool,
}

/// The node's health checks. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    metrics: Metrics,
    statuses: watch::Sender<BTreeMap<String, CheckStatus>>,
    changes: broadcast::Sender<HealthChange>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
        }
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("node", &self.inner.node)
            .field("checks", &*self.inner.statuses.borrow())
            .finish()
    }
}

impl Health {
    pub(crate) fn new(node: &str, metrics: Metrics) -> Health {
        let (changes, _) = broadcast::channel(256);
        Health {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                metrics,
                statuses: watch::Sender::new(BTreeMap::new()),
                changes,
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Registers (or replaces) check `name` and starts running it.
    pub fn register(&self, name: &str, check: Check) {
        let name = name.to_owned();
        let critical = check.critical;
        self.inner.statuses.send_modify(|m| {
            m.insert(
                name.clone(),
                CheckStatus {
                    ok: false,
                    message: NOT_RUN.into(),
                    critical,
                },
            );
        });
        // The task holds only a weak reference so dropping the platform
        // stops every check.
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(run_check(weak, name.clone(), check));
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            if let Some(old) = tasks.insert(name, task) {
                old.abort();
            }
        }
    }

    /// Sets the outcome of check `name` directly (a check driven by events
    /// rather than by polling, like the built-in app checks).
    pub fn report(&self, name: &str, ok: bool, message: impl Into<String>, critical: bool) {
        self.inner.apply(name, ok, message.into(), critical);
    }

    /// Stops and removes check `name`.
    pub fn deregister(&self, name: &str) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            if let Some(t) = tasks.remove(name) {
                t.abort();
            }
        }
        self.inner.statuses.send_modify(|m| {
            m.remove(name);
        });
    }

    /// Every check's latest outcome.
    pub fn statuses(&self) -> BTreeMap<String, CheckStatus> {
        self.inner.statuses.borrow().clone()
    }

    /// Watches the outcomes.
    pub fn watch(&self) -> watch::Receiver<BTreeMap<String, CheckStatus>> {
        self.inner.statuses.subscribe()
    }

    /// Every pass ↔ fail change from now on.
    pub fn changes(&self) -> broadcast::Receiver<HealthChange> {
        self.inner.changes.subscribe()
    }

    /// The first failing critical check, as (name, message).
    pub fn critical_failure(&self) -> Option<(String, String)> {
        first_critical_failure(&self.inner.statuses.borrow())
    }

    /// Stops every check.
    pub(crate) fn stop(&self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
        }
    }

    /// The checks of app `app`: `ctx.health()`.
    pub fn for_app(&self, app: &str) -> AppHealth {
        AppHealth {
            health: self.clone(),
            app: app.to_owned(),
        }
    }
}

pub(crate) fn first_critical_failure(
    statuses: &BTreeMap<String, CheckStatus>,
) -> Option<(String, String)> {
    statuses
        .iter()
        .find(|(_, s)| s.critical && !s.ok)
        .map(|(n, s)| (n.clone(), s.message.clone()))
}

impl Inner {
    /// Records one outcome: metric, status, and a change event when the
    /// check starts passing or failing (or reports for the first time).
    fn apply(&self, name: &str, ok: bool, message: String, critical: bool) {
        self.metrics.set_health(&self.node, name, ok);
        let status = CheckStatus {
            ok,
            message: message.clone(),
            critical,
        };
        let mut first_or_flipped = false;
        self.statuses.send_if_modified(|m| {
            let previous = m.insert(name.to_owned(), status.clone());
            first_or_flipped = previous
                .as_ref()
                .is_none_or(|p| p.ok != ok || p.message == NOT_RUN);
            previous.as_ref() != Some(&status)
        });
        if first_or_flipped {
            if !ok {
                tracing::info!(check = %name, ok, %message, "health check failing");
            }
            let _ = self.changes.send(HealthChange {
                check: name.to_owned(),
                ok,
                message,
                critical,
            });
        }
    }
}

/// The message of a check registered but not run yet.
const NOT_RUN: &str = "not run yet";

async fn run_check(inner: std::sync::Weak<Inner>, name: String, check: Check) {
    loop {
        let outcome = match tokio::time::timeout(check.timeout, (check.probe)()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", check.timeout)),
        };
        let Some(inner) = inner.upgrade() else { return };
        let ok = outcome.is_ok();
        let message = match outcome {
            Ok(m) | Err(m) => m,
        };
        inner.apply(&name, ok, message, check.critical);
        drop(inner);
        tokio::time::sleep(check.interval).await;
    }
}

/// One app's health checks (`ctx.health()`): names are prefixed `APP/`.
#[derive(Debug, Clone)]
pub struct AppHealth {
    health: Health,
    app: String,
}

impl AppHealth {
    /// Registers (or replaces) this app's check `name` (shown as `APP/name`).
    pub fn register(&self, name: &str, check: Check) {
        self.health.register(&format!("{}/{name}", self.app), check);
    }

    /// Removes this app's check `name`.
    pub fn deregister(&self, name: &str) {
        self.health.deregister(&format!("{}/{name}", self.app));
    }

    /// Every check of the node (not only this app's).
    pub fn statuses(&self) -> BTreeMap<String, CheckStatus> {
        self.health.statuses()
    }

    /// The node's health.
    pub fn node(&self) -> &Health {
        &self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn checks_run_report_and_announce_changes() {
        let health = Health::new("n1", Metrics::new("p").expect("metrics"));
        let mut changes = health.changes();
        let failing = Arc::new(AtomicBool::new(false));
        let f = failing.clone();
        health.register(
            "db",
            Check::new(move || {
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err("down")
                    } else {
                        Ok(())
                    }
                }
            })
            .interval(Duration::from_millis(10))
            .critical(),
        );
        let first = changes.recv().await.expect("change");
        assert!(first.ok && first.critical);
        assert_eq!(health.critical_failure(), None);
        failing.store(true, Ordering::SeqCst);
        let second = changes.recv().await.expect("change");
        assert!(!second.ok);
        assert_eq!(second.message, "down");
        assert_eq!(
            health.critical_failure(),
            Some(("db".to_owned(), "down".to_owned()))
        );
        health.deregister("db");
        assert!(health.statuses().is_empty());
    }

    #[tokio::test]
    async fn slow_probe_times_out() {
        let health = Health::new("n1", Metrics::new("p").expect("metrics"));
        let mut changes = health.changes();
        health.register(
            "slow",
            Check::new(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<(), String>(())
            })
            .timeout(Duration::from_millis(20)),
        );
        let c = changes.recv().await.expect("change");
        assert!(!c.ok);
        assert!(c.message.contains("timed out"));
    }
}
