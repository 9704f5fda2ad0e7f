//! Turns a [`Case`] into L1's physical memory: L1's identity map, GDT and TSS, the stub, L2's page
//! tables and code, the nested tables with the scenario's fault applied, and the mailbox with the
//! vendor's control-block writes. Pure data: nothing here talks to KVM.
//!
//! L1 physical memory (2 MiB, identity-mapped for L1; small, because every page the guest kernel
//! has to fault in costs time under an emulated L0):
//!
//! ```text
//! 0x0000_1000  mailbox (nestfault_protocol::MAILBOX_GPA)
//! 0x0000_2000  GDT                0x0000_3000  TSS
//! 0x0000_8000  L1 stack (grows down from 0x1_0000)
//! 0x0010_0000  L1 stub image (guest/stub/link.ld)
//! 0x0014_0000  page pool: tables, VMCB/VMCS, L2 code, stack and data pages
//! ```
//!
//! L2 (virtual) address space: its code and stack identity-mapped through PML4 entry 0; the
//! faulting address mapped to the data page through a PML4 entry of its own, so that every L2
//! table page on its walk below the root is its own (a broken one cannot stop L2's code or
//! stack). Where in its pages the access lies is the scenario's [`Placement`]: [`FAULT_GVA`] at
//! byte 0 through entry 0 of every table below the root (page-aligned and exact addresses
//! coincide), or [`FAULT_GVA_OFFSET`] at a byte offset through a non-zero entry of every table (a
//! GPA rounded to its page, or wrong at any level, shows). A data page behind a large nested leaf
//! or a 2 MiB L2 page sits at [`DATA_GPA_BEYOND_RAM`]: every case faults before reaching it, so
//! nothing needs to back it.

use nestfault_protocol::{Mailbox, MAILBOX_GPA, MAX_WRITES};

use crate::arch::{ArchError, ControlBlock, NestedTables, Vendor};
use crate::elf;
use crate::machine::{CpuState, FaultSite, Segment, TSS_GPA};
use crate::mailbox::GuestMailbox;
use crate::paging::{Format, LayoutError, PageTable, Perms, PhysImage, PAGE_SIZE};
use crate::scenario::{
    Access, AccessPath, Case, EptAd, L2Ad, L2Paging, LeafSize, Placement, Span, Target,
};

pub const MEMORY_SIZE: u64 = 2 << 20;
const GDT_GPA: u64 = 0x2000;
const L1_STACK_TOP: u64 = 0x1_0000;
const STUB_START: u64 = 0x10_0000;
const POOL_START: u64 = 0x14_0000;
/// Pages L0 should not find shadowed already are placed on their own 64 KiB boundary: KVM
/// prefetches shadow entries in aligned groups of 8 or 16 around a fault.
const PREFETCH_GROUP: u64 = 0x1_0000;

/// The data L2 touches, [`Placement::Aligned`]: PML4 entry 1, index 0 at every level below,
/// byte 0 of the page.
pub const FAULT_GVA: u64 = 0x80_0000_0000;
/// The same, [`Placement::Offset`]: PML4 entry 3, PDPT entry 5, PD entry 7, PT entry 9, byte
/// 0x5a8 of the page (a one-byte access stays inside it).
pub const FAULT_GVA_OFFSET: u64 = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x5a8;
/// The aligned and offset addresses in L2's other paging modes, of the same shape: a root entry
/// of their own, then entry 0 of every table below and byte 0, or the offset placement's entries
/// (PML4 3, PDPT 5, PD 7, PT 9, as far as the mode has those tables) and byte 0x5a8; within 32
/// bits where L2 runs in protected mode.
const FAULT_GVA_5LEVEL: u64 = 1 << 48;
const FAULT_GVA_OFFSET_5LEVEL: u64 = (2 << 48) | FAULT_GVA_OFFSET;
const FAULT_GVA_PAE: u64 = 1 << 30;
const FAULT_GVA_OFFSET_PAE: u64 = (3 << 30) | (7 << 21) | (9 << 12) | 0x5a8;
const FAULT_GVA_32BIT: u64 = 1 << 22;
const FAULT_GVA_OFFSET_32BIT: u64 = (3 << 22) | (9 << 12) | 0x5a8;

