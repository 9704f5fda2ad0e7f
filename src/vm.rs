//! The only module that talks to KVM: one VM with one vCPU and one memory slot per case, set up
//! with long-standing ioctls only (KVM_SET_USER_MEMORY_REGION, KVM_SET_CPUID2, KVM_SET_SREGS,
//! KVM_SET_MSRS, ...), so it runs on every kernel a bisect may land on.

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_segment, kvm_userspace_memory_region, nested::KvmNestedStateBuffer, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES, KVM_STATE_NESTED_GUEST_MODE,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use nestfault_protocol::{Mailbox, Status, DONE_PORT, MAILBOX_GPA};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{GuestImage, L2_IO_PORT};
use crate::machine::{Segment, RFLAGS_FIXED};
use crate::mailbox::GuestMailbox;
use crate::module_param;
use crate::observation::{L2Io, Observation};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: load kvm and kvm_amd or kvm_intel (modprobe kvm_amd / kvm_intel), or run on a machine with KVM")]
    NoKvm,
    #[error("permission denied opening /dev/kvm: {advice}")]
    KvmPermission { advice: String },
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM set {set} of the {wanted} MSRs nestfault needs ({what})")]
    Msrs {
        what: &'static str,
        wanted: usize,
        set: usize,
    },
    #[error("{0}")]
    Watchdog(std::io::Error),
    #[error("guest memory: {0}")]
    Memory(String),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|error| match error.errno() {
        libc::ENOENT => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission {
            advice: crate::host::kvm_access_advice(),
        },
        _ => VmError::KvmOpen(error),
    })
}

/// Whether L0's KVM emulates instructions behind its forced-emulation prefix (kvm.ko's
/// `force_emulation_prefix`); the reason a forced case cannot run, if not, with what turns it on
/// here. Distribution kernels ship it off. Whether it can be turned on without reloading kvm is
/// read from the parameter's sysfs mode (writable on newer kernels), not guessed from a version.
pub fn forced_emulation_prefix() -> Result<(), String> {
    let path = module_param::path("kvm", "force_emulation_prefix");
    let on_kernel = "with --kernel, leave out --kernel-param kvm.force_emulation_prefix=0";
    match module_param::read("kvm", "force_emulation_prefix") {
        Some(value) if module_param::is_on(&value) => Ok(()),
        Some(value) if module_param::is_writable("kvm", "force_emulation_prefix") => Err(format!(
            "kvm's force_emulation_prefix is {value}: turn it on at runtime with \
             `echo 1 | sudo tee {path}` (or load kvm with force_emulation_prefix=1; {on_kernel})"
        )),
        Some(value) => Err(format!(
            "kvm's force_emulation_prefix is {value} and read-only on this kernel: reload kvm \
             with it on (`sudo modprobe -r kvm_amd kvm_intel kvm; sudo modprobe kvm \
             force_emulation_prefix=1`, then kvm_amd or kvm_intel again; {on_kernel})"
        )),
        None => Err(format!(
            "cannot read {path}: forced cases need kvm loaded with force_emulation_prefix=1"
        )),
    }
}

pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))
}

/// A VM with one idle vCPU and no memory, kept for a whole run so that creating and destroying
/// each case's vCPU costs KVM no kernel-text patching.
///
/// Why: a vCPU without an in-kernel local APIC (every case's) increments the static key
/// `kvm_has_noapic_vcpu` when it is created and decrements it when it is freed (arch/x86/kvm/
/// lapic.c, kvm_create_lapic / kvm_free_lapic). With no other such vCPU alive, each case flips the
/// key 0 -> 1 -> 0, and each flip rewrites every `lapic_in_kernel()` site in kvm and kvm_amd /
/// kvm_intel. Under an emulated L0 that was most of a case's VM creation and teardown (measured
/// on 7.2 under QEMU TCG: KVM_CREATE_VCPU 6.3 ms of a 9 ms creation). With the anchor alive the
/// key stays on, which is the state each case's vCPU puts it in anyway: `lapic_in_kernel()`
/// then reads the vCPU's own APIC pointer, as it would with the key flipped on for that vCPU
/// alone. The anchor never runs and shares nothing with the cases' VMs.
pub struct Anchor {
    _vcpu: VcpuFd,
    _vm: VmFd,
}

