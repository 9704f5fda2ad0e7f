//! `nestfault host`: whether this machine can run the suite directly, vendor by vendor, and what
//! would not run here, each missing piece with what turns it on. It asks the same questions a
//! run asks of each case (runner::vendor_for, Vendor::unsupported, the forced-emulation prefix),
//! without running one.

use std::io::Write;

use crate::arch;
use crate::environment::VendorEnvironment;
use crate::layout::MEMORY_SIZE;
use crate::runner;
use crate::scenario::{AccessPath, Case, VendorKind};
use crate::vm::{self, Vm, VmError};

/// What one vendor can do on this machine.
#[derive(Debug, PartialEq, Eq)]
pub enum VendorReadiness {
    /// KVM does not nest this vendor: why, and what to do.
    CannotNest(String),
    /// It nests; `runnable` of `total` cases can run, and each reason that keeps others from
    /// running with how many it keeps.
    Nests {
        runnable: usize,
        total: usize,
        not_run: Vec<(String, usize)>,
    },
}

/// Checks every vendor against `cases` (the built-in matrix) and writes the answer to `out`.
/// Returns whether some vendor can run here; an error when /dev/kvm cannot be opened.
pub fn run(cases: &[Case], out: &mut dyn Write) -> anyhow::Result<bool> {
    let kvm = vm::open_kvm()?;
    let cpuid = vm::supported_cpuid(&kvm)?;
    writeln!(out, "/dev/kvm: {}", crate::host::kvm_device_summary())?;
    let mut any = false;
    for kind in VendorKind::ALL {
        let name = kind.name().to_uppercase();
        let of_kind: Vec<&Case> = cases.iter().filter(|case| case.vendor == kind).collect();
        match readiness(&kvm, &cpuid, kind, &of_kind)? {
            VendorReadiness::CannotNest(why) => {
                // The reason names the vendor itself.
                let why = why.strip_prefix(&format!("{name}: ")).unwrap_or(&why);
                writeln!(out, "{name}: cannot nest here: {why}")?
            }
            VendorReadiness::Nests {
                runnable,
                total,
                not_run,
            } => {
                any |= runnable > 0;
                let verdict = if runnable == total {
                    "every case runs here".to_string()
                } else {
                    format!("{runnable} of {total} cases run here")
                };
                writeln!(out, "{name}: nests; {verdict}")?;
                for line in VendorEnvironment::probe(kind, "host").lines() {
                    writeln!(out, "  {line}")?;
                }
                for (reason, count) in not_run {
                    let cases = if count == 1 { "case" } else { "cases" };
                    writeln!(out, "  not run ({count} {cases}): {reason}")?;
                }
            }
        }
    }
    if !any {
        writeln!(
            out,
            "no vendor can run here: `nestfault --kernel IMAGE` boots a kernel in an emulator \
             that offers both"
        )?;
    }
    Ok(any)
}

fn readiness(
    kvm: &kvm_ioctls::Kvm,
    cpuid: &kvm_bindings::CpuId,
    kind: VendorKind,
    cases: &[&Case],
) -> Result<VendorReadiness, VmError> {
    if let Some(why) = arch::missing_nested_support(cpuid, kind) {
        return Ok(VendorReadiness::CannotNest(why));
    }
    let vm = Vm::new(kvm, cpuid, MEMORY_SIZE)?;
    let vendor = runner::vendor_for(kind, cpuid, &vm)?;
    let forced = vm::forced_emulation_prefix();
    let mut not_run: Vec<(String, usize)> = Vec::new();
    let mut runnable = 0;
    for case in cases {
        let reason = match &vendor {
            Err(missing) => Some(missing.clone()),
            Ok(vendor) => arch::unsupported(vendor.as_ref(), cpuid, &case.scenario).or_else(|| {
                (case.path == AccessPath::Forced)
                    .then(|| forced.clone().err())
                    .flatten()
            }),
        };
        match reason {
            None => runnable += 1,
            Some(reason) => match not_run.iter_mut().find(|(known, _)| *known == reason) {
                Some((_, count)) => *count += 1,
                None => not_run.push((reason, 1)),
            },
        }
    }
    Ok(VendorReadiness::Nests {
        runnable,
        total: cases.len(),
        not_run,
    })
}
