//! Where an app may run: the placement grammar and node eligibility.
//!
//! Grammar (DESIGN §1): `placement = "term, term, ..."` with terms
//! `label=SEL`, `avoid-label=SEL`, `prefer-label=SEL[@WEIGHT]`,
//! `node=ID[|ID...]`, `prefer-node=ID[@WEIGHT]`, `with-app=APP`,
//! `away-from=APP`; `SEL` is `KEY` (label present) or `KEY=VALUE`.
//! Node labels use the same `KEY` / `KEY=VALUE` syntax.
//!
//! The grammar lives in `cluster-spec`, shared with the macros, so a
//! placement the compiler accepts is exactly one the runtime accepts. Hard
//! constraints (`label`, `avoid-label`, `node`) decide eligibility now; soft
//! preferences and app affinities are parsed and validated, but the
//! placement controller that honours them is not built yet, so the runtime
//! refuses them at start-up with a clear message.
//!
//! ```
//! use cluster_runtime::placement::{Placement, Labels};
//! let p = Placement::parse("label=zone=a, avoid-label=draining").unwrap();
//! let mut labels = Labels::new();
//! labels.insert("zone".into(), "a".into());
//! assert!(p.allows("n1", &labels));
//! ```

pub use cluster_spec::placement::*;
