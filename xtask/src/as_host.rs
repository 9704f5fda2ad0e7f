//! The e2e's "as a host" stage: Debian's 7.2 booted with KVM as Debian loads it (no nestfault
//! parameters: the forced-emulation prefix off) and nestfault run inside it in direct mode, as
//! docs/ci.md tells a CI runner to, by an unprivileged user in the kvm group: `nestfault host`
//! and a JUnit run must exit 0 with the forced rows not run and the command that enables them;
//! the same run by a user outside the kvm group must exit 255 naming /dev/kvm's mode and group;
//! and a second boot with `--kernel-param kvm.tdp_mmu=0` must give the same verdicts, its report
//! recording tdp_mmu off.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use nestfault::scenario::{self, AccessPath, VendorKind};

use crate::kernels::FetchedKernel;

/// The commands of docs/ci.md, as the stage runs them (a test keeps the page to them).
pub const HOST_CHECK: &str = "host";
pub const JUNIT_RUN: &str = "--vendor svm --format junit --output nestfault.xml";
/// The same run, for a script to compare verdicts.
const JSON_RUN: &str = "--vendor svm --format json";

/// One `--as-host` boot of `kernel` with `commands` (`kvm: ARGS` / `nokvm: ARGS`) and `params`;
/// returns each command's result, in order.
fn boot(
    nestfault: &Path,
    kernel: &FetchedKernel,
    params: &[&str],
    commands: &[String],
    log: &Path,
) -> Result<Vec<Value>> {
    let mut command = Command::new(nestfault);
    command.arg("--kernel").arg(&kernel.image);
    if let Some(modules) = &kernel.modules {
        command.arg("--modules").arg(modules);
    }
    command.args(["--vendor", "svm", "--emulator", "qemu-tcg", "--console-log"]);
    command.arg(log);
    for param in params {
        command.args(["--kernel-param", param]);
    }
    for line in commands {
        command.args(["--as-host", line]);
    }
    let output = command.output().context("running nestfault --as-host")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(0),
        "nestfault --as-host exited {:?}:\n{stderr}",
        output.status.code()
    );
    let results: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a result line that is not JSON")?;
    ensure!(
        results.len() == commands.len(),
        "{} results for {} commands",
        results.len(),
        commands.len()
    );
    Ok(results)
}

fn text<'a>(result: &'a Value, key: &str) -> &'a str {
    result[key].as_str().unwrap_or("")
}

/// Fails unless `result` exited `code`; says what it printed.
fn exited(result: &Value, code: i64) -> Result<()> {
    ensure!(
        result["code"].as_i64() == Some(code),
        "`{}` exited {}, wanted {code}:\n{}{}",
        text(result, "command"),
        result["code"],
        text(result, "stdout"),
        text(result, "stderr")
    );
    Ok(())
}

/// Each case's status in a JSON report, and the report's kvm.tdp_mmu.
fn statuses(result: &Value) -> Result<(BTreeMap<String, String>, String)> {
    let report: Value =
        serde_json::from_str(text(result, "stdout")).context("the JSON run's report")?;
    let statuses = report["results"]
        .as_array()
        .context("no results")?
        .iter()
        .map(|r| (text(r, "id").to_string(), text(r, "status").to_string()))
        .collect();
    let tdp_mmu = report["environment"][0]["kvm_parameters"]["kvm.tdp_mmu"]
        .as_str()
        .unwrap_or("(not recorded)")
        .to_string();
    Ok((statuses, tdp_mmu))
}