/// Where L2's data access lies in `mode` with `placement`.
pub fn fault_gva(mode: L2Paging, placement: Placement) -> u64 {
    match (mode, placement) {
        (L2Paging::FourLevel, Placement::Aligned) => FAULT_GVA,
        (L2Paging::FourLevel, Placement::Offset) => FAULT_GVA_OFFSET,
        (L2Paging::FiveLevel, Placement::Aligned) => FAULT_GVA_5LEVEL,
        (L2Paging::FiveLevel, Placement::Offset) => FAULT_GVA_OFFSET_5LEVEL,
        (L2Paging::Pae, Placement::Aligned) => FAULT_GVA_PAE,
        (L2Paging::Pae, Placement::Offset) => FAULT_GVA_OFFSET_PAE,
        (L2Paging::Bits32, Placement::Aligned) => FAULT_GVA_32BIT,
        (L2Paging::Bits32, Placement::Offset) => FAULT_GVA_OFFSET_32BIT,
    }
}

/// The format of L2's own tables in `mode`.
pub fn l2_format(mode: L2Paging) -> Format {
    match mode {
        L2Paging::FourLevel => Format::X86_64,
        L2Paging::FiveLevel => Format::La57,
        L2Paging::Pae => Format::Pae,
        L2Paging::Bits32 => Format::Paging32,
    }
}

/// The data page's GPA when a 2 MiB or 1 GiB page maps it (1 GiB-aligned, above L1's memory).
pub const DATA_GPA_BEYOND_RAM: u64 = 0x4000_0000;
/// L2's accessed and dirty bits (SDM vol. 3A 4.8: bits 5 and 6 of a paging entry).
const L2_ACCESSED: u64 = 1 << 5;
const L2_DIRTY: u64 = 1 << 6;

/// A crossing access ([`Span::Crossing`]) starts this many bytes before the broken page's first
/// byte and is 4 bytes long.
pub const CROSSING_LEAD: u64 = 2;
/// Mapped through page tables of its own to L2's code page (see [`Prime`]).
const PRIME_WALK_GVA: u64 = 0x8000_0000;
/// I/O port L2's string I/O uses; the host answers INSB's read of it.
pub const L2_IO_PORT: u16 = 0x80;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// NX in entries is legal only with EFER.NXE, and KVM reports fetch faults (ID, ACC_INSTR) only
/// when it is on (paging_tmpl.h); L1's EFER is what its nested walk uses.
const EFER_NXE: u64 = 1 << 11;
/// Everything the VM needs to start L1 on a case.
pub struct GuestImage {
    pub memory: PhysImage,
    pub l1: CpuState,
    pub site: FaultSite,
}

/// A read L2 does before the faulting instruction, so that the last hardware nested fault L0
/// handled is of the opposite stage to the expected one. Kernels up to 6.9 copied stale VMX
/// qualification bits 8:7 from that fault into emulator-injected EPT violations (docs/oracle.md, section 3);
/// without the prime one row could pass by coincidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prime {
    /// Through fresh page tables to an already-shadowed page: last fault is a paging-structure one.
    Walk,
    /// Through already-shadowed tables to a fresh page: last fault is on a final translation.
    Final,
}

