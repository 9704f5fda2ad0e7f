//! The report for a person at a terminal.

use std::io::{self, Write};

use super::{vendors, Counts};
use crate::environment::Environment;
use crate::verdict::{Status, Verdict};

/// The status word of a report line, padded to one width; also what progress lines show.
pub fn label(status: Status) -> &'static str {
    match status {
        Status::Pass => "PASS   ",
        Status::Fail => "FAIL   ",
        Status::Skip => "SKIP   ",
        Status::Error => "ERROR  ",
        Status::NotRun => "NOT RUN",
        Status::Xfail => "XFAIL  ",
        Status::Xpass => "XPASS  ",
    }
}

/// What the run was obtained under, then one line per case with its diagnosis indented under
/// it. Reasons for cases that did not run, which repeat per case, are printed once at the end,
/// each with how many cases it kept from running.
pub fn render(
    environment: &Environment,
    verdicts: &[Verdict],
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(
        out,
        "nestfault {}: kernel {}, {}",
        environment.nestfault,
        environment.kernel,
        vendors(verdicts)
    )?;
    for vendor in &environment.vendors {
        for line in vendor.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    let width = verdicts.iter().map(|v| v.id.len()).max().unwrap_or(0);
    // (status, reason) -> how many cases, in first-seen order.
    let mut not_run: Vec<(Status, &str, usize)> = Vec::new();
    for verdict in verdicts {
        let listed_at_end = matches!(verdict.status, Status::Skip | Status::NotRun);
        let time = if listed_at_end {
            String::new()
        } else {
            format!("{:>6} ms", verdict.duration_ms)
        };
        let line = format!("{} {:width$} {time}", label(verdict.status), verdict.id);
        writeln!(out, "{}", line.trim_end())?;
        match &verdict.diagnosis {
            Some(reason) if listed_at_end => {
                match not_run
                    .iter_mut()
                    .find(|(status, known, _)| *status == verdict.status && known == reason)
                {
                    Some((_, _, count)) => *count += 1,
                    None => not_run.push((verdict.status, reason, 1)),
                }
            }
            Some(diagnosis) => {
                for line in diagnosis.lines() {
                    writeln!(out, "        {line}")?;
                }
            }
            None => {}
        }
    }
    let counts = Counts::of(verdicts);
    writeln!(
        out,
        "{} passed, {} failed, {} errors, {} xfail, {} xpass, {} not run, {} skipped",
        counts.pass,
        counts.fail,
        counts.error,
        counts.xfail,
        counts.xpass,
        counts.not_run,
        counts.skip
    )?;
    for (status, reason, count) in not_run {
        let cases = if count == 1 { "case" } else { "cases" };
        match status {
            Status::NotRun => writeln!(out, "not run ({count} {cases}): {reason}")?,
            _ => writeln!(out, "not tested: {reason}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    #[test]
    fn human_report_shows_diagnoses_and_reasons_once() {
        let mut out = Vec::new();
        render(&sample::environment(), &sample::verdicts(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "nestfault 0.0.0-example: kernel 6.12.0-nestfault-example, svm,vmx\n  svm on \
                 qemu-tcg, CPU AMD EPYC Processor\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  svm KVM: kvm.force_emulation_prefix=0 kvm.tdp_mmu=Y"),
            "{text}"
        );
        assert!(
            text.contains("FAIL    svm/pt_page_unmapped/emulated"),
            "{text}"
        );
        assert!(
            text.contains("        exit_info_1: GUEST_FINAL set, GUEST_PAGE expected"),
            "{text}"
        );
        assert!(
            text.contains("XFAIL   vmx/pt_page_unmapped/forced"),
            "{text}"
        );
        assert!(
            text.contains("        expected failure: the open finding"),
            "{text}"
        );
        assert!(
            text.contains("XPASS   vmx/final_page_unmapped/forced"),
            "{text}"
        );
        assert!(
            text.contains("NOT RUN svm/pt_page_unmapped/forced\n"),
            "{text}"
        );
        assert_eq!(text.matches("kvm_intel is not loaded").count(), 1, "{text}");
        assert!(
            text.contains("not run (1 case): kvm's force_emulation_prefix is 0"),
            "{text}"
        );
        assert!(
            text.contains("1 passed, 2 failed, 1 errors, 1 xfail, 1 xpass, 1 not run, 2 skipped"),
            "{text}"
        );
    }
}
