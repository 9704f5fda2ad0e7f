//! Deadlines that cannot overflow: `Instant + Duration` panics when the sum is past what the
//! clock can hold (`--timeout 18446744073709551615` did), so every wait computes its end here.

use std::time::{Duration, Instant};

/// The longest wait a deadline stands for: about 136 years, well inside what Linux's monotonic
/// clock (signed 64-bit seconds) holds, and for a run the same as for ever.
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// `timeout` from now, or [`FOREVER`] from now if `timeout` is longer.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    // Only a clock within 136 years of its end could fail the add; then the wait ends at once
    // and is reported as a timeout, rather than panicking.
    now.checked_add(timeout.min(FOREVER)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_do_not_panic() {
        let far = deadline_after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        let near = deadline_after(Duration::from_millis(5));
        assert!(near <= Instant::now() + Duration::from_millis(5));
    }
}
