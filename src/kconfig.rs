//! `nestfault kconfig`: the kernel configuration a kernel needs so that nestfault can boot it in
//! an emulator and judge its KVM, as a Kconfig fragment or applied to a kernel tree.
//!
//! Applied to a tree it is `make tinyconfig`, the fragment merged by the tree's own
//! `scripts/kconfig/merge_config.sh`, then `make olddefconfig`. olddefconfig drops, without a
//! word, every symbol whose dependencies the tree does not meet; so the result is read back and
//! each wanted symbol that did not survive is reported with its `depends on` lines from the
//! tree's Kconfig files.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boot::{config_value, Location};
use crate::path_io::PathIo;

/// How KVM is built: into the kernel (nothing to load; the fastest loop) or as modules, which
/// `--kernel DIR` takes from the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmBuild {
    BuiltIn,
    Modules,
}

/// A group of symbols and why nestfault needs them.
struct Group {
    why: &'static str,
    symbols: &'static [(&'static str, &'static str)],
}

const GROUPS: &[Group] = &[
    Group {
        why: "64-bit x86 that runs on the emulated AMD (QEMU) and Intel (Bochs) CPUs",
        symbols: &[
            ("64BIT", "y"),
            ("SMP", "y"),
            ("NR_CPUS", "2"),
            ("CPU_SUP_AMD", "y"),
            ("CPU_SUP_INTEL", "y"),
        ],
    },
    Group {
        why: "serial console: verdicts reach the host as lines on ttyS0, and an early crash \
              leaves a trace there",
        symbols: &[
            ("PRINTK", "y"),
            ("EARLY_PRINTK", "y"),
            ("TTY", "y"),
            ("SERIAL_8250", "y"),
            ("SERIAL_8250_CONSOLE", "y"),
        ],
    },
    Group {
        why: "nestfault's /init comes in an initramfs and mounts /dev, /proc and /sys",
        symbols: &[
            ("BLK_DEV_INITRD", "y"),
            ("DEVTMPFS", "y"),
            ("PROC_FS", "y"),
            ("PROC_SYSCTL", "y"),
            ("SYSFS", "y"),
            ("SHMEM", "y"),
            ("TMPFS", "y"),
        ],
    },
    Group {
        why: "/init is the nestfault binary: a dynamically linked, multi-threaded ELF \
              executable whose C library uses uid system calls and futexes",
        symbols: &[("BINFMT_ELF", "y"), ("MULTIUSER", "y"), ("FUTEX", "y")],
    },
    Group {
        why: "power-off when the suite is done (ACPI S5); under QEMU, ACPI finds its tables \
              only with PCI: without it the kernel halts instead and the emulator must be killed",
        symbols: &[("PM", "y"), ("ACPI", "y"), ("PCI", "y")],
    },
];

const KVM_BUILT_IN: Group = Group {
    why: "the hypervisor under test, both vendors, built in: nothing to load",
    symbols: &[
        ("VIRTUALIZATION", "y"),
        ("KVM", "y"),
        ("KVM_AMD", "y"),
        ("KVM_INTEL", "y"),
    ],
};

const KVM_MODULES: Group = Group {
    why: "the hypervisor under test, both vendors, as modules: `nestfault --kernel DIR` takes \
          the .ko files from the build tree, no modules_install needed",
    symbols: &[
        ("MODULES", "y"),
        ("VIRTUALIZATION", "y"),
        ("KVM", "m"),
        ("KVM_AMD", "m"),
        ("KVM_INTEL", "m"),
    ],
};

/// One wanted setting: `CONFIG_<name>=<value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: &'static str,
}

fn groups(kvm: KvmBuild) -> impl Iterator<Item = &'static Group> {
    let kvm_group = match kvm {
        KvmBuild::BuiltIn => &KVM_BUILT_IN,
        KvmBuild::Modules => &KVM_MODULES,
    };
    GROUPS.iter().chain([kvm_group])
}

/// Every setting the fragment asks for.
pub fn settings(kvm: KvmBuild) -> Vec<Setting> {
    groups(kvm)
        .flat_map(|group| group.symbols)
        .map(|&(name, value)| Setting { name, value })
        .collect()
}

