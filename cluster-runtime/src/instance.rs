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
}

impl Instance {
    pub(crate) fn node(&self) -> &str {
        self.ctx.node()
    }

    /// Sets the role, records the change and publishes it in the node record.
    pub(crate) fn set_role(&self, role: Role, epoch: Option<u64>, valid_until_ns: Option<u64>) {
        let changed = self.state.send_if_modified(|s| {
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

    /// Records who leads (observed from the lease key) and fires
    /// `on_leader_change` when it changed.
    pub(crate) async fn observe_leader(&self, leader: Option<String>, epoch: Option<u64>) {
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
                let f = hook(self.ctx.clone(), leader);
                let _ = self.run_hook("on_leader_change", f).await;
            }
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
        let context = format!("app `{}` hook {name}", self.app.name);
        let timeout = self.app.hook_timeout;
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

/// Capped exponential backoff for activation that keeps failing (flap
/// damping): 1 s, 2 s, 4 s … 30 s.
pub(crate) fn flap_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}
