//! Kernel-under-test mode: boot a kernel in an emulator as the L0 hypervisor, with this same
//! binary as its /init, and run the selected cases inside it. The inner process streams one
//! record per line on the console; the outer process turns them back into verdicts and renders
//! the usual report. One verdict type, one renderer, two transports.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use crate::boot::{self, BootEnd, BootOptions, Emulator, KernelInput, KvmVendor};
use crate::report::{self, exit_code};
use crate::runner::{self, RunOptions};
use crate::scenario::{Case, VendorKind};
use crate::selection;
use crate::verdict::{Status, Verdict};
use crate::Cli;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmulatorChoice {
    Auto,
    QemuKvm,
    QemuTcg,
    Bochs,
}

impl EmulatorChoice {
    fn requested(self) -> Option<Emulator> {
        match self {
            EmulatorChoice::Auto => None,
            EmulatorChoice::QemuKvm => Some(Emulator::QemuKvm),
            EmulatorChoice::QemuTcg => Some(Emulator::QemuTcg),
            EmulatorChoice::Bochs => Some(Emulator::Bochs),
        }
    }
}

/// One line of the inner process's console stream.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// The release of the kernel under test, first thing the inner process says.
    Kernel(String),
    Verdict(Box<Verdict>),
    /// The inner process could not test anything (KVM modules missing or refusing nested).
    Untestable(String),
    /// All selected cases ran.
    Done,
}

const TAG: &str = "@nestfault:";

impl Record {
    pub fn to_line(&self) -> String {
        match self {
            Record::Kernel(release) => format!("{TAG}kernel {release}"),
            Record::Verdict(verdict) => format!("{TAG}verdict {}", serde_json::to_string(verdict).expect("verdicts serialize")),
            Record::Untestable(reason) => format!("{TAG}untestable {}", reason.replace('\n', " ")),
            Record::Done => format!("{TAG}done"),
        }
    }

    /// Finds a record in a console line. Kernel messages may share the line (the tag is searched
    /// for, not expected at the start); anything unparseable is not a record.
    pub fn parse(line: &str) -> Option<Record> {
        let start = line.rfind(TAG)?;
        let body = line[start + TAG.len()..].trim_end_matches(['\r', '\n']);
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        match kind {
            "kernel" if !rest.trim().is_empty() => Some(Record::Kernel(rest.trim().to_string())),
            "verdict" => serde_json::from_str(rest).ok().map(|v| Record::Verdict(Box::new(v))),
            "untestable" => Some(Record::Untestable(rest.trim().to_string())),
            "done" if rest.is_empty() => Some(Record::Done),
            _ => None,
        }
    }
}

fn kvm_vendor(kind: VendorKind) -> KvmVendor {
    match kind {
        VendorKind::Svm => KvmVendor::Amd,
        VendorKind::Vmx => KvmVendor::Intel,
    }
}

