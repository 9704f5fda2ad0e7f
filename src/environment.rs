//! What a run was obtained under: nestfault's version, the kernel, and per vendor the machine
//! that ran it, the CPU model, KVM's module parameters as sysfs shows them and the CPU facts that
//! change expected values or which cases can run. Every report carries it, so that two runs can
//! be compared and a bug report reproduced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::{self, SvmCapabilities, VmxCapabilities};
use crate::layout::MEMORY_SIZE;
use crate::module_param;
use crate::scenario::VendorKind;
use crate::vm::{self, Vm};

/// The whole run's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// nestfault's version.
    pub nestfault: String,
    /// The release of the kernel under test (uname -r of L0).
    pub kernel: String,
    /// One per vendor that reached its KVM, in the order the vendors ran.
    pub vendors: Vec<VendorEnvironment>,
    /// How long the run took, start to verdicts, for the summary line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
}

impl Environment {
    pub fn new(kernel: &str) -> Self {
        Environment {
            nestfault: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel.to_string(),
            vendors: Vec::new(),
            wall_ms: None,
        }
    }
}

/// One vendor's L0: read where its KVM runs (this machine, or inside the kernel under test).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorEnvironment {
    pub vendor: String,
    /// `host` in direct mode; with --kernel the emulator that booted it (qemu-tcg, bochs, ...).
    pub machine: String,
    /// /proc/cpuinfo's model name where KVM runs: under --kernel, the emulated CPU's.
    pub cpu_model: String,
    /// `module.parameter` -> value as sysfs shows it, for the parameters that decide what KVM
    /// offers L1 or which cases run; a parameter the kernel lacks is left out.
    pub kvm_parameters: BTreeMap<String, String>,
    /// What KVM offers L1 (KVM_GET_SUPPORTED_CPUID 0x80000008 EAX[7:0]): where NPT and EPT
    /// entries' reserved address bits start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxphyaddr: Option<u32>,
    /// 1 GiB pages offered to L1 (CPUID 0x80000001 EDX bit 26).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbpages: Option<bool>,
    /// VMX: IA32_VMX_EPT_VPID_CAP as KVM offers it to L1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ept_vpid_cap: Option<String>,
}

/// The module parameters a report records for `kind`.
fn recorded_parameters(kind: VendorKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        VendorKind::Svm => &[
            ("kvm_amd", "nested"),
            ("kvm_amd", "npt"),
            ("kvm", "tdp_mmu"),
            ("kvm", "force_emulation_prefix"),
        ],
        VendorKind::Vmx => &[
            ("kvm_intel", "nested"),
            ("kvm_intel", "ept"),
            ("kvm_intel", "eptad"),
            ("kvm", "tdp_mmu"),
            ("kvm", "force_emulation_prefix"),
        ],
    }
}

impl VendorEnvironment {
    /// Reads `kind`'s L0 on this machine; `machine` says what this machine is. What cannot be
    /// read (no /dev/kvm, no such parameter) is left out, never guessed.
    pub fn probe(kind: VendorKind, machine: &str) -> Self {
        let kvm_parameters = recorded_parameters(kind)
            .iter()
            .filter_map(|&(module, name)| {
                module_param::read(module, name).map(|value| (format!("{module}.{name}"), value))
            })
            .collect();
        let mut environment = VendorEnvironment {
            vendor: kind.name().to_string(),
            machine: machine.to_string(),
            cpu_model: cpu_model().unwrap_or_default(),
            kvm_parameters,
            ..Default::default()
        };
        let Ok(kvm) = vm::open_kvm() else {
            return environment;
        };
        let Ok(cpuid) = vm::supported_cpuid(&kvm) else {
            return environment;
        };
        let svm = SvmCapabilities::from_cpuid(&cpuid);
        environment.maxphyaddr = Some(svm.maxphyaddr);
        environment.gbpages = Some(svm.gbpages);
        if kind == VendorKind::Vmx && arch::missing_nested_support(&cpuid, kind).is_none() {
            environment.ept_vpid_cap = Vm::new(&kvm, &cpuid, MEMORY_SIZE)
                .and_then(|vm| vmx_capabilities(&vm))
                .ok()
                .map(|caps| format!("{:#x}", caps.ept_vpid));
        }
        environment
    }

    /// One line each: what a person reads above the results.
    pub fn lines(&self) -> Vec<String> {
        let mut facts = Vec::new();
        if let Some(bits) = self.maxphyaddr {
            facts.push(format!("MAXPHYADDR {bits}"));
        }
        if let Some(gbpages) = self.gbpages {
            facts.push(format!(
                "1 GiB pages {}",
                if gbpages { "yes" } else { "no" }
            ));
        }
        if let Some(cap) = &self.ept_vpid_cap {
            facts.push(format!("IA32_VMX_EPT_VPID_CAP {cap}"));
        }
        let parameters: Vec<String> = self
            .kvm_parameters
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let mut lines = vec![format!(
            "{} on {}, CPU {}",
            self.vendor,
            self.machine,
            if self.cpu_model.is_empty() {
                "unknown"
            } else {
                &self.cpu_model
            }
        )];
        if !parameters.is_empty() {
            lines.push(format!("{} KVM: {}", self.vendor, parameters.join(" ")));
        }
        if !facts.is_empty() {
            lines.push(format!("{} offers L1: {}", self.vendor, facts.join(", ")));
        }
        lines
    }
}

/// The VMX capability MSRs KVM offers L1, read from a vCPU of `vm`.
pub fn vmx_capabilities(vm: &Vm) -> Result<VmxCapabilities, vm::VmError> {
    let values = vm.read_msrs(&VmxCapabilities::MSRS)?;
    let values: [u64; 11] = values
        .try_into()
        .map_err(|_| vm::VmError::Memory("short MSR read".into()))?;
    Ok(VmxCapabilities::from_msrs(&values))
}

/// The first `model name` of /proc/cpuinfo.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_records_what_it_can_read_and_no_more() {
        let probed = VendorEnvironment::probe(VendorKind::Svm, "host");
        assert_eq!(probed.vendor, "svm");
        assert_eq!(probed.machine, "host");
        // Only parameters sysfs has: a key is never made up.
        for (name, value) in &probed.kvm_parameters {
            let (module, parameter) = name.split_once('.').unwrap();
            assert_eq!(module_param::read(module, parameter).as_ref(), Some(value));
        }
        assert!(probed.ept_vpid_cap.is_none());
    }

    #[test]
    fn lines_name_parameters_and_facts() {
        let environment = VendorEnvironment {
            vendor: "vmx".into(),
            machine: "bochs".into(),
            cpu_model: "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz".into(),
            kvm_parameters: [("kvm.tdp_mmu".to_string(), "N".to_string())].into(),
            maxphyaddr: Some(39),
            gbpages: Some(false),
            ept_vpid_cap: Some("0xf0106334141".into()),
        };
        assert_eq!(
            environment.lines(),
            [
                "vmx on bochs, CPU Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz",
                "vmx KVM: kvm.tdp_mmu=N",
                "vmx offers L1: MAXPHYADDR 39, 1 GiB pages no, IA32_VMX_EPT_VPID_CAP 0xf0106334141",
            ]
        );
    }
}
