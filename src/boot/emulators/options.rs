//! What a boot is asked for: the emulator, and the options every emulator honours (timeout,
//! console copies, memory, the speed levers, the user's kernel parameters).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::boot::guest::cmdline;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Emulator {
    /// QEMU with the host's KVM: fast, needs a host that nests.
    QemuKvm,
    /// QEMU's TCG emulator: AMD SVM with NPT.
    QemuTcg,
    /// Bochs: Intel VMX with EPT; about a minute to boot.
    Bochs,
}

impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Emulator::QemuKvm => "qemu-kvm",
            Emulator::QemuTcg => "qemu-tcg",
            Emulator::Bochs => "bochs",
        })
    }
}

#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The whole boot, from starting the emulator to its end; then it is killed.
    pub timeout: Duration,
    /// Copy the raw console to stderr as it arrives.
    pub verbose: bool,
    /// Also write every console line to this file.
    pub console_log: Option<PathBuf>,
    pub memory_mib: u32,
    /// nestfault's speed levers: kernel parameters and emulator settings that
    /// skip boot work without touching what is under test (`--no-fast-boot`
    /// turns them off).
    pub fast_boot: bool,
    /// The user's own kernel parameters (`--kernel-param`), after nestfault's.
    pub kernel_params: Vec<String>,
}

impl BootOptions {
    /// Settings measured to work: Bochs boots in about a minute and is given
    /// 512 MiB as in docs/emulators.md; QEMU boots in about 5 s.
    pub fn for_emulator(emulator: Emulator) -> Self {
        let (timeout_secs, memory_mib) = match emulator {
            Emulator::Bochs => (600, 512),
            Emulator::QemuKvm | Emulator::QemuTcg => (120, 1024),
        };
        BootOptions {
            timeout: Duration::from_secs(timeout_secs),
            verbose: false,
            console_log: None,
            memory_mib,
            fast_boot: true,
            kernel_params: Vec::new(),
        }
    }

    /// The kernel command line these options ask for, with the emulator's own speed levers
    /// (`emulator_levers`, given only with `fast_boot`) before the user's parameters.
    pub(crate) fn kernel_cmdline(&self, emulator_levers: &[String]) -> String {
        cmdline::kernel_cmdline(self.fast_boot, emulator_levers, &self.kernel_params)
    }
}
