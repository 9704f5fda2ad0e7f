//! Runs cases on this machine's KVM: one VM per case, the L1 stub inside, L2 through the scenario,
//! and a verdict for each. Hardware paths run before emulated ones, so that every emulated verdict
//! can say whether the emulator agreed with the CPU.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;

use crate::arch::{self, Svm, SvmCapabilities, Vendor, Vmx};
use crate::elf::L1_STUB;
use crate::environment::vmx_capabilities;
use crate::layout::{self, MEMORY_SIZE};
use crate::scenario::{AccessPath, Case, VendorKind};
use crate::verdict::{compare_paths, judge, Status, Verdict};
use crate::vm::{self, Vm, VmError};

pub struct RunOptions {
    /// Per case: a guest that has not reported by then is stopped and reported as an error.
    pub timeout: Duration,
    /// Finished cases' VMs that may be left undestroyed until the process ends.
    pub left_to_exit: ExitAllowance,
}

/// How many VMs of finished cases a process may leave undestroyed until it ends, instead of
/// tearing each down. A teardown is KVM freeing everything it built for the VM: ~2.6 ms of CPU a
/// case on Debian's 7.2 under QEMU TCG, taken from the one emulated CPU that runs the next case.
/// The guest of `--kernel` powers off after its run, so there its VMs need never be destroyed.
/// A VM left this way never runs again and shares nothing with later cases (each has a VM of its
/// own); it keeps its memory (about 0.5 MiB) and two file descriptors, which the allowance bounds.
/// Shared by every [`run`] of a process, so that `--repeat` stays within it too.
pub struct ExitAllowance {
    left: Cell<usize>,
}

impl ExitAllowance {
    /// Every VM is destroyed once its case is over (a host process lives on after its run).
    pub fn none() -> Self {
        Self::up_to(0)
    }

    pub fn up_to(vms: usize) -> Self {
        ExitAllowance {
            left: Cell::new(vms),
        }
    }

    /// Takes one VM off the allowance; false when it is used up.
    fn take(&self) -> bool {
        let left = self.left.get();
        self.left.set(left.saturating_sub(1));
        left > 0
    }
}

/// Runs `cases` and returns their verdicts in the same order; `on_verdict` sees each as it lands.
pub fn run(
    cases: &[Case],
    options: &RunOptions,
    on_verdict: &mut dyn FnMut(&Verdict),
) -> Vec<Verdict> {
    let opened = vm::open_kvm().and_then(|kvm| Ok((vm::supported_cpuid(&kvm)?, kvm)));
    let (cpuid, kvm) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            return cases
                .iter()
                .map(|case| {
                    announce(
                        on_verdict,
                        Verdict::without_run(case, Status::Skip, error.to_string()),
                    )
                })
                .collect();
        }
    };
    // Only a speed-up (see Anchor): a run without it gets the same verdicts.
    let _anchor = vm::Anchor::new(&kvm).ok();
    let forced_emulation = vm::forced_emulation_prefix();
    let mut verdicts: Vec<Option<Verdict>> = vec![None; cases.len()];
    std::thread::scope(|scope| {
        let reaper = Reaper::spawn(scope);
        for scenario in by_scenario(cases) {
            // A scenario's hardware path first: its emulated paths are compared with it.
            let mut hardware: Option<Verdict> = None;
            for i in scenario {
                let case = &cases[i];
                let missing = crate::arch::missing_nested_support(&cpuid, case.vendor)
                    .map(Missing::Nesting)
                    .or_else(|| {
                        (case.path == AccessPath::Forced)
                            .then(|| forced_emulation.clone().err().map(Missing::Setting))
                            .flatten()
                    });
                let verdict = match missing {
                    _ if crate::interrupt::requested() => {
                        Verdict::without_run(case, Status::Error, crate::interrupt::reason())
                    }
                    Some(Missing::Nesting(reason)) => {
                        Verdict::without_run(case, Status::Skip, reason)
                    }
                    Some(Missing::Setting(reason)) => {
                        Verdict::without_run(case, Status::NotRun, reason)
                    }
                    None => run_one(&kvm, &cpuid, case, options, hardware.as_ref(), &reaper),
                };
                if case.path == AccessPath::Hardware {
                    hardware = Some(verdict.clone());
                }
                verdicts[i] = Some(announce(on_verdict, verdict));
            }
        }
        // Leaving the scope waits for the reaper to destroy the last VMs.
    });
    verdicts
        .into_iter()
        .map(|v| v.expect("every case ran"))
        .collect()
}

/// What keeps a case from running here.
enum Missing {
    /// The vendor cannot nest at all: this kernel cannot be judged for it.
    Nesting(String),
    /// An optional setting the case needs (the forced-emulation prefix): the case is not run.
    Setting(String),
}

/// The cases' indices by scenario (and vendor), the hardware path first in each.
fn by_scenario(cases: &[Case]) -> Vec<Vec<usize>> {
    let mut scenarios: BTreeMap<(VendorKind, &str), Vec<usize>> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        scenarios
            .entry((case.vendor, case.scenario.name.as_str()))
            .or_default()
            .push(i);
    }
    scenarios
        .into_values()
        .map(|mut scenario| {
            scenario.sort_by_key(|&i| cases[i].path != AccessPath::Hardware);
            scenario
        })
        .collect()
}

