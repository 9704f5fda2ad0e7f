//! `cargo xtask e2e`: the real proof. Boots each cached Debian kernel as the L0 hypervisor (QEMU
//! TCG for SVM, Bochs for VMX), runs every scenario inside it through `nestfault --kernel`, and
//! checks the verdicts against what that kernel is known to do (oracle.md 3): 6.1 predates the
//! fix on both vendors, 7.2 has it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::kernels::{self, FetchedKernel, KernelsArgs};

#[derive(clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub kernels: KernelsArgs,
    /// Only this vendor (repeatable): svm, vmx
    #[arg(long = "vendor", value_name = "VENDOR")]
    pub vendors: Vec<String>,
    /// Boots run side by side (each emulator uses one core).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
}

/// What a kernel is known to do.
struct Known {
    /// The SVM fix, 297c2fe249db.
    svm_fixed: bool,
    /// The VMX fix, 96b067b59ad9.
    vmx_fixed: bool,
}

fn known(label: &str) -> Result<Known> {
    match label {
        "6.1" => Ok(Known {
            svm_fixed: false,
            vmx_fixed: false,
        }),
        "7.2" => Ok(Known {
            svm_fixed: true,
            vmx_fixed: true,
        }),
        _ => bail!("no known results for kernel {label}: add them to xtask/src/e2e.rs"),
    }
}

/// The problems with one run's report, if any.
fn check(
    label: &str,
    vendor: &str,
    exit_code: Option<i32>,
    report: &Value,
    cases: usize,
) -> Result<Vec<String>> {
    let known = known(label)?;
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let kernel = report["kernel"].as_str().unwrap_or("");
    let series = kernels::series(label).context("a kernel label without a series")?;
    expect(
        series.accepts(kernel),
        format!("JSON kernel is {kernel:?}, not of {series:?}"),
    );
    let results = report["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    expect(
        results.len() == cases,
        format!("{} results, not {cases}", results.len()),
    );
    let mut any_failed = false;
    for result in results {
        let field = |name: &str| result[name].as_str().unwrap_or("");
        let (id, status, diagnosis) = (field("id"), field("status"), field("diagnosis"));
        let emulated = field("path") == "emulated";
        // Scenario names say what breaks: final_page_* the final page, the rest a page-table page.
        let table_walk = !field("scenario").starts_with("final_page");
        // Only the emulator's injection was broken; the hardware path is right everywhere.
        let should_fail = emulated
            && match vendor {
                "svm" => !known.svm_fixed && table_walk,
                _ => !known.vmx_fixed,
            };
        any_failed |= should_fail;
        let wanted = if should_fail { "fail" } else { "pass" };
        expect(
            status == wanted,
            format!("{id}: {status}, wanted {wanted}; diagnosis: {diagnosis}"),
        );
        if should_fail {
            let commit = if vendor == "svm" {
                "297c2fe249db"
            } else {
                "96b067b59ad9"
            };
            expect(
                diagnosis.contains(commit),
                format!("{id}: the diagnosis does not name {commit}: {diagnosis}"),
            );
        }
        if should_fail && vendor == "svm" {
            // GUEST_FINAL where GUEST_PAGE belongs (the seed rows: 0x1_0000_0006, 0x1_0000_0007).
            let hex = |value: &Value| {
                let text = value.as_str().unwrap_or("").trim_start_matches("0x");
                u64::from_str_radix(text, 16).ok()
            };
            let expected = hex(&result["expected"]["exit_info_1"]).unwrap_or(0);
            let wanted = (expected & !(1 << 33)) | (1 << 32);
            let got = hex(&result["actual"]["exit_info_1"]);
            expect(
                got == Some(wanted),
                format!("{id}: exit_info_1 {got:x?}, wanted {wanted:#x}"),
            );
        }
    }
    let wanted_code = if any_failed { 1 } else { 0 };
    expect(
        exit_code == Some(wanted_code),
        format!("exit code {exit_code:?}, wanted {wanted_code}"),
    );
    Ok(problems)
}

