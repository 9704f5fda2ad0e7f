//! The seam between the boot layer and its emulators: one trait each emulator implements, and
//! what a boot is asked to boot.

use std::path::Path;

use super::error::BootError;
use super::kernel::PreparedKernel;
use super::tools::Requirement;
use super::{BootOptions, BootReport};

/// One emulator that stands in for hardware with SVM or VMX: what it needs on the host, and
/// booting a kernel under test in it.
pub(crate) trait EmulatorBackend {
    fn requirements(&self) -> &'static [Requirement];
    fn boot(
        &self,
        request: &BootRequest,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError>;
}

/// What a boot boots: the kernel, its initramfs, and how.
#[derive(Clone, Copy)]
pub(crate) struct BootRequest<'a> {
    pub(crate) kernel: &'a PreparedKernel,
    pub(crate) initramfs: &'a Path,
    pub(crate) opts: &'a BootOptions,
}
