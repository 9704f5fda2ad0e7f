//! Issue 8's findings, one test each: exit codes a bisect can trust (255 for what the user or the
//! machine must fix, 125 only for a kernel that cannot be judged), no input that hangs, panics,
//! destroys or passes silently. Boots are faked (tests/support: a scripted QEMU), so every test
//! takes at most seconds.

mod support;

use std::time::Duration;

use nestfault::kernel_mode::Record;
use nestfault::verdict::{ExitValues, Observed, RunResult, Status};
use support::{output_within, path_str, text, wait_at_most, Scratch};

const CASE: &str = "svm/pt_page_unmapped/emulated";
const LIMIT: Duration = Duration::from_secs(20);

fn kernel_line() -> String {
    Record::Kernel("6.1.0-fake".into()).to_line()
}

fn passed_line() -> String {
    let values = ExitValues(vec![("exit_code".into(), 0x400)]);
    Record::Verdict(Box::new(RunResult {
        id: CASE.into(),
        status: Status::Pass,
        expected: values,
        actual: Observed::AsExpected,
        diagnosis: None,
        duration_ms: 40,
    }))
    .to_line()
}

/// Runs nestfault on the fake kernel for the one SVM case, with `extra` flags.
fn run_fake_kernel(scratch: &Scratch, extra: &[&str]) -> std::process::Output {
    let kernel = scratch.fake_bzimage();
    let mut args = vec!["--kernel", path_str(&kernel), "--scenario", CASE];
    args.extend_from_slice(extra);
    output_within(&mut scratch.command(&args), LIMIT)
}

fn assert_code(output: &std::process::Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "wanted {needle:?} in:\n{stderr}");
}

#[test]
fn impossible_emulator_and_vendor_pairs_are_setup_errors() {
    let scratch = Scratch::new("pairs");
    scratch.fake_qemu(&[], "exit 0");
    for (emulator, vendor) in [("qemu-tcg", "vmx"), ("bochs", "svm")] {
        let output = run_fake_kernel(
            &scratch,
            &[
                "--emulator",
                emulator,
                "--vendor",
                vendor,
                "--scenario",
                "all",
            ],
        );
        assert_code(&output, 255, "cannot be used here");
    }
}

#[test]
fn qemu_kvm_on_a_host_that_cannot_nest_is_a_setup_error() {
    let nested = |module: &str| {
        std::fs::read_to_string(format!("/sys/module/{module}/parameters/nested"))
            .is_ok_and(|value| matches!(value.trim(), "1" | "Y"))
    };
    if nested("kvm_amd") || nested("kvm_intel") {
        eprintln!("SKIPPED qemu_kvm_on_a_host_that_cannot_nest_is_a_setup_error: this host nests");
        return;
    }
    let scratch = Scratch::new("qemukvm");
    scratch.fake_qemu(&[], "exit 0");
    let output = run_fake_kernel(&scratch, &["--emulator", "qemu-kvm", "--vendor", "svm"]);
    assert_code(&output, 255, "qemu-kvm cannot be used here");
}

#[test]
fn a_missing_emulator_is_a_setup_error() {
    let scratch = Scratch::new("noqemu");
    let kernel = scratch.fake_bzimage();
    let mut command = scratch.command(&["--kernel", path_str(&kernel), "--vendor", "svm"]);
    command.env("PATH", scratch.path("bin"));
    let output = output_within(&mut command, LIMIT);
    assert_code(&output, 255, "apt-get install qemu-system-x86");
}

#[test]
fn an_unusable_console_log_is_a_setup_error_before_any_boot() {
    let scratch = Scratch::new("consolelog");
    scratch.fake_qemu(&[], "exit 0");
    let missing = scratch.path("no/such/dir/console.log");
    let output = run_fake_kernel(&scratch, &["--console-log", path_str(&missing)]);
    assert_code(&output, 255, "does not exist");
    let dir = scratch.path("tmp");
    let output = run_fake_kernel(&scratch, &["--console-log", path_str(&dir)]);
    assert_code(&output, 255, "is a directory");
}

#[test]
fn one_vendor_logs_its_console_to_exactly_the_file_named() {
    let scratch = Scratch::new("consolefile");
    scratch.fake_qemu(&["hello from the guest".into()], "exit 0");
    let log = scratch.path("console.log");
    run_fake_kernel(&scratch, &["--console-log", path_str(&log)]);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("hello from the guest"), "{logged:?}");
    assert!(!scratch.path("console.log.svm").exists());
}

