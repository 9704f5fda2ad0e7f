//! AMD SVM with nested paging (APM vol. 2, ch. 15).

use nestfault_protocol::{Executor, FieldWrite, EXIT_FIELDS};

use kvm_bindings::CpuId;

use super::{
    bit_diff, bit_names, cpuid_leaf, emulator_walks, faulting_gpa, has_bit, ArchError,
    ControlBlock, Exit, Expectation, Expected, Field, Fix, NestedTables, Vendor,
};
use crate::machine::{CpuState, FaultSite, Segment, RFLAGS_FIXED};
use crate::paging::{Format, LeafEdit, Perms};
use crate::scenario::{Access, Case, Fault, L2Paging, LeafSize, Scenario, Target};

/// Before it, KVM gave every NPF it injected from the emulator GUEST_FINAL, whatever the stage.
pub const STAGE_FIX: Fix = Fix {
    commit: Some("297c2fe249db"),
    title: "KVM: SVM: Fix nested NPF injection of PFERR_GUEST_{PAGE,FINAL}_MASK bits",
    release: "7.2",
};

/// The emulator's NPFs on L2's table pages need [`STAGE_FIX`]; final-page ones were right anyway
/// (GUEST_FINAL is what the old code always set).
pub fn fix_checked_by(case: &Case) -> Option<&'static Fix> {
    (emulator_walks(case.path) && case.scenario.target != Target::Final).then_some(&STAGE_FIX)
}

/// #VMEXIT codes (APM appendix C).
const VMEXIT_NPF: u64 = 0x400;
const VMEXIT_VMMCALL: u64 = 0x81;
const VMEXIT_IOIO: u64 = 0x7b;
const VMEXIT_SHUTDOWN: u64 = 0x7f;
const VMEXIT_EXCEPTION_BASE: u64 = 0x40;
const VMEXIT_INVALID: u64 = u64::MAX;

/// #NPF exit_info_1 bits: the #PF error code in 31:0, the stage in 33:32.
const PFERR_PRESENT: u64 = 1 << 0;
const PFERR_WRITE: u64 = 1 << 1;
const PFERR_USER: u64 = 1 << 2;
const PFERR_RSVD: u64 = 1 << 3;
const PFERR_FETCH: u64 = 1 << 4;
const PFERR_GUEST_FINAL: u64 = 1 << 32;
const PFERR_GUEST_PAGE: u64 = 1 << 33;
const EXIT_INFO_1_BITS: &[(u32, &str)] = &[
    (0, "P"),
    (1, "W"),
    (2, "U"),
    (3, "RSVD"),
    (4, "ID"),
    (6, "SS"),
    (31, "RMP"),
    (32, "GUEST_FINAL"),
    (33, "GUEST_PAGE"),
];

/// VMCB layout (APM appendix B): control area at 0, state-save area at 0x400.
mod vmcb {
    pub const INTERCEPT_EXCEPTIONS_MISC1: u64 = 0x08;
    pub const INTERCEPT_MISC2: u64 = 0x10;
    pub const IOPM_BASE_PA: u64 = 0x40;
    pub const MSRPM_BASE_PA: u64 = 0x48;
    pub const ASID_TLB_CTL: u64 = 0x58;
    pub const EXIT_CODE: u64 = 0x70;
    pub const EXIT_INFO_1: u64 = 0x78;
    pub const EXIT_INFO_2: u64 = 0x80;
    pub const EXIT_INT_INFO: u64 = 0x88;
    pub const NESTED_CTL: u64 = 0x90;
    pub const NESTED_CR3: u64 = 0xb0;
    pub const ES: u64 = 0x400;
    pub const CS: u64 = 0x410;
    pub const SS: u64 = 0x420;
    pub const DS: u64 = 0x430;
    pub const FS: u64 = 0x440;
    pub const GS: u64 = 0x450;
    pub const GDTR: u64 = 0x460;
    pub const TR: u64 = 0x490;
    pub const EFER: u64 = 0x4d0;
    pub const CR4: u64 = 0x548;
    pub const CR3: u64 = 0x550;
    pub const CR0: u64 = 0x558;
    pub const DR7: u64 = 0x560;
    pub const DR6: u64 = 0x568;
    pub const RFLAGS: u64 = 0x570;
    pub const RIP: u64 = 0x578;
    pub const RSP: u64 = 0x5d8;
    pub const G_PAT: u64 = 0x668;

