//! The emulators: which one boots a vendor's kernel (QEMU with KVM or TCG, Bochs) and checking it
//! is installed (`emulator`); each one's command line and quirks (`qemu`, `bochs`, with `iso`
//! for Bochs' boot medium, `tsc` for QEMU TCG's clock), behind one seam (`backend`); how the
//! kernel is started (`start`: at its PVH entry, through the `direct` boot, or its bzImage); and
//! watching the console until the guest powers off (`console`). [`boot`] puts them together.

mod backend;
mod bochs;
mod console;
mod direct;
pub(crate) mod emulator;
mod iso;
pub(crate) mod options;
pub(crate) mod outcome;
mod qemu;
mod start;
mod tsc;

use std::path::Path;

use crate::boot::error::BootError;
use crate::boot::input::kernel::PreparedKernel;
use crate::boot::tempdir;
use options::{BootOptions, Emulator};
use outcome::BootReport;

/// Boots `kernel` with `initramfs` in `emulator` until the guest powers off,
/// panics, or `opts.timeout` runs out. `on_line` gets every console line as
/// it arrives; `on_progress` gets coarse phases ("starting bochs", "kernel
/// booting", "init running"). The guest has no network; temporary files live
/// in a private directory removed afterwards.
pub fn boot(
    emulator: Emulator,
    kernel: &PreparedKernel,
    initramfs: &Path,
    opts: &BootOptions,
    on_line: &mut dyn FnMut(&str),
    on_progress: &mut dyn FnMut(&str),
) -> Result<BootReport, BootError> {
    emulator::check_installed(emulator)?;
    let backend = emulator::backend(emulator);
    let dir = tempdir::private_dir("start")?;
    let tsc = (opts.fast_boot && backend.runs_guest_on_host_tsc())
        .then(tsc::Measurement::start)
        .flatten();
    let files = start::boot_files(
        kernel,
        initramfs,
        opts,
        backend.starts_pvh_entry(),
        dir.path(),
        on_progress,
    )?;
    let request = backend::BootRequest {
        files: &files,
        opts,
        host_tsc_khz: tsc.and_then(tsc::Measurement::finish),
    };
    backend.boot(&request, on_line, on_progress)
}
