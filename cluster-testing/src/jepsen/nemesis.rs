//! Seeded fault schedules against node processes and NATS servers.
//!
//! Guarantees:
//! - [`Schedule::generate`] is a pure function of `(seed, kinds, seconds)`:
//!   the same seed gives the same sequence of (pause before, fault kind,
//!   random draws for targets and durations). Which node is "the active"
//!   is found when the fault fires, so a replay injects the same faults in
//!   the same order; the timing of the system under test still varies.
//! - Every executed fault is recorded as a [`FaultRecord`] with monotonic
//!   start and end times, its target and what happened.
//! - Faults: [`FaultKind::Kill`] (SIGKILL the active, restart it),
//!   [`FaultKind::Pause`] (SIGSTOP the active for longer than the lease TTL,
//!   then SIGCONT), [`FaultKind::PauseKillSuccessor`] (SIGSTOP the active
//!   past the TTL, wait for a successor, SIGCONT the old one and at once
//!   SIGKILL the successor, restart it), [`FaultKind::Term`] (SIGTERM the
//!   active, restart it), [`FaultKind::NatsKill`] (SIGKILL one server of a
//!   3-node NATS cluster, restart it), and for rings [`FaultKind::Join`]
//!   (start a spare node, or SIGTERM it if it runs: recorded as
//!   [`FaultKind::Leave`]).
//! - Targets ([`Targeting`]): a singleton's faults hit its single active;
//!   a ring's hit the owner of one of the workload's partitions (drawn from
//!   the fault's random bits), and pause-kill-successor kills the node that
//!   took that partition over.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::nats_server::NatsCluster;
use serde::{Deserialize, Serialize};

use super::nodes::{NodeSet, NodeState};

/// A small seeded PRNG (splitmix64): deterministic across platforms and
/// versions, which `rand`'s generators do not promise.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL the active, restart it.
    Kill,
    /// SIGSTOP the active past the lease TTL, SIGCONT it.
    Pause,
    /// SIGSTOP the active past the TTL, wait for a successor, SIGCONT the
    /// old active and at once SIGKILL the successor.
    PauseKillSuccessor,
    /// SIGTERM the active, restart it.
    Term,
    /// SIGKILL one NATS server, restart it.
    NatsKill,
    /// Rings: start the spare node (a join) if it is down; SIGTERM it (a
    /// graceful leave, recorded as [`FaultKind::Leave`]) if it runs.
    Join,
    /// A graceful leave of the spare node (only ever recorded: schedules
    /// draw [`FaultKind::Join`], which alternates).
    Leave,
}

impl FaultKind {
    /// The name used in reports (`kill`, `pause`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::PauseKillSuccessor => "pause_kill_successor",
            FaultKind::Term => "term",
            FaultKind::NatsKill => "nats_kill",
            FaultKind::Join => "join",
            FaultKind::Leave => "leave",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    /// Quiet time before it, in ms.
    pub wait_ms: u64,
    /// What to do.
    pub kind: FaultKind,
    /// How long the fault lasts beyond its minimum (pause past the TTL,
    /// time down before a restart), in ms.
    pub extra_ms: u64,
    /// Random bits for choosing a target where there is a choice.
    pub pick: u64,
}

/// A deterministic list of faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed.
    pub seed: u64,
    /// The faults, in order (more than a run uses; it stops at its end).
    pub faults: Vec<PlannedFault>,
}

impl Schedule {
    /// Draws faults of `kinds` for a run of `seconds`, from `seed`.
    pub fn generate(seed: u64, kinds: &[FaultKind], seconds: u64) -> Schedule {
        let mut rng = SplitMix64::new(seed);
        let mut faults = Vec::new();
        if !kinds.is_empty() {
            // Every fault takes ≥ 0.5 s, so this is more than a run uses.
            for _ in 0..(seconds * 2 + 4) {
                let kind = kinds[(rng.next_u64() % kinds.len() as u64) as usize];
                faults.push(PlannedFault {
                    wait_ms: rng.range(300, 2000),
                    kind,
                    extra_ms: rng.range(200, 1500),
                    pick: rng.next_u64(),
                });
            }
        }
        Schedule { seed, faults }
    }
}

/// One executed fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What.
    pub kind: FaultKind,
    /// The node or server hit (the successor too, for pause-kill).
    pub target: String,
    /// Monotonic ns when it began (before the first signal).
    pub start_ns: u64,
    /// Monotonic ns when it ended (everything resumed / restarted).
    pub end_ns: u64,
    /// What happened (e.g. "no successor within 15s").
    pub note: String,
}

/// Whom node faults hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targeting {
    /// The single active instance of a singleton.
    Active,
    /// The owner of one of `partitions` of a ring (chosen per fault);
    /// `spare` is the index of the node that [`FaultKind::Join`] starts
    /// and stops.
    Ring {
        /// Partitions worth hitting (those of the workload's keys).
        partitions: Vec<u32>,
        /// The spare node's index in the [`NodeSet`].
        spare: Option<usize>,
    },
}