/// The outer side: one boot per vendor, all of that vendor's cases in it.
pub fn run(cli: &Cli, image: &Path, all: &[Case]) -> anyhow::Result<u8> {
    if cli.scenarios_dir.is_some() {
        bail!("--scenarios-dir cannot be combined with --kernel: the guest runs the built-in scenarios");
    }
    let vendors = cli.explicit_vendors().unwrap_or(VendorKind::ALL.to_vec());
    let cases = selection::select(all, &cli.scenarios, &vendors, cli.path)?;
    let workdir = boot::PrivateDir::new("nestfault-kernel").context("creating a temporary directory")?;
    let input = KernelInput { image: image.to_path_buf(), modules: cli.modules.clone() };
    let kernel = boot::prepare_kernel(&input, workdir.path())?;
    let exe = std::env::current_exe().context("finding this executable to use as the guest's /init")?;
    let mut release = kernel.release.clone();
    let mut verdicts = Vec::new();
    for kind in VendorKind::ALL {
        let vendor_cases: Vec<Case> = cases.iter().filter(|case| case.vendor == kind).cloned().collect();
        if vendor_cases.is_empty() {
            continue;
        }
        let mut inner_args = vec!["--vendor".to_string(), kind.name().to_string(), "--format".into(), "json".into()];
        for case in &vendor_cases {
            inner_args.extend(["--scenario".to_string(), case.id()]);
        }
        let initramfs = workdir.path().join(format!("initramfs-{kind}.cpio.gz"));
        boot::build_initramfs(&exe, &kernel, kvm_vendor(kind), &inner_args, &initramfs)?;
        let outcome = match boot::choose_emulator(cli.emulator.requested(), kvm_vendor(kind)) {
            Ok(emulator) => boot_and_collect(cli, emulator, &kernel, &initramfs, kind),
            Err(error) => Outcome { kernel: None, verdicts: Vec::new(), why_missing: error.to_string() },
        };
        release = outcome.kernel.clone().unwrap_or(release);
        verdicts.extend(collate(&vendor_cases, outcome));
    }
    report::render(cli.format, &release, &verdicts, &mut std::io::stdout().lock())?;
    Ok(exit_code(&verdicts))
}

/// What one boot produced.
struct Outcome {
    kernel: Option<String>,
    verdicts: Vec<Verdict>,
    /// Why cases without a verdict have none.
    why_missing: String,
}

fn boot_and_collect(cli: &Cli, emulator: Emulator, kernel: &boot::PreparedKernel, initramfs: &Path, kind: VendorKind) -> Outcome {
    let mut options = BootOptions::for_emulator(emulator);
    if let Some(seconds) = cli.timeout {
        options.timeout = Duration::from_secs(seconds);
    }
    options.verbose = cli.verbose;
    options.console_log = cli.console_log.as_ref().map(|path| with_vendor_suffix(path, kind));
    let started = Instant::now();
    let mut outcome = Outcome { kernel: None, verdicts: Vec::new(), why_missing: String::new() };
    let mut untestable = None;
    let mut done = false;
    let mut progress = |phase: &str| eprintln!("[{kind} {emulator} {:>5.1}s] {phase}", started.elapsed().as_secs_f64());
    let mut on_line = |line: &str| match Record::parse(line) {
        Some(Record::Kernel(release)) => outcome.kernel = Some(release),
        Some(Record::Verdict(verdict)) => {
            eprintln!("[{kind} {emulator} {:>5.1}s] {:?} {}", started.elapsed().as_secs_f64(), verdict.status, verdict.id);
            outcome.verdicts.push(*verdict);
        }
        Some(Record::Untestable(reason)) => untestable = Some(reason),
        Some(Record::Done) => done = true,
        None => {}
    };
    let result = boot::boot(emulator, kernel, initramfs, &options, &mut on_line, &mut progress);
    outcome.why_missing = match (result, untestable) {
        (_, Some(reason)) => format!("{kind} could not be tested in kernel {}: {reason}", kernel.release),
        (Err(error), None) => error.to_string(),
        (Ok(_), None) if done => "the guest did not run this case".to_string(),
        (Ok(report), None) => {
            let how = match report.end {
                BootEnd::Panicked => "the kernel panicked".to_string(),
                BootEnd::TimedOut => format!("no result within {} s (--timeout)", options.timeout.as_secs()),
                BootEnd::Reset => "the guest reset".to_string(),
                BootEnd::PoweredOff => "the guest powered off early".to_string(),
                BootEnd::EmulatorExited(code) => format!("{emulator} exited with {code}"),
            };
            format!("{how} after {:.0} s; last console lines:\n{}", report.elapsed.as_secs_f64(), report.tail.join("\n"))
        }
    };
    outcome
}

fn with_vendor_suffix(path: &Path, kind: VendorKind) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{kind}"));
    path.with_file_name(name)
}

