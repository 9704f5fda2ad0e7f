//! Renders verdicts: human, JSON, JUnit XML or KTAP.

mod human;
mod junit;
mod ktap;

use std::collections::BTreeSet;
use std::io::{self, Write};

use serde::Serialize;

use crate::environment::{Environment, VendorEnvironment};
use crate::verdict::{Axes, ExitValues, Status, Verdict};

pub use human::label as status_label;

/// How the human report looks: a line per case (`--verbose`) or the matrix, in colour or plain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HumanStyle {
    /// A line per case with its diagnosis, as before the matrix view.
    pub per_case: bool,
    /// ANSI colours and glyphs: only on a terminal that has not asked for plain text.
    pub color: bool,
}

impl HumanStyle {
    /// Colour where stdout is a terminal and neither `NO_COLOR` nor `TERM=dumb` says otherwise.
    pub fn for_stdout(per_case: bool) -> Self {
        use std::io::IsTerminal;
        let asked_plain = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
            || std::env::var("TERM").is_ok_and(|term| term == "dumb");
        HumanStyle {
            per_case,
            color: std::io::stdout().is_terminal() && !asked_plain,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    /// JUnit XML: one <testsuite> per vendor, one <testcase> per case.
    Junit,
    /// KTAP version 1, as the kernel's kselftests print it.
    Ktap,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    kernel: &'a str,
    /// nestfault's version.
    nestfault: &'a str,
    /// The vendors with a result, in name order.
    vendor: BTreeSet<&'a str>,
    /// Per vendor, what its verdicts were obtained under: machine, CPU, KVM's parameters, the
    /// CPU facts that change expected values.
    environment: &'a [VendorEnvironment],
    results: Vec<JsonResult<'a>>,
}

/// A verdict as the JSON report shows it: every result has the same keys and types, so `actual`
/// of a case that did not run is `{}` like its `expected`, not `null`.
#[derive(Serialize)]
struct JsonResult<'a> {
    id: &'a str,
    vendor: &'a str,
    scenario: &'a str,
    path: &'a str,
    #[serde(flatten)]
    axes: &'a Axes,
    status: Status,
    expected: &'a ExitValues,
    actual: &'a ExitValues,
    diagnosis: &'a Option<String>,
    duration_ms: u64,
}

impl<'a> JsonResult<'a> {
    fn of(verdict: &'a Verdict) -> Self {
        static NOTHING_SEEN: ExitValues = ExitValues(Vec::new());
        JsonResult {
            id: &verdict.id,
            vendor: &verdict.vendor,
            scenario: &verdict.scenario,
            path: &verdict.path,
            axes: &verdict.axes,
            status: verdict.status,
            expected: &verdict.expected,
            actual: verdict.actual.as_ref().unwrap_or(&NOTHING_SEEN),
            diagnosis: &verdict.diagnosis,
            duration_ms: verdict.duration_ms,
        }
    }
}

/// The vendors with a result, in name order.
fn vendor_names(verdicts: &[Verdict]) -> BTreeSet<&str> {
    verdicts.iter().map(|v| v.vendor.as_str()).collect()
}

/// The same, for a text line: "svm", "vmx" or "svm,vmx".
fn vendors(verdicts: &[Verdict]) -> String {
    vendor_names(verdicts)
        .into_iter()
        .collect::<Vec<_>>()
        .join(",")
}

/// How many verdicts have each status, for the summary lines of the text formats.
struct Counts {
    pass: usize,
    fail: usize,
    error: usize,
    skip: usize,
    not_run: usize,
    xfail: usize,
    xpass: usize,
}

impl Counts {
    fn of(verdicts: &[Verdict]) -> Self {
        let count = |status| verdicts.iter().filter(|v| v.status == status).count();
        Counts {
            pass: count(Status::Pass),
            fail: count(Status::Fail),
            error: count(Status::Error),
            skip: count(Status::Skip),
            not_run: count(Status::NotRun),
            xfail: count(Status::Xfail),
            xpass: count(Status::Xpass),
        }
    }
}

/// `format`'s report of `verdicts`; `style` only shapes the human one.
pub fn render(
    format: Format,
    environment: &Environment,
    verdicts: &[Verdict],
    style: HumanStyle,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Json => {
            let report = JsonReport {
                kernel: &environment.kernel,
                nestfault: &environment.nestfault,
                vendor: vendor_names(verdicts),
                environment: &environment.vendors,
                results: verdicts.iter().map(JsonResult::of).collect(),
            };
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)
        }
        Format::Human => human::render(environment, verdicts, style, out),
        Format::Junit => junit::render(environment, verdicts, out),
        Format::Ktap => ktap::render(environment, verdicts, out),
    }
}

