//! The report for a person at a terminal.

use std::io::{self, Write};

use super::{vendors, Counts};
use crate::verdict::{Status, Verdict};

/// The status word of a report line, padded to one width; also what progress lines show.
pub fn label(status: Status) -> &'static str {
    match status {
        Status::Pass => "PASS ",
        Status::Fail => "FAIL ",
        Status::Skip => "SKIP ",
        Status::Error => "ERROR",
    }
}

/// One line per case, its diagnosis indented under it. Skip reasons, which repeat per vendor, are
/// printed once at the end.
pub fn render(kernel: &str, verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "nestfault: kernel {kernel}, {}", vendors(verdicts))?;
    let width = verdicts.iter().map(|v| v.id.len()).max().unwrap_or(0);
    let mut skip_reasons = Vec::new();
    for verdict in verdicts {
        let time = if verdict.status == Status::Skip {
            String::new()
        } else {
            format!("{:>6} ms", verdict.duration_ms)
        };
        let line = format!("{} {:width$} {time}", label(verdict.status), verdict.id);
        writeln!(out, "{}", line.trim_end())?;
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
    let counts = Counts::of(verdicts);
    writeln!(
        out,
        "{} passed, {} failed, {} errors, {} skipped",
        counts.pass, counts.fail, counts.error, counts.skip
    )?;
    for reason in skip_reasons {
        writeln!(out, "not tested: {reason}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    #[test]
    fn human_report_shows_diagnoses_and_skip_reasons_once() {
        let mut out = Vec::new();
        render("k", &sample::verdicts(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL  svm/pt_page_unmapped/emulated"),
            "{text}"
        );
        assert!(
            text.contains("      exit_info_1: GUEST_FINAL set, GUEST_PAGE expected"),
            "{text}"
        );
        assert_eq!(text.matches("kvm_intel is not loaded").count(), 1, "{text}");
        assert!(
            text.contains("1 passed, 2 failed, 1 errors, 2 skipped"),
            "{text}"
        );
    }
}
