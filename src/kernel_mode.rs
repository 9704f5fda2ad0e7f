//! Kernel-under-test mode: boot a kernel in an emulator as the L0 hypervisor, with this same
//! binary as its /init, and run the selected cases inside it. The inner process streams one
//! record per line on the console; the outer process turns them back into verdicts and renders
//! the usual report. One verdict type, one renderer, two transports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::as_host::CommandResult;
use crate::boot::{self, BootEnd, BootOptions, Emulator, KernelInput};
use crate::console_stream::{Deflater, Inflater};
use crate::debian;
use crate::environment::{Environment, VendorEnvironment};
use crate::options::Cli;
use crate::output::{self, NamedPath};
use crate::progress::Progress;
use crate::scenario::{self, Case, VendorKind};
use crate::verdict::{RunResult, Status, Verdict};
use crate::{repeat, report};

/// One line of the inner process's console stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The release of the kernel under test, first thing the inner process says.
    Kernel(String),
    /// What the vendor's KVM runs under inside the guest (its `machine` is left to the host,
    /// which knows the emulator).
    Environment(Box<VendorEnvironment>),
    /// A case's run: the host puts it together with the case into a [`Verdict`]. The guest
    /// sends it as a chunk of the boot's compressed verdict stream ([`RecordWriter`]).
    Verdict(Box<RunResult>),
    /// What one `--as-host` command did.
    HostCommand(Box<CommandResult>),
    /// The inner process could not test anything (KVM modules missing or refusing nested).
    Untestable(String),
    /// All selected cases ran.
    Done,
}

const TAG: &str = "@nestfault:";

/// Starts the guest's console line that says which modules it loaded, and how.
pub(crate) const LOADED: &str = "nestfault-init: loaded ";

impl Record {
    /// The record as one console line: the tag, the kind, and (but for `done`) a JSON body. JSON
    /// keeps the line whole (newlines are escaped), makes a cut-off record unparseable rather
    /// than shorter (a string or object lacks its end), and lets '@' be escaped, so that the tag
    /// never occurs inside a body.
    pub fn to_line(&self) -> String {
        match self {
            Record::Kernel(release) => format!("{TAG}kernel {}", json_body(release)),
            Record::Environment(environment) => {
                format!("{TAG}environment {}", json_body(environment))
            }
            Record::Verdict(verdict) => format!("{TAG}verdict {}", json_body(verdict)),
            Record::HostCommand(result) => format!("{TAG}command {}", json_body(result)),
            Record::Untestable(reason) => format!("{TAG}untestable {}", json_body(reason)),
            Record::Done => format!("{TAG}done"),
        }
    }

    /// Finds the records in a console line. Kernel text may stand before a record (the tag is
    /// searched for, not expected at the start) and records may share a line, so the line is
    /// cut at every tag and each piece that is exactly one record (up to line-end characters)
    /// is one. A piece with text inside or after its record, or cut short, is not: taking the
    /// part that parses could turn a cut-off record plus console text into a wrong value.
    pub fn parse(line: &str) -> Vec<Record> {
        pieces(line)
            .into_iter()
            .filter_map(|piece| match piece {
                Piece::Record(record) => Some(record),
                Piece::Chunk(_) => None,
            })
            .collect()
    }

    fn parse_body(body: &str) -> Option<Record> {
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        match kind {
            "kernel" => serde_json::from_str(rest)
                .ok()
                .filter(|release: &String| !release.trim().is_empty())
                .map(Record::Kernel),
            "environment" => serde_json::from_str(rest)
                .ok()
                .map(|environment| Record::Environment(Box::new(environment))),
            "verdict" => serde_json::from_str(rest)
                .ok()
                .map(|verdict| Record::Verdict(Box::new(verdict))),
            "command" => serde_json::from_str(rest)
                .ok()
                .map(|result| Record::HostCommand(Box::new(result))),
            "untestable" => serde_json::from_str(rest).ok().map(Record::Untestable),
            "done" if rest.is_empty() => Some(Record::Done),
            _ => None,
        }
    }
}

/// One piece of a console line: a record, or a chunk of the boot's compressed verdict stream.
enum Piece {
    Record(Record),
    Chunk(String),
}

/// The kind of line that carries a chunk of the verdict stream.
const CHUNK: &str = "zverdict ";

/// The pieces of a console line, as [`Record::parse`] describes them.
fn pieces(line: &str) -> Vec<Piece> {
    let starts: Vec<usize> = line.match_indices(TAG).map(|(start, _)| start).collect();
    let ends = starts.iter().skip(1).copied().chain([line.len()]);
    starts
        .iter()
        .zip(ends)
        .filter_map(|(&start, end)| {
            let body = line[start + TAG.len()..end].trim_end_matches(['\r', '\n']);
            match body.strip_prefix(CHUNK) {
                // Checked whole when it is decoded: here only that it is one chunk.
                Some(chunk) if chunk.split(' ').count() == 3 => {
                    Some(Piece::Chunk(chunk.to_string()))
                }
                Some(_) => None,
                None => Record::parse_body(body).map(Piece::Record),
            }
        })
        .collect()
}

