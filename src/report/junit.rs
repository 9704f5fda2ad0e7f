//! JUnit XML, for CI systems' test reports (GitHub test-reporter actions, GitLab's
//! `artifacts:reports:junit`, Jenkins).
//!
//! One `<testsuite>` per vendor, named after it, with the kernel release as a property. One
//! `<testcase>` per case: `name` is the case id (`svm/pt_page_unmapped/emulated`, what
//! `--scenario` takes to rerun just that case, and unique across the whole report, which tools
//! that ignore `classname` need), `classname` is `nestfault.<vendor>.<scenario>` (the tree that
//! tools grouping by class show). A failure or error carries the first line of the diagnosis as
//! its `message` (for a failure, the first decoded "wanted ..., got ..." line, or "flaky: ...")
//! and the whole diagnosis, then the raw expected and actual values, as its text; a pass's notes
//! go to its `<system-out>`. JUnit has no expected failure: an `xfail` is a skipped test case
//! whose message says "expected failure" and names the finding, an `xpass` a success whose
//! `<system-out>` says the finding no longer shows, and a case not run here a skipped one with
//! the reason. Each suite's properties say what the run was obtained under: the kernel,
//! nestfault's version, the machine and CPU, KVM's parameters and the CPU facts.

use std::io::{self, Write};
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::vendor_names;
use crate::environment::Environment;
use crate::verdict::{Status, Verdict};

pub fn render(
    environment: &Environment,
    verdicts: &[Verdict],
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut report = Report::new("nestfault");
    let mut total = Duration::ZERO;
    for vendor in vendor_names(verdicts) {
        let mut suite = TestSuite::new(vendor);
        suite.add_property(Property::new("kernel", environment.kernel.as_str()));
        suite.add_property(Property::new("nestfault", environment.nestfault.as_str()));
        for l0 in environment.vendors.iter().filter(|l0| l0.vendor == vendor) {
            suite.add_property(Property::new("machine", l0.machine.as_str()));
            suite.add_property(Property::new("cpu_model", l0.cpu_model.as_str()));
            for (name, value) in &l0.kvm_parameters {
                suite.add_property(Property::new(name.as_str(), value.as_str()));
            }
            let facts = [
                ("maxphyaddr", l0.maxphyaddr.map(|bits| bits.to_string())),
                ("gbpages", l0.gbpages.map(|yes| yes.to_string())),
                ("ept_vpid_cap", l0.ept_vpid_cap.clone()),
            ];
            for (name, value) in facts {
                if let Some(value) = value {
                    suite.add_property(Property::new(name, value));
                }
            }
        }
        let mut suite_time = Duration::ZERO;
        for verdict in verdicts.iter().filter(|v| v.vendor == vendor) {
            let time = Duration::from_millis(verdict.duration_ms);
            suite_time += time;
            let mut case = TestCase::new(verdict.id.as_str(), status(verdict));
            case.set_classname(format!("nestfault.{}.{}", verdict.vendor, verdict.scenario))
                .set_time(time);
            // A pass has no element of its own to carry its notes ("paths agree: ...").
            if let (Status::Pass | Status::Xpass, Some(notes)) =
                (verdict.status, &verdict.diagnosis)
            {
                case.set_system_out(notes.as_str());
            }
            suite.add_test_case(case);
        }
        suite.set_time(suite_time);
        total += suite_time;
        report.add_test_suite(suite);
    }
    report.set_time(total);
    report.serialize(out).map_err(io::Error::other)
}