/// Executes a [`Schedule`] until a deadline.
#[derive(Debug)]
pub struct Nemesis {
    /// The app whose active (or partition owner) is the target.
    pub app: String,
    /// The app's lease TTL.
    pub lease_ttl: Duration,
    /// Whom node faults hit.
    pub targeting: Targeting,
    /// Faults done.
    pub records: Vec<FaultRecord>,
}

impl Nemesis {
    /// A nemesis for the singleton `app` with lease TTL `lease_ttl`.
    pub fn new(app: &str, lease_ttl: Duration) -> Self {
        Nemesis {
            app: app.to_owned(),
            lease_ttl,
            targeting: Targeting::Active,
            records: Vec::new(),
        }
    }

    /// A nemesis for the ring `app`: faults hit owners of `partitions`;
    /// joins and leaves use the node `spare`.
    pub fn ring(
        app: &str,
        lease_ttl: Duration,
        partitions: Vec<u32>,
        spare: Option<usize>,
    ) -> Self {
        Nemesis {
            targeting: Targeting::Ring { partitions, spare },
            ..Nemesis::new(app, lease_ttl)
        }
    }

    /// The partition a fault aims at (rings), from its random bits.
    fn partition_for(&self, fault: &PlannedFault) -> Option<u32> {
        match &self.targeting {
            Targeting::Ring { partitions, .. } if !partitions.is_empty() => {
                Some(partitions[(fault.pick % partitions.len() as u64) as usize])
            }
            _ => None,
        }
    }

    /// The node to hit: the single active, or the single owner of
    /// `partition`; `except` is excluded (a successor search).
    async fn find_target(
        &self,
        set: &NodeSet,
        partition: Option<u32>,
        except: Option<usize>,
    ) -> Option<usize> {
        let wait = Duration::from_secs(15);
        match partition {
            Some(p) => set.wait_owner(&self.app, p, except, wait).await,
            None => set.wait_single_active(&self.app, except, wait).await,
        }
    }