/// The guest's side of the console: every record as a line, verdicts through the boot's
/// compressed stream.
#[derive(Default)]
pub struct RecordWriter {
    deflater: Deflater,
}

impl RecordWriter {
    pub fn line(&mut self, record: Record) -> String {
        match record {
            Record::Verdict(verdict) => {
                format!("{TAG}{CHUNK}{}", self.deflater.chunk(&json_body(&verdict)))
            }
            other => other.to_line(),
        }
    }
}

/// The host's side: the records in each console line, verdicts decoded from the boot's stream.
/// Once the stream breaks, [`RecordReader::broken`] says where and why, and later verdicts are
/// not taken (they would decode against the wrong history).
#[derive(Default)]
pub struct RecordReader {
    inflater: Inflater,
    broken: Option<String>,
}

impl RecordReader {
    pub fn parse(&mut self, line: &str) -> Vec<Record> {
        let mut records = Vec::new();
        for piece in pieces(line) {
            let chunk = match piece {
                Piece::Record(record) => {
                    records.push(record);
                    continue;
                }
                Piece::Chunk(chunk) => chunk,
            };
            let verdict = self
                .inflater
                .text(&chunk)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str(&text)
                        .map(|result| Record::Verdict(Box::new(result)))
                        .map_err(|error| format!("a decoded verdict is not one ({error}): {text}"))
                });
            match verdict {
                Ok(record) => records.push(record),
                Err(why) if self.broken.is_none() => {
                    self.broken = Some(format!("the console's verdict stream broke: {why}"))
                }
                Err(_) => {}
            }
        }
        records
    }

    /// Why verdicts stopped being taken, if they did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }
}

/// `value` as JSON with every '@' escaped: '@' can only occur inside JSON strings, where
/// `\u0040` means the same.
fn json_body(value: &impl serde::Serialize) -> String {
    // Strings and verdicts (string keys, plain fields) always serialize.
    serde_json::to_string(value)
        .expect("records serialize")
        .replace('@', "\\u0040")
}