/// Builds nestfault and returns the binary's path.
pub fn build_nestfault(workspace: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "--package", "nestfault"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building nestfault failed");
    }
    Ok(workspace.join("target/release/nestfault"))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

struct Run {
    kernel: FetchedKernel,
    vendor: &'static str,
}

pub fn run(args: &E2eArgs) -> Result<()> {
    // Fetching is idempotent: packages already in the cache are not downloaded again.
    let fetched = kernels::fetch_kernels(&args.kernels.cache.dir()?, &args.kernels.only)?;
    let workspace = workspace_root();
    let nestfault = build_nestfault(&workspace)?;
    let logs = workspace.join("target/e2e");
    std::fs::create_dir_all(&logs).context("creating target/e2e")?;
    // The built-in scenarios and the extra ones, so that every scenario file is proven on real
    // kernels.
    let extra = workspace.join("scenarios/extra");
    let vendors: Vec<&'static str> = ["vmx", "svm"]
        .into_iter()
        .filter(|v| args.vendors.is_empty() || args.vendors.iter().any(|a| a == v))
        .collect();
    // Bochs runs first: they are the long ones.
    let queue: Mutex<Vec<Run>> = Mutex::new(
        vendors
            .iter()
            .flat_map(|&vendor| {
                fetched.iter().map(move |kernel| Run {
                    kernel: kernel.clone(),
                    vendor,
                })
            })
            .rev()
            .collect(),
    );
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let Some(run) = queue.lock().expect("queue lock").pop() else {
                    break;
                };
                let outcome = run_one(&nestfault, &extra, &logs, &run);
                let name = format!("{} {}", run.kernel.label, run.vendor);
                match &outcome {
                    Ok((problems, seconds)) if problems.is_empty() => {
                        println!("e2e {name}: ok ({seconds:.0} s)")
                    }
                    Ok((problems, seconds)) => println!(
                        "e2e {name}: FAILED ({seconds:.0} s)\n  {}",
                        problems.join("\n  ")
                    ),
                    Err(error) => println!("e2e {name}: FAILED: {error:#}"),
                }
                outcomes
                    .lock()
                    .expect("outcome lock")
                    .push(matches!(outcome, Ok((ref problems, _)) if problems.is_empty()));
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcome lock");
    if let Some(kernel) = fetched.first() {
        let outcome = interruption(&nestfault, kernel);
        match &outcome {
            Ok(seconds) => println!("e2e interrupt: ok (ended {seconds:.1} s after SIGTERM)"),
            Err(error) => println!("e2e interrupt: FAILED: {error:#}"),
        }
        outcomes.push(outcome.is_ok());
    }
    let passed = outcomes.iter().filter(|ok| **ok).count();
    println!("{} passed, {} failed", passed, outcomes.len() - passed);
    if passed != outcomes.len() || outcomes.is_empty() {
        bail!(
            "end-to-end runs failed; raw consoles and reports are in {}",
            logs.display()
        );
    }
    Ok(())
}

/// `nestfault --kernel` for a fetched kernel.
fn kernel_command(nestfault: &Path, kernel: &FetchedKernel) -> Command {
    let mut command = Command::new(nestfault);
    command.arg("--kernel").arg(&kernel.image);
    if let Some(modules) = &kernel.modules {
        command.arg("--modules").arg(modules);
    }
    command
}

