//! Pools: `spread` (every eligible node) and `replicas(N)` (N eligible
//! nodes chosen by rendezvous hashing of the app name over live members).
//!
//! The rendezvous choice is deterministic: every node computes the same set
//! from the same member view, so no coordination is needed; while views
//! differ (a join/leave is propagating) an instance may briefly run on N±1
//! nodes. The placement controller (later) replaces this choice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::{Mode, Role};
use crate::instance::{flap_backoff, Instance};

/// Rendezvous (highest-random-weight) score of `node` for `key`.
pub fn rendezvous_score(key: &str, node: &str) -> u64 {
    let mut buf = Vec::with_capacity(key.len() + node.len() + 1);
    buf.extend_from_slice(key.as_bytes());
    buf.push(0);
    buf.extend_from_slice(node.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// The `n` nodes with the highest rendezvous score for `key`.
///
/// ```
/// use cluster_runtime::pool::rendezvous_choice;
/// let nodes = ["a", "b", "c", "d"];
/// let two = rendezvous_choice("api", nodes.iter().copied(), 2);
/// assert_eq!(two.len(), 2);
/// // Removing a node that was not chosen does not change the choice.
/// let rest: Vec<&str> = nodes.iter().copied().filter(|n| !two.iter().any(|t| t == n)).collect();
/// let without = rendezvous_choice("api", nodes.iter().copied().filter(|n| *n != rest[0]), 2);
/// assert_eq!(two, without);
/// ```
pub fn rendezvous_choice<'a>(
    key: &str,
    nodes: impl Iterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(u64, &str)> = nodes
        .map(|node| (rendezvous_score(key, node), node))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(n)
        .map(|(_, node)| node.to_owned())
        .collect()
}

pub(crate) async fn run(inst: Arc<Instance>, mut shutdown: watch::Receiver<bool>) {
    let mut members = inst.membership.members();
    let mut registered = inst.membership.registered();
    let mut running = false;
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    inst.set_role(Role::Stopped, None, None);
    loop {
        let stopping = *shutdown.borrow();
        let desired =
            !stopping && *registered.borrow() && desired_here(&inst, &members.borrow_and_update());
        let may_start = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        if desired && !running && may_start {
            inst.set_role(Role::Running, None, None);
            let started = async {
                // A pool instance's backend runs while the instance runs.
                if let Err(failed) = inst
                    .activation
                    .activate(&crate::lease::Validity::unleased())
                    .await
                {
                    tracing::warn!(step = failed.step, reason = %failed.reason, "start failed");
                    return Err(());
                }
                inst.hook("on_start").await.map_err(|_| ())?;
                inst.serve(crate::rpc::ApiMode::Pool).await.map_err(|_| ())
            };
            if started.await.is_ok() {
                running = true;
                failures = 0;
                retry_at = None;
            } else {
                failures += 1;
                retry_at = Some(tokio::time::Instant::now() + flap_backoff(failures));
                inst.unserve().await;
                inst.activation.deactivate(false).await;
                inst.set_role(Role::Stopped, None, None);
            }
        } else if !desired && running {
            running = false;
            inst.unserve().await;
            inst.activation.deactivate(false).await;
            inst.set_role(Role::Stopped, None, None);
            let _ = inst.hook("on_stop").await;
        }
        if stopping {
            return;
        }
        let retry =
            retry_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            // A closed channel means the platform is gone: stop, never spin.
            changed = members.changed() => if changed.is_err() { return },
            changed = registered.changed() => if changed.is_err() { return },
            changed = shutdown.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(retry), if retry_at.is_some() => {}
        }
    }
}

fn desired_here(
    inst: &Instance,
    members: &std::collections::BTreeMap<String, crate::membership::NodeRecord>,
) -> bool {
    let placement = &inst.app.placement;
    if !placement.allows(inst.node(), inst.ctx.labels()) {
        return false;
    }
    match inst.app.mode {
        Mode::Spread => true,
        Mode::Replicas(n) => {
            // Only nodes that run this app count (binaries may differ).
            let eligible = members
                .values()
                .filter(|m| m.node == inst.node() || m.apps.contains_key(&inst.app.name))
                .filter(|m| placement.allows(&m.node, &m.labels))
                .map(|m| m.node.as_str());
            rendezvous_choice(&inst.app.name, eligible, n as usize)
                .iter()
                .any(|c| c == inst.node())
        }
        Mode::Singleton | Mode::Ring(_) => false,
    }
}
