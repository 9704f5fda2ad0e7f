//! The command line's shape: every flag and subcommand, parsed once by clap, and the questions
//! the rest of the program asks of it (which cases, which vendors, which inputs). Both the host's
//! `cli` and `kernel_mode` and the guest's `/init` read it; it imports neither.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;

use crate::boot::{self, Emulator};
use crate::module_param;
use crate::output::NamedPath;
use crate::report::Format;
use crate::scenario::{self, Case, VendorKind};
use crate::selection::{self, PathChoice, VendorChoice};

/// `--timeout` at most a day: longer is a typo, not a plan (a Bochs boot takes about a minute).
const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// `--repeat` at most this: enough to catch a flaky kernel, short of a run that never ends.
const MAX_REPEAT: u32 = 1000;

/// Checks that KVM reports nested page faults injected by its instruction emulator to L1 correctly
/// (SVM #NPF exit_info_1 GUEST_PAGE/GUEST_FINAL, VMX EPT-violation GVA_IS_VALID/GVA_TRANSLATED).
///
/// Exit status: 0 every case that could run here ran --repeat times and passed (expected
/// failures on open findings and cases not run here are listed, not failed); 1 a case failed or
/// errored (with --strict, an expected failure too); 125 this kernel cannot be judged (no nested
/// support in it, KVM refused nesting, it did not boot, nothing selected could run); 255
/// something must be fixed first (a flag, a path, /dev/kvm, a missing emulator, an empty
/// selection, a named case that cannot run here) or the run was interrupted.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print the case ids (`<vendor>/<scenario>/<path>`), one per line, and exit.
    #[arg(long)]
    pub list: bool,

    /// A case id, a scenario name (all its vendors and paths) or `all`; repeatable. Default: all.
    #[arg(long = "scenario", value_name = "ID|NAME|all")]
    pub scenarios: Vec<String>,

    /// auto: the vendors this host's KVM can nest (direct mode) or both (with --kernel).
    #[arg(long, value_enum, default_value = "auto")]
    pub vendor: VendorChoice,

    #[arg(long, value_enum, default_value = "all")]
    pub path: PathChoice,

    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,

    /// Expected failures (XFAIL: a row that fails only as a documented open KVM finding says)
    /// fail the run too (exit 1). Without it they are reported but do not fail the run.
    #[arg(long)]
    pub strict: bool,

    /// Write the --format report to FILE instead of stdout; stdout then gets the human report.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Run every selected case N times. A case whose status or exit values differ between runs is
    /// reported once, as a failure whose diagnosis starts with "flaky:". With --kernel the guest
    /// repeats, so --timeout must cover N runs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REPEAT)))]
    pub repeat: u32,

    /// Seconds (1 to 86400) before a case (direct mode) or a whole boot (--kernel) is stopped and
    /// reported. Default: 10 a case; 120 a QEMU boot, 600 a Bochs boot.
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub timeout: Option<u64>,

    /// Also load the scenarios in this directory (*.toml), e.g. scenarios/examples.
    #[arg(long, value_name = "DIR")]
    pub scenarios_dir: Option<PathBuf>,

    /// Test this kernel instead of the running one: a bzImage/vmlinuz, a built kernel tree (its
    /// arch/x86/boot/bzImage and, with KVM modular, its .ko files), a Debian kernel .deb, or
    /// debian:SUITE / debian:VERSION (fetched into ~/.cache/nestfault/kernels).
    /// It is booted in an emulator as the L0 hypervisor and the suite runs inside it.
    #[arg(long, value_name = "IMAGE")]
    pub kernel: Option<PathBuf>,

    /// With --kernel: its lib/modules/<release> directory, or the linux-modules .deb.
    #[arg(long, value_name = "DIR|DEB", requires = "kernel")]
    pub modules: Option<PathBuf>,

    /// With --kernel: which emulator boots it (auto: QEMU with KVM where the host nests, else
    /// QEMU TCG for SVM and Bochs for VMX).
    #[arg(long, value_enum, default_value = "auto", requires = "kernel")]
    pub emulator: EmulatorChoice,

    /// A report line per case instead of the matrix; with --kernel, also the guest's raw console
    /// on stderr.
    #[arg(long)]
    pub verbose: bool,

    /// With --kernel: write the guest's raw console to FILE. When both vendors run (two boots),
    /// to FILE.svm and FILE.vmx instead.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub console_log: Option<PathBuf>,

    /// With --kernel: one more kernel parameter, after nestfault's own; repeatable.
    #[arg(long = "kernel-param", value_name = "PARAM", requires = "kernel")]
    pub kernel_params: Vec<String>,

    #[arg(long, requires = "kernel", long_help = boot::fast_boot_help(),
          help = "With --kernel: boot without nestfault's speed parameters (see --help)")]
    pub no_fast_boot: bool,

    /// The e2e's "as a host" stage: with --kernel, load KVM as a distribution does (no
    /// nestfault parameters, only --kernel-param's), give /dev/kvm to group kvm (0660), and run
    /// `nestfault ARGS` inside, in direct mode, as an unprivileged user: `kvm: ARGS` in the kvm
    /// group, `nokvm: ARGS` outside it; repeatable. Prints one JSON line per command.
    // Not `requires = "kernel"`: the guest's /init parses the same flag without --kernel.
    #[arg(long = "as-host", value_name = "USER: ARGS", hide = true)]
    pub as_host: Vec<String>,

    /// Set up but run no case: with --kernel, boot the kernel, load the KVM modules if --modules
    /// names them, and power off. What `cargo xtask bench` compares a full run with.
    #[arg(long, hide = true)]
    pub bare_boot: bool,
}

