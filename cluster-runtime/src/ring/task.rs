//! The ring's state machine on one node: start (`on_start`, serve the
//! keyless API in the queue group), join (member lease), reconcile (hand off
//! what is no longer ours, claim what should be), leave.
//!
//! ```text
//!         on_start,          join: acquire
//!         serve API          member.<node>
//!  stopped ────────▶ started ─────────────▶ member ──┐ reconcile on every
//!     ▲                 ▲  ▲                 │  ▲     │ change of the view:
//!     │                 │  │ lease lost:     │  └─────┘  hand off, claim
//!     │                 │  └── stop at once, on_release
//!     │   leave (shutdown, record lapsed):   │
//!     └── hand off everything, delete member.<node>, unserve API, on_stop
//! ```
//!
//! The invariant each transition keeps is stated where it happens; the
//! argument as a whole is in the [module docs](super).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::claims::{self, ClaimStatus, ClaimWriter, MemberRecord, View, Written};
use super::{assign, OwnershipChange, Partitions};
use crate::app::Role;
use crate::clock;
use crate::instance::{flap_backoff, Instance};
use crate::lease::{HeldLease, KeyState, LeaseKey, LostReason};
use crate::transport::Transport;

/// How long loading the initial view may take before the watch is retried.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

type KvWatch = kv::Watch;

pub(crate) struct RingTask {
    pub(crate) inst: Arc<Instance>,
    pub(crate) kv: kv::Store,
    pub(crate) member: LeaseKey,
    pub(crate) writer: ClaimWriter,
    pub(crate) transport: Transport,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) eligible: bool,
    pub(crate) partitions: u32,
    pub(crate) handoff_timeout: Duration,
}

/// What the task knows and holds.
#[derive(Default)]
struct State {
    /// The keys as seen through the watch; exact once `complete`.
    view: View,
    complete: bool,
    /// This node's member lease, while it is a ring member.
    lease: Option<HeldLease>,
    /// The epoch of the last member lease this process held: after losing
    /// it, this process may take its own stale key over at once.
    last_epoch: Option<u64>,
    /// Partitions owned, with their claim revisions.
    owned: BTreeMap<u32, u64>,
    /// Claim sequences already acted on (claimed at, or deleted): not acted
    /// on again until the view shows the key moved past them.
    tried: BTreeMap<u32, u64>,
    /// The highest claim revision of each partition this node gave up (sent
    /// a delete for). A claim at or below it is never owned again: the
    /// delete may land later (its acknowledgement can be lost), and the
    /// view may show the claim only after it was given up (the watch lags
    /// behind this node's own writes). Such a claim is deleted and the
    /// partition claimed afresh.
    released: BTreeMap<u32, u64>,
    /// `on_own` failures in a row, and when claiming may resume.
    failures: u32,
    holdoff_until: Option<Instant>,
    /// `on_start` ran and the keyless API is served (queue group).
    started: bool,
    /// `on_start` failures in a row, and when starting may be retried.
    start_failures: u32,
    start_retry_at: Option<Instant>,
    /// Something changed since the last reconcile.
    dirty: bool,
}

enum Wake {
    Shutdown,
    /// A channel the task waits on was closed: the platform is gone.
    Closed,
    Lost(LostReason),
    Entry(Option<Result<kv::Entry, kv::WatcherError>>),
    Reconnect,
    Registered,
    Tick,
}

impl RingTask {
    fn node(&self) -> &str {
        self.inst.node()
    }

