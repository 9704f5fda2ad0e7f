//! What one run of a case saw: how it ended and, if the stub reported, its mailbox. Produced by
//! the VM, judged by the verdict module, which so needs nothing of KVM.

use nestfault_protocol::{Mailbox, Status};

/// How a run ended.
#[derive(Debug)]
pub enum Observation {
    /// The stub reported through the done port (a [`Status`], or the raw value if it is none);
    /// the mailbox holds its outputs.
    Reported {
        status: Result<Status, u32>,
        mailbox: Box<Mailbox>,
        l2_io: L2Io,
    },
    /// The vCPU stopped some other way: not a verdict on the kernel, a harness error.
    Stopped { reason: String, registers: String },
}

/// L2's string I/O that reached userspace: INSB's port read is expected before its write faults;
/// an OUTSB port write means the read that should have faulted went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Io {
    pub port_reads: u32,
    pub port_writes: u32,
}
