//! The mode grammar: how many instances of an app run.

use std::fmt;

/// How many instances of an app run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Mode {
    /// One active instance, the other eligible nodes stand by.
    Singleton,
    /// An instance on every eligible node.
    Spread,
    /// Instances on N eligible nodes.
    Replicas(u32),
    /// Every eligible node, P partitions split among them.
    Ring(u32),
}

/// The largest ring size.
pub const MAX_PARTITIONS: u32 = 4096;

/// The modes, for error messages.
pub const MODES: &str = "singleton, spread, replicas(N), ring(P)";

impl Mode {
    /// Parses `singleton`, `spread`, `replicas(N)` (N ≥ 1) or `ring(P)` (P a
    /// power of two, 1–4096). Surrounding whitespace is ignored.
    ///
    /// ```
    /// use cluster_spec::Mode;
    /// assert_eq!(Mode::parse("replicas(2)"), Ok(Mode::Replicas(2)));
    /// assert!(Mode::parse("ring(100)").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Mode, String> {
        let s = s.trim();
        let arg = |name: &str| -> Option<Result<u32, String>> {
            let inner = s.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')?;
            Some(
                inner
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{inner}` in `{s}` is not a whole number")),
            )
        };
        match s {
            "singleton" => return Ok(Mode::Singleton),
            "spread" => return Ok(Mode::Spread),
            _ => {}
        }
        if let Some(n) = arg("replicas") {
            let n = n?;
            if n == 0 {
                return Err("replicas(N) needs N ≥ 1".into());
            }
            return Ok(Mode::Replicas(n));
        }
        if let Some(p) = arg("ring") {
            let p = p?;
            if !(1..=MAX_PARTITIONS).contains(&p) || !p.is_power_of_two() {
                return Err(format!(
                    "ring(P) needs P a power of two between 1 and {MAX_PARTITIONS}, got {p}"
                ));
            }
            return Ok(Mode::Ring(p));
        }
        Err(format!("unknown mode `{s}`; allowed: {MODES}"))
    }

    /// The mode's kind without its number: `singleton`, `spread`,
    /// `replicas` or `ring`.
    pub fn kind(&self) -> &'static str {
        match self {
            Mode::Singleton => "singleton",
            Mode::Spread => "spread",
            Mode::Replicas(_) => "replicas",
            Mode::Ring(_) => "ring",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Singleton => f.write_str("singleton"),
            Mode::Spread => f.write_str("spread"),
            Mode::Replicas(n) => write!(f, "replicas({n})"),
            Mode::Ring(p) => write!(f, "ring({p})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(Mode::parse("singleton"), Ok(Mode::Singleton));
        assert_eq!(Mode::parse(" spread "), Ok(Mode::Spread));
        assert_eq!(Mode::parse("replicas(3)"), Ok(Mode::Replicas(3)));
        assert_eq!(Mode::parse("ring(64)"), Ok(Mode::Ring(64)));
        assert_eq!(Mode::parse("ring(1)"), Ok(Mode::Ring(1)));
        assert_eq!(Mode::parse("ring(4096)"), Ok(Mode::Ring(4096)));
        assert_eq!(Mode::parse("ring( 8 )"), Ok(Mode::Ring(8)));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Mode::parse("replicas(0)")
            .expect_err("zero")
            .contains("N ≥ 1"));
        assert!(Mode::parse("ring(100)")
            .expect_err("pow2")
            .contains("power of two"));
        assert!(Mode::parse("ring(8192)").is_err());
        assert!(Mode::parse("ring(0)").is_err());
        assert!(Mode::parse("leader")
            .expect_err("unknown")
            .contains("allowed: singleton"));
        assert!(Mode::parse("replicas(x)")
            .expect_err("nan")
            .contains("whole number"));
        assert!(Mode::parse("replicas").is_err());
        assert!(Mode::parse("Singleton").is_err());
    }

    #[test]
    fn display_round_trips() {
        for m in ["singleton", "spread", "replicas(2)", "ring(64)"] {
            assert_eq!(Mode::parse(m).map(|m| m.to_string()).as_deref(), Ok(m));
        }
    }
}
