//! The kernel command line the kernel under test boots with: what the run
//! needs, then the speed levers (each with why it cannot change a verdict),
//! then the user's own parameters, which come last so that they win where the
//! kernel keeps the last value of a parameter.
//!
//! Figures are guest time on Debian's 7.2 under Bochs (49 s for a whole run
//! before these levers), from a profiling pass recorded in issue 11.

/// A kernel parameter nestfault passes, and why.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelParam {
    pub(crate) text: &'static str,
    /// For a speed lever: what it saves, and why it cannot change a verdict.
    pub(crate) why: &'static str,
}

/// What every boot needs: the console the host reads verdicts from, and a
/// panic that ends the emulator instead of hanging it.
const REQUIRED: &[KernelParam] = &[
    KernelParam {
        text: "console=ttyS0,115200",
        why: "the host reads the verdicts from the first serial port",
    },
    KernelParam {
        // First: the early console replays the log so far at the level then in force.
        text: "quiet",
        why: "the emulated UART is slow; the boot log would cost seconds",
    },
    KernelParam {
        text: "earlyprintk=serial,ttyS0,115200",
        why: "a kernel that dies before its console starts still leaves a trace",
    },
    KernelParam {
        text: "panic=-1",
        why: "a panic reboots at once, which ends QEMU (-no-reboot) and shows in Bochs",
    },
    KernelParam {
        text: "kvm.force_emulation_prefix=1",
        why: "enables the forced-emulation path when KVM is built in (a modular kvm.ko gets it \
              as a load parameter instead, see arch::module_parameters)",
    },
];

/// Speed levers that leave what is under test alone: KVM's code, the nested
/// MMU and the emulator's page walk are the same with or without them; they
/// skip work the kernel does for itself at boot. `--no-fast-boot` drops them.
///
/// `initcall_blacklist=load_system_certificate_list` (0.27 s) is not among
/// them: without the built-in keys a kernel that enforces module signatures
/// refuses every module, and Debian's split packages do not say whether it does.
const FAST_BOOT: &[KernelParam] = &[
    KernelParam {
        text: "cryptomgr.notests=1",
        why: "skips the crypto API's self-tests of each algorithm as it registers \
              (19.5 s, mostly RSA/ECC, partly in threads that also slow module loading); \
              the algorithms are the same, and KVM uses none of them",
    },
    KernelParam {
        text: "rodata=off",
        why: "leaves kernel text and rodata writable, which skips the W+X page-table walk \
              (CONFIG_DEBUG_WX) at the end of boot (2.7 s with pti=off); it concerns the \
              kernel's own mappings, not the tables KVM builds or walks for guests",
    },
    KernelParam {
        text: "pti=off",
        why: "no user copy of the kernel page tables to build and check; PTI guards user \
              space of the L0 kernel against Meltdown, KVM's guest entry and exit and its \
              nested page walks do not depend on it",
    },
    KernelParam {
        text: "noreplace-smp",
        why: "keeps the LOCK prefixes of atomic instructions: on a machine with one CPU the \
              kernel otherwise rewrites each of them (in its own text at boot and in every \
              module it loads) into a plain prefix, one text_poke apiece through a temporary \
              mm with its TLB flushes, ~0.2 s to /init under QEMU TCG on 7.2 (medians of five \
              runs); with one CPU a locked instruction does what the unlocked one does, so \
              KVM's code behaves the same",
    },
    KernelParam {
        text: "debugfs=off",
        why: "no debugfs directory of statistics files for each VM and vCPU a case creates \
              and destroys (~0.9 ms a case under QEMU TCG on 7.2); KVM only publishes its \
              counters there and reads nothing back",
    },
    KernelParam {
        text: "highres=off",
        why: "timers expire on the periodic tick instead of each being programmed into the \
              local APIC's one-shot timer, a write that leaves the emulator's fast path every \
              time a timer is armed or cancelled: QEMU TCG spent 4-9% less CPU on a whole SVM \
              run on 7.2 (medians of six and of eight pairs), Bochs took 12% less; nothing \
              under test arms a timer (L1 programs neither its APIC timer nor the VMX \
              preemption timer), and a case's timeout is seconds, not the tick's milliseconds",
    },
    KernelParam {
        text: "8250.nr_uarts=1",
        why: "registers the one serial port the console uses instead of the driver's default \
              (4 on Debian's 7.2), probing and registering each: serial8250_init 58 -> 27 ms under \
              QEMU TCG (initcall_debug)",
    },
    KernelParam {
        text: "ipv6.disable=1",
        why: "the guest has no network device; IPv6's initcall took 45 ms under QEMU TCG on \
              7.2 and KVM uses no networking",
    },
    KernelParam {
        text: "initcall_blacklist=trace_eval_init,ftrace_check_for_weak_functions",
        why: "tracing bookkeeping at boot (1.2 s and 1.0 s): the enum maps shown in \
              tracefs event formats, and disabling ftrace records of overridden weak \
              functions; nothing is traced during a run",
    },
    KernelParam {
        text: "initcall_blacklist=cmos_init,i8042_init,init_acpi_pm_clocksource,\
               acpi_processor_driver_init",
        why: "drivers for devices a run never uses, whose probes wait on emulated hardware: \
              the RTC driver (the kernel reads the clock at boot without it), the PS/2 \
              keyboard and mouse, the ACPI PM timer as a clocksource (the TSC is the \
              clocksource, the HPET its watchdog) and ACPI's processor idle and throttling \
              driver (idle is a plain HLT without it); 0.1 s less to /init under QEMU TCG on \
              7.2 (medians of four boots each, time since reset); KVM uses none of them",
    },
];

