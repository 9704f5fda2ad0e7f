//! AMD SVM with nested paging (APM vol. 2, ch. 15).

use nestfault_protocol::{Executor, FieldWrite};

use super::{bit_diff, bit_names, faulting_gpa, ControlBlock, Expectation, Expected, Vendor};
use crate::layout::{BuildError, CpuState, FaultSite, Segment, RFLAGS_FIXED};
use crate::paging::Format;
use crate::scenario::{Access, AccessPath, Case, Fault, Target};

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

#[derive(Debug)]
pub struct Svm;

impl Vendor for Svm {
    fn nested_format(&self) -> Format {
        Format::Npt
    }

    fn required_cr4(&self) -> u64 {
        0
    }

    fn msrs(&self) -> Vec<(u32, u64)> {
        // The stub sets EFER.SVME and VM_HSAVE_PA itself, as an L1 hypervisor would.
        Vec::new()
    }

    fn done_instruction(&self) -> [u8; 3] {
        [0x0f, 0x01, 0xd9] // vmmcall
    }

    fn control_block(
        &self,
        _l1: &CpuState,
        l2: &CpuState,
        nested_root: u64,
    ) -> Result<ControlBlock, BuildError> {
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

    fn exit_fields(&self) -> &'static [&'static str] {
        &["exit_code", "exit_info_1", "exit_info_2"]
    }

    /// APM 15.25.6 and Linux's PFERR_GUEST_{FINAL,PAGE}_MASK: the #PF error code of the failing
    /// nested access plus the stage. Every nested walk is a user access; an access to a guest
    /// page-table page asks for write (A/D updates), in KVM's walker as in AMD's.
    fn expect(&self, case: &Case, site: &FaultSite) -> Expectation {
        let scenario = &case.scenario;
        let final_page = scenario.target == Target::Final;
        let mut error_code = PFERR_USER;
        if scenario.fault == Fault::WriteProtected {
            error_code |= PFERR_PRESENT;
        }
        if scenario.access == Access::Write || !final_page {
            error_code |= PFERR_WRITE;
        }
        error_code |= if final_page {
            PFERR_GUEST_FINAL
        } else {
            PFERR_GUEST_PAGE
        };
        Expectation {
            fields: vec![
                Expected::exact(VMEXIT_NPF),
                Expected::exact(error_code),
                Expected::exact(faulting_gpa(case, site)),
            ],
            notes: Vec::new(),
        }
    }

    fn decode(&self, field: usize, value: u64) -> Option<String> {
        match field {
            0 => Some(exit_code_name(value)),
            1 => Some(bit_names(value, EXIT_INFO_1_BITS)),
            _ => None,
        }
    }

    fn diagnose(&self, case: &Case, expected: &Expectation, actual: &[u64]) -> Vec<String> {
        let (wanted, got) = (expected.fields[1], actual[1]);
        if actual[0] != VMEXIT_NPF {
            return vec![unexpected_exit(actual[0])];
        }
        let mut findings = Vec::new();
        if !wanted.matches(got) {
            findings.push(format!(
                "exit_info_1: {}",
                bit_diff(wanted.value, got, wanted.mask, EXIT_INFO_1_BITS)
            ));
        }
        let stage = PFERR_GUEST_FINAL | PFERR_GUEST_PAGE;
        let final_instead_of_page = wanted.value & stage == PFERR_GUEST_PAGE
            && got == (wanted.value & !stage) | PFERR_GUEST_FINAL;
        if final_instead_of_page && case.path == AccessPath::Emulated {
            findings.push(
                "the signature of a kernel without 297c2fe249db (\"KVM: SVM: Fix nested NPF injection of \
                 PFERR_GUEST_{PAGE,FINAL}_MASK bits\", Linux 7.2): before it, NPFs injected from the \
                 emulator always carried GUEST_FINAL"
                    .to_string(),
            );
        }
        findings
    }
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
    use crate::scenario::{built_in, expand};

    pub(crate) fn site() -> FaultSite {
        FaultSite {
            gva: 0x4000_0000,
            data_gpa: 0x21_0000,
            entry_gpas: [0x20_5000, 0x20_4000],
        }
    }

    fn case(id: &str) -> Case {
        expand(&built_in().unwrap())
            .into_iter()
            .find(|case| case.id() == id)
            .unwrap()
    }

    fn exit_info_1(id: &str) -> u64 {
        Svm.expect(&case(id), &site()).fields[1].value
    }

