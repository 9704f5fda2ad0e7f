//! What differs between AMD SVM and Intel VMX, behind one small interface chosen once per case:
//! KVM set-up needs, the control block that describes L2 to L1's stub, and the oracle's rules
//! (expected exit fields, bit decoders, known-bug signatures). Everything else is vendor-neutral.

pub mod svm;
pub mod vmx;

use nestfault_protocol::{Executor, FieldWrite, EXIT_FIELDS};

use kvm_bindings::CpuId;

use crate::machine::{CpuState, FaultSite};
use crate::module_param;
use crate::paging::{Format, LeafEdit};
use crate::scenario::{AccessPath, Case, Fault, L2Paging, Placement, Scenario, VendorKind};

pub use svm::{Svm, SvmCapabilities};
pub use vmx::{Vmx, VmxCapabilities};

/// What the architecture code refuses to build.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// KVM does not offer L1 what the control block needs.
    #[error("{0}")]
    Refused(String),
}

/// An upstream fix that a kernel must carry for some cases to pass.
#[derive(Debug, PartialEq, Eq)]
pub struct Fix {
    /// `None` while the change is known only by its effect, not by its commit.
    pub commit: Option<&'static str>,
    pub title: &'static str,
    /// The first release whose behaviour shows it.
    pub release: &'static str,
}

impl Finding {
    /// The bits of `field` this finding explains (0: none).
    pub fn explains(&self, field: Field) -> u64 {
        self.fields
            .iter()
            .filter(|(known, _)| *known == field)
            .fold(0, |bits, (_, mask)| bits | mask)
    }
}

impl Fix {
    /// What a diagnosis always contains when it names this fix: the commit id, or the title.
    pub fn label(&self) -> &'static str {
        self.commit.unwrap_or(self.title)
    }

    /// `<commit> ("<title>", Linux <release>)`, the way diagnoses name it.
    pub fn cite(&self) -> String {
        match self.commit {
            Some(commit) => format!("{commit} (\"{}\", Linux {})", self.title, self.release),
            None => format!(
                "the change \"{}\" (seen in Linux {}; commit not identified)",
                self.title, self.release
            ),
        }
    }
}

/// A KVM defect nestfault found that no upstream fix addresses yet: the rows it affects are
/// expected failures on every kernel, with `name` in the diagnosis, until one does
/// (docs/oracle.md, "Findings"; a write-up each in docs/findings/).
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub name: &'static str,
    pub summary: &'static str,
    /// The exit fields the finding makes wrong, each with the bits of it the finding explains
    /// (`!0`: all of them): a row wrong in those bits and nowhere else is an expected failure
    /// (`xfail`); wrong anywhere else (another bit of the same field included), it is a failure
    /// like any other.
    pub fields: &'static [(Field, u64)],
    /// Its write-up, relative to the repository (docs/findings/).
    pub write_up: &'static str,
}

/// KVM's emulator walks L2's page tables with page-aligned GPAs: `walk_addr_generic`
/// (arch/x86/kvm/mmu/paging_tmpl.h, 6.1 and 7.2) translates `gfn_to_gpa(table_gfn)` for a table
/// page and `gfn_to_gpa(gfn)` for the final page through L1's NPT/EPT, and the nested fault it
/// synthesizes carries that address. The architecture (and the CPU on the hardware path) names
/// the faulting byte, or the entry's own address. Only an access off its page's start shows it.
pub const PAGE_ALIGNED_GPA: Finding = Finding {
    name: "page-aligned GPA",
    summary: "KVM's emulator translates L2's table and data pages through L1's nested tables by \
              page frame (walk_addr_generic: gfn_to_gpa(table_gfn), gfn_to_gpa(gfn)), so the \
              nested fault it synthesizes names the page, not the faulting byte or entry; no \
              upstream fix known",
    // The page's address differs from the exact one in the offset bits only.
    fields: &[(Field::Gpa, 0xfff)],
    write_up: "docs/findings/page-aligned-gpa.md",
};

/// The open findings that make `case` wrong on every kernel known so far.
pub fn open_findings(case: &Case) -> Vec<&'static Finding> {
    let mut findings = Vec::new();
    let off_page_start = case.scenario.placement == Placement::Offset;
    if emulator_walks(case.path) && off_page_start && !case.scenario.breaks_root() {
        findings.push(&PAGE_ALIGNED_GPA);
    }
    if case.vendor == VendorKind::Vmx {
        findings.extend(vmx::open_findings(case));
    }
    findings
}

/// The KVM module that offers `kind`.
pub fn kvm_module(kind: VendorKind) -> &'static str {
    match kind {
        VendorKind::Svm => svm::KVM_MODULE,
        VendorKind::Vmx => vmx::KVM_MODULE,
    }
}