    pub(crate) async fn run(mut self) {
        let mut st = State::default();
        let mut registered = self.inst.membership.registered();
        let mut generation = self.transport.generation();
        let mut watch: Option<KvWatch> = None;
        let mut watch_retry_at: Option<Instant> = None;
        if !self.eligible {
            self.inst.set_role(Role::Stopped, None, None);
        }
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            if watch.is_none() && watch_retry_at.is_none_or(|t| Instant::now() >= t) {
                generation.borrow_and_update();
                // A lease lost meanwhile (NATS unreachable) is handled at
                // once, not after the watch gives up.
                let opened = tokio::select! {
                    biased;
                    reason = lease_lost(st.lease.as_ref()) => Err(Some(reason)),
                    opened = self.open_watch() => opened.map_err(|e| {
                        tracing::warn!(app = %self.inst.app.name, error = %e, "cannot watch the ring; retrying");
                        None
                    }),
                };
                match opened {
                    Ok((w, view)) => {
                        watch = Some(w);
                        watch_retry_at = None;
                        st.view = view;
                        st.complete = true;
                        st.dirty = true;
                        self.publish_table(&st);
                    }
                    Err(Some(reason)) => {
                        self.lost(&mut st, reason).await;
                        continue;
                    }
                    Err(None) => {
                        watch_retry_at = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
            }
            let want = self.eligible && *registered.borrow();
            if !want && st.started {
                // Our node record lapsed: we are cut off. Stop everything.
                self.leave(&mut st, Role::Stopped).await;
            }
            if want && !st.started {
                self.start(&mut st).await;
            }
            if want && st.started && st.lease.is_none() {
                self.join(&mut st).await;
            }
            if st.dirty && st.lease.is_some() {
                st.dirty = false;
                self.reconcile(&mut st).await;
            }

            let timing = self.member.timing();
            let tick = [st.holdoff_until, st.start_retry_at, watch_retry_at]
                .into_iter()
                .flatten()
                .filter(|t| *t > Instant::now())
                .min()
                .unwrap_or_else(|| Instant::now() + timing.renew);
            let wake = tokio::select! {
                biased;
                changed = self.shutdown.changed() => if changed.is_ok() { Wake::Shutdown } else { Wake::Closed },
                reason = lease_lost(st.lease.as_ref()) => Wake::Lost(reason),
                item = next_entry(watch.as_mut()) => Wake::Entry(item),
                // A closed channel means the platform is gone: shut down,
                // never spin on it.
                changed = generation.changed() => if changed.is_ok() { Wake::Reconnect } else { Wake::Closed },
                changed = registered.changed() => if changed.is_ok() { Wake::Registered } else { Wake::Closed },
                _ = tokio::time::sleep_until(tick) => Wake::Tick,
            };
            match wake {
                Wake::Shutdown => {}
                Wake::Closed => break,
                Wake::Lost(reason) => self.lost(&mut st, reason).await,
                Wake::Entry(Some(Ok(entry))) => {
                    st.dirty |=
                        st.view
                            .apply(&entry.key, entry.operation, entry.revision, &entry.value);
                    // Take everything already delivered as one batch.
                    while let Some(Some(item)) =
                        watch.as_mut().and_then(|w| w.next().now_or_never())
                    {
                        match item {
                            Ok(e) => {
                                st.dirty |= st.view.apply(&e.key, e.operation, e.revision, &e.value)
                            }
                            Err(_) => {
                                watch = None;
                                st.complete = false;
                                break;
                            }
                        }
                    }
                    if st.dirty {
                        self.publish_table(&st);
                    }
                }
                Wake::Entry(_) | Wake::Reconnect => {
                    // The watch ended or we reconnected (events may have been
                    // missed): rebuild the view from a fresh snapshot.
                    watch = None;
                    st.complete = false;
                }
                Wake::Registered | Wake::Tick => st.dirty = true,
            }
        }
        self.leave(&mut st, Role::Stopped).await;
    }

    /// Opens the watch of `ring`, `member.>` and `p.>` and reads the
    /// snapshot (the last message of each key, in stream order). The `ring`
    /// key always exists, so the snapshot is never empty and its end is the
    /// entry with nothing pending after it.
    async fn open_watch(&self) -> crate::Result<(KvWatch, View)> {
        let op = || format!("watch ring keys of {}", self.kv.name);
        let mut watch = self
            .kv
            .watch_many_with_history(claims::WATCH_KEYS)
            .await
            .map_err(|e| crate::Error::nats(op(), e))?;
        let mut view = View::default();
        let until = Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(until, watch.next()).await {
                Err(_) => {
                    // The `ring` key vanished (an operator purged it?):
                    // write it again so the next snapshot ends.
                    self.writer.ensure_config(&self.kv, self.partitions).await?;
                    return Err(crate::Error::nats(op(), "the snapshot did not complete"));
                }
                Ok(None) => return Err(crate::Error::nats(op(), "the watch ended")),
                Ok(Some(Err(e))) => return Err(crate::Error::nats(op(), e)),
                Ok(Some(Ok(entry))) => {
                    view.apply(&entry.key, entry.operation, entry.revision, &entry.value);
                    if entry.delta == 0 {
                        return Ok((watch, view));
                    }
                }
            }
        }
    }

