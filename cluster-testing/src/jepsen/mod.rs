//! A Jepsen-style safety suite: what *clients* observe under seeded faults.
//!
//! The role-interval checker ([`crate::invariants`]) looks at what nodes say
//! about themselves; this module checks what callers get back. A run
//! ([`runner::run`]) drives real node processes through the RPC wire
//! contract while a [`nemesis`] kills, pauses and terminates the active
//! (and NATS servers), records every operation in a [`history`], and hands
//! it to the checkers:
//!
//! - [`linearizable`]: is the history of a register or counter
//!   linearizable (Wing–Gong/Porcupine search); [`counter`] decides the
//!   counter case exactly in O(n log n) for `incr`/`read` workloads;
//! - [`set`]: is every acknowledged add in the final read;
//! - [`exec`]: did handlers of one singleton run on two nodes at once while
//!   both believed they were active;
//! - [`fencing`]: did the server store a deposed holder's write after its
//!   successor's.
//!
//! `scripts/chaos.sh` runs the suites; `docs/chaos.md` says what each one
//! proves.

pub mod counter;
pub mod exec;
pub mod fencing;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod nodes;
pub mod runner;
pub mod set;
