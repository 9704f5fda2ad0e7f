//! Choosing an emulator, and checking that what it needs is installed.

use std::path::Path;

use super::backend::EmulatorBackend;
use super::options::Emulator;
use super::{bochs, qemu};
use crate::arch;
use crate::boot::error::BootError;
use crate::boot::tools::Requirement;
use crate::module_param;
use crate::scenario::VendorKind;

/// The backend behind `emulator`.
pub(crate) fn backend(emulator: Emulator) -> Box<dyn EmulatorBackend> {
    match emulator {
        Emulator::QemuKvm | Emulator::QemuTcg => Box::new(qemu::Qemu { emulator }),
        Emulator::Bochs => Box::new(bochs::Bochs),
    }
}

fn requirements(emulator: Emulator) -> &'static [Requirement] {
    backend(emulator).requirements()
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
    vendor: VendorKind,
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
            VendorKind::Svm => Emulator::QemuTcg,
            VendorKind::Vmx => Emulator::Bochs,
        },
    };
    check_installed(chosen)?;
    Ok(chosen)
}

fn unsuitable(emulator: Emulator, vendor: VendorKind) -> Option<String> {
    match (emulator, vendor) {
        (Emulator::QemuKvm, _) => host_nests(vendor).err(),
        (Emulator::QemuTcg, VendorKind::Vmx) => {
            Some("QEMU's TCG does not emulate Intel VMX; use bochs for the vmx vendor".into())
        }
        (Emulator::Bochs, VendorKind::Svm) => Some(
            "Debian's Bochs is used for Intel VMX only; use qemu-tcg for the svm vendor".into(),
        ),
        _ => None,
    }
}

/// Ok when the host's KVM can give a guest this vendor's virtualization.
fn host_nests(vendor: VendorKind) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("the host has no /dev/kvm".into());
    }
    let matches = match vendor {
        VendorKind::Svm => crate::host::cpu_is_amd(),
        VendorKind::Vmx => crate::host::cpu_is_intel(),
    };
    if !matches {
        return Err(format!(
            "the host CPU is {:?}, not {vendor}: its KVM cannot offer {vendor} nesting",
            crate::host::cpu_vendor()
        ));
    }
    let module = arch::kvm_module(vendor);
    match module_param::read(module, "nested") {
        Some(value) if module_param::is_on(&value) => Ok(()),
        Some(_) => Err(format!("the host's {module} has nested=0")),
        None => Err(format!(
            "the host has no {module} module loaded ({} is missing)",
            module_param::path(module, "nested")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_impossible_pairs() {
        assert!(unsuitable(Emulator::QemuTcg, VendorKind::Vmx).is_some());
        assert!(unsuitable(Emulator::Bochs, VendorKind::Svm).is_some());
        assert!(unsuitable(Emulator::QemuTcg, VendorKind::Svm).is_none());
        assert!(unsuitable(Emulator::Bochs, VendorKind::Vmx).is_none());
    }
}