    /// The upstream selftest's values for the four emulated scenarios (oracle.md 3).
    #[test]
    fn emulated_rows_match_the_selftest() {
        assert_eq!(
            exit_info_1("svm/final_page_unmapped/emulated"),
            0x1_0000_0004
        );
        assert_eq!(exit_info_1("svm/pt_page_unmapped/emulated"), 0x2_0000_0006);
        assert_eq!(
            exit_info_1("svm/final_page_write_protected/emulated"),
            0x1_0000_0007
        );
        assert_eq!(
            exit_info_1("svm/pt_page_write_protected/emulated"),
            0x2_0000_0007
        );
    }

    #[test]
    fn hardware_rows_match_the_apm() {
        assert_eq!(
            exit_info_1("svm/final_page_unmapped/hardware"),
            0x1_0000_0004
        );
        assert_eq!(
            exit_info_1("svm/final_page_write_protected/hardware"),
            0x1_0000_0007
        );
        assert_eq!(exit_info_1("svm/pt_page_unmapped/hardware"), 0x2_0000_0006);
    }

    /// A page-directory page is a guest page-table page like any other: GUEST_PAGE, and the
    /// emulator reports the page while the CPU reports the entry.
    #[test]
    fn page_directory_faults_are_guest_page_faults() {
        let text =
            "summary = \"s\"\ntarget = \"pd_page\"\nfault = \"unmapped\"\naccess = \"read\"\n";
        let scenario = crate::scenario::parse("pd_page_unmapped.toml", text).unwrap();
        let site = FaultSite {
            entry_gpas: [0x20_5000, 0x20_4008],
            ..site()
        };
        for case in expand(&[scenario])
            .iter()
            .filter(|case| case.id().starts_with("svm/"))
        {
            let expectation = Svm.expect(case, &site);
            assert_eq!(
                expectation.fields[1],
                Expected::exact(0x2_0000_0006),
                "{}",
                case.id()
            );
            let gpa = if case.path == AccessPath::Emulated {
                0x20_4000
            } else {
                0x20_4008
            };
            assert_eq!(expectation.fields[2], Expected::exact(gpa), "{}", case.id());
        }
    }

    #[test]
    fn exit_code_and_gpa_come_first() {
        let expectation = Svm.expect(&case("svm/pt_page_unmapped/emulated"), &site());
        assert_eq!(expectation.fields[0], Expected::exact(0x400));
        assert_eq!(expectation.fields[2], Expected::exact(0x20_5000));
        let expectation = Svm.expect(&case("svm/final_page_unmapped/emulated"), &site());
        assert_eq!(expectation.fields[2], Expected::exact(0x21_0000));
    }

    #[test]
    fn unfixed_kernel_signature_names_the_commit() {
        let case = case("svm/pt_page_unmapped/emulated");
        let expected = Svm.expect(&case, &site());
        let findings = Svm.diagnose(&case, &expected, &[0x400, 0x1_0000_0006, 0x20_5000]);
        assert_eq!(
            findings[0],
            "exit_info_1: GUEST_FINAL set, GUEST_PAGE expected"
        );
        assert!(findings[1].contains("297c2fe249db"), "{findings:?}");
        // The same bits on the hardware path are not that bug.
        let hardware = self::case("svm/pt_page_unmapped/hardware");
        let findings = Svm.diagnose(&hardware, &expected, &[0x400, 0x1_0000_0006, 0x20_5000]);
        assert!(
            !findings.iter().any(|f| f.contains("297c2fe249db")),
            "{findings:?}"
        );
    }

    #[test]
    fn other_exits_are_explained() {
        let case = case("svm/pt_page_unmapped/emulated");
        let expected = Svm.expect(&case, &site());
        let findings = Svm.diagnose(&case, &expected, &[0x81, 0, 0]);
        assert_eq!(
            findings,
            ["exit_code 0x81 (VMMCALL): L2 ran to its VMMCALL: no nested page fault reached L1"]
        );
        assert_eq!(Svm.decode(0, u64::MAX).unwrap(), "INVALID");
        assert_eq!(Svm.decode(0, 0x4e).unwrap(), "EXCP14");
        assert_eq!(Svm.decode(1, 0x2_0000_0007).unwrap(), "P|W|U|GUEST_PAGE");
        assert_eq!(Svm.decode(2, 0x1000), None);
    }
}