#[test]
fn bad_numbers_are_refused_with_their_range_and_never_panic() {
    let scratch = Scratch::new("numbers");
    scratch.fake_qemu(&[kernel_line()], "exec sleep 30");
    for args in [
        &["--timeout", "0"][..],
        &["--timeout", "18446744073709551615"],
        &["--timeout", "86401"],
        &["--repeat", "0"],
        &["--repeat", "1001"],
        &["--repeat=-1"],
    ] {
        let output = run_fake_kernel(&scratch, args);
        assert_code(&output, 255, "invalid value");
    }
}

#[test]
fn an_empty_selection_is_a_setup_error_not_zero_passed() {
    for args in [
        &["--scenario", CASE, "--vendor", "vmx"][..],
        &["--scenario", CASE, "--path", "hardware"],
        &["--list", "--scenario", CASE, "--vendor", "vmx"],
    ] {
        let output = output_within(
            std::process::Command::new(support::binary()).args(args),
            LIMIT,
        );
        assert_code(&output, 255, "no case to run");
    }
}

/// `--repeat 100 --timeout 10` once exited 0 with 8 "passed" after 7 of 100 runs.
#[test]
fn fewer_runs_than_repeat_asked_for_is_an_error_not_a_pass() {
    let scratch = Scratch::new("shortfall");
    scratch.fake_qemu(&[kernel_line(), passed_line()], "exec sleep 30");
    let output = run_fake_kernel(
        &scratch,
        &["--vendor", "svm", "--repeat", "3", "--timeout", "2"],
    );
    assert_code(&output, 1, &format!("PASS    {CASE}"));
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("ERROR   {CASE}")), "{stdout}");
    assert!(
        stdout.contains("only 1 of 3 runs reported: no result within 2 s"),
        "{stdout}"
    );
}

#[test]
fn output_never_overwrites_an_input() {
    let scratch = Scratch::new("clobber");
    scratch.fake_qemu(&[], "exit 0");
    let kernel = scratch.fake_bzimage();
    let before = std::fs::read(&kernel).unwrap();
    let output = run_fake_kernel(&scratch, &["--output", path_str(&kernel)]);
    assert_code(&output, 255, "never writes over what it reads");
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        before,
        "the kernel was changed"
    );
}

#[test]
fn an_error_leaves_no_output_file() {
    let scratch = Scratch::new("noempty");
    let report = scratch.path("report.json");
    let output = output_within(
        &mut scratch.command(&["--scenario", "bogus", "--output", path_str(&report)]),
        LIMIT,
    );
    assert_code(&output, 255, "unknown scenario");
    let left: Vec<_> = std::fs::read_dir(scratch.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["tmp"],
        "an --output file (or its temporary) was left behind"
    );
}

#[test]
fn a_fifo_in_the_scenarios_dir_is_refused_by_name_not_waited_on() {
    let scratch = Scratch::new("fifo");
    let dir = scratch.path("scenarios");
    std::fs::create_dir(&dir).unwrap();
    let fifo = std::ffi::CString::new(path_str(&dir.join("stuck.toml"))).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let output = output_within(
        &mut scratch.command(&["--list", "--scenarios-dir", path_str(&dir)]),
        Duration::from_secs(10),
    );
    assert_code(&output, 255, "stuck.toml: it is a pipe (FIFO)");
}

#[test]
fn broken_scenario_files_are_reported_against_the_file() {
    let scratch = Scratch::new("badfiles");
    for (name, make) in [
        ("dangling.toml", 0),
        ("looping.toml", 1),
        ("binary.toml", 2),
    ] {
        let dir = scratch.path(&format!("dir-{make}"));
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join(name);
        match make {
            0 => std::os::unix::fs::symlink(dir.join("gone.txt"), &file).unwrap(),
            1 => std::os::unix::fs::symlink(&file, &file).unwrap(),
            _ => std::fs::write(&file, [0xff, 0xfe, 0x00, 0x9f]).unwrap(),
        }
        let output = output_within(
            &mut scratch.command(&["--list", "--scenarios-dir", path_str(&dir)]),
            LIMIT,
        );
        assert_code(&output, 255, &format!("{}: it is", file.display()));
    }
}

