//! Time that means the same thing in every process on this machine.
//!
//! [`monotonic_ns`] reads `CLOCK_MONOTONIC`: it never goes backwards, is not
//! moved by NTP steps or `date -s`, and is shared by all processes on the
//! host, so timestamps taken by different node processes can be ordered
//! against each other (the invariant checker relies on this). It is not
//! comparable across machines and does not advance while the machine is
//! suspended.

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds of `CLOCK_MONOTONIC` (time since boot, minus suspend).
///
/// ```
/// let a = cluster_runtime::clock::monotonic_ns();
/// let b = cluster_runtime::clock::monotonic_ns();
/// assert!(b >= a);
/// ```
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC is always present on Linux; clock_gettime can only
    // fail for an invalid clock id or pointer, neither of which can happen
    // here.
    #[allow(clippy::expect_used)]
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// Converts a tokio `Instant` (also `CLOCK_MONOTONIC` on Linux) to
/// [`monotonic_ns`] nanoseconds.
pub fn instant_ns(at: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    let now_ns = monotonic_ns();
    let ns = |d: std::time::Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    if at >= now {
        now_ns.saturating_add(ns(at - now))
    } else {
        now_ns.saturating_sub(ns(now - at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn advances_with_the_process_clock() {
        let (a, start) = (monotonic_ns(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, elapsed) = (monotonic_ns(), start.elapsed());
        let delta = Duration::from_nanos(b - a);
        assert!(delta >= Duration::from_millis(20), "{delta:?}");
        // Instant is CLOCK_MONOTONIC too; both measured the same interval.
        assert!(
            delta.abs_diff(elapsed) < Duration::from_millis(5),
            "{delta:?} vs {elapsed:?}"
        );
    }
}
