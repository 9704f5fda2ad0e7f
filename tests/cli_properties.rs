//! A property test over the command line: random combinations of flags, good and bad values and
//! junk never panic, never hang, and end only with a documented exit code (README, "Exit codes").
//! No emulator can start (PATH holds none), and a run without --kernel gets --list, so nothing
//! boots and nothing runs on this machine's KVM: a case takes milliseconds.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestRunner};
use support::{output_within, path_str, text, Scratch};

/// Paths the flags may name, each a different kind of trouble or none.
struct Fixtures {
    scratch: Scratch,
    kernel: String,
    kernel_bytes: Vec<u8>,
}

impl Fixtures {
    fn new() -> Self {
        let scratch = Scratch::new("properties");
        let kernel = scratch.fake_bzimage();
        std::fs::create_dir_all(scratch.path("bin")).unwrap();
        Fixtures {
            kernel_bytes: std::fs::read(&kernel).unwrap(),
            kernel: path_str(&kernel).to_string(),
            scratch,
        }
    }

    fn path(&self, relative: &str) -> String {
        path_str(&self.scratch.path(relative)).to_string()
    }
}

/// One flag and its value (or none), as separate arguments.
fn flag(fixtures: &Fixtures) -> BoxedStrategy<Vec<String>> {
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2000).prop_map(|n| n.to_string()),
        select(vec![
            "-1",
            "",
            "1e3",
            "0x10",
            " 5",
            "99999999999999999999999"
        ])
        .prop_map(String::from),
    ];
    let kernel = fixtures.kernel.clone();
    let files = vec![
        fixtures.kernel.clone(),
        fixtures.path("out"),
        fixtures.path(""),
        fixtures.path("tmp"),
        "/nonexistent/file".to_string(),
        "/dev/null".to_string(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/extra").to_string(),
    ];
    let with_value = |name: &'static str, values: BoxedStrategy<String>| {
        values.prop_map(move |value| vec![name.to_string(), value])
    };
    let one_of = |values: &[&'static str]| select(values.to_vec()).prop_map(String::from).boxed();
    let any_file = || select(files.clone()).boxed();
    prop_oneof![
        with_value(
            "--scenario",
            one_of(&[
                "all",
                "pt_page_unmapped",
                "svm/pt_page_unmapped/emulated",
                "vmx/final_page_unmapped/hardware",
                "bogus",
                ""
            ])
        ),
        with_value("--vendor", one_of(&["auto", "svm", "vmx", "arm", ""])),
        with_value(
            "--path",
            one_of(&["emulated", "hardware", "all", "sideways"])
        ),
        with_value(
            "--format",
            one_of(&["human", "json", "junit", "ktap", "xml"])
        ),
        with_value(
            "--emulator",
            one_of(&["auto", "qemu-kvm", "qemu-tcg", "bochs", "vmware"])
        ),
        with_value("--repeat", number.clone().boxed()),
        with_value("--timeout", number.boxed()),
        with_value("--output", any_file()),
        with_value("--console-log", any_file()),
        with_value("--scenarios-dir", any_file()),
        with_value("--modules", any_file()),
        with_value("--kernel", any_file()),
        Just(vec!["--kernel".to_string(), kernel]),
        one_of(&[
            "--list",
            "--verbose",
            "--bare-boot",
            "--help",
            "--version",
            "-h"
        ])
        .prop_map(|f| vec![f]),
        // Junk that is not a flag: a stray positional argument.
        "[a-z0-9=/.]{1,10}".prop_map(|junk| vec![junk]),
    ]
    .boxed()
}

/// Runs one command line; fails on a panic, a hang or an undocumented exit code.
fn check(fixtures: &Fixtures, flags: Vec<Vec<String>>) -> Result<(), TestCaseError> {
    let mut args: Vec<String> = flags.concat();
    let has = |args: &[String], name: &str| args.iter().any(|arg| arg == name);
    let kernel_mode = has(&args, "--kernel");
    let informational = ["--help", "-h", "--version", "--list"]
        .iter()
        .any(|flag| has(&args, flag));
    if !kernel_mode {
        args.push("--list".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = fixtures.scratch.command(&args);
    // No emulator anywhere: a --kernel run can only end before booting.
    command.env("PATH", fixtures.scratch.path("bin"));
    let output = output_within(&mut command, Duration::from_secs(10));
    let stderr = text(&output.stderr);
    let code = output.status.code();
    prop_assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    prop_assert!(
        matches!(code, Some(0 | 1 | 125 | 255)),
        "{args:?}: {code:?} {stderr}"
    );
    if code == Some(0) {
        prop_assert!(
            !output.stdout.is_empty(),
            "{args:?}: exit 0 and nothing printed"
        );
    }
    if kernel_mode && !informational {
        prop_assert_eq!(code, Some(255), "{:?}: {}", args, stderr);
    }
    prop_assert_eq!(
        std::fs::read(&fixtures.kernel).unwrap(),
        fixtures.kernel_bytes.clone(),
        "{:?} changed the kernel file",
        args
    );
    Ok(())
}

#[test]
fn any_command_line_ends_with_a_documented_exit_code() {
    // Run by hand rather than by proptest!, so that the fixtures are dropped (and removed).
    let fixtures = Fixtures::new();
    // 48 runs of the debug binary take about a second.
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let flags = proptest::collection::vec(flag(&fixtures), 0..7);
    if let Err(error) = runner.run(&flags, |flags| check(&fixtures, flags)) {
        panic!("{error}");
    }
}