/// A verdict for every case: the inner one where it arrived, otherwise a skip saying why (the
/// kernel was not testable: 125, never a pass).
fn collate(cases: &[Case], outcome: Outcome) -> Vec<Verdict> {
    cases
        .iter()
        .map(|case| {
            let id = case.id();
            outcome
                .verdicts
                .iter()
                .find(|verdict| verdict.id == id)
                .cloned()
                .unwrap_or_else(|| Verdict::without_run(case, Status::Skip, outcome.why_missing.clone()))
        })
        .collect()
}

/// The inner side: this binary as /init of the kernel under test.
pub fn inner_main() -> ! {
    let mut console = std::io::stdout();
    let mut say = |record: Record| {
        let _ = writeln!(console, "{}", record.to_line());
        let _ = console.flush();
    };
    match boot::inner_setup() {
        Err(error) => say(Record::Untestable(error.to_string())),
        Ok(env) => {
            say(Record::Kernel(env.kernel_release.clone()));
            let args = std::iter::once("nestfault".to_string()).chain(env.args);
            match Cli::try_parse_from(args).map_err(anyhow::Error::from).and_then(|cli| inner_run(&cli, &mut say)) {
                Ok(()) => say(Record::Done),
                Err(error) => say(Record::Untestable(format!("inner harness error: {error:#}"))),
            }
        }
    }
    boot::power_off()
}

fn inner_run(cli: &Cli, say: &mut dyn FnMut(Record)) -> anyhow::Result<()> {
    let cases = selection::select(&cli.cases()?, &cli.scenarios, &cli.explicit_vendors().unwrap_or_default(), cli.path)?;
    let options = RunOptions { timeout: Duration::from_secs(cli.timeout.unwrap_or(30)) };
    runner::run(&cases, &options, &mut |verdict| say(Record::Verdict(Box::new(verdict.clone()))));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::ExitValues;

    fn verdict() -> Verdict {
        Verdict {
            id: "svm/pt_page_unmapped/emulated".into(),
            vendor: "svm".into(),
            scenario: "pt_page_unmapped".into(),
            path: "emulated".into(),
            status: Status::Fail,
            expected: ExitValues(vec![("exit_code".into(), 0x400)]),
            actual: Some(ExitValues(vec![("exit_code".into(), 0x400)])),
            diagnosis: Some("a\nb".into()),
            duration_ms: 7,
        }
    }

    #[test]
    fn records_round_trip_and_survive_noise() {
        let records = [
            Record::Kernel("6.1.0-40-amd64".into()),
            Record::Verdict(Box::new(verdict())),
            Record::Untestable("kvm_amd: nested=0".into()),
            Record::Done,
        ];
        for record in records {
            let line = record.to_line();
            assert_eq!(Record::parse(&line).as_ref(), Some(&record));
            let noisy = format!("[    3.1415] kvm: something{line}\r");
            assert_eq!(Record::parse(&noisy).as_ref(), Some(&record), "{noisy}");
        }
    }

    #[test]
    fn garbage_is_not_a_record() {
        let line = Record::Verdict(Box::new(verdict())).to_line();
        for bad in [&line[..line.len() - 3], "@nestfault:", "@nestfault:done now", "@nestfault:kernel ", "@nestfault:verdict {}", "plain text"] {
            assert_eq!(Record::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cases_without_a_verdict_are_skipped_with_the_reason() {
        let all = crate::scenario::expand(&crate::scenario::built_in().unwrap());
        let cases: Vec<Case> = all.into_iter().filter(|c| c.scenario.name == "pt_page_unmapped" && c.vendor == VendorKind::Svm).collect();
        let outcome = Outcome { kernel: None, verdicts: vec![verdict()], why_missing: "the kernel panicked".into() };
        let verdicts = collate(&cases, outcome);
        assert_eq!(verdicts[0].status, Status::Fail);
        assert_eq!(verdicts[1].status, Status::Skip);
        assert_eq!(verdicts[1].diagnosis.as_deref(), Some("the kernel panicked"));
    }
}
