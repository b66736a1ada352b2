//! An exact, near-linear linearizability check for a counter whose
//! operations are `incr(1)` (returning the new value), `incr(0)` and `read`
//! (returning the current value) — the quickstart counter's workload.
//!
//! The general search ([`super::linearizable`]) is exponential in the
//! number of concurrent operations and gives up (`unknown`) on long, busy
//! histories. This one decides the same question in O(n log n) and is used
//! whenever a history has only these calls.
//!
//! Why it is exact. In any linearization the count steps from `v − 1` to
//! `v` at one instant `s_v`, with `s_1 < s_2 < …`. The step to `v` is made
//! by the acknowledged `incr(1)` that returned `v`, so `s_v` lies in that
//! operation's `[invoke, complete]` — or, when no acknowledged operation
//! returned `v`, by an indeterminate `incr(1)` (timed out: it may have taken
//! effect at any instant after its invocation). A read that returned `r`
//! needs an instant in its `[invoke, complete]` at which the count is `r`:
//! `s_r ≤ complete` and `s_{r+1} > invoke`. Every constraint is a lower or
//! an upper bound on some `s_v`, so choosing each `s_v` as early as the
//! lower bounds allow (in increasing `v`) satisfies every upper bound that
//! any choice could; and giving the missing values the indeterminate
//! operations invoked earliest, in order, is never worse than any other
//! assignment. So the history is linearizable iff this greedy choice
//! violates no upper bound.

use std::collections::BTreeMap;

use super::history::{Call, History, Op, Outcome};
use super::linearizable::{Report, Verdict};

/// Whether every operation of `history` is one this checker decides
/// (`incr` by 0 or 1, `read`).
pub fn applies(history: &History) -> bool {
    history
        .ops
        .iter()
        .all(|op| matches!(op.call, Call::Read | Call::Incr { by: 0 | 1 }))
}

/// Checks a counter history (see the module docs), key by key; the report
/// has the same shape as [`super::linearizable::check`]'s.
pub fn check(history: &History) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report {
        model: "counter",
        keys: BTreeMap::new(),
        steps: 0,
    };
    for (key, ops) in by_key {
        report.steps += ops.len() as u64;
        report.keys.insert(key.to_owned(), check_key(&ops));
    }
    report
}

/// Bounds on one step instant `s_v`.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    lower: u64,
    upper: u64,
    /// The operation that imposes `upper` (for the report).
    upper_by: Option<usize>,
}