/// The command line for a boot: the required parameters, nestfault's speed
/// levers and the emulator's (`emulator`, e.g. the host's TSC frequency) unless
/// `fast_boot` is off, then the user's `--kernel-param`s.
pub(crate) fn kernel_cmdline(fast_boot: bool, emulator: &[String], user: &[String]) -> String {
    let ours = REQUIRED
        .iter()
        .chain(FAST_BOOT.iter().filter(|_| fast_boot))
        .map(|param| param.text);
    let emulator = emulator.iter().filter(|_| fast_boot).map(String::as_str);
    ours.chain(emulator)
        .chain(user.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// For `--help`: nestfault's speed parameters, each with why it cannot change a verdict.
pub fn fast_boot_help() -> String {
    let mut help = String::from(
        "With --kernel: boot without nestfault's own speed parameters, to check that they change \
         no verdict. They are:",
    );
    for param in FAST_BOOT {
        help.push_str(&format!("\n  {}: {}", param.text, param.why));
    }
    help.push_str(
        "\nand, outside the kernel: the Bochs BIOS's wait for a boot-menu key (romimage \
         options=fastboot); starting the uncompressed kernel instead of its decompressor (QEMU: \
         its PVH entry point; Bochs: the 64-bit boot protocol), the same bytes at the same \
         address; the KVM modules without their signatures, the symbols no relocation needs, \
         their BTF type information and their lists of ftrace and static-call sites (calls go \
         through their trampolines; the signed modules where the kernel insists); under QEMU \
         TCG, a CPU model without the ERMS and FSRM fast-string hints, which TCG makes slow \
         (string instructions work the same; KVM reads neither), RAM the host backs with small \
         pages (a memfd, so that a first write does not clear a whole huge page), the qboot \
         firmware instead of SeaBIOS where the host has it (the same ACPI tables; MTRRs left \
         off, which TCG ignores), no PCI hotplug in the ACPI tables (nothing is plugged) and \
         tsc_early_khz set to the host's TSC frequency, measured against the clock QEMU's HPET \
         follows (TCG runs the guest on the host's TSC, so this is the rate the kernel's own \
         PIT calibration finds, to 0.001% on 7.2; the kernel still refines it a second later, \
         and nothing under test depends on it).",
    );
    help
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_first_levers_then_user() {
        let line = kernel_cmdline(true, &["tsc_early_khz=1".into()], &["nokaslr".into()]);
        assert!(line.starts_with("console=ttyS0,115200 quiet "), "{line}");
        assert!(line.contains(" cryptomgr.notests=1 "), "{line}");
        assert!(
            line.contains("acpi_processor_driver_init tsc_early_khz=1 nokaslr"),
            "{line}"
        );
        assert!(line.ends_with(" nokaslr"), "{line}");
    }

    #[test]
    fn no_fast_boot_keeps_only_what_the_run_needs() {
        let line = kernel_cmdline(false, &["tsc_early_khz=1".into()], &["a=1".into()]);
        assert_eq!(
            line,
            "console=ttyS0,115200 quiet earlyprintk=serial,ttyS0,115200 panic=-1 \
             kvm.force_emulation_prefix=1 a=1"
        );
    }

    #[test]
    fn every_parameter_says_why() {
        for param in REQUIRED.iter().chain(FAST_BOOT) {
            assert!(!param.text.contains(' '), "{}", param.text);
            assert!(param.why.len() > 20, "{}", param.text);
        }
    }
}