    fn publish_table(&self, st: &State) {
        self.inst
            .ctx
            .ring()
            .publish_table(st.view.table(self.partitions));
    }

    /// Starts the instance: `on_start`, then the keyless API subject in the
    /// queue group (any instance answers calls without a key). A failing
    /// `on_start` is retried with the flap backoff.
    async fn start(&self, st: &mut State) {
        if st.start_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let started = async {
            self.inst.hook("on_start").await?;
            self.inst.serve(crate::rpc::ApiMode::Pool).await
        };
        match started.await {
            Ok(()) => {
                st.started = true;
                st.start_failures = 0;
                st.start_retry_at = None;
            }
            Err(e) => {
                st.start_failures += 1;
                let backoff = flap_backoff(st.start_failures);
                tracing::warn!(app = %self.inst.app.name, error = %e, ?backoff, "cannot start the ring instance; retrying");
                st.start_retry_at = Some(Instant::now() + backoff);
                self.inst.unserve().await;
            }
        }
    }

    /// Becomes a ring member: acquires `member.<node>`. A key held by an
    /// earlier incarnation of this node is waited out (it may still own
    /// partitions until it expires), unless it is the lease this process
    /// itself just lost and demoted from.
    async fn join(&self, st: &mut State) {
        if let Some(epoch) = st.view.member_epoch(self.node()) {
            if Some(epoch) != st.last_epoch {
                return; // held by an earlier incarnation: wait for its expiry
            }
        }
        let record = MemberRecord {
            node: self.node().to_owned(),
            epoch: None,
        };
        let expected = match self.member.read().await {
            Ok(KeyState::Free { seq }) => seq,
            Ok(KeyState::Held { seq, value }) => {
                let epoch = serde_json::from_slice::<MemberRecord>(&value)
                    .ok()
                    .map(|r| r.epoch.unwrap_or(seq));
                if epoch.is_none() || epoch != st.last_epoch {
                    return;
                }
                seq
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the ring member key; retrying");
                return;
            }
        };
        match self
            .member
            .try_acquire(expected, claims::encode(&record))
            .await
        {
            Ok(Some(held)) => {
                let epoch = held.epoch();
                held.set_value(claims::encode(&MemberRecord {
                    node: self.node().to_owned(),
                    epoch: Some(epoch),
                }));
                self.inst.ctx.ring().set_validity(Some(held.validity()));
                st.lease = Some(held);
                st.last_epoch = Some(epoch);
                st.tried.clear();
                st.released.clear();
                st.dirty = true;
                self.inst.set_role(Role::Running, None, None);
                tracing::info!(app = %self.inst.app.name, epoch, "joined the ring");
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot acquire the ring member key; retrying"),
        }
    }

    /// Moves towards the desired table: hands off owned partitions that are
    /// desired elsewhere, claims free or stale partitions desired here, and
    /// adopts claims of ours whose acknowledgement was lost.
    async fn reconcile(&self, st: &mut State) {
        let Some(lease) = st.lease.as_ref() else {
            return;
        };
        let epoch = lease.epoch();
        let me = self.node().to_owned();
        // The desired table must include us as everyone sees us: wait until
        // our own lease is in the view (otherwise we would give everything
        // away in the window between acquiring it and seeing it).
        if !st.complete || !lease.is_valid() || st.view.member_epoch(&me) != Some(epoch) {
            return;
        }
        let live: Vec<&str> = st.view.live().map(|(n, _)| n).collect();
        let desired: Vec<bool> = assign(&self.inst.app.name, self.partitions, &live)
            .into_iter()
            .map(|o| o.map(|i| live[i]) == Some(me.as_str()))
            .collect();
        let mine = |p: u32| desired.get(p as usize).copied().unwrap_or(false);

        let leaving: Vec<u32> = st.owned.keys().copied().filter(|p| !mine(*p)).collect();
        if !leaving.is_empty() {
            self.hand_off(st, leaving).await;
        }

        // Forget what the view has moved past (it may also lag behind our
        // own writes: then keep it).
        let seen = |p: &u32| st.view.claims.get(p).map_or(0, |c| c.seq);
        st.tried.retain(|p, seq| seen(p) <= *seq);
        st.released.retain(|p, rev| seen(p) <= *rev);
        let may_claim = st.holdoff_until.is_none_or(|t| Instant::now() >= t);
        let (mut adopt, mut stray, mut claim) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..self.partitions {
            if st.owned.contains_key(&p) {
                continue;
            }
            let status = st.view.status(p);
            let seq = match &status {
                ClaimStatus::Free { seq } | ClaimStatus::Stale { seq, .. } => *seq,
                ClaimStatus::Valid { seq, .. } => *seq,
            };
            if st.tried.get(&p) == Some(&seq) {
                continue;
            }
            match status {
                ClaimStatus::Valid {
                    owner, epoch: e, ..
                } if owner == me && e == epoch => {
                    // Ours, not owned: a claim whose acknowledgement was
                    // lost (adopt it), or one we gave up (delete it).
                    if mine(p) && st.released.get(&p).is_none_or(|r| seq > *r) {
                        adopt.push((p, seq));
                    } else {
                        stray.push((p, seq));
                    }
                }
                ClaimStatus::Valid { .. } => {} // someone else's: they hand it off
                ClaimStatus::Free { .. } | ClaimStatus::Stale { .. } => {
                    if mine(p) && may_claim {
                        claim.push((p, seq));
                    }
                }
            }
        }
        if !stray.is_empty() {
            give_up(st, &stray);
            let results = self.writer.release(&stray).await;
            record_tried(st, &stray, &results);
        }
        if !claim.is_empty() {
            // Invariant: only a node whose lease is valid writes a claim.
            let valid = st.lease.as_ref().is_some_and(HeldLease::is_valid);
            if !valid {
                return;
            }
            let results = self.writer.claim(&claim, &me, epoch).await;
            record_tried(st, &claim, &results);
            for (&(p, _), result) in claim.iter().zip(&results) {
                match result {
                    Written::Ok(revision) => adopt.push((p, *revision)),
                    Written::Conflict => {}
                    Written::Failed(e) => {
                        tracing::debug!(partition = p, error = %e, "claim outcome unknown; the watch will tell")
                    }
                }
            }
        }
        if !adopt.is_empty() {
            adopt.sort_unstable();
            self.take(st, adopt).await;
        }
    }

    /// Starts owning `batch` (partition, claim revision): marks them owned,
    /// runs `on_own`, then serves them. A failing `on_own` (or subscription)
    /// hands them back and holds off claiming (flap damping).
    async fn take(&self, st: &mut State, batch: Vec<(u32, u64)>) {
        // Invariant: ownership starts only if the lease the claims name is
        // still valid after their acknowledgement arrived. A claim stored
        // after our lease ended is stale for everyone else already.
        if !st.lease.as_ref().is_some_and(HeldLease::is_valid) {
            return;
        }
        let ring = self.inst.ctx.ring();
        ring.mark_owned(&batch);
        st.owned.extend(batch.iter().copied());
        let parts: Vec<u32> = batch.iter().map(|(p, _)| *p).collect();
        let tokens: Vec<u64> = batch.iter().map(|(_, t)| *t).collect();
        self.inst
            .record_ownership(OwnershipChange::Own, &parts, tokens, None);
        // The partitions' epoch records first (DESIGN §4.11): from here the
        // server refuses the previous owners' fenced writes; then on_own
        // loads state that no stale write can change any more.
        let fenced = match &st.lease {
            Some(lease) => {
                let armed = self
                    .inst
                    .ctx
                    .kv()
                    .arm_partition_fences(&lease.validity(), &batch, self.inst.node())
                    .await;
                if let Err(e) = &armed {
                    tracing::warn!(app = %self.inst.app.name, error = %e, "cannot write the partitions' epoch records");
                }
                armed.is_ok()
            }
            None => false,
        };
        let owned = fenced
            && match &self.inst.app.hooks.on_own {
                Some(hook) => {
                    let f = hook(self.inst.ctx.clone(), Partitions::new(parts.clone()));
                    // Awaited (state is loaded before serving), but raced
                    // with the lease: a hook that hangs cannot hide its loss.
                    match &st.lease {
                        Some(lease) => tokio::select! {
                            ran = self.inst.run_hook("on_own", f) => ran.is_ok(),
                            _ = lease.lost() => false,
                        },
                        None => false,
                    }
                }
                None => true,
            };
        let serving = owned
            && match self.inst.rpc.serve_partitions(parts.iter().copied()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(app = %self.inst.app.name, error = %e, "cannot serve partitions; handing them back");
                    false
                }
            };
        if serving {
            st.failures = 0;
            st.holdoff_until = None;
            self.inst
                .record_ownership(OwnershipChange::Serve, &parts, Vec::new(), None);
        } else {
            st.failures += 1;
            let backoff = flap_backoff(st.failures);
            tracing::warn!(app = %self.inst.app.name, ?backoff, "on_own failed; handing the partitions back");
            st.holdoff_until = Some(Instant::now() + backoff);
            self.hand_off(st, parts).await;
        }
    }

