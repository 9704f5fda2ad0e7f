//! Issue 22's findings, one test each: caches a CI runner can share. apt is faked (scripts first
//! on the PATH that play apt-get and apt-cache for a private suite, taking the same lock on the
//! package lists apt takes), so that concurrent fetches, an unreachable archive and a damaged
//! package are reproduced without a network.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{text, Scratch};

const LIMIT: Duration = Duration::from_secs(60);
const PACKAGE: &str = "linux-image-6.1.0-99-amd64-unsigned";
const VERSION: &str = "6.1.999-1";

/// One ar member: its 60-byte header and its data, padded to an even length.
fn ar_member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut member = format!(
        "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        0,
        0,
        0,
        "100644",
        data.len()
    )
    .into_bytes();
    assert_eq!(member.len(), 60);
    member.extend_from_slice(data);
    if data.len() % 2 == 1 {
        member.push(b'\n');
    }
    member
}

/// A whole .deb that holds no kernel: debian-binary, control.tar and an empty data.tar.
fn package_without_a_kernel() -> Vec<u8> {
    let mut deb = b"!<arch>\n".to_vec();
    deb.extend(ar_member("debian-binary", b"2.0\n"));
    deb.extend(ar_member("control.tar", &[0u8; 1024]));
    deb.extend(ar_member("data.tar", &[0u8; 1024]));
    deb
}