    pub const MISC1_SHUTDOWN: u64 = 1 << 31;
    pub const MISC2_VMRUN: u64 = 1 << 0;
    pub const MISC2_VMMCALL: u64 = 1 << 1;
    pub const NP_ENABLE: u64 = 1 << 0;
}

const EFER_SVME: u64 = 1 << 12;
/// The power-on PAT; KVM's VMRUN checks reject an invalid g_pat when nested paging is on.
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// The KVM module that offers SVM.
pub const KVM_MODULE: &str = "kvm_amd";

/// What KVM_GET_SUPPORTED_CPUID lacks for nested SVM with nested paging, if anything: KVM refuses
/// EFER.SVME without the SVM bit, and without NP silently runs L2 on shadow paging.
pub fn missing_cpuid(cpuid: &CpuId) -> Option<&'static str> {
    if !has_bit(cpuid, 0x8000_0001, |leaf| leaf.ecx, 2) {
        Some("SVM (CPUID 0x80000001 ECX bit 2)")
    } else if !has_bit(cpuid, 0x8000_000a, |leaf| leaf.edx, 0) {
        Some("nested paging (CPUID 0x8000000A EDX bit 0, kvm_amd npt)")
    } else {
        None
    }
}

/// What the vCPU's CPUID offers L1 that the matrix depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmCapabilities {
    /// CPUID 0x80000008 EAX[7:0]: bits from here to 51 are reserved in NPT entries.
    pub maxphyaddr: u32,
    /// CPUID 0x80000001 EDX bit 26: 1 GiB pages, in NPT as in L1's own tables.
    pub gbpages: bool,
}

impl SvmCapabilities {
    /// What QEMU's `-cpu max` offers under TCG, through KVM, as measured.
    #[cfg(test)]
    pub const QEMU_TCG: SvmCapabilities = SvmCapabilities {
        maxphyaddr: 40,
        gbpages: true,
    };

    pub fn from_cpuid(cpuid: &CpuId) -> Self {
        Self {
            // Without the leaf the architectural default for long mode is 36 bits.
            maxphyaddr: cpuid_leaf(cpuid, 0x8000_0008).map_or(36, |leaf| leaf.eax & 0xff),
            gbpages: has_bit(cpuid, 0x8000_0001, |leaf| leaf.edx, 26),
        }
    }
}

#[derive(Debug)]
pub struct Svm {
    capabilities: SvmCapabilities,
}

impl Svm {
    pub fn new(capabilities: SvmCapabilities) -> Self {
        Self { capabilities }
    }
}

impl Vendor for Svm {
    fn nested_format(&self) -> Format {
        Format::Npt
    }

    /// APM vol. 2 15.25.5: NPT entries have the x86-64 long-mode format, so "reserved" is the
    /// lowest physical-address bit at or above MAXPHYADDR, and U/S and NX keep their meaning.
    fn nested_edit(&self, fault: Fault) -> LeafEdit {
        let perms = |perms| LeafEdit {
            perms: Some(perms),
            extra_bits: 0,
        };
        match fault {
            Fault::Unmapped => LeafEdit {
                perms: None,
                extra_bits: 0,
            },
            Fault::WriteProtected => perms(Perms::READ_EXEC),
            Fault::ReservedBit => LeafEdit {
                perms: Some(Perms::RWX),
                extra_bits: 1 << self.capabilities.maxphyaddr,
            },
            Fault::Supervisor => perms(Perms::SUPERVISOR),
            Fault::NoExecute => perms(Perms::READ_WRITE),
        }
    }

