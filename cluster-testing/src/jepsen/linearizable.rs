//! Linearizability checking of client histories (Wing–Gong search with
//! Lowe's memoisation, as in Porcupine).
//!
//! Guarantees:
//! - [`check`] answers [`Verdict::Linearizable`] only if there is a total
//!   order of the operations, consistent with real time (an operation that
//!   completed before another was invoked comes first) and with the
//!   sequential [`Model`], in which every [`Outcome::Ok`] operation returns
//!   what it returned.
//! - [`Outcome::Failed`] operations are left out (they did not happen).
//!   [`Outcome::Indeterminate`] operations may take effect at any point after
//!   their invocation, or never; their output is unconstrained.
//! - [`Verdict::NotLinearizable`] is exhaustive: every order was tried (up
//!   to states proven equivalent). It names the first operation, in return
//!   order, that no order could place, and the longest prefix that could be
//!   placed.
//! - The search is bounded ([`Limits::max_steps`]). When the bound is hit
//!   the answer is [`Verdict::Unknown`], never a silent pass: callers must
//!   treat it as a failure to verify.
//!
//! Speed: operations on different keys are checked independently (both
//! models are per-key objects). Within a key the memo key is (definite
//! operations placed, how many indeterminate operations of each identical
//! call were placed, model state): indeterminate operations with the same
//! call are interchangeable once invoked, so a mostly sequential history of
//! `incr(1)` with timeouts stays near linear. Register values that no other
//! operation mentions are all mapped to one placeholder value: no operation
//! can tell them apart.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

use serde::Serialize;

use super::history::{Call, History, Op, Outcome};

/// A sequential specification.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + Debug;

    /// The model's name (for reports).
    fn name(&self) -> &'static str;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Whether operations with this call belong to this model (others are
    /// ignored).
    fn accepts(&self, call: &Call) -> bool;

    /// Whether `call` never changes the state (an indeterminate one is then
    /// dropped: it constrains nothing).
    fn is_read_only(&self, call: &Call) -> bool;

    /// Applies `call` in `state`. `output` is `Some` for an operation that
    /// returned (the result must match) and `None` for an indeterminate one
    /// (any result). `None` = not allowed in this state.
    fn step(
        &self,
        state: &Self::State,
        call: &Call,
        output: Option<&serde_json::Value>,
    ) -> Option<Self::State>;

    /// Rewrites the calls and outputs of one key's operations into an
    /// equivalent history that is cheaper to search (default: unchanged).
    fn canonicalize(&self, _ops: &mut [PreparedOp]) {}
}

/// An operation as the search sees it.
#[derive(Debug, Clone)]
pub struct PreparedOp {
    /// The id in the original history.
    pub id: usize,
    /// The call.
    pub call: Call,
    /// The output (`None` = indeterminate).
    pub output: Option<serde_json::Value>,
    /// Invocation time.
    pub invoke_ns: u64,
    /// Return time (`u64::MAX` = indeterminate).
    pub return_ns: u64,
}

/// A register of `i64` (initially empty): `read` returns its value (`null`
/// when empty), `write(v)` sets it, `cas(from, to)` sets it to `to` and
/// returns `true` iff it held `from`, else returns `false`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterModel;

/// The value a [`RegisterModel`] uses for written values no other operation
/// mentions.
const UNMENTIONED: i64 = i64::MIN;

impl Model for RegisterModel {
    type State = Option<i64>;

