//! One app on this node: its context, published state, hook runner and role
//! recording. The patterns (`election`, `pool`, `ring`) drive it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::{App, AppContext, AppState, HookResult, Role};
use crate::clock;
use crate::error::Error;
use crate::membership::{AppRecord, Membership};

/// A role change, recorded with the machine-wide monotonic clock so changes
/// on different node processes can be checked against each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleEvent {
    /// Node id.
    pub node: String,
    /// App name.
    pub app: String,
    /// The new role.
    pub role: Role,
    /// Epoch held (active) or observed.
    pub epoch: Option<u64>,
    /// `CLOCK_MONOTONIC` nanoseconds of the change.
    pub t_ns: u64,
    /// For a demotion: when the lease's validity ended, if earlier than
    /// `t_ns` (a paused or cut-off holder notices late, but had stopped
    /// being valid at its deadline).
    #[serde(default)]
    pub valid_until_ns: Option<u64>,
}

/// Receives every role change of every app on this node.
pub type RoleObserver = Arc<dyn Fn(&RoleEvent) + Send + Sync>;

/// The per-node driver state of one app.
pub(crate) struct Instance {
    pub(crate) app: App,
    pub(crate) ctx: AppContext,
    pub(crate) state: watch::Sender<AppState>,
    pub(crate) membership: Membership,
    pub(crate) observer: Option<RoleObserver>,
    pub(crate) ownership_observer: Option<crate::ring::OwnershipObserver>,
    pub(crate) rpc: crate::rpc::RpcServer<AppContext>,
    /// The last (leader, epoch) this node saw, for `election.leader_lost`.
    pub(crate) seen_leader: std::sync::Mutex<Option<(String, u64)>>,
    /// Data and ops steps of becoming active (empty for most apps).
    pub(crate) activation: crate::activation::Activation,
    /// Runs notification hooks off the protocol loops.
    pub(crate) hooks: HookRunner,
}

type QueuedHook = (
    &'static str,
    futures::future::BoxFuture<'static, HookResult>,
);

/// Runs an app's notification hooks (`on_leader_change`, `on_standby`) one
/// at a time, in the order they were queued, on a task of its own: the
/// protocol loops queue them and never wait for user code (DESIGN §4.7), so
/// a hook that sleeps cannot delay a failover or hide a lost lease. The
/// task ends when the instance (the sender) is dropped.
pub(crate) struct HookRunner {
    queue: tokio::sync::mpsc::UnboundedSender<QueuedHook>,
}

impl HookRunner {
    /// Starts the runner of app `app`, each hook bounded by `timeout`.
    pub(crate) fn spawn(app: &str, timeout: Duration) -> HookRunner {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<QueuedHook>();
        let app = app.to_owned();
        tokio::spawn(async move {
            while let Some((name, fut)) = rx.recv().await {
                let _ = run_bounded(&app, name, timeout, fut).await;
            }
        });
        HookRunner { queue }
    }

    /// Queues `fut`; returns at once.
    pub(crate) fn queue(
        &self,
        name: &'static str,
        fut: futures::future::BoxFuture<'static, HookResult>,
    ) {
        if self.queue.send((name, fut)).is_err() {
            tracing::debug!(hook = name, "hook runner stopped; hook not run");
        }
    }
}

/// Runs one hook with a timeout; failures are logged and returned.
async fn run_bounded(
    app: &str,
    name: &str,
    timeout: Duration,
    fut: futures::future::BoxFuture<'static, HookResult>,
) -> Result<(), Error> {
    let context = format!("app `{app}` hook {name}");
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::user(context, e)),
        Err(_) => Err(Error::Timeout {
            context,
            after: timeout,
        }),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "hook failed");
    }
    result
}

impl Instance {
    pub(crate) fn node(&self) -> &str {
        self.ctx.node()
    }

