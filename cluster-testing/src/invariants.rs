//! The invariant checker: role changes recorded with the machine-wide
//! monotonic clock, checked for the reliability invariants of DESIGN §8.
//!
//! An active *interval* of a node starts at its `active` event and ends at
//! its next role change — or earlier, at the lease's `valid_until` when the
//! node noticed late that it had lost the lease (paused or cut off) — or at
//! the instant the harness SIGKILLed the process. The checks:
//! - no two nodes' active intervals for one app overlap (invariant 1);
//! - epochs of successive active intervals strictly increase (invariant 3);
//! - every "tick" (work done only while `ctx.is_active()`) lies inside an
//!   active interval of its node (invariant 4: a node stops acting).
//!
//! Ring apps: an *ownership interval* of a partition on a node starts at its
//! `own` event and ends at its `release` — or earlier, at the lease's
//! `valid_until` when the node noticed late, or at a SIGKILL. The checks
//! ([`History::check_partitions`]):
//! - no two nodes' intervals of one partition overlap (invariant 2);
//! - each partition's fencing tokens (claim revisions) strictly increase
//!   from one owner to the next (invariant 3).

use std::collections::{BTreeMap, BTreeSet};

use cluster_runtime::app::Role;
use cluster_runtime::instance::RoleEvent;
use cluster_runtime::ring::{OwnershipChange, OwnershipEvent};

/// One active period of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// Node id.
    pub node: String,
    /// Epoch held.
    pub epoch: Option<u64>,
    /// Start (monotonic ns).
    pub start: u64,
    /// End (monotonic ns); `u64::MAX` while still active.
    pub end: u64,
}

/// What the harness knows: role changes, ticks and kills.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every role change of every node.
    pub roles: Vec<RoleEvent>,
    /// Ticks: (node, app, t_ns).
    pub ticks: Vec<(String, String, u64)>,
    /// SIGKILLs: node → kill instants.
    pub kills: BTreeMap<String, Vec<u64>>,
    /// Ring ownership changes of every node.
    pub ownership: Vec<OwnershipEvent>,
}

/// One period during which one node owned one ring partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInterval {
    /// Node id.
    pub node: String,
    /// The partition.
    pub partition: u32,
    /// Its claim revision (fencing token), if reported.
    pub token: Option<u64>,
    /// Start (monotonic ns).
    pub start: u64,
    /// End (monotonic ns); `u64::MAX` while still owned.
    pub end: u64,
    /// When the node started serving it, if it did.
    pub serving: Option<u64>,
}

impl History {
    /// Active intervals of `app`, sorted by start.
    pub fn intervals(&self, app: &str) -> Vec<Interval> {
        let mut by_node: BTreeMap<&str, Vec<&RoleEvent>> = BTreeMap::new();
        for e in self.roles.iter().filter(|e| e.app == app) {
            by_node.entry(e.node.as_str()).or_default().push(e);
        }
        let mut out = Vec::new();
        for (node, mut events) in by_node {
            events.sort_by_key(|e| e.t_ns);
            let kills = self.kills.get(node).cloned().unwrap_or_default();
            let mut open: Option<(u64, Option<u64>)> = None;
            for e in events {
                if let Some((start, epoch)) = open {
                    if e.role != Role::Active || e.epoch != epoch {
                        let end = e.valid_until_ns.map_or(e.t_ns, |v| v.min(e.t_ns));
                        out.push(Interval {
                            node: node.to_owned(),
                            epoch,
                            start,
                            end: kill_before(&kills, start, end),
                        });
                        open = None;
                    }
                }
                if e.role == Role::Active && open.is_none() {
                    open = Some((e.t_ns, e.epoch));
                }
            }
            if let Some((start, epoch)) = open {
                out.push(Interval {
                    node: node.to_owned(),
                    epoch,
                    start,
                    end: kill_before(&kills, start, u64::MAX),
                });
            }
        }
        out.sort_by_key(|i| i.start);
        out
    }

    /// Checks invariants 1, 3 and 4 for `app`; the error lists the breach.
    pub fn check(&self, app: &str) -> Result<(), String> {
        let intervals = self.intervals(app);
        for (i, a) in intervals.iter().enumerate() {
            for b in &intervals[i + 1..] {
                if a.node != b.node && a.start < b.end && b.start < a.end {
                    return Err(format!("two actives of `{app}` overlap: {a:?} and {b:?}"));
                }
            }
        }
        for pair in intervals.windows(2) {
            if let (Some(x), Some(y)) = (pair[0].epoch, pair[1].epoch) {
                if y <= x {
                    return Err(format!(
                        "epochs of `{app}` did not increase: {:?} then {:?}",
                        pair[0], pair[1]
                    ));
                }
            }
        }
        for (node, tick_app, t) in self.ticks.iter().filter(|(_, a, _)| a == app) {
            let inside = intervals
                .iter()
                .any(|i| &i.node == node && i.start <= *t && *t <= i.end);
            if !inside {
                return Err(format!(
                    "node {node} acted for `{tick_app}` at {t} outside its active intervals"
                ));
            }
        }
        Ok(())
    }
}

