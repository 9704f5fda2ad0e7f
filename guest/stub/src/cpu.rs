//! The few privileged instructions both executors need.

use core::arch::asm;
use nestfault_protocol::DONE_PORT;

pub fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: L1 runs at CPL0 and only reads MSRs the host's CPUID advertises (EFER).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nostack)) };
    (u64::from(high) << 32) | u64::from(low)
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: L1 runs at CPL0; the executors only write EFER.SVME and VM_HSAVE_PA, which the host's
    // CPUID (SVM advertised) makes legal.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

/// Tells the host the run is over (with a `Status`, or garbage on purpose); the host stops the
/// vCPU on this OUT.
pub fn report_raw_and_halt(status: u32) -> ! {
    // SAFETY: an OUT to the done port exits to the host VMM, which owns the port.
    unsafe { asm!("out dx, eax", in("dx") DONE_PORT, in("eax") status, options(nostack)) };
    halt_forever()
}

/// Never exits to the host: only the host's watchdog ends this.
pub fn spin_forever() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// UD2 with no IDT: #UD cannot be delivered, so the vCPU triple-faults.
pub fn raise_undefined_opcode() -> ! {
    // SAFETY: deliberately faults; the host sees a shutdown exit and never resumes L1.
    unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts off only stops this vCPU; the host sees the HLT exit.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
