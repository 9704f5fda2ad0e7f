//! Builds the L1 stub for x86_64-unknown-none, so that `cargo build` from a fresh clone needs no
//! manual step.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    build_stub(&manifest_dir, &out_dir);
}

/// rustup installs the targets rust-toolchain.toml lists when it installs the toolchain, but not
/// into a toolchain that was already there: add the guest's target then, so that a fresh clone
/// builds with no manual step.
fn ensure_guest_target() {
    const TARGET: &str = "x86_64-unknown-none";
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let installed = sysroot.is_some_and(|root| root.join("lib/rustlib").join(TARGET).exists());
    let toolchain = env::var("RUSTUP_TOOLCHAIN");
    if let (false, Ok(toolchain)) = (installed, toolchain) {
        println!("cargo:warning=installing the {TARGET} target (for the L1 stub) into {toolchain}");
        let status = Command::new("rustup")
            .args(["target", "add", "--toolchain", &toolchain, TARGET])
            .status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "`rustup target add {TARGET}` failed; install the target by hand"
        );
    }
}

fn build_stub(manifest_dir: &Path, out_dir: &Path) {
    ensure_guest_target();
    let stub_dir = manifest_dir.join("guest/stub");
    for watched in [
        "guest/stub/src",
        "guest/stub/Cargo.toml",
        "guest/stub/link.ld",
        "guest/stub/build.rs",
        "guest/stub/.cargo",
        "guest/protocol/src",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // A target dir of its own: the outer build holds the lock on ours.
    let target_dir = out_dir.join("stub-target");
    let mut command = Command::new(cargo);
    command
        .current_dir(&stub_dir)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    // What the outer build was invoked with (clippy's wrapper, coverage flags, a host --target)
    // must not leak into the stub's build; its own .cargo/config.toml has the flags it needs.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let inherited_cargo_setting = key.starts_with("CARGO_") && key != "CARGO_HOME";
        if inherited_cargo_setting
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            command.env_remove(&key);
        }
    }
    let status = command
        .status()
        .expect("could not run cargo to build guest/stub");
    assert!(
        status.success(),
        "building guest/stub failed; is the x86_64-unknown-none target installed? \
         (rust-toolchain.toml lists it; `rustup target add x86_64-unknown-none`)"
    );
    let built = target_dir.join("x86_64-unknown-none/release/nestfault-stub");
    fs::copy(&built, out_dir.join("l1-stub.elf")).expect("copy the stub image");
}
