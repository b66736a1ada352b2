//! The monotonic clock shared by every process on this machine.
//!
//! Role changes are recorded with `CLOCK_MONOTONIC` nanoseconds so events
//! from different node processes can be ordered against each other (the
//! invariant checker compares intervals across processes).

use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock `Instant` uses on Linux).
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// Converts an `Instant` to monotonic nanoseconds.
pub fn instant_ns(at: Instant) -> u64 {
    let now = Instant::now();
    let now_ns = monotonic_ns();
    if at >= now {
        now_ns.saturating_add(duration_ns(at - now))
    } else {
        now_ns.saturating_sub(duration_ns(now - at))
    }
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