    fn unsupported(&self, scenario: &Scenario) -> Option<String> {
        let caps = self.capabilities;
        if scenario.nested_leaf == LeafSize::Size1G && !caps.gbpages {
            return Some(
                "KVM offers L1 no 1 GiB pages (CPUID 0x80000001 EDX bit 26): no setting adds them \
                 on this CPU; `nestfault --kernel` boots an emulated CPU that has them"
                    .into(),
            );
        }
        if scenario.fault == Fault::ReservedBit && caps.maxphyaddr >= 52 {
            return Some(
                "MAXPHYADDR is 52: NPT entries have no reserved address bit to set; no setting \
                 changes it; `nestfault --kernel` boots an emulated CPU with MAXPHYADDR 40"
                    .into(),
            );
        }
        None
    }

    fn required_cr4(&self) -> u64 {
        0
    }

    fn msrs(&self) -> Vec<(u32, u64)> {
        // The stub sets EFER.SVME and VM_HSAVE_PA itself, as an L1 hypervisor would.
        Vec::new()
    }

    /// No SVM kernel is known to have carried stale state into an #NPF it synthesizes (the
    /// stage bug wrote a constant GUEST_FINAL): the prime would only cost each case L0's faults
    /// on its fresh page tables.
    fn needs_prime(&self) -> bool {
        false
    }

    fn done_instruction(&self) -> [u8; 3] {
        [0x0f, 0x01, 0xd9] // vmmcall
    }

    fn control_block(
        &self,
        _l1: &CpuState,
        l2: &CpuState,
        nested: NestedTables,
    ) -> Result<ControlBlock, ArchError> {
        let nested_root = nested.root;
        use vmcb::*;
        let segment = |offset: u64, s: Segment| {
            let packed = u64::from(s.selector)
                | u64::from(s.svm_attributes()) << 16
                | u64::from(s.limit) << 32;
            [
                FieldWrite {
                    field: offset,
                    value: packed,
                },
                FieldWrite {
                    field: offset + 8,
                    value: s.base,
                },
            ]
        };
        let gdtr = Segment {
            selector: 0,
            base: l2.gdt_base,
            limit: l2.gdt_limit.into(),
            access_rights: 0,
        };
        let mut writes = vec![
            // VMRUN must be intercepted (a consistency check); VMMCALL is L2's "done"; SHUTDOWN
            // turns an L2 triple fault into an exit L1 can report.
            FieldWrite {
                field: INTERCEPT_EXCEPTIONS_MISC1,
                value: MISC1_SHUTDOWN << 32,
            },
            FieldWrite {
                field: INTERCEPT_MISC2,
                value: MISC2_VMRUN | MISC2_VMMCALL,
            },
            // No IOIO or MSR intercepts, so the bitmaps are never read; KVM only checks that their
            // addresses are legal, which 0 is. Not intercepting I/O is the point: L0 emulates
            // L2's string I/O itself.
            FieldWrite {
                field: IOPM_BASE_PA,
                value: 0,
            },
            FieldWrite {
                field: MSRPM_BASE_PA,
                value: 0,
            },
            FieldWrite {
                field: ASID_TLB_CTL,
                value: 1,
            },
            FieldWrite {
                field: NESTED_CTL,
                value: NP_ENABLE,
            },
            FieldWrite {
                field: NESTED_CR3,
                value: nested_root,
            },
            FieldWrite {
                field: EFER,
                value: l2.efer | EFER_SVME,
            },
            FieldWrite {
                field: CR4,
                value: l2.cr4,
            },
            FieldWrite {
                field: CR3,
                value: l2.cr3,
            },
            FieldWrite {
                field: CR0,
                value: l2.cr0,
            },
            FieldWrite {
                field: DR7,
                value: 0x400,
            },
            FieldWrite {
                field: DR6,
                value: 0xffff_0ff0,
            },
            FieldWrite {
                field: RFLAGS,
                value: RFLAGS_FIXED,
            },
            FieldWrite {
                field: RIP,
                value: l2.rip,
            },
            FieldWrite {
                field: RSP,
                value: l2.rsp,
            },
            FieldWrite {
                field: G_PAT,
                value: DEFAULT_PAT,
            },
        ];
        for (offset, s) in [
            (ES, l2.data),
            (CS, l2.code),
            (SS, l2.data),
            (DS, l2.data),
            (FS, l2.data),
            (GS, l2.data),
            (GDTR, gdtr),
            (TR, l2.tr),
        ] {
            writes.extend(segment(offset, s));
        }
        Ok(ControlBlock {
            executor: Executor::Svm,
            writes,
            reads: [EXIT_CODE, EXIT_INFO_1, EXIT_INFO_2, EXIT_INT_INFO],
            revision: None,
        })
    }

