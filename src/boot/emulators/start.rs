//! How an emulator starts the kernel under test. With the speed levers on, not through the
//! bzImage's decompressor: at the vmlinux's PVH entry point where the emulator can load an ELF
//! that way (QEMU) and the kernel has one, else by the direct boot (`direct`), else, if the
//! kernel allows neither, through its bzImage after all, saying why.

use std::path::{Path, PathBuf};

use super::direct;
use super::options::BootOptions;
use crate::boot::error::BootError;
use crate::boot::input::kernel::PreparedKernel;
use crate::boot::input::vmlinux;

/// What the emulator loads: a kernel image and the ramdisk to go with it.
pub(crate) struct BootFiles {
    pub(crate) kernel: PathBuf,
    pub(crate) ramdisk: PathBuf,
}

/// The files to boot `kernel` with `initramfs`; `pvh` says whether the emulator can start an
/// ELF vmlinux at its PVH entry point. Extra files go to `dir`.
pub(crate) fn boot_files(
    kernel: &PreparedKernel,
    initramfs: &Path,
    opts: &BootOptions,
    pvh: bool,
    dir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<BootFiles, BootError> {
    let bzimage = || BootFiles {
        kernel: kernel.vmlinuz.clone(),
        ramdisk: initramfs.to_owned(),
    };
    if !opts.fast_boot {
        return Ok(bzimage());
    }
    on_progress("finding the uncompressed kernel (extracted once, then cached)");
    let cache = vmlinux::cache_dir();
    let extracted = match vmlinux::extract_vmlinux(&kernel.vmlinuz, cache, dir, on_progress)? {
        Ok(extracted) => extracted,
        Err(why) => {
            on_progress(&format!("booting the bzImage: {why}"));
            return Ok(bzimage());
        }
    };
    if pvh && extracted.pvh.is_ok() {
        return Ok(BootFiles {
            kernel: extracted.path,
            ramdisk: initramfs.to_owned(),
        });
    }
    let direct = direct::prepare(
        &kernel.vmlinuz,
        &extracted.path,
        initramfs,
        opts.memory_mib,
        dir,
    )?;
    Ok(match direct {
        Ok(direct) => {
            if let (true, Err(why)) = (pvh, &extracted.pvh) {
                on_progress(&format!("booting directly: {why}"));
            }
            BootFiles {
                kernel: direct.kernel,
                ramdisk: direct.ramdisk,
            }
        }
        Err(why) => {
            on_progress(&format!("booting the bzImage: {why}"));
            bzimage()
        }
    })
}
