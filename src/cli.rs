//! The command line: parse once, run the selected cases here or inside a kernel under test, render
//! the report and map the verdicts to an exit code.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use crate::environment::{Environment, VendorEnvironment};
use crate::exit::{Ending, ExitClass};
use crate::options::{Cli, Command};
use crate::output::{self, ReportFile};
use crate::report::{self, Format, HumanStyle};
use crate::scenario::{Case, VendorKind};
use crate::selection::PathChoice;
use crate::{boot, interrupt, kernel_mode, repeat, runner, scenario, verdict, vm};

/// The whole program: what `main` returns.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            let ending = if error.use_stderr() {
                Ending::MustFix
            } else {
                Ending::Informed
            };
            return ExitClass::of(&ending).into();
        }
    };
    interrupt::install();
    // A run killed without a chance to clean up (SIGKILL) left its temporary directories.
    boot::remove_stale_dirs();
    let result = run(&cli);
    let ending = match &result {
        // A reader that went away (`nestfault --list | head -1`) ends the run quietly, with the
        // status the verdicts give; everything of the run but its report is done.
        Err(error) if closed_stdout(error) => Ending::Informed,
        _ if interrupt::requested() => {
            eprintln!(
                "nestfault: {}; the report above (if any) is partial",
                interrupt::reason()
            );
            Ending::Interrupted
        }
        Ok(Done::Judged(verdicts)) => Ending::Judged {
            verdicts,
            strict: cli.strict,
        },
        Ok(Done::Informed) => Ending::Informed,
        Ok(Done::NotJudged) => Ending::NotJudged,
        Ok(Done::Unexplained) => Ending::Unexplained,
        Err(error) => {
            eprintln!("nestfault: error: {error:#}");
            Ending::MustFix
        }
    };
    ExitClass::of(&ending).into()
}

