//! The managed-backend step: started (and healthy) before the instance
//! serves, stopped before the VIP is released. While up, a backend that
//! stays unhealthy makes a singleton's active step down so a healthy node
//! takes over.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::lease::Validity;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Gauge, LostOrder, Step, StepImpl};
use crate::app::AppCommand;
use crate::backend::Supervisor;

/// How long a backend may fail its checks before the active hands over.
const UNHEALTHY_GRACE: Duration = Duration::from_secs(3);

struct BackendStep {
    supervisor: Supervisor,
    /// The singleton's command channel (none for pool instances).
    stepdown: Option<mpsc::Sender<AppCommand>>,
    audit: crate::observe::AppAudit,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// The step for `backend = "..."`.
pub(crate) fn step(
    supervisor: Supervisor,
    stepdown: Option<mpsc::Sender<AppCommand>>,
    audit: crate::observe::AppAudit,
) -> Step {
    Step {
        name: "backend",
        up_action: "backend.started",
        down_action: "backend.stopped",
        imp: Box::new(BackendStep {
            supervisor,
            stepdown,
            audit,
            watcher: Mutex::new(None),
        }),
    }
}

impl BackendStep {
    fn kind(&self) -> &'static str {
        self.supervisor.backend().kind()
    }

    fn stop_watcher(&self) {
        if let Some(task) = self.watcher.lock().ok().and_then(|mut w| w.take()) {
            task.abort();
        }
    }

    /// Watches health after start: unhealthy for longer than the grace →
    /// audited, and the active asked to step down.
    fn watch_health(&self) {
        let Some(stepdown) = self.stepdown.clone() else {
            return;
        };
        let mut healthy = self.supervisor.healthy();
        let audit = self.audit.clone();
        let kind = self.kind();
        let task = tokio::spawn(async move {
            loop {
                let went_bad = healthy.wait_for(|h| !*h).await.is_ok();
                if !went_bad {
                    return;
                }
                let recovered = tokio::time::timeout(UNHEALTHY_GRACE, async {
                    healthy.wait_for(|h| *h).await.is_ok()
                })
                .await
                .unwrap_or(false);
                if recovered {
                    continue;
                }
                tracing::warn!(kind, "backend unhealthy; stepping down");
                audit.record(
                    "backend.unhealthy",
                    serde_json::json!({ "kind": kind, "grace_ms": UNHEALTHY_GRACE.as_millis() as u64 }),
                    None,
                );
                let _ = stepdown.send(AppCommand::StepDown).await;
                return;
            }
        });
        if let Ok(mut w) = self.watcher.lock() {
            *w = Some(task);
        }
    }
}

impl StepImpl for BackendStep {
    fn up<'a>(&'a self, _lease: &'a Validity) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let took = self
                .supervisor
                .start_and_wait_healthy()
                .await
                .map_err(|e| e.to_string())?;
            self.watch_health();
            Ok(serde_json::json!({
                "kind": self.kind(),
                "healthy_after_ms": took.as_millis() as u64,
            }))
        })
    }

    fn down(&self, lease_lost: bool) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            self.stop_watcher();
            // Lease lost: another node may start its backend any moment, so
            // no grace period (DESIGN §8 invariant 9).
            let stopped = if lease_lost {
                self.supervisor.kill().await
            } else {
                self.supervisor.stop().await
            };
            let took = stopped.map_err(|e| e.to_string())?;
            Ok(serde_json::json!({
                "kind": self.kind(),
                "stopped_after_ms": took.as_millis() as u64,
                "killed": lease_lost,
            }))
        })
    }

    fn when_lease_lost(&self) -> LostOrder {
        LostOrder::Second
    }

    fn gauge(&self) -> Option<Gauge> {
        Some(Gauge::BackendUp)
    }
}
