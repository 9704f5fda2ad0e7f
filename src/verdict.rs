//! The verdict on one case, and how it is reached from the oracle's expectation and what L1 saw.
//! A [`Verdict`] is also what crosses from an inner run (inside an emulated kernel) to the outer
//! process, one JSON line each, so it serializes losslessly.

use std::fmt::Write as _;

use nestfault_protocol::{split_vmx_detail, Status as StubStatus};
use serde::{Deserialize, Serialize};

use crate::arch::{show, Expectation, Field, Vendor};
use crate::observation::{L2Io, Observation};
use crate::scenario::Case;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// The vendor cannot be judged on this kernel at all (no nesting, KVM refused it, the kernel
    /// did not boot): the diagnosis says why.
    Skip,
    Error,
    /// This case needs an optional capability or setting that this host or kernel lacks (the
    /// forced-emulation prefix off, MAXPHYADDR 52, no 1 GiB pages, an EPT capability missing);
    /// the diagnosis says which and how to enable it. The vendor's other cases still judge it.
    NotRun,
    /// Failed exactly as a documented open KVM finding says, and in nothing else: expected, so it
    /// fails the run only under `--strict`. The diagnosis names the finding.
    Xfail,
    /// Expected to fail on an open finding, but passed: the finding no longer shows on this
    /// kernel. Counts as a pass, so that a bisect across its eventual fix still works.
    Xpass,
}

impl Status {
    /// The status as JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Error => "error",
            Status::NotRun => "not_run",
            Status::Xfail => "xfail",
            Status::Xpass => "xpass",
        }
    }

    /// Whether the case ran and L1's exit was judged (including expected failures).
    pub fn judged(self) -> bool {
        matches!(
            self,
            Status::Pass | Status::Fail | Status::Xfail | Status::Xpass
        )
    }
}

/// Exit fields by name, in comparison order; serialized as `{"name": "0x..."}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitValues(pub Vec<(String, u64)>);

impl ExitValues {
    /// The vendor's fields by name, in report order, valued by `value_of`.
    fn of(vendor: &dyn Vendor, value_of: impl Fn(Field) -> Option<u64>) -> Self {
        Self(
            named_fields(vendor)
                .filter_map(|(field, name)| value_of(field).map(|value| (name.to_string(), value)))
                .collect(),
        )
    }

    /// `name=0x...`, space-separated, in report order.
    pub fn text(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(name, value)| format!("{name}={value:#x}"))
            .collect();
        fields.join(" ")
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

impl Serialize for ExitValues {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, &format!("{value:#x}"))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ExitValues {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ExitValues;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of exit field names to \"0x...\" strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ExitValues, A::Error> {
                let mut fields = Vec::new();
                while let Some((name, text)) = map.next_entry::<String, String>()? {
                    let value = text
                        .strip_prefix("0x")
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                        .ok_or_else(|| {
                            serde::de::Error::custom(format!(
                                "{name}: {text:?} is not a 0x... number"
                            ))
                        })?;
                    fields.push((name, value));
                }
                Ok(ExitValues(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A scenario's point in the fault space, by the names scenarios/matrix.toml uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axes {
    pub target: String,
    pub fault: String,
    pub access: String,
    pub nested_leaf: String,
    pub l2_leaf: String,
    pub placement: String,
    pub span: String,
    pub ept_ad: String,
    pub l2_ad: String,
    pub l2_paging: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: String,
    pub vendor: String,
    pub scenario: String,
    pub path: String,
    /// The scenario's axes, so that scripts can filter without parsing names.
    #[serde(flatten)]
    pub axes: Axes,
    pub status: Status,
    pub expected: ExitValues,
    pub actual: Option<ExitValues>,
    pub diagnosis: Option<String>,
    pub duration_ms: u64,
}

/// The part of a [`Verdict`] that only its run knows; the rest (names, axes) is its case's. In
/// --kernel mode this is all that crosses the serial console, because the host has the cases
/// (it chose them) and every byte costs time: ~80 µs of wall time a byte under Bochs, measured,
/// which made a whole verdict's 700 bytes a third of a case's wall time there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub id: String,
    pub status: Status,
    pub expected: ExitValues,
    pub actual: Observed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
    pub duration_ms: u64,
}

/// What a run observed, as the console carries it. Most runs see exactly what was expected, and
/// saying so instead of repeating the values takes a VMX verdict line from ~580 to ~330 bytes
/// (at ~80 µs a byte under Bochs, ~20 ms of each case's wall time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// The run ended without an exit to compare.
    Nothing,
    /// Exactly the expected values.
    AsExpected,
    Values(ExitValues),
}

impl Verdict {
    /// What the run found, without what the case says.
    pub fn run_result(&self) -> RunResult {
        RunResult {
            id: self.id.clone(),
            status: self.status,
            expected: self.expected.clone(),
            actual: match &self.actual {
                None => Observed::Nothing,
                Some(actual) if *actual == self.expected => Observed::AsExpected,
                Some(actual) => Observed::Values(actual.clone()),
            },
            diagnosis: self.diagnosis.clone(),
            duration_ms: self.duration_ms,
        }
    }