/// Golden outputs kept in `src/report/golden/`: a test compares what it rendered with the file,
/// or with `NESTFAULT_BLESS=1` writes the file anew after a change that is meant.
#[cfg(test)]
pub(crate) fn check_golden(file: &str, golden: &str, rendered: &str) {
    if std::env::var_os("NESTFAULT_BLESS").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/golden");
        std::fs::write(dir.join(file), rendered).unwrap();
        return;
    }
    assert_eq!(rendered, golden, "{file} (NESTFAULT_BLESS=1 rewrites it)");
}

/// Hand-built verdicts with every status, shaped like the real ones (the diagnoses are what
/// `verdict::judge` and the runner write), for the renderers' tests and docs/output-formats.md.
#[cfg(test)]
pub(crate) mod sample {
    use crate::environment::{Environment, VendorEnvironment};
    use crate::verdict::{ExitValues, Status, Verdict};

    pub const KERNEL: &str = "6.12.0-nestfault-example";

    /// What the sample was obtained under: SVM under QEMU TCG with the forced-emulation prefix
    /// off (VMX could not nest), with a fixed version so that the documented examples stay put.
    pub fn environment() -> Environment {
        Environment {
            nestfault: "0.0.0-example".into(),
            kernel: KERNEL.into(),
            vendors: vec![VendorEnvironment {
                vendor: "svm".into(),
                machine: "qemu-tcg".into(),
                cpu_model: "AMD EPYC Processor".into(),
                kvm_parameters: [
                    ("kvm.force_emulation_prefix", "0"),
                    ("kvm.tdp_mmu", "Y"),
                    ("kvm_amd.nested", "1"),
                    ("kvm_amd.npt", "1"),
                ]
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
                maxphyaddr: Some(40),
                gbpages: Some(true),
                ept_vpid_cap: None,
            }],
            wall_ms: None,
        }
    }

    fn verdict(id: &str, status: Status, diagnosis: Option<&str>, duration_ms: u64) -> Verdict {
        let case = crate::scenario::built_in_case(id);
        let mut verdict = Verdict::without_run(&case, status, String::new());
        verdict.diagnosis = diagnosis.map(str::to_string);
        verdict.duration_ms = duration_ms;
        verdict
    }

    fn svm_exit(exit_info_1: u64) -> ExitValues {
        ExitValues(vec![
            ("exit_code".into(), 0x400),
            ("exit_info_1".into(), exit_info_1),
            ("exit_info_2".into(), 0x20_5000),
        ])
    }

