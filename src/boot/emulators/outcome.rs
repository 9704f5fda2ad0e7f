//! How a boot ended, and what the host keeps of it.

use std::time::Duration;

/// How a boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEnd {
    /// The guest switched itself off through `power_off`.
    PoweredOff,
    /// The kernel panicked ("Kernel panic"), or its decompressor halted on
    /// a broken image ("-- System halted").
    Panicked,
    /// The guest reset or stopped without a panic message and without
    /// `power_off` (e.g. a triple fault).
    Reset,
    /// The guest announced its power-off (every result had arrived) but did not switch off
    /// within the emulator's grace ("Power off not available: System halted instead": e.g. ACPI
    /// without PCI under QEMU); the emulator was stopped.
    DidNotPowerOff,
    /// The timeout ran out and the emulator was killed.
    TimedOut,
    /// The emulator ended on its own in another way, with this exit code
    /// (128 + signal number when killed by a signal).
    EmulatorExited(i32),
}

impl BootEnd {
    /// Whether the console alone tells what happened; otherwise the report's
    /// tail also carries the emulator's own diagnostics.
    pub(crate) fn explained_by_console(self) -> bool {
        matches!(
            self,
            BootEnd::PoweredOff | BootEnd::DidNotPowerOff | BootEnd::Panicked
        )
    }
}

#[derive(Clone, Debug)]
pub struct BootReport {
    pub end: BootEnd,
    /// The last console lines (up to 40); unless the guest powered off or
    /// panicked, followed by the emulator's own last diagnostics (prefixed
    /// `[qemu]` / `[bochs]`).
    pub tail: Vec<String>,
    pub elapsed: Duration,
}