    fn name(&self) -> &'static str {
        "register"
    }

    fn init(&self) -> Option<i64> {
        None
    }

    fn accepts(&self, call: &Call) -> bool {
        matches!(call, Call::Read | Call::Write { .. } | Call::Cas { .. })
    }

    fn is_read_only(&self, call: &Call) -> bool {
        matches!(call, Call::Read)
    }

    fn step(
        &self,
        state: &Option<i64>,
        call: &Call,
        output: Option<&serde_json::Value>,
    ) -> Option<Option<i64>> {
        match call {
            Call::Read => {
                let out = output?;
                let read = if out.is_null() { None } else { out.as_i64() };
                if out.is_null() || read.is_some() {
                    (read == *state).then_some(*state)
                } else {
                    None
                }
            }
            Call::Write { value } => Some(Some(*value)),
            Call::Cas { from, to } => {
                let holds = *state == Some(*from);
                match output.map(serde_json::Value::as_bool) {
                    None => Some(if holds { Some(*to) } else { *state }),
                    Some(Some(true)) => holds.then_some(Some(*to)),
                    Some(Some(false)) => (!holds).then_some(*state),
                    Some(None) => None,
                }
            }
            _ => None,
        }
    }

    fn canonicalize(&self, ops: &mut [PreparedOp]) {
        // A value matters only through equality with values other
        // operations mention; values written but never mentioned elsewhere
        // are indistinguishable from each other.
        let mut mentions: HashMap<i64, usize> = HashMap::new();
        for op in ops.iter() {
            match &op.call {
                Call::Write { value } => *mentions.entry(*value).or_default() += 0,
                Call::Cas { from, to } => {
                    *mentions.entry(*from).or_default() += 1;
                    *mentions.entry(*to).or_default() += 1;
                }
                _ => {}
            }
            if let (Call::Read, Some(v)) = (&op.call, op.output.as_ref().and_then(|o| o.as_i64())) {
                *mentions.entry(v).or_default() += 1;
            }
        }
        for op in ops.iter_mut() {
            if let Call::Write { value } = &mut op.call {
                if mentions.get(value).copied().unwrap_or(0) == 0 {
                    *value = UNMENTIONED;
                }
            }
        }
    }
}

/// A counter from 0: `incr(by)` adds `by` and returns the new value; `read`
/// returns the value.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterModel;

impl Model for CounterModel {
    type State = u64;

    fn name(&self) -> &'static str {
        "counter"
    }

    fn init(&self) -> u64 {
        0
    }

    fn accepts(&self, call: &Call) -> bool {
        matches!(call, Call::Read | Call::Incr { .. })
    }

    fn is_read_only(&self, call: &Call) -> bool {
        matches!(call, Call::Read | Call::Incr { by: 0 })
    }

    fn step(&self, state: &u64, call: &Call, output: Option<&serde_json::Value>) -> Option<u64> {
        match call {
            Call::Read => (output?.as_u64()? == *state).then_some(*state),
            Call::Incr { by } => {
                let next = state.checked_add(*by)?;
                match output {
                    None => Some(next),
                    Some(v) => (v.as_u64()? == next).then_some(next),
                }
            }
            _ => None,
        }
    }
}

/// Bounds of the search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Search steps per key before giving up with [`Verdict::Unknown`].
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 20_000_000,
        }
    }
}

/// The answer for one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// A valid order exists.
    Linearizable,
    /// No valid order exists.
    NotLinearizable {
        /// The first operation (in return order) no order could place.
        stuck_at: Box<Op>,
        /// The most definite operations any order placed.
        placed: usize,
        /// Definite operations of the key.
        definite: usize,
    },
    /// The search hit its bound.
    Unknown {
        /// Steps taken.
        steps: u64,
    },
}

/// Per-key verdicts of one history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The model used.
    pub model: &'static str,
    /// Verdict per key.
    pub keys: BTreeMap<String, Verdict>,
    /// Search steps over all keys.
    pub steps: u64,
}

impl Report {
    /// Keys that are not linearizable.
    pub fn violations(&self) -> usize {
        self.keys
            .values()
            .filter(|v| matches!(v, Verdict::NotLinearizable { .. }))
            .count()
    }

    /// Keys whose search was cut off.
    pub fn unknown(&self) -> usize {
        self.keys
            .values()
            .filter(|v| matches!(v, Verdict::Unknown { .. }))
            .count()
    }

    /// True only if every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(|v| *v == Verdict::Linearizable)
    }
}

/// Checks `history` against `model`, key by key.
pub fn check<M: Model>(model: &M, history: &History, limits: Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        if model.accepts(&op.call) {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut report = Report {
        model: model.name(),
        keys: BTreeMap::new(),
        steps: 0,
    };
    for (key, ops) in by_key {
        let (verdict, steps) = check_key(model, &ops, limits);
        report.steps += steps;
        report.keys.insert(key.to_owned(), verdict);
    }
    report
}

/// One event of the search list.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    time: u64,
}

const NIL: usize = usize::MAX;

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash2<T: Hash>(v: &T) -> (u64, u64) {
    let mut a = DefaultHasher::new();
    0u8.hash(&mut a);
    v.hash(&mut a);
    let mut b = DefaultHasher::new();
    1u8.hash(&mut b);
    v.hash(&mut b);
    (a.finish(), b.finish())
}

