//! The machine state that the layout hands to the architecture code and the VM: segments, a
//! 64-bit CPL0 context, and where a case's fault sits. Plain data below both, so that neither
//! imports the other.

use crate::paging::PAGE_SIZE;
use crate::scenario::Target;

/// Where L1's TSS lives (the layout puts it there; TR describes it).
pub const TSS_GPA: u64 = 0x3000;

/// RFLAGS bit 1 is reserved and always set; everything else (IF included) is clear.
pub const RFLAGS_FIXED: u64 = 1 << 1;

/// A segment in the VMX access-rights format (SDM 25.4.1); other formats derive from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub access_rights: u32,
}

impl Segment {
    pub const CODE64: Segment = Segment {
        selector: 0x08,
        base: 0,
        limit: 0xffff_ffff,
        access_rights: 0xa09b,
    };
    /// Protected mode's flat 32-bit code segment (D=1, L=0), for L2 in PAE or 32-bit paging.
    pub const CODE32: Segment = Segment {
        selector: 0x08,
        base: 0,
        limit: 0xffff_ffff,
        access_rights: 0xc09b,
    };
    pub const DATA: Segment = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        access_rights: 0xc093,
    };
    pub const TSS: Segment = Segment {
        selector: 0x18,
        base: TSS_GPA,
        limit: 0x67,
        access_rights: 0x008b,
    };
    /// VMX's "unusable" bit (16), for LDTR.
    pub const UNUSABLE: Segment = Segment {
        selector: 0,
        base: 0,
        limit: 0,
        access_rights: 1 << 16,
    };

    /// The SVM VMCB attribute format: access byte in 7:0, AVL/L/DB/G in 11:8 (APM 15.5.1).
    pub fn svm_attributes(&self) -> u16 {
        ((self.access_rights & 0xff) | ((self.access_rights >> 4) & 0xf00)) as u16
    }

    /// The 8-byte GDT descriptor (the low half, for the 16-byte TSS descriptor).
    pub fn descriptor(&self) -> u64 {
        let (base, limit, ar) = (
            self.base,
            u64::from(self.limit),
            u64::from(self.access_rights),
        );
        let (limit, granular) = if limit > 0xf_ffff {
            (limit >> 12, 1 << 15)
        } else {
            (limit, 0)
        };
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((ar & 0xff) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((ar & 0x7000) | granular) << 40)
            | (((base >> 24) & 0xff) << 56)
    }
}

/// A CPL0 context: L1's (64-bit, set through KVM) and L2's (described to L1's VMCB/VMCS; 64-bit,
/// or 32-bit protected mode with PAE or 32-bit paging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rip: u64,
    pub rsp: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub code: Segment,
    pub data: Segment,
    pub tr: Segment,
    /// With PAE paging, the four PDPTEs at CR3: VMX takes them from the VMCS at VM entry when
    /// EPT is on (SDM 26.3.2.4); SVM's walk reads them from memory.
    pub pae_pdptes: Option<[u64; 4]>,
}

/// Where the scenario's fault is, in L2's address spaces; the oracle derives GPAs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSite {
    /// The linear address of the faulting access: the data page's, or for a fault on L2's CR3
    /// page, L2's first instruction.
    pub gva: u64,
    pub data_gpa: u64,
    /// The GPAs of the L2 paging-structure entries on the walk of `gva`, root first, down to the
    /// leaf (one per level of L2's paging mode for a 4 KiB page, one fewer for 2 MiB).
    pub walk: Vec<u64>,
    /// The levels of L2's paging mode: the root's table level (4 for a PML4).
    pub levels: u32,
}

impl FaultSite {
    /// The GPA of the L2 paging-structure entry that lives in the page `target` breaks; `None`
    /// for the final page (or a level the walk does not reach).
    pub fn entry_gpa(&self, target: Target) -> Option<u64> {
        let level = target.table_level()?;
        let depth = self.levels.checked_sub(level)?;
        self.walk.get(depth as usize).copied()
    }

    /// The GPA of the page `target` breaks.
    pub fn broken_page(&self, target: Target) -> u64 {
        self.entry_gpa(target)
            .map_or(self.data_gpa, |entry| entry & !(PAGE_SIZE - 1))
    }
}

impl FaultSite {
    /// A site as the layout builds one, for the oracle's tests: the walk's entries at index 0 of
    /// their tables below the root (PML4E, PDPTE, PDE, PTE), a data page in L1's memory.
    #[cfg(test)]
    pub fn sample() -> Self {
        FaultSite {
            gva: 0x80_0000_0000,
            data_gpa: 0x21_0000,
            walk: vec![0x14_0008, 0x20_3000, 0x20_4000, 0x20_5000],
            levels: 4,
        }
    }
}