    /// The verdict on `case` that its run's `result` makes (the ids must match).
    pub fn from_run(case: &Case, result: RunResult) -> Self {
        debug_assert_eq!(case.id(), result.id);
        let actual = match result.actual {
            Observed::Nothing => None,
            Observed::AsExpected => Some(result.expected.clone()),
            Observed::Values(actual) => Some(actual),
        };
        Self {
            expected: result.expected,
            actual,
            diagnosis: result.diagnosis,
            duration_ms: result.duration_ms,
            ..Self::without_run(case, result.status, String::new())
        }
    }

    /// A verdict without a run: skipped (the reason says why) or a harness error.
    pub fn without_run(case: &Case, status: Status, reason: String) -> Self {
        Self {
            id: case.id(),
            vendor: case.vendor.name().to_string(),
            scenario: case.scenario.name.clone(),
            path: case.path.name().to_string(),
            axes: Axes {
                target: case.scenario.target.name().to_string(),
                fault: case.scenario.fault.name().to_string(),
                access: case.scenario.access.name().to_string(),
                nested_leaf: case.scenario.nested_leaf.name().to_string(),
                l2_leaf: case.scenario.l2_leaf.name().to_string(),
                placement: case.scenario.placement.name().to_string(),
                span: case.scenario.span.name().to_string(),
                ept_ad: case.scenario.ept_ad.name().to_string(),
                l2_ad: case.scenario.l2_ad.name().to_string(),
                l2_paging: case.scenario.l2_paging.name().to_string(),
            },
            status,
            expected: ExitValues::default(),
            actual: None,
            diagnosis: Some(reason),
            duration_ms: 0,
        }
    }
}

/// The fields `vendor` reports, with its names for them, in report order.
fn named_fields(vendor: &dyn Vendor) -> impl Iterator<Item = (Field, &'static str)> + '_ {
    Field::ALL
        .into_iter()
        .filter_map(|field| vendor.field_name(field).map(|name| (field, name)))
}

/// Compares what L1 saw with the oracle, every field in the vendor's order (exit code, the bits,
/// the GPA, VMX's linear address), and explains every difference.
pub fn judge(
    vendor: &dyn Vendor,
    case: &Case,
    expectation: &Expectation,
    observation: &Observation,
    duration_ms: u64,
) -> Verdict {
    let mut verdict = Verdict::without_run(case, Status::Error, String::new());
    verdict.expected = ExitValues::of(vendor, |field| expectation.get(field).map(|e| e.value));
    verdict.duration_ms = duration_ms;
    let (mailbox, l2_io) = match observation {
        Observation::Stopped {
            reason, registers, ..
        } => {
            verdict.diagnosis = Some(format!("{reason}; vCPU {registers}"));
            return verdict;
        }
        Observation::Reported {
            status,
            mailbox,
            l2_io,
        } => match status {
            Ok(StubStatus::Exited) => (mailbox, *l2_io),
            Ok(StubStatus::VmxInstructionFailed) => {
                let (step, index, error) = split_vmx_detail(mailbox.detail);
                let at = if step == Some(nestfault_protocol::VmxStep::Vmwrite) {
                    format!(" (write #{index})")
                } else {
                    String::new()
                };
                verdict.diagnosis = Some(format!(
                    "L1's {step:?}{at} failed with VM-instruction error {error}"
                ));
                return verdict;
            }
            Ok(StubStatus::BadMailbox) => {
                verdict.diagnosis =
                    Some("the stub rejected its mailbox (wrong magic, version or executor)".into());
                return verdict;
            }
            Err(raw) => {
                verdict.diagnosis = Some(format!("the stub reported an unknown status {raw:#x}"));
                return verdict;
            }
        },
    };
    let actual = vendor.exit(&mailbox.exit);
    verdict.actual = Some(ExitValues::of(vendor, |field| actual.get(field)));
    let mut lines = Vec::new();
    let mut wrong_fields = Vec::new();
    for (field, name) in named_fields(vendor) {
        let (Some(expected), Some(got)) = (expectation.get(field), actual.get(field)) else {
            continue;
        };
        if !expected.matches(got) {
            // The wrong bits, for telling what the open findings explain.
            wrong_fields.push((field, (expected.value ^ got) & expected.mask));
            let (wanted, got) = (
                show(vendor, field, expected.value),
                show(vendor, field, got),
            );
            lines.push(format!("{name}: wanted {wanted}, got {got}"));
        }
    }
    let l2_io = l2_io_finding(l2_io);
    let findings = crate::arch::open_findings(case);
    let explained = |&(field, wrong): &(Field, u64)| {
        let covered = findings
            .iter()
            .fold(0, |bits, finding| bits | finding.explains(field));
        wrong & !covered == 0
    };
    verdict.status = match () {
        _ if findings.is_empty() && wrong_fields.is_empty() => Status::Pass,
        _ if findings.is_empty() => Status::Fail,
        _ if wrong_fields.is_empty() => {
            let names: Vec<String> = findings.iter().map(|f| format!("\"{}\"", f.name)).collect();
            lines.push(format!(
                "expected to fail on the open finding {}, but passed: the finding no longer \
                 shows on this kernel",
                names.join(" and ")
            ));
            Status::Xpass
        }
        // Wrong only where open findings say, and nothing else amiss: expected.
        _ if l2_io.is_none() && wrong_fields.iter().all(explained) => Status::Xfail,
        _ => Status::Fail,
    };
    if matches!(verdict.status, Status::Fail | Status::Xfail) {
        // Each finding that shows, named as a signature (the paths' comparison counts it as
        // explained); the expected failure's first line says which it is expected on.
        let mut named = Vec::new();
        for finding in &findings {
            // Named where it shows: in a bit field, any bit of it; in an address, the whole
            // difference (a GPA of 0 where 0x1505a8 belongs is no page-aligned GPA).
            let shown = wrong_fields.iter().find(|&&(field, wrong)| {
                let explains = finding.explains(field);
                wrong & explains != 0 && (!field.is_address() || wrong & !explains == 0)
            });
            let Some(&(field, _)) = shown else {
                continue;
            };
            let got = actual.get(field).unwrap_or_default();
            lines.push(format!(
                "{} {} is not what the architecture reports: the signature of the {}: {}",
                vendor.field_name(field).unwrap_or("a field"),
                show(vendor, field, got),
                finding.name,
                finding.summary
            ));
            named.push(format!("\"{}\" ({})", finding.name, finding.write_up));
        }
        if verdict.status == Status::Xfail {
            let which = if named.len() == 1 {
                "finding"
            } else {
                "findings"
            };
            let first = format!("expected failure: the open {which} {}", named.join(" and "));
            lines.insert(0, first);
        }
        lines.extend(vendor.diagnose(case, expectation, &actual));
        lines.extend(l2_io);
    }
    lines.extend(expectation.notes.iter().map(|note| format!("note: {note}")));
    verdict.diagnosis = (!lines.is_empty()).then(|| lines.join("\n"));
    verdict
}

fn l2_io_finding(io: L2Io) -> Option<String> {
    (io.port_writes > 0).then(|| {
        "L2's OUTSB reached the port: the emulator read the page although L1's tables forbid it"
            .to_string()
    })
}

/// What a disagreement between the paths that no known signature explains is called.
pub const UNEXPLAINED_DISAGREEMENT: &str = "emulator and CPU disagree; no known fix explains it";

/// Adds to an emulated or forced verdict how it compares with its hardware twin (same scenario
/// and vendor): the emulator should report what the CPU reports, addresses included, after the
/// only normalisation docs/oracle.md allows: the twin's masks (bits the CPU may report
/// differently, such as Bochs' ACC_READ on paging-structure accesses). A disagreement that the
/// diagnosis does not already pin on a known fix or finding is said to be unexplained.
pub fn compare_paths(
    emulated: &mut Verdict,
    hardware: &Verdict,
    vendor: &dyn Vendor,
    twin: &Expectation,
) {
    let (Some(from_emulator), Some(from_cpu)) = (&emulated.actual, &hardware.actual) else {
        return;
    };
    let mut differences = Vec::new();
    for (field, name) in named_fields(vendor) {
        let (Some(expected), Some(emulator), Some(cpu)) =
            (twin.get(field), from_emulator.get(name), from_cpu.get(name))
        else {
            continue;
        };
        if (emulator ^ cpu) & expected.mask != 0 {
            differences.push(format!(
                "{name} {} from the emulator, {} from the hardware path",
                show(vendor, field, emulator),
                show(vendor, field, cpu)
            ));
        }
    }
    let mut text = emulated.diagnosis.take().unwrap_or_default();
    if !text.is_empty() {
        text.push('\n');
    }
    if differences.is_empty() {
        text.push_str("paths agree: the hardware path reported the same exit");
    } else {
        let explained = text.contains("the signature of");
        let _ = write!(text, "paths disagree: {}", differences.join("; "));
        if !explained {
            let _ = write!(text, "\n{UNEXPLAINED_DISAGREEMENT}");
        }
    }
    emulated.diagnosis = Some(text);
}

/// Property-test strategies for verdict types, shared by the renderers' and parsers' tests.
#[cfg(test)]
pub mod strategy {
    use proptest::prelude::*;

    use super::Status;

    pub fn any_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Pass),
            Just(Status::Fail),
            Just(Status::Skip),
            Just(Status::Error),
            Just(Status::NotRun),
            Just(Status::Xfail),
            Just(Status::Xpass),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use crate::machine::FaultSite;
    use crate::scenario::built_in_case as case;
    use nestfault_protocol::{Executor, Mailbox};

    fn site() -> FaultSite {
        FaultSite::sample()
    }

    fn observed(exit: [u64; 4]) -> Observation {
        let mut mailbox = Mailbox::new(Executor::Svm);
        mailbox.exit = exit;
        Observation::Reported {
            status: Ok(StubStatus::Exited),
            mailbox: Box::new(mailbox),
            l2_io: L2Io::default(),
        }
    }

    #[test]
    fn matching_exit_passes_and_wrong_stage_fails_with_names() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Svm);
        let case = case("svm/pt_page_unmapped/emulated");
        let expectation = vendor.expect(&case, &site());
        let pass = judge(
            vendor.as_ref(),
            &case,
            &expectation,
            &observed([0x400, 0x2_0000_0006, 0x20_5000, 0]),
            3,
        );
        assert_eq!(pass.status, Status::Pass);
        assert_eq!(pass.diagnosis, None);
        let fail = judge(
            vendor.as_ref(),
            &case,
            &expectation,
            &observed([0x400, 0x1_0000_0006, 0x20_5000, 0]),
            3,
        );
        assert_eq!(fail.status, Status::Fail);
        let diagnosis = fail.diagnosis.unwrap();
        assert!(diagnosis.starts_with("exit_info_1: wanted 0x200000006 (W|U|GUEST_PAGE), got 0x100000006 (W|U|GUEST_FINAL)"), "{diagnosis}");
        assert!(diagnosis.contains("297c2fe249db"), "{diagnosis}");
    }

    /// A row wrong only where its open finding says is an expected failure naming the finding;
    /// wrong anywhere else too, a failure; right everywhere, an unexpected pass.
    #[test]
    fn open_findings_make_expected_failures_and_nothing_more() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Vmx);
        let case = case("vmx/pt_page_unmapped/forced");
        assert!(!arch::open_findings(&case).is_empty());
        let expectation = vendor.expect(&case, &site());
        let wanted = |field| expectation.get(field).map_or(0, |e| e.value);
        let exit = [
            wanted(arch::Field::Code),
            wanted(arch::Field::Bits),
            wanted(arch::Field::Gpa),
            wanted(arch::Field::LinearAddress),
        ];
        let judged =
            |exit: [u64; 4]| judge(vendor.as_ref(), &case, &expectation, &observed(exit), 1);
        let xpass = judged(exit);
        assert_eq!(xpass.status, Status::Xpass);
        assert!(xpass.diagnosis.unwrap().contains("no longer shows"));
        let stale = [exit[0], exit[1], exit[2], exit[3] ^ 0x40_0000];
        let xfail = judged(stale);
        assert_eq!(xfail.status, Status::Xfail);
        let diagnosis = xfail.diagnosis.unwrap();
        assert!(
            diagnosis.starts_with(
                "expected failure: the open finding \"stale guest-linear address\" \
                 (docs/findings/vmx-stale-guest-linear-address.md)"
            ),
            "{diagnosis}"
        );
        assert!(
            diagnosis.contains("guest_linear_address: wanted"),
            "{diagnosis}"
        );
        // The stale address and wrong bits 8:7 (a kernel without 96b067b59ad9): a failure.
        let also_bits = [exit[0], exit[1] ^ 0x180, exit[2], stale[3]];
        assert_eq!(judged(also_bits).status, Status::Fail);
        // Rows without an open finding never become expected failures.
        let emulated = crate::scenario::built_in_case("vmx/pt_page_unmapped/emulated");
        let expectation = vendor.expect(&emulated, &site());
        let verdict = judge(
            vendor.as_ref(),
            &emulated,
            &expectation,
            &observed(stale),
            1,
        );
        assert_eq!(verdict.status, Status::Fail);
    }

    /// A finding explains bits, not a whole field: with EPT A/D off the emulator's ACC_WRITE on
    /// a not-present table page is expected, the stale GVA_TRANSLATED of a 6.1 kernel is not.
    #[test]
    fn a_finding_explains_its_bits_and_no_others() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Vmx);
        let case = case("vmx/pt_page_unmapped_read_ept_ad_off/emulated");
        let expectation = vendor.expect(&case, &site());
        let wanted = |field| expectation.get(field).map_or(0, |e| e.value);
        assert_eq!(wanted(arch::Field::Bits), 0x081);
        let exit = |bits| {
            [
                wanted(arch::Field::Code),
                bits,
                wanted(arch::Field::Gpa),
                wanted(arch::Field::LinearAddress),
            ]
        };
        let judged = |bits| {
            judge(
                vendor.as_ref(),
                &case,
                &expectation,
                &observed(exit(bits)),
                1,
            )
        };
        assert_eq!(judged(0x083).status, Status::Xfail);
        let stale = judged(0x183);
        assert_eq!(stale.status, Status::Fail);
        // Its bit shows, so the finding is named beside the missing fix's stale bit.
        let diagnosis = stale.diagnosis.unwrap();
        assert!(diagnosis.contains("EPT A/D off"), "{diagnosis}");
        assert_eq!(judged(0x081).status, Status::Xpass);
    }

    /// An address is a finding's signature only as a whole: the page of the exact GPA is the
    /// page-aligned GPA; a GPA of 0 (L2 never faulted) is not, and fails unexplained.
    #[test]
    fn an_address_shows_a_finding_only_as_a_whole() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Svm);
        let case = case("svm/final_page_unmapped_read_offset/emulated");
        let site = FaultSite {
            gva: crate::layout::FAULT_GVA_OFFSET,
            ..site()
        };
        let expectation = vendor.expect(&case, &site);
        let gpa = expectation.gpa.value;
        assert_ne!(gpa % 0x1000, 0);
        let judged = |exit| judge(vendor.as_ref(), &case, &expectation, &observed(exit), 1);
        let page = judged([0x400, expectation.bits.value, gpa & !0xfff, 0]);
        assert_eq!(page.status, Status::Xfail);
        assert!(page.diagnosis.unwrap().contains("page-aligned GPA"));
        let shutdown = judged([0x7f, 0, 0, 0]);
        assert_eq!(shutdown.status, Status::Fail);
        let diagnosis = shutdown.diagnosis.unwrap();
        assert!(!diagnosis.contains("page-aligned"), "{diagnosis}");
    }

    #[test]
    fn stopped_runs_and_stub_failures_are_errors() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Vmx);
        let case = case("vmx/pt_page_unmapped/emulated");
        let expectation = vendor.expect(&case, &site());
        let stopped = Observation::Stopped {
            reason: "timeout".into(),
            registers: "rip=0x1".into(),
        };
        let verdict = judge(vendor.as_ref(), &case, &expectation, &stopped, 1);
        assert_eq!((verdict.status, verdict.actual), (Status::Error, None));
        let mut mailbox = Mailbox::new(Executor::Vmx);
        mailbox.detail =
            nestfault_protocol::vmx_detail(nestfault_protocol::VmxStep::Vmlaunch, 0, 7);
        let failed = Observation::Reported {
            status: Ok(StubStatus::VmxInstructionFailed),
            mailbox: Box::new(mailbox),
            l2_io: L2Io::default(),
        };
        let verdict = judge(vendor.as_ref(), &case, &expectation, &failed, 1);
        assert_eq!(verdict.status, Status::Error);
        assert!(verdict.diagnosis.unwrap().contains("Vmlaunch"));
    }

    #[test]
    fn verdicts_round_trip_through_json() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Vmx);
        let case = case("vmx/final_page_unmapped/emulated");
        let expectation = vendor.expect(&case, &site());
        let verdict = judge(
            vendor.as_ref(),
            &case,
            &expectation,
            &observed([48, 0x81, 0x21_0000, 0x80_0000_0000]),
            9,
        );
        let json = serde_json::to_string(&verdict).unwrap();
        assert!(json.contains("\"exit_qualification\":\"0x181\""), "{json}");
        assert!(json.contains("\"status\":\"fail\""), "{json}");
        assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), verdict);
        assert!(
            json.contains("\"target\":\"final_page\",\"fault\":\"unmapped\""),
            "{json}"
        );
        assert!(serde_json::from_str::<Verdict>(&json.replace("0x181", "181")).is_err());
    }

    /// The differential verdict: the same exit up to the page offset of the GPA agrees; a
    /// different stage with a known signature is pinned on it; anything else is unexplained.
    #[test]
    fn paths_are_compared_after_the_documented_normalisations_only() {
        let vendor = arch::for_tests(crate::scenario::VendorKind::Svm);
        let run = |id: &str, exit: [u64; 4]| {
            let case = case(id);
            let expectation = vendor.expect(&case, &site());
            judge(vendor.as_ref(), &case, &expectation, &observed(exit), 1)
        };
        let twin = vendor.expect(&case("svm/final_page_unmapped/hardware"), &site());
        let hardware = run(
            "svm/final_page_unmapped/hardware",
            [0x400, 0x1_0000_0004, 0x21_0000, 0],
        );
        let mut agreeing = run(
            "svm/final_page_unmapped/forced",
            [0x400, 0x1_0000_0004, 0x21_0000, 0],
        );
        compare_paths(&mut agreeing, &hardware, vendor.as_ref(), &twin);
        assert!(agreeing.diagnosis.unwrap().contains("paths agree"));

        let twin = vendor.expect(&case("svm/pt_page_unmapped/hardware"), &site());
        let hardware = run(
            "svm/pt_page_unmapped/hardware",
            [0x400, 0x2_0000_0006, 0x20_5000, 0],
        );
        let mut known = run(
            "svm/pt_page_unmapped/emulated",
            [0x400, 0x1_0000_0006, 0x20_5000, 0],
        );
        compare_paths(&mut known, &hardware, vendor.as_ref(), &twin);
        let known = known.diagnosis.unwrap();
        assert!(known.contains("paths disagree: exit_info_1") && known.contains("297c2fe249db"));
        assert!(!known.contains(UNEXPLAINED_DISAGREEMENT), "{known}");

        let mut odd = run(
            "svm/pt_page_unmapped/emulated",
            [0x400, 0x2_0000_0006, 0x20_6000, 0],
        );
        compare_paths(&mut odd, &hardware, vendor.as_ref(), &twin);
        let odd = odd.diagnosis.unwrap();
        assert!(
            odd.contains("exit_info_2 0x206000 from the emulator"),
            "{odd}"
        );
        assert!(odd.contains(UNEXPLAINED_DISAGREEMENT), "{odd}");
    }
}
