//! `nestfault survey KERNEL...`: "which of these kernels carries which fix?" in one command. Each
//! kernel runs as `nestfault --kernel KERNEL --vendor V --format json` (as many at once as there
//! are cores), or is read from such a report made earlier (a CI matrix fans kernels out over
//! runners and one job merges their reports). The table says, per kernel and vendor, for each
//! known fix whether it is carried, missing or partial (rows that still fail under it), for each
//! open finding whether it shows, and lists every failure that no fix or finding explains.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::arch::{self, Finding, Fix};
use crate::scenario::{self, Case, VendorKind};
use crate::selection::VendorChoice;

#[derive(Debug, clap::Args)]
pub struct SurveyArgs {
    /// Kernels as --kernel takes them (a bzImage, a tree, a .deb, debian:SUITE|VERSION), or the
    /// `--format json` report of an earlier run.
    #[arg(required = true, value_name = "KERNEL|REPORT.json")]
    pub kernels: Vec<PathBuf>,

    /// auto: both vendors.
    #[arg(long, value_enum, default_value = "auto")]
    pub vendor: VendorChoice,

    #[arg(long, value_enum, default_value = "human")]
    pub format: SurveyFormat,

    /// Runs at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SurveyFormat {
    Human,
    /// A GitHub-flavoured table, for a CI job summary or a mailing-list reply.
    Markdown,
    Json,
}

/// What the survey found for one kernel and vendor.
#[derive(Debug, Serialize)]
struct Column {
    /// What the user passed.
    input: String,
    /// The release the report names.
    kernel: String,
    vendor: String,
    /// Why there is no verdict, where there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_judged: Option<String>,
    /// Fix or finding name -> its state on this kernel.
    states: BTreeMap<String, String>,
    /// Case ids that failed or erred with no known fix or finding named.
    unexplained: Vec<String>,
}

/// How the survey ends, for the exit status.
pub enum SurveyEnding {
    /// A run needs something fixed first (a kernel input that does not exist, an archive that
    /// cannot be reached, a missing emulator): its message, as the run said it.
    MustFix(String),
    /// Every kernel judged, every failure explained.
    Explained,
    /// Some failure no fix or finding explains.
    Unexplained,
    /// Some kernel and vendor could not be judged.
    NotJudged,
}

pub fn run(args: &SurveyArgs, out: &mut dyn Write) -> anyhow::Result<SurveyEnding> {
    let vendors: Vec<VendorKind> = match args.vendor {
        VendorChoice::Auto => VendorKind::ALL.to_vec(),
        VendorChoice::Svm => vec![VendorKind::Svm],
        VendorChoice::Vmx => vec![VendorKind::Vmx],
    };
    let cases = scenario::expand(&scenario::built_in()?);
    let started = Instant::now();
    let reports = gather(args, &vendors)?;
    let mut columns = Vec::new();
    for (input, vendor, report) in reports {
        columns.push(match report {
            Ok(report) => judge(&input, vendor, &report, &cases),
            Err(why) => Column {
                input,
                kernel: String::new(),
                vendor: vendor.name().into(),
                not_judged: Some(why),
                states: BTreeMap::new(),
                unexplained: Vec::new(),
            },
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    match args.format {
        SurveyFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &columns)?;
            writeln!(out)?;
        }
        SurveyFormat::Human => table(&columns, false, out)?,
        SurveyFormat::Markdown => table(&columns, true, out)?,
    }
    if args.format != SurveyFormat::Json {
        writeln!(
            out,
            "\n{} kernel and vendor runs in {elapsed:.0} s",
            columns.len()
        )?;
    }
    let must_fix = columns.iter().find_map(|c| {
        c.not_judged
            .as_deref()
            .filter(|why| why.starts_with(MUST_FIX))
            .map(|why| format!("{} {}: {why}", c.input, c.vendor))
    });
    Ok(if let Some(why) = must_fix {
        SurveyEnding::MustFix(why)
    } else if columns.iter().any(|c| !c.unexplained.is_empty()) {
        SurveyEnding::Unexplained
    } else if columns.iter().any(|c| c.not_judged.is_some()) {
        SurveyEnding::NotJudged
    } else {
        SurveyEnding::Explained
    })
}

type Gathered = Vec<(String, VendorKind, Result<Value, String>)>;

/// Each input's report per vendor: read from a JSON file, or made by running this binary.
fn gather(args: &SurveyArgs, vendors: &[VendorKind]) -> anyhow::Result<Gathered> {
    let mut jobs: Vec<(String, VendorKind, Option<Value>, PathBuf)> = Vec::new();
    for input in &args.kernels {
        let label = input.display().to_string();
        if let Some(report) = read_report(input)? {
            let before = jobs.len();
            for vendor in vendors {
                if report["vendor"]
                    .as_array()
                    .is_some_and(|names| names.iter().any(|name| name == vendor.name()))
                {
                    jobs.push((label.clone(), *vendor, Some(report.clone()), input.clone()));
                }
            }
            if jobs.len() == before {
                let asked: Vec<&str> = vendors.iter().map(|v| v.name()).collect();
                bail!(
                    "{label} has no results for {}: it is a report of vendor {}; survey it \
                     with that --vendor",
                    asked.join(" or "),
                    report["vendor"]
                );
            }
            continue;
        }
        for vendor in vendors {
            jobs.push((label.clone(), *vendor, None, input.clone()));
        }
    }
    let exe = std::env::current_exe().context("finding this executable to run the kernels")?;
    let parallel = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let Some((index, (label, vendor, report, input))) =
                    queue.lock().expect("queue").pop()
                else {
                    break;
                };
                let report = match report {
                    Some(report) => Ok(report),
                    None => run_kernel(&exe, &input, vendor),
                };
                eprintln!(
                    "[survey] {label} {vendor}: {}",
                    match &report {
                        Ok(_) => "judged".to_string(),
                        Err(why) => format!("not judged: {}", why.lines().next().unwrap_or("")),
                    }
                );
                done.lock()
                    .expect("done")
                    .push((index, (label, vendor, report)));
            });
        }
    });
    let mut done = done.into_inner().expect("done");
    done.sort_by_key(|(index, _)| *index);
    if crate::interrupt::requested() {
        bail!("{}", crate::interrupt::reason());
    }
    Ok(done.into_iter().map(|(_, run)| run).collect())
}

