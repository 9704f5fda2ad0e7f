//! A bootable ISO (isolinux) holding the kernel and initramfs, for emulators
//! that cannot load a kernel themselves (Bochs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boot::error::BootError;
use crate::boot::tools::{run_tool, Location, Requirement};

pub(crate) const ISOLINUX_BIN: Requirement = Requirement {
    what: "isolinux.bin",
    location: Location::File(&["/usr/lib/ISOLINUX/isolinux.bin"]),
    package: "isolinux",
};
pub(crate) const LDLINUX_C32: Requirement = Requirement {
    what: "ldlinux.c32",
    location: Location::File(&["/usr/lib/syslinux/modules/bios/ldlinux.c32"]),
    package: "syslinux-common",
};
pub(crate) const XORRISO: Requirement = Requirement {
    what: "xorriso",
    location: Location::Program("xorriso"),
    package: "xorriso",
};

/// isolinux's configuration: mirror its output to the first serial port (so
/// the host sees the boot loader at work) and boot the kernel at once.
fn isolinux_cfg(cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT nestfault\nPROMPT 0\nTIMEOUT 0\n\
         LABEL nestfault\n  KERNEL /vmlinuz\n  APPEND initrd=/initrd {cmdline}\n"
    )
}

/// Builds `<dir>/boot.iso`. The kernel and initramfs are grafted in by path,
/// not copied.
pub(crate) fn build_iso(
    dir: &Path,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
) -> Result<PathBuf, BootError> {
    let loader_dir = dir.join("isolinux");
    fs::create_dir_all(&loader_dir).map_err(|e| BootError::io("create", &loader_dir, e))?;
    for requirement in [&ISOLINUX_BIN, &LDLINUX_C32] {
        let source = requirement
            .location
            .find()
            .ok_or(BootError::EmulatorMissing {
                what: requirement.what.into(),
                packages: vec![requirement.package],
            })?;
        let target = loader_dir.join(requirement.what);
        // A copy: xorriso patches isolinux.bin (-boot-info-table).
        fs::copy(&source, &target).map_err(|e| BootError::io("copy", &source, e))?;
    }
    let cfg = loader_dir.join("isolinux.cfg");
    fs::write(&cfg, isolinux_cfg(cmdline)).map_err(|e| BootError::io("write", &cfg, e))?;

    let iso = dir.join("boot.iso");
    let mut xorriso = Command::new("xorriso");
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg("-graft-points")
        .arg(graft("/isolinux", &loader_dir))
        .arg(graft("/vmlinuz", kernel))
        .arg(graft("/initrd", initramfs));
    run_tool(&mut xorriso, "building the boot ISO")?;
    Ok(iso)
}

/// `target=source` for -graft-points, with '\' and '=' escaped.
fn graft(target: &str, source: &Path) -> String {
    let escape = |text: &str| text.replace('\\', "\\\\").replace('=', "\\=");
    format!("{}={}", escape(target), escape(&source.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graft_escapes_equals() {
        assert_eq!(graft("/vmlinuz", Path::new("/a=b/k")), "/vmlinuz=/a\\=b/k");
    }

    #[test]
    fn config_boots_at_once_on_serial() {
        let cfg = isolinux_cfg("console=ttyS0,115200 quiet");
        assert!(cfg.starts_with("SERIAL 0 115200\n"));
        assert!(cfg.contains("APPEND initrd=/initrd console=ttyS0,115200 quiet\n"));
    }
}