pub fn build(case: &Case, vendor: &dyn Vendor, stub: &[u8]) -> Result<GuestImage, BuildError> {
    let mut memory = PhysImage::new(MEMORY_SIZE, POOL_START);
    let l1_tables = PageTable::new(Format::X86_64, &mut memory)?;
    l1_tables.identity_map(&mut memory, 0, MEMORY_SIZE)?;
    write_gdt(&mut memory)?;
    let entry = elf::load(stub, &mut memory, STUB_START..POOL_START)?;

    let base = CpuState {
        cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
        cr3: l1_tables.root,
        cr4: CR4_PAE | vendor.required_cr4(),
        efer: EFER_LME | EFER_LMA | EFER_NXE,
        rip: entry,
        // A call's worth below a 16-byte boundary, as if `_start` had been called.
        rsp: L1_STACK_TOP - 8,
        gdt_base: GDT_GPA,
        gdt_limit: 0x27,
        code: Segment::CODE64,
        data: Segment::DATA,
        tr: Segment::TSS,
        pae_pdptes: None,
    };

    // L2's world.
    let point = &case.scenario;
    let mode = point.l2_paging;
    let l2_tables = PageTable::new(l2_format(mode), &mut memory)?;
    let code = memory.alloc_page("L2 code")?;
    let stack = memory.alloc_page("L2 stack")?;
    l2_tables.map(&mut memory, code, code, Perms::RWX)?;
    l2_tables.map(&mut memory, stack, stack, Perms::RWX)?;
    memory.align_pool(PREFETCH_GROUP);
    let data = if point.nested_leaf != LeafSize::Size4K || point.l2_leaf != LeafSize::Size4K {
        DATA_GPA_BEYOND_RAM
    } else {
        memory.alloc_page("the data page")?
    };
    let data_gva = fault_gva(mode, point.placement);
    let page_of = |gva: u64| gva & !(point.l2_leaf.bytes() - 1);
    l2_tables.map_sized(
        &mut memory,
        page_of(data_gva),
        data,
        Perms::RWX,
        point.l2_leaf,
    )?;
    // A crossing access starts on the page before the data page: whole, and (the data page
    // starting a PML4 entry of its own) walked through none of the data page's L2 tables.
    let lead_in = match point.span {
        Span::Within => None,
        Span::Crossing => {
            let gva = page_of(data_gva) - PAGE_SIZE;
            let page = memory.alloc_page("the lead-in page")?;
            l2_tables.map(&mut memory, gva, page, Perms::RWX)?;
            Some(gva)
        }
    };
    let prime = vendor.needs_prime().then_some(match point.target {
        Target::Final => Prime::Walk,
        _ => Prime::Final,
    });
    memory.align_pool(PREFETCH_GROUP);
    let prime_gva = match prime {
        None => None,
        Some(Prime::Walk) => {
            l2_tables.map(&mut memory, PRIME_WALK_GVA, code, Perms::RWX)?;
            Some(PRIME_WALK_GVA)
        }
        Some(Prime::Final) => {
            // Next to the code page, so it shares the code's (already shadowed) page tables.
            let gva = code + 2 * PAGE_SIZE;
            let fresh = memory.alloc_page("the prime page")?;
            l2_tables.map(&mut memory, gva, fresh, Perms::RWX)?;
            Some(gva)
        }
    };
    // L2's first instruction fetch is the first walk of its CR3 page.
    let gva = if point.breaks_root() { code } else { data_gva };
    let site = FaultSite {
        gva,
        data_gpa: data,
        walk: l2_tables.walk(&memory, gva)?,
        levels: mode.levels(),
    };
    if point.l2_ad == L2Ad::Set {
        // As if L2 had been there before: the CPU need write no A or D bit on this walk. (A
        // PAE PDPTE has none: its bits 5 and 6 are reserved.)
        let leaf = site.walk.len() - 1;
        let first = usize::from(mode == L2Paging::Pae);
        for (depth, &entry) in site.walk.iter().enumerate().skip(first) {
            let flags = if depth == leaf {
                L2_ACCESSED | L2_DIRTY
            } else {
                L2_ACCESSED
            };
            let value = l2_tables.read_entry(&memory, entry)?;
            l2_tables.write_entry(&mut memory, entry, value | flags)?;
        }
    }
    let access_gva = match lead_in {
        Some(_) => data_gva - CROSSING_LEAD,
        None => data_gva,
    };
    let program = l2_program(
        case,
        L2Accesses {
            lead_in,
            prime: prime_gva,
            access: access_gva,
        },
        vendor.done_instruction(),
    );
    memory.write("L2 code", code, &program)?;
    if point.access == Access::Fetch && data != DATA_GPA_BEYOND_RAM {
        // A fetch that does not fault (a PAE PDPT page under EPT) runs the hypercall that
        // says so, not the page's zeros.
        let target = data + data_gva % PAGE_SIZE;
        memory.write("the data page", target, &vendor.done_instruction())?;
    }

    // L1's nested tables: identity, with the scenario's fault.
    memory.align_pool(PREFETCH_GROUP);
    let nested = PageTable::new(vendor.nested_format(), &mut memory)?;
    nested.identity_map(&mut memory, 0, MEMORY_SIZE)?;
    if data == DATA_GPA_BEYOND_RAM {
        let size = point.nested_leaf;
        nested.map_sized(&mut memory, data, data, Perms::RWX, size)?;
    }
    let broken = site.broken_page(point.target);
    nested.set_leaf(&mut memory, broken, vendor.nested_edit(point.fault))?;

    let pae_pdptes = match mode {
        L2Paging::Pae => {
            let mut entries = [0; 4];
            for (i, entry) in (0..).zip(&mut entries) {
                *entry = l2_tables.read_entry(&memory, l2_tables.root + 8 * i)?;
            }
            Some(entries)
        }
        _ => None,
    };
    let l2 = CpuState {
        cr3: l2_tables.root,
        rip: code,
        rsp: stack + PAGE_SIZE,
        pae_pdptes,
        ..l2_mode(&base, mode, vendor)
    };
    let host_save = memory.alloc_page("the host-save area")?;
    let control = memory.alloc_page("the control block")?;
    let tables = NestedTables {
        root: nested.root,
        accessed_dirty: point.ept_ad == EptAd::On,
    };
    let block = vendor.control_block(&base, &l2, tables)?;
    write_mailbox(&mut memory, &block, host_save, control)?;
    Ok(GuestImage {
        memory,
        l1: base,
        site,
    })
}