fn status(verdict: &Verdict) -> TestCaseStatus {
    let diagnosis = verdict.diagnosis.as_deref().unwrap_or_default();
    let summary = diagnosis.lines().next().unwrap_or_default();
    let mut status = match verdict.status {
        Status::Pass | Status::Xpass => return TestCaseStatus::success(),
        Status::Skip | Status::NotRun | Status::Xfail => TestCaseStatus::skipped(),
        Status::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
        Status::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
    };
    status.set_message(summary);
    let mut text = diagnosis.to_string();
    if matches!(verdict.status, Status::Fail | Status::Xfail) {
        text.push_str(&format!("\nexpected: {}", verdict.expected.text()));
        if let Some(actual) = &verdict.actual {
            text.push_str(&format!("\nactual:   {}", actual.text()));
        }
    }
    if text != summary {
        status.set_description(text);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    fn rendered(verdicts: &[Verdict]) -> String {
        let mut out = Vec::new();
        render(&sample::environment(), verdicts, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Reads the XML back (quick-junit's own reader, a real XML parser) and checks the tree.
    #[test]
    fn one_suite_per_vendor_and_one_case_per_verdict() {
        let xml = rendered(&sample::verdicts());
        let report = Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(
            report.name.as_ref().map(|name| name.as_str()),
            Some("nestfault")
        );
        assert_eq!((report.tests, report.failures, report.errors), (9, 2, 1));
        let names: Vec<&str> = report.test_suites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["svm", "vmx"]);
        let svm = &report.test_suites[0];
        let property = |suite: &TestSuite, name: &str| {
            suite
                .properties
                .iter()
                .find(|p| p.name.as_str() == name)
                .map(|p| p.value.as_str().to_string())
        };
        assert_eq!(property(svm, "kernel").as_deref(), Some(sample::KERNEL));
        assert_eq!(property(svm, "nestfault").as_deref(), Some("0.0.0-example"));
        assert_eq!(property(svm, "machine").as_deref(), Some("qemu-tcg"));
        assert_eq!(
            property(svm, "kvm.force_emulation_prefix").as_deref(),
            Some("0")
        );
        assert_eq!(property(svm, "maxphyaddr").as_deref(), Some("40"));
        // The vmx suite ran under no environment the report knows of: none is made up.
        assert_eq!(property(&report.test_suites[1], "machine"), None);
        assert_eq!(
            (svm.tests, svm.failures, svm.errors, svm.skipped),
            (5, 2, 1, 1)
        );
        let vmx = &report.test_suites[1];
        // Two skips and the expected failure; the unexpected pass is a success.
        assert_eq!((vmx.tests, vmx.skipped, vmx.failures), (4, 3, 0));
        let TestCaseStatus::Skipped { message, .. } = &vmx.test_cases[2].status else {
            panic!("an expected failure is a skipped case: {xml}")
        };
        assert!(message
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with("expected failure: the open finding \"stale guest-linear address\""));
        let xpass = &vmx.test_cases[3];
        assert!(matches!(xpass.status, TestCaseStatus::Success { .. }));
        assert!(xpass
            .system_out
            .as_ref()
            .is_some_and(|out| out.as_str().contains("no longer shows")));

        let [pass, fail, error, flaky, not_run] = &svm.test_cases[..] else {
            panic!("svm has five cases: {xml}")
        };
        let TestCaseStatus::Skipped { message, .. } = &not_run.status else {
            panic!("a case not run is skipped: {xml}")
        };
        assert!(message
            .as_ref()
            .unwrap()
            .as_str()
            .contains("force_emulation_prefix"));
        assert_eq!(pass.name.as_str(), "svm/pt_page_unmapped/hardware");
        assert_eq!(
            pass.classname.as_ref().unwrap().as_str(),
            "nestfault.svm.pt_page_unmapped"
        );
        assert_eq!(pass.time, Some(Duration::from_millis(38)));
        assert!(matches!(pass.status, TestCaseStatus::Success { .. }));
        let TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Failure,
            message,
            description,
            ..
        } = &fail.status
        else {
            panic!("not a failure: {xml}")
        };
        assert_eq!(
            message.as_ref().unwrap().as_str(),
            "exit_info_1: wanted 0x200000006 (W|U|GUEST_PAGE), got 0x100000006 (W|U|GUEST_FINAL)"
        );
        let description = description.as_ref().unwrap().as_str();
        assert!(description.contains("297c2fe249db"), "{description}");
        assert!(
            description.contains("actual:   exit_code=0x400 exit_info_1=0x100000006"),
            "{description}"
        );
        assert!(matches!(
            error.status,
            TestCaseStatus::NonSuccess {
                kind: NonSuccessKind::Error,
                ..
            }
        ));
        let TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Failure,
            message,
            ..
        } = &flaky.status
        else {
            panic!("the flaky case is not a failure: {xml}")
        };
        assert_eq!(
            message.as_ref().unwrap().as_str(),
            "flaky: 2 different outcomes in 3 runs"
        );
        assert_eq!(flaky.time, Some(Duration::from_millis(41)));
        let TestCaseStatus::Skipped { message, .. } = &report.test_suites[1].test_cases[0].status
        else {
            panic!("not skipped: {xml}")
        };
        assert!(message
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with("VMX: KVM_GET_SUPPORTED_CPUID"));
    }

    #[test]
    fn markup_and_control_characters_in_diagnoses_stay_well_formed() {
        let mut verdict = sample::verdicts().remove(1);
        verdict.diagnosis =
            Some("wanted <a> & \"b\", got ]]> \u{1b}[31mred\u{0} 'c'\nsecond".into());
        let xml = rendered(&[verdict]);
        let report = Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let TestCaseStatus::NonSuccess { message, .. } =
            &report.test_suites[0].test_cases[0].status
        else {
            panic!("not a failure: {xml}")
        };
        assert_eq!(
            message.as_ref().unwrap().as_str(),
            "wanted <a> & \"b\", got ]]> red 'c'"
        );
    }

    #[test]
    fn notes_on_a_pass_go_to_system_out() {
        let mut verdict = sample::verdicts().remove(0);
        verdict.diagnosis =
            Some("paths agree: the hardware path reported the same exit_info_1".into());
        let report = Report::deserialize_from_str(&rendered(&[verdict])).unwrap();
        let case = &report.test_suites[0].test_cases[0];
        assert!(matches!(case.status, TestCaseStatus::Success { .. }));
        assert_eq!(
            case.system_out.as_ref().map(|out| out.as_str()),
            Some("paths agree: the hardware path reported the same exit_info_1")
        );
    }

    #[test]
    fn no_verdicts_is_an_empty_report() {
        let report = Report::deserialize_from_str(&rendered(&[])).unwrap();
        assert_eq!((report.tests, report.test_suites.len()), (0, 0));
    }
}