/// The report in `path`, if it is one (a JSON object with results); None for a kernel input.
fn read_report(path: &Path) -> anyhow::Result<Option<Value>> {
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if !is_json {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the report {}", path.display()))?;
    let report: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a nestfault JSON report", path.display()))?;
    if !report["results"].is_array() {
        bail!(
            "{} is not a nestfault JSON report (no \"results\"): make one with --format json",
            path.display()
        );
    }
    Ok(Some(report))
}

/// How a run that needs something fixed first (it exited 255) is noted in its column.
const MUST_FIX: &str = "nestfault exited 255: ";

/// `nestfault --kernel INPUT --vendor VENDOR --format json`: its report, or why there is none
/// (an exit of 255 is the machine's or the input's to fix: its last stderr line says what).
fn run_kernel(exe: &Path, input: &Path, vendor: VendorKind) -> Result<Value, String> {
    let output = Command::new(exe)
        .arg("--kernel")
        .arg(input)
        .args(["--vendor", vendor.name(), "--format", "json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(255) {
        let last = stderr.lines().last().unwrap_or("no message");
        return Err(format!("{MUST_FIX}{last}"));
    }
    serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "no report (exit {:?}): {}",
            output.status.code(),
            stderr.trim()
        )
    })
}

/// The known fixes and open findings, in table order.
fn known() -> (Vec<&'static Fix>, Vec<&'static Finding>) {
    (
        vec![
            &arch::svm::STAGE_FIX,
            &arch::vmx::GVA_BITS_FIX,
            &arch::vmx::MISCONFIG_QUALIFICATION_FIX,
        ],
        vec![
            &arch::PAGE_ALIGNED_GPA,
            &arch::vmx::STALE_LINEAR_ADDRESS,
            &arch::vmx::EPT_AD_OFF_TABLE_WRITES,
        ],
    )
}