    /// Graceful hand-off of `parts`: stop serving (unsubscribe, drain calls
    /// in flight up to the RPC drain timeout), run `on_release` (bounded by
    /// the hand-off timeout), then free the claims. Invariant: a claim is
    /// deleted only after this node stopped serving and released it, so the
    /// next owner's compare-and-set succeeds only after that.
    async fn hand_off(&self, st: &mut State, parts: Vec<u32>) {
        self.inst.rpc.stop_partitions(parts.iter().copied()).await;
        self.inst.ctx.ring().mark_released(&parts);
        self.inst.ctx.kv().disarm_partition_fences(&parts);
        let revisions: Vec<(u32, u64)> = parts
            .iter()
            .filter_map(|p| st.owned.remove(p).map(|r| (*p, r)))
            .collect();
        self.on_release(&parts).await;
        self.inst
            .record_ownership(OwnershipChange::Release, &parts, Vec::new(), None);
        // Invariant: a claim given up is never owned again (see `released`).
        give_up(st, &revisions);
        let results = self.writer.release(&revisions).await;
        record_tried(st, &revisions, &results);
    }

    /// Runs `on_release`; after the hand-off timeout the hook is abandoned
    /// and the partitions are given up anyway.
    /// `on_release` after the lease was lost: a notification, queued on the
    /// app's hook runner — the partitions are gone already, and the ring
    /// task must get back to rejoining.
    fn queue_on_release(&self, parts: &[u32]) {
        if parts.is_empty() {
            return;
        }
        if let Some(hook) = &self.inst.app.hooks.on_release {
            let f = hook(
                self.inst.ctx.clone(),
                Partitions::new(parts.iter().copied()),
            );
            self.inst.hooks.queue("on_release", f);
        }
    }

