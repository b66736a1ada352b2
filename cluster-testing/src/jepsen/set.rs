//! The set checker: no acknowledged add is lost.
//!
//! Guarantees: [`check`] reports every element whose `add` was acknowledged
//! ([`Outcome::Ok`]) but is missing from the final read, and every element
//! in the final read that no client ever tried to add. Adds that failed or
//! are indeterminate may be present or absent.

use std::collections::BTreeSet;

use serde::Serialize;

use super::history::{Call, History, Outcome};

/// What the set checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetReport {
    /// Acknowledged adds.
    pub acknowledged: usize,
    /// Elements in the final read.
    pub final_size: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: Vec<u64>,
    /// Elements read that no one added.
    pub unexpected: Vec<u64>,
    /// Indeterminate adds that turned out to have happened.
    pub recovered: usize,
}

impl SetReport {
    /// Lost plus unexpected elements.
    pub fn violations(&self) -> usize {
        self.lost.len() + self.unexpected.len()
    }
}

/// Checks the adds of `history` against `final_read` (the set as read after
/// the faults healed).
pub fn check(history: &History, final_read: &BTreeSet<u64>) -> SetReport {
    let mut acked = BTreeSet::new();
    let mut attempted = BTreeSet::new();
    let mut maybe = BTreeSet::new();
    for op in &history.ops {
        if let Call::Add { element } = op.call {
            attempted.insert(element);
            match op.outcome {
                Outcome::Ok { .. } => {
                    acked.insert(element);
                }
                Outcome::Indeterminate { .. } => {
                    maybe.insert(element);
                }
                Outcome::Failed { .. } => {}
            }
        }
    }
    SetReport {
        acknowledged: acked.len(),
        final_size: final_read.len(),
        lost: acked.difference(final_read).copied().collect(),
        unexpected: final_read.difference(&attempted).copied().collect(),
        recovered: maybe
            .iter()
            .filter(|e| !acked.contains(*e) && final_read.contains(*e))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jepsen::history::Op;

    fn add(element: u64, outcome: Outcome) -> Op {
        Op {
            id: 0,
            process: 0,
            key: "set".into(),
            call: Call::Add { element },
            invoke_ns: element * 10,
            complete_ns: element * 10 + 5,
            outcome,
            node: None,
            epoch: None,
        }
    }

    fn history() -> History {
        let mut h = History::default();
        h.push(add(
            1,
            Outcome::Ok {
                value: serde_json::Value::Null,
            },
        ));
        h.push(add(
            2,
            Outcome::Ok {
                value: serde_json::Value::Null,
            },
        ));
        h.push(add(
            3,
            Outcome::Indeterminate {
                reason: "timeout".into(),
            },
        ));
        h.push(add(
            4,
            Outcome::Failed {
                reason: "no responders".into(),
            },
        ));
        h
    }

    #[test]
    fn all_acknowledged_present_passes() {
        let r = check(&history(), &[1, 2, 3].into_iter().collect());
        assert_eq!(r.violations(), 0, "{r:?}");
        assert_eq!(r.recovered, 1);
        let r = check(&history(), &[1, 2].into_iter().collect());
        assert_eq!(r.violations(), 0, "{r:?}");
    }

    #[test]
    fn lost_and_invented_elements_are_reported() {
        let r = check(&history(), &[1, 7].into_iter().collect());
        assert_eq!(r.lost, vec![2]);
        assert_eq!(r.unexpected, vec![7]);
        assert_eq!(r.violations(), 2);
    }
}