impl History {
    /// Ownership intervals of `app`, per partition, sorted by start.
    pub fn partition_intervals(&self, app: &str) -> BTreeMap<u32, Vec<PartitionInterval>> {
        let mut by_node: BTreeMap<&str, Vec<&OwnershipEvent>> = BTreeMap::new();
        for e in self.ownership.iter().filter(|e| e.app == app) {
            by_node.entry(e.node.as_str()).or_default().push(e);
        }
        let mut out: BTreeMap<u32, Vec<PartitionInterval>> = BTreeMap::new();
        for (node, mut events) in by_node {
            events.sort_by_key(|e| e.t_ns);
            let kills = self.kills.get(node).cloned().unwrap_or_default();
            let mut open: BTreeMap<u32, PartitionInterval> = BTreeMap::new();
            for e in events {
                for (i, &p) in e.partitions.iter().enumerate() {
                    match e.change {
                        OwnershipChange::Own => {
                            // A kill between an earlier own and this one
                            // closed the earlier interval.
                            if let Some(mut prev) = open.remove(&p) {
                                prev.end = kill_before(&kills, prev.start, e.t_ns);
                                out.entry(p).or_default().push(prev);
                            }
                            open.insert(
                                p,
                                PartitionInterval {
                                    node: node.to_owned(),
                                    partition: p,
                                    token: e.tokens.get(i).copied(),
                                    start: e.t_ns,
                                    end: u64::MAX,
                                    serving: None,
                                },
                            );
                        }
                        OwnershipChange::Serve => {
                            if let Some(iv) = open.get_mut(&p) {
                                iv.serving.get_or_insert(e.t_ns);
                            }
                        }
                        OwnershipChange::Release => {
                            if let Some(mut iv) = open.remove(&p) {
                                let end = e.valid_until_ns.map_or(e.t_ns, |v| v.min(e.t_ns));
                                iv.end = kill_before(&kills, iv.start, end);
                                out.entry(p).or_default().push(iv);
                            }
                        }
                    }
                }
            }
            for (p, mut iv) in open {
                iv.end = kill_before(&kills, iv.start, u64::MAX);
                out.entry(p).or_default().push(iv);
            }
        }
        for intervals in out.values_mut() {
            intervals.sort_by_key(|i| (i.start, i.end));
        }
        out
    }

    /// Pairs of intervals of one partition of `app` on different nodes that
    /// overlap (each pair is an instant with two owners).
    pub fn double_owners(&self, app: &str) -> Vec<(PartitionInterval, PartitionInterval)> {
        let mut found = Vec::new();
        for intervals in self.partition_intervals(app).values() {
            for (i, a) in intervals.iter().enumerate() {
                for b in &intervals[i + 1..] {
                    if a.node != b.node && a.start < b.end && b.start < a.end {
                        found.push((a.clone(), b.clone()));
                    }
                }
            }
        }
        found
    }

    /// Checks invariants 2 and 3 for ring app `app`; the error names the
    /// breach.
    pub fn check_partitions(&self, app: &str) -> Result<(), String> {
        if let Some((a, b)) = self.double_owners(app).into_iter().next() {
            return Err(format!(
                "partition {} of `{app}` had two owners: {a:?} and {b:?}",
                a.partition
            ));
        }
        for intervals in self.partition_intervals(app).values() {
            let mut last: Option<&PartitionInterval> = None;
            for iv in intervals {
                if let (Some(prev), Some(token)) =
                    (last.and_then(|l| l.token.map(|t| (l, t))), iv.token)
                {
                    if token <= prev.1 {
                        return Err(format!(
                            "fencing tokens of partition {} of `{app}` did not increase: {:?} then {iv:?}",
                            iv.partition, prev.0
                        ));
                    }
                }
                if iv.token.is_some() {
                    last = Some(iv);
                }
            }
        }
        Ok(())
    }

    /// Who owns each partition of `app` now (intervals still open), as the
    /// nodes reported it. A paused node still appears: it cannot report.
    pub fn owners_now(&self, app: &str) -> BTreeMap<u32, BTreeSet<String>> {
        self.current(app, false)
    }

    /// Who serves each partition of `app` now (owned, and subscribed).
    pub fn serving_now(&self, app: &str) -> BTreeMap<u32, BTreeSet<String>> {
        self.current(app, true)
    }