    async fn on_release(&self, parts: &[u32]) {
        if parts.is_empty() {
            return;
        }
        let Some(hook) = &self.inst.app.hooks.on_release else {
            return;
        };
        let f = hook(
            self.inst.ctx.clone(),
            Partitions::new(parts.iter().copied()),
        );
        let run = self.inst.run_hook("on_release", f);
        if tokio::time::timeout(self.handoff_timeout, run)
            .await
            .is_err()
        {
            tracing::warn!(
                app = %self.inst.app.name,
                timeout = ?self.handoff_timeout,
                "on_release did not finish within the hand-off timeout; giving the partitions up anyway"
            );
        }
    }

    /// The member lease was lost (no renew acknowledged before the deadline,
    /// or the key changed under us). Invariant: this node stopped owning at
    /// the lease's deadline — `Ring::owns` already answers false — and the
    /// claims it holds are stale for everyone once the key expires. Stop
    /// serving now and tell the app; the claims are left to expire with the
    /// lease.
    async fn lost(&self, st: &mut State, reason: LostReason) {
        let Some(lease) = st.lease.take() else {
            return;
        };
        tracing::warn!(app = %self.inst.app.name, ?reason, "lost the ring member lease; releasing every partition");
        let ring = self.inst.ctx.ring();
        let parts: Vec<u32> = st.owned.keys().copied().collect();
        ring.mark_released(&parts);
        self.inst.ctx.kv().disarm_partition_fences(&parts);
        ring.set_validity(None);
        let late = lapsed_at(&lease);
        // Nothing waits on NATS once the lease is lost: the gate already
        // refuses these partitions' calls (`Ring::owns` is false), so the
        // unsubscribes finish in the background.
        let _ = tokio::time::timeout(
            crate::rpc::STOP_WAIT_WHEN_LOST,
            self.inst.rpc.stop_partitions(parts.iter().copied()),
        )
        .await;
        if !parts.is_empty() {
            self.inst
                .record_ownership(OwnershipChange::Release, &parts, Vec::new(), late);
        }
        st.owned.clear();
        st.last_epoch = Some(lease.epoch());
        self.inst.set_role(Role::Stopped, None, late);
        self.queue_on_release(&parts);
        st.dirty = true;
    }

