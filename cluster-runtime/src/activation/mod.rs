//! The ordered, undoable steps a singleton's node takes to become active and
//! to stop being active (DESIGN §4.7): WAL catch-up and promotion, the
//! virtual IP, the managed backend, primary replication.
//!
//! Becoming active runs the steps in order, each timed (metric
//! `gc_activation_step_seconds`), audited (`<step>.<up action>`) and undone
//! in reverse if a later one fails — the election then gives the lease up
//! with a back-off (flap damping) so another node can take over. Stepping
//! down runs the `down` of every step that is up, in reverse order, and
//! carries on past a failing one: a half-stopped node must still release
//! everything it can. While standby, steps may run work of their own (the
//! passive restore of the database).

mod backend;
mod vip;
mod wal;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::app::App;
use crate::error::{Error, Result};
use crate::lease::Validity;
use crate::observe::{AppAudit, Metrics};

/// Builds the steps an app's options call for, in the order of DESIGN
/// §4.7. Checks what can be checked before the node joins (interface and
/// capabilities for the VIP), so a misconfigured node fails at start-up.
///
/// The database is promoted first and replication starts before the
/// backend (DESIGN §4.7 starts it after): the backend's first write is
/// shipped, and on stepping down the backend stops before the final flush,
/// so its last write is shipped too.
pub(crate) fn steps_for(
    app: &App,
    commands: &tokio::sync::mpsc::Sender<crate::app::AppCommand>,
    audit: &AppAudit,
    replicated: Option<&std::sync::Arc<crate::db::Replicated>>,
) -> Result<Vec<Step>> {
    let config_error =
        |e: &dyn std::fmt::Display| Error::config(format!("app `{}`: {e}", app.name));
    let mut steps = Vec::new();
    let (promote, replicate) = replicated.map(wal::steps).unzip();
    steps.extend(promote);
    if let Some(spec) = &app.ops.vip {
        let manager = crate::vip::VipManager::new(crate::vip::VipConfig::new(spec.clone()))
            .map_err(|e| config_error(&e))?;
        steps.push(vip::step(manager));
    }
    steps.extend(replicate);
    if let Some(config) = &app.ops.backend {
        let supervisor = crate::backend::Supervisor::from_config(config.clone())
            .map_err(|e| config_error(&e))?;
        let stepdown = (app.mode == crate::app::Mode::Singleton).then(|| commands.clone());
        steps.push(backend::step(supervisor, stepdown, audit.clone()));
    }
    Ok(steps)
}

/// What one step does, in both directions.
pub(crate) trait StepImpl: Send + Sync {
    /// Takes the step as the holder of the lease `lease` (its epoch and
    /// validity); returns audit details.
    fn up<'a>(&'a self, lease: &'a Validity) -> BoxFuture<'a, Result<serde_json::Value, String>>;
    /// Undoes it. `lease_lost`: the lease is no longer ours (expired, taken
    /// or cut off) — skip anything that needs it (a final flush), be quick.
    fn down(&self, lease_lost: bool) -> BoxFuture<'_, Result<serde_json::Value, String>>;
    /// Runs while the node is standby (idempotent; called on every entry
    /// into standby and after each step-down).
    fn standby(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Whether this step is up, for the gauges.
    fn gauge(&self) -> Option<Gauge> {
        None
    }
    /// Where this step's `down` goes when the lease is lost.
    fn when_lease_lost(&self) -> LostOrder {
        LostOrder::Later
    }
}

/// The order of undoing steps when the lease is lost (DESIGN §4.7): what
/// another node is about to take goes first — the VIP (one netlink call),
/// then the backend (killed, no grace) — then the rest in reverse order
/// (replication aborted without waiting on NATS). A graceful step-down
/// undoes everything in reverse order instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LostOrder {
    /// The VIP.
    First,
    /// The backend.
    Second,
    /// Everything else.
    Later,
}

/// A gauge a step keeps at 1 while it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gauge {
    BackendUp,
    VipHeld,
}

/// One named step.
pub(crate) struct Step {
    /// Short name (`wal.promote`, `vip`, `backend`, `wal.replicate`).
    pub(crate) name: &'static str,
    /// Audit action on success up (`vip.acquired`).
    pub(crate) up_action: &'static str,
    /// Audit action on success down (`vip.released`).
    pub(crate) down_action: &'static str,
    pub(crate) imp: Box<dyn StepImpl>,
}

/// The steps of one app on this node, and how many of them are up.
pub(crate) struct Activation {
    app: String,
    node: String,
    steps: Vec<Step>,
    /// Which steps are up (counted as up before `up` runs, so a half-done
    /// step is undone too; cleared once its `down` ran).
    up: Mutex<Vec<bool>>,
    audit: AppAudit,
    metrics: Metrics,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.steps.iter().map(|s| s.name).collect();
        f.debug_struct("Activation")
            .field("app", &self.app)
            .field("steps", &names)
            .finish_non_exhaustive()
    }
}

/// A step that failed while becoming active.
#[derive(Debug)]
pub(crate) struct StepFailed {
    pub(crate) step: &'static str,
    pub(crate) reason: String,
}

