//! AMD SVM: the VMCB is plain memory, so the host's writes are 64-bit stores into it.

use core::arch::asm;
use nestfault_protocol::{FieldWrite, Mailbox, Status, EXIT_FIELDS};

use crate::cpu::{rdmsr, wrmsr};

const MSR_EFER: u32 = 0xc000_0080;
const EFER_SVME: u64 = 1 << 12;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const VMCB_SIZE: u64 = 4096;

pub fn run(mailbox: &mut Mailbox) -> Status {
    let vmcb = mailbox.control_block_gpa;
    let writes = mailbox.queued_writes().unwrap_or(&[]);
    let offsets_ok = writes
        .iter()
        .map(|w| w.field)
        .chain(mailbox.reads)
        .all(in_vmcb);
    if !vmcb.is_multiple_of(VMCB_SIZE) || !offsets_ok {
        return Status::BadMailbox;
    }
    for &FieldWrite { field, value } in writes {
        // SAFETY: the host identity-maps the VMCB page and `field` is an aligned offset inside it.
        unsafe { ((vmcb + field) as *mut u64).write_volatile(value) };
    }

    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, mailbox.host_save_gpa);
    // SAFETY: VMRUN saves L1's state to the host-save area and restores RSP, RIP and RAX on #VMEXIT;
    // every other general-purpose register comes back holding L2's value, hence the clobbers and the
    // explicit save of RBX/RBP, which inline asm may not name as clobbered.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "vmrun rax",
            "pop rbp",
            "pop rbx",
            in("rax") vmcb,
            lateout("rcx") _, lateout("rdx") _, lateout("rsi") _, lateout("rdi") _,
            lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
        )
    };

    for i in 0..EXIT_FIELDS {
        // SAFETY: as for the writes; the offsets were checked above.
        mailbox.exit[i] = unsafe { ((vmcb + mailbox.reads[i]) as *const u64).read_volatile() };
    }
    Status::Exited
}

fn in_vmcb(offset: u64) -> bool {
    offset.is_multiple_of(8) && offset < VMCB_SIZE
}