impl Anchor {
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        Ok(Self {
            _vcpu: vcpu,
            _vm: vm,
        })
    }
}

/// A VM with L1's memory and one vCPU.
pub struct Vm {
    /// Held, not used. Fields drop in order: the VM and its vCPU go before `memory` is unmapped.
    _vm: VmFd,
    vcpu: VcpuFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// A VM of `memory_size` bytes whose vCPU has `cpuid` ([`supported_cpuid`]), which on a
    /// nested-capable host advertises SVM and NP or VMX: KVM refuses EFER.SVME / CR4.VMXE without.
    pub fn new(kvm: &Kvm, cpuid: &CpuId, memory_size: u64) -> Result<Self, VmError> {
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), memory_size as usize)])
            .map_err(|error| VmError::Memory(error.to_string()))?;
        let host = memory
            .get_host_address(GuestAddress(0))
            .map_err(|error| VmError::Memory(error.to_string()))?;
        // Small pages, always: since Linux 6.7 a 2 MiB anonymous mapping is aligned for a
        // transparent huge page, so that the first write would allocate and clear 2 MiB (under
        // an emulated L0, ~5 ms a case), and whether L0 backs L1 with 4 KiB or 2 MiB pages would
        // change with the kernel a bisect lands on. L1's own tables decide every fault under
        // test; L0's backing only sets how big the pages of KVM's nested tables may be.
        // SAFETY: advice on the mapping `memory` owns, before anything is in it; it cannot fail
        // in a way that matters (a kernel without THP ignores it).
        unsafe {
            libc::madvise(host.cast(), memory_size as usize, libc::MADV_NOHUGEPAGE);
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size,
            userspace_addr: host as u64,
        };
        // SAFETY: `memory` is a live anonymous mapping of `memory_size` bytes that outlives the VM
        // (both are fields of the returned Vm, and `_vm` is dropped first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        Ok(Self {
            _vm: vm,
            vcpu,
            memory,
        })
    }

    /// Reads MSRs of the vCPU (VMX capability MSRs as KVM offers them to L1).
    pub fn read_msrs(&self, indices: &[u32]) -> Result<Vec<u64>, VmError> {
        let mut msrs = msr_list(indices.iter().map(|&index| (index, 0)))?;
        let read = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(ioctl("KVM_GET_MSRS"))?;
        if read != indices.len() {
            return Err(VmError::Msrs {
                what: "reading capability MSRs",
                wanted: indices.len(),
                set: read,
            });
        }
        Ok(msrs.as_slice().iter().map(|entry| entry.data).collect())
    }

    /// Copies L1's memory image in and puts the vCPU in L1's long-mode state.
    pub fn load(&mut self, image: &GuestImage, msrs: &[(u32, u64)]) -> Result<(), VmError> {
        // Fresh guest memory is zero, and so is all of the image but the pages it lists: copying
        // only those spares the guest kernel a page fault per untouched page, which under an
        // emulated L0 is most of a case's set-up time.
        for (gpa, page) in image.memory.pages() {
            self.memory
                .write_slice(page, GuestAddress(gpa))
                .map_err(|error| VmError::Memory(error.to_string()))?;
        }
        let l1 = &image.l1;
        let mut sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        sregs.cs = kvm_segment_of(l1.code);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (
            kvm_segment_of(l1.data),
            kvm_segment_of(l1.data),
            kvm_segment_of(l1.data),
            kvm_segment_of(l1.data),
            kvm_segment_of(l1.data),
        );
        sregs.tr = kvm_segment_of(l1.tr);
        sregs.ldt = kvm_segment_of(Segment::UNUSABLE);
        sregs.gdt.base = l1.gdt_base;
        sregs.gdt.limit = l1.gdt_limit;
        // No IDT: an exception in L1 becomes a triple fault, which the run loop reports.
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (l1.cr0, l1.cr3, l1.cr4, l1.efer);
        self.vcpu
            .set_sregs(&sregs)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: l1.rip,
            rsp: l1.rsp,
            rflags: RFLAGS_FIXED,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        if !msrs.is_empty() {
            let list = msr_list(msrs.iter().copied())?;
            let set = self.vcpu.set_msrs(&list).map_err(ioctl("KVM_SET_MSRS"))?;
            if set != msrs.len() {
                return Err(VmError::Msrs {
                    what: "L1's MSRs (IA32_FEATURE_CONTROL)",
                    wanted: msrs.len(),
                    set,
                });
            }
        }
        Ok(())
    }

    /// Runs the vCPU until the stub reports, something else stops it, or `timeout` passes.
    pub fn run(&mut self, timeout: Duration) -> Result<Observation, VmError> {
        let deadline = crate::clock::deadline_after(timeout);
        crate::watchdog::while_armed(deadline, || self.run_until(deadline))
            .map_err(VmError::Watchdog)?
    }

    fn run_until(&mut self, deadline: Instant) -> Result<Observation, VmError> {
        const MAX_L2_PORT_ACCESSES: u32 = 16;
        let mut l2_io = L2Io::default();
        loop {
            if crate::interrupt::requested() {
                return Ok(self.stopped(crate::interrupt::reason()));
            }
            if Instant::now() >= deadline {
                return Ok(self.stopped(
                    "timeout: the guest did not report within the time limit".to_string(),
                ));
            }
            let stop = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(DONE_PORT, data)) => {
                    let raw = data.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
                    let status = Status::from_raw(raw).ok_or(raw);
                    let mailbox = self.mailbox()?;
                    return Ok(Observation::Reported {
                        status,
                        mailbox: Box::new(mailbox),
                        l2_io,
                    });
                }
                Ok(VcpuExit::IoIn(L2_IO_PORT, data)) => {
                    // INSB's port read: any byte will do; the write to memory comes next.
                    data.fill(0);
                    l2_io.port_reads += 1;
                    None
                }
                Ok(VcpuExit::IoOut(L2_IO_PORT, _)) => {
                    l2_io.port_writes += 1;
                    None
                }
                Ok(VcpuExit::IoIn(port, _)) | Ok(VcpuExit::IoOut(port, _)) => {
                    Some(format!("unexpected I/O to port {port:#x}"))
                }
                Ok(VcpuExit::Hlt) => Some("L1 halted without reporting".to_string()),
                Ok(VcpuExit::Shutdown) => Some(
                    "shutdown: L1 triple-faulted (an exception in L1, which has no IDT)"
                        .to_string(),
                ),
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    Some(format!("KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}"))
                }
                Ok(VcpuExit::InternalError) => Some(self.internal_error()),
                Ok(VcpuExit::Intr) => None,
                Ok(other) => Some(format!("unexpected exit {other:?}")),
                Err(error) if error.errno() == libc::EINTR => None,
                Err(error) => {
                    return Err(VmError::Ioctl {
                        what: "KVM_RUN",
                        source: error,
                    })
                }
            };
            if let Some(reason) = stop {
                return Ok(self.stopped(reason));
            }
            if l2_io.port_reads + l2_io.port_writes > MAX_L2_PORT_ACCESSES {
                return Ok(self.stopped("L2's string I/O kept reaching userspace".to_string()));
            }
        }
    }

    fn mailbox(&self) -> Result<Mailbox, VmError> {
        let wrapper: GuestMailbox = self
            .memory
            .read_obj(GuestAddress(MAILBOX_GPA))
            .map_err(|error| VmError::Memory(error.to_string()))?;
        Ok(wrapper.0)
    }

    fn internal_error(&mut self) -> String {
        // SAFETY: KVM_EXIT_INTERNAL_ERROR means the kernel filled the `internal` member of the
        // exit union; kvm-ioctls does not surface it.
        let internal = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal };
        let count = (internal.ndata as usize).min(internal.data.len());
        format!(
            "KVM internal error, suberror {} (data {:x?})",
            internal.suberror,
            &internal.data[..count]
        )
    }

    fn stopped(&self, reason: String) -> Observation {
        Observation::Stopped {
            reason,
            registers: self.registers(),
        }
    }

    /// The vCPU's registers, for error reports. While L2 runs these are L2's.
    fn registers(&self) -> String {
        let level = self
            .running_level()
            .map_or(String::new(), |level| format!("({level}) "));
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(regs), Ok(sregs)) => format!(
                "{level}rip={:#x} rsp={:#x} rax={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
                regs.rip, regs.rsp, regs.rax, regs.rflags, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, sregs.cs.selector
            ),
            (Err(error), _) | (_, Err(error)) => format!("(registers unavailable: {error})"),
        }
    }

    /// Whose registers those are: KVM_GET_NESTED_STATE says whether L2 was running. `None` where
    /// the kernel cannot say (no nesting offered).
    fn running_level(&self) -> Option<&'static str> {
        let mut state = KvmNestedStateBuffer::empty();
        self.vcpu.nested_state(&mut state).ok()?;
        let in_l2 = u32::from(state.flags) & KVM_STATE_NESTED_GUEST_MODE != 0;
        Some(if in_l2 { "L2" } else { "L1" })
    }
}

