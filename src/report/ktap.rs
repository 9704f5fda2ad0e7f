//! KTAP version 1 (Documentation/dev-tools/ktap.rst), laid out the way kselftest.h prints it:
//! version line, plan, one result line per case with its diagnostic lines (`# ...`) before it,
//! and kselftest's `# Totals:` line at the end. Errors are `not ok` with an `error:` diagnostic;
//! skips are `ok N <id> # SKIP <reason>`.

use std::io::{self, Write};

use super::Counts;
use crate::environment::Environment;
use crate::verdict::{Status, Verdict};

pub fn render(
    environment: &Environment,
    verdicts: &[Verdict],
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(out, "KTAP version 1")?;
    writeln!(out, "1..{}", verdicts.len())?;
    writeln!(out, "# kernel: {}", one_line(&environment.kernel))?;
    writeln!(out, "# nestfault: {}", one_line(&environment.nestfault))?;
    for vendor in &environment.vendors {
        for line in vendor.lines() {
            writeln!(out, "# {}", one_line(&line))?;
        }
    }
    for (index, verdict) in verdicts.iter().enumerate() {
        let number = index + 1;
        let description = description(&verdict.id);
        let mut lines = verdict.diagnosis.as_deref().unwrap_or_default().lines();
        match (verdict.status, directive(verdict.status)) {
            (_, Some(directive)) => {
                let reason = lines.next().unwrap_or("no reason given");
                diagnostics(lines, "", out)?;
                writeln!(
                    out,
                    "ok {number} {description} # {directive} {}",
                    one_line(reason)
                )?;
            }
            (Status::Pass, None) => {
                diagnostics(lines, "", out)?;
                writeln!(out, "ok {number} {description}")?;
            }
            (Status::Fail, None) => {
                diagnostics(lines, "", out)?;
                writeln!(out, "not ok {number} {description}")?;
            }
            (_, None) => {
                diagnostics(lines, "error: ", out)?;
                writeln!(out, "not ok {number} {description}")?;
            }
        }
    }
    let counts = Counts::of(verdicts);
    writeln!(
        out,
        "# Totals: pass:{} fail:{} xfail:{} xpass:{} skip:{} error:{}",
        counts.pass,
        counts.fail,
        counts.xfail,
        counts.xpass,
        counts.skip + counts.not_run,
        counts.error
    )
}

/// The directive of an `ok` line whose first diagnosis line is its reason.
fn directive(status: Status) -> Option<&'static str> {
    match status {
        Status::Skip | Status::NotRun => Some("SKIP"),
        Status::Xfail => Some("XFAIL"),
        Status::Xpass => Some("XPASS"),
        Status::Pass | Status::Fail | Status::Error => None,
    }
}

/// `# ` diagnostic lines; the first one is prefixed with `first_prefix`.
fn diagnostics<'a>(
    lines: impl Iterator<Item = &'a str>,
    first_prefix: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    for (i, line) in lines.enumerate() {
        let prefix = if i == 0 { first_prefix } else { "" };
        writeln!(out, "# {prefix}{}", one_line(line))?;
    }
    Ok(())
}

/// Diagnoses can carry console text (a kernel's last lines when a boot ended early): control
/// characters, a stray '\r' above all, and the Unicode line separators that Python's
/// `splitlines` honours would end or garble the line for a console parser.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if breaks_line(c) { '\u{fffd}' } else { c })
        .collect()
}