    /// Sets the role, records the change and publishes it in the node record.
    pub(crate) fn set_role(&self, role: Role, epoch: Option<u64>, valid_until_ns: Option<u64>) {
        let mut before = (Role::Pending, None);
        let changed = self.state.send_if_modified(|s| {
            before = (s.role, s.epoch);
            let changed = s.role != role || (role == Role::Active && s.epoch != epoch);
            s.role = role;
            if role == Role::Active {
                // The leader itself is recorded by `observe_leader`, which
                // also fires `on_leader_change`.
                s.epoch = epoch;
            }
            changed
        });
        if !changed {
            return;
        }
        let event = RoleEvent {
            node: self.node().to_owned(),
            app: self.app.name.clone(),
            role,
            epoch,
            t_ns: clock::monotonic_ns(),
            valid_until_ns,
        };
        tracing::info!(app = %event.app, %role, ?epoch, "role changed");
        if let Some(observer) = &self.observer {
            observer(&event);
        }
        self.observe_role(before, role, epoch);
        let name = self.app.name.clone();
        let mode = self.app.mode;
        let held_epoch = if role == Role::Active { epoch } else { None };
        self.membership.update(|r| {
            r.apps.insert(
                name,
                AppRecord {
                    mode,
                    role,
                    epoch: held_epoch,
                },
            );
        });
    }

    /// Records a change of ring ownership (own, serve, release) with the
    /// machine-wide monotonic clock.
    pub(crate) fn record_ownership(
        &self,
        change: crate::ring::OwnershipChange,
        partitions: &[u32],
        tokens: Vec<u64>,
        valid_until_ns: Option<u64>,
    ) {
        let event = crate::ring::OwnershipEvent {
            node: self.node().to_owned(),
            app: self.app.name.clone(),
            change,
            partitions: partitions.to_vec(),
            tokens,
            t_ns: clock::monotonic_ns(),
            valid_until_ns,
        };
        tracing::debug!(app = %event.app, ?change, count = partitions.len(), "ownership changed");
        if let Some(observer) = &self.ownership_observer {
            observer(&event);
        }
    }

    /// Audit entries and metrics of a role change (`before` = previous role
    /// and epoch).
    fn observe_role(&self, before: (Role, Option<u64>), role: Role, epoch: Option<u64>) {
        let observe = self.ctx.observe();
        let audit = self.ctx.audit();
        let app = self.app.name.as_str();
        let node = self.node();
        if self.app.mode == crate::app::Mode::Singleton {
            observe.metrics.set_leader(app, node, role == Role::Active);
        }
        let (was, old_epoch) = before;
        if was == Role::Active && role != Role::Active {
            if let Some(e) = old_epoch {
                leader_lost(self, node, e, "demoted");
            }
        }
        if role == Role::Active && (was != Role::Active || old_epoch != epoch) {
            if let Some(e) = epoch {
                observe.metrics.set_epoch(app, e);
            }
            audit.record(
                "election.leader_acquired",
                serde_json::json!({"leader": node, "epoch": epoch}),
                epoch.map(|e| format!("election.leader_acquired.{app}.{e}")),
            );
        }
        let running = |r: Role| matches!(r, Role::Active | Role::Standby | Role::Running);
        if was == Role::Pending && running(role) || was == Role::Stopped && role == Role::Running {
            audit.record(
                "app.started",
                serde_json::json!({"mode": self.app.mode.to_string(), "role": role}),
                None,
            );
        } else if running(was) && role == Role::Stopped {
            audit.record(
                "app.stopped",
                serde_json::json!({"mode": self.app.mode.to_string()}),
                None,
            );
        }
    }