    fn current(&self, app: &str, serving: bool) -> BTreeMap<u32, BTreeSet<String>> {
        let mut out: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for (p, intervals) in self.partition_intervals(app) {
            for iv in intervals {
                if iv.end == u64::MAX && (!serving || iv.serving.is_some()) {
                    out.entry(p).or_default().insert(iv.node);
                }
            }
        }
        out
    }
}

fn kill_before(kills: &[u64], start: u64, end: u64) -> u64 {
    kills
        .iter()
        .copied()
        .filter(|k| *k >= start && *k < end)
        .min()
        .unwrap_or(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        node: &str,
        role: Role,
        epoch: Option<u64>,
        t: u64,
        valid_until: Option<u64>,
    ) -> RoleEvent {
        RoleEvent {
            node: node.into(),
            app: "a".into(),
            role,
            epoch,
            t_ns: t,
            valid_until_ns: valid_until,
        }
    }

    #[test]
    fn detects_overlap() {
        let h = History {
            roles: vec![
                ev("n1", Role::Active, Some(1), 10, None),
                ev("n2", Role::Active, Some(5), 20, None),
            ],
            ..Default::default()
        };
        assert!(h.check("a").is_err());
    }

    #[test]
    fn kill_and_late_demotion_end_intervals() {
        let mut h = History {
            roles: vec![
                ev("n1", Role::Active, Some(1), 10, None),
                ev("n2", Role::Active, Some(5), 40, None),
                // n1 was paused; it noticed at 60 that validity ended at 30.
                ev("n1", Role::Standby, None, 60, Some(30)),
            ],
            ..Default::default()
        };
        assert!(h.check("a").is_ok());
        h.ticks.push(("n1".into(), "a".into(), 35));
        assert!(
            h.check("a").is_err(),
            "a tick after the deadline is a breach"
        );
        let h = History {
            roles: vec![
                ev("n1", Role::Active, Some(1), 10, None),
                ev("n2", Role::Active, Some(5), 40, None),
            ],
            kills: [("n1".to_owned(), vec![20])].into_iter().collect(),
            ..Default::default()
        };
        assert!(h.check("a").is_ok());
    }

    fn own(
        node: &str,
        change: OwnershipChange,
        parts: &[u32],
        tokens: &[u64],
        t: u64,
    ) -> OwnershipEvent {
        OwnershipEvent {
            node: node.into(),
            app: "r".into(),
            change,
            partitions: parts.to_vec(),
            tokens: tokens.to_vec(),
            t_ns: t,
            valid_until_ns: None,
        }
    }

    #[test]
    fn partition_hand_off_kill_and_late_release() {
        use OwnershipChange::{Own, Release, Serve};
        let mut h = History {
            ownership: vec![
                own("a", Own, &[1, 2], &[10, 11], 10),
                own("a", Serve, &[1, 2], &[], 12),
                own("a", Release, &[1], &[], 20),
                own("b", Own, &[1], &[15], 21),
                own("b", Serve, &[1], &[], 22),
            ],
            ..Default::default()
        };
        assert!(h.check_partitions("r").is_ok());
        assert_eq!(h.serving_now("r").get(&1).map(|s| s.len()), Some(1));
        assert!(h.owners_now("r")[&2].contains("a"));
        // c takes 2 while a still owns it: a breach.
        h.ownership.push(own("c", Own, &[2], &[30], 30));
        assert!(h
            .check_partitions("r")
            .expect_err("overlap")
            .contains("two owners"));
        assert_eq!(h.double_owners("r").len(), 1);
        // ...unless a was killed before, or its validity had ended.
        h.kills.insert("a".into(), vec![25]);
        assert!(h.check_partitions("r").is_ok());
        h.kills.clear();
        let mut late = own("a", Release, &[2], &[], 40);
        late.valid_until_ns = Some(26);
        h.ownership.push(late);
        assert!(h.check_partitions("r").is_ok());
        // Tokens must grow from one owner to the next.
        h.ownership.push(own("c", Release, &[2], &[], 50));
        h.ownership.push(own("b", Own, &[2], &[29], 60));
        assert!(h
            .check_partitions("r")
            .expect_err("token")
            .contains("fencing tokens"));
    }

    #[test]
    fn detects_epoch_regression() {
        let h = History {
            roles: vec![
                ev("n1", Role::Active, Some(7), 10, None),
                ev("n1", Role::Standby, None, 20, None),
                ev("n2", Role::Active, Some(5), 30, None),
            ],
            ..Default::default()
        };
        assert!(h.check("a").expect_err("regression").contains("epochs"));
    }
}