    fn field_name(&self, field: Field) -> Option<&'static str> {
        match field {
            Field::Code => Some("exit_code"),
            Field::Bits => Some("exit_info_1"),
            Field::Gpa => Some("exit_info_2"),
            Field::LinearAddress => None,
        }
    }

    fn exit(&self, reads: &[u64; EXIT_FIELDS]) -> Exit {
        let [code, bits, gpa, _exit_int_info] = *reads;
        Exit {
            code,
            bits,
            gpa,
            linear_address: None,
        }
    }

    /// APM 15.25.6 and Linux's PFERR_GUEST_{FINAL,PAGE}_MASK: the #PF error code of the failing
    /// nested access plus the stage. Every nested walk is a user access; an access to a guest
    /// page-table page asks for write (A/D updates), in KVM's walker as in AMD's, and is never a
    /// fetch. P means the entry was present (a protection or reserved-bit fault); RSVD comes with
    /// P; ID marks a fetch from the final page (L1 runs with EFER.NXE).
    fn expect(&self, case: &Case, site: &FaultSite) -> Expectation {
        let scenario = &case.scenario;
        let final_page = scenario.target == Target::Final;
        let mut error_code = PFERR_USER;
        if scenario.fault != Fault::Unmapped {
            error_code |= PFERR_PRESENT;
        }
        if scenario.fault == Fault::ReservedBit {
            error_code |= PFERR_RSVD;
        }
        if scenario.access == Access::Write || !final_page {
            error_code |= PFERR_WRITE;
        }
        if scenario.access == Access::Fetch && final_page {
            error_code |= PFERR_FETCH;
        }
        error_code |= if final_page {
            PFERR_GUEST_FINAL
        } else {
            PFERR_GUEST_PAGE
        };
        let mut notes = Vec::new();
        if scenario.l2_paging == L2Paging::Pae && scenario.target == Target::Pdpt {
            notes.push(
                "PAE under NPT: no PDPTE registers (the VMCB holds none); the walk reads the \
                 PDPTE through L1's NPT as part of the access, and the #NPF is taken there"
                    .to_string(),
            );
        }
        Expectation {
            code: Expected::exact(VMEXIT_NPF),
            bits: Expected::exact(error_code),
            gpa: Expected::exact(faulting_gpa(case, site)),
            linear_address: None,
            notes,
        }
    }

    fn decode(&self, field: Field, value: u64) -> Option<String> {
        match field {
            Field::Code => Some(exit_code_name(value)),
            Field::Bits => Some(bit_names(value, EXIT_INFO_1_BITS)),
            Field::Gpa | Field::LinearAddress => None,
        }
    }

    fn diagnose(&self, case: &Case, expected: &Expectation, actual: &Exit) -> Vec<String> {
        let (wanted, got) = (expected.bits, actual.bits);
        if actual.code != VMEXIT_NPF {
            return vec![unexpected_exit(actual.code)];
        }
        let mut findings = Vec::new();
        if !wanted.matches(got) {
            findings.push(format!(
                "exit_info_1: {}",
                bit_diff(wanted.value, got, wanted.mask, EXIT_INFO_1_BITS)
            ));
        }
        if fix_checked_by(case).is_some() && got == stage_flipped(wanted.value) {
            findings.push(format!(
                "the signature of a kernel without {}: before it, NPFs injected from the emulator \
                 always carried GUEST_FINAL",
                STAGE_FIX.cite()
            ));
        }
        findings
    }
}

/// What a kernel without [`STAGE_FIX`] reports for an expected GUEST_PAGE exit_info_1.
pub fn stage_flipped(exit_info_1: u64) -> u64 {
    (exit_info_1 & !PFERR_GUEST_PAGE) | PFERR_GUEST_FINAL
}