/// The load parameters a kernel under test's `module` gets, as far as the module declares them
/// (eptad, for one, is missing from some kernels): `nested=1` for the vendor module always, its
/// nested-paging switches, and kvm.ko's forced-emulation prefix for the forced path.
pub fn module_parameters(kind: VendorKind, module: &str, declared: &[String]) -> String {
    let wanted: &[(&str, &str)] = match kind {
        _ if module == "kvm" => &[("force_emulation_prefix", "1")],
        _ if module != kvm_module(kind) => &[],
        VendorKind::Svm => &[("nested", "1"), ("npt", "1")],
        VendorKind::Vmx => &[("nested", "1"), ("ept", "1"), ("eptad", "1")],
    };
    wanted
        .iter()
        .filter(|(name, _)| *name == "nested" || declared.iter().any(|d| d == name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Leaf `function` (subleaf 0) of the vCPU's CPUID.
pub fn cpuid_leaf(cpuid: &CpuId, function: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|entry| entry.function == function && entry.index == 0)
        .copied()
}

/// Whether `bit` of the register `register` picks from leaf `function` is set.
pub fn has_bit(
    cpuid: &CpuId,
    function: u32,
    register: impl Fn(&kvm_bindings::kvm_cpuid_entry2) -> u32,
    bit: u32,
) -> bool {
    cpuid_leaf(cpuid, function).is_some_and(|leaf| register(&leaf) & (1 << bit) != 0)
}

/// Why this host's KVM cannot run `kind` nested, or `None` if it can: checks what L1 would be
/// offered (KVM_GET_SUPPORTED_CPUID), and names the module parameter behind a missing bit.
pub fn missing_nested_support(cpuid: &CpuId, kind: VendorKind) -> Option<String> {
    let module = kvm_module(kind);
    let missing = match kind {
        VendorKind::Svm => svm::missing_cpuid(cpuid),
        VendorKind::Vmx => vmx::missing_cpuid(cpuid),
    };
    let what = missing?;
    let why = match module_param::read(module, "nested") {
        None => {
            let (right_cpu, maker) = match kind {
                VendorKind::Svm => (crate::host::cpu_is_amd(), "AMD"),
                VendorKind::Vmx => (crate::host::cpu_is_intel(), "Intel"),
            };
            if right_cpu {
                format!(
                    "{module} is not loaded: modprobe {module} nested=1 (if it refuses, this \
                     machine's CPU offers it no {kind}; --kernel emulates one)",
                    kind = kind.name().to_uppercase()
                )
            } else {
                format!(
                    "{module} is not loaded: this host's CPU is {}, not {maker} (--kernel \
                     emulates one)",
                    crate::host::cpu_vendor()
                )
            }
        }
        Some(value) if !module_param::is_on(&value) => {
            format!("{module} is loaded with nested={value}: reload it with nested=1")
        }
        Some(value) => format!(
            "{module} nested={value}, yet KVM does not offer it (running nested without nesting?)"
        ),
    };
    Some(format!(
        "{}: KVM_GET_SUPPORTED_CPUID lacks {what}; {why}",
        kind.name().to_uppercase()
    ))
}

/// Why this vCPU cannot run `scenario`, if so: what the vendor's KVM does not offer L1
/// ([`Vendor::unsupported`]), or L2's paging mode. The one answer the runner and `nestfault
/// host` both give.
pub fn unsupported(vendor: &dyn Vendor, cpuid: &CpuId, scenario: &Scenario) -> Option<String> {
    vendor
        .unsupported(scenario)
        .or_else(|| unsupported_paging(cpuid, scenario))
}

/// Why L1 cannot give L2 the scenario's paging mode, if so: 5-level paging needs LA57 in the
/// vCPU's CPUID (leaf 7 ECX bit 16), which KVM offers only where the CPU has it and L0's own
/// kernel runs with 5-level paging.
fn unsupported_paging(cpuid: &CpuId, scenario: &Scenario) -> Option<String> {
    (scenario.l2_paging == L2Paging::FiveLevel && !has_bit(cpuid, 7, |leaf| leaf.ecx, 16))
        .then(|| NO_5LEVEL_PAGING.to_string())
}

/// Why a 5-level case is not run where L1 has no LA57.
pub const NO_5LEVEL_PAGING: &str = "KVM offers L1 no 5-level paging (LA57, CPUID 7 ECX bit 16): \
     the CPU lacks it, or L0's kernel runs without it (no5lvl); QEMU's `-cpu max` has it, Bochs' \
     Haswell model does not";

/// What KVM can offer a vCPU (KVM_GET_SUPPORTED_CPUID); on a nested-capable host this includes
/// SVM and NP or VMX.
/// The fix without which `case` fails: the oracle's own account of which rows a kernel that
/// lacks it gets wrong (the e2e holds known kernels to it). `None` when no known fix matters.
pub fn fix_checked_by(case: &Case) -> Option<&'static Fix> {
    match case.vendor {
        VendorKind::Svm => svm::fix_checked_by(case),
        VendorKind::Vmx => vmx::fix_checked_by(case),
    }
}

/// Whether L0's instruction emulator, not the CPU, meets the fault.
pub fn emulator_walks(path: AccessPath) -> bool {
    path != AccessPath::Hardware
}

/// L1's nested page tables as its control block names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedTables {
    pub root: u64,
    /// VMX: EPT accessed and dirty flags on (EPTP bit 6); SVM's NPT has no such switch.
    pub accessed_dirty: bool,
}

