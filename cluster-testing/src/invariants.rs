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

use std::collections::BTreeMap;

use cluster_runtime::app::Role;
use cluster_runtime::instance::RoleEvent;

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