fn check_key(ops: &[&Op]) -> Verdict {
    let value = |op: &Op| match &op.outcome {
        Outcome::Ok { value } => value.as_u64(),
        _ => None,
    };
    let is_read = |op: &Op| matches!(op.call, Call::Read | Call::Incr { by: 0 });
    let definite = ops.iter().filter(|op| op.outcome.is_ok()).count();
    let stuck = |op: &Op, placed: usize| Verdict::NotLinearizable {
        stuck_at: Box::new(op.clone()),
        placed,
        definite,
    };

    // The highest value any acknowledged operation saw.
    let mut top = 0u64;
    for op in ops {
        match value(op) {
            Some(v) => top = top.max(v),
            None if op.outcome.is_ok() => return stuck(op, 0), // not a count
            None => {}
        }
    }
    let Ok(top_len) = usize::try_from(top) else {
        return Verdict::Unknown { steps: 0 };
    };
    // bounds[v] for v in 1..=top (index 0 unused).
    let mut bounds = vec![
        Bounds {
            lower: 0,
            upper: u64::MAX,
            upper_by: None,
        };
        top_len + 2
    ];
    let mut made_by: Vec<Option<&Op>> = vec![None; top_len + 1];
    for op in ops {
        let Some(v) = value(op) else { continue };
        let v = v as usize;
        if is_read(op) {
            // s_v ≤ complete (the count reached v before the read ended) …
            if v > 0 && op.complete_ns < bounds[v].upper {
                bounds[v].upper = op.complete_ns;
                bounds[v].upper_by = Some(op.id);
            }
            // … and s_{v+1} > invoke (it had not moved on when it began).
            bounds[v + 1].lower = bounds[v + 1].lower.max(op.invoke_ns.saturating_add(1));
        } else {
            if v == 0 {
                return stuck(op, 0); // incr(1) cannot return 0
            }
            if let Some(other) = made_by[v] {
                // Two acknowledged increments returned the same count.
                let later = if other.complete_ns > op.complete_ns {
                    other
                } else {
                    op
                };
                return stuck(later, 0);
            }
            made_by[v] = Some(op);
            bounds[v].lower = bounds[v].lower.max(op.invoke_ns);
            if op.complete_ns < bounds[v].upper {
                bounds[v].upper = op.complete_ns;
                bounds[v].upper_by = Some(op.id);
            }
        }
    }
    // Values no acknowledged increment returned: made by indeterminate
    // increments, earliest invoked first.
    let mut pending: Vec<u64> = ops
        .iter()
        .filter(|op| matches!(op.call, Call::Incr { by: 1 }))
        .filter(|op| matches!(op.outcome, Outcome::Indeterminate { .. }))
        .map(|op| op.invoke_ns)
        .collect();
    pending.sort_unstable();
    let mut pending = pending.into_iter();
    let mut previous = 0u64;
    for v in 1..=top_len {
        if made_by[v].is_none() {
            match pending.next() {
                Some(invoke) => bounds[v].lower = bounds[v].lower.max(invoke),
                None => {
                    // Nobody could have made this count.
                    let witness = ops
                        .iter()
                        .filter(|op| value(op).is_some_and(|x| x as usize >= v))
                        .min_by_key(|op| op.complete_ns)
                        .copied();
                    return match witness {
                        Some(op) => stuck(op, v - 1),
                        None => Verdict::Unknown { steps: 0 },
                    };
                }
            }
        }
        let s = bounds[v].lower.max(if v == 1 { 0 } else { previous + 1 });
        if s > bounds[v].upper {
            let by = bounds[v]
                .upper_by
                .and_then(|id| ops.iter().find(|op| op.id == id).copied());
            return match by {
                Some(op) => stuck(op, v - 1),
                None => Verdict::Unknown { steps: 0 },
            };
        }
        previous = s;
    }
    // Reads of the final value need only s_top ≤ complete (checked) and
    // that nothing moved on, which holds: no higher value was observed.
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: usize, by: u64, t: (u64, u64), outcome: Outcome) -> Op {
        Op {
            id,
            process: id as u32,
            key: "c".into(),
            call: Call::Incr { by },
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome,
            node: None,
            epoch: None,
        }
    }
    fn ok(v: u64) -> Outcome {
        Outcome::Ok { value: v.into() }
    }
    fn unknown() -> Outcome {
        Outcome::Indeterminate {
            reason: "timeout".into(),
        }
    }
    fn verdict(ops: Vec<Op>) -> Verdict {
        let h = History { ops };
        assert!(applies(&h));
        check(&h).keys.remove("c").expect("key")
    }
    fn agrees_with_search(ops: Vec<Op>) {
        let h = History { ops };
        let fast = check(&h);
        let slow = super::super::linearizable::check(
            &super::super::linearizable::CounterModel,
            &h,
            super::super::linearizable::Limits::default(),
        );
        assert_eq!(
            fast.is_linearizable(),
            slow.is_linearizable(),
            "{fast:?} vs {slow:?}"
        );
    }

    #[test]
    fn sequential_and_concurrent_pass() {
        let v = verdict(vec![
            op(0, 1, (0, 10), ok(1)),
            op(1, 1, (11, 20), ok(2)),
            op(2, 0, (21, 30), ok(2)),
            // Concurrent: either order.
            op(3, 1, (31, 50), ok(4)),
            op(4, 1, (32, 40), ok(3)),
        ]);
        assert_eq!(v, Verdict::Linearizable);
    }

    #[test]
    fn duplicate_acknowledged_count_is_rejected() {
        let v = verdict(vec![op(0, 1, (0, 10), ok(1)), op(1, 1, (11, 20), ok(1))]);
        assert!(matches!(v, Verdict::NotLinearizable { .. }), "{v:?}");
    }

    #[test]
    fn a_lost_increment_shows_as_a_stale_count() {
        // incr → 1 completes, then a later incr returns 1 again is the
        // duplicate case; here a later read sees 0.
        let v = verdict(vec![op(0, 1, (0, 10), ok(1)), op(1, 0, (11, 20), ok(0))]);
        assert!(matches!(v, Verdict::NotLinearizable { .. }), "{v:?}");
    }

    #[test]
    fn a_count_nobody_made_is_rejected_and_a_timeout_may_make_it() {
        let gap = vec![op(0, 1, (0, 10), ok(1)), op(1, 1, (11, 20), ok(3))];
        assert!(matches!(
            verdict(gap.clone()),
            Verdict::NotLinearizable { .. }
        ));
        let mut filled = gap;
        filled.push(op(2, 1, (5, 6), unknown()));
        assert_eq!(verdict(filled), Verdict::Linearizable);
        // A timeout invoked after the gap closed cannot fill it.
        let late = vec![
            op(0, 1, (0, 10), ok(1)),
            op(1, 1, (11, 20), ok(3)),
            op(2, 1, (25, 26), unknown()),
        ];
        assert!(matches!(verdict(late), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn real_time_order_is_enforced() {
        // 2 completed before 1 was invoked.
        let v = verdict(vec![op(0, 1, (0, 10), ok(2)), op(1, 1, (11, 20), ok(1))]);
        assert!(matches!(v, Verdict::NotLinearizable { .. }), "{v:?}");
    }

    #[test]
    fn agrees_with_the_general_search_on_small_histories() {
        // Every combination of three overlapping-or-not ops with values.
        let shapes = [(0, 10), (5, 15), (11, 20), (16, 30)];
        let outcomes = [ok(0), ok(1), ok(2), ok(3), unknown()];
        let mut n = 0;
        for (i, a) in shapes.iter().enumerate() {
            for b in &shapes[i..] {
                for oa in &outcomes {
                    for ob in &outcomes {
                        for (by_a, by_b) in [(1, 1), (1, 0), (0, 1)] {
                            let ops = vec![
                                op(0, 1, (1, 2), ok(1)),
                                op(1, by_a, *a, oa.clone()),
                                op(2, by_b, *b, ob.clone()),
                            ];
                            agrees_with_search(ops);
                            n += 1;
                        }
                    }
                }
            }
        }
        assert!(n > 100);
    }
}
