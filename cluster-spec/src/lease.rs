//! The rules for lease timings (DESIGN §4.1): `ttl` whole seconds ≥ 1 s and
//! `ttl > deadline > 1.2 × renew`.

use std::time::Duration;

/// Checks lease timings; the message names the broken rule.
///
/// ```
/// use std::time::Duration;
/// use cluster_spec::lease::check_timing;
/// assert!(check_timing(Duration::from_secs(3), Duration::from_secs(1), Duration::from_millis(2400)).is_ok());
/// assert!(check_timing(Duration::from_secs(2), Duration::from_secs(1), Duration::from_secs(2)).is_err());
/// ```
pub fn check_timing(ttl: Duration, renew: Duration, deadline: Duration) -> Result<(), String> {
    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        return Err(format!(
            "lease_ttl must be a whole number of seconds ≥ 1s (NATS per-message TTLs are whole seconds), got {ttl:?}"
        ));
    }
    if deadline >= ttl {
        return Err(format!(
            "lease deadline ({deadline:?}) must be shorter than lease_ttl ({ttl:?}) so a holder gives up before its key expires"
        ));
    }
    if deadline.as_secs_f64() <= 1.2 * renew.as_secs_f64() {
        return Err(format!(
            "lease deadline ({deadline:?}) must exceed 1.2 × renew interval ({renew:?}) so one late renew does not demote"
        ));
    }
    if renew.is_zero() {
        return Err("lease renew interval must be > 0".into());
    }
    Ok(())
}

/// The default proportions for a TTL: renew every `ttl / 3`, give up after
/// `0.8 × ttl`. Returns `(renew, deadline)`.
pub fn proportions(ttl: Duration) -> (Duration, Duration) {
    (ttl / 3, ttl * 4 / 5)
}

/// Checks a `lease_ttl` used with the default proportions.
pub fn check_ttl(ttl: Duration) -> Result<(), String> {
    let (renew, deadline) = proportions(ttl);
    check_timing(ttl, renew, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl() {
        assert!(check_ttl(Duration::from_secs(1)).is_ok());
        assert!(check_ttl(Duration::from_secs(3)).is_ok());
        assert!(check_ttl(Duration::from_secs(60)).is_ok());
        assert!(check_ttl(Duration::from_millis(500))
            .expect_err("short")
            .contains("whole number of seconds"));
        assert!(check_ttl(Duration::from_millis(1500)).is_err());
        assert!(check_ttl(Duration::ZERO).is_err());
    }
}
