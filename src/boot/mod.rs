//! The boot layer: runs a kernel under test inside an emulator that offers
//! hardware virtualization (QEMU TCG: AMD SVM+NPT; Bochs: Intel VMX+EPT; or
//! QEMU with the host's KVM where the host nests), with nestfault itself as
//! /init, so that the kernel's KVM can be tested as the L0 hypervisor.
//!
//! In the order a boot happens, one folder each (no import runs back up a level):
//! - `input/`: the kernel input. [`prepare_kernel`] turns `--kernel`/`--modules` into an image,
//!   a release and a modules folder; the KVM modules and their dependencies; the caches of what
//!   the host derives (the uncompressed vmlinux, unsigned module copies).
//! - `guest/`: what the kernel under test is given and does: [`build_initramfs`], its command
//!   line, the console protocol host and guest agree on, and this binary as /init
//!   ([`running_as_init`] -> [`inner_setup`] -> ... -> [`power_off`]).
//! - `emulators/`: [`choose_emulator`], QEMU and Bochs, how each starts the kernel, and
//!   [`boot`], which watches the console until the guest powers off.
//! - Beside them: the layer's one error type, private temporary directories, host tools.
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

mod emulators;
mod error;
mod guest;
mod input;
mod tempdir;
mod tools;

pub use emulators::boot;
pub use emulators::emulator::choose_emulator;
pub use emulators::options::{BootOptions, Emulator};
pub use emulators::outcome::{BootEnd, BootReport};
pub use error::BootError;
pub use guest::cmdline::fast_boot_help;
pub use guest::contract::paths::FILES_DIR as GUEST_FILES_DIR;
pub use guest::initramfs::{build_initramfs, ModuleLoading};
pub use guest::inner::{inner_setup, power_off, running_as_init};
pub use input::cache::{
    dir as cache_dir, dirs as cache_dirs, UNSIGNED as UNSIGNED_CACHE, VMLINUX as VMLINUX_CACHE,
};
pub use input::kernel::{prepare_kernel, KernelInput, PreparedKernel};
pub use input::tree::config_value;
pub use tempdir::{private_dir, remove_stale_dirs};
pub use tools::Location;
