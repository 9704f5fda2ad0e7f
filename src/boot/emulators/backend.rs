//! The seam between the boot layer and its emulators: one trait each emulator implements, and
//! what a boot is asked to boot.

use super::options::BootOptions;
use super::outcome::BootReport;
use super::start::BootFiles;
use crate::boot::error::BootError;
use crate::boot::tools::Requirement;

/// One emulator that stands in for hardware with SVM or VMX: what it needs on the host, and
/// booting a kernel under test in it.
pub(crate) trait EmulatorBackend {
    fn requirements(&self) -> &'static [Requirement];
    /// Whether it can start an ELF vmlinux at its PVH entry point (see `start`).
    fn starts_pvh_entry(&self) -> bool;
    /// Whether the guest's TSC is the host's, so that the kernel can be told its frequency
    /// instead of calibrating it (see `tsc`).
    fn runs_guest_on_host_tsc(&self) -> bool;
    fn boot(
        &self,
        request: &BootRequest,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError>;
}

/// What a boot boots: the files to load (`start` chose them), and how.
#[derive(Clone, Copy)]
pub(crate) struct BootRequest<'a> {
    pub(crate) files: &'a BootFiles,
    pub(crate) opts: &'a BootOptions,
    /// The host's TSC frequency, where the backend runs the guest on it and the speed levers
    /// are on.
    pub(crate) host_tsc_khz: Option<u32>,
}