/// Runs the stage on `kernel` (a fixed one: every case that runs must pass); returns a summary.
pub fn run(nestfault: &Path, kernel: &FetchedKernel, logs: &Path) -> Result<String> {
    let started = Instant::now();
    let svm: Vec<_> = scenario::expand(&scenario::built_in()?)
        .into_iter()
        .filter(|case| case.vendor == VendorKind::Svm)
        .collect();
    let forced = svm.iter().filter(|c| c.path == AccessPath::Forced).count();
    // What a fixed kernel reports for each case with the prefix off: the forced rows not run,
    // the rows of an open finding expected failures, the rest passes.
    let wanted = |case: &nestfault::scenario::Case| {
        if case.path == AccessPath::Forced {
            "not_run"
        } else if !nestfault::arch::open_findings(case).is_empty() {
            "xfail"
        } else {
            "pass"
        }
    };
    let expected_failures = svm.iter().filter(|c| wanted(c) == "xfail").count();
    let commands = [
        format!("kvm: {HOST_CHECK}"),
        format!("kvm: {JUNIT_RUN}"),
        format!("kvm: {JSON_RUN}"),
        format!("nokvm: {JSON_RUN}"),
    ];
    let results = boot(
        nestfault,
        kernel,
        &[],
        &commands,
        &logs.join("as-host.console"),
    )?;
    let [host, junit, json, denied] = &results[..] else {
        bail!("four results expected");
    };

    exited(host, 0)?;
    let enable = "echo 1 | sudo tee /sys/module/kvm/parameters/force_emulation_prefix";
    let host_out = text(host, "stdout");
    ensure!(
        host_out.contains(&format!(
            "SVM: nests; {} of {} cases run here",
            svm.len() - forced,
            svm.len()
        )) && host_out.contains(&format!("not run ({forced} cases)"))
            && host_out.contains(enable),
        "`nestfault host` does not say what runs and how to enable the rest:\n{host_out}"
    );

    exited(junit, 0)?;
    let xml = text(junit, "output");
    // JUnit has no expected failure: those are skipped test cases too.
    let skipped = forced + expected_failures;
    ensure!(
        xml.contains(&format!(
            "tests=\"{}\" skipped=\"{skipped}\" failures=\"0\" errors=\"0\"",
            svm.len()
        )) && xml.contains("<property name=\"kvm.force_emulation_prefix\" value=\"0\"/>"),
        "the JUnit report is not {} cases with {skipped} skipped and the prefix recorded:\n{xml}",
        svm.len()
    );
    ensure!(
        xml.matches(enable).count() == forced,
        "not every forced case says how to enable it:\n{xml}"
    );
    ensure!(
        text(junit, "stdout").contains(&format!("{forced} not run")),
        "the human report does not count the cases not run:\n{}",
        text(junit, "stdout")
    );

    exited(json, 0)?;
    let (default, tdp_default) = statuses(json)?;
    for case in &svm {
        let got = default.get(&case.id()).map(String::as_str);
        ensure!(
            got == Some(wanted(case)),
            "{}: {got:?}, wanted {}",
            case.id(),
            wanted(case)
        );
    }

    exited(denied, 255)?;
    ensure!(
        text(denied, "stderr").contains("/dev/kvm is mode 660, group kvm")
            && text(denied, "stderr").contains("usermod -aG kvm"),
        "a user outside the kvm group is not told why and what to do:\n{}",
        text(denied, "stderr")
    );

    let again = boot(
        nestfault,
        kernel,
        &["kvm.tdp_mmu=0"],
        &[format!("kvm: {JSON_RUN}")],
        &logs.join("as-host-tdp-mmu-off.console"),
    )?;
    exited(&again[0], 0)?;
    let (without_tdp_mmu, tdp_off) = statuses(&again[0])?;
    ensure!(
        (tdp_default.as_str(), tdp_off.as_str()) == ("Y", "N"),
        "kvm.tdp_mmu recorded as {tdp_default} by default and {tdp_off} with kvm.tdp_mmu=0"
    );
    ensure!(
        without_tdp_mmu == default,
        "verdicts differ with kvm.tdp_mmu=0: {:?}",
        without_tdp_mmu
            .iter()
            .filter(|(id, status)| default.get(*id) != Some(status))
            .collect::<Vec<_>>()
    );
    Ok(format!(
        "{} cases: {} pass, {expected_failures} xfail, {forced} not run; 255 outside the kvm \
         group; same verdicts with tdp_mmu off; {:.0} s",
        svm.len(),
        svm.len() - forced - expected_failures,
        started.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ci.md tells CI runners to run what this stage proves.
    #[test]
    fn docs_ci_runs_the_commands_this_stage_proves() {
        let page = include_str!("../../docs/ci.md");
        for command in [HOST_CHECK, JUNIT_RUN] {
            assert!(
                page.contains(&format!("nestfault {command}")),
                "docs/ci.md lacks `nestfault {command}`"
            );
        }
    }
}