    /// Leaves the ring gracefully: hands off everything locally, then
    /// deletes the member lease — one write that makes every claim of ours
    /// stale at once, after we stopped owning — then stops the instance
    /// (keyless API unserved, `on_stop`).
    async fn leave(&self, st: &mut State, role: Role) {
        let parts: Vec<u32> = st.owned.keys().copied().collect();
        if !parts.is_empty() {
            // A node that wakes up from a pause may find its record lapsed
            // before it notices its lease did: it stopped owning at the
            // lease's deadline all the same.
            let late = st.lease.as_ref().and_then(lapsed_at);
            self.inst.rpc.stop_partitions(parts.iter().copied()).await;
            self.inst.ctx.ring().mark_released(&parts);
            self.inst.ctx.kv().disarm_partition_fences(&parts);
            self.inst.ctx.kv().disarm_partition_fences(&parts);
            self.on_release(&parts).await;
            self.inst
                .record_ownership(OwnershipChange::Release, &parts, Vec::new(), late);
            st.owned.clear();
        }
        self.inst.ctx.ring().set_validity(None);
        if let Some(lease) = st.lease.take() {
            // Everything is released: if the delete does not get through,
            // this process may take its own key over when it rejoins.
            st.last_epoch = Some(lease.epoch());
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not delete the ring member key; it will expire");
            }
        }
        if st.started {
            st.started = false;
            self.inst.unserve().await;
            let _ = self.inst.hook("on_stop").await;
        }
        self.inst.set_role(role, None, None);
    }
}

/// When `lease`'s validity ended, if it already has (a paused or cut-off
/// node notices late).
fn lapsed_at(lease: &HeldLease) -> Option<u64> {
    let valid_until = clock::instant_ns(lease.validity().valid_until());
    (!lease.is_valid() && valid_until < clock::monotonic_ns()).then_some(valid_until)
}

fn give_up(st: &mut State, claims: &[(u32, u64)]) {
    for &(p, rev) in claims {
        let r = st.released.entry(p).or_insert(rev);
        *r = (*r).max(rev);
    }
}

fn record_tried(st: &mut State, batch: &[(u32, u64)], results: &[Written]) {
    for (&(p, seq), result) in batch.iter().zip(results) {
        if !matches!(result, Written::Failed(_)) {
            st.tried.insert(p, seq);
        }
    }
}

async fn lease_lost(lease: Option<&HeldLease>) -> LostReason {
    match lease {
        Some(l) => l.lost().await,
        None => std::future::pending().await,
    }
}

async fn next_entry(watch: Option<&mut KvWatch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
