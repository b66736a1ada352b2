//! The execution-overlap checker: handlers of one singleton (or of one
//! ring partition) never run on two nodes at once while both believe they
//! hold the lease (own the partition).
//!
//! The app records every handler execution as an [`Execution`] (the
//! `cluster-chaos-node` binary writes them as JSON lines to `--exec-log`).
//! What a handler *believed* is known only where it looked: an execution
//! that saw `ctx.is_active()` at its start and at its end believed it was
//! valid throughout `[start_ns, end_ns]`; one that saw it only at its start
//! believed it at `start_ns` (it may have been paused right after, and
//! found itself deposed when it resumed — its effects are then refused by
//! the fence, which [`super::fencing`] checks). [`check`] reports every
//! pair of executions on *different nodes* whose believed-valid windows
//! intersect. Executions that name a ring [`Execution::partition`] are
//! only compared with executions of the same partition (a ring has one
//! owner per partition, many per app); for them "believed" is
//! `ctx.ring().owns(p)` and the epoch is the partition's fencing token.
//! One [`Overlap`] is reported per pair of (node, epoch) holders of one
//! partition, with the number of overlapping execution pairs between them.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One handler execution, as the app recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The node.
    pub node: String,
    /// The app.
    pub app: String,
    /// The method.
    pub method: String,
    /// `ctx.fencing_token()` at start (ring: `ctx.ring().fencing_token(p)`).
    pub epoch: Option<u64>,
    /// The ring partition the call was routed to (`None`: a singleton).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Monotonic ns when the handler started.
    pub start_ns: u64,
    /// Monotonic ns when it finished.
    pub end_ns: u64,
    /// `ctx.is_active()` at start (ring: `ctx.ring().owns(p)`).
    pub active_at_start: bool,
    /// `ctx.is_active()` at end (ring: `ctx.ring().owns(p)`).
    pub active_at_end: bool,
    /// The handler did not reply: it was dropped before it finished (the
    /// RPC server drops handlers past the call's deadline) or returned an
    /// error; `end_ns` is when. Its effects may still land: a publish it
    /// queued is sent anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

/// Two holders whose executions overlapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overlap {
    /// The earlier-starting execution of the first overlapping pair.
    pub first: Execution,
    /// The other one.
    pub second: Execution,
    /// How many execution pairs of these two holders overlapped.
    pub pairs: usize,
}

/// Reads execution records (JSON lines; unparsable lines, e.g. one cut by
/// a SIGKILL, are counted and skipped).
pub fn load(path: &Path) -> io::Result<(Vec<Execution>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(e) => out.push(e),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Finds overlapping executions of `app` (of one partition, for a ring)
/// on different nodes that both started while `is_active()` (`owns(p)`)
/// was true.
pub fn check(executions: &[Execution], app: &str) -> Vec<Overlap> {
    let mut groups: BTreeMap<Option<u32>, Vec<&Execution>> = BTreeMap::new();
    for e in executions
        .iter()
        .filter(|e| e.app == app && e.active_at_start)
    {
        groups.entry(e.partition).or_default().push(e);
    }
    let mut out = Vec::new();
    for (_, mut valid) in groups {
        valid.sort_by_key(|e| (e.start_ns, e.end_ns));
        out.extend(check_group(&valid));
    }
    out
}

/// The overlaps among executions of one singleton or one partition,
/// sorted by start.
fn check_group(valid: &[&Execution]) -> Vec<Overlap> {
    // Every window ends at or before `end_ns`: scanning by start up to the
    // longest end seen finds every intersecting pair.
    type Holder = (String, Option<u64>);
    let mut found: BTreeMap<(Holder, Holder), Overlap> = BTreeMap::new();
    for (i, a) in valid.iter().enumerate() {
        for b in valid[i + 1..].iter().take_while(|b| b.start_ns <= a.end_ns) {
            if a.node == b.node || !windows_intersect(a, b) {
                continue;
            }
            let ka = (a.node.clone(), a.epoch);
            let kb = (b.node.clone(), b.epoch);
            let key = if ka <= kb { (ka, kb) } else { (kb, ka) };
            found
                .entry(key)
                .and_modify(|o| o.pairs += 1)
                .or_insert_with(|| Overlap {
                    first: (*a).clone(),
                    second: (*b).clone(),
                    pairs: 1,
                });
        }
    }
    found.into_values().collect()
}

/// The span in which an execution believed it held the lease.
fn believed_valid(e: &Execution) -> (u64, u64) {
    if e.active_at_end {
        (e.start_ns, e.end_ns)
    } else {
        (e.start_ns, e.start_ns)
    }
}

fn windows_intersect(a: &Execution, b: &Execution) -> bool {
    let (a0, a1) = believed_valid(a);
    let (b0, b1) = believed_valid(b);
    a0 <= b1 && b0 <= a1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(node: &str, epoch: u64, start: u64, end: u64, active: bool) -> Execution {
        Execution {
            node: node.into(),
            app: "register".into(),
            method: "write".into(),
            epoch: Some(epoch),
            partition: None,
            start_ns: start,
            end_ns: end,
            active_at_start: active,
            active_at_end: active,
            cancelled: false,
        }
    }

    #[test]
    fn sequential_holders_pass() {
        let execs = vec![
            ex("n1", 1, 0, 10, true),
            ex("n1", 1, 5, 12, true),
            ex("n2", 5, 13, 20, true),
            // Overlaps, but knew it was not active.
            ex("n1", 1, 14, 30, false),
        ];
        assert!(check(&execs, "register").is_empty());
    }

    #[test]
    fn a_handler_paused_mid_way_that_resumes_deposed_is_not_an_overlap() {
        // n1 started valid, was paused, ended knowing it was deposed; n2
        // ran while n1 was paused.
        let mut paused = ex("n1", 1, 0, 100, true);
        paused.active_at_end = false;
        let execs = vec![paused.clone(), ex("n2", 5, 50, 60, true)];
        assert!(check(&execs, "register").is_empty());
        // But starting (valid) inside another node's valid window is one.
        let execs = vec![ex("n2", 5, 0, 60, true), paused];
        assert_eq!(check(&execs, "register").len(), 1);
    }

    #[test]
    fn a_resumed_old_active_overlapping_its_successor_is_reported() {
        let execs = vec![
            ex("n1", 1, 0, 100, true),
            ex("n2", 5, 50, 60, true),
            ex("n2", 5, 61, 70, true),
            ex("n3", 9, 200, 210, true),
        ];
        let o = check(&execs, "register");
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!(o[0].pairs, 2);
        assert_eq!(o[0].first.node, "n1");
    }

    #[test]
    fn ring_executions_overlap_only_within_a_partition() {
        let at = |node: &str, p: u32, token: u64, start: u64, end: u64| Execution {
            partition: Some(p),
            ..ex(node, token, start, end, true)
        };
        // Two owners of different partitions at once: a ring's normal state.
        let execs = vec![at("n1", 1, 10, 0, 100), at("n2", 2, 11, 50, 60)];
        assert!(check(&execs, "register").is_empty());
        // Two nodes running partition 1 at once, both owning it.
        let execs = vec![at("n1", 1, 10, 0, 100), at("n2", 1, 12, 50, 60)];
        let o = check(&execs, "register");
        assert_eq!(o.len(), 1, "{o:?}");
        assert_eq!(o[0].second.partition, Some(1));
    }
}