/// The fragment as text: each group under a comment saying why.
pub fn fragment(kvm: KvmBuild) -> String {
    let mut text = String::from(
        "# What nestfault needs to boot a kernel in QEMU or Bochs and judge its KVM.\n\
         # Apply on top of `make tinyconfig` (nestfault kconfig --tree DIR does).\n",
    );
    for group in groups(kvm) {
        let _ = writeln!(text, "\n# {}", group.why);
        for (name, value) in group.symbols {
            let _ = writeln!(text, "CONFIG_{name}={value}");
        }
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    #[error(
        "{} is not a kernel source tree (no Makefile, Kconfig and scripts/kconfig/merge_config.sh)",
        .0.display()
    )]
    NotATree(PathBuf),

    #[error(
        "{} not found: install the kernel's build tools with `sudo apt-get install {BUILD_PACKAGES}`",
        .0.join(", ")
    )]
    ToolsMissing(Vec<&'static str>),

    #[error(transparent)]
    Io(PathIo),

    #[error(
        "{} lacks {} of the settings nestfault needs: make olddefconfig dropped them, as their \
         dependencies are not met in this tree:\n{}",
        config.display(),
        settings.len(),
        describe_dropped(settings).trim_end()
    )]
    Dropped {
        config: PathBuf,
        settings: Vec<Dropped>,
    },

    #[error("`{command}` failed in {} ({status}):\n{output}", tree.display())]
    Make {
        command: String,
        tree: PathBuf,
        status: String,
        output: String,
    },
}

/// What building a kernel needs on Debian/Ubuntu (the .deb packages).
pub const BUILD_PACKAGES: &str = "gcc make flex bison bc libelf-dev libssl-dev cpio";
/// The programs configuring a tree runs, which those packages provide.
const CONFIG_TOOLS: [&str; 4] = ["make", "gcc", "flex", "bison"];

/// A wanted setting that the tree's `.config` does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub setting: Setting,
    /// The value in .config, None when unset.
    pub got: Option<String>,
    /// Why, from the tree's Kconfig: its `depends on` lines, or that it has no such symbol.
    pub why: String,
}

/// Writes `DIR/.config` as tinyconfig plus the fragment, and returns the settings that
/// olddefconfig dropped (empty when the .config has them all).
pub fn configure_tree(tree: &Path, kvm: KvmBuild) -> Result<Vec<Dropped>, KconfigError> {
    let is_tree = ["Makefile", "Kconfig", "scripts/kconfig/merge_config.sh"]
        .iter()
        .all(|file| tree.join(file).is_file());
    if !is_tree {
        return Err(KconfigError::NotATree(tree.to_owned()));
    }
    let missing: Vec<&str> = CONFIG_TOOLS
        .into_iter()
        .filter(|tool| Location::Program(tool).find().is_none())
        .collect();
    if !missing.is_empty() {
        return Err(KconfigError::ToolsMissing(missing));
    }
    run_in(tree, Command::new("make").arg("tinyconfig"))?;
    // Beside .config, where make's own outputs go; removed again below. Named relative to the
    // tree, where the script runs.
    let fragment_name = ".nestfault-kconfig.fragment";
    let fragment_path = tree.join(fragment_name);
    fs::write(&fragment_path, fragment(kvm))
        .map_err(|cause| KconfigError::Io(PathIo::new("write", fragment_path.clone(), cause)))?;
    let merged = run_in(
        tree,
        Command::new("sh")
            .arg("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config", fragment_name]),
    );
    let _ = fs::remove_file(&fragment_path);
    merged?;
    run_in(tree, Command::new("make").arg("olddefconfig"))?;
    let config_path = tree.join(".config");
    let config = fs::read_to_string(&config_path)
        .map_err(|cause| KconfigError::Io(PathIo::new("read", config_path, cause)))?;
    Ok(dropped(&config, kvm, |name| depends_of(tree, name)))
}