/// One report's column: the state of every fix and finding whose rows it ran, and the
/// failures none of them explains.
fn judge(input: &str, vendor: VendorKind, report: &Value, cases: &[Case]) -> Column {
    let results: Vec<&Value> = report["results"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|r| r["vendor"] == vendor.name())
                .collect()
        })
        .unwrap_or_default();
    let field = |result: &Value, name: &str| result[name].as_str().unwrap_or("").to_string();
    let case_of = |id: &str| cases.iter().find(|case| case.id() == id);
    let judged = |status: &str| matches!(status, "pass" | "fail" | "xfail" | "xpass" | "error");
    let mut column = Column {
        input: input.to_string(),
        kernel: report["kernel"].as_str().unwrap_or("").to_string(),
        vendor: vendor.name().into(),
        not_judged: None,
        states: BTreeMap::new(),
        unexplained: Vec::new(),
    };
    if !results.iter().any(|r| judged(&field(r, "status"))) {
        let why = results
            .first()
            .map(|r| field(r, "diagnosis"))
            .unwrap_or_else(|| "no case of this vendor in the report".into());
        column.not_judged = Some(why.lines().next().unwrap_or("").to_string());
        return column;
    }
    // The judged rows whose case `belongs`, and how many of them `shows` the fix or finding.
    let count = |belongs: &dyn Fn(&Case) -> bool, shows: &dyn Fn(&Value) -> bool| {
        let rows: Vec<&&Value> = results
            .iter()
            .filter(|r| {
                case_of(&field(r, "id")).is_some_and(belongs) && judged(&field(r, "status"))
            })
            .collect();
        (rows.len(), rows.iter().filter(|r| shows(r)).count())
    };
    let (fixes, findings) = known();
    for fix in fixes {
        let (rows, failing) = count(&|case| arch::fix_checked_by(case) == Some(fix), &|r| {
            field(r, "status") == "fail" && field(r, "diagnosis").contains(fix.label())
        });
        let state = match failing {
            _ if rows == 0 => continue,
            0 => "carried".to_string(),
            n if n == rows => "missing".to_string(),
            n => format!("partial ({n} of {rows} rows fail)"),
        };
        column.states.insert(fix.label().to_string(), state);
    }
    for finding in findings {
        let (rows, shows) = count(&|case| arch::open_findings(case).contains(&finding), &|r| {
            field(r, "diagnosis").contains(finding.name)
        });
        let state = match shows {
            _ if rows == 0 => continue,
            0 => "gone".to_string(),
            n if n == rows => "shows".to_string(),
            n => format!("shows on {n} of {rows} rows"),
        };
        column.states.insert(finding.name.to_string(), state);
    }
    let (fixes, findings) = known();
    for result in &results {
        let status = field(result, "status");
        if status != "fail" && status != "error" {
            continue;
        }
        let diagnosis = field(result, "diagnosis");
        let explained = fixes.iter().any(|fix| diagnosis.contains(fix.label()))
            || findings.iter().any(|f| diagnosis.contains(f.name));
        if !explained {
            column.unexplained.push(field(result, "id"));
        }
    }
    column
}