fn exit_code_name(code: u64) -> String {
    match code {
        VMEXIT_NPF => "NPF".to_string(),
        VMEXIT_VMMCALL => "VMMCALL".to_string(),
        VMEXIT_IOIO => "IOIO".to_string(),
        VMEXIT_SHUTDOWN => "SHUTDOWN".to_string(),
        VMEXIT_INVALID => "INVALID".to_string(),
        code if (VMEXIT_EXCEPTION_BASE..VMEXIT_EXCEPTION_BASE + 32).contains(&code) => {
            format!("EXCP{}", code - VMEXIT_EXCEPTION_BASE)
        }
        _ => "unknown".to_string(),
    }
}

fn unexpected_exit(code: u64) -> String {
    let meaning = match code {
        VMEXIT_VMMCALL => "L2 ran to its VMMCALL: no nested page fault reached L1",
        VMEXIT_INVALID => "VMRUN failed KVM's VMCB consistency checks (VMEXIT_INVALID)",
        VMEXIT_SHUTDOWN => "L2 shut down (triple fault)",
        VMEXIT_IOIO => "L1 got L2's I/O exit, though it does not intercept I/O",
        _ => "not the nested page fault L1 should have received",
    };
    format!("exit_code {code:#x} ({}): {meaning}", exit_code_name(code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::built_in_case;

    fn svm() -> Svm {
        Svm::new(SvmCapabilities::QEMU_TCG)
    }

    fn site() -> FaultSite {
        FaultSite::sample()
    }

    fn exit_info_1(id: &str) -> u64 {
        svm().expect(&built_in_case(id), &site()).bits.value
    }

    /// The upstream selftest's values for the four emulated seed scenarios (docs/oracle.md).
    #[test]
    fn emulated_seed_rows_match_the_selftest() {
        for (id, value) in [
            ("svm/final_page_unmapped/emulated", 0x1_0000_0004),
            ("svm/pt_page_unmapped/emulated", 0x2_0000_0006),
            ("svm/final_page_write_protected/emulated", 0x1_0000_0007),
            ("svm/pt_page_write_protected/emulated", 0x2_0000_0007),
        ] {
            assert_eq!(exit_info_1(id), value, "{id}");
        }
    }

    /// kvm-unit-tests' x86/svm_npt.c, measured on AMD hardware: npt_np, npt_nx, npt_us, npt_rw,
    /// npt_rw_pfwalk, npt_rsvd, npt_rsvd_pfwalk (docs/oracle.md, peer anchors).
    #[test]
    fn hardware_rows_match_kvm_unit_tests() {
        for (id, value) in [
            ("svm/final_page_unmapped/hardware", 0x1_0000_0004),
            ("svm/final_page_no_execute_fetch/hardware", 0x1_0000_0015),
            ("svm/final_page_supervisor_read/hardware", 0x1_0000_0005),
            ("svm/final_page_write_protected/hardware", 0x1_0000_0007),
            ("svm/pt_page_write_protected/hardware", 0x2_0000_0007),
            ("svm/final_page_reserved_bit_read/hardware", 0x1_0000_000d),
            ("svm/pt_page_reserved_bit_read/hardware", 0x2_0000_000f),
        ] {
            assert_eq!(exit_info_1(id), value, "{id}");
        }
    }

    /// Every L2 table level is a guest page-table page: GUEST_PAGE with W, whatever L2 does;
    /// the emulator reports the page, the CPU the entry. A fetch is ID only on the final page.
    #[test]
    fn upper_levels_and_fetches_follow_the_same_rules() {
        for (id, value, gpa) in [
            (
                "svm/pd_page_unmapped_read/emulated",
                0x2_0000_0006,
                0x20_4000,
            ),
            (
                "svm/pdpt_page_write_protected_read/forced",
                0x2_0000_0007,
                0x20_3000,
            ),
            (
                "svm/pdpt_page_unmapped_write/hardware",
                0x2_0000_0006,
                0x20_3000,
            ),
            (
                "svm/pml4_page_unmapped_fetch/hardware",
                0x2_0000_0006,
                0x14_0008,
            ),
            (
                "svm/final_page_unmapped_fetch/hardware",
                0x1_0000_0014,
                0x21_0000,
            ),
        ] {
            let expectation = svm().expect(&built_in_case(id), &site());
            assert_eq!(expectation.bits, Expected::exact(value), "{id}");
            assert_eq!(expectation.gpa, Expected::exact(gpa), "{id}");
        }
    }

    #[test]
    fn faults_edit_the_npt_leaf_as_the_apm_defines_them() {
        let edit = svm().nested_edit(Fault::ReservedBit);
        assert_eq!(edit.extra_bits, 1 << 40);
        assert_eq!(svm().nested_edit(Fault::Unmapped).perms, None);
        assert_eq!(
            svm().nested_edit(Fault::Supervisor).perms,
            Some(Perms::SUPERVISOR)
        );
        assert_eq!(
            svm().nested_edit(Fault::NoExecute).perms,
            Some(Perms::READ_WRITE)
        );
        let no_gbpages = Svm::new(SvmCapabilities {
            gbpages: false,
            ..SvmCapabilities::QEMU_TCG
        });
        let one_g = built_in_case("svm/final_page_unmapped_read_nested_1g/hardware");
        assert!(no_gbpages
            .unsupported(&one_g.scenario)
            .unwrap()
            .contains("1 GiB"));
        assert_eq!(svm().unsupported(&one_g.scenario), None);
    }

    #[test]
    fn exit_code_and_gpa_come_first() {
        let expectation = svm().expect(&built_in_case("svm/pt_page_unmapped/emulated"), &site());
        assert_eq!(expectation.code, Expected::exact(0x400));
        assert_eq!(expectation.gpa, Expected::exact(0x20_5000));
        let expectation = svm().expect(&built_in_case("svm/final_page_unmapped/emulated"), &site());
        assert_eq!(expectation.gpa, Expected::exact(0x21_0000));
    }

    #[test]
    fn unfixed_kernel_signature_names_the_commit_on_every_level() {
        for id in [
            "svm/pt_page_unmapped/emulated",
            "svm/pd_page_write_protected_read/forced",
            "svm/pt_page_reserved_bit_read/emulated",
        ] {
            let case = built_in_case(id);
            let expected = svm().expect(&case, &site());
            let got = stage_flipped(expected.bits.value);
            let findings =
                svm().diagnose(&case, &expected, &svm().exit(&[0x400, got, 0x20_5000, 0]));
            assert_eq!(
                findings[0],
                "exit_info_1: GUEST_FINAL set, GUEST_PAGE expected"
            );
            assert!(findings[1].contains("297c2fe249db"), "{id}: {findings:?}");
            assert_eq!(fix_checked_by(&case), Some(&STAGE_FIX), "{id}");
        }
        // The same bits on the hardware path are not that bug, nor a final-page row.
        let hardware = built_in_case("svm/pt_page_unmapped/hardware");
        let expected = svm().expect(&hardware, &site());
        let findings = svm().diagnose(
            &hardware,
            &expected,
            &svm().exit(&[0x400, 0x1_0000_0006, 0x20_5000, 0]),
        );
        assert!(
            !findings.iter().any(|f| f.contains("297c2fe249db")),
            "{findings:?}"
        );
        assert_eq!(fix_checked_by(&hardware), None);
        assert_eq!(
            fix_checked_by(&built_in_case("svm/final_page_unmapped/forced")),
            None
        );
    }

    #[test]
    fn other_exits_are_explained() {
        let case = built_in_case("svm/pt_page_unmapped/emulated");
        let expected = svm().expect(&case, &site());
        let findings = svm().diagnose(&case, &expected, &svm().exit(&[0x81, 0, 0, 0]));
        assert_eq!(
            findings,
            ["exit_code 0x81 (VMMCALL): L2 ran to its VMMCALL: no nested page fault reached L1"]
        );
        assert_eq!(svm().decode(Field::Code, u64::MAX).unwrap(), "INVALID");
        assert_eq!(svm().decode(Field::Code, 0x4e).unwrap(), "EXCP14");
        assert_eq!(
            svm().decode(Field::Bits, 0x2_0000_0007).unwrap(),
            "P|W|U|GUEST_PAGE"
        );
        assert_eq!(svm().decode(Field::Gpa, 0x1000), None);
    }
}