/// A report written to a stdout whose reader has gone is no error: the verdicts stand, and decide
/// the exit status.
fn unless_closed(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Whether `error` is a write to a stdout whose reader has gone (EPIPE).
fn closed_stdout(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// What a command line came to, short of an error.
enum Done {
    /// Printed what was asked for (--list, kconfig, a host that can run the suite).
    Informed,
    /// `nestfault host` on a machine where no vendor nests; a survey with a kernel it could not
    /// judge.
    NotJudged,
    /// A survey found a failure no known fix or finding explains.
    Unexplained,
    Judged(Vec<verdict::Verdict>),
}

fn run(cli: &Cli) -> anyhow::Result<Done> {
    match &cli.command {
        Some(Command::Kconfig(args)) => {
            crate::kconfig::run(args)?;
            return Ok(Done::Informed);
        }
        Some(Command::Survey(args)) => {
            let ending = crate::survey::run(args, &mut std::io::stdout().lock())?;
            return Ok(match ending {
                crate::survey::SurveyEnding::MustFix(why) => bail!("{why}"),
                crate::survey::SurveyEnding::Explained => Done::Informed,
                crate::survey::SurveyEnding::Unexplained => Done::Unexplained,
                crate::survey::SurveyEnding::NotJudged => Done::NotJudged,
            });
        }
        Some(Command::Cache(args)) => {
            crate::caches::run(args, &mut std::io::stdout().lock())?;
            return Ok(Done::Informed);
        }
        Some(Command::Host) => {
            let cases = scenario::expand(&scenario::built_in()?);
            let nests = crate::host_check::run(&cases, &mut std::io::stdout().lock())?;
            return Ok(if nests {
                Done::Informed
            } else {
                Done::NotJudged
            });
        }
        None => {}
    }
    let all = cli.cases()?;
    if cli.list {
        let vendors = cli.explicit_vendors().unwrap_or(VendorKind::ALL.to_vec());
        let mut stdout = std::io::stdout().lock();
        for case in cli.select(&all, &vendors)? {
            writeln!(stdout, "{}", case.id())?;
        }
        return Ok(Done::Informed);
    }
    // Made before the run, so that an unusable path fails at once, not after a long boot.
    let mut output = match &cli.output {
        Some(path) => {
            output::check("--output", path, &cli.inputs()?)?;
            Some(ReportFile::create(path)?)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let (mut environment, verdicts) = match &cli.kernel {
        Some(image) => {
            if cli.path == PathChoice::Forced && cli.turns_forced_prefix_off() {
                bail!(
                    "--path forced asks for the forced-emulation prefix, which \
                     --kernel-param kvm.force_emulation_prefix=0 turns off: leave out one of them"
                );
            }
            let run = kernel_mode::run(cli, image, &all)?;
            if !cli.as_host.is_empty() {
                return as_host_results(&run);
            }
            (run.environment, run.verdicts)
        }
        None if !cli.as_host.is_empty() => bail!("--as-host needs --kernel"),
        None => run_here(cli, &all)?,
    };
    environment.wall_ms = Some(started.elapsed().as_millis() as u64);
    let style = HumanStyle::for_stdout(cli.verbose);
    let mut stdout = std::io::stdout().lock();
    match output.as_mut() {
        None => unless_closed(report::render(
            cli.format,
            &environment,
            &verdicts,
            style,
            &mut stdout,
        ))?,
        Some(file) => {
            unless_closed(report::render(
                Format::Human,
                &environment,
                &verdicts,
                style,
                &mut stdout,
            ))?;
            let mut writer = BufWriter::new(file.file());
            let plain = HumanStyle {
                color: false,
                ..style
            };
            report::render(cli.format, &environment, &verdicts, plain, &mut writer)
                .and_then(|()| writer.flush())
                .context("writing the report to --output")?;
        }
    }
    if let Some(file) = output {
        file.finish()?;
    }
    // A case the user named by its id or scenario that cannot run here is not a verdict on the
    // kernel: what they asked for needs fixing first.
    let named: Vec<&verdict::Verdict> = verdicts
        .iter()
        .filter(|v| v.status == verdict::Status::NotRun && cli.names_exactly(&v.id, &v.scenario))
        .collect();
    if let Some(first) = named.first() {
        bail!(
            "{} named on the command line cannot run here ({} in all): {}",
            first.id,
            named.len(),
            first.diagnosis.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(Done::Judged(verdicts))
}

/// Prints what each `--as-host` command did, one JSON object a line; every command must have
/// reported in every boot.
fn as_host_results(run: &kernel_mode::KernelRun) -> anyhow::Result<Done> {
    let mut stdout = std::io::stdout().lock();
    for result in &run.commands {
        writeln!(stdout, "{}", serde_json::to_string(result)?)?;
    }
    if let Some(why) = &run.commands_missing {
        bail!("{why}");
    }
    Ok(Done::Informed)
}

/// Direct mode: the selected cases on this machine's KVM. A /dev/kvm this user cannot open is
/// for the machine to fix (255), not a kernel that cannot be judged: a bisect would skip every
/// commit.
fn run_here(cli: &Cli, all: &[Case]) -> anyhow::Result<(Environment, Vec<verdict::Verdict>)> {
    let kvm = vm::open_kvm()?;
    let vendors = match cli.explicit_vendors() {
        Some(vendors) => vendors,
        None => auto_vendors(&kvm)?,
    };
    let cases = cli.select(all, &vendors)?;
    if cli.path == PathChoice::Forced {
        if let Err(reason) = vm::forced_emulation_prefix() {
            bail!("--path forced cannot run here: {reason}");
        }
    }
    let mut environment = Environment::new(&kernel_release());
    environment.vendors = vendors
        .iter()
        .map(|&vendor| VendorEnvironment::probe(vendor, "host"))
        .collect();
    if cli.bare_boot {
        let not_run = |case| {
            verdict::Verdict::without_run(
                case,
                verdict::Status::Skip,
                "not run (--bare-boot)".into(),
            )
        };
        return Ok((environment, cases.iter().map(not_run).collect()));
    }
    let options = runner::RunOptions {
        timeout: Duration::from_secs(cli.timeout.unwrap_or(10)),
        left_to_exit: runner::ExitAllowance::none(),
    };
    let verdicts = repeat::run(&cases, &options, cli.repeat, &mut |_| {});
    Ok((environment, verdicts))
}

/// The vendors this host's KVM can run nested; both when it can run neither, so that each is
/// reported as untested with its own reason.
fn auto_vendors(kvm: &kvm_ioctls::Kvm) -> anyhow::Result<Vec<VendorKind>> {
    let cpuid = vm::supported_cpuid(kvm)?;
    let nested: Vec<VendorKind> = VendorKind::ALL
        .into_iter()
        .filter(|&kind| crate::arch::missing_nested_support(&cpuid, kind).is_none())
        .collect();
    Ok(if nested.is_empty() {
        VendorKind::ALL.to_vec()
    } else {
        nested
    })
}

/// The running kernel's release (uname -r).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