/// What the stub needs to run L2: its writes to the VMCB/VMCS, the exit fields to read back, and
/// (VMX) the revision identifier the VMXON region and VMCS must carry.
pub struct ControlBlock {
    pub executor: Executor,
    pub writes: Vec<FieldWrite>,
    pub reads: [u64; EXIT_FIELDS],
    pub revision: Option<u32>,
}

/// One expected exit field: compare `actual & mask` with `value & mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub value: u64,
    pub mask: u64,
}

impl Expected {
    pub const fn exact(value: u64) -> Self {
        Self {
            value,
            mask: u64::MAX,
        }
    }

    pub fn matches(&self, actual: u64) -> bool {
        (actual ^ self.value) & self.mask == 0
    }
}

/// What an exit field means; each vendor has its own name for it ([`Vendor::field_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// SVM exit_code, VMX basic exit reason.
    Code,
    /// SVM exit_info_1 (the #NPF error code and stage), VMX exit qualification.
    Bits,
    /// SVM exit_info_2, VMX guest-physical address.
    Gpa,
    /// VMX guest-linear address; SVM has none.
    LinearAddress,
}

impl Field {
    /// In the order verdicts list them.
    pub const ALL: [Field; 4] = [Field::Code, Field::Bits, Field::Gpa, Field::LinearAddress];

    /// An address, whose bits mean nothing one by one (unlike the exit code's and bits').
    pub fn is_address(self) -> bool {
        matches!(self, Field::Gpa | Field::LinearAddress)
    }
}

/// The exit L1 read back, by meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exit {
    pub code: u64,
    pub bits: u64,
    pub gpa: u64,
    pub linear_address: Option<u64>,
}

impl Exit {
    pub fn get(&self, field: Field) -> Option<u64> {
        match field {
            Field::Code => Some(self.code),
            Field::Bits => Some(self.bits),
            Field::Gpa => Some(self.gpa),
            Field::LinearAddress => self.linear_address,
        }
    }
}

/// The oracle's answer for one case: a value per exit field, and why any bits are masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub code: Expected,
    pub bits: Expected,
    pub gpa: Expected,
    /// `None` where the vendor has no such field.
    pub linear_address: Option<Expected>,
    pub notes: Vec<String>,
}

impl Expectation {
    pub fn get(&self, field: Field) -> Option<Expected> {
        match field {
            Field::Code => Some(self.code),
            Field::Bits => Some(self.bits),
            Field::Gpa => Some(self.gpa),
            Field::LinearAddress => self.linear_address,
        }
    }
}

pub trait Vendor {
    /// The format of L1's nested tables.
    fn nested_format(&self) -> Format;
    /// How `fault` rewrites L1's nested leaf for the target page.
    fn nested_edit(&self, fault: Fault) -> LeafEdit;
    /// Why this vCPU cannot run `scenario` (a leaf size or bit KVM does not offer L1), if so.
    fn unsupported(&self, scenario: &Scenario) -> Option<String>;
    /// CR4 bits L1 must have from the start (VMX: CR4.VMXE, per IA32_VMX_CR4_FIXED0).
    fn required_cr4(&self) -> u64;
    /// MSRs the VMM sets before L1 runs.
    fn msrs(&self) -> Vec<(u32, u64)>;
    /// The hypercall L2 ends with; L1 intercepts it as "finished without a fault".
    fn done_instruction(&self) -> [u8; 3];
    /// Whether L2 must prime L0 with a hardware nested fault of the opposite stage before the
    /// faulting access: kernels that copied stale exit information from it into the faults they
    /// synthesize (VMX bits 8:7 up to 6.9) would otherwise pass some rows by coincidence.
    fn needs_prime(&self) -> bool;
    fn control_block(
        &self,
        l1: &CpuState,
        l2: &CpuState,
        nested: NestedTables,
    ) -> Result<ControlBlock, ArchError>;
    /// The vendor's name for `field` (reports and JSON use it), or `None` if it has none.
    fn field_name(&self, field: Field) -> Option<&'static str>;
    /// The exit from what the stub copied back, in the order of [`ControlBlock::reads`].
    fn exit(&self, reads: &[u64; EXIT_FIELDS]) -> Exit;
    fn expect(&self, case: &Case, site: &FaultSite) -> Expectation;
    /// `value` of `field` decoded by name (e.g. "U|W|GUEST_PAGE"), for fields that are more
    /// than an address.
    fn decode(&self, field: Field, value: u64) -> Option<String>;
    /// Findings for a mismatch: known unfixed-kernel signatures (naming the missing commit), or
    /// what the exit means when it is not the expected kind at all.
    fn diagnose(&self, case: &Case, expected: &Expectation, actual: &Exit) -> Vec<String>;
}

