//! Renders verdicts (human or JSON) and maps them to the exit code `git bisect run` expects.

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::Serialize;

use crate::verdict::{Status, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Exit codes: 0 all passed, 1 something failed or errored, 125 nothing failed but something could
/// not be tested (`git bisect run` skips the commit), 255 usage or harness error (bisect stops).
pub mod exit_code {
    pub const PASS: u8 = 0;
    pub const FAIL: u8 = 1;
    pub const UNTESTABLE: u8 = 125;
    pub const HARNESS: u8 = 255;
}

pub fn exit_code(verdicts: &[Verdict]) -> u8 {
    let any = |status| verdicts.iter().any(|v| v.status == status);
    if any(Status::Fail) || any(Status::Error) {
        exit_code::FAIL
    } else if any(Status::Skip) || verdicts.is_empty() {
        exit_code::UNTESTABLE
    } else {
        exit_code::PASS
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    kernel: &'a str,
    vendor: String,
    results: &'a [Verdict],
}

/// The selected vendors, "svm", "vmx" or "svm,vmx".
fn vendors(verdicts: &[Verdict]) -> String {
    verdicts.iter().map(|v| v.vendor.as_str()).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(",")
}

pub fn render(format: Format, kernel: &str, verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Json => {
            let report = JsonReport { kernel, vendor: vendors(verdicts), results: verdicts };
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)
        }
        Format::Human => render_human(kernel, verdicts, out),
    }
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Pass => "PASS ",
        Status::Fail => "FAIL ",
        Status::Skip => "SKIP ",
        Status::Error => "ERROR",
    }
}

/// One line per case, its diagnosis indented under it. Skip reasons, which repeat per vendor, are
/// printed once at the end.
fn render_human(kernel: &str, verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "nestfault: kernel {kernel}, {}", vendors(verdicts))?;
    let width = verdicts.iter().map(|v| v.id.len()).max().unwrap_or(0);
    let mut skip_reasons = Vec::new();
    for verdict in verdicts {
        let time = if verdict.status == Status::Skip { String::new() } else { format!("{:>6} ms", verdict.duration_ms) };
        writeln!(out, "{} {:width$} {time}", label(verdict.status), verdict.id)?;
        match (&verdict.diagnosis, verdict.status) {
            (Some(reason), Status::Skip) => {
                if !skip_reasons.contains(reason) {
                    skip_reasons.push(reason.clone());
                }
            }
            (Some(diagnosis), _) => {
                for line in diagnosis.lines() {
                    writeln!(out, "      {line}")?;
                }
            }
            (None, _) => {}
        }
    }
    let count = |status| verdicts.iter().filter(|v| v.status == status).count();
    writeln!(
        out,
        "{} passed, {} failed, {} errors, {} skipped",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Error),
        count(Status::Skip)
    )?;
    for reason in skip_reasons {
        writeln!(out, "not tested: {reason}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::ExitValues;

    fn verdict(id: &str, status: Status, diagnosis: Option<&str>) -> Verdict {
        let mut parts = id.split('/');
        Verdict {
            id: id.into(),
            vendor: parts.next().unwrap().into(),
            scenario: parts.next().unwrap().into(),
            path: parts.next().unwrap().into(),
            status,
            expected: ExitValues(vec![("exit_code".into(), 0x400)]),
            actual: Some(ExitValues(vec![("exit_code".into(), 0x81)])),
            diagnosis: diagnosis.map(str::to_string),
            duration_ms: 5,
        }
    }

    #[test]
    fn exit_codes_follow_the_bisect_convention() {
        let pass = verdict("svm/a/emulated", Status::Pass, None);
        let fail = verdict("svm/a/hardware", Status::Fail, Some("x"));
        let error = verdict("svm/b/hardware", Status::Error, Some("x"));
        let skip = verdict("vmx/a/emulated", Status::Skip, Some("no VMX"));
        assert_eq!(exit_code(&[pass.clone()]), 0);
        assert_eq!(exit_code(&[pass.clone(), skip.clone()]), 125);
        assert_eq!(exit_code(&[pass.clone(), skip.clone(), fail]), 1);
        assert_eq!(exit_code(&[skip, error]), 1);
        assert_eq!(exit_code(&[]), 125);
    }

    #[test]
    fn json_has_the_contracted_shape() {
        let verdicts = [verdict("svm/a/emulated", Status::Fail, Some("why")), verdict("vmx/a/emulated", Status::Skip, Some("no"))];
        let mut out = Vec::new();
        render(Format::Json, "6.1.0-test", &verdicts, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["kernel"], "6.1.0-test");
        assert_eq!(json["vendor"], "svm,vmx");
        let first = &json["results"][0];
        for key in ["id", "vendor", "scenario", "path", "status", "expected", "actual", "diagnosis", "duration_ms"] {
            assert!(first.get(key).is_some(), "missing {key}");
        }
        assert_eq!(first["expected"]["exit_code"], "0x400");
        assert_eq!(first["status"], "fail");
    }

    #[test]
    fn human_report_shows_diagnoses_and_skip_reasons_once() {
        let verdicts = [
            verdict("svm/a/emulated", Status::Fail, Some("line one\nline two")),
            verdict("vmx/a/emulated", Status::Skip, Some("VMX: missing")),
            verdict("vmx/a/hardware", Status::Skip, Some("VMX: missing")),
        ];
        let mut out = Vec::new();
        render(Format::Human, "k", &verdicts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("FAIL  svm/a/emulated"), "{text}");
        assert!(text.contains("      line two"), "{text}");
        assert_eq!(text.matches("VMX: missing").count(), 1, "{text}");
        assert!(text.contains("0 passed, 1 failed, 0 errors, 2 skipped"), "{text}");
    }
}
