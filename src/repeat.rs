//! `--repeat N`: every case runs N times and its runs fold into one verdict. Runs that agree (same
//! status, same exit values seen by L1) give the first run's verdict with the mean duration. Runs
//! that disagree make the case flaky, reported as a failure: a kernel that reports the same nested
//! page fault differently from one run to the next is wrong in at least one of them.

use std::fmt::Write as _;

use crate::runner::{self, RunOptions};
use crate::scenario::Case;
use crate::verdict::{ExitValues, Status, Verdict};

/// Runs all of `cases`, then all of them again, `times` times in all (each pass is one
/// [`runner::run`], so hardware paths keep running before emulated ones), and returns one merged
/// verdict per case in `cases` order. `on_verdict` sees every run's verdict as it lands.
pub fn run(
    cases: &[Case],
    options: &RunOptions,
    times: u32,
    on_verdict: &mut dyn FnMut(&Verdict),
) -> Vec<Verdict> {
    let mut runs: Vec<Vec<Verdict>> = vec![Vec::new(); cases.len()];
    for _ in 0..times {
        for (case_runs, verdict) in runs.iter_mut().zip(runner::run(cases, options, on_verdict)) {
            case_runs.push(verdict);
        }
    }
    runs.iter()
        .filter_map(|case_runs| merge(case_runs))
        .collect()
}

/// Folds one case's runs, in run order, into its verdict; `None` when there are no runs.
pub fn merge(runs: &[Verdict]) -> Option<Verdict> {
    let first = runs.first()?;
    let mut merged = first.clone();
    let total: u128 = runs.iter().map(|run| u128::from(run.duration_ms)).sum();
    // The mean of u64 values fits in a u64.
    merged.duration_ms = u64::try_from(total / runs.len() as u128).unwrap_or(u64::MAX);
    let outcomes = outcomes(runs);
    if outcomes.len() > 1 {
        merged.status = Status::Fail;
        merged.diagnosis = Some(flaky_diagnosis(&outcomes, runs.len()));
    }
    Some(merged)
}

/// Runs that ended the same way: the first of them stands for all, with their 1-based numbers.
struct Outcome<'a> {
    representative: &'a Verdict,
    run_numbers: Vec<usize>,
}

fn outcomes(runs: &[Verdict]) -> Vec<Outcome<'_>> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let same = |outcome: &&mut Outcome| {
            outcome.representative.status == run.status
                && outcome.representative.actual == run.actual
        };
        match outcomes.iter_mut().find(same) {
            Some(outcome) => outcome.run_numbers.push(index + 1),
            None => outcomes.push(Outcome {
                representative: run,
                run_numbers: vec![index + 1],
            }),
        }
    }
    outcomes
}

/// `flaky: ...`, then per outcome which runs ended that way, what L1 saw and, indented, the
/// diagnosis of the first of them (its decoded wanted/got lines for a failure).
fn flaky_diagnosis(outcomes: &[Outcome], run_count: usize) -> String {
    let mut text = format!(
        "flaky: {} different outcomes in {run_count} runs",
        outcomes.len()
    );
    for outcome in outcomes {
        let runs = if outcome.run_numbers.len() == 1 {
            "run"
        } else {
            "runs"
        };
        let seen = outcome
            .representative
            .actual
            .as_ref()
            .map(ExitValues::text)
            .filter(|text| !text.is_empty());
        let _ = write!(
            text,
            "\n{runs} {}: {}{}",
            number_ranges(&outcome.run_numbers),
            outcome.representative.status.name(),
            seen.map(|seen| format!(", {seen}")).unwrap_or_default()
        );
        for line in outcome
            .representative
            .diagnosis
            .iter()
            .flat_map(|diagnosis| diagnosis.lines())
        {
            let _ = write!(text, "\n  {line}");
        }
    }
    text
}

