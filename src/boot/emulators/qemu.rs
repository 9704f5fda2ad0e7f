//! QEMU: loads the kernel and initramfs itself, serial console on stdout.
//! With the speed levers on, it boots the uncompressed kernel through its
//! PVH entry point where it has one, else directly (see `start`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use super::backend::{BootRequest, EmulatorBackend};
use super::console::{self, Progress, Running, Stream};
use super::options::{BootOptions, Emulator};
use super::outcome::{BootEnd, BootReport};
use super::tsc;
use crate::boot::error::BootError;
use crate::boot::tools::{Location, Requirement};

const PROGRAM: &str = "qemu-system-x86_64";
/// What QEMU's own lines are marked with in a boot's console tail.
const LABEL: &str = "[qemu]";

const REQUIREMENTS: &[Requirement] = &[Requirement {
    what: PROGRAM,
    location: Location::Program(PROGRAM),
    package: "qemu-system-x86",
}];

/// The accelerator and CPU model. Under TCG, `-cpu max` offers the guest
/// SVM with NPT (and VGIF) and, unlike named models such as EPYC, asks for
/// no feature TCG lacks, so QEMU prints no warnings.
///
/// With the speed levers on, the model leaves out ERMS and FSRM, CPUID's
/// hints that `rep movsb`/`rep stosb` are fast. TCG runs a string
/// instruction one element per iteration, so a kernel that believes the hint
/// clears a 4 KiB page in 4096 iterations; without it the same kernel uses
/// `rep stosq` (512), and libc its vector loops. Side by side on 7.2, six
/// pairs: a full SVM run 4.35 -> 3.99 s (medians); sampled, the kernel's
/// page clearing halved. The hints change how fast memory is copied, never
/// what a string instruction does, and KVM consults neither; L1 and L2 only
/// stop seeing them in CPUID, which they do not read.
fn cpu_args(emulator: Emulator, fast_boot: bool) -> [&'static str; 4] {
    match emulator {
        Emulator::QemuKvm => ["-accel", "kvm", "-cpu", "host"],
        _ if fast_boot => ["-accel", "tcg", "-cpu", "max,erms=off,fsrm=off"],
        _ => ["-accel", "tcg", "-cpu", "max"],
    }
}

/// Where QEMU's firmware for the speed levers is: qboot, a firmware that only
/// loads the kernel (Debian's qemu-system-data ships it beside SeaBIOS).
const QBOOT: Location = Location::File(&["/usr/share/qemu/qboot.rom"]);

/// The properties of the i440FX machine's power-management device that take
/// PCI hotplug out of its ACPI tables.
const ACPI_WITHOUT_PCI_HOTPLUG: &[&str] = &[
    "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
    "PIIX4_PM.acpi-root-pci-hotplug=off",
];

/// The machine's RAM, firmware and ACPI tables. With the speed levers on under TCG:
///
/// - RAM is a memfd, which the host backs with small pages. Anonymous guest
///   RAM is what QEMU asks transparent huge pages for, so the guest's first
///   write anywhere in a 2 MiB range makes the host clear all of it: a 7.2 run
///   touches ~124 MiB so. On a host whose own memory is backed lazily (a cloud
///   VM, as this project's machines are) a fresh huge page costs up to ten
///   times the clearing (measured: 200 MiB in 0.73 s cold, 0.07 s warm). Side
///   by side, six pairs of full SVM runs on 7.2: QEMU's system time 0.8 ->
///   0.4 s, the wall 5.71 -> 5.45 s (medians). The guest sees the same RAM.
/// - The firmware is qboot where the host has it, not SeaBIOS: 0.22 -> 0.16 s
///   to the kernel's first byte (medians of twelve boots each, twice). It hands
///   the kernel the same ACPI tables from QEMU and leaves the MTRRs disabled,
///   which TCG ignores and KVM does not read.
/// - The ACPI tables describe no PCI hotplug: without it the kernel's ACPI
///   scan has no hotplug slots to make devices of (acpi_init 196 -> 144 ms,
///   initcall_debug, medians of three boots each). Nothing is ever plugged in.
fn machine_args(emulator: Emulator, fast_boot: bool, memory_mib: u32) -> Vec<String> {
    let mut args = vec!["-m".to_owned(), memory_mib.to_string()];
    if emulator == Emulator::QemuTcg && fast_boot {
        args.extend([
            "-object".to_owned(),
            format!("memory-backend-memfd,id=ram,size={memory_mib}M"),
            "-machine".to_owned(),
            "memory-backend=ram".to_owned(),
        ]);
        for switch in ACPI_WITHOUT_PCI_HOTPLUG {
            args.extend(["-global".to_owned(), (*switch).to_owned()]);
        }
        if let Some(qboot) = QBOOT.find() {
            args.extend(["-bios".to_owned(), qboot.to_string_lossy().into_owned()]);
        }
    }
    args
}

