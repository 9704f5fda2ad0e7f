//! nestfault's L1 stub: a small, generic executor.
//!
//! It knows nothing about scenarios. The host fills the mailbox with the control-block writes that
//! describe L2 (whose page tables, nested tables and code the host also built); the stub enables SVM
//! or VMX, applies the writes, enters L2 once, copies the requested exit fields back, and reports.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

mod cpu;
mod svm;
mod vmx;

use nestfault_protocol::{Executor, Mailbox, Status, GARBAGE_STATUS, MAILBOX_GPA};

/// Entry point; the host sets RSP to the top of the stub's stack and long mode is already on.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start() -> ! {
    // SAFETY: the host maps the mailbox page at MAILBOX_GPA (identity-mapped, writable) before it
    // starts the vCPU, and the host does not touch it again until the stub reports through DONE_PORT.
    let mailbox = unsafe { &mut *(MAILBOX_GPA as *mut Mailbox) };
    let status = match mailbox.validate() {
        Err(status) => status,
        Ok(Executor::Svm) => svm::run(mailbox),
        Ok(Executor::Vmx) => vmx::run(mailbox),
        Ok(Executor::TestEcho) => {
            mailbox.exit = mailbox.reads.map(|read| read.wrapping_add(1));
            Status::Exited
        }
        Ok(Executor::TestHang) => cpu::spin_forever(),
        Ok(Executor::TestTripleFault) => cpu::raise_undefined_opcode(),
        Ok(Executor::TestGarbage) => cpu::report_raw_and_halt(GARBAGE_STATUS),
    };
    mailbox.status = status as u64;
    cpu::report_raw_and_halt(status as u32)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing here can panic by design; halting tells the host "L1 halted" rather than hanging.
    cpu::halt_forever()
}
