//! The report for a person at a terminal: what the run was obtained under, then per vendor a
//! matrix of the fault space (a row per scenario, its axes in columns, a cell per path), then only
//! what needs reading: each failure and error with its wanted/got lines and diagnosis, the
//! expected failures by finding, one line per reason a case did not run, and a summary.
//! `--verbose` prints a line per case instead of the matrix, as before it.

use std::io::{self, Write};

use super::{vendors, Counts, HumanStyle};
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

/// A matrix cell: plain words, or on a terminal a glyph in colour (green pass, red failure or
/// error, yellow expected failure, cyan unexpected pass, dim what did not run).
fn cell(status: Status, color: bool) -> (&'static str, &'static str) {
    let (plain, glyph, ansi) = match status {
        Status::Pass => ("ok", "✓", "32"),
        Status::Fail => ("FAIL", "✗ FAIL", "1;31"),
        Status::Error => ("ERROR", "! ERROR", "1;31"),
        Status::Xfail => ("xfail", "x xfail", "33"),
        Status::Xpass => ("XPASS", "✓ XPASS", "36"),
        Status::NotRun => ("not run", "· not run", "2"),
        Status::Skip => ("skip", "· skip", "2"),
    };
    if color {
        (glyph, ansi)
    } else {
        (plain, "")
    }
}

const PATHS: [&str; 3] = ["emulated", "hardware", "forced"];
const COLUMN: usize = 9;

pub fn render(
    environment: &Environment,
    verdicts: &[Verdict],
    style: HumanStyle,
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
    if style.per_case {
        per_case(verdicts, out)?;
    } else {
        matrix(verdicts, style.color, out)?;
        needs_reading(verdicts, out)?;
    }
    summary(environment, verdicts, out)
}

