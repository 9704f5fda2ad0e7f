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
use super::error::BootError;
use super::tools::{Location, Requirement};
use super::{BootOptions, BootReport, Emulator};

const PROGRAM: &str = "qemu-system-x86_64";

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

/// `kernel` is a bzImage, or an ELF vmlinux with a PVH entry point.
pub(crate) fn command(
    emulator: Emulator,
    kernel: &Path,
    initramfs: &Path,
    opts: &BootOptions,
) -> Command {
    let mut command = Command::new(PROGRAM);
    command
        .args(cpu_args(emulator, opts.fast_boot))
        .args(["-smp", "1", "-m"])
        .arg(opts.memory_mib.to_string())
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
        .arg(opts.kernel_cmdline());
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

    fn boot(
        &self,
        request: &BootRequest,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError> {
        let BootRequest { files, opts } = *request;
        let mut command = command(self.emulator, &files.kernel, &files.ramdisk, opts);
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
            label: "[qemu]",
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
        assert_eq!(args.last().unwrap(), &opts.kernel_cmdline());
    }

    #[test]
    fn without_the_speed_levers_the_cpu_model_is_qemus_own() {
        let mut opts = BootOptions::for_emulator(Emulator::QemuTcg);
        opts.fast_boot = false;
        let command = command(Emulator::QemuTcg, Path::new("/k"), Path::new("/i"), &opts);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cpu = args
            .iter()
            .position(|a| a == "-cpu")
            .map(|at| &args[at + 1]);
        assert_eq!(cpu.map(String::as_str), Some("max"), "{args:?}");
    }
}