/// Tasks other than running the suite; without one, nestfault runs it.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the Kconfig fragment a kernel needs to be booted and judged by nestfault, or write
    /// a minimal .config with it into a kernel tree (--tree).
    Kconfig(crate::kconfig::KconfigArgs),
    /// Say whether this machine can run the suite directly (/dev/kvm, nesting, KVM's parameters,
    /// the forced-emulation prefix, MAXPHYADDR, 1 GiB pages), vendor by vendor, and what would not
    /// run here, each with what turns it on. Exit 0 when some vendor can run, 125 when none can
    /// nest, 255 when /dev/kvm cannot be opened.
    Host,
    /// Say where nestfault's caches are, what each holds and its size (Debian kernels, kernel
    /// trees, extracted vmlinux files, unsigned module copies); --clear [KIND] removes it.
    Cache(crate::caches::CacheArgs),
    /// Which of these kernels carries which fix: runs each (as --kernel) for the vendors asked,
    /// or reads the --format json report of an earlier run, and prints a fix-by-kernel table.
    /// Exit 0 when every kernel was judged and every failure is explained by a known fix or
    /// finding, 1 when some failure is unexplained, 125 when some kernel could not be judged,
    /// 255 when a run needs something fixed first (a missing input, no archive, no emulator).
    Survey(crate::survey::SurveyArgs),
}

impl Cli {
    pub fn cases(&self) -> anyhow::Result<Vec<Case>> {
        let scenarios = match &self.scenarios_dir {
            Some(dir) => scenario::with_dir(dir)?,
            None => scenario::built_in().context("a built-in scenario is broken")?,
        };
        Ok(scenario::expand(&scenarios))
    }

    pub fn explicit_vendors(&self) -> Option<Vec<VendorKind>> {
        match self.vendor {
            VendorChoice::Auto => None,
            VendorChoice::Svm => Some(vec![VendorKind::Svm]),
            VendorChoice::Vmx => Some(vec![VendorKind::Vmx]),
        }
    }

    /// The cases of `all` that `--scenario` and `--path` select for `vendors`; an empty selection
    /// is an error, as a run of nothing would look like a run that found nothing wrong.
    pub fn select(&self, all: &[Case], vendors: &[VendorKind]) -> anyhow::Result<Vec<Case>> {
        let cases = selection::select(all, &self.scenarios, vendors, self.path)?;
        if cases.is_empty() {
            let scenarios = if self.scenarios.is_empty() {
                "all".to_string()
            } else {
                self.scenarios.join(" ")
            };
            let vendors: Vec<&str> = vendors.iter().map(|kind| kind.name()).collect();
            let path = clap::ValueEnum::to_possible_value(&self.path)
                .map(|value| value.get_name().to_string())
                .unwrap_or_default();
            bail!(
                "no case to run: --scenario {scenarios} selects none for vendor {} and --path \
                 {path}; `--list` without --vendor and --path shows every case",
                vendors.join(",")
            );
        }
        Ok(cases)
    }

