//! The command-line contract scripts and `git bisect run` rely on: ids, exit codes, messages.
//! With NESTFAULT_UNDER_TEST=<binary> the tests run that binary instead of this build's, e.g. an
//! older one, to see which of them it fails.

mod support;

use std::process::{Command, Output};

use support::{binary, text};

fn nestfault(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run nestfault")
}

/// The fault matrix: well over a hundred ids, one per line, the seed ids among them.
#[test]
fn list_prints_the_matrix_one_id_a_line() {
    let output = nestfault(&["--list"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    let ids: Vec<&str> = stdout.lines().collect();
    assert!(ids.len() > 140, "{stdout}");
    for id in &ids {
        let parts: Vec<&str> = id.split('/').collect();
        assert!(
            matches!(
                parts.as_slice(),
                ["svm" | "vmx", _, "emulated" | "hardware" | "forced"]
            ),
            "{id}"
        );
    }
    assert!(ids.contains(&"svm/pt_page_unmapped/emulated"));
    let vmx_only = nestfault(&["--list", "--vendor", "vmx", "--path", "hardware"]);
    let vmx_only = text(&vmx_only.stdout);
    assert!(vmx_only
        .lines()
        .all(|id| id.starts_with("vmx/") && id.ends_with("/hardware")));
    assert_eq!(
        vmx_only.lines().count(),
        ids.iter()
            .filter(|id| id.starts_with("vmx/") && id.ends_with("/hardware"))
            .count()
    );
}

#[test]
fn unknown_scenario_is_a_usage_error_listing_valid_ids() {
    let output = nestfault(&["--scenario", "pt_page_gone"]);
    assert_eq!(output.status.code(), Some(255));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("unknown scenario \"pt_page_gone\""),
        "{stderr}"
    );
    assert!(stderr.contains("svm/pt_page_unmapped/emulated"), "{stderr}");
}

#[test]
fn bad_flags_are_usage_errors_not_clap_exit_2() {
    for args in [
        &["--vendor", "arm"][..],
        &["--format", "xml"],
        &["--bogus"],
        &["--modules", "/tmp"],
    ] {
        let output = nestfault(args);
        assert_eq!(
            output.status.code(),
            Some(255),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    assert_eq!(nestfault(&["--help"]).status.code(), Some(0));
}

#[test]
fn malformed_scenario_file_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("nestfault-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "summary = \"x\"\ntarget = \"pt_page\"\nfault = \"melted\"\naccess = \"read\"\n",
    )
    .unwrap();
    let output = nestfault(&["--scenarios-dir", dir.to_str().unwrap(), "--list"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("broken.toml:3: unknown variant `melted`"),
        "{stderr}"
    );
}

#[test]
fn extra_scenarios_add_to_the_built_in_ones_and_may_not_shadow_them() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/examples");
    let built_in = text(&nestfault(&["--list"]).stdout).lines().count();
    let output = nestfault(&["--list", "--scenarios-dir", examples]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    // pd_page_supervisor_read: SVM only (EPT has no U/S bit), on three paths.
    assert_eq!(stdout.lines().count(), built_in + 3, "{stdout}");
    assert!(
        stdout.contains("svm/pd_page_supervisor_read/forced\n"),
        "{stdout}"
    );

    let dir = std::env::temp_dir().join(format!("nestfault-cli-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = "summary = \"x\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\n";
    std::fs::write(dir.join("pt_page_unmapped.toml"), body).unwrap();
    let output = nestfault(&["--scenarios-dir", dir.to_str().unwrap(), "--list"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(
        text(&output.stderr).contains("exists already"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn missing_kernel_image_is_a_clear_harness_error() {
    let output = nestfault(&["--kernel", "/nonexistent/bzImage"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        text(&output.stderr).contains("/nonexistent/bzImage"),
        "{}",
        text(&output.stderr)
    );
}

/// Whether this host's KVM offers each vendor nested, as the runner decides it.
fn host_nests() -> Vec<&'static str> {
    use nestfault::scenario::VendorKind;
    use nestfault::vm;
    let Ok(cpuid) = vm::open_kvm().and_then(|kvm| vm::supported_cpuid(&kvm)) else {
        return Vec::new();
    };
    VendorKind::ALL
        .into_iter()
        .filter(|&kind| nestfault::arch::missing_nested_support(&cpuid, kind).is_none())
        .map(|kind| kind.name())
        .collect()
}

/// On a host without nested virtualization (every machine here) the suite cannot test anything:
/// 125 with the reason per vendor, and no case may claim to have passed. On a host that nests,
/// the vendors it nests must have run (0 or 1), none skipped.
#[test]
fn running_here_tests_what_the_host_nests_and_skips_the_rest_with_reasons() {
    let output = nestfault(&["--scenario", "all", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let results = report["results"].as_array().unwrap();
    for result in results {
        // Every result has the same shape, a skip's `actual` too.
        assert!(result["expected"].is_object(), "{result}");
        assert!(result["actual"].is_object(), "{result}");
    }
    assert!(report["vendor"].is_array(), "{}", report["vendor"]);
    let nesting = host_nests();
    if !nesting.is_empty() {
        eprintln!("note: this host nests {nesting:?}: checking that those cases ran");
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "{:?}",
            output.status
        );
        for result in results {
            assert!(
                nesting.contains(&result["vendor"].as_str().unwrap()),
                "{result}"
            );
            assert_ne!(result["status"], "skip", "{result}");
        }
        return;
    }
    assert_eq!(output.status.code(), Some(125));
    let listed = text(&nestfault(&["--list"]).stdout).lines().count();
    assert_eq!(results.len(), listed);
    assert_eq!(
        report["kernel"].as_str().unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    for result in results {
        assert_eq!(result["status"], "skip", "{result}");
        let why = result["diagnosis"].as_str().unwrap();
        assert!(
            why.contains("KVM_GET_SUPPORTED_CPUID lacks") || why.contains("/dev/kvm"),
            "{why}"
        );
        // The advice fits the host: no "not an AMD host?" on an AMD host.
        if nestfault::host::cpu_is_amd() {
            assert!(!why.contains("not an AMD host"), "{why}");
        }
        if nestfault::host::cpu_is_intel() {
            assert!(!why.contains("not an Intel host"), "{why}");
        }
    }
    let human = nestfault(&["--scenario", "all"]);
    assert_eq!(human.status.code(), Some(125));
    let stdout = text(&human.stdout);
    assert!(
        stdout.contains("not tested: SVM") && stdout.contains("not tested: VMX"),
        "{stdout}"
    );
    assert!(!stdout.contains("PASS"), "{stdout}");
}

#[test]
fn list_honours_scenario_vendor_and_path() {
    let all = text(&nestfault(&["--list"]).stdout);
    let output = nestfault(&["--list", "--scenario", "pt_page_unmapped"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    let wanted: Vec<&str> = all
        .lines()
        .filter(|id| id.contains("/pt_page_unmapped/"))
        .collect();
    assert!(wanted.len() >= 4, "{all}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), wanted);
    let one = nestfault(&[
        "--list",
        "--scenario",
        "pt_page_unmapped",
        "--vendor",
        "vmx",
        "--path",
        "hardware",
    ]);
    assert_eq!(text(&one.stdout), "vmx/pt_page_unmapped/hardware\n");
}

#[test]
fn unknown_scenario_lists_each_name_once() {
    let output = nestfault(&["--scenario", "bogus"]);
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("pt_page_unmapped,").count(), 1, "{stderr}");
}

/// Issue 21: a reader that goes away (`nestfault --list | head -1`) ends the run quietly, with
/// the status it would have had; no "Broken pipe" on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = Command::new(binary())
        .arg("--list")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before anything is read: every write fails with EPIPE.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(text(&output.stderr), "");
}

/// Issue 21: every path of this repository that a help text names exists.
#[test]
fn help_texts_name_only_paths_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut named = Vec::new();
    for args in [
        &["--help"][..],
        &["kconfig", "--help"],
        &["host", "--help"],
        &["cache", "--help"],
    ] {
        let help = text(&nestfault(args).stdout);
        for word in help.split(|c: char| c.is_whitespace() || "(),;`'\"".contains(c)) {
            let word = word.trim_end_matches(['.', ':']);
            let ours = ["scenarios/", "docs/", "src/", "guest/", "xtask/", "tests/"];
            if ours.iter().any(|prefix| word.starts_with(prefix)) {
                named.push(word.to_string());
            }
        }
    }
    assert!(
        !named.is_empty(),
        "the help names no repository path at all"
    );
    for path in named {
        assert!(
            root.join(&path).exists(),
            "--help names {path}, which does not exist"
        );
    }
}

/// Issue 21: the survey's exit codes, over reports made earlier: 0 when every failure is
/// explained, 1 when one is not, 255 for an input that is not there or a report of another
/// vendor.
#[test]
fn survey_exit_codes_follow_what_it_found() {
    let dir = std::env::temp_dir().join(format!("nestfault-survey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = |name: &str, status: &str, diagnosis: &str| {
        let path = dir.join(name);
        let json = serde_json::json!({
            "kernel": "7.2.13", "vendor": ["svm"],
            "results": [
                {"id": "svm/pt_page_unmapped/emulated", "vendor": "svm", "status": "pass", "diagnosis": ""},
                {"id": "svm/final_page_unmapped/hardware", "vendor": "svm", "status": status,
                 "diagnosis": diagnosis},
            ]
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let explained = report("fixed.json", "pass", "");
    let odd = report("odd.json", "fail", "exit_info_2: wanted 0x1, got 0x2");
    let run = |args: &[&str]| nestfault(&[&["survey"], args].concat());
    let fine = run(&[&explained]);
    assert_eq!(fine.status.code(), Some(0), "{}", text(&fine.stderr));
    assert!(
        text(&fine.stdout).contains("fix 297c2fe249db"),
        "{}",
        text(&fine.stdout)
    );
    let unexplained = run(&["--format", "markdown", &odd]);
    assert_eq!(unexplained.status.code(), Some(1));
    assert!(text(&unexplained.stdout).contains("no known fix or finding explains it"));
    assert_eq!(
        run(&["--vendor", "vmx", &explained]).status.code(),
        Some(255)
    );
    let missing = run(&["--vendor", "svm", "/nonexistent/kernel.bzImage"]);
    assert_eq!(
        missing.status.code(),
        Some(255),
        "{}",
        text(&missing.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