/// L1's context with L2's paging mode: long mode with CR4.PAE (and LA57 for 5 levels), or
/// protected mode with a 32-bit code segment, with or without CR4.PAE (SDM 4.1.1). EFER.NXE
/// stays on, so that PAE entries may carry NX.
fn l2_mode(l1: &CpuState, mode: L2Paging, vendor: &dyn Vendor) -> CpuState {
    let (cr4, efer, code) = match mode {
        L2Paging::FourLevel => (CR4_PAE, EFER_LME | EFER_LMA, Segment::CODE64),
        L2Paging::FiveLevel => (CR4_PAE | CR4_LA57, EFER_LME | EFER_LMA, Segment::CODE64),
        L2Paging::Pae => (CR4_PAE, 0, Segment::CODE32),
        L2Paging::Bits32 => (0, 0, Segment::CODE32),
    };
    CpuState {
        cr4: cr4 | vendor.required_cr4(),
        efer: efer | EFER_NXE,
        code,
        ..l1.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("the L1 stub image is unusable: {0}")]
    Stub(#[from] elf::ElfError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("{writes} control-block writes exceed the mailbox's {MAX_WRITES}")]
    MailboxFull { writes: usize },
}

fn write_gdt(memory: &mut PhysImage) -> Result<(), LayoutError> {
    let tss = Segment::TSS;
    let entries = [
        0,
        Segment::CODE64.descriptor(),
        Segment::DATA.descriptor(),
        tss.descriptor(),
        tss.base >> 32,
    ];
    for (i, entry) in entries.into_iter().enumerate() {
        memory.write_u64("the GDT", GDT_GPA + 8 * i as u64, entry)?;
    }
    // An empty I/O bitmap offset past the limit: no I/O permission bitmap.
    memory.write("the TSS", TSS_GPA + 0x66, &0x68u16.to_le_bytes())
}

fn write_mailbox(
    memory: &mut PhysImage,
    block: &ControlBlock,
    host_save: u64,
    control: u64,
) -> Result<(), BuildError> {
    if block.writes.len() > MAX_WRITES {
        return Err(BuildError::MailboxFull {
            writes: block.writes.len(),
        });
    }
    if let Some(revision) = block.revision {
        memory.write("the VMXON region", host_save, &revision.to_le_bytes())?;
        memory.write("the VMCS", control, &revision.to_le_bytes())?;
    }
    let mut mailbox = Mailbox::new(block.executor);
    mailbox.host_save_gpa = host_save;
    mailbox.control_block_gpa = control;
    mailbox.write_count = block.writes.len() as u64;
    mailbox.writes[..block.writes.len()].copy_from_slice(&block.writes);
    mailbox.reads = block.reads;
    memory.write("the mailbox", MAILBOX_GPA, &GuestMailbox::bytes(&mailbox))?;
    Ok(())
}

/// KVM's forced-emulation prefix: `ud2` and "kvm". With kvm.force_emulation_prefix set, L0
/// emulates the instruction after it (handle_ud in arch/x86/kvm/x86.c), for L2 too when L1 does not
/// intercept #UD.
const FORCED_EMULATION_PREFIX: [u8; 5] = [0x0f, 0x0b, b'k', b'v', b'm'];

/// The linear addresses L2's program touches, in order.
struct L2Accesses {
    /// A crossing access's first page, read first so that L0 has shadowed it before the prime:
    /// the crossing access itself then takes no hardware fault on it, and the last one L0
    /// handled stays the prime's.
    lead_in: Option<u64>,
    /// `None` where the vendor needs no prime ([`Vendor::needs_prime`]).
    prime: Option<u64>,
    /// Where the scenario's access starts.
    access: u64,
}

/// L2's code: the lead-in read (a crossing access), the prime read, the scenario's access, then
/// the vendor's hypercall, which L1 intercepts as "finished without a fault". A crossing access
/// is 4 bytes (OUTSD/INSD, or MOV EAX), any other 1 byte (OUTSB/INSB, MOV AL). In long mode
/// addresses are 64-bit immediates (with REX.W where the opcode needs it), in protected mode
/// 32-bit ones: the same opcodes otherwise.
fn l2_program(case: &Case, at: L2Accesses, done: [u8; 3]) -> Vec<u8> {
    let long_mode = case.scenario.l2_paging.long_mode();
    let mut code = Vec::new();
    let address = |code: &mut Vec<u8>, value: u64| {
        let bytes = value.to_le_bytes();
        code.extend_from_slice(if long_mode { &bytes } else { &bytes[..4] });
    };
    // mov r/e{si,di,ax}, imm: B8+r, REX.W for the 64-bit register.
    let load = |code: &mut Vec<u8>, opcode: u8, value: u64| {
        if long_mode {
            code.push(0x48);
        }
        code.push(opcode);
        address(code, value);
    };
    for read in at.lead_in.into_iter().chain(at.prime) {
        // mov al, [moffs]
        code.push(0xa0);
        address(&mut code, read);
    }
    let access = case.scenario.access;
    // The one-byte opcodes' 4-byte forms are the next opcode up (OUTSB 6e -> OUTSD 6f, INSB 6c
    // -> INSD 6d, MOV AL a0/a2 -> MOV EAX a1/a3).
    let wide = u8::from(case.scenario.span == Span::Crossing);
    match case.path {
        AccessPath::Emulated => {
            let (index_register, string_op) = match access {
                Access::Write => (0xbf, 0x6c), // mov rdi/edi; insb
                _ => (0xbe, 0x6e),             // mov rsi/esi; outsb
            };
            load(&mut code, index_register, at.access);
            code.extend_from_slice(&[0x66, 0xba]); // mov dx, imm16
            code.extend_from_slice(&L2_IO_PORT.to_le_bytes());
            code.push(string_op + wide);
        }
        AccessPath::Hardware | AccessPath::Forced => {
            if case.path == AccessPath::Forced {
                code.extend_from_slice(&FORCED_EMULATION_PREFIX);
            }
            match access {
                Access::Read => {
                    code.push(0xa0 + wide); // mov al, [moffs]
                    address(&mut code, at.access);
                }
                Access::Write => {
                    code.push(0xa2 + wide); // mov [moffs], al
                    address(&mut code, at.access);
                }
                Access::Fetch => {
                    load(&mut code, 0xb8, at.access); // mov rax/eax, imm
                    code.extend_from_slice(&[0xff, 0xe0]); // jmp rax/eax
                }
            }
        }
    }
    code.extend_from_slice(&done);
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use crate::scenario::built_in_case as case;

    #[test]
    fn descriptors_match_the_usual_encodings() {
        assert_eq!(Segment::CODE64.descriptor(), 0x00af_9b00_0000_ffff);
        assert_eq!(Segment::DATA.descriptor(), 0x00cf_9300_0000_ffff);
        assert_eq!(Segment::TSS.descriptor(), 0x0000_8b00_3000_0067);
        assert_eq!(Segment::CODE64.svm_attributes(), 0xa9b);
        assert_eq!(Segment::DATA.svm_attributes(), 0xc93);
    }

    fn at(prime: u64) -> L2Accesses {
        L2Accesses {
            lead_in: None,
            prime: Some(prime),
            access: FAULT_GVA,
        }
    }

    #[test]
    fn l2_programs_encode_the_scenario_access() {
        let done = [0x0f, 0x01, 0xd9];
        let outsb = l2_program(&case("svm/pt_page_unmapped/emulated"), at(0x1234), done);
        assert_eq!(&outsb[..9], &[0xa0, 0x34, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&outsb[9..11], &[0x48, 0xbe]);
        assert_eq!(&outsb[11..19], &FAULT_GVA.to_le_bytes());
        assert_eq!(
            &outsb[19..],
            &[0x66, 0xba, 0x80, 0x00, 0x6e, 0x0f, 0x01, 0xd9]
        );
        let insb = l2_program(
            &case("svm/final_page_write_protected/emulated"),
            at(0),
            done,
        );
        assert_eq!((insb[10], insb[23]), (0xbf, 0x6c));
        let store = l2_program(
            &case("svm/final_page_write_protected/hardware"),
            at(0),
            done,
        );
        assert_eq!(&store[9..18], &[0xa2, 0, 0, 0, 0, 0x80, 0, 0, 0]);
        let forced = l2_program(&case("svm/final_page_write_protected/forced"), at(0), done);
        assert_eq!(&forced[9..15], &[0x0f, 0x0b, b'k', b'v', b'm', 0xa2]);
        assert_eq!(&forced[15..23], &store[10..18]);
        let jump = l2_program(
            &case("vmx/final_page_no_execute_fetch/hardware"),
            at(0),
            done,
        );
        assert_eq!(&jump[9..11], &[0x48, 0xb8], "mov rax, imm64");
        assert_eq!(&jump[19..21], &[0xff, 0xe0], "jmp rax");
    }

    /// For every built-in case: the nested leaf of the broken page carries the vendor's edit,
    /// the rest of L2's walk stays whole, the broken page is not L2's CR3 page (which its code
    /// walks) unless the scenario says so, and the walk has index 0 below the root where the
    /// placement is aligned and a non-zero index at every level where it is offset.
    #[test]
    fn nested_tables_break_exactly_the_scenarios_entry() {
        let stub = crate::elf::tests::tiny_stub();
        for case in crate::scenario::expand(&crate::scenario::built_in().unwrap()) {
            let id = case.id();
            let vendor = arch::for_tests(case.vendor);
            let image = build(&case, vendor.as_ref(), &stub).unwrap();
            let site = &image.site;
            let point = &case.scenario;
            let format = vendor.nested_format();
            let nested = PageTable {
                format,
                root: nested_root(&image, format),
            };
            let broken = site.broken_page(point.target);
            let edit = vendor.nested_edit(point.fault);
            let leaf = nested.walk(&image.memory, broken).map(|walk| {
                let slot = *walk.last().unwrap();
                (walk.len(), image.memory.read_u64("", slot).unwrap())
            });
            let nested_levels = 5 - point.nested_leaf.level() as usize;
            match edit.perms {
                None => assert!(leaf.is_err(), "{id}: {leaf:?}"),
                Some(perms) => {
                    let (levels, entry) = leaf.unwrap();
                    let wanted = if point.target == Target::Final {
                        nested_levels
                    } else {
                        4
                    };
                    assert_eq!(levels, wanted, "{id}: leaf level");
                    assert_eq!(format.perms_of(entry), perms, "{id}");
                    assert_eq!(entry & edit.extra_bits, edit.extra_bits, "{id}");
                }
            }
            let levels = point.l2_paging.levels() as usize;
            assert_eq!(
                site.walk.len(),
                if point.breaks_root() {
                    levels
                } else {
                    levels + 1 - point.l2_leaf.level() as usize
                },
                "{id}"
            );
            if !point.breaks_root() {
                let entry_bytes = l2_format(point.l2_paging).entry_bytes();
                for (depth, entry) in site.walk.iter().enumerate() {
                    let index = entry % PAGE_SIZE / entry_bytes;
                    match point.placement {
                        Placement::Aligned if depth > 0 => {
                            assert_eq!(index, 0, "{id}: entry {depth} of its table is index 0")
                        }
                        Placement::Aligned => {}
                        Placement::Offset => {
                            assert_ne!(index, 0, "{id}: entry {depth} of its table is not 0")
                        }
                    }
                }
                let offset = site.gva % PAGE_SIZE;
                assert_eq!(offset != 0, point.placement == Placement::Offset, "{id}");
            }
            let whole = |gpa: u64| nested.translate(&image.memory, gpa).unwrap().map(|t| t.1);
            for page in site.walk.iter().map(|entry| entry & !(PAGE_SIZE - 1)) {
                if page != broken {
                    assert_eq!(whole(page), Some(Perms::RWX), "{id}: table page {page:#x}");
                }
            }
            if !point.breaks_root() {
                assert_ne!(
                    broken & !(PAGE_SIZE - 1),
                    site.walk[0] & !(PAGE_SIZE - 1),
                    "{id}"
                );
            }
            assert_eq!(whole(MAILBOX_GPA), Some(Perms::RWX), "{id}");
        }
    }

    /// The addresses the oracle expects are the architecture's on every path: for an offset
    /// case the faulting byte (data page plus the offset) or the L2 entry's own GPA, never its
    /// page; the linear address (VMX) the access's own.
    #[test]
    fn the_oracle_expects_exact_addresses_on_every_path() {
        let stub = crate::elf::tests::tiny_stub();
        let offset_cases: Vec<Case> =
            crate::scenario::expand(&crate::scenario::built_in().unwrap())
                .into_iter()
                .filter(|case| case.scenario.placement == Placement::Offset)
                .collect();
        assert!(offset_cases.len() >= 60, "{}", offset_cases.len());
        for case in offset_cases {
            let id = case.id();
            let vendor = arch::for_tests(case.vendor);
            let image = build(&case, vendor.as_ref(), &stub).unwrap();
            let site = &image.site;
            let expectation = vendor.expect(&case, site);
            let gpa = expectation.gpa.value;
            let wanted = match site.entry_gpa(case.scenario.target) {
                Some(entry) => entry,
                None => site.data_gpa + (FAULT_GVA_OFFSET % PAGE_SIZE),
            };
            assert_eq!(gpa, wanted, "{id}");
            assert_ne!(
                gpa % PAGE_SIZE,
                0,
                "{id}: {gpa:#x} is a page, not the access"
            );
            // Where the architecture puts the entry, whatever the builder did: entry 9, 7, 5 or
            // 3 of the PT, PD, PDPT or PML4 (the offset placement), 4 bytes each with 32-bit
            // paging, 8 otherwise (SDM vol. 3A 4.3-4.5).
            if let Some(level) = case.scenario.target.table_level() {
                let index = [9, 7, 5, 3][level as usize - 1];
                let entry_bytes = match case.scenario.l2_paging {
                    L2Paging::Bits32 => 4,
                    _ => 8,
                };
                assert_eq!(gpa % PAGE_SIZE, index * entry_bytes, "{id}");
            }
            assert_eq!(expectation.gpa.mask, !0, "{id}: the GPA is compared whole");
            if let Some(linear) = expectation.linear_address.filter(|l| l.mask != 0) {
                let gva = fault_gva(case.scenario.l2_paging, Placement::Offset);
                assert_eq!(linear.value, gva, "{id}");
            }
        }
    }

    /// A crossing access starts on a page whose walk shares no L2 table page below the root
    /// with the broken page's, and the oracle names the broken page's first byte.
    #[test]
    fn crossing_accesses_start_on_a_whole_page_of_other_tables() {
        let stub = crate::elf::tests::tiny_stub();
        for case in crate::scenario::expand(&crate::scenario::built_in().unwrap())
            .into_iter()
            .filter(|case| case.scenario.span == Span::Crossing)
        {
            let id = case.id();
            let vendor = arch::for_tests(case.vendor);
            let image = build(&case, vendor.as_ref(), &stub).unwrap();
            let l2 = PageTable {
                format: Format::X86_64,
                root: image.site.walk[0] & !(PAGE_SIZE - 1),
            };
            let lead_in = l2.walk(&image.memory, FAULT_GVA - CROSSING_LEAD).unwrap();
            let pages = |walk: &[u64]| -> Vec<u64> {
                walk.iter()
                    .skip(1)
                    .map(|entry| entry & !(PAGE_SIZE - 1))
                    .collect()
            };
            for page in pages(&lead_in) {
                assert!(!pages(&image.site.walk).contains(&page), "{id}: {page:#x}");
            }
            assert_eq!(image.site.gva, FAULT_GVA, "{id}");
            let expectation = vendor.expect(&case, &image.site);
            if let Some(linear) = expectation.linear_address.filter(|l| l.mask != 0) {
                assert_eq!(
                    linear.value, FAULT_GVA,
                    "{id}: the broken page's first byte"
                );
            }
        }
    }

    /// The nested root, as the control block tells L1: SVM's NESTED_CR3, VMX's EPT pointer.
    fn nested_root(image: &GuestImage, format: Format) -> u64 {
        let bytes = image
            .memory
            .read("the mailbox", MAILBOX_GPA, PAGE_SIZE)
            .unwrap();
        let mailbox = GuestMailbox::from_bytes(&bytes).unwrap();
        let field = if format == Format::Npt { 0xb0 } else { 0x201a };
        let write = mailbox
            .queued_writes()
            .unwrap()
            .iter()
            .find(|write| write.field == field);
        write.unwrap().value & !0xfff
    }
}
