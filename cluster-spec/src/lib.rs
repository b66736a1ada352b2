//! The grammars of an app spec, as plain functions without dependencies.
//!
//! Both `cluster-macros` (at compile time, for `#[cluster::app(...)]`) and
//! `cluster-runtime` (at run time, for `App::builder(..)` and config files)
//! parse app specs with this crate, so the macros accept exactly what the
//! runtime accepts and report the same messages.
//!
//! | Grammar | Module |
//! |---|---|
//! | `singleton`, `spread`, `replicas(N)`, `ring(P)` | [`mode`] |
//! | `label=SEL, node=ID\|ID, ...` and node labels | [`placement`] |
//! | app, node and platform names | [`naming`] |
//! | `3s`, `500ms`, `1m30s` | [`duration`] |
//! | lease timings | [`lease`] |
//! | `sqlite`, `vip`, `backend`, `services(...)` | [`ops`] |
//! | which options and hooks fit which mode | [`fit`] |

pub mod duration;
pub mod fit;
pub mod lease;
pub mod mode;
pub mod naming;
pub mod ops;
pub mod placement;

pub use mode::Mode;