impl Activation {
    pub(crate) fn new(
        app: &str,
        node: &str,
        steps: Vec<Step>,
        audit: AppAudit,
        metrics: Metrics,
    ) -> Self {
        let up = Mutex::new(vec![false; steps.len()]);
        Activation {
            app: app.to_owned(),
            node: node.to_owned(),
            steps,
            up,
            audit,
            metrics,
        }
    }

    fn set_up(&self, i: usize, up: bool) {
        if let Ok(mut flags) = self.up.lock() {
            if let Some(f) = flags.get_mut(i) {
                *f = up;
            }
        }
    }

    /// The steps that are up, in the order `down` must undo them.
    fn down_order(&self, lease_lost: bool) -> Vec<usize> {
        let flags = self.up.lock().map(|f| f.clone()).unwrap_or_default();
        let mut order: Vec<usize> = (0..self.steps.len())
            .rev()
            .filter(|&i| flags.get(i).copied().unwrap_or(false))
            .collect();
        if lease_lost {
            // Stable: the `Later` steps keep their reverse order.
            order.sort_by_key(|&i| self.steps[i].imp.when_lease_lost());
        }
        order
    }

    fn set_gauge(&self, step: &Step, on: bool) {
        match step.imp.gauge() {
            Some(Gauge::BackendUp) => self.metrics.set_backend_up(&self.app, &self.node, on),
            Some(Gauge::VipHeld) => self.metrics.set_vip_held(&self.app, &self.node, on),
            None => {}
        }
    }

    /// Takes every step in order. On a failure, undoes the steps already
    /// taken (and the failed one's partial work), in reverse, and says which
    /// step failed. If the caller drops this future (the lease was lost
    /// meanwhile), it must call [`deactivate`](Self::deactivate), which
    /// undoes the same steps.
    pub(crate) async fn activate(&self, lease: &Validity) -> Result<(), StepFailed> {
        let epoch = lease.epoch();
        for (i, step) in self.steps.iter().enumerate() {
            // Counted as up before it runs: if it fails half-way (or the
            // lease is lost meanwhile), its idempotent `down` cleans up.
            self.set_up(i, true);
            let started = Instant::now();
            let result = step.imp.up(lease).await;
            let took = started.elapsed();
            self.metrics.observe_step(&self.app, step.name, true, took);
            match result {
                Ok(mut details) => {
                    add_timing(&mut details, epoch, took);
                    tracing::info!(app = %self.app, step = step.name, ?took, "activation step done");
                    self.audit.record(step.up_action, details, None);
                    self.set_gauge(step, true);
                }
                Err(reason) => {
                    tracing::warn!(app = %self.app, step = step.name, %reason, "activation step failed; undoing");
                    self.audit.record(
                        &format!("{}.failed", step.name),
                        serde_json::json!({ "epoch": epoch, "reason": reason, "ms": ms(took) }),
                        None,
                    );
                    self.deactivate(false).await;
                    return Err(StepFailed {
                        step: step.name,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Undoes every step that is up — in reverse order, or, when the lease
    /// is lost, in [`LostOrder`] — and carries on past a failure (logged
    /// and audited). Each step is marked down once its `down` ran, so a
    /// call cut short (the graceful path, bounded by the lease) leaves the
    /// rest to the next call.
    pub(crate) async fn deactivate(&self, lease_lost: bool) {
        for i in self.down_order(lease_lost) {
            let step = &self.steps[i];
            let started = Instant::now();
            let result = step.imp.down(lease_lost).await;
            let took = started.elapsed();
            self.set_up(i, false);
            self.metrics.observe_step(&self.app, step.name, false, took);
            self.set_gauge(step, false);
            match result {
                Ok(mut details) => {
                    if let Some(map) = details.as_object_mut() {
                        map.insert("ms".into(), ms(took).into());
                        map.insert("lease_lost".into(), lease_lost.into());
                    }
                    self.audit.record(step.down_action, details, None);
                }
                Err(reason) => {
                    tracing::warn!(app = %self.app, step = step.name, %reason, "step-down step failed");
                    self.audit.record(
                        &format!("{}.down_failed", step.name),
                        serde_json::json!({ "reason": reason, "ms": ms(took) }),
                        None,
                    );
                }
            }
        }
    }

    /// The graceful step-down, bounded by the lease: undoes the steps in
    /// reverse order while the lease is valid; if it would lapse first (a
    /// final flush waiting on an unreachable NATS), what is still up is
    /// undone on the lease-lost path. Returns whether that happened.
    pub(crate) async fn deactivate_within(&self, lease: &Validity) -> bool {
        tokio::select! {
            () = self.deactivate(false) => false,
            () = lease.ended() => {
                tracing::warn!(app = %self.app, "graceful step-down outlasted the lease; finishing on the lease-lost path");
                self.deactivate(true).await;
                true
            }
        }
    }

    /// Runs each step's standby work (the passive restore).
    pub(crate) async fn standby(&self) {
        for step in &self.steps {
            step.imp.standby().await;
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn add_timing(details: &mut serde_json::Value, epoch: u64, took: Duration) {
    if !details.is_object() {
        *details = serde_json::json!({});
    }
    if let Some(map) = details.as_object_mut() {
        map.insert("epoch".into(), epoch.into());
        map.insert("ms".into(), ms(took).into());
    }
}