fn check_key<M: Model>(model: &M, ops: &[&Op], limits: Limits) -> (Verdict, u64) {
    let mut prepared: Vec<PreparedOp> = ops
        .iter()
        .filter_map(|op| {
            let output = match &op.outcome {
                Outcome::Ok { value } => Some(value.clone()),
                Outcome::Failed { .. } => return None,
                Outcome::Indeterminate { .. } if model.is_read_only(&op.call) => return None,
                Outcome::Indeterminate { .. } => None,
            };
            let return_ns = if output.is_some() {
                op.complete_ns.max(op.invoke_ns)
            } else {
                u64::MAX
            };
            Some(PreparedOp {
                id: op.id,
                call: op.call.clone(),
                output,
                invoke_ns: op.invoke_ns,
                return_ns,
            })
        })
        .collect();
    model.canonicalize(&mut prepared);
    let n = prepared.len();
    let definite_total = prepared.iter().filter(|p| p.output.is_some()).count();

    // Zobrist-style incremental hashes: definite ops by id, indeterminate
    // ops by (class of identical calls, how many of the class are placed).
    let mut class_of: Vec<usize> = vec![NIL; n];
    let mut classes: HashMap<&Call, usize> = HashMap::new();
    for (i, p) in prepared.iter().enumerate() {
        if p.output.is_none() {
            let next = classes.len();
            class_of[i] = *classes.entry(&p.call).or_insert(next);
        }
    }
    let zob = |i: usize, salt: u64| mix(mix(i as u64 ^ salt.rotate_left(17)) ^ salt);
    let mut class_count: Vec<u64> = vec![0; classes.len()];

    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n);
    for (i, p) in prepared.iter().enumerate() {
        entries.push(Entry {
            op: i,
            is_call: true,
            time: p.invoke_ns,
        });
        entries.push(Entry {
            op: i,
            is_call: false,
            time: p.return_ns,
        });
    }
    // Calls before returns at equal times: touching operations count as
    // concurrent (the permissive reading; never a false alarm).
    entries.sort_by_key(|e| (e.time, !e.is_call, e.op));
    let m = entries.len();
    let head = m;
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    let mut ret_of = vec![NIL; n];
    let mut last = head;
    for (i, e) in entries.iter().enumerate() {
        next[last] = i;
        prev[i] = last;
        last = i;
        if !e.is_call {
            ret_of[e.op] = i;
        }
    }

    let mut state = model.init();
    let mut h = (0u64, 0u64);
    let mut stack: Vec<(usize, M::State, (u64, u64))> = Vec::new();
    let mut cache: HashSet<(u64, u64)> = HashSet::new();
    let mut remaining = definite_total;
    let mut best = 0usize;
    let mut stuck: Option<usize> = None;
    let mut steps = 0u64;
    let mut entry = next[head];

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != NIL {
            prev[nx] = i;
        }
    };

    loop {
        if remaining == 0 {
            return (Verdict::Linearizable, steps);
        }
        steps += 1;
        if steps > limits.max_steps {
            return (Verdict::Unknown { steps }, steps);
        }
        let is_call = entry != NIL && entries[entry].is_call;
        if is_call {
            let i = entries[entry].op;
            let p = &prepared[i];
            if let Some(new_state) = model.step(&state, &p.call, p.output.as_ref()) {
                let (d1, d2) = if p.output.is_some() {
                    (zob(i, 1), zob(i, 2))
                } else {
                    let c = class_of[i];
                    let k = class_count[c];
                    // Replace the (class, k) term by (class, k + 1).
                    (
                        zob(c, 3 ^ (k << 8)) ^ zob(c, 3 ^ ((k + 1) << 8)),
                        zob(c, 4 ^ (k << 8)) ^ zob(c, 4 ^ ((k + 1) << 8)),
                    )
                };
                let nh = (h.0 ^ d1, h.1 ^ d2);
                let sh = hash2(&new_state);
                if cache.insert((nh.0 ^ sh.0, nh.1 ^ sh.1.rotate_left(1))) {
                    stack.push((entry, state, h));
                    state = new_state;
                    h = nh;
                    if p.output.is_some() {
                        remaining -= 1;
                    } else {
                        class_count[class_of[i]] += 1;
                    }
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_of[i]);
                    let placed = definite_total - remaining;
                    if placed > best {
                        best = placed;
                        stuck = None;
                    }
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return (or the end): the op it closes was not placed in
            // this order. Undo the latest placement.
            if entry != NIL && definite_total - remaining == best && stuck.is_none() {
                stuck = Some(entries[entry].op);
            }
            let Some((call_entry, old_state, old_h)) = stack.pop() else {
                let stuck_op = stuck
                    .and_then(|i| ops.iter().find(|o| o.id == prepared[i].id))
                    .map(|o| Box::new((*o).clone()));
                return match stuck_op {
                    Some(stuck_at) => (
                        Verdict::NotLinearizable {
                            stuck_at,
                            placed: best,
                            definite: definite_total,
                        },
                        steps,
                    ),
                    // Cannot happen (a failed search always meets a
                    // return); reported as unknown rather than as a pass.
                    None => (Verdict::Unknown { steps }, steps),
                };
            };
            let i = entries[call_entry].op;
            if prepared[i].output.is_some() {
                remaining += 1;
            } else {
                class_count[class_of[i]] -= 1;
            }
            state = old_state;
            h = old_h;
            relink(&mut next, &mut prev, ret_of[i]);
            relink(&mut next, &mut prev, call_entry);
            entry = next[call_entry];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(process: u32, call: Call, t: (u64, u64), outcome: Outcome) -> Op {
        Op {
            id: 0,
            process,
            key: "k".into(),
            call,
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome,
            node: None,
            epoch: None,
        }
    }
    fn ok(v: serde_json::Value) -> Outcome {
        Outcome::Ok { value: v }
    }
    fn unknown() -> Outcome {
        Outcome::Indeterminate {
            reason: "timeout".into(),
        }
    }
    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "no responders".into(),
        }
    }
    fn history(ops: Vec<Op>) -> History {
        let mut h = History::default();
        for o in ops {
            h.push(o);
        }
        h
    }
    fn reg(ops: Vec<Op>) -> Report {
        check(&RegisterModel, &history(ops), Limits::default())
    }
    fn ctr(ops: Vec<Op>) -> Report {
        check(&CounterModel, &history(ops), Limits::default())
    }
    fn w(v: i64) -> Call {
        Call::Write { value: v }
    }
    fn incr() -> Call {
        Call::Incr { by: 1 }
    }

    #[test]
    fn register_sequential_and_concurrent_pass() {
        let r = reg(vec![
            op(0, Call::Read, (0, 1), ok(json!(null))),
            op(0, w(1), (2, 3), ok(json!(null))),
            op(0, Call::Read, (4, 5), ok(json!(1))),
            // Concurrent writes 2 and 3; reads may see either order.
            op(1, w(2), (6, 10), ok(json!(null))),
            op(2, w(3), (7, 11), ok(json!(null))),
            op(3, Call::Read, (8, 9), ok(json!(2))),
            op(0, Call::Read, (12, 13), ok(json!(3))),
            op(0, Call::Cas { from: 3, to: 4 }, (14, 15), ok(json!(true))),
            op(0, Call::Cas { from: 3, to: 5 }, (16, 17), ok(json!(false))),
            op(0, Call::Read, (18, 19), ok(json!(4))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
    }

    #[test]
    fn register_stale_read_after_completed_write_is_rejected() {
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(0, w(2), (2, 3), ok(json!(null))),
            op(1, Call::Read, (4, 5), ok(json!(1))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
        match &r.keys["k"] {
            Verdict::NotLinearizable { stuck_at, .. } => assert_eq!(stuck_at.call, Call::Read),
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn register_value_no_one_wrote_is_rejected() {
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, Call::Read, (2, 3), ok(json!(99))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn register_lost_update_is_rejected() {
        // Two CAS from the same value both succeed: one update is lost.
        let r = reg(vec![
            op(0, w(0), (0, 1), ok(json!(null))),
            op(1, Call::Cas { from: 0, to: 1 }, (2, 5), ok(json!(true))),
            op(2, Call::Cas { from: 0, to: 2 }, (3, 6), ok(json!(true))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn register_indeterminate_write_may_or_may_not_happen() {
        // Took effect (read later sees it) ...
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, w(2), (2, 3), unknown()),
            op(0, Call::Read, (10, 11), ok(json!(2))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
        // ... or never did.
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, w(2), (2, 3), unknown()),
            op(0, Call::Read, (10, 11), ok(json!(1))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
        // ... or took effect late, after its client gave up.
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, w(2), (2, 3), unknown()),
            op(0, Call::Read, (10, 11), ok(json!(1))),
            op(0, Call::Read, (12, 13), ok(json!(2))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
        // But not before it was invoked.
        let r = reg(vec![
            op(0, Call::Read, (0, 1), ok(json!(2))),
            op(1, w(2), (2, 3), unknown()),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn failed_ops_did_not_happen() {
        let r = reg(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, w(2), (2, 3), failed()),
            op(0, Call::Read, (10, 11), ok(json!(2))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn counter_histories() {
        // Concurrent increments may return in any order.
        let r = ctr(vec![
            op(0, incr(), (0, 10), ok(json!(2))),
            op(1, incr(), (1, 11), ok(json!(1))),
            op(2, Call::Read, (12, 13), ok(json!(2))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
        // An indeterminate increment that happened.
        let r = ctr(vec![
            op(0, incr(), (0, 1), ok(json!(1))),
            op(1, incr(), (2, 3), unknown()),
            op(0, incr(), (4, 5), ok(json!(3))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
        // One that did not.
        let r = ctr(vec![
            op(0, incr(), (0, 1), ok(json!(1))),
            op(1, incr(), (2, 3), unknown()),
            op(0, incr(), (4, 5), ok(json!(2))),
        ]);
        assert!(r.is_linearizable(), "{r:?}");
    }

    #[test]
    fn counter_two_acks_with_the_same_count_are_rejected() {
        let r = ctr(vec![
            op(0, incr(), (0, 1), ok(json!(1))),
            op(1, incr(), (2, 5), ok(json!(2))),
            op(2, incr(), (3, 6), ok(json!(2))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn counter_lost_update_is_rejected() {
        // An acknowledged increment vanished: the count went back.
        let r = ctr(vec![
            op(0, incr(), (0, 1), ok(json!(1))),
            op(0, incr(), (2, 3), ok(json!(2))),
            op(1, Call::Read, (4, 5), ok(json!(1))),
        ]);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = op(0, w(1), (0, 1), ok(json!(null)));
        a.key = "a".into();
        let mut b = op(1, Call::Read, (2, 3), ok(json!(1)));
        b.key = "b".into();
        let r = reg(vec![a, b]);
        assert_eq!(r.violations(), 1);
        assert_eq!(r.keys["a"], Verdict::Linearizable);
    }

    #[test]
    fn ten_thousand_mostly_sequential_counter_ops_are_fast() {
        // 4 clients, overlapping in pairs, with timeouts sprinkled in.
        let mut ops = Vec::new();
        let mut value = 0u64;
        let mut t = 0u64;
        for i in 0..10_000u64 {
            let process = (i % 4) as u32;
            if i % 97 == 0 {
                // A timeout that did take effect.
                value += 1;
                ops.push(op(process, incr(), (t, t + 5), unknown()));
            } else if i % 13 == 0 {
                ops.push(op(process, Call::Read, (t, t + 3), ok(json!(value))));
            } else {
                value += 1;
                ops.push(op(process, incr(), (t, t + 3), ok(json!(value))));
            }
            t += 2;
        }
        let started = std::time::Instant::now();
        let r = ctr(ops.clone());
        assert!(r.is_linearizable(), "{r:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        // The same history with one duplicated ack at the end is rejected.
        let last = ops.last().cloned().expect("ops");
        let mut dup = last.clone();
        dup.invoke_ns += 10;
        dup.complete_ns += 10;
        ops.push(dup);
        let r = ctr(ops);
        assert_eq!(r.violations(), 1, "{r:?}");
    }

    #[test]
    fn the_bound_yields_unknown_not_a_pass() {
        let h = history(vec![
            op(0, w(1), (0, 1), ok(json!(null))),
            op(1, Call::Read, (2, 3), ok(json!(1))),
        ]);
        let r = check(&RegisterModel, &h, Limits { max_steps: 1 });
        assert_eq!(r.unknown(), 1);
        assert!(!r.is_linearizable());
    }
}
