//! The boot layer: runs a kernel under test inside an emulator that offers
//! hardware virtualization (QEMU TCG: AMD SVM+NPT; Bochs: Intel VMX+EPT; or
//! QEMU with the host's KVM where the host nests), with nestfault itself as
//! /init, so that the kernel's KVM can be tested as the L0 hypervisor.
//!
//! Host side: [`choose_emulator`], [`prepare_kernel`] -> [`build_initramfs`]
//! -> [`boot`]. Guest side: [`running_as_init`] -> [`inner_setup`] -> ... ->
//! [`power_off`].
//!
//! - Kernel input: a bzImage (with or without a modules directory), or Debian
//!   packages in either layout (bookworm's single `linux-image-*-unsigned`;
//!   unstable's `linux-binary-unsigned-*` + `linux-modules-*`, found next to
//!   each other). Packages are unpacked in pure Rust (ar, tar, xz/zstd/gzip).
//! - Initramfs (uncompressed newc cpio): `/init` (the given executable), its ELF
//!   interpreter and libraries at their host paths, `/dev/console`, and under
//!   `/nestfault/`: `modules/<name>.ko` (decompressed) or, unless
//!   `--no-fast-boot`, `modules/<name>.unsigned.ko` (see `unsigned`) beside
//!   the signed module as it came (`<name>.ko.xz`, a fallback),
//!   `modules.load` (load order with parameters, dependencies from each
//!   module's `.modinfo`), `args` and `vendor`.
//! - Speed levers (`BootOptions::fast_boot`, on by default): kernel
//!   parameters that skip boot work the kernel does for itself (`cmdline`),
//!   the Bochs BIOS's boot-menu wait, booting the uncompressed kernel
//!   (`vmlinux`: QEMU's PVH entry, Bochs' `direct` boot), unsigned modules,
//!   and under QEMU TCG the host's TSC frequency (`tsc`).
//!   Each says why it cannot change a verdict; `--no-fast-boot` boots without
//!   all of them.
//! - Console protocol: the guest prints `nestfault-init: running` when /init
//!   starts and `nestfault-init: powering off` just before powering off; the
//!   host derives the "init running" phase and [`BootEnd::PoweredOff`] from
//!   them.
//!
//! Of the rest of the crate it uses only `interrupt` (a signal ends the wait for
//! the emulator), `clock` (the deadline), `input_file` (regular files only),
//! `host` (the CPU vendor), `elf` (modules' .modinfo, vmlinux notes) and
//! `path_io` (its I/O errors).

mod backend;
mod bochs;
mod cache;
mod cmdline;
mod compression;
mod console;
mod contract;
mod deb;
mod direct;
mod emulator;
mod error;
mod initramfs;
mod inner;
mod iso;
mod kernel;
mod modules;
mod qemu;
mod start;
mod tempdir;
mod tools;
mod tree;
mod tsc;
mod unsigned;
mod vmlinux;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cache::{
    dir as cache_dir, dirs as cache_dirs, UNSIGNED as UNSIGNED_CACHE, VMLINUX as VMLINUX_CACHE,
};
pub use cmdline::fast_boot_help;
pub use contract::paths::FILES_DIR as GUEST_FILES_DIR;
pub use emulator::choose_emulator;
pub use error::BootError;
pub use initramfs::{build_initramfs, ModuleLoading};
pub use inner::{inner_setup, power_off, running_as_init};
pub use kernel::{prepare_kernel, KernelInput, PreparedKernel};
pub use tempdir::{private_dir, remove_stale_dirs};
pub use tools::Location;
pub use tree::config_value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Emulator {
    /// QEMU with the host's KVM: fast, needs a host that nests.
    QemuKvm,
    /// QEMU's TCG emulator: AMD SVM with NPT.
    QemuTcg,
    /// Bochs: Intel VMX with EPT; about a minute to boot.
    Bochs,
}

impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Emulator::QemuKvm => "qemu-kvm",
            Emulator::QemuTcg => "qemu-tcg",
            Emulator::Bochs => "bochs",
        })
    }
}

#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The whole boot, from starting the emulator to its end; then it is killed.
    pub timeout: Duration,
    /// Copy the raw console to stderr as it arrives.
    pub verbose: bool,
    /// Also write every console line to this file.
    pub console_log: Option<PathBuf>,
    pub memory_mib: u32,
    /// nestfault's speed levers: kernel parameters and emulator settings that
    /// skip boot work without touching what is under test (`--no-fast-boot`
    /// turns them off).
    pub fast_boot: bool,
    /// The user's own kernel parameters (`--kernel-param`), after nestfault's.
    pub kernel_params: Vec<String>,
}

impl BootOptions {
    /// Settings measured to work: Bochs boots in about a minute and is given
    /// 512 MiB as in docs/emulators.md; QEMU boots in about 5 s.
    pub fn for_emulator(emulator: Emulator) -> Self {
        let (timeout_secs, memory_mib) = match emulator {
            Emulator::Bochs => (600, 512),
            Emulator::QemuKvm | Emulator::QemuTcg => (120, 1024),
        };
        BootOptions {
            timeout: Duration::from_secs(timeout_secs),
            verbose: false,
            console_log: None,
            memory_mib,
            fast_boot: true,
            kernel_params: Vec::new(),
        }
    }

    /// The kernel command line these options ask for, with the emulator's own speed levers
    /// (`emulator_levers`, given only with `fast_boot`) before the user's parameters.
    pub(crate) fn kernel_cmdline(&self, emulator_levers: &[String]) -> String {
        cmdline::kernel_cmdline(self.fast_boot, emulator_levers, &self.kernel_params)
    }
}

/// How a boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEnd {
    /// The guest switched itself off through [`power_off`].
    PoweredOff,
    /// The kernel panicked ("Kernel panic"), or its decompressor halted on
    /// a broken image ("-- System halted").
    Panicked,
    /// The guest reset or stopped without a panic message and without
    /// [`power_off`] (e.g. a triple fault).
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