    /// Fault counts by kind name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in &self.records {
            *out.entry(r.kind.as_str().to_owned()).or_default() += 1;
        }
        out
    }

    /// Runs faults of `schedule` in order, starting none after `until`.
    pub async fn run(
        &mut self,
        schedule: &Schedule,
        nodes: &tokio::sync::Mutex<NodeSet>,
        nats: Option<&tokio::sync::Mutex<NatsCluster>>,
        until: tokio::time::Instant,
    ) {
        for fault in &schedule.faults {
            let start = tokio::time::Instant::now() + Duration::from_millis(fault.wait_ms);
            if start >= until {
                break;
            }
            tokio::time::sleep_until(start).await;
            let record = match fault.kind {
                FaultKind::NatsKill => match nats {
                    Some(nats) => Some(self.nats_kill(fault, nats).await),
                    None => None,
                },
                FaultKind::Join | FaultKind::Leave => self.join_or_leave(fault, nodes).await,
                _ => self.node_fault(fault, nodes).await,
            };
            if let Some(r) = record {
                self.records.push(r);
            }
        }
    }

    async fn node_fault(
        &self,
        fault: &PlannedFault,
        nodes: &tokio::sync::Mutex<NodeSet>,
    ) -> Option<FaultRecord> {
        let extra = Duration::from_millis(fault.extra_ms);
        // The target is whoever is active (owns the partition) now; no
        // fault while there is none (or two), which the system must sort
        // out by itself first.
        let partition = self.partition_for(fault);
        let target = {
            let set = nodes.lock().await;
            self.find_target(&set, partition, None).await?
        };
        let start_ns = monotonic_ns();
        let mut set = nodes.lock().await;
        let name = match partition {
            Some(p) => format!("{} (owner of p{p})", set.nodes[target].id()),
            None => set.nodes[target].id().to_owned(),
        };
        let mut note = String::new();
        match fault.kind {
            FaultKind::Kill => {
                set.nodes[target].kill();
                drop(set);
                tokio::time::sleep(extra).await;
                set = nodes.lock().await;
                if let Err(e) = set.nodes[target].restart() {
                    note = format!("restart failed: {e}");
                }
            }
            FaultKind::Term => {
                if !set.nodes[target].terminate(Duration::from_secs(10)).await {
                    note = "did not exit within 10s of SIGTERM; killed".into();
                }
                drop(set);
                tokio::time::sleep(extra).await;
                set = nodes.lock().await;
                if let Err(e) = set.nodes[target].restart() {
                    note = format!("restart failed: {e}");
                }
            }
            FaultKind::Pause => {
                if let Err(e) = set.nodes[target].pause() {
                    note = format!("SIGSTOP failed: {e}");
                }
                drop(set);
                tokio::time::sleep(self.lease_ttl + extra).await;
                set = nodes.lock().await;
                if let Err(e) = set.nodes[target].resume() {
                    note = format!("SIGCONT failed: {e}");
                }
            }
            FaultKind::PauseKillSuccessor => {
                if let Err(e) = set.nodes[target].pause() {
                    note = format!("SIGSTOP failed: {e}; ");
                }
                drop(set);
                tokio::time::sleep(self.lease_ttl).await;
                let successor = {
                    let set = nodes.lock().await;
                    self.find_target(&set, partition, Some(target)).await
                };
                set = nodes.lock().await;
                let _ = set.nodes[target].resume();
                match successor {
                    Some(s) => {
                        set.nodes[s].kill();
                        note = format!("{note}successor {} killed", set.nodes[s].id());
                        drop(set);
                        tokio::time::sleep(extra).await;
                        set = nodes.lock().await;
                        if let Err(e) = set.nodes[s].restart() {
                            note = format!("{note}; restart failed: {e}");
                        }
                    }
                    None => note = format!("{note}no successor within 15s"),
                }
            }
            FaultKind::NatsKill | FaultKind::Join | FaultKind::Leave => {}
        }
        drop(set);
        Some(FaultRecord {
            kind: fault.kind,
            target: name,
            start_ns,
            end_ns: monotonic_ns(),
            note,
        })
    }

    /// Starts the spare node if it is down (a join: waits up to 10 s for
    /// it to own a partition, then `extra`), or SIGTERMs it if it runs (a
    /// graceful leave). `None` without a spare.
    async fn join_or_leave(
        &self,
        fault: &PlannedFault,
        nodes: &tokio::sync::Mutex<NodeSet>,
    ) -> Option<FaultRecord> {
        let Targeting::Ring {
            spare: Some(spare), ..
        } = &self.targeting
        else {
            return None;
        };
        let spare = *spare;
        let start_ns = monotonic_ns();
        let mut set = nodes.lock().await;
        let node = set.nodes.get_mut(spare)?;
        let name = node.id().to_owned();
        let (kind, note) = match node.state() {
            NodeState::Down => {
                if let Err(e) = node.restart() {
                    return Some(FaultRecord {
                        kind: FaultKind::Join,
                        target: name,
                        start_ns,
                        end_ns: monotonic_ns(),
                        note: format!("start failed: {e}"),
                    });
                }
                drop(set);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let mut owned = 0;
                while tokio::time::Instant::now() < deadline {
                    let set = nodes.lock().await;
                    owned = set.nodes[spare]
                        .partitions(&self.app)
                        .await
                        .map_or(0, |p| p.len());
                    drop(set);
                    if owned > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let note = format!(
                    "owned {owned} partitions {} ms after the start",
                    (monotonic_ns() - start_ns) / 1_000_000
                );
                tokio::time::sleep(Duration::from_millis(fault.extra_ms)).await;
                (FaultKind::Join, note)
            }
            NodeState::Up | NodeState::Paused => {
                let clean = node.terminate(Duration::from_secs(10)).await;
                drop(set);
                let note = if clean {
                    String::new()
                } else {
                    "did not exit within 10s of SIGTERM; killed".to_owned()
                };
                tokio::time::sleep(Duration::from_millis(fault.extra_ms)).await;
                (FaultKind::Leave, note)
            }
        };
        Some(FaultRecord {
            kind,
            target: name,
            start_ns,
            end_ns: monotonic_ns(),
            note,
        })
    }

    async fn nats_kill(
        &self,
        fault: &PlannedFault,
        nats: &tokio::sync::Mutex<NatsCluster>,
    ) -> FaultRecord {
        let start_ns = monotonic_ns();
        let mut cluster = nats.lock().await;
        let i = (fault.pick % cluster.len().max(1) as u64) as usize;
        let target = cluster
            .servers()
            .get(i)
            .and_then(|s| s.name())
            .unwrap_or("?")
            .to_owned();
        cluster.server(i).kill();
        tokio::time::sleep(Duration::from_millis(1000) + Duration::from_millis(fault.extra_ms))
            .await;
        let note = match cluster.server(i).restart().await {
            Ok(()) => String::new(),
            Err(e) => format!("restart failed: {e}"),
        };
        FaultRecord {
            kind: FaultKind::NatsKill,
            target,
            start_ns,
            end_ns: monotonic_ns(),
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let kinds = [FaultKind::Kill, FaultKind::Pause, FaultKind::NatsKill];
        let a = Schedule::generate(7, &kinds, 30);
        assert_eq!(a, Schedule::generate(7, &kinds, 30));
        assert_ne!(a, Schedule::generate(8, &kinds, 30));
        assert!(a.faults.iter().any(|f| f.kind == FaultKind::Pause));
    }
}