/// SIGTERM in the middle of a boot: nestfault must stop the emulator, remove its temporary
/// directories and exit 255 within seconds; returns how long it took.
fn interruption(nestfault: &Path, kernel: &FetchedKernel) -> Result<f64> {
    let mut child = kernel_command(nestfault, kernel)
        .args(["--vendor", "svm", "--emulator", "qemu-tcg"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting nestfault")?;
    // Long enough to be unpacking or booting, well before the run could end.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let pid = i32::try_from(child.id()).context("a pid out of range")?;
    // SAFETY: sends SIGTERM to our own child, which has not been waited for, so the pid is its.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = Instant::now();
    let deadline = signalled + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("still running 10 s after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let seconds = signalled.elapsed().as_secs_f64();
    if status.code() != Some(255) {
        bail!("exit {:?} after SIGTERM, wanted 255", status.code());
    }
    let leftover: Vec<_> = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("nestfault-") && name.contains(&format!("-{pid}-")))
        .collect();
    if !leftover.is_empty() {
        bail!("temporary directories left behind: {leftover:?}");
    }
    Ok(seconds)
}

/// How many cases `nestfault --list` selects for `vendor` with the extra scenarios.
fn case_count(nestfault: &Path, extra: &Path, vendor: &str) -> Result<usize> {
    let output = Command::new(nestfault)
        .args(["--list", "--vendor", vendor, "--scenarios-dir"])
        .arg(extra)
        .output()
        .context("running nestfault --list")?;
    if !output.status.success() {
        bail!(
            "nestfault --list failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().count())
}

fn run_one(nestfault: &Path, extra: &Path, logs: &Path, run: &Run) -> Result<(Vec<String>, f64)> {
    let cases = case_count(nestfault, extra, run.vendor)?;
    // Not Path::with_extension: the label's dot ("6.1") would be taken for one.
    let log =
        |extension: &str| logs.join(format!("{}-{}.{extension}", run.kernel.label, run.vendor));
    let mut command = kernel_command(nestfault, &run.kernel);
    command.arg("--scenarios-dir").arg(extra);
    command
        .args(["--vendor", run.vendor, "--format", "json", "--console-log"])
        .arg(log("console"));
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running {}", nestfault.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(log("json"), &output.stdout)?;
    std::fs::write(log("stderr"), &output.stderr)?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "no JSON report (exit {:?}); stderr:\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((
        check(
            &run.kernel.label,
            run.vendor,
            output.status.code(),
            &report,
            cases,
        )?,
        seconds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(scenario: &str, path: &str, status: &str, info1: &str, diagnosis: &str) -> Value {
        let expected = info1.replace("0x1", "0x2");
        json!({"id": format!("svm/{scenario}/{path}"), "scenario": scenario, "path": path, "status": status,
               "expected": {"exit_info_1": expected}, "actual": {"exit_info_1": info1}, "diagnosis": diagnosis})
    }

    fn svm_61_report() -> Value {
        let mut results = Vec::new();
        for scenario in [
            "final_page_unmapped",
            "final_page_write_protected",
            "pt_page_unmapped",
            "pt_page_write_protected",
        ] {
            for path in ["emulated", "hardware"] {
                let broken = path == "emulated" && scenario.starts_with("pt_page");
                let info1 = if scenario == "pt_page_unmapped" {
                    "0x100000006"
                } else {
                    "0x100000007"
                };
                results.push(result(
                    scenario,
                    path,
                    if broken { "fail" } else { "pass" },
                    info1,
                    "without 297c2fe249db",
                ));
            }
        }
        json!({"kernel": "6.1.0-56-amd64", "vendor": "svm", "results": results})
    }

    #[test]
    fn a_correct_61_report_passes_and_a_wrong_one_does_not() {
        assert_eq!(
            check("6.1", "svm", Some(1), &svm_61_report(), 8).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            check("6.1", "svm", Some(0), &svm_61_report(), 8)
                .unwrap()
                .len(),
            1
        );
        let mut passing = svm_61_report();
        passing["results"][4]["status"] = json!("pass");
        assert!(!check("6.1", "svm", Some(1), &passing, 8)
            .unwrap()
            .is_empty());
        // Failing for another reason than the known bug is not the known result.
        let mut other_bits = svm_61_report();
        other_bits["results"][4]["actual"]["exit_info_1"] = json!("0x100000004");
        assert!(!check("6.1", "svm", Some(1), &other_bits, 8)
            .unwrap()
            .is_empty());
        let mut wrong_kernel = svm_61_report();
        wrong_kernel["kernel"] = json!("7.2.13+deb14-amd64");
        assert!(!check("6.1", "svm", Some(1), &wrong_kernel, 8)
            .unwrap()
            .is_empty());
        assert!(check("5.4", "svm", Some(1), &svm_61_report(), 8).is_err());
    }
}
