//! Choosing an emulator, and checking that what it needs is installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::BootError;
use super::inner::is_on;
use super::{bochs, qemu, Emulator, KvmVendor};

/// Something an emulator needs on the host, and the Debian package with it.
pub(crate) struct Requirement {
    pub(crate) what: &'static str,
    pub(crate) location: Location,
    pub(crate) package: &'static str,
}

/// Where something the host must provide is found: a program in PATH or a file.
pub enum Location {
    /// A program looked up in PATH.
    Program(&'static str),
    /// A file at one of these paths.
    File(&'static [&'static str]),
}

impl Location {
    pub fn find(&self) -> Option<PathBuf> {
        match self {
            Location::Program(name) => std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            }),
            Location::File(paths) => paths.iter().map(PathBuf::from).find(|p| p.is_file()),
        }
    }
}

/// Runs a host tool (xorriso, strip) to completion; a failure, with what the tool printed on
/// stderr, is an error naming `what` it was doing.
pub(crate) fn run_tool(command: &mut Command, what: &str) -> Result<(), BootError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|cause| BootError::Spawn {
        program: program.clone(),
        cause,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(BootError::ToolFailed {
        program: format!("{program} ({what})"),
        status: output.status.to_string(),
        output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn requirements(emulator: Emulator) -> &'static [Requirement] {
    match emulator {
        Emulator::QemuKvm | Emulator::QemuTcg => qemu::REQUIREMENTS,
        Emulator::Bochs => bochs::REQUIREMENTS,
    }
}

/// Fails naming every missing piece and the packages to install.
pub(crate) fn check_installed(emulator: Emulator) -> Result<(), BootError> {
    let missing: Vec<&Requirement> = requirements(emulator)
        .iter()
        .filter(|requirement| requirement.location.find().is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&'static str> = missing.iter().map(|r| r.package).collect();
    packages.sort_unstable();
    packages.dedup();
    Err(BootError::EmulatorMissing {
        what: format!(
            "{} (for {emulator})",
            missing
                .iter()
                .map(|r| r.what)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        packages,
    })
}

/// Picks the emulator for `vendor`: the requested one if it can work, else
/// (auto) QEMU with the host's KVM when the host nests for this vendor, QEMU
/// TCG for AMD, Bochs for Intel.
pub fn choose_emulator(
    requested: Option<Emulator>,
    vendor: KvmVendor,
) -> Result<Emulator, BootError> {
    let chosen = match requested {
        Some(emulator) => {
            if let Some(reason) = unsuitable(emulator, vendor) {
                return Err(BootError::EmulatorUnsuitable {
                    emulator: emulator.to_string(),
                    reason,
                });
            }
            emulator
        }
        None if host_nests(vendor).is_ok() => Emulator::QemuKvm,
        None => match vendor {
            KvmVendor::Amd => Emulator::QemuTcg,
            KvmVendor::Intel => Emulator::Bochs,
        },
    };
    check_installed(chosen)?;
    Ok(chosen)
}

fn unsuitable(emulator: Emulator, vendor: KvmVendor) -> Option<String> {
    match (emulator, vendor) {
        (Emulator::QemuKvm, _) => host_nests(vendor).err(),
        (Emulator::QemuTcg, KvmVendor::Intel) => {
            Some("QEMU's TCG does not emulate Intel VMX; use bochs for the intel vendor".into())
        }
        (Emulator::Bochs, KvmVendor::Amd) => Some(
            "Debian's Bochs is used for Intel VMX only; use qemu-tcg for the amd vendor".into(),
        ),
        _ => None,
    }
}

/// Ok when the host's KVM can give a guest this vendor's virtualization.
fn host_nests(vendor: KvmVendor) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("the host has no /dev/kvm".into());
    }
    let matches = match vendor {
        KvmVendor::Amd => crate::host::cpu_is_amd(),
        KvmVendor::Intel => crate::host::cpu_is_intel(),
    };
    if !matches {
        return Err(format!(
            "the host CPU is {:?}, not {vendor}: its KVM cannot offer {vendor} nesting",
            crate::host::cpu_vendor()
        ));
    }
    let parameter = format!("/sys/module/{}/parameters/nested", vendor.module_name());
    match fs::read_to_string(&parameter) {
        Ok(value) if is_on(&value) => Ok(()),
        Ok(_) => Err(format!("the host's {} has nested=0", vendor.module_name())),
        Err(_) => Err(format!(
            "the host has no {} module loaded ({parameter} is missing)",
            vendor.module_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_impossible_pairs() {
        assert!(unsuitable(Emulator::QemuTcg, KvmVendor::Intel).is_some());
        assert!(unsuitable(Emulator::Bochs, KvmVendor::Amd).is_some());
        assert!(unsuitable(Emulator::QemuTcg, KvmVendor::Amd).is_none());
        assert!(unsuitable(Emulator::Bochs, KvmVendor::Intel).is_none());
    }

    #[test]
    fn missing_programs_are_not_found() {
        assert!(Location::Program("no-such-program-nestfault")
            .find()
            .is_none());
        assert!(Location::Program("sh").find().is_some());
    }
}