/// Whether QEMU's own speed settings (CPU model, RAM, firmware, ACPI tables) go on its command
/// line. The kernel's side of the levers (how it is started, its parameters) is not QEMU's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QemuLevers {
    On,
    Off,
}

/// `kernel` is a bzImage, or an ELF vmlinux with a PVH entry point; `kernel_levers` are the
/// kernel parameters only this emulator gives (the host's TSC frequency under TCG).
fn command(
    emulator: Emulator,
    kernel: &Path,
    initramfs: &Path,
    opts: &BootOptions,
    levers: QemuLevers,
    kernel_levers: &[String],
) -> Command {
    let fast = opts.fast_boot && levers == QemuLevers::On;
    let mut command = Command::new(PROGRAM);
    command
        .args(cpu_args(emulator, fast))
        // One CPU: with two (and the guest running cases side by side), one full SVM run in
        // eight hung, L1's saved state holding L0's own kernel registers (docs/emulators.md).
        .args(["-smp", "1"])
        .args(machine_args(emulator, fast, opts.memory_mib))
        // No default devices, no network, no display: the serial port on
        // stdout is the guest's only connection. -no-reboot makes the reboot
        // after a panic (panic=-1) end QEMU.
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-nic", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(opts.kernel_cmdline(kernel_levers));
    command
}

/// QEMU, with the host's KVM or with TCG.
pub(crate) struct Qemu {
    pub(crate) emulator: Emulator,
}

impl EmulatorBackend for Qemu {
    fn requirements(&self) -> &'static [Requirement] {
        REQUIREMENTS
    }

    fn starts_pvh_entry(&self) -> bool {
        true
    }

    fn runs_guest_on_host_tsc(&self) -> bool {
        // TCG executes the guest's RDTSC on the host; under KVM the kernel asks KVM's clock.
        self.emulator == Emulator::QemuTcg
    }

    fn boot(
        &self,
        request: &BootRequest,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError> {
        let mut guest_lines = 0;
        let mut counted = |line: &str| {
            guest_lines += 1;
            on_line(line)
        };
        let report = self.boot_with(request, QemuLevers::On, &mut counted, on_progress)?;
        let levers_given = request.opts.fast_boot && self.emulator == Emulator::QemuTcg;
        if !(levers_given && refused_to_start(&report, guest_lines)) {
            return Ok(report);
        }
        // An older QEMU lacks a property or CPU flag the levers name (PIIX4_PM's
        // acpi-root-pci-hotplug came with QEMU 6.1, `-machine memory-backend` with 5.0) and exits
        // before the guest runs. That says nothing about the kernel: without a second try, every
        // run on such a host would be "the kernel did not boot" and a bisect would skip every
        // commit.
        let why = report.tail.last().map_or("no message", |line| {
            line.strip_prefix(LABEL).unwrap_or(line).trim_start()
        });
        on_progress(&format!(
            "{PROGRAM} refused nestfault's speed settings for it ({why}); starting it without them"
        ));
        self.boot_with(request, QemuLevers::Off, on_line, on_progress)
    }
}

/// Whether QEMU ended with an error before the guest wrote a line: it refused its command line
/// (or could not load the files), rather than running a kernel that then failed.
fn refused_to_start(report: &BootReport, guest_lines: usize) -> bool {
    matches!(report.end, BootEnd::EmulatorExited(code) if code != 0) && guest_lines == 0
}

