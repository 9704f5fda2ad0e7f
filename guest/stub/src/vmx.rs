//! Intel VMX: the VMCS is opaque, so the host's writes become VMWRITEs after VMXON and VMPTRLD.

use core::arch::asm;
use nestfault_protocol::{vmx_detail, Mailbox, Status, VmxStep, EXIT_FIELDS};

const VM_INSTRUCTION_ERROR: u64 = 0x4400;
const HOST_RSP: u64 = 0x6c14;
const HOST_RIP: u64 = 0x6c16;

/// A failed VMX instruction: which step, which write, and whether the VMCS can say why.
struct Failure {
    step: VmxStep,
    index: u16,
}

pub fn run(mailbox: &mut Mailbox) -> Status {
    match launch(mailbox) {
        Ok(()) => Status::Exited,
        Err(Failure { step, index }) => {
            // VMfailInvalid leaves no current VMCS to ask; report error 0 then.
            let error = vmread(VM_INSTRUCTION_ERROR).unwrap_or(0);
            mailbox.detail = vmx_detail(step, index, error as u16);
            Status::VmxInstructionFailed
        }
    }
}

fn launch(mailbox: &mut Mailbox) -> Result<(), Failure> {
    let fail = |step| move |()| Failure { step, index: 0 };
    let vmcs = mailbox.control_block_gpa;
    with_address(VmxStep::Vmxon, mailbox.host_save_gpa).map_err(fail(VmxStep::Vmxon))?;
    with_address(VmxStep::Vmclear, vmcs).map_err(fail(VmxStep::Vmclear))?;
    with_address(VmxStep::Vmptrld, vmcs).map_err(fail(VmxStep::Vmptrld))?;
    for (index, write) in mailbox.queued_writes().unwrap_or(&[]).iter().enumerate() {
        vmwrite(write.field, write.value).map_err(|()| Failure {
            step: VmxStep::Vmwrite,
            index: index as u16,
        })?;
    }
    enter_l2().map_err(fail(VmxStep::Vmlaunch))?;
    for i in 0..EXIT_FIELDS {
        mailbox.exit[i] = vmread(mailbox.reads[i]).map_err(|()| Failure {
            step: VmxStep::Vmread,
            index: i as u16,
        })?;
    }
    Ok(())
}

/// VMX instructions report failure in RFLAGS (CF: VMfailInvalid, ZF: VMfailValid); `seta` after
/// the instruction yields 1 exactly when neither is set.
fn succeeded(seta: u8) -> Result<(), ()> {
    if seta == 1 {
        Ok(())
    } else {
        Err(())
    }
}

/// VMXON, VMCLEAR and VMPTRLD take the physical address through a memory operand.
fn with_address(step: VmxStep, address: u64) -> Result<(), ()> {
    let ok: u8;
    let operand = &address as *const u64;
    // SAFETY: `operand` points at a live u64 holding a page the host prepared (VMXON region or VMCS,
    // stamped with the VMCS revision). The instructions only read that operand.
    unsafe {
        match step {
            VmxStep::Vmxon => asm!("vmxon [{0}]", "seta {1}", in(reg) operand, out(reg_byte) ok),
            VmxStep::Vmclear => {
                asm!("vmclear [{0}]", "seta {1}", in(reg) operand, out(reg_byte) ok)
            }
            _ => asm!("vmptrld [{0}]", "seta {1}", in(reg) operand, out(reg_byte) ok),
        }
    }
    succeeded(ok)
}

fn vmwrite(field: u64, value: u64) -> Result<(), ()> {
    let ok: u8;
    // SAFETY: VMWRITE to the current VMCS; a bad field or value fails with RFLAGS set, never faults
    // at CPL0 in VMX root operation.
    unsafe { asm!("vmwrite {0}, {1}", "seta {2}", in(reg) field, in(reg) value, out(reg_byte) ok) };
    succeeded(ok)
}

fn vmread(field: u64) -> Result<u64, ()> {
    let ok: u8;
    let value: u64;
    // SAFETY: as for vmwrite; VMREAD only reads the current VMCS.
    unsafe { asm!("vmread {0}, {1}", "seta {2}", out(reg) value, in(reg) field, out(reg_byte) ok) };
    succeeded(ok).map(|()| value)
}

/// VMLAUNCH with HOST_RSP/HOST_RIP pointing back here, so a VM exit resumes after the launch.
fn enter_l2() -> Result<(), ()> {
    let exited: u64;
    // SAFETY: HOST_RSP is written after the pushes, so the VM exit returns with the same stack and
    // the pops balance. On a VM exit every general-purpose register but RSP holds L2's value, hence
    // the clobbers; RBX and RBP are saved by hand because inline asm may not name them.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "mov rdx, {rsp_field}",
            "vmwrite rdx, rsp",
            "lea rax, [rip + 2f]",
            "mov rdx, {rip_field}",
            "vmwrite rdx, rax",
            "vmlaunch",
            // Only reached when VMLAUNCH itself failed.
            "xor eax, eax",
            "jmp 3f",
            "2:",
            "mov eax, 1",
            "3:",
            "pop rbp",
            "pop rbx",
            rsp_field = const HOST_RSP,
            rip_field = const HOST_RIP,
            lateout("rax") exited,
            lateout("rcx") _, lateout("rdx") _, lateout("rsi") _, lateout("rdi") _,
            lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
        )
    };
    succeeded(exited as u8)
}