#[test]
fn a_kernel_from_a_pipe_is_refused_as_not_a_regular_file() {
    let scratch = Scratch::new("pipe");
    scratch.fake_qemu(&[], "exit 0");
    let image = std::fs::read(scratch.fake_bzimage()).unwrap();
    let mut child = scratch
        .command(&["--kernel", "/dev/stdin", "--vendor", "svm"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::feed_stdin(&mut child, image);
    assert!(wait_at_most(&mut child, LIMIT).is_some(), "hung");
    let output = child.wait_with_output().unwrap();
    assert_code(
        &output,
        255,
        "it is a pipe (FIFO); nestfault needs a regular file",
    );
}

/// SIGHUP (a closed terminal) ends a run like SIGTERM: 255, the report says which cases the
/// interruption cut short in every format, and the temporary directories are gone.
#[test]
fn sighup_interrupts_cleanly_and_every_format_says_so() {
    for format in ["json", "junit", "ktap"] {
        let scratch = Scratch::new(&format!("hup-{format}"));
        scratch.fake_qemu(&[kernel_line()], "exec sleep 30");
        let kernel = scratch.fake_bzimage();
        let report = scratch.path("report");
        let mut child = scratch
            .command(&[
                "--kernel",
                path_str(&kernel),
                "--vendor",
                "svm",
                "--format",
                format,
                "--output",
                path_str(&report),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The signal handler is in place once the run's temporary directory exists.
        let started = std::time::Instant::now();
        while scratch.leftovers().is_empty() && started.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: our own child, not yet waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        assert!(
            wait_at_most(&mut child, LIMIT).is_some(),
            "hung after SIGHUP"
        );
        let output = child.wait_with_output().unwrap();
        assert_code(&output, 255, "interrupted by SIGHUP");
        let human = text(&output.stdout);
        assert!(human.contains("interrupted by SIGHUP"), "{human}");
        let rendered = std::fs::read_to_string(&report).unwrap_or_default();
        assert!(
            rendered.contains("interrupted by SIGHUP"),
            "{format}:\n{rendered}"
        );
        assert!(!rendered.contains("exited with"), "{format}:\n{rendered}");
        assert_eq!(scratch.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn temporary_directories_of_killed_runs_are_removed_by_the_next_run() {
    let scratch = Scratch::new("stale");
    // Above any pid_max (at most 2^22): this process is gone.
    let stale = scratch.path(&format!("tmp/nestfault-kernel-{}-AbC123", 1u32 << 23));
    std::fs::create_dir_all(stale.join("unpacked")).unwrap();
    let live = scratch.path(&format!(
        "tmp/nestfault-kernel-{}-XyZ789",
        std::process::id()
    ));
    std::fs::create_dir_all(&live).unwrap();
    let output = output_within(&mut scratch.command(&["--list"]), LIMIT);
    assert_eq!(output.status.code(), Some(0));
    assert!(!stale.exists(), "the stale directory is still there");
    assert!(live.exists(), "a live process's directory was removed");
}

/// A verdict line for `id` with `status` and a first diagnosis line `why`.
fn verdict_line(id: &str, status: Status, why: Option<&str>) -> String {
    Record::Verdict(Box::new(RunResult {
        id: id.into(),
        status,
        expected: ExitValues(vec![("exit_code".into(), 0x400)]),
        actual: Observed::AsExpected,
        diagnosis: why.map(str::to_string),
        duration_ms: 30,
    }))
    .to_line()
}

const FORCED: &str = "svm/pt_page_unmapped/forced";
/// Globs (not names): the emulated and forced paths of one scenario.
const TWO_PATHS: [&str; 4] = [
    "--scenario",
    "svm/pt_page_unmapped/emulate?",
    "--scenario",
    "svm/pt_page_unmapped/force?",
];

/// A scratch directory whose fake kernel passes [`CASE`] and ends [`FORCED`] with `status`.
fn forced_case_ends(name: &str, status: Status, why: &str) -> Scratch {
    let scratch = Scratch::new(name);
    scratch.fake_qemu(
        &[
            kernel_line(),
            passed_line(),
            verdict_line(FORCED, status, Some(why)),
            Record::Done.to_line(),
        ],
        "exit 0",
    );
    scratch
}

/// Issue 19: a case not run for a setting this kernel lacks (the forced-emulation prefix off,
/// as distributions ship it) is listed with how to enable it, and never turns a run that
/// otherwise passed into 125; but a case the user named that cannot run is theirs to fix (255),
/// and a selection none of which could run was not judged (125).
#[test]
fn cases_not_run_here_are_listed_not_untestable() {
    let why = "kvm's force_emulation_prefix is 0: turn it on at runtime with `echo 1 | sudo tee \
               /sys/module/kvm/parameters/force_emulation_prefix`";
    let scratch = forced_case_ends("not-run", Status::NotRun, why);
    let run = |extra: &[&str]| {
        let kernel = scratch.fake_bzimage();
        let mut args = vec!["--kernel", path_str(&kernel), "--vendor", "svm"];
        args.extend_from_slice(extra);
        output_within(&mut scratch.command(&args), LIMIT)
    };
    let output = run(&TWO_PATHS);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    // The matrix's cell for it, the forced column of the scenario's row.
    assert!(
        stdout.contains("aligned  within   -         ok                  not run"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("not run (1 case): {why}")),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");

    let named = run(&["--scenario", CASE, "--scenario", FORCED]);
    assert_code(
        &named,
        255,
        &format!("{FORCED} named on the command line cannot run here"),
    );

    let only_forced = run(&["--scenario", "svm/pt_page_unmapped/force?"]);
    assert_eq!(
        only_forced.status.code(),
        Some(125),
        "{}",
        text(&only_forced.stdout)
    );
}

/// Issue 19: a row that fails only as a documented open finding is an expected failure: it
/// passes the run unless --strict; an unexpected pass counts as a pass.
#[test]
fn expected_failures_pass_unless_strict() {
    let finding = "expected failure: the open finding \"stale guest-linear address\"";
    let scratch = forced_case_ends("xfail", Status::Xfail, finding);
    let kernel = scratch.fake_bzimage();
    let run = |extra: &[&str]| {
        let mut args = vec!["--kernel", path_str(&kernel), "--vendor", "svm"];
        args.extend_from_slice(&TWO_PATHS);
        args.extend_from_slice(extra);
        output_within(&mut scratch.command(&args), LIMIT)
    };
    let output = run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("xfail (1 case): the open finding"),
        "{stdout}"
    );
    assert!(stdout.contains("1 xfail"), "{stdout}");
    let verbose = run(&["--verbose"]);
    assert!(
        text(&verbose.stdout).contains(&format!("XFAIL   {FORCED}")),
        "{}",
        text(&verbose.stdout)
    );
    let ktap = run(&["--format", "ktap"]);
    assert!(
        text(&ktap.stdout).contains(&format!("ok 2 {FORCED} # XFAIL {finding}")),
        "{}",
        text(&ktap.stdout)
    );
    assert_eq!(run(&["--strict"]).status.code(), Some(1));
}

/// Issue 19: --path forced with the prefix turned off by the user's own --kernel-param asks
/// for what cannot run: 255 before any boot.
#[test]
fn forced_path_with_the_prefix_off_is_a_contradiction() {
    let scratch = Scratch::new("forced-off");
    scratch.fake_qemu(&[], "exit 0");
    let output = run_fake_kernel(
        &scratch,
        &[
            "--path",
            "forced",
            "--kernel-param",
            "kvm.force_emulation_prefix=0",
        ],
    );
    assert_code(
        &output,
        255,
        "--path forced asks for the forced-emulation prefix",
    );
}

/// Issue 19: a /dev/kvm this user cannot open is the machine's to fix (255, naming the
/// device's mode and group), not a kernel that cannot be judged (125 would skip every commit
/// of a bisect). Run as nobody when the tests run as root.
#[test]
fn a_dev_kvm_this_user_cannot_open_is_255() {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut command = std::process::Command::new(support::binary());
    command.args(["--vendor", "svm", "--scenario", CASE]);
    if root {
        std::os::unix::process::CommandExt::uid(&mut command, 65534);
        std::os::unix::process::CommandExt::gid(&mut command, 65534);
    }
    let output = output_within(&mut command, LIMIT);
    let stderr = text(&output.stderr);
    if output.status.code() != Some(255) && !stderr.contains("/dev/kvm") {
        eprintln!("note: this user may open /dev/kvm; nothing to check here");
        return;
    }
    assert_code(&output, 255, "/dev/kvm");
    assert!(
        stderr.contains("mode") || stderr.contains("does not exist"),
        "{stderr}"
    );
}