/// The outer side: one boot per vendor, all of that vendor's cases in it. Returns what the run
/// was obtained under (the kernel's release, each vendor's KVM) and a verdict per selected case. Whatever must be fixed before a verdict is possible
/// (an emulator missing or unsuitable, an unusable --console-log) is an error before any boot.
pub fn run(cli: &Cli, image: &Path, all: &[Case]) -> anyhow::Result<KernelRun> {
    // The guest gets the --scenarios-dir files in its initramfs.
    let scenario_files = match &cli.scenarios_dir {
        Some(dir) => scenario::read_dir(dir)?,
        None => Vec::new(),
    };
    let files: Vec<(String, Vec<u8>)> = scenario_files
        .into_iter()
        .map(|(name, text)| (name, text.into_bytes()))
        .collect();
    let vendors = cli.explicit_vendors().unwrap_or(VendorKind::ALL.to_vec());
    let cases = cli.select(all, &vendors)?;
    let boots = plan_boots(cli, &cases)?;
    let workdir = boot::private_dir("kernel")?;
    // Fetching, unpacking packages and extracting modules take seconds: they are phases too.
    let started = Instant::now();
    let shown = Progress::for_stderr();
    let mut preparing = |phase: &str| {
        shown.step(&format!(
            "[prepare {:>5.1}s] {phase}",
            started.elapsed().as_secs_f64()
        ))
    };
    let input = kernel_input(image, cli.modules.clone(), &mut preparing)?;
    let mut kernel = boot::prepare_kernel(&input, workdir.path(), &mut preparing)?;
    if cli.bare_boot && cli.modules.is_none() {
        // A bare boot: without modules the guest's /init finds no KVM, says so and powers off.
        kernel.modules_dir = None;
    }
    let exe =
        std::env::current_exe().context("finding this executable to use as the guest's /init")?;
    // Each vendor's initramfs first, then all boots at once: the wall is the slowest boot, not
    // their sum. Verdicts still come out vendor by vendor.
    let mut initramfs_files = Vec::new();
    for planned in &boots {
        let mut inner_args = vec![
            "--vendor".to_string(),
            planned.kind.name().to_string(),
            "--repeat".into(),
            cli.repeat.to_string(),
        ];
        for case in &planned.cases {
            inner_args.extend(["--scenario".to_string(), case.id()]);
        }
        if cli.bare_boot {
            inner_args.push("--bare-boot".into());
        }
        for command in &cli.as_host {
            inner_args.extend(["--as-host".to_string(), command.clone()]);
        }
        if !files.is_empty() {
            inner_args.extend(["--scenarios-dir".into(), boot::GUEST_FILES_DIR.into()]);
        }
        let initramfs = workdir
            .path()
            .join(format!("initramfs-{}.cpio", planned.kind));
        let module = crate::arch::kvm_module(planned.kind);
        preparing(&match &kernel.modules_dir {
            Some(dir) => format!(
                "building the {} initramfs: {module} and its dependencies from {}",
                planned.kind,
                dir.display()
            ),
            None => format!("building the {} initramfs", planned.kind),
        });
        boot::build_initramfs(
            &exe,
            &kernel,
            planned.kind,
            &inner_args,
            &files,
            &boot::ModuleLoading {
                unsigned_copies: !cli.no_fast_boot,
                user_params: cli.boot_kernel_params(),
                stock: !cli.as_host.is_empty(),
            },
            &initramfs,
        )?;
        initramfs_files.push(initramfs);
    }
    let outcomes: Vec<anyhow::Result<Outcome>> = std::thread::scope(|scope| {
        let running: Vec<_> = boots
            .iter()
            .zip(&initramfs_files)
            .map(|(planned, initramfs)| {
                let kernel = &kernel;
                scope.spawn(move || {
                    if crate::interrupt::requested() {
                        return Ok(Outcome::not_started());
                    }
                    boot_and_collect(cli, planned, kernel, initramfs, shown)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|boot| {
                boot.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a boot's thread panicked")))
            })
            .collect()
    });
    shown.finish();
    let mut release = kernel.release.clone();
    let mut verdicts = Vec::new();
    let mut vendors = Vec::new();
    let mut commands = Vec::new();
    let mut commands_missing = None;
    for (planned, outcome) in boots.iter().zip(outcomes) {
        let mut outcome = outcome?;
        release = outcome.kernel.clone().unwrap_or(release);
        if let Some(mut environment) = outcome.environment.take() {
            environment.machine = planned.emulator.to_string();
            vendors.push(environment);
        }
        if cli.as_host.is_empty() {
            verdicts.extend(collate(&planned.cases, outcome, cli.repeat));
        } else {
            if outcome.commands.len() < cli.as_host.len() {
                let why = match &outcome.missing {
                    Missing::Untestable(why) | Missing::Unfinished(why) => why,
                };
                commands_missing = Some(format!(
                    "the {} guest reported {} of {} --as-host commands: {why}",
                    planned.kind,
                    outcome.commands.len(),
                    cli.as_host.len()
                ));
            }
            commands.extend(std::mem::take(&mut outcome.commands));
        }
    }
    let mut environment = Environment::new(&release);
    environment.vendors = vendors;
    Ok(KernelRun {
        environment,
        verdicts,
        commands,
        commands_missing,
    })
}

/// What a `--kernel` run brought back.
pub struct KernelRun {
    pub environment: Environment,
    /// A verdict per selected case (none under `--as-host`).
    pub verdicts: Vec<Verdict>,
    /// What each `--as-host` command did, per boot in order.
    pub commands: Vec<CommandResult>,
    /// Why a boot did not report every `--as-host` command, if one did not.
    pub commands_missing: Option<String>,
}

/// One boot to come: a vendor, its cases, the emulator and where its console goes.
struct PlannedBoot {
    kind: VendorKind,
    cases: Vec<Case>,
    emulator: Emulator,
    console_log: Option<PathBuf>,
}

/// A boot for each vendor with selected cases, its emulator chosen and its console log checked;
/// an error names what must be fixed.
fn plan_boots(cli: &Cli, cases: &[Case]) -> anyhow::Result<Vec<PlannedBoot>> {
    let kinds: Vec<VendorKind> = VendorKind::ALL
        .into_iter()
        .filter(|&kind| cases.iter().any(|case| case.vendor == kind))
        .collect();
    let mut written = cli.inputs()?;
    if let Some(output) = &cli.output {
        written.push(NamedPath {
            flag: "--output",
            path: output.clone(),
        });
    }
    let mut boots = Vec::new();
    for &kind in &kinds {
        let emulator = boot::choose_emulator(cli.emulator.requested(), kind)?;
        let console_log = match &cli.console_log {
            Some(path) => {
                let path = console_log_path(path, kind, kinds.len() > 1);
                output::check("--console-log", &path, &written)?;
                Some(path)
            }
            None => None,
        };
        boots.push(PlannedBoot {
            kind,
            cases: cases
                .iter()
                .filter(|case| case.vendor == kind)
                .cloned()
                .collect(),
            emulator,
            console_log,
        });
    }
    Ok(boots)
}

/// `--console-log FILE`: FILE itself when one vendor boots, FILE.svm and FILE.vmx when both do
/// (as `--help` says).
fn console_log_path(path: &Path, kind: VendorKind, several: bool) -> PathBuf {
    if !several {
        return path.to_owned();
    }
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{kind}"));
    PathBuf::from(name)
}

/// What `--kernel` names: a path as it is, or `debian:SUITE|VERSION`, fetched into the kernel
/// cache (`cargo xtask kernels` uses the same) as its packages.
fn kernel_input(
    given: &Path,
    modules: Option<PathBuf>,
    on_progress: &mut dyn FnMut(&str),
) -> anyhow::Result<KernelInput> {
    let request = given
        .to_str()
        .and_then(|text| text.strip_prefix(DEBIAN_PREFIX))
        .filter(|_| !given.exists());
    let Some(request) = request else {
        return Ok(KernelInput {
            image: given.to_path_buf(),
            modules,
        });
    };
    let cache = debian::kernels::default_cache_dir()?;
    let fetched = debian::kernels::fetch_request(request, &cache, on_progress)?;
    Ok(KernelInput {
        image: fetched.image,
        modules: modules.or(fetched.modules),
    })
}

/// `--kernel debian:sid`, `--kernel debian:6.12.117`.
const DEBIAN_PREFIX: &str = "debian:";

/// What one boot produced.
struct Outcome {
    kernel: Option<String>,
    environment: Option<VendorEnvironment>,
    /// What the `--as-host` commands did.
    commands: Vec<CommandResult>,
    verdicts: Vec<Verdict>,
    /// Why cases without all their runs lack them.
    missing: Missing,
    /// Said under every verdict of this boot (a kernel that did not power off).
    note: Option<String>,
}

/// Why runs are missing, which decides what a case without them is.
enum Missing {
    /// This kernel cannot be judged (it did not boot, or it lacks nested support): a skip.
    Untestable(String),
    /// The kernel ran the suite, but these runs did not finish (a timeout, a crash, an
    /// interruption): an error.
    Unfinished(String),
}

impl Outcome {
    /// A boot that an interruption kept from starting.
    fn not_started() -> Self {
        Outcome {
            kernel: None,
            environment: None,
            commands: Vec::new(),
            verdicts: Vec::new(),
            missing: Missing::Unfinished(crate::interrupt::reason()),
            note: None,
        }
    }
}

fn boot_and_collect(
    cli: &Cli,
    planned: &PlannedBoot,
    kernel: &boot::PreparedKernel,
    initramfs: &Path,
    shown: Progress,
) -> anyhow::Result<Outcome> {
    let (kind, emulator) = (planned.kind, planned.emulator);
    let mut options = BootOptions::for_emulator(emulator);
    if let Some(seconds) = cli.timeout {
        options.timeout = Duration::from_secs(seconds);
    }
    options.verbose = cli.verbose;
    options.fast_boot = !cli.no_fast_boot;
    options.kernel_params = cli.boot_kernel_params();
    options.console_log = planned.console_log.clone();
    let started = Instant::now();
    let mut outcome = Outcome {
        kernel: None,
        environment: None,
        commands: Vec::new(),
        verdicts: Vec::new(),
        missing: Missing::Unfinished(String::new()),
        note: None,
    };
    let mut untestable = None;
    let mut done = false;
    let stamp = |started: Instant| {
        format!(
            "[{kind} {emulator} {:>5.1}s]",
            started.elapsed().as_secs_f64()
        )
    };
    let mut progress = |phase: &str| shown.step(&format!("{} {phase}", stamp(started)));
    let total = planned.cases.len() * cli.repeat as usize;
    // A run's result names its case by id; the boot's cases by theirs, computed once.
    let cases_by_id: HashMap<String, &Case> =
        planned.cases.iter().map(|case| (case.id(), case)).collect();
    let mut reader = RecordReader::default();
    let mut on_line = |line: &str| {
        if let Some(modules) = line.trim_end().strip_prefix(LOADED) {
            shown.step(&format!("{} loaded {modules}", stamp(started)));
        }
        for record in reader.parse(line) {
            match record {
                Record::Kernel(release) => outcome.kernel = Some(release),
                Record::Environment(environment) => outcome.environment = Some(*environment),
                Record::HostCommand(result) => outcome.commands.push(*result),
                Record::Verdict(result) => {
                    // The report's words, in its order: status, then id.
                    shown.case(
                        &stamp(started),
                        outcome.verdicts.len() + 1,
                        total,
                        &format!("{} {}", report::status_label(result.status), result.id),
                    );
                    // A result for no case of this boot cannot be reported; its case, if any,
                    // then lacks a run, which `collate` makes an error.
                    if let Some(case) = cases_by_id.get(&result.id) {
                        outcome.verdicts.push(Verdict::from_run(case, *result));
                    }
                }
                Record::Untestable(reason) => untestable = Some(reason),
                Record::Done => done = true,
            }
        }
    };
    // An error here (the emulator would not start, the console log cannot be written) is the
    // machine's, not the kernel's.
    let report = boot::boot(
        emulator,
        kernel,
        initramfs,
        &options,
        &mut on_line,
        &mut progress,
    )?;
    if report.end == BootEnd::DidNotPowerOff {
        let note = format!(
            "note: the kernel did not power off after its last result; {emulator} was stopped \
             (a kernel without CONFIG_PCI, or without ACPI, halts instead under QEMU)"
        );
        shown.note(&format!("{} {note}", stamp(started)));
        outcome.note = Some(note);
    }
    let booted = outcome.kernel.is_some();
    outcome.missing = if crate::interrupt::requested() {
        Missing::Unfinished(crate::interrupt::reason())
    } else if let Some(reason) = untestable {
        Missing::Untestable(format!(
            "{kind} could not be tested in kernel {}: {reason}",
            kernel.release
        ))
    } else if cli.bare_boot {
        Missing::Untestable("not run (--bare-boot)".into())
    } else if let Some(why) = reader.broken() {
        Missing::Unfinished(why.to_string())
    } else if done {
        Missing::Unfinished("the guest did not run this case".into())
    } else {
        let how = match report.end {
            BootEnd::Panicked => "the kernel panicked".to_string(),
            BootEnd::TimedOut => format!(
                "no result within {} s (--timeout)",
                options.timeout.as_secs()
            ),
            BootEnd::Reset => "the guest reset".to_string(),
            BootEnd::PoweredOff | BootEnd::DidNotPowerOff => {
                "the guest powered off early".to_string()
            }
            BootEnd::EmulatorExited(code) => format!("{emulator} exited with {code}"),
        };
        let why = format!(
            // The first line says it all, for a case that got some of its runs.
            "{how} after {:.0} s\nlast console lines:\n{}",
            report.elapsed.as_secs_f64(),
            report.tail.join("\n")
        );
        // Before the inner side said which kernel it runs, the kernel had not come up with KVM.
        if booted {
            Missing::Unfinished(why)
        } else if options.fast_boot {
            // The speed levers change how the kernel is started (PVH, Bochs' direct boot):
            // say how to rule them out.
            Missing::Untestable(format!(
                "the kernel did not boot: {why}\n(booted with nestfault's speed levers: \
                 --no-fast-boot boots it the plain way)"
            ))
        } else {
            Missing::Untestable(format!("the kernel did not boot: {why}"))
        }
    };
    Ok(outcome)
}

/// A verdict for every case: its inner runs merged where they arrived, otherwise a skip (this
/// kernel cannot be judged: 125) or an error (runs did not finish) saying why. A case with fewer
/// runs than `repeat` is an error unless one of its runs failed: never a pass.
fn collate(cases: &[Case], outcome: Outcome, repeat: u32) -> Vec<Verdict> {
    let (status, why) = match &outcome.missing {
        Missing::Untestable(why) => (Status::Skip, why),
        Missing::Unfinished(why) => (Status::Error, why),
    };
    cases
        .iter()
        .map(|case| {
            let id = case.id();
            let runs: Vec<Verdict> = outcome
                .verdicts
                .iter()
                .filter(|verdict| verdict.id == id)
                .cloned()
                .collect();
            let Some(mut verdict) = repeat::merge(&runs) else {
                return Verdict::without_run(case, status, why.clone());
            };
            if runs.len() < repeat as usize {
                if verdict.status == Status::Pass {
                    verdict.status = Status::Error;
                }
                let first_line = why.lines().next().unwrap_or_default();
                let shortfall = format!(
                    "only {} of {repeat} runs reported: {first_line}",
                    runs.len()
                );
                verdict.diagnosis = Some(match verdict.diagnosis.take() {
                    Some(diagnosis) => format!("{shortfall}\n{diagnosis}"),
                    None => shortfall,
                });
            }
            if let Some(note) = &outcome.note {
                verdict.diagnosis = Some(match verdict.diagnosis.take() {
                    Some(diagnosis) => format!("{diagnosis}\n{note}"),
                    None => note.clone(),
                });
            }
            verdict
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::verdict::strategy::any_status;
    use proptest::prelude::*;

    use super::*;

    use crate::verdict::{ExitValues, Observed};

    fn verdict() -> Verdict {
        Verdict {
            id: "svm/pt_page_unmapped/emulated".into(),
            vendor: "svm".into(),
            scenario: "pt_page_unmapped".into(),
            path: "emulated".into(),
            axes: Default::default(),
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
            Record::Environment(Box::new(VendorEnvironment {
                vendor: "svm".into(),
                cpu_model: "AMD EPYC @ 2.0GHz".into(),
                kvm_parameters: [("kvm.tdp_mmu".to_string(), "N".to_string())].into(),
                maxphyaddr: Some(40),
                ..Default::default()
            })),
            Record::Verdict(Box::new(verdict().run_result())),
            Record::Untestable("kvm_amd: nested=0\nsecond line".into()),
            Record::Done,
        ];
        for record in records {
            let line = record.to_line();
            let noisy = format!("[    3.1415] kvm: something{line}\r");
            assert_eq!(Record::parse(&noisy), Record::parse(&line), "{noisy}");
            assert_eq!(Record::parse(&line), [record]);
        }
    }

    /// The console carries a run's result only; the host's case supplies the rest, and the
    /// verdict that comes out is the one that went in.
    #[test]
    fn a_verdict_survives_the_console() {
        let case = crate::scenario::built_in_case("vmx/pd_page_unmapped_read/forced");
        let expected = ExitValues(vec![("exit_reason".into(), 48), ("gpa".into(), 0x150000)]);
        let other = ExitValues(vec![("exit_reason".into(), 49), ("gpa".into(), 0x150000)]);
        for (actual, diagnosis) in [
            (Some(other), Some("stale\naddress")),
            (Some(expected.clone()), None),
            (None, Some("timeout")),
        ] {
            let mut sent = Verdict::without_run(&case, Status::Fail, String::new());
            sent.expected = expected.clone();
            sent.actual = actual;
            sent.diagnosis = diagnosis.map(str::to_owned);
            sent.duration_ms = 41;
            let line = Record::Verdict(Box::new(sent.run_result())).to_line();
            assert!(
                !line.contains("\"target\""),
                "the axes are the host's: {line}"
            );
            // What the host can rebuild is not sent: values seen as expected, a missing diagnosis.
            let differs = matches!(&sent.actual, Some(actual) if *actual != expected);
            let wanted = if differs { 2 } else { 1 };
            assert_eq!(line.matches("exit_reason").count(), wanted, "{line}");
            assert_eq!(
                line.contains("diagnosis"),
                sent.diagnosis.is_some(),
                "{line}"
            );
            let [Record::Verdict(result)] = &Record::parse(&line)[..] else {
                panic!("not one verdict record: {line}");
            };
            assert_eq!(Verdict::from_run(&case, (**result).clone()), sent, "{line}");
        }
    }

    #[test]
    fn verdicts_cross_the_console_compressed_and_a_broken_stream_says_so() {
        let record = || Record::Verdict(Box::new(verdict().run_result()));
        let mut writer = RecordWriter::default();
        let lines: Vec<String> = (0..3).map(|_| writer.line(record())).collect();
        for line in &lines {
            assert!(line.starts_with("@nestfault:zverdict "), "{line}");
        }
        assert!(
            lines[2].len() * 2 < record().to_line().len(),
            "{}",
            lines[2]
        );
        assert_eq!(writer.line(Record::Done), "@nestfault:done");
        let mut reader = RecordReader::default();
        for line in &lines {
            assert_eq!(reader.parse(&format!("noise{line}\r\n")), [record()]);
        }
        assert_eq!(reader.broken(), None);
        // A chunk lost: nothing after it is taken, and the reason is kept.
        let mut reader = RecordReader::default();
        assert_eq!(reader.parse(&lines[0]), [record()]);
        assert_eq!(reader.parse(&lines[2]), []);
        assert_eq!(reader.parse(&lines[1]), []);
        let why = reader.broken().unwrap();
        assert!(
            why.contains("chunk 2 arrived where chunk 1 was due"),
            "{why}"
        );
        // Text after a chunk makes it no chunk at all.
        assert_eq!(
            RecordReader::default().parse(&format!("{} x", lines[0])),
            []
        );
    }

    #[test]
    fn garbage_is_not_a_record() {
        let line = Record::Verdict(Box::new(verdict().run_result())).to_line();
        for bad in [
            &line[..line.len() - 3],
            "@nestfault:",
            "@nestfault:done now",
            "@nestfault:kernel ",
            "@nestfault:kernel \" \"",
            "@nestfault:kernel 6.1.0",
            "@nestfault:verdict {}",
            "plain text",
        ] {
            assert_eq!(Record::parse(bad), [], "{bad}");
        }
    }

    fn svm_pt_page_unmapped(path: Option<&str>) -> Vec<Case> {
        crate::scenario::expand(&crate::scenario::built_in().unwrap())
            .into_iter()
            .filter(|c| c.scenario.name == "pt_page_unmapped" && c.vendor == VendorKind::Svm)
            .filter(|c| path.is_none_or(|path| c.path.name() == path))
            .collect()
    }

    fn outcome(verdicts: Vec<Verdict>, missing: Missing) -> Outcome {
        Outcome {
            kernel: None,
            environment: None,
            commands: Vec::new(),
            verdicts,
            missing,
            note: None,
        }
    }

    #[test]
    fn cases_without_a_verdict_are_skipped_or_errors_by_why() {
        let cases = svm_pt_page_unmapped(None);
        let untestable = Missing::Untestable("the kernel did not boot: it panicked".into());
        let verdicts = collate(&cases, outcome(vec![verdict()], untestable), 1);
        assert_eq!(verdicts[0].status, Status::Fail);
        assert_eq!(verdicts[1].status, Status::Skip);
        assert_eq!(
            verdicts[1].diagnosis.as_deref(),
            Some("the kernel did not boot: it panicked")
        );
        let unfinished = Missing::Unfinished("interrupted by SIGTERM".into());
        let verdicts = collate(&cases, outcome(Vec::new(), unfinished), 1);
        for verdict in verdicts {
            assert_eq!(verdict.status, Status::Error);
            assert_eq!(verdict.diagnosis.as_deref(), Some("interrupted by SIGTERM"));
        }
    }

    /// `--repeat 100 --timeout 10` once exited 0 with 7 of 100 runs done.
    #[test]
    fn fewer_runs_than_asked_are_an_error_never_a_pass() {
        let cases = svm_pt_page_unmapped(Some("emulated"));
        let mut passed = verdict();
        passed.status = Status::Pass;
        passed.diagnosis = None;
        let timed_out = || Missing::Unfinished("no result within 10 s (--timeout)\ntail".into());
        let verdicts = collate(&cases, outcome(vec![passed.clone(); 7], timed_out()), 100);
        assert_eq!(verdicts[0].status, Status::Error);
        assert_eq!(
            verdicts[0].diagnosis.as_deref(),
            Some("only 7 of 100 runs reported: no result within 10 s (--timeout)")
        );
        let flaky = collate(
            &cases,
            outcome(vec![passed.clone(), verdict()], timed_out()),
            3,
        );
        assert_eq!(flaky[0].status, Status::Fail);
        let diagnosis = flaky[0].diagnosis.as_deref().unwrap();
        assert!(
            diagnosis.starts_with("only 2 of 3 runs reported: no result within 10 s (--timeout)\nflaky: 2 different outcomes in 2 runs\n"),
            "{diagnosis}"
        );
        let all_runs = outcome(vec![passed.clone(), passed.clone()], timed_out());
        assert_eq!(collate(&cases, all_runs, 2), [passed]);
    }

    #[test]
    fn a_kernel_that_did_not_power_off_is_noted_under_each_verdict() {
        let cases = svm_pt_page_unmapped(Some("emulated"));
        let mut passed = verdict();
        passed.status = Status::Pass;
        passed.diagnosis = None;
        let mut halted = outcome(vec![passed], Missing::Unfinished(String::new()));
        halted.note = Some("note: did not power off".into());
        let verdicts = collate(&cases, halted, 1);
        assert_eq!(verdicts[0].status, Status::Pass);
        assert_eq!(
            verdicts[0].diagnosis.as_deref(),
            Some("note: did not power off")
        );
    }

    #[test]
    fn one_vendor_logs_to_the_file_named_and_two_to_suffixed_ones() {
        let path = Path::new("/tmp/console.log");
        assert_eq!(console_log_path(path, VendorKind::Svm, false), path);
        assert_eq!(
            console_log_path(path, VendorKind::Vmx, true),
            Path::new("/tmp/console.log.vmx")
        );
    }

    // Fuzzing the console stream. The outer side gets lines from boot's LineSplitter: the raw
    // bytes cut at '\n', '\r' dropped, decoded lossily; `console_lines` does the same to bytes.

    fn console_lines(bytes: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .split('\n')
            .map(|line| line.replace('\r', ""))
            .collect()
    }

    /// Text with what the fuzzer should lean on: the tag, record kinds, JSON punctuation, control
    /// characters, '@', and anything else.
    fn hostile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(TAG.to_string()),
            Just("kernel ".to_string()),
            Just("verdict ".to_string()),
            Just("untestable ".to_string()),
            Just("done".to_string()),
            Just("{\"".to_string()),
            Just("\"}".to_string()),
            Just("\u{1b}[31m\r\0\u{7f}".to_string()),
            Just("18446744073709551616".to_string()),
            Just("1e999999".to_string()),
            "[ -~]{0,12}",
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    /// Hostile record bodies: huge and negative numbers, deep nesting, wrong types.
    fn hostile_body() -> impl Strategy<Value = String> {
        let verdict_json = serde_json::to_string(&verdict()).unwrap();
        prop_oneof![
            (1usize..5000).prop_map(|depth| "[".repeat(depth) + &"]".repeat(depth)),
            (1usize..5000).prop_map(|depth| "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth)),
            Just(verdict_json.replace("\"duration_ms\":7", "\"duration_ms\":18446744073709551616")),
            Just(verdict_json.replace("\"duration_ms\":7", "\"duration_ms\":-1")),
            Just(verdict_json.replace("\"0x400\"", "\"0xffffffffffffffffffff\"")),
            Just(verdict_json.replace("\"fail\"", "\"exploded\"")),
            Just(verdict_json.replace("\"a\\nb\"", "{\"nested\":[1,2,{\"x\":null}]}")),
            Just("\"\\ud800\"".to_string()),
            Just("1e999999".to_string()),
            hostile_text(),
        ]
    }

    fn any_exit_values() -> impl Strategy<Value = ExitValues> {
        proptest::collection::vec((hostile_text(), any::<u64>()), 0..4).prop_map(ExitValues)
    }

    fn any_record() -> impl Strategy<Value = Record> {
        let verdict = (
            hostile_text(),
            any_status(),
            any_exit_values(),
            prop_oneof![
                Just(Observed::Nothing),
                Just(Observed::AsExpected),
                any_exit_values().prop_map(Observed::Values),
            ],
            proptest::option::of(hostile_text()),
            any::<u64>(),
        )
            .prop_map(|(id, status, expected, actual, diagnosis, duration_ms)| {
                Record::Verdict(Box::new(RunResult {
                    id,
                    status,
                    expected,
                    actual,
                    diagnosis,
                    duration_ms,
                }))
            });
        prop_oneof![
            hostile_text()
                .prop_filter("a release is not blank", |release| !release
                    .trim()
                    .is_empty())
                .prop_map(Record::Kernel),
            hostile_text().prop_map(Record::Untestable),
            (hostile_text(), hostile_text(), hostile_text()).prop_map(|(model, name, value)| {
                Record::Environment(Box::new(VendorEnvironment {
                    vendor: "vmx".into(),
                    cpu_model: model,
                    kvm_parameters: [(name, value)].into(),
                    ept_vpid_cap: Some("0xf0106334141".into()),
                    ..Default::default()
                }))
            }),
            Just(Record::Done),
            verdict,
        ]
    }

    proptest! {
        // Bounded so that the whole fuzz set stays well under a few seconds in a debug build.
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_console_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for line in console_lines(&bytes) {
                let _ = Record::parse(&line);
            }
        }

        #[test]
        fn hostile_records_never_panic(noise in hostile_text(), kind in prop_oneof![Just("kernel".to_string()), Just("verdict".to_string()), Just("untestable".to_string()), Just("done".to_string()), "[a-z]{0,8}"], body in hostile_body()) {
            let _ = Record::parse(&format!("{noise}{TAG}{kind} {body}"));
            let _ = Record::parse(&format!("{TAG}{kind} {body}{noise}"));
        }

        /// Every record is one line, and is found whatever kernel text stands before it on that
        /// line; two records on one line are both found.
        #[test]
        fn records_are_found_behind_noise(record in any_record(), other in any_record(), noise in hostile_text()) {
            let line = record.to_line();
            prop_assert!(!line.contains(['\n', '\r']), "{}", line);
            prop_assert_eq!(Record::parse(&line), [record.clone()]);
            let noisy = format!("{}{line}", noise.replace(['\n', '\r'], " "));
            let found = Record::parse(&noisy);
            prop_assert_eq!(found.last(), Some(&record), "{}", noisy);
            let both = format!("{}{line}", other.to_line());
            prop_assert_eq!(Record::parse(&both), [other, record]);
        }

        /// A record cut short (the guest died mid-line) or with kernel text inside it is not taken
        /// for a record, and does not hide the next one.
        #[test]
        fn cut_or_broken_records_are_not_records(record in any_record(), next in any_record(), cut in any::<prop::sample::Index>(), noise in "[ -~]{1,20}") {
            let line = record.to_line();
            let cuts: Vec<usize> = (TAG.len()..line.len()).filter(|&i| line.is_char_boundary(i)).collect();
            prop_assume!(!cuts.is_empty());
            let at = cuts[cut.index(cuts.len())];
            prop_assert_eq!(Record::parse(&line[..at]), [], "{}", &line[..at]);
            let broken = format!("{}{}{}", &line[..at], noise.replace('@', "a"), &line[at..]);
            let with_next = format!("{broken}{}", next.to_line());
            let found = Record::parse(&with_next);
            prop_assert_eq!(found.last(), Some(&next), "{}", with_next);
        }
    }
}