    /// A pass, a failure (with the decoded wanted/got lines), a harness error, a flaky case
    /// (merged from three runs by `repeat::merge`), two skips, a case not run, an expected
    /// failure and an unexpected pass.
    pub fn verdicts() -> Vec<Verdict> {
        let mut pass = verdict("svm/pt_page_unmapped/hardware", Status::Pass, None, 38);
        pass.expected = svm_exit(0x2_0000_0006);
        pass.actual = Some(svm_exit(0x2_0000_0006));
        let mut fail = verdict(
            "svm/pt_page_unmapped/emulated",
            Status::Fail,
            Some(
                "exit_info_1: wanted 0x200000006 (W|U|GUEST_PAGE), got 0x100000006 (W|U|GUEST_FINAL)\n\
                 exit_info_1: GUEST_FINAL set, GUEST_PAGE expected\n\
                 the signature of a kernel without 297c2fe249db (\"KVM: SVM: Fix nested NPF injection of \
                 PFERR_GUEST_{PAGE,FINAL}_MASK bits\", Linux 7.2): before it, NPFs injected from the \
                 emulator always carried GUEST_FINAL\n\
                 paths disagree: exit_info_1 0x100000006 (W|U|GUEST_FINAL) from the emulator, \
                 0x200000006 (W|U|GUEST_PAGE) from the hardware path",
            ),
            41,
        );
        fail.expected = svm_exit(0x2_0000_0006);
        fail.actual = Some(svm_exit(0x1_0000_0006));
        let error = verdict(
            "svm/final_page_unmapped/emulated",
            Status::Error,
            Some("timeout after 10 s; vCPU rip=0x1000 cr0=0x80000011"),
            10_004,
        );
        let skip =
            "VMX: KVM_GET_SUPPORTED_CPUID lacks VMX (CPUID 0x1 ECX bit 5); kvm_intel is not \
                    loaded (not an Intel host?)";
        let flaky_id = "svm/final_page_write_protected/emulated";
        let mut steady = verdict(flaky_id, Status::Pass, None, 40);
        steady.expected = svm_exit(0x1_0000_0007);
        steady.actual = Some(svm_exit(0x1_0000_0007));
        let mut odd = verdict(
            flaky_id,
            Status::Fail,
            Some(
                "exit_info_1: wanted 0x100000007 (P|W|U|GUEST_FINAL), got 0x200000007 (P|W|U|GUEST_PAGE)\n\
                 exit_info_1: GUEST_PAGE set, GUEST_FINAL expected",
            ),
            44,
        );
        odd.expected = steady.expected.clone();
        odd.actual = Some(svm_exit(0x2_0000_0007));
        let flaky = crate::repeat::merge(&[steady.clone(), odd, steady]).expect("three runs");
        let not_run = verdict(
            "svm/pt_page_unmapped/forced",
            Status::NotRun,
            Some(
                "kvm's force_emulation_prefix is 0: turn it on at runtime with `echo 1 | sudo tee \
                 /sys/module/kvm/parameters/force_emulation_prefix` (or load kvm with \
                 force_emulation_prefix=1; with --kernel, leave out --kernel-param \
                 kvm.force_emulation_prefix=0)",
            ),
            0,
        );
        let finding = "expected failure: the open finding \"stale guest-linear address\" \
                       (docs/findings/vmx-stale-guest-linear-address.md)";
        let mut xfail = verdict(
            "vmx/pt_page_unmapped/forced",
            Status::Xfail,
            Some(&format!(
                "{finding}\nguest_linear_address: wanted 0x400000, got 0x201000\n\
                 guest_linear_address 0x201000 is not what the architecture reports: the signature of the stale \
                 guest-linear address"
            )),
            52,
        );
        xfail.expected = ExitValues(vec![("guest_linear_address".into(), 0x40_0000)]);
        xfail.actual = Some(ExitValues(vec![("guest_linear_address".into(), 0x20_1000)]));
        let xpass = verdict(
            "vmx/final_page_unmapped/forced",
            Status::Xpass,
            Some(
                "expected to fail on the open finding \"stale guest-linear address\", but \
                 passed: the finding no longer shows on this kernel",
            ),
            49,
        );
        vec![
            pass,
            fail,
            error,
            flaky,
            verdict("vmx/pt_page_unmapped/emulated", Status::Skip, Some(skip), 0),
            verdict("vmx/pt_page_unmapped/hardware", Status::Skip, Some(skip), 0),
            not_run,
            xfail,
            xpass,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/output-formats.md shows what each format prints for the sample; this keeps the page
    /// true. With NESTFAULT_EXAMPLES_DIR=<dir> the renderings are also written there as
    /// example.{txt,xml,ktap}, to paste into the page or to feed a consumer.
    #[test]
    fn the_documented_examples_are_what_the_renderers_print() {
        let page = include_str!("../../docs/output-formats.md");
        let mut missing = Vec::new();
        for (format, extension) in [
            (Format::Human, "txt"),
            (Format::Junit, "xml"),
            (Format::Ktap, "ktap"),
        ] {
            let mut out = Vec::new();
            render(
                format,
                &sample::environment(),
                &sample::verdicts(),
                HumanStyle::default(),
                &mut out,
            )
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            if let Some(dir) = std::env::var_os("NESTFAULT_EXAMPLES_DIR") {
                std::fs::write(
                    std::path::Path::new(&dir).join(format!("example.{extension}")),
                    &text,
                )
                .unwrap();
            }
            if !page.contains(&text) {
                missing.push(format!("{format:?}:\n{text}"));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/output-formats.md lacks these examples:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn json_has_the_contracted_shape() {
        let mut out = Vec::new();
        let environment = sample::environment();
        let style = HumanStyle::default();
        render(
            Format::Json,
            &environment,
            &sample::verdicts(),
            style,
            &mut out,
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["kernel"], sample::KERNEL);
        assert_eq!(json["nestfault"], "0.0.0-example");
        assert_eq!(
            json["environment"][0]["kvm_parameters"]["kvm.force_emulation_prefix"],
            "0"
        );
        assert_eq!(json["environment"][0]["maxphyaddr"], 40);
        for (index, status) in [(6, "not_run"), (7, "xfail"), (8, "xpass")] {
            assert_eq!(json["results"][index]["status"], status);
        }
        assert_eq!(json["vendor"], serde_json::json!(["svm", "vmx"]));
        let failed = &json["results"][1];
        for key in [
            "id",
            "vendor",
            "scenario",
            "path",
            "status",
            "expected",
            "actual",
            "diagnosis",
            "duration_ms",
        ] {
            assert!(failed.get(key).is_some(), "missing {key}");
        }
        assert_eq!(failed["expected"]["exit_code"], "0x400");
        assert_eq!(failed["status"], "fail");
        assert_eq!(failed["actual"]["exit_info_1"], "0x100000006");
        let skipped = &json["results"][4];
        assert_eq!(skipped["status"], "skip");
        assert!(skipped["expected"].is_object(), "{skipped}");
        assert!(skipped["actual"].is_object(), "{skipped}");
    }
}
