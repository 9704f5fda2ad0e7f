//! The contract between the nestfault host runner and its L1 stub.
//!
//! The host owns all policy: it builds the page tables, the nested tables with the fault applied, L2's
//! code, and the list of control-block writes that describe L2. The stub is a generic executor: it
//! turns on the vendor's virtualization extension, applies [`Mailbox::writes`] to the VMCB (SVM) or
//! VMCS (VMX), enters L2 once, reads back [`Mailbox::reads`] into [`Mailbox::exit`], and tells the host
//! it is done with an `OUT` to [`DONE_PORT`] carrying a [`Status`].
//!
//! Everything here is plain data: `#[repr(C)]`, `u64` fields only, so both sides agree on the layout
//! without padding surprises.
#![no_std]

/// `from_raw` for a fieldless enum: the listed variant whose discriminant is `raw`, so that the
/// numbers are written once, in the enum.
macro_rules! from_raw {
    ($type:ident, $repr:ty, [$($variant:ident),* $(,)?]) => {
        impl $type {
            pub fn from_raw(raw: $repr) -> Option<Self> {
                [$(Self::$variant),*].into_iter().find(|variant| *variant as $repr == raw)
            }
        }
    };
}

/// Guest-physical address of the mailbox page, identity-mapped in L1.
pub const MAILBOX_GPA: u64 = 0x1000;

/// "NFMAILBX", little-endian: tells the stub the host really filled the page.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NFMAILBX");

/// Bumped on any layout change, so a stale stub never misreads a newer host.
pub const VERSION: u64 = 1;

/// I/O port the stub writes its [`Status`] to when it is done. L2 uses port 0x80, so the host can tell
/// L1's report from L2's string I/O.
pub const DONE_PORT: u16 = 0x0e1f;

/// Capacity of [`Mailbox::writes`]; a VMX set-up needs about 70 fields.
pub const MAX_WRITES: usize = 96;

/// Number of exit fields the stub copies back.
pub const EXIT_FIELDS: usize = 4;

/// Which virtualization extension the stub drives (or which test behaviour it shows).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    /// AMD SVM: `writes` are 64-bit stores at byte offsets into the VMCB, `reads` are VMCB offsets.
    Svm = 1,
    /// Intel VMX: `writes` are VMWRITEs (field encoding, value), `reads` are VMREAD encodings.
    Vmx = 2,
    /// Test behaviours, which need no virtualization extension: they let the harness's own paths
    /// (mailbox round trip, watchdog, crash and garbage handling) be proven on any KVM host.
    /// Copies `reads[i] + 1` to `exit[i]` and reports [`Status::Exited`].
    TestEcho = 0x10,
    /// Spins forever without exiting to the host.
    TestHang = 0x11,
    /// Raises an exception with no IDT: a triple fault.
    TestTripleFault = 0x12,
    /// Reports a status no host knows.
    TestGarbage = 0x13,
}

from_raw!(
    Executor,
    u64,
    [Svm, Vmx, TestEcho, TestHang, TestTripleFault, TestGarbage]
);

/// What the stub reports through [`DONE_PORT`]. The low 8 bits are the kind; for VMX instruction
/// failures `Mailbox::detail` says which step failed and the VM-instruction error number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// L2 ran and exited to L1; `exit` holds the fields named by `reads`.
    Exited = 0,
    /// The mailbox had the wrong magic, version, executor or write count.
    BadMailbox = 1,
    /// A VMX instruction (VMXON, VMCLEAR, VMPTRLD, VMWRITE, VMLAUNCH, VMREAD) failed; see `detail`.
    VmxInstructionFailed = 2,
}

/// What [`Executor::TestGarbage`] reports: no [`Status`] has this value.
pub const GARBAGE_STATUS: u32 = 0xdead_beef;

from_raw!(Status, u32, [Exited, BadMailbox, VmxInstructionFailed]);

/// The VMX step that failed, stored in bits 63:32 of `Mailbox::detail`; bits 31:0 hold the
/// VM-instruction error (0 when the failure was VMfailInvalid), and for VMWRITE bits 31:16 hold the
/// index of the write.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxStep {
    Vmxon = 1,
    Vmclear = 2,
    Vmptrld = 3,
    Vmwrite = 4,
    Vmlaunch = 5,
    Vmread = 6,
}

from_raw!(
    VmxStep,
    u32,
    [Vmxon, Vmclear, Vmptrld, Vmwrite, Vmlaunch, Vmread]
);