    /// Whether `--scenario` names this case by its id or its scenario's name (not `all`, not a
    /// glob): then a case that cannot run here is the user's to fix, not a verdict.
    pub fn names_exactly(&self, id: &str, scenario: &str) -> bool {
        self.scenarios
            .iter()
            .any(|pattern| pattern == id || pattern == scenario)
    }

    /// The kernel parameters a --kernel boot gets after nestfault's own: the user's, behind
    /// those that make KVM a distribution's under --as-host.
    pub fn boot_kernel_params(&self) -> Vec<String> {
        if self.as_host.is_empty() {
            self.kernel_params.clone()
        } else {
            crate::as_host::stock_kernel_params(&self.kernel_params)
        }
    }

    /// Whether the user's `--kernel-param`s leave kvm's forced-emulation prefix off (the last
    /// one wins, as on the kernel's command line and in modprobe).
    pub fn turns_forced_prefix_off(&self) -> bool {
        let set = module_param::user_value("kvm", "force_emulation_prefix", &self.kernel_params);
        set.is_some_and(|value| !module_param::is_on(value))
    }

    /// What the run reads from the user's files: an output must be none of these.
    pub fn inputs(&self) -> anyhow::Result<Vec<NamedPath>> {
        let mut inputs = Vec::new();
        let mut add = |flag, path: &PathBuf| {
            inputs.push(NamedPath {
                flag,
                path: path.clone(),
            })
        };
        if let Some(kernel) = &self.kernel {
            add("--kernel", kernel);
        }
        if let Some(modules) = &self.modules {
            add("--modules", modules);
        }
        if let Some(dir) = &self.scenarios_dir {
            for (name, _) in scenario::read_dir(dir)? {
                add("--scenarios-dir", &dir.join(name));
            }
        }
        Ok(inputs)
    }
}

/// `--emulator`: one of the boot layer's emulators, or `auto` to let it choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmulatorChoice {
    Auto,
    QemuKvm,
    QemuTcg,
    Bochs,
}

impl EmulatorChoice {
    pub fn requested(self) -> Option<Emulator> {
        match self {
            EmulatorChoice::Auto => None,
            EmulatorChoice::QemuKvm => Some(Emulator::QemuKvm),
            EmulatorChoice::QemuTcg => Some(Emulator::QemuTcg),
            EmulatorChoice::Bochs => Some(Emulator::Bochs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_ids_and_names_are_requests_for_one_case() {
        let cli = Cli::parse_from([
            "nestfault",
            "--scenario",
            "svm/pt_page_unmapped/forced",
            "--scenario",
            "final_page_unmapped",
            "--scenario",
            "vmx/*",
        ]);
        assert!(cli.names_exactly("svm/pt_page_unmapped/forced", "pt_page_unmapped"));
        assert!(cli.names_exactly("vmx/final_page_unmapped/forced", "final_page_unmapped"));
        assert!(!cli.names_exactly("vmx/pd_page_unmapped_read/forced", "pd_page_unmapped_read"));
        let all = Cli::parse_from(["nestfault", "--scenario", "all"]);
        assert!(!all.names_exactly("svm/pt_page_unmapped/forced", "pt_page_unmapped"));
    }

    #[test]
    fn the_last_forced_prefix_parameter_wins() {
        let cli = |params: &[&str]| {
            let mut args = vec!["nestfault", "--kernel", "bzImage"];
            for param in params {
                args.extend(["--kernel-param", param]);
            }
            Cli::parse_from(args)
        };
        assert!(cli(&["kvm.force_emulation_prefix=0"]).turns_forced_prefix_off());
        assert!(!cli(&[
            "kvm.force_emulation_prefix=0",
            "kvm.force_emulation_prefix=1"
        ])
        .turns_forced_prefix_off());
        assert!(!cli(&["kvm.tdp_mmu=0"]).turns_forced_prefix_off());
        assert!(!cli(&[]).turns_forced_prefix_off());
    }

    /// `--emulator` spells each emulator the way reports name it.
    #[test]
    fn emulator_choices_are_the_reported_names() {
        use clap::ValueEnum;
        for emulator in [Emulator::QemuKvm, Emulator::QemuTcg, Emulator::Bochs] {
            let choice = EmulatorChoice::from_str(&emulator.to_string(), false);
            assert_eq!(choice.map(EmulatorChoice::requested), Ok(Some(emulator)));
        }
    }
}