/// (index, value) pairs as the list KVM_GET_MSRS / KVM_SET_MSRS take.
fn msr_list(entries: impl Iterator<Item = (u32, u64)>) -> Result<Msrs, VmError> {
    let entries: Vec<_> = entries
        .map(|(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|error| VmError::Memory(format!("{error:?}")))
}

fn kvm_segment_of(segment: Segment) -> kvm_segment {
    let ar = segment.access_rights;
    let bit = |n: u32| ((ar >> n) & 1) as u8;
    kvm_segment {
        base: segment.base,
        limit: segment.limit,
        selector: segment.selector,
        type_: (ar & 0xf) as u8,
        s: bit(4),
        dpl: ((ar >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable: bit(16),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use crate::elf::L1_STUB;
    use crate::layout;
    use crate::scenario::{built_in, expand, VendorKind};
    use crate::verdict::{judge, Status as VerdictStatus};
    use nestfault_protocol::{Executor, GARBAGE_STATUS};

    /// This machine's /dev/kvm, or `None` (the test then says it skipped; under CI=true a missing
    /// /dev/kvm fails instead, so CI cannot pass without running these).
    fn real_kvm(test: &str) -> Option<Kvm> {
        match open_kvm() {
            Ok(kvm) => Some(kvm),
            Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{test}: needs /dev/kvm under CI: {error}")
            }
            Err(error) => {
                eprintln!("SKIPPED {test}: {error}");
                None
            }
        }
    }

    /// Boots the real stub in long mode on this host's KVM (no nesting needed) with its mailbox
    /// asking for `executor`, and judges the result as the runner would.
    fn run_stub(
        kvm: &Kvm,
        executor: u64,
        timeout: Duration,
    ) -> (Observation, crate::verdict::Verdict) {
        let case = expand(&built_in().unwrap()).remove(0);
        let vendor = arch::for_tests(case.vendor);
        let mut image = layout::build(&case, vendor.as_ref(), L1_STUB).unwrap();
        // Mailbox::executor is its third u64.
        image
            .memory
            .write_u64("the mailbox", MAILBOX_GPA + 16, executor)
            .unwrap();
        let mut vm = Vm::new(kvm, &supported_cpuid(kvm).unwrap(), layout::MEMORY_SIZE).unwrap();
        vm.load(&image, &[]).unwrap();
        let observation = vm.run(timeout).unwrap();
        let expectation = vendor.expect(&case, &image.site);
        let verdict = judge(vendor.as_ref(), &case, &expectation, &observation, 0);
        (observation, verdict)
    }

    #[test]
    fn kvm_mailbox_round_trips_through_the_real_stub() {
        let Some(kvm) = real_kvm("kvm_mailbox_round_trips_through_the_real_stub") else {
            return;
        };
        let (observation, _) = run_stub(&kvm, Executor::TestEcho as u64, Duration::from_secs(10));
        let Observation::Reported {
            status, mailbox, ..
        } = observation
        else {
            panic!("{observation:?}")
        };
        assert_eq!(status, Ok(Status::Exited));
        // The SVM case's reads are VMCB offsets 0x70, 0x78, 0x80, 0x88.
        assert_eq!(mailbox.exit, [0x71, 0x79, 0x81, 0x89]);
        let (observation, verdict) = run_stub(&kvm, 0x77, Duration::from_secs(10));
        assert!(
            matches!(
                observation,
                Observation::Reported {
                    status: Ok(Status::BadMailbox),
                    ..
                }
            ),
            "{observation:?}"
        );
        assert_eq!(verdict.status, VerdictStatus::Error);
    }

    #[test]
    fn kvm_hang_ends_as_an_error_within_the_timeout() {
        let Some(kvm) = real_kvm("kvm_hang_ends_as_an_error_within_the_timeout") else {
            return;
        };
        let started = Instant::now();
        let (_, verdict) = run_stub(&kvm, Executor::TestHang as u64, Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(verdict.status, VerdictStatus::Error);
        let diagnosis = verdict.diagnosis.unwrap();
        assert!(
            diagnosis.starts_with("timeout") && diagnosis.contains("rip=0x10"),
            "{diagnosis}"
        );
    }

    #[test]
    fn kvm_triple_fault_and_garbage_end_as_errors() {
        let Some(kvm) = real_kvm("kvm_triple_fault_and_garbage_end_as_errors") else {
            return;
        };
        let (_, verdict) = run_stub(
            &kvm,
            Executor::TestTripleFault as u64,
            Duration::from_secs(10),
        );
        assert_eq!(verdict.status, VerdictStatus::Error);
        assert!(verdict
            .diagnosis
            .unwrap()
            .starts_with("shutdown: L1 triple-faulted"));
        let (observation, verdict) =
            run_stub(&kvm, Executor::TestGarbage as u64, Duration::from_secs(10));
        assert!(
            matches!(
                observation,
                Observation::Reported {
                    status: Err(GARBAGE_STATUS),
                    ..
                }
            ),
            "{observation:?}"
        );
        assert_eq!(verdict.status, VerdictStatus::Error);
        assert!(verdict.diagnosis.unwrap().contains("0xdeadbeef"));
    }

    /// Without SVM in its CPUID, the vCPU refuses EFER.SVME: the real SVM executor's first step
    /// faults, and that is an error with the registers, not a pass.
    #[test]
    fn kvm_svm_without_nesting_is_an_error_not_a_pass() {
        let Some(kvm) = real_kvm("kvm_svm_without_nesting_is_an_error_not_a_pass") else {
            return;
        };
        if arch::missing_nested_support(&supported_cpuid(&kvm).unwrap(), VendorKind::Svm).is_none()
        {
            eprintln!(
                "SKIPPED kvm_svm_without_nesting_is_an_error_not_a_pass: this host nests SVM"
            );
            return;
        }
        let (_, verdict) = run_stub(&kvm, Executor::Svm as u64, Duration::from_secs(10));
        assert_eq!(verdict.status, VerdictStatus::Error, "{verdict:?}");
    }

    #[test]
    fn segments_convert_from_vmx_access_rights() {
        let cs = kvm_segment_of(Segment::CODE64);
        assert_eq!(
            (cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let tr = kvm_segment_of(Segment::TSS);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(kvm_segment_of(Segment::UNUSABLE).unusable, 1);
    }
}
