//! `cargo xtask bench`: what the harness costs on top of booting the kernel under test. For one
//! kernel, under QEMU TCG (SVM) and Bochs (VMX), side by side in one run, three boots of the same
//! initramfs builder and /init:
//! - bare: `--bare-boot` without modules: boot, find no KVM, power off;
//! - kvm: `--bare-boot` with modules: boot, load the KVM modules (nested=1), power off;
//! - full: `--scenario all`.
//!
//! All get the kernel unpacked beforehand, so none pays for unpacking a .deb. The targets are on
//! full/bare: under 1.15x with QEMU TCG, under 1.10x with Bochs. full/kvm is what the harness
//! costs beyond making KVM available, which any KVM test needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::e2e::{build_nestfault, workspace_root};
use crate::kernels::{self, CacheArg, FetchedKernel};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// The kernel to measure: 6.1 or 7.2.
    #[arg(long, default_value = "7.2")]
    pub kernel: String,
    /// Pairs of runs under QEMU TCG (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub qemu_runs: usize,
    /// Pairs of runs under Bochs (about two minutes a pair); 0 skips Bochs.
    #[arg(long, default_value_t = 1)]
    pub bochs_runs: usize,
}

struct Setup {
    emulator: &'static str,
    vendor: &'static str,
    runs: usize,
    target: f64,
}

/// A kernel unpacked for direct use: the image and, if modular, its modules folder.
struct Unpacked {
    image: PathBuf,
    modules: Option<PathBuf>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let fetched = kernels::fetch_kernels(&args.cache.dir()?, std::slice::from_ref(&args.kernel))?;
    let kernel = fetched.first().context("no kernel fetched")?;
    let workspace = workspace_root();
    let nestfault = build_nestfault(&workspace)?;
    let unpacked = unpack(kernel, &workspace.join("target/bench").join(&kernel.label))?;
    let setups = [
        Setup {
            emulator: "qemu-tcg",
            vendor: "svm",
            runs: args.qemu_runs,
            target: 1.15,
        },
        Setup {
            emulator: "bochs",
            vendor: "vmx",
            runs: args.bochs_runs,
            target: 1.10,
        },
    ];
    let mut over = Vec::new();
    println!(
        "kernel {}: bare boot vs --scenario all (median of each)",
        kernel.label
    );
    for setup in setups.iter().filter(|setup| setup.runs > 0) {
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        // Interleaved, so that drift in the machine's load hits all alike.
        for _ in 0..setup.runs {
            for (kind, samples) in [Boot::Bare, Boot::Kvm, Boot::Full]
                .into_iter()
                .zip(&mut times)
            {
                samples.push(time(&nestfault, &unpacked, setup, kind)?);
            }
        }
        let [bare, kvm, full] = times.map(|mut samples| median(&mut samples).as_secs_f64());
        let ratio = full / bare;
        let verdict = if ratio < setup.target { "ok" } else { "OVER" };
        println!(
            "{:9} bare {bare:6.2} s  kvm {kvm:6.2} s  full {full:6.2} s  full/bare {ratio:.3} (target < {:.2}) {verdict}  full/kvm {:.3}",
            setup.emulator,
            setup.target,
            full / kvm,
        );
        if ratio >= setup.target {
            over.push(setup.emulator);
        }
    }
    if !over.is_empty() {
        bail!("overhead above target under {}", over.join(", "));
    }
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Boot {
    Bare,
    Kvm,
    Full,
}

/// Wall time of one `nestfault --kernel` run, checked for the outcome it must have.
fn time(nestfault: &Path, kernel: &Unpacked, setup: &Setup, boot: Boot) -> Result<Duration> {
    let mut command = Command::new(nestfault);
    command.arg("--kernel").arg(&kernel.image).args([
        "--vendor",
        setup.vendor,
        "--emulator",
        setup.emulator,
    ]);
    command.args(["--scenario", "all", "--format", "json"]);
    if let (Some(modules), Boot::Kvm | Boot::Full) = (&kernel.modules, boot) {
        command.arg("--modules").arg(modules);
    }
    if boot != Boot::Full {
        command.arg("--bare-boot");
    }
    let bare = boot != Boot::Full;
    let started = Instant::now();
    let output = command.output().context("running nestfault")?;
    let elapsed = started.elapsed();
    // A bare boot reports nothing tested (125); a full run must have run every case (0 or 1).
    let code = output.status.code();
    let expected = if bare {
        code == Some(125)
    } else {
        matches!(code, Some(0 | 1))
    };
    if !expected {
        bail!(
            "{} {} run exited {code:?}:\n{}",
            setup.emulator,
            if bare { "--bare-boot" } else { "full" },
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

/// Unpacks the kernel's packages with dpkg-deb (once; kept under target/bench).
fn unpack(kernel: &FetchedKernel, dir: &Path) -> Result<Unpacked> {
    if !dir.join(".unpacked").exists() {
        std::fs::create_dir_all(dir)?;
        for deb in std::iter::once(&kernel.image).chain(&kernel.modules) {
            let status = Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(dir)
                .status()
                .context("running dpkg-deb")?;
            if !status.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
        }
        std::fs::write(dir.join(".unpacked"), "")?;
    }
    // Either layout (docs/emulators.md): boot/vmlinuz-<abi> + lib/modules/<abi>, or
    // usr/lib/modules/<abi>/vmlinuz.unsigned beside its kernel/ tree.
    for modules_root in [dir.join("lib/modules"), dir.join("usr/lib/modules")] {
        let Ok(entries) = std::fs::read_dir(&modules_root) else {
            continue;
        };
        for entry in entries {
            let release_dir = entry?.path();
            let release = release_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let image = [
                release_dir.join("vmlinuz.unsigned"),
                release_dir.join("vmlinuz"),
                dir.join(format!("boot/vmlinuz-{release}")),
            ]
            .into_iter()
            .find(|path| path.exists());
            if let Some(image) = image {
                return Ok(Unpacked {
                    image,
                    modules: Some(release_dir),
                });
            }
        }
    }
    bail!("no kernel image found in {}", dir.display())
}
