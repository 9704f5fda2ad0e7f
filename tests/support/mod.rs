//! What the CLI tests share: the binary under test, scratch directories, a fake kernel image and
//! a fake QEMU that prints a scripted console, so that the outer side of `--kernel` runs end to
//! end in milliseconds without booting anything.

// Each test crate uses a part of this.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// This build's nestfault, or NESTFAULT_UNDER_TEST.
pub fn binary() -> PathBuf {
    std::env::var_os("NESTFAULT_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nestfault")))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory of its own for one test, with `tmp/` for the run's TMPDIR; removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nestfault-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    /// A file with a bzImage setup header (HdrS, a version string) and nothing bootable.
    pub fn fake_bzimage(&self) -> PathBuf {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x600u16.to_le_bytes());
        let version = b"6.1.0-fake (test@nestfault) #1 SMP";
        image[0x800..0x800 + version.len()].copy_from_slice(version);
        let path = self.path("bzImage");
        std::fs::write(&path, image).unwrap();
        path
    }

    /// `bin/qemu-system-x86_64`: prints `console` as the guest's serial console, then runs the
    /// shell command `then` (`exit 0`, `exec sleep 30`, ...).
    pub fn fake_qemu(&self, console: &[String], then: &str) {
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = format!(
            "#!/bin/sh\ncat <<'END_OF_CONSOLE'\n{}\nEND_OF_CONSOLE\n{then}\n",
            console.join("\n")
        );
        let qemu = bin.join("qemu-system-x86_64");
        std::fs::write(&qemu, script).unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// nestfault with `args`, its TMPDIR in here and `bin/` first in PATH.
    pub fn command(&self, args: &[&str]) -> Command {
        let path = std::env::var("PATH").unwrap_or_default();
        let mut command = Command::new(binary());
        command
            .args(args)
            .env("TMPDIR", self.path("tmp"))
            // The vmlinux cache (boot::vmlinux) of the scratch directory, not the user's: a fake
            // kernel's "no vmlinux" must not land in ~/.cache.
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("PATH", format!("{}:{path}", self.path("bin").display()))
            .stdin(Stdio::null());
        command
    }

    /// The run's temporary directories still there.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits up to `limit` for `child`; kills it and returns None if it is still running then.
pub fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `command` with stdout and stderr captured, giving up (and failing) after `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nestfault");
    // Pipes are read after the end: these tests print far less than a pipe holds.
    let status = wait_at_most(&mut child, limit);
    let output = child.wait_with_output().unwrap();
    assert!(
        status.is_some(),
        "still running after {limit:?} (killed); stderr:\n{}",
        text(&output.stderr)
    );
    output
}

/// Writes `bytes` to the child's stdin from a thread, then closes it.
pub fn feed_stdin(child: &mut Child, bytes: Vec<u8>) {
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}
