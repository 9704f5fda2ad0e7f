//! The exit status, by one rule, for `git bisect run` (README, "Exit codes"): it reads 0 as good,
//! 1-124 and 126-127 as bad, 125 as "cannot test this commit, skip it", and stops on anything
//! above 127. So 125 is kept for a kernel that cannot be judged, and every problem the user or
//! the machine must fix first is 255: a broken set-up would otherwise skip every commit.

use std::process::ExitCode;

use crate::verdict::{Status, Verdict};

/// How a run ended, as far as the exit status cares.
#[derive(Debug)]
pub enum Ending<'a> {
    /// Printed what was asked for (`--list`, `--help`, `--version`).
    Informed,
    /// A verdict for each selected case; each case that ran fewer than the `--repeat` runs asked
    /// for is already an error (kernel_mode::collate). With `strict`, expected failures on open
    /// findings fail the run too.
    Judged {
        verdicts: &'a [Verdict],
        strict: bool,
    },
    /// No verdict is possible until the user or the machine fixes something: a bad flag or
    /// combination, a missing emulator, an unusable path, an empty selection, a host that
    /// cannot nest for `--emulator qemu-kvm`.
    MustFix,
    /// SIGINT, SIGTERM or SIGHUP: the run is incomplete and must be repeated.
    Interrupted,
    /// `nestfault host` found no vendor this machine's KVM nests, or a survey a kernel it could
    /// not judge.
    NotJudged,
    /// A survey found a failure that no known fix or finding explains.
    Unexplained,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    /// Every selected case that could run here ran the number of runs asked for and passed (or
    /// failed only as an open finding says, without `--strict`); cases that need what this host
    /// lacks were not run, and the report says so.
    Passed,
    /// A wrong verdict, or an error inside a case.
    Failed,
    /// Nothing failed, but this kernel cannot be judged: no nested support in it, KVM refused
    /// nesting, it did not boot, or nothing of the selection could run here.
    Untestable,
    /// See [`Ending::MustFix`] and [`Ending::Interrupted`].
    MustFix,
}

impl ExitClass {
    pub fn of(ending: &Ending) -> Self {
        let (verdicts, strict) = match ending {
            Ending::Informed => return ExitClass::Passed,
            Ending::MustFix | Ending::Interrupted => return ExitClass::MustFix,
            Ending::NotJudged => return ExitClass::Untestable,
            Ending::Unexplained => return ExitClass::Failed,
            Ending::Judged { verdicts, strict } => (verdicts, *strict),
        };
        let any = |status| verdicts.iter().any(|v| v.status == status);
        if verdicts.is_empty() {
            // Selection refuses this with a message first; nothing tested never passes.
            ExitClass::MustFix
        } else if any(Status::Fail) || any(Status::Error) || (strict && any(Status::Xfail)) {
            ExitClass::Failed
        } else if any(Status::Skip) || !verdicts.iter().any(|v| v.status.judged()) {
            // A vendor that cannot be judged at all, or a selection none of which could run:
            // a pass would claim what was never checked.
            ExitClass::Untestable
        } else {
            // Cases not run for a capability this host lacks are listed in the report; they do
            // not make an otherwise judged kernel unjudgeable.
            ExitClass::Passed
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ExitClass::Passed => 0,
            ExitClass::Failed => 1,
            ExitClass::Untestable => 125,
            ExitClass::MustFix => 255,
        }
    }
}

impl From<ExitClass> for ExitCode {
    fn from(class: ExitClass) -> Self {
        ExitCode::from(class.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn exit_codes_follow_the_bisect_convention() {
        let verdicts = sample::verdicts();
        let pick = |indices: &[usize]| -> Vec<Verdict> {
            indices.iter().map(|&i| verdicts[i].clone()).collect()
        };
        let code = |verdicts: &[Verdict]| {
            ExitClass::of(&Ending::Judged {
                verdicts,
                strict: false,
            })
            .code()
        };
        let strict_code = |verdicts: &[Verdict]| {
            ExitClass::of(&Ending::Judged {
                verdicts,
                strict: true,
            })
            .code()
        };
        let (pass, fail, error, skip, not_run, xfail, xpass) = (0, 1, 2, 4, 6, 7, 8);
        assert_eq!(verdicts[not_run].status, Status::NotRun);
        assert_eq!(verdicts[xfail].status, Status::Xfail);
        assert_eq!(verdicts[xpass].status, Status::Xpass);
        assert_eq!(code(&pick(&[pass])), 0);
        assert_eq!(code(&pick(&[pass, skip])), 125);
        assert_eq!(code(&pick(&[pass, skip, fail])), 1);
        assert_eq!(code(&pick(&[skip, error])), 1);
        assert_eq!(code(&[]), 255);
        // Not run: listed, never 125 while something else was judged.
        assert_eq!(code(&pick(&[pass, not_run])), 0);
        assert_eq!(code(&pick(&[xfail, not_run])), 0);
        assert_eq!(code(&pick(&[not_run, fail])), 1);
        // Nothing of the selection could run: this kernel was not judged.
        assert_eq!(code(&pick(&[not_run, not_run])), 125);
        assert_eq!(code(&pick(&[not_run, skip])), 125);
        // Expected failures pass, unless --strict; an unexpected pass is a pass.
        assert_eq!(code(&pick(&[pass, xfail])), 0);
        assert_eq!(strict_code(&pick(&[pass, xfail])), 1);
        assert_eq!(code(&pick(&[xpass])), 0);
        assert_eq!(strict_code(&pick(&[xpass, not_run])), 0);
        assert_eq!(strict_code(&pick(&[pass])), 0);
        assert_eq!(ExitClass::of(&Ending::Informed).code(), 0);
        assert_eq!(ExitClass::of(&Ending::MustFix).code(), 255);
        assert_eq!(ExitClass::of(&Ending::Interrupted).code(), 255);
        assert_eq!(ExitClass::of(&Ending::NotJudged).code(), 125);
    }
}