/// The table: a row per fix and finding, a column per kernel and vendor.
fn table(columns: &[Column], markdown: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let (fixes, findings) = known();
    let mut rows: Vec<(String, String)> = fixes
        .iter()
        .map(|fix| (fix.label().to_string(), format!("fix {}", fix.label())))
        .collect();
    rows.extend(
        findings
            .iter()
            .map(|f| (f.name.to_string(), format!("finding: {}", f.name))),
    );
    let heads: Vec<String> = columns
        .iter()
        .map(|c| {
            let kernel = if c.kernel.is_empty() {
                &c.input
            } else {
                &c.kernel
            };
            format!("{kernel} {}", c.vendor)
        })
        .collect();
    let cell = |column: &Column, key: &str| -> String {
        match &column.not_judged {
            Some(_) => "not judged".into(),
            None => column
                .states
                .get(key)
                .cloned()
                .unwrap_or_else(|| "-".into()),
        }
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    lines.push(
        std::iter::once("fix / finding".to_string())
            .chain(heads.iter().cloned())
            .collect(),
    );
    for (key, name) in &rows {
        lines.push(
            std::iter::once(name.clone())
                .chain(columns.iter().map(|c| cell(c, key)))
                .collect(),
        );
    }
    lines.push(
        std::iter::once("unexplained failures".to_string())
            .chain(columns.iter().map(|c| match &c.not_judged {
                Some(_) => "not judged".to_string(),
                None => c.unexplained.len().to_string(),
            }))
            .collect(),
    );
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (index, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect();
        if markdown {
            writeln!(out, "| {} |", cells.join(" | "))?;
            if index == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                writeln!(out, "| {} |", rule.join(" | "))?;
            }
        } else {
            writeln!(out, "{}", cells.join("  ").trim_end())?;
        }
    }
    for column in columns {
        if let Some(why) = &column.not_judged {
            writeln!(
                out,
                "\n{} {}: not judged: {why}",
                column.input, column.vendor
            )?;
        }
        for id in &column.unexplained {
            writeln!(
                out,
                "\n{} {}: {id} fails and no known fix or finding explains it",
                column.input, column.vendor
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svm_report(kernel: &str, failing: &[(&str, &str)]) -> Value {
        let cases = scenario::expand(&scenario::built_in().unwrap());
        let results: Vec<Value> = cases
            .iter()
            .filter(|c| c.vendor == VendorKind::Svm)
            .map(|case| {
                let id = case.id();
                let (status, diagnosis) = match failing.iter().find(|(f, _)| *f == id) {
                    Some((_, why)) => ("fail", why.to_string()),
                    None if !arch::open_findings(case).is_empty() => {
                        ("xfail", arch::open_findings(case)[0].name.to_string())
                    }
                    None => ("pass", String::new()),
                };
                json!({"id": id, "vendor": "svm", "status": status, "diagnosis": diagnosis})
            })
            .collect();
        json!({"kernel": kernel, "vendor": ["svm"], "results": results})
    }

    /// The ids of the rows the SVM stage fix decides.
    fn stage_rows(cases: &[Case]) -> Vec<String> {
        cases
            .iter()
            .filter(|c| arch::fix_checked_by(c) == Some(&arch::svm::STAGE_FIX))
            .map(Case::id)
            .collect()
    }

    #[test]
    fn fixes_are_carried_missing_or_partial_and_the_rest_unexplained() {
        let cases = scenario::expand(&scenario::built_in().unwrap());
        let stage_rows = stage_rows(&cases);
        let fixed = judge("7.2", VendorKind::Svm, &svm_report("7.2.13", &[]), &cases);
        assert_eq!(fixed.states["297c2fe249db"], "carried");
        assert_eq!(fixed.states["page-aligned GPA"], "shows");
        assert!(fixed.unexplained.is_empty());
        let all: Vec<(&str, &str)> = stage_rows
            .iter()
            .map(|id| (id.as_str(), "without 297c2fe249db"))
            .collect();
        let old = judge("6.1", VendorKind::Svm, &svm_report("6.1", &all), &cases);
        assert_eq!(old.states["297c2fe249db"], "missing");
        let partial = judge("x", VendorKind::Svm, &svm_report("x", &all[..1]), &cases);
        assert!(
            partial.states["297c2fe249db"].starts_with("partial (1 of"),
            "{:?}",
            partial.states
        );
        let odd = judge(
            "y",
            VendorKind::Svm,
            &svm_report(
                "y",
                &[(
                    "svm/final_page_unmapped/hardware",
                    "exit_info_2: wanted 1, got 2",
                )],
            ),
            &cases,
        );
        assert_eq!(odd.unexplained, ["svm/final_page_unmapped/hardware"]);
        let mut out = Vec::new();
        table(&[fixed, old, partial, odd], true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("| fix / finding"), "{text}");
        assert!(text.contains("| fix 297c2fe249db"), "{text}");
        assert!(
            text.contains("no known fix or finding explains it"),
            "{text}"
        );
    }

    /// The survey's three formats exactly, over four made-up kernels (fixed, unfixed, partial,
    /// one with an unexplained failure): `NESTFAULT_BLESS=1` rewrites the files.
    #[test]
    fn the_survey_formats_are_the_golden_ones() {
        let cases = scenario::expand(&scenario::built_in().unwrap());
        let stage_rows = stage_rows(&cases);
        let all: Vec<(&str, &str)> = stage_rows
            .iter()
            .map(|id| (id.as_str(), "without 297c2fe249db"))
            .collect();
        let odd = [(
            "svm/final_page_unmapped/hardware",
            "exit_info_2: wanted 1, got 2",
        )];
        let columns = || {
            vec![
                judge("7.2", VendorKind::Svm, &svm_report("7.2.13", &[]), &cases),
                judge("6.1", VendorKind::Svm, &svm_report("6.1.192", &all), &cases),
                judge(
                    "x",
                    VendorKind::Svm,
                    &svm_report("6.12.117", &all[..2]),
                    &cases,
                ),
                judge("y", VendorKind::Svm, &svm_report("7.3.1", &odd), &cases),
            ]
        };
        let goldens = [
            ("survey.txt", include_str!("report/golden/survey.txt")),
            ("survey.md", include_str!("report/golden/survey.md")),
            ("survey.json", include_str!("report/golden/survey.json")),
        ];
        for (file, golden) in goldens {
            let mut out = Vec::new();
            match file {
                "survey.txt" => table(&columns(), false, &mut out).unwrap(),
                "survey.md" => table(&columns(), true, &mut out).unwrap(),
                _ => {
                    serde_json::to_writer_pretty(&mut out, &columns()).unwrap();
                    out.push(b'\n');
                }
            }
            let text = String::from_utf8(out).unwrap();
            crate::report::check_golden(file, golden, &text);
        }
    }
}
