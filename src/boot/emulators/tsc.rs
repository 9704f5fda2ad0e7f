//! The host's TSC frequency, for a guest whose TSC is the host's: QEMU TCG executes the guest's
//! RDTSC on the host. Told the frequency with `tsc_early_khz`, the kernel under test skips
//! calibrating its TSC against the emulated PIT and HPET at boot (a PIT loop that failed in every
//! boot under TCG here, then the HPET: ~0.1 s less to /init on Debian's 7.2, medians of four
//! boots, time since reset). It still refines the value against the HPET a second after boot, as
//! it does with one it measured itself; nothing under test depends on the TSC's rate.

use std::time::{Duration, Instant};

/// How far apart the two samples are. A sample pins the TSC to the clock to within
/// `MAX_SAMPLE_CYCLES` (under 10 us at 2 GHz), so the frequency is off by under 0.1%, less than
/// the kernel's own calibration and its refinement allow for.
const WINDOW: Duration = Duration::from_millis(20);
const MAX_SAMPLE_CYCLES: u64 = 20_000;

/// A measurement under way; [`Measurement::finish`] gives the frequency. Starting it before
/// other boot preparation hides most of the window.
pub(crate) struct Measurement {
    start: Sample,
}

impl Measurement {
    /// Starts measuring, where the host's TSC runs at one rate whatever the CPU's P- and
    /// C-states (`constant_tsc` and `nonstop_tsc` in /proc/cpuinfo); None elsewhere.
    pub(crate) fn start() -> Option<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        if !runs_at_one_rate(&cpuinfo) {
            return None;
        }
        Some(Self { start: sample()? })
    }

    /// The frequency in kHz, once the window is over.
    pub(crate) fn finish(self) -> Option<u32> {
        if let Some(rest) = WINDOW.checked_sub(self.start.at.elapsed()) {
            std::thread::sleep(rest);
        }
        let end = sample()?;
        let cycles = end.tsc.checked_sub(self.start.tsc)?;
        khz(cycles, end.at.duration_since(self.start.at))
    }
}

/// A TSC value and the monotonic clock (the one QEMU's emulated HPET follows) read between two
/// TSC reads close together.
struct Sample {
    tsc: u64,
    at: Instant,
}

fn sample() -> Option<Sample> {
    (0..10).find_map(|_| {
        let before = rdtsc();
        let at = Instant::now();
        let after = rdtsc();
        let spread = after.checked_sub(before)?;
        (spread <= MAX_SAMPLE_CYCLES).then_some(Sample {
            tsc: before + spread / 2,
            at,
        })
    })
}

/// The kernel parameter that hands the frequency to the kernel under test.
pub(crate) fn kernel_param(khz: u32) -> String {
    format!("tsc_early_khz={khz}")
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no operands and no side effects to uphold.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn khz(cycles: u64, elapsed: Duration) -> Option<u32> {
    let nanos = elapsed.as_nanos();
    if nanos == 0 {
        return None;
    }
    u32::try_from(u128::from(cycles) * 1_000_000 / nanos).ok()
}

fn runs_at_one_rate(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .is_some_and(|flags| {
            let flags: Vec<&str> = flags.split_whitespace().collect();
            flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_over_time_in_khz() {
        let twenty_ms = Duration::from_millis(20);
        assert_eq!(khz(51_922_800, twenty_ms), Some(2_596_140));
        assert_eq!(khz(1, Duration::ZERO), None);
    }

    #[test]
    fn only_a_constant_and_nonstop_tsc_counts() {
        let flags = |list: &str| format!("processor\t: 0\nflags\t\t: fpu {list} rdtscp\n");
        assert!(runs_at_one_rate(&flags("tsc constant_tsc nonstop_tsc")));
        assert!(!runs_at_one_rate(&flags("tsc constant_tsc")));
        assert!(!runs_at_one_rate(&flags("tsc nonstop_tsc")));
        assert!(!runs_at_one_rate("processor\t: 0\n"));
    }
}
