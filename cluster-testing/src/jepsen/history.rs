//! Operations as clients observed them: the input of every checker.
//!
//! Guarantees:
//! - Every operation a client *invoked* is recorded, whatever happened to it:
//!   [`Outcome::Ok`] (a reply said it happened and what it returned),
//!   [`Outcome::Failed`] (it definitely did not happen: no responders, or an
//!   error reply whose code says the handler never ran) or
//!   [`Outcome::Indeterminate`] (a timeout, a lost connection, any other
//!   error: it may or may not have taken effect).
//! - Times are [`monotonic_ns`](cluster_runtime::clock::monotonic_ns)
//!   (`CLOCK_MONOTONIC`), comparable with the times node processes on the
//!   same machine record. `invoke_ns` is taken before the request is sent
//!   and `complete_ns` after the reply arrived, so the real effect lies
//!   inside `[invoke_ns, complete_ns]`.
//! - A history round-trips through JSON lines ([`History::to_jsonl`],
//!   [`History::from_jsonl`]), so a failing run can be saved and re-checked.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// Read a register's or a counter's value.
    Read,
    /// Write `value` to a register.
    Write {
        /// The value written.
        value: i64,
    },
    /// Compare-and-set a register from `from` to `to`.
    Cas {
        /// Expected current value.
        from: i64,
        /// New value.
        to: i64,
    },
    /// Add `by` to a counter; returns the new value.
    Incr {
        /// The increment (0 reads the counter through the write path).
        by: u64,
    },
    /// Add `element` to a set.
    Add {
        /// The element.
        element: u64,
    },
    /// Read a whole set.
    ReadSet,
}

/// What happened to an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// It happened and returned `value` (JSON; `null` for a read of an empty
    /// register or for writes).
    Ok {
        /// The returned value.
        value: serde_json::Value,
    },
    /// It definitely did not happen.
    Failed {
        /// Why we know.
        reason: String,
    },
    /// It may or may not have happened.
    Indeterminate {
        /// What the client saw.
        reason: String,
    },
}

impl Outcome {
    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
}

/// One operation of one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Index in the history (unique).
    pub id: usize,
    /// The client (a logical process: one operation in flight at a time).
    pub process: u32,
    /// The object operated on (operations on different keys are checked
    /// independently when the model allows it).
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// Before the request was sent.
    pub invoke_ns: u64,
    /// After the reply (or the error) arrived.
    pub complete_ns: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The node that served it, when the reply says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The epoch (fencing token) it was served under, when the reply says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A client-side history, in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Operations invoked.
    pub ops: u64,
    /// [`Outcome::Ok`].
    pub ok: u64,
    /// [`Outcome::Failed`].
    pub failed: u64,
    /// [`Outcome::Indeterminate`].
    pub indeterminate: u64,
}

impl History {
    /// Adds an operation, giving it the next id.
    pub fn push(&mut self, mut op: Op) {
        op.id = self.ops.len();
        self.ops.push(op);
    }

    /// Outcome counts.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for op in &self.ops {
            t.ops += 1;
            match op.outcome {
                Outcome::Ok { .. } => t.ok += 1,
                Outcome::Failed { .. } => t.failed += 1,
                Outcome::Indeterminate { .. } => t.indeterminate += 1,
            }
        }
        t
    }

    /// One JSON object per line, one line per operation.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for op in &self.ops {
            if let Ok(line) = serde_json::to_string(op) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Parses [`to_jsonl`](Self::to_jsonl) output; blank lines are skipped.
    pub fn from_jsonl(text: &str) -> Result<History, serde_json::Error> {
        let mut ops = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            ops.push(serde_json::from_str(line)?);
        }
        Ok(History { ops })
    }

    /// Writes the history to `path` as JSON lines.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_jsonl())
    }

    /// Reads a history saved by [`save`](Self::save).
    pub fn load(path: &Path) -> io::Result<History> {
        let text = std::fs::read_to_string(path)?;
        History::from_jsonl(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// A history shared by concurrent client tasks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<History>>,
}

impl Recorder {
    /// Records one completed operation.
    pub fn record(&self, op: Op) {
        // A poisoned lock only means another client panicked mid-push; the
        // history itself is still a valid Vec.
        let mut h = match self.inner.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        h.push(op);
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> History {
        match self.inner.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_lines() {
        let mut h = History::default();
        h.push(Op {
            id: 0,
            process: 1,
            key: "reg".into(),
            call: Call::Cas { from: 1, to: 2 },
            invoke_ns: 10,
            complete_ns: 20,
            outcome: Outcome::Ok {
                value: serde_json::json!(true),
            },
            node: Some("n1".into()),
            epoch: Some(7),
        });
        h.push(Op {
            id: 0,
            process: 2,
            key: "reg".into(),
            call: Call::Read,
            invoke_ns: 11,
            complete_ns: 30,
            outcome: Outcome::Indeterminate {
                reason: "timeout".into(),
            },
            node: None,
            epoch: None,
        });
        let text = h.to_jsonl();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(History::from_jsonl(&text).expect("parse"), h);
        assert_eq!(h.ops[1].id, 1);
    }
}