fn run_in(tree: &Path, command: &mut Command) -> Result<(), KconfigError> {
    let text = format!("{command:?}").replace('"', "");
    let output = command
        .current_dir(tree)
        .output()
        .map_err(|cause| KconfigError::Io(PathIo::new("run", PathBuf::from(&text), cause)))?;
    if output.status.success() {
        return Ok(());
    }
    let mut all = String::from_utf8_lossy(&output.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&output.stderr));
    let tail: Vec<&str> = all.lines().rev().take(20).collect();
    Err(KconfigError::Make {
        command: text,
        tree: tree.to_owned(),
        status: output.status.to_string(),
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// The wanted settings `config` lacks, each with `why_of(name)`.
fn dropped(config: &str, kvm: KvmBuild, why_of: impl Fn(&str) -> String) -> Vec<Dropped> {
    settings(kvm)
        .into_iter()
        .filter_map(|setting| {
            let got = config_value(config, setting.name);
            (got != Some(setting.value)).then(|| Dropped {
                setting,
                got: got.map(str::to_owned),
                why: why_of(setting.name),
            })
        })
        .collect()
}

/// Where the tree's Kconfig files define `name`, and its `depends on` lines there.
fn depends_of(tree: &Path, name: &str) -> String {
    let mut found = Vec::new();
    visit_kconfig_files(tree, &mut |path, text| {
        for depends in definition_depends(text, name) {
            let place = path
                .strip_prefix(tree)
                .unwrap_or(path)
                .display()
                .to_string();
            found.push((place, depends));
        }
    });
    if found.is_empty() {
        return "this tree's Kconfig defines no such symbol (renamed or too old a kernel?)".into();
    }
    found
        .into_iter()
        .map(|(place, depends)| match depends.as_slice() {
            [] => format!("{place}: no `depends on`: see its prompt's `if`, or what selects it"),
            lines => format!("{place}: {}", lines.join("; ")),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Visits the Kconfig files under `dir`, leaving out other architectures than x86 (`arch/*/`):
/// their definitions of a symbol do not apply.
fn visit_kconfig_files(dir: &Path, visit: &mut dyn FnMut(&Path, &str)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let in_arch = dir.file_name().is_some_and(|name| name == "arch");
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let other_arch = in_arch && name != "x86";
        if file_type.is_dir() && !name.starts_with('.') && !other_arch {
            visit_kconfig_files(&path, visit);
        } else if file_type.is_file() && name.starts_with("Kconfig") {
            if let Ok(text) = fs::read_to_string(&path) {
                visit(&path, &text);
            }
        }
    }
}

/// For each `config NAME` / `menuconfig NAME` entry in Kconfig `text`, its `depends on` lines
/// (an entry ends at the next line that is not indented).
fn definition_depends(text: &str, name: &str) -> Vec<Vec<String>> {
    let mut entries = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        let opens_entry = ["config ", "menuconfig "]
            .iter()
            .find_map(|keyword| trimmed.strip_prefix(keyword))
            .map(str::trim);
        if let Some(defined) = opens_entry {
            entries.extend(current.take());
            current = (defined == name).then(Vec::new);
            continue;
        }
        if !line.starts_with([' ', '\t']) && !trimmed.is_empty() {
            entries.extend(current.take());
        }
        if let (Some(depends), Some(lines)) = (trimmed.strip_prefix("depends on"), &mut current) {
            lines.push(format!("depends on {}", depends.trim()));
        }
    }
    entries.extend(current);
    entries
}

/// `nestfault kconfig [--modules] [--tree DIR]`.
#[derive(Debug, clap::Args)]
pub struct KconfigArgs {
    /// Build KVM as modules (CONFIG_KVM=m) instead of into the kernel.
    #[arg(long)]
    pub modules: bool,

    /// Write a minimal .config into this kernel tree (make tinyconfig, merge the fragment, make
    /// olddefconfig) and check that it kept every wanted symbol. Without it: print the fragment.
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,
}

/// Runs `nestfault kconfig`: prints the fragment, or configures the tree and says what it wrote;
/// a tree whose .config lacks something is an error ([`KconfigError::Dropped`]).
pub fn run(args: &KconfigArgs) -> Result<(), KconfigError> {
    let kvm = if args.modules {
        KvmBuild::Modules
    } else {
        KvmBuild::BuiltIn
    };
    let Some(tree) = &args.tree else {
        print!("{}", fragment(kvm));
        return Ok(());
    };
    let lost = configure_tree(tree, kvm)?;
    let config = tree.join(".config");
    if !lost.is_empty() {
        return Err(KconfigError::Dropped {
            config,
            settings: lost,
        });
    }
    let (kvm_text, targets) = match kvm {
        KvmBuild::BuiltIn => ("built in", "bzImage"),
        KvmBuild::Modules => ("as modules", "bzImage modules"),
    };
    eprintln!(
        "nestfault: wrote {} ({} settings for nestfault, KVM {kvm_text}); next: make -j$(nproc) \
         {targets}",
        config.display(),
        settings(kvm).len(),
    );
    Ok(())
}

/// One line per dropped setting, with why under it.
fn describe_dropped(settings: &[Dropped]) -> String {
    let mut text = String::new();
    for dropped in settings {
        let Setting { name, value } = dropped.setting;
        let got = dropped.got.as_deref().unwrap_or("unset");
        let _ = writeln!(text, "  CONFIG_{name}={value} (got {got}):");
        for line in dropped.why.lines() {
            let _ = writeln!(text, "      {line}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_has_every_setting_under_a_comment() {
        for kvm in [KvmBuild::BuiltIn, KvmBuild::Modules] {
            let text = fragment(kvm);
            for setting in settings(kvm) {
                let line = format!("CONFIG_{}={}\n", setting.name, setting.value);
                assert!(text.contains(&line), "{line}");
            }
            assert!(text.lines().next().unwrap().starts_with("# "));
        }
        assert!(fragment(KvmBuild::BuiltIn).contains("CONFIG_KVM_AMD=y"));
        assert!(fragment(KvmBuild::Modules).contains("CONFIG_KVM_AMD=m"));
        assert!(fragment(KvmBuild::Modules).contains("CONFIG_MODULES=y"));
        assert!(fragment(KvmBuild::BuiltIn).contains("CONFIG_PCI=y"));
    }

    #[test]
    fn a_complete_config_drops_nothing_and_a_wrong_value_is_caught() {
        let complete: String = settings(KvmBuild::Modules)
            .iter()
            .map(|s| format!("CONFIG_{}={}\n", s.name, s.value))
            .collect();
        assert!(dropped(&complete, KvmBuild::Modules, |_| String::new()).is_empty());
        // Built-in wanted, modules found: every KVM symbol is reported.
        let lost = dropped(&complete, KvmBuild::BuiltIn, |_| "why".into());
        let names: Vec<&str> = lost.iter().map(|d| d.setting.name).collect();
        assert_eq!(names, ["KVM", "KVM_AMD", "KVM_INTEL"]);
        assert_eq!(lost[0].got.as_deref(), Some("m"));
    }

    #[test]
    fn an_unset_symbol_is_dropped_with_its_reason() {
        let config = "CONFIG_ACPI=y\n# CONFIG_PCI is not set\nCONFIG_PCI_QUIRKS=y\n";
        let lost = dropped(config, KvmBuild::BuiltIn, |name| format!("because {name}"));
        let pci = lost.iter().find(|d| d.setting.name == "PCI").unwrap();
        assert_eq!(pci.got, None);
        assert_eq!(pci.why, "because PCI");
        assert!(!lost.iter().any(|d| d.setting.name == "ACPI"));
    }

    #[test]
    fn dropped_settings_are_an_error_naming_each_and_why() {
        let config = "CONFIG_ACPI=y\n# CONFIG_PCI is not set\nCONFIG_KVM=m\n";
        let lost = dropped(config, KvmBuild::BuiltIn, |name| {
            format!("drivers/x/Kconfig: depends on NOT_{name}")
        });
        let error = KconfigError::Dropped {
            config: PathBuf::from("/t/.config"),
            settings: lost,
        };
        let text = error.to_string();
        assert!(
            text.contains(
                "  CONFIG_PCI=y (got unset):\n      drivers/x/Kconfig: depends on NOT_PCI"
            ),
            "{text}"
        );
        assert!(text.contains("  CONFIG_KVM=y (got m):"), "{text}");
        assert!(!text.contains("CONFIG_ACPI"), "{text}");
    }

    #[test]
    fn finds_depends_of_a_definition() {
        let text = "config ACPI\n\tbool \"ACPI\"\n\tdepends on ARCH_SUPPORTS_ACPI\n\
                    \tdepends on !X86_32 || PCI\n\thelp\n\t  long text\n\n\
                    config ACPI_OTHER\n\tdepends on FOO\n\
                    if ACPI\nmenuconfig ACPI\n\tdepends on BAR\nendif\n";
        assert_eq!(
            definition_depends(text, "ACPI"),
            vec![
                vec![
                    "depends on ARCH_SUPPORTS_ACPI".to_string(),
                    "depends on !X86_32 || PCI".to_string()
                ],
                vec!["depends on BAR".to_string()],
            ]
        );
        assert!(definition_depends(text, "PCI").is_empty());
    }
}