fn breaks_line(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Case ids are `<vendor>/<scenario>/<path>` made of a-z, 0-9, '_' and '/'; anything that would
/// break the result line (whitespace ends the description, '#' starts a directive) is replaced.
fn description(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_whitespace() || breaks_line(c) || c == '#' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if safe.is_empty() {
        "unnamed".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use crate::verdict::strategy::any_status;
    use proptest::prelude::*;

    use super::super::sample;
    use super::*;

    /// One parsed result line.
    #[derive(Debug, PartialEq)]
    struct ResultLine {
        ok: bool,
        description: String,
        directive: Option<String>,
        reason: Option<String>,
    }

    /// Checks `text` against the KTAP v1 grammar this renderer promises: the version line, the
    /// plan line, then only diagnostic lines (`#...`) and result lines
    /// `(not )?ok <n> <description>( # (SKIP|XFAIL|XPASS) <reason>)?`, numbered 1..N with N
    /// from the plan; a directive only on an `ok` line.
    fn check_grammar(text: &str) -> Result<Vec<ResultLine>, String> {
        let mut lines = text.lines();
        if lines.next() != Some("KTAP version 1") {
            return Err("the first line is not `KTAP version 1`".into());
        }
        let plan = lines.next().ok_or("no plan line")?;
        let planned: usize = plan
            .strip_prefix("1..")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad plan line {plan:?}"))?;
        let mut results = Vec::new();
        for line in lines {
            if line.starts_with('#') {
                continue;
            }
            let (ok, rest) = match line.strip_prefix("not ok ") {
                Some(rest) => (false, rest),
                None => (
                    true,
                    line.strip_prefix("ok ")
                        .ok_or_else(|| format!("neither diagnostic nor result: {line:?}"))?,
                ),
            };
            let (number, rest) = rest
                .split_once(' ')
                .ok_or_else(|| format!("no description: {line:?}"))?;
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad test number: {line:?}"));
            }
            if number.parse::<usize>().ok() != Some(results.len() + 1) {
                return Err(format!("test number out of sequence: {line:?}"));
            }
            let (description, directive, reason) = match rest.split_once(" # ") {
                Some((description, directive)) => {
                    let (directive, reason) = directive
                        .split_once(' ')
                        .filter(|(name, _)| ["SKIP", "XFAIL", "XPASS"].contains(name))
                        .ok_or_else(|| format!("unknown directive: {line:?}"))?;
                    if !ok {
                        return Err(format!("a directive on a `not ok` line: {line:?}"));
                    }
                    (
                        description,
                        Some(directive.to_string()),
                        Some(reason.to_string()),
                    )
                }
                None => (rest, None, None),
            };
            if description.is_empty() || description.contains(['#', ' ']) {
                return Err(format!("bad description: {line:?}"));
            }
            results.push(ResultLine {
                ok,
                description: description.into(),
                directive,
                reason,
            });
        }
        if results.len() != planned {
            return Err(format!(
                "planned {planned} results, found {}",
                results.len()
            ));
        }
        Ok(results)
    }

    fn rendered(verdicts: &[Verdict]) -> String {
        let mut out = Vec::new();
        render(&sample::environment(), verdicts, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn passes_failures_errors_and_skips_follow_the_grammar() {
        let text = rendered(&sample::verdicts());
        let results = check_grammar(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let summary: Vec<(bool, &str, Option<&str>)> = results
            .iter()
            .map(|r| (r.ok, r.description.as_str(), r.directive.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (true, "svm/pt_page_unmapped/hardware", None),
                (false, "svm/pt_page_unmapped/emulated", None),
                (false, "svm/final_page_unmapped/emulated", None),
                (false, "svm/final_page_write_protected/emulated", None),
                (true, "vmx/pt_page_unmapped/emulated", Some("SKIP")),
                (true, "vmx/pt_page_unmapped/hardware", Some("SKIP")),
                (true, "svm/pt_page_unmapped/forced", Some("SKIP")),
                (true, "vmx/pt_page_unmapped/forced", Some("XFAIL")),
                (true, "vmx/final_page_unmapped/forced", Some("XPASS")),
            ]
        );
        // kselftest's reasons: the finding for an expected failure, the fix for a case not run.
        assert!(results[7]
            .reason
            .as_deref()
            .is_some_and(|reason| reason.starts_with("expected failure: the open finding")));
        assert!(results[6]
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains("echo 1 | sudo tee")));
        assert!(
            text.contains("\n# svm KVM: kvm.force_emulation_prefix=0"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\n# kernel: {}\n", sample::KERNEL)),
            "{text}"
        );
        // kselftest order: a case's diagnostics come right before its result line.
        assert!(
            text.contains(
                "# paths disagree: exit_info_1 0x100000006 (W|U|GUEST_FINAL) from the emulator, \
                 0x200000006 (W|U|GUEST_PAGE) from the hardware path\nnot ok 2 svm/pt_page_unmapped/emulated\n"
            ),
            "{text}"
        );
        assert!(text.contains("# error: timeout after 10 s"), "{text}");
        assert!(
            text.ends_with("# Totals: pass:1 fail:2 xfail:1 xpass:1 skip:3 error:1\n"),
            "{text}"
        );
    }

    #[test]
    fn the_checker_rejects_what_is_not_ktap() {
        for bad in [
            "TAP version 13\n1..0\n",
            "KTAP version 1\n1..2\nok 1 a\n",
            "KTAP version 1\n1..1\nok 2 a\n",
            "KTAP version 1\n1..1\nok 1 a # TODO later\n",
            "KTAP version 1\n1..1\nnot ok 1 a # XFAIL known\n",
            "KTAP version 1\n1..1\nok 1 a b\n",
            "KTAP version 1\n1..1\nkernel log line\nok 1 a\n",
        ] {
            assert!(check_grammar(bad).is_err(), "{bad}");
        }
        assert!(check_grammar("KTAP version 1\n1..0\n").is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the diagnoses and the kernel string hold (newlines, '\r', '#', escapes), the
        /// output stays KTAP with one result per verdict.
        #[test]
        fn any_verdicts_render_as_valid_ktap(
            kernel in any::<String>(),
            cases in proptest::collection::vec((any_status(), proptest::option::of(any::<String>())), 0..8),
        ) {
            let mut verdicts = sample::verdicts();
            verdicts.truncate(1);
            let template = verdicts.remove(0);
            let verdicts: Vec<Verdict> = cases
                .into_iter()
                .map(|(status, diagnosis)| Verdict { status, diagnosis, ..template.clone() })
                .collect();
            let mut out = Vec::new();
            let environment = crate::environment::Environment::new(&kernel);
            render(&environment, &verdicts, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            let results = check_grammar(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            for (result, verdict) in results.iter().zip(&verdicts) {
                prop_assert_eq!(result.ok, !matches!(verdict.status, Status::Fail | Status::Error));
                prop_assert_eq!(
                    result.directive.as_deref(),
                    directive(verdict.status)
                );
            }
        }
    }
}