fn write_script(scratch: &Scratch, name: &str, body: &str) {
    let bin = scratch.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// apt-cache finds one kernel package; apt-get update takes the lists' lock as apt does (a second
/// update at the same time fails with apt's words), or, `unreachable`, warns as apt does with no
/// network and exits 0; apt-get download notes any overlap with another download.
fn fake_apt(scratch: &Scratch, unreachable: bool) {
    let state = scratch.path("apt-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("package.deb"), package_without_a_kernel()).unwrap();
    write_script(
        scratch,
        "apt-cache",
        &format!(
            "case \"$*\" in\n\
             *search*linux-image-*) {found};;\n\
             *policy*) for last; do :; done; echo \"$last:\"; echo '  Installed: (none)'; \
             echo '  Candidate: {VERSION}';;\n\
             esac\n",
            found = if unreachable {
                ":".to_string()
            } else {
                format!("echo '{PACKAGE} - a fake kernel'")
            }
        ),
    );
    let update = if unreachable {
        "echo \"W: Failed to fetch http://deb.example/debian/dists/bookworm/InRelease  \
         Temporary failure resolving 'deb.example'\" >&2\n\
         echo 'W: Some index files failed to download. They have been ignored, or old ones used \
         instead.' >&2\nexit 0"
            .to_string()
    } else {
        "lists=$(echo \"$*\" | sed -n 's/.*Dir::State::Lists=\\([^ ]*\\).*/\\1/p')\n\
         mkdir \"$lists/lock.d\" 2>/dev/null || { echo \"E: Could not get lock $lists/lock. It is \
         held by process 1 (apt-get)\" >&2; exit 100; }\n\
         sleep 1\n\
         touch \"$lists/fake_dists_bookworm_main_binary-amd64_Packages\"\n\
         rmdir \"$lists/lock.d\""
            .to_string()
    };
    write_script(
        scratch,
        "apt-get",
        &format!(
            "case \"$*\" in\n\
             *update*)\n{update};;\n\
             *download*)\n\
             mkdir '{state}/downloading' 2>/dev/null || echo overlap >> '{state}/overlaps'\n\
             sleep 1\n\
             cp '{state}/package.deb' '{PACKAGE}_{VERSION}_amd64.deb'\n\
             rmdir '{state}/downloading' 2>/dev/null;;\n\
             esac\n",
            state = state.display()
        ),
    );
}

fn nestfault(scratch: &Scratch) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut command = Command::new(support::binary());
    command
        .args(["--kernel", "debian:bookworm", "--vendor", "svm"])
        .env("PATH", format!("{}:{path}", scratch.path("bin").display()))
        .env("NESTFAULT_KERNEL_CACHE", scratch.path("kernels"))
        .env("XDG_CACHE_HOME", scratch.path("cache"))
        .env("TMPDIR", scratch.path("tmp"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Three runs for the same kernel on an empty cache: one fetches, the others wait for it and use
/// what it fetched. Before, apt's lock on the lists failed the others ("Could not get lock"),
/// blamed on the mirror. The fake package is no kernel, so each run ends on that, the same way.
#[test]
fn concurrent_cold_fetches_wait_for_each_other() {
    let scratch = Scratch::new("cold-fetches");
    fake_apt(&scratch, false);
    let children: Vec<_> = (0..3)
        .map(|_| nestfault(&scratch).spawn().unwrap())
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|mut child| {
            let status = support::wait_at_most(&mut child, LIMIT);
            let output = child.wait_with_output().unwrap();
            assert!(status.is_some(), "{}", text(&output.stderr));
            output
        })
        .collect();
    // Each run ends the same way, on the package that holds no kernel, not on the fetching.
    let last_line = |output: &std::process::Output| {
        text(&output.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let ending = last_line(&outputs[0]);
    assert!(
        ending.contains("no kernel") || ending.contains("not a Linux kernel"),
        "{ending}"
    );
    let mut waited = 0;
    let mut downloaded = 0;
    for output in &outputs {
        assert_eq!(last_line(output), ending);
        let stderr = text(&output.stderr);
        assert!(!stderr.contains("Could not get lock"), "{stderr}");
        assert_eq!(output.status.code(), Some(255), "{stderr}");
        waited +=
            usize::from(stderr.contains("waiting for another nestfault fetching debian:bookworm"));
        downloaded += usize::from(stderr.contains(": downloading"));
    }
    assert_eq!(
        downloaded, 1,
        "one run downloads, the others find its package"
    );
    assert!(waited >= 1, "a run that waited says so");
    assert!(
        !scratch.path("apt-state/overlaps").exists(),
        "two downloads at once"
    );
}

/// No network and an empty cache: the message says the archive could not be reached, with apt's
/// words, and that a cached kernel would run offline; before, "no Debian kernel found".
#[test]
fn an_unreachable_archive_is_said_to_be_one() {
    let scratch = Scratch::new("unreachable");
    fake_apt(&scratch, true);
    let output = support::output_within(&mut nestfault(&scratch), LIMIT);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Debian archive"),
        "{stderr}"
    );
    assert!(stderr.contains("Temporary failure resolving"), "{stderr}");
    assert!(stderr.contains("runs without the network"), "{stderr}");
    assert!(!stderr.contains("no Debian kernel found"), "{stderr}");
}

/// A package cut short in the cache (a killed download) is fetched again, saying so.
#[test]
fn a_damaged_cached_package_is_fetched_again() {
    let scratch = Scratch::new("damaged-deb");
    fake_apt(&scratch, false);
    std::fs::create_dir_all(scratch.path("kernels")).unwrap();
    let cached = scratch.path(&format!("kernels/{PACKAGE}_{VERSION}_amd64.deb"));
    // A whole .deb cut short in its last member.
    let whole = package_without_a_kernel();
    std::fs::write(&cached, &whole[..whole.len() - 100]).unwrap();
    let output = support::output_within(&mut nestfault(&scratch), LIMIT);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(stderr.contains("downloading it again"), "{stderr}");
    assert!(stderr.contains(": downloading"), "{stderr}");
}

/// `nestfault cache` says what each cache holds; `--clear KIND` empties one, `--clear` all.
#[test]
fn the_caches_are_listed_and_cleared() {
    let scratch = Scratch::new("cache-command");
    let write = |relative: &str, bytes: usize| {
        let path = scratch.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![0u8; bytes]).unwrap();
    };
    write("kernels/a.deb", 2000);
    write("kernels/tree/linux/Makefile", 30);
    write("cache/nestfault/vmlinux/k.vmlinux", 5000);
    write("cache/nestfault/unsigned/m.ko", 700);
    let run = |args: &[&str]| {
        let output = Command::new(support::binary())
            .arg("cache")
            .args(args)
            .env("NESTFAULT_KERNEL_CACHE", scratch.path("kernels"))
            .env("XDG_CACHE_HOME", scratch.path("cache"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    let listed = run(&[]);
    for line in [
        "kernels     2.0 kB in     1 files",
        "trees         30 B",
        "vmlinux     5.0 kB",
    ] {
        assert!(listed.contains(line), "{line:?} in:\n{listed}");
    }
    assert!(listed.contains("total       7.7 kB"), "{listed}");
    let cleared = run(&["--clear", "vmlinux"]);
    assert!(cleared.contains("cleared vmlinux"), "{cleared}");
    assert!(!scratch.path("cache/nestfault/vmlinux/k.vmlinux").exists());
    assert!(scratch.path("cache/nestfault/unsigned/m.ko").exists());
    run(&["--clear"]);
    for gone in [
        "kernels/a.deb",
        "kernels/tree/linux/Makefile",
        "cache/nestfault/unsigned/m.ko",
    ] {
        assert!(!scratch.path(gone).exists(), "{gone}");
    }
}