    /// Records who leads (observed from the lease key) and queues
    /// `on_leader_change` when it changed.
    pub(crate) fn observe_leader(&self, leader: Option<String>, epoch: Option<u64>) {
        if let Some(e) = epoch {
            self.ctx.observe().metrics.set_epoch(&self.app.name, e);
        }
        // Audit the end of the previous leadership as seen from here; every
        // node reports it under the same message id, JetStream keeps one.
        if let Ok(mut seen) = self.seen_leader.lock() {
            let new = leader.clone().zip(epoch);
            if let Some((old, old_epoch)) = seen.as_ref() {
                if new.as_ref().is_none_or(|(_, e)| e != old_epoch) {
                    leader_lost(self, old, *old_epoch, "observed");
                }
            }
            if new.is_some() || leader.is_none() {
                *seen = new;
            }
        }
        let changed = self.state.send_if_modified(|s| {
            let changed = s.leader != leader;
            s.leader = leader.clone();
            if leader.is_some() {
                s.epoch = epoch.or(s.epoch);
            }
            changed
        });
        if changed {
            if let Some(hook) = &self.app.hooks.on_leader_change {
                self.hooks
                    .queue("on_leader_change", hook(self.ctx.clone(), leader));
            }
        }
    }

    /// Records (or clears) why the app cannot take part: shown in
    /// `/status`, and `/ready` fails while it lasts.
    pub(crate) fn set_problem(&self, problem: Option<String>) {
        if problem.is_some() {
            self.ctx.observe().metrics.election_error(&self.app.name);
        }
        self.state.send_if_modified(|s| {
            let changed = s.problem != problem;
            s.problem = problem;
            changed
        });
    }

    /// Queues `on_standby` (a notification: never awaited by the election).
    pub(crate) fn queue_standby_hook(&self) {
        if let Some(f) = &self.app.hooks.on_standby {
            self.hooks.queue("on_standby", f(self.ctx.clone()));
        }
    }

    /// Starts serving the app's API subject. Returns once the server has
    /// provably processed the subscription, so the instance counts as
    /// serving only when calls can reach it.
    pub(crate) async fn serve(&self, mode: crate::rpc::ApiMode) -> Result<(), Error> {
        self.rpc
            .serve_api(mode)
            .await
            .map_err(|e| Error::nats(format!("serve app `{}`", self.app.name), e))
    }

    /// Stops serving the app's API subject (unsubscribe, then drain calls in
    /// flight). Done *before* a demotion so no call is answered by an
    /// instance that is no longer active.
    pub(crate) async fn unserve(&self) {
        self.rpc.stop_api().await;
    }

    /// Runs a hook with the app's timeout; failures are logged and returned.
    pub(crate) async fn run_hook(
        &self,
        name: &str,
        fut: futures::future::BoxFuture<'static, HookResult>,
    ) -> Result<(), Error> {
        run_bounded(&self.app.name, name, self.app.hook_timeout, fut).await
    }

    /// Runs one of the context-only hooks, if the app has it.
    pub(crate) async fn hook(&self, name: &'static str) -> Result<(), Error> {
        let hooks = &self.app.hooks;
        let f = match name {
            "on_active" => hooks.on_active.as_ref(),
            "on_standby" => hooks.on_standby.as_ref(),
            "on_start" => hooks.on_start.as_ref(),
            "on_stop" => hooks.on_stop.as_ref(),
            _ => None,
        };
        match f {
            Some(f) => self.run_hook(name, f(self.ctx.clone())).await,
            None => Ok(()),
        }
    }
}

/// Audits the end of `leader`'s leadership at `epoch` (deduplicated
/// across nodes by message id).
fn leader_lost(inst: &Instance, leader: &str, epoch: u64, how: &str) {
    let app = inst.app.name.as_str();
    inst.ctx.audit().record(
        "election.leader_lost",
        serde_json::json!({"leader": leader, "epoch": epoch, "reported_as": how}),
        Some(format!("election.leader_lost.{app}.{epoch}")),
    );
}

/// Capped exponential backoff for activation that keeps failing (flap
/// damping): 1 s, 2 s, 4 s … 30 s.
pub(crate) fn flap_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}
