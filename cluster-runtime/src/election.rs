//! Singleton active/standby on top of [`lease`](crate::lease).
//!
//! Guarantees: at most one node is active (it holds the `election` lease in
//! `P_A_coord`); an active that cannot renew demotes itself at its lease
//! deadline, before the key can expire and be taken; a graceful step-down
//! demotes locally first, then deletes the key so a standby takes over at
//! once. An active whose `on_active` hook fails gives the lease up and backs
//! off (flap damping) so another node can take over.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::app::{AppCommand, Role};
use crate::clock;
use crate::instance::{flap_backoff, Instance};
use crate::lease::{HeldLease, KeyState, LeaseKey, LostReason};
use crate::transport::Transport;

/// The value of a singleton's election key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The active node.
    pub holder: String,
    /// Its epoch. Absent in the acquiring write itself, whose revision *is*
    /// the epoch; every renew carries it.
    #[serde(default)]
    pub epoch: Option<u64>,
}

impl LeaderRecord {
    /// Decodes a held key's value into (holder, epoch).
    pub fn decode(seq: u64, value: &[u8]) -> Option<(String, u64)> {
        let rec: LeaderRecord = serde_json::from_slice(value).ok()?;
        let epoch = rec.epoch.unwrap_or(seq);
        Some((rec.holder, epoch))
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// How an active period ended.
enum Ended {
    /// Lease lost (expired or taken): try again at once.
    Lost,
    /// Activation kept failing: hold off (flap damping), even while
    /// others hold the lease — they may fail the same way.
    GaveUp(Duration),
    /// Stepped down on request: hold off until someone else takes over.
    SteppedDown(Duration),
    /// Shutting down.
    Shutdown,
}

/// How often a failing election says so at `warn` (the rest at `debug`).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A failure that repeats every 100 ms is logged at `warn` once per
/// [`WARN_EVERY`], with how many times it happened meanwhile: an app that
/// cannot elect says so at the default log level without flooding it.
struct RateLimitedWarn {
    app: String,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    fn new(app: String) -> Self {
        RateLimitedWarn {
            app,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, error: &dyn std::fmt::Display, what: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + WARN_EVERY) {
            self.suppressed += 1;
            tracing::debug!(app = %self.app, %error, "{what}");
            return;
        }
        tracing::warn!(app = %self.app, %error, repeated = self.suppressed, "{what}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

pub(crate) struct Election {
    pub(crate) inst: Arc<Instance>,
    pub(crate) key: LeaseKey,
    pub(crate) transport: Transport,
    pub(crate) commands: mpsc::Receiver<AppCommand>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) eligible: bool,
}

type KeyWatch = std::pin::Pin<Box<dyn Stream<Item = KeyState> + Send>>;

impl Election {
    pub(crate) async fn run(mut self) {
        let mut registered = self.inst.membership.registered();
        let mut generation = self.transport.generation();
        let mut holdoff_until = Instant::now();
        let mut clear_on_takeover = true;
        let mut failures = 0u32;
        let mut watch: Option<KeyWatch> = None;
        let mut complain = RateLimitedWarn::new(self.inst.app.name.clone());
        if !self.eligible {
            self.inst.set_role(Role::Stopped, None, None);
        }
        'outer: loop {
            if *self.shutdown.borrow() {
                break;
            }
            if watch.is_none() {
                watch = self.key.watch().await.ok().map(|w| Box::pin(w) as KeyWatch);
            }
            let mut next = match self.key.read().await {
                Ok(state) => {
                    self.inst.set_problem(None);
                    Some(state)
                }
                Err(e) => {
                    complain.warn(&e, "cannot read the election key; retrying");
                    self.inst
                        .set_problem(Some(format!("cannot read the election key: {e}")));
                    None
                }
            };
            loop {
                if let Some(state) = next.take() {
                    match state {
                        KeyState::Held { seq, value } => {
                            let (holder, epoch) = LeaderRecord::decode(seq, &value).unzip();
                            if clear_on_takeover
                                && holder.as_deref().is_some_and(|h| h != self.inst.node())
                            {
                                // Someone else took over: a hold-off after our
                                // step-down has done its job.
                                holdoff_until = Instant::now();
                            }
                            self.inst.observe_leader(holder.clone(), epoch);
                            // Held by someone — possibly our own previous
                            // incarnation after a restart: it expires, then
                            // we compete like everyone else.
                            self.become_standby().await;
                        }
                        KeyState::Free { seq } => {
                            self.inst.observe_leader(None, None);
                            let can_compete = self.eligible
                                && *registered.borrow()
                                && Instant::now() >= holdoff_until;
                            if can_compete {
                                let record = LeaderRecord {
                                    holder: self.inst.node().to_owned(),
                                    epoch: None,
                                };
                                match self.key.try_acquire(seq, record.encode()).await {
                                    Ok(Some(held)) => {
                                        watch = None;
                                        match self.active(held, &mut failures).await {
                                            Ended::Lost => {}
                                            Ended::GaveUp(d) => {
                                                holdoff_until = Instant::now() + d;
                                                clear_on_takeover = false;
                                            }
                                            Ended::SteppedDown(d) => {
                                                holdoff_until = Instant::now() + d;
                                                clear_on_takeover = true;
                                            }
                                            Ended::Shutdown => break 'outer,
                                        }
                                        continue 'outer;
                                    }
                                    Ok(None) => continue 'outer,
                                    Err(e) => {
                                        complain
                                            .warn(&e, "cannot acquire the election key; retrying");
                                        self.inst.set_problem(Some(format!(
                                            "cannot write the election key: {e}"
                                        )));
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        continue 'outer;
                                    }
                                }
                            }
                            self.become_standby().await;
                        }
                    }
                }
                let holdoff_pending = Instant::now() < holdoff_until;
                let safety_poll = self.key.timing().ttl;
                tokio::select! {
                    item = async { match watch.as_mut() { Some(w) => w.next().await, None => None } } => {
                        match item {
                            Some(state) => next = Some(state),
                            None => {
                                watch = None;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue 'outer;
                            }
                        }
                    }
                    // A closed channel means the platform is gone: stop,
                    // never spin on it.
                    changed = generation.changed() => {
                        if changed.is_err() { break 'outer; }
                        // Reconnected: the watch may have missed events.
                        watch = None;
                        continue 'outer;
                    }
                    changed = registered.changed() => {
                        if changed.is_err() { break 'outer; }
                        continue 'outer;
                    }
                    _ = tokio::time::sleep_until(holdoff_until), if holdoff_pending => continue 'outer,
                    _ = tokio::time::sleep(safety_poll) => continue 'outer,
                    // Step-down while standby: nothing to do.
                    cmd = self.commands.recv() => if cmd.is_none() { break 'outer },
                    changed = self.shutdown.changed() => {
                        if changed.is_err() { break 'outer; }
                        continue 'outer;
                    }
                }
            }
        }
        self.inst.set_role(Role::Stopped, None, None);
    }

    async fn become_standby(&self) {
        if !self.eligible {
            return;
        }
        let role = self.inst.state.borrow().role;
        if role != Role::Standby {
            self.inst.set_role(Role::Standby, None, None);
            self.inst.queue_standby_hook();
            self.inst.activation.standby().await;
        }
    }

    /// The active period: from a won acquire until the lease is lost or
    /// given up.
    async fn active(&mut self, held: HeldLease, failures: &mut u32) -> Ended {
        let epoch = held.epoch();
        let node = self.inst.node().to_owned();
        held.set_value(
            LeaderRecord {
                holder: node.clone(),
                epoch: Some(epoch),
            }
            .encode(),
        );
        let validity = held.validity();
        self.inst.ctx.set_validity(Some(validity.clone()));
        self.inst.set_role(Role::Active, Some(epoch), None);
        self.inst.observe_leader(Some(node.clone()), Some(epoch));

        // Why becoming active ended early.
        enum Cut {
            Failed,
            Lost(LostReason),
            Shutdown,
        }
        let mut shutdown = self.shutdown.clone();
        let activation = tokio::select! {
            result = async {
                // The epoch record first (DESIGN §4.7, §4.11): from here the
                // server refuses every fenced write of our predecessors.
                if let Err(e) = self.inst.ctx.kv().arm_fence(&validity, &node).await {
                    tracing::warn!(error = %e, "cannot write the epoch record");
                    return Err(());
                }
                // Data and ops next: promoted database, VIP, healthy
                // backend, replication; then the app's hook.
                if let Err(failed) = self.inst.activation.activate(&validity).await {
                    tracing::warn!(step = failed.step, reason = %failed.reason, "activation failed");
                    return Err(());
                }
                self.inst.hook("on_active").await.map_err(|_| ())?;
                // Serve only once on_active has restored the app's state.
                self.inst.serve(crate::rpc::ApiMode::Exclusive).await.map_err(|_| ())
            } => result.map_err(|()| Cut::Failed),
            reason = held.lost() => Err(Cut::Lost(reason)),
            // SIGTERM while activating (a step waiting on NATS): hand over
            // now rather than at the end of the activation.
            _ = shutdown.wait_for(|s| *s) => Err(Cut::Shutdown),
        };
        match activation {
            Ok(()) => *failures = 0,
            Err(Cut::Failed) => {
                *failures += 1;
                let backoff = flap_backoff(*failures);
                tracing::warn!(?backoff, "on_active failed; giving up the lease");
                self.step_down(&held).await;
                return Ended::GaveUp(backoff);
            }
            Err(Cut::Lost(reason)) => return self.lost(&held, reason).await,
            Err(Cut::Shutdown) => {
                self.step_down(&held).await;
                return Ended::Shutdown;
            }
        }

        enum Next {
            Lost(LostReason),
            StepDown,
            Partitioned,
            Shutdown,
        }
        let mut registered = self.inst.membership.registered();
        let next = tokio::select! {
            reason = held.lost() => Next::Lost(reason),
            cmd = self.commands.recv() => match cmd {
                Some(AppCommand::StepDown) => Next::StepDown,
                None => Next::Shutdown,
            },
            _ = registered.wait_for(|r| !*r) => Next::Partitioned,
            _ = self.shutdown.wait_for(|s| *s) => Next::Shutdown,
        };
        match next {
            Next::Lost(reason) => self.lost(&held, reason).await,
            Next::StepDown => {
                self.step_down(&held).await;
                Ended::SteppedDown(self.key.timing().ttl)
            }
            Next::Partitioned => {
                // Our membership record lapsed: we are cut off. Demote now,
                // without waiting on NATS for anything.
                self.demote(&held, Role::Standby, true).await;
                if let Err(e) = held.release().await {
                    tracing::debug!(error = %e, "could not delete the election key; it will expire");
                }
                Ended::Lost
            }
            Next::Shutdown => {
                self.step_down(&held).await;
                Ended::Shutdown
            }
        }
    }

    /// Lease lost under us: demote, then carry on as a candidate.
    async fn lost(&self, held: &HeldLease, reason: LostReason) -> Ended {
        tracing::warn!(?reason, "lost the active role");
        self.demote(held, Role::Standby, true).await;
        Ended::Lost
    }

    /// Stops being active. The context turns inactive, the data and ops
    /// steps are undone, the role change is recorded — with the lease's
    /// deadline when that has already passed (a paused or cut-off node
    /// notices late, but stopped being valid at its deadline) — `on_standby`
    /// is queued and the passive restore starts.
    ///
    /// `lease_lost` (expired, taken or cut off): nothing waits on NATS. The
    /// API gate and the KV fence close first (validity has ended anyway),
    /// the unsubscribe is not awaited beyond a few ms, then the VIP goes,
    /// the backend is killed and replication aborted (DESIGN §4.7).
    ///
    /// Graceful: calls already received are served while the lease is
    /// still ours, then the steps are undone in reverse — bounded by the
    /// lease: if it would lapse first, the rest goes the lease-lost way.
    async fn demote(&self, held: &HeldLease, role: Role, lease_lost: bool) {
        let validity = held.validity();
        let close = || {
            self.inst.ctx.set_validity(None);
            self.inst.ctx.kv().disarm_fence();
        };
        if lease_lost {
            close();
            // The gate is closed: the unsubscribe protects nothing more and
            // must not delay the VIP and the backend.
            tokio::join!(
                async {
                    let unserve = self.inst.unserve();
                    let _ = tokio::time::timeout(crate::rpc::STOP_WAIT_WHEN_LOST, unserve).await;
                },
                self.inst.activation.deactivate(true),
            );
        } else {
            tokio::select! {
                () = self.inst.unserve() => {}
                () = validity.ended() => {
                    tracing::warn!("draining calls outlasted the lease; stopping without them");
                }
            }
            close();
            self.inst.activation.deactivate_within(&validity).await;
        }
        let valid_until = clock::instant_ns(validity.valid_until());
        let valid_until_ns = (valid_until < clock::monotonic_ns()).then_some(valid_until);
        self.inst.set_role(role, None, valid_until_ns);
        self.inst.queue_standby_hook();
        if role == Role::Standby {
            self.inst.activation.standby().await;
        }
    }

    /// Graceful hand-over: demote locally first (hooks run), then delete the
    /// key with our revision so successors see it at once.
    async fn step_down(&self, held: &HeldLease) {
        let role = if *self.shutdown.borrow() {
            Role::Stopped
        } else {
            Role::Standby
        };
        self.demote(held, role, false).await;
        if let Err(e) = held.release().await {
            tracing::warn!(error = %e, "could not delete the election key; it will expire");
        }
    }
}