/// Packs a VMX failure into `Mailbox::detail`.
pub const fn vmx_detail(step: VmxStep, index: u16, instruction_error: u16) -> u64 {
    ((step as u64) << 32) | ((index as u64) << 16) | instruction_error as u64
}

/// Splits `Mailbox::detail` into (step, write index, VM-instruction error).
pub fn split_vmx_detail(detail: u64) -> (Option<VmxStep>, u16, u16) {
    (
        VmxStep::from_raw((detail >> 32) as u32),
        (detail >> 16) as u16,
        detail as u16,
    )
}

/// One control-block write: a VMCB byte offset (SVM) or a VMCS field encoding (VMX), and its value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldWrite {
    pub field: u64,
    pub value: u64,
}

/// The mailbox page. The host fills everything up to `reads`; the stub fills `status`, `detail`, `exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Mailbox {
    pub magic: u64,
    pub version: u64,
    /// An [`Executor`] as `u64`.
    pub executor: u64,
    /// SVM: VM_HSAVE_PA. VMX: the VMXON region. Page-aligned, stamped by the host where needed.
    pub host_save_gpa: u64,
    /// SVM: the VMCB. VMX: the VMCS (stamped with the revision identifier by the host).
    pub control_block_gpa: u64,
    pub write_count: u64,
    pub writes: [FieldWrite; MAX_WRITES],
    /// Fields copied to `exit` after L2 exits.
    pub reads: [u64; EXIT_FIELDS],
    /// A [`Status`] as `u64` (also sent through [`DONE_PORT`]).
    pub status: u64,
    pub detail: u64,
    pub exit: [u64; EXIT_FIELDS],
}

impl Mailbox {
    /// An empty mailbox for `executor`, with magic and version set.
    pub const fn new(executor: Executor) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            executor: executor as u64,
            host_save_gpa: 0,
            control_block_gpa: 0,
            write_count: 0,
            writes: [FieldWrite { field: 0, value: 0 }; MAX_WRITES],
            reads: [0; EXIT_FIELDS],
            status: 0,
            detail: 0,
            exit: [0; EXIT_FIELDS],
        }
    }

    /// The writes the host queued, or `None` if the count is out of range.
    pub fn queued_writes(&self) -> Option<&[FieldWrite]> {
        self.writes.get(..usize::try_from(self.write_count).ok()?)
    }

    /// Checks the fields the stub relies on before it touches any hardware state.
    pub fn validate(&self) -> Result<Executor, Status> {
        if self.magic != MAGIC || self.version != VERSION || self.queued_writes().is_none() {
            return Err(Status::BadMailbox);
        }
        Executor::from_raw(self.executor).ok_or(Status::BadMailbox)
    }
}

// The mailbox must fit its page.
const _: () = assert!(core::mem::size_of::<Mailbox>() <= 4096);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_mailbox_validates() {
        assert_eq!(Mailbox::new(Executor::Vmx).validate(), Ok(Executor::Vmx));
    }

    #[test]
    fn corrupt_mailbox_is_rejected() {
        let mut mailbox = Mailbox::new(Executor::Svm);
        mailbox.write_count = MAX_WRITES as u64 + 1;
        assert_eq!(mailbox.validate(), Err(Status::BadMailbox));
        let mut mailbox = Mailbox::new(Executor::Svm);
        mailbox.magic ^= 1;
        assert_eq!(mailbox.validate(), Err(Status::BadMailbox));
        let mut mailbox = Mailbox::new(Executor::Svm);
        mailbox.executor = 7;
        assert_eq!(mailbox.validate(), Err(Status::BadMailbox));
    }

    #[test]
    fn raw_values_round_trip() {
        for executor in [
            Executor::Svm,
            Executor::Vmx,
            Executor::TestEcho,
            Executor::TestGarbage,
        ] {
            assert_eq!(Executor::from_raw(executor as u64), Some(executor));
        }
        assert_eq!(
            Status::from_raw(Status::VmxInstructionFailed as u32),
            Some(Status::VmxInstructionFailed)
        );
        assert_eq!(Status::from_raw(GARBAGE_STATUS), None);
        assert_eq!(
            VmxStep::from_raw(VmxStep::Vmread as u32),
            Some(VmxStep::Vmread)
        );
        assert_eq!(Executor::from_raw(0), None);
    }

    #[test]
    fn vmx_detail_round_trips() {
        let detail = vmx_detail(VmxStep::Vmwrite, 17, 12);
        assert_eq!(split_vmx_detail(detail), (Some(VmxStep::Vmwrite), 17, 12));
    }
}