/// Destroys the VMs of finished cases on a thread of its own, so that the next case need not wait
/// for KVM's teardown. Much of a teardown is waiting rather than computing: even on one emulated
/// CPU (QEMU TCG, 7.2) a case's share of the run's wall time fell from ~27 to ~20 ms. A VM is
/// handed over only after its verdict is in, and each case has a VM of its own, so a teardown
/// overlaps the next case's run but nothing of it is shared. VMs the run's [`ExitAllowance`]
/// covers are not destroyed at all.
struct Reaper {
    finished: SyncSender<Vm>,
}

impl Reaper {
    /// A few VMs may wait their turn; more than that and the run waits for the reaper.
    const BACKLOG: usize = 4;

    fn spawn<'scope>(scope: &'scope std::thread::Scope<'scope, '_>) -> Self {
        let (finished, to_destroy) = mpsc::sync_channel::<Vm>(Self::BACKLOG);
        scope.spawn(move || to_destroy.into_iter().for_each(drop));
        Self { finished }
    }

    /// Done with `vm`: left to the end of the process while `allowance` lasts, else destroyed.
    fn dispose(&self, vm: Vm, allowance: &ExitAllowance) {
        if allowance.take() {
            // Its descriptors close when the process ends; under --kernel, the guest powers off
            // first.
            std::mem::forget(vm);
        } else {
            // If the reaper is gone the VM comes back in the error, and is destroyed here.
            let _ = self.finished.send(vm);
        }
    }
}

/// Hands `verdict` to `on_verdict` as it lands, and keeps it.
fn announce(on_verdict: &mut dyn FnMut(&Verdict), verdict: Verdict) -> Verdict {
    on_verdict(&verdict);
    verdict
}

fn run_one(
    kvm: &Kvm,
    cpuid: &CpuId,
    case: &Case,
    options: &RunOptions,
    hardware: Option<&Verdict>,
    reaper: &Reaper,
) -> Verdict {
    let started = Instant::now();
    let harness_error = |error: String| Verdict::without_run(case, Status::Error, error);
    let mut vm = match Vm::new(kvm, cpuid, MEMORY_SIZE) {
        Ok(vm) => vm,
        Err(error) => return harness_error(error.to_string()),
    };
    let vendor = match vendor_for(case.vendor, cpuid, &vm) {
        Ok(Ok(vendor)) => vendor,
        // An EPT capability L0 does not offer L1 (ept=0, eptad=0): a setting of this host.
        Ok(Err(missing)) => return Verdict::without_run(case, Status::NotRun, missing),
        Err(error) => return harness_error(error.to_string()),
    };
    if let Some(reason) = arch::unsupported(vendor.as_ref(), cpuid, &case.scenario) {
        return Verdict::without_run(case, Status::NotRun, reason);
    }
    let image = match layout::build(case, vendor.as_ref(), L1_STUB) {
        Ok(image) => image,
        Err(error) => return harness_error(format!("building the guest image: {error}")),
    };
    let expectation = vendor.expect(case, &image.site);
    if let Err(error) = vm.load(&image, &vendor.msrs()) {
        return harness_error(error.to_string());
    }
    let observation = match vm.run(options.timeout) {
        Ok(observation) => observation,
        Err(error) => return harness_error(error.to_string()),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    reaper.dispose(vm, &options.left_to_exit);
    let mut verdict = judge(
        vendor.as_ref(),
        case,
        &expectation,
        &observation,
        duration_ms,
    );
    if case.path != AccessPath::Hardware {
        if let Some(hardware) = hardware {
            // The hardware path's masks are what the CPU may legitimately report differently.
            let mut hardware_case = case.clone();
            hardware_case.path = AccessPath::Hardware;
            let twin = vendor.expect(&hardware_case, &image.site);
            compare_paths(&mut verdict, hardware, vendor.as_ref(), &twin);
        }
    }
    verdict
}

/// The oracle for `kind` as this host's KVM offers it to L1 (`vm` is any VM of that KVM, for the
/// VMX capability MSRs), or what L1 is not offered that every case of `kind` needs.
pub fn vendor_for(
    kind: VendorKind,
    cpuid: &CpuId,
    vm: &Vm,
) -> Result<Result<Box<dyn Vendor>, String>, VmError> {
    Ok(match kind {
        VendorKind::Svm => Ok(Box::new(Svm::new(SvmCapabilities::from_cpuid(cpuid)))),
        VendorKind::Vmx => Vmx::new(vmx_capabilities(vm)?).map(|vmx| Box::new(vmx) as _),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_allowance_runs_out_and_stays_out() {
        let allowance = ExitAllowance::up_to(2);
        let taken: Vec<bool> = (0..4).map(|_| allowance.take()).collect();
        assert_eq!(taken, [true, true, false, false]);
        assert!(!ExitAllowance::none().take());
    }
}