/// Ascending numbers as `1-3,5,7-8`.
fn number_ranges(numbers: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &number in numbers {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == number => *end = number,
            _ => ranges.push((number, number)),
        }
    }
    let parts: Vec<String> = ranges
        .into_iter()
        .map(|(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::ExitValues;

    fn exit(exit_info_1: u64) -> ExitValues {
        ExitValues(vec![
            ("exit_code".into(), 0x400),
            ("exit_info_1".into(), exit_info_1),
        ])
    }

    fn run(
        status: Status,
        exit_info_1: Option<u64>,
        diagnosis: Option<&str>,
        duration_ms: u64,
    ) -> Verdict {
        Verdict {
            id: "svm/pt_page_unmapped/emulated".into(),
            vendor: "svm".into(),
            scenario: "pt_page_unmapped".into(),
            path: "emulated".into(),
            axes: Default::default(),
            status,
            expected: exit(0x2_0000_0006),
            actual: exit_info_1.map(exit),
            diagnosis: diagnosis.map(str::to_string),
            duration_ms,
        }
    }

    const WRONG_STAGE: &str =
        "exit_info_1: wanted 0x200000006 (W|U|GUEST_PAGE), got 0x100000006 (W|U|GUEST_FINAL)";

    #[test]
    fn agreeing_runs_give_the_first_verdict_with_the_mean_duration() {
        let runs = [
            run(Status::Fail, Some(0x1_0000_0006), Some(WRONG_STAGE), 10),
            run(
                Status::Fail,
                Some(0x1_0000_0006),
                Some("another wording"),
                20,
            ),
            run(Status::Fail, Some(0x1_0000_0006), None, 33),
        ];
        let merged = merge(&runs).unwrap();
        assert_eq!(
            merged,
            Verdict {
                duration_ms: 21,
                ..runs[0].clone()
            }
        );
        assert_eq!(merge(&runs[..1]), Some(runs[0].clone()));
    }

    #[test]
    fn disagreeing_runs_are_one_flaky_failure_showing_each_outcome() {
        let pass = run(Status::Pass, Some(0x2_0000_0006), None, 5);
        let fail = run(Status::Fail, Some(0x1_0000_0006), Some(WRONG_STAGE), 7);
        let merged = merge(&[pass.clone(), pass.clone(), fail, pass.clone(), pass]).unwrap();
        assert_eq!(merged.status, Status::Fail);
        assert_eq!(merged.actual, Some(exit(0x2_0000_0006)));
        assert_eq!(merged.duration_ms, 5);
        assert_eq!(
            merged.diagnosis.unwrap(),
            format!(
                "flaky: 2 different outcomes in 5 runs\n\
                 runs 1-2,4-5: pass, exit_code=0x400 exit_info_1=0x200000006\n\
                 run 3: fail, exit_code=0x400 exit_info_1=0x100000006\n  {WRONG_STAGE}"
            )
        );
    }

    #[test]
    fn a_status_change_without_values_is_flaky_too() {
        let skip = run(Status::Skip, None, Some("no VMX"), 0);
        let error = run(
            Status::Error,
            None,
            Some("timeout after 10 s\nrip=0x1"),
            10_000,
        );
        let merged = merge(&[skip, error]).unwrap();
        assert_eq!(merged.status, Status::Fail);
        assert_eq!(
            merged.diagnosis.unwrap(),
            "flaky: 2 different outcomes in 2 runs\nrun 1: skip\n  no VMX\nrun 2: error\n  timeout after 10 s\n  rip=0x1"
        );
    }

    #[test]
    fn no_runs_no_verdict_and_huge_durations_do_not_overflow() {
        assert_eq!(merge(&[]), None);
        let long = run(Status::Pass, Some(0x2_0000_0006), None, u64::MAX);
        assert_eq!(merge(&[long.clone(), long]).unwrap().duration_ms, u64::MAX);
    }

    #[test]
    fn run_numbers_collapse_into_ranges() {
        assert_eq!(number_ranges(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
        assert_eq!(number_ranges(&[4]), "4");
        assert_eq!(number_ranges(&[]), "");
    }
}