/// The GPA L1 must be told, whatever the path: the faulting byte's for the final page, the
/// entry's own for an access to an L2 paging-structure page. SDM vol. 3C 28.2.1 (the
/// guest-physical-address field holds the GPA of the access that caused the EPT violation or
/// misconfiguration) and APM vol. 2 15.25.6 (EXITINFO2 holds the faulting guest-physical
/// address); the CPU on the hardware path reports the same (docs/oracle.md, "Addresses").
pub fn faulting_gpa(case: &Case, site: &FaultSite) -> u64 {
    match site.entry_gpa(case.scenario.target) {
        None => site.data_gpa | (site.gva & (case.scenario.l2_leaf.bytes() - 1)),
        Some(entry) => entry,
    }
}

/// Names the set bits of `value` from `names` (bit, name); unnamed bits as hex.
pub fn bit_names(value: u64, names: &[(u32, &str)]) -> String {
    let mut parts = Vec::new();
    let mut rest = value;
    for &(bit, name) in names {
        if value & (1 << bit) != 0 {
            parts.push(name.to_string());
            rest &= !(1 << bit);
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("|")
    }
}

/// Bits that differ between wanted and got, named: "GUEST_PAGE expected, GUEST_FINAL set".
/// `0x...`, followed by the decoded names where the field has them.
pub fn show(vendor: &dyn Vendor, field: Field, value: u64) -> String {
    let hex = format!("{value:#x}");
    match vendor.decode(field, value) {
        // No named bit set: the names would only repeat the number.
        Some(names) if names != hex => format!("{hex} ({names})"),
        _ => hex,
    }
}

pub fn bit_diff(wanted: u64, got: u64, mask: u64, names: &[(u32, &str)]) -> String {
    let missing = wanted & !got & mask;
    let extra = got & !wanted & mask;
    let mut parts = Vec::new();
    if extra != 0 {
        parts.push(format!("{} set", bit_names(extra, names)));
    }
    if missing != 0 {
        parts.push(format!("{} expected", bit_names(missing, names)));
    }
    parts.join(", ")
}

#[cfg(test)]
pub fn for_tests(kind: VendorKind) -> Box<dyn Vendor> {
    match kind {
        VendorKind::Svm => Box::new(Svm::new(SvmCapabilities::QEMU_TCG)),
        VendorKind::Vmx => Box::new(Vmx::new(VmxCapabilities::KVM_UNDER_BOCHS).unwrap()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_what_the_module_declares() {
        let declared = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let svm = VendorKind::Svm;
        let vmx = VendorKind::Vmx;
        let amd = declared(&["nested", "npt", "avic"]);
        assert_eq!(module_parameters(svm, "kvm_amd", &amd), "nested=1 npt=1");
        let intel = declared(&["nested", "ept", "eptad"]);
        assert_eq!(
            module_parameters(vmx, "kvm_intel", &intel),
            "nested=1 ept=1 eptad=1"
        );
        let old = declared(&["ept"]);
        assert_eq!(module_parameters(vmx, "kvm_intel", &old), "nested=1 ept=1");
        let kvm = declared(&["force_emulation_prefix", "tdp_mmu"]);
        assert_eq!(
            module_parameters(svm, "kvm", &kvm),
            "force_emulation_prefix=1"
        );
        assert_eq!(module_parameters(svm, "irqbypass", &kvm), "");
        assert_eq!(module_parameters(vmx, "kvm_amd", &amd), "");
    }

    #[test]
    fn bit_helpers_name_bits() {
        let names = [(0, "P"), (32, "FINAL"), (33, "PAGE")];
        assert_eq!(bit_names(0x1_0000_0001, &names), "P|FINAL");
        assert_eq!(bit_names(0x10, &names), "0x10");
        assert_eq!(bit_names(0, &names), "none");
        assert_eq!(
            bit_diff(0x2_0000_0000, 0x1_0000_0000, u64::MAX, &names),
            "FINAL set, PAGE expected"
        );
        assert_eq!(bit_diff(1, 0, 0, &names), "");
    }
}