/// Per vendor, a row per scenario with its axes and a cell per path; a vendor none of whose
/// cases ran gets no matrix (its reason is among the lines below).
fn matrix(verdicts: &[Verdict], color: bool, out: &mut dyn Write) -> io::Result<()> {
    let mut vendors: Vec<&str> = Vec::new();
    for verdict in verdicts {
        if !vendors.contains(&verdict.vendor.as_str()) {
            vendors.push(&verdict.vendor);
        }
    }
    for vendor in vendors {
        let of_vendor: Vec<&Verdict> = verdicts.iter().filter(|v| v.vendor == vendor).collect();
        if of_vendor.iter().all(|v| v.status == Status::Skip) {
            continue;
        }
        // Scenarios in the order their first case came.
        let mut rows: Vec<(&str, [Option<Status>; 3], &Verdict)> = Vec::new();
        for verdict in &of_vendor {
            let column = PATHS.iter().position(|path| *path == verdict.path);
            let row = match rows.iter().position(|(name, ..)| *name == verdict.scenario) {
                Some(row) => row,
                None => {
                    rows.push((&verdict.scenario, [None; 3], verdict));
                    rows.len() - 1
                }
            };
            if let Some(column) = column {
                rows[row].1[column] = Some(verdict.status);
            }
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<10} {:<15} {:<6} {:<7} {:<6} {:<8} {:<8} {:<9} {:<COLUMN$} {:<COLUMN$} {}",
            vendor.to_uppercase(),
            "fault",
            "access",
            "leaves",
            "paging",
            "place",
            "span",
            "a/d",
            PATHS[0],
            PATHS[1],
            PATHS[2]
        )?;
        for (_, cells, first) in rows {
            let axes = &first.axes;
            let leaves = format!("{}/{}", axes.nested_leaf, axes.l2_leaf);
            // EPT's A/D flags and L2's own, for VMX; SVM has no such switch.
            let ad = if vendor == "vmx" {
                format!("{}/{}", axes.ept_ad, axes.l2_ad)
            } else {
                "-".to_string()
            };
            let mut line = format!(
                "{:<10} {:<15} {:<6} {:<7} {:<6} {:<8} {:<8} {:<9}",
                axes.target,
                axes.fault,
                axes.access,
                leaves,
                axes.l2_paging,
                axes.placement,
                axes.span,
                ad
            );
            for status in cells {
                line.push(' ');
                let (text, ansi) = status.map_or(("", ""), |status| cell(status, color));
                let padding = COLUMN.saturating_sub(text.chars().count());
                if ansi.is_empty() {
                    line.push_str(text);
                } else {
                    line.push_str(&format!("\u{1b}[{ansi}m{text}\u{1b}[0m"));
                }
                line.push_str(&" ".repeat(padding));
            }
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

/// Failures and errors in full, unexpected passes, the expected failures by their first line
/// (the finding), and every reason a case did not run or a vendor was not tested, once.
fn needs_reading(verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    let mut first_line = true;
    let mut heading = |out: &mut dyn Write| -> io::Result<()> {
        if std::mem::take(&mut first_line) {
            writeln!(out)?;
        }
        Ok(())
    };
    for verdict in verdicts
        .iter()
        .filter(|v| matches!(v.status, Status::Fail | Status::Error | Status::Xpass))
    {
        heading(out)?;
        writeln!(
            out,
            "{} {} {:>6} ms",
            label(verdict.status),
            verdict.id,
            verdict.duration_ms
        )?;
        for line in verdict.diagnosis.iter().flat_map(|d| d.lines()) {
            writeln!(out, "        {line}")?;
        }
    }
    let mut grouped = grouped_reasons(
        verdicts
            .iter()
            .filter(|v| matches!(v.status, Status::Xfail | Status::NotRun | Status::Skip)),
    );
    // Expected failures, then what did not run, then what was not tested; stable, so each kind
    // keeps the order its reasons first came in.
    grouped.sort_by_key(|(status, ..)| match status {
        Status::Xfail => 0,
        Status::NotRun => 1,
        _ => 2,
    });
    for (status, reason, count) in grouped {
        heading(out)?;
        write_reason(status, reason, count, out)?;
    }
    Ok(())
}

/// A line per case, its diagnosis indented under it; what did not run is listed once below.
fn per_case(verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    let width = verdicts.iter().map(|v| v.id.len()).max().unwrap_or(0);
    let listed_at_end = |verdict: &Verdict| matches!(verdict.status, Status::Skip | Status::NotRun);
    for verdict in verdicts {
        let time = if listed_at_end(verdict) {
            String::new()
        } else {
            format!("{:>6} ms", verdict.duration_ms)
        };
        let line = format!("{} {:width$} {time}", label(verdict.status), verdict.id);
        writeln!(out, "{}", line.trim_end())?;
        if !listed_at_end(verdict) {
            for line in verdict.diagnosis.iter().flat_map(|d| d.lines()) {
                writeln!(out, "        {line}")?;
            }
        }
    }
    for (status, reason, count) in grouped_reasons(verdicts.iter().filter(|v| listed_at_end(v))) {
        write_reason(status, reason, count, out)?;
    }
    Ok(())
}

/// (status, reason, how many) for `verdicts`, in the order each reason first came: the whole
/// diagnosis of a case that did not run or a vendor not tested, the first line (the finding) of
/// an expected failure.
fn grouped_reasons<'a>(
    verdicts: impl Iterator<Item = &'a Verdict>,
) -> Vec<(Status, &'a str, usize)> {
    let mut grouped: Vec<(Status, &str, usize)> = Vec::new();
    for verdict in verdicts {
        let diagnosis = verdict.diagnosis.as_deref().unwrap_or("no reason given");
        let reason = match verdict.status {
            Status::Xfail => diagnosis.lines().next().unwrap_or(diagnosis),
            _ => diagnosis,
        };
        match grouped
            .iter_mut()
            .find(|(status, known, _)| *status == verdict.status && *known == reason)
        {
            Some((_, _, count)) => *count += 1,
            None => grouped.push((verdict.status, reason, 1)),
        }
    }
    grouped
}

/// One line for a reason `count` cases share.
fn write_reason(status: Status, reason: &str, count: usize, out: &mut dyn Write) -> io::Result<()> {
    let cases = if count == 1 { "case" } else { "cases" };
    match status {
        Status::Xfail => {
            let reason = reason.strip_prefix("expected failure: ").unwrap_or(reason);
            writeln!(out, "xfail ({count} {cases}): {reason}")
        }
        Status::NotRun => writeln!(out, "not run ({count} {cases}): {reason}"),
        _ => writeln!(out, "not tested: {reason}"),
    }
}

/// The counts, and the wall time where the run measured it.
fn summary(environment: &Environment, verdicts: &[Verdict], out: &mut dyn Write) -> io::Result<()> {
    let counts = Counts::of(verdicts);
    let wall = environment
        .wall_ms
        .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    writeln!(out)?;
    writeln!(
        out,
        "{} passed, {} failed, {} errors, {} xfail, {} xpass, {} not run, {} skipped{wall}",
        counts.pass,
        counts.fail,
        counts.error,
        counts.xfail,
        counts.xpass,
        counts.not_run,
        counts.skip
    )
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    fn rendered(style: HumanStyle) -> String {
        let mut out = Vec::new();
        render(&sample::environment(), &sample::verdicts(), style, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_matrix_shows_every_case_and_only_what_needs_reading_below() {
        let text = rendered(HumanStyle::default());
        assert!(
            text.starts_with(
                "nestfault 0.0.0-example: kernel 6.12.0-nestfault-example, svm,vmx\n  svm on \
                 qemu-tcg, CPU AMD EPYC Processor\n"
            ),
            "{text}"
        );
        // One row per scenario, a cell per path.
        let row = |prefix: &str| {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no row {prefix:?} in:\n{text}"))
                .to_string()
        };
        let pt = row("pt_page    unmapped        read");
        assert!(pt.ends_with("FAIL      ok        not run"), "{pt:?}");
        // Passes are not repeated below; failures, errors and unexpected passes are, in full.
        assert!(
            !text.contains("PASS    svm/pt_page_unmapped/hardware"),
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
            text.contains("XPASS   vmx/final_page_unmapped/forced"),
            "{text}"
        );
        assert!(text.contains("xfail (1 case): the open finding"), "{text}");
        assert!(
            text.contains("not run (1 case): kvm's force_emulation_prefix is 0"),
            "{text}"
        );
        assert_eq!(text.matches("kvm_intel is not loaded").count(), 1, "{text}");
        assert!(
            text.contains("1 passed, 2 failed, 1 errors, 1 xfail, 1 xpass, 1 not run, 2 skipped"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "plain text has no escapes");
    }

    #[test]
    fn on_a_terminal_cells_are_glyphs_in_colour() {
        let text = rendered(HumanStyle {
            per_case: false,
            color: true,
        });
        assert!(text.contains("\u{1b}[32m✓\u{1b}[0m"), "{text}");
        assert!(text.contains("\u{1b}[1;31m✗ FAIL\u{1b}[0m"), "{text}");
    }

    /// The matrix exactly, on a terminal and plain: `NESTFAULT_BLESS=1` rewrites the files after
    /// a change that is meant.
    #[test]
    fn the_matrix_is_the_golden_one() {
        for (color, file, golden) in [
            (
                false,
                "matrix-plain.txt",
                include_str!("golden/matrix-plain.txt"),
            ),
            (
                true,
                "matrix-terminal.txt",
                include_str!("golden/matrix-terminal.txt"),
            ),
        ] {
            let text = rendered(HumanStyle {
                per_case: false,
                color,
            });
            super::super::check_golden(file, golden, &text);
        }
    }

    #[test]
    fn verbose_keeps_a_line_per_case() {
        let text = rendered(HumanStyle {
            per_case: true,
            color: false,
        });
        assert!(
            text.contains("PASS    svm/pt_page_unmapped/hardware"),
            "{text}"
        );
        assert!(
            text.contains("NOT RUN svm/pt_page_unmapped/forced\n"),
            "{text}"
        );
        assert!(
            text.contains("not run (1 case): kvm's force_emulation_prefix"),
            "{text}"
        );
    }
}