impl Qemu {
    fn boot_with(
        &self,
        request: &BootRequest,
        levers: QemuLevers,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError> {
        let BootRequest {
            files,
            opts,
            host_tsc_khz,
        } = *request;
        // The kernel's side of the levers, kept on the second try too.
        let kernel_levers: Vec<String> = host_tsc_khz.map(tsc::kernel_param).into_iter().collect();
        let mut command = command(
            self.emulator,
            &files.kernel,
            &files.ramdisk,
            opts,
            levers,
            &kernel_levers,
        );
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = console::start_emulator(&mut command, PROGRAM, false, on_progress)?;
        let (sender, output) = channel();
        if let Some(stdout) = child.stdout.take() {
            console::spawn_line_reader(stdout, sender.clone(), Stream::Console);
        }
        if let Some(stderr) = child.stderr.take() {
            console::spawn_line_reader(stderr, sender, Stream::Emulator);
        }
        // QEMU loads the kernel itself: it boots as soon as QEMU runs.
        let mut progress = Progress::new(&[]);
        progress.reach("kernel booting", on_progress);
        let running = Running {
            child,
            output,
            ended: Arc::default(),
            power_off_codes: &[0],
            label: LABEL,
            noise: |_| false,
            // QEMU ends within a second of an ACPI power-off (measured: the whole run takes 2 s).
            power_off_grace: Duration::from_secs(2),
        };
        console::watch(running, progress, opts, on_line, on_progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_no_network_and_no_display() {
        let opts = BootOptions::for_emulator(Emulator::QemuTcg);
        let command = command(
            Emulator::QemuTcg,
            Path::new("/k/vmlinuz"),
            Path::new("/k/initrd"),
            &opts,
            QemuLevers::On,
            &["tsc_early_khz=2596140".to_owned()],
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-accel tcg -cpu max,erms=off,fsrm=off"),
            "{joined}"
        );
        assert!(joined.contains("-nic none"));
        assert!(joined.contains("-display none"));
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("-kernel /k/vmlinuz -initrd /k/initrd"));
        let cmdline = args.last().unwrap();
        assert_eq!(
            cmdline,
            &opts.kernel_cmdline(&["tsc_early_khz=2596140".into()])
        );
        assert!(cmdline.ends_with(" tsc_early_khz=2596140"), "{cmdline}");
        // The memfd backing RAM is as big as the machine's memory.
        assert!(
            joined.contains(
                "-m 1024 -object memory-backend-memfd,id=ram,size=1024M \
                 -machine memory-backend=ram"
            ),
            "{joined}"
        );
    }

    #[test]
    fn without_the_speed_levers_the_machine_is_qemus_own() {
        let mut no_fast_boot = BootOptions::for_emulator(Emulator::QemuTcg);
        no_fast_boot.fast_boot = false;
        let fast_boot = BootOptions::for_emulator(Emulator::QemuTcg);
        // --no-fast-boot, and the second try after a QEMU that refused its levers, which keeps
        // the kernel's own.
        for (opts, levers) in [
            (&no_fast_boot, QemuLevers::On),
            (&fast_boot, QemuLevers::Off),
        ] {
            let command = command(
                Emulator::QemuTcg,
                Path::new("/k"),
                Path::new("/i"),
                opts,
                levers,
                &[],
            );
            let args: Vec<String> = command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let cpu = args
                .iter()
                .position(|a| a == "-cpu")
                .map(|at| &args[at + 1]);
            assert_eq!(cpu.map(String::as_str), Some("max"), "{args:?}");
            // QEMU's own RAM and firmware too.
            for lever in ["-object", "-machine", "-global", "-bios"] {
                assert!(!args.iter().any(|a| a == lever), "{lever} in {args:?}");
            }
            assert_eq!(args.last().unwrap(), &opts.kernel_cmdline(&[]));
        }
    }

    #[test]
    fn only_an_error_exit_before_any_guest_line_is_a_refusal() {
        let ended = |end| BootReport {
            end,
            tail: vec!["[qemu] qemu-system-x86_64: Property 'x' not found".into()],
            elapsed: Duration::from_millis(50),
        };
        assert!(refused_to_start(&ended(BootEnd::EmulatorExited(1)), 0));
        // The guest ran: whatever QEMU did next, the kernel was started.
        assert!(!refused_to_start(&ended(BootEnd::EmulatorExited(1)), 3));
        // QEMU's exit after a guest reset (-no-reboot), a panic, a power-off, a timeout.
        for end in [
            BootEnd::EmulatorExited(0),
            BootEnd::Reset,
            BootEnd::Panicked,
            BootEnd::PoweredOff,
            BootEnd::TimedOut,
        ] {
            assert!(!refused_to_start(&ended(end), 0), "{end:?}");
        }
    }

    #[test]
    fn only_tcg_gets_the_memory_and_firmware_levers() {
        let kvm = machine_args(Emulator::QemuKvm, true, 512);
        assert_eq!(kvm, ["-m", "512"]);
        let tcg = machine_args(Emulator::QemuTcg, true, 512);
        assert_eq!(
            tcg[..6],
            [
                "-m",
                "512",
                "-object",
                "memory-backend-memfd,id=ram,size=512M",
                "-machine",
                "memory-backend=ram"
            ]
        );
        assert_eq!(
            tcg[6..10],
            [
                "-global",
                ACPI_WITHOUT_PCI_HOTPLUG[0],
                "-global",
                ACPI_WITHOUT_PCI_HOTPLUG[1]
            ]
        );
        let firmware = tcg.get(10..).unwrap_or_default();
        match QBOOT.find() {
            Some(qboot) => assert_eq!(firmware, ["-bios", qboot.to_str().unwrap()]),
            None => assert!(firmware.is_empty(), "{firmware:?}"),
        }
    }
}
