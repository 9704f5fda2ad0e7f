//! `nestfault cache`: where nestfault's caches are, what each holds and its size, and clearing
//! them (all, or one kind). Runs may share a cache (docs/ci.md); clear one only when no run is
//! using it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::boot;
use crate::debian;

/// One kind of cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheKind {
    /// Debian kernel packages and the private apt configurations that found them
    /// (`--kernel debian:...`, `cargo xtask kernels`).
    Kernels,
    /// The e2e's kernel-tree stage: linux-source unpacked, built and kept as git trees.
    Trees,
    /// Uncompressed kernels extracted from bzImages.
    Vmlinux,
    /// Unsigned, stripped copies of KVM modules.
    Unsigned,
}

impl CacheKind {
    const ALL: [CacheKind; 4] = [
        CacheKind::Kernels,
        CacheKind::Trees,
        CacheKind::Vmlinux,
        CacheKind::Unsigned,
    ];

    fn name(self) -> &'static str {
        match self {
            CacheKind::Kernels => "kernels",
            CacheKind::Trees => "trees",
            CacheKind::Vmlinux => "vmlinux",
            CacheKind::Unsigned => "unsigned",
        }
    }

    /// The directory, where one can be named at all (no $HOME and no override: none).
    fn dir(self) -> Option<PathBuf> {
        let kernels = debian::kernels::default_cache_dir().ok();
        match self {
            CacheKind::Kernels => kernels,
            CacheKind::Trees => kernels.map(|dir| dir.join(TREES)),
            CacheKind::Vmlinux => boot::cache_dir(boot::VMLINUX_CACHE),
            CacheKind::Unsigned => boot::cache_dir(boot::UNSIGNED_CACHE),
        }
    }
}

/// The trees' folder inside the kernels cache, which the kernels' size leaves out.
const TREES: &str = "tree";

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// Remove what the caches hold: all of them, or one kind.
    #[arg(long, value_name = "KIND")]
    pub clear: Option<Option<CacheKind>>,
}

/// Lists the caches, or clears them, and says what it did.
pub fn run(args: &CacheArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(clear) = args.clear {
        let kinds = clear.map_or(CacheKind::ALL.to_vec(), |kind| vec![kind]);
        for kind in kinds {
            let Some(dir) = kind.dir() else { continue };
            let freed = usage(&dir, kind);
            clear_dir(&dir, kind)?;
            writeln!(
                out,
                "cleared {:<8} {} ({} freed)",
                kind.name(),
                dir.display(),
                human(freed.bytes)
            )?;
        }
        return Ok(());
    }
    let mut total = 0;
    for kind in CacheKind::ALL {
        let Some(dir) = kind.dir() else {
            writeln!(out, "{:<8} (no cache: $HOME is not set)", kind.name())?;
            continue;
        };
        let used = usage(&dir, kind);
        total += used.bytes;
        writeln!(
            out,
            "{:<8} {:>9} in {:>5} files  {}",
            kind.name(),
            human(used.bytes),
            used.files,
            dir.display()
        )?;
    }
    writeln!(
        out,
        "total    {:>9}  (`nestfault cache --clear [KIND]` removes it)",
        human(total)
    )?;
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Usage {
    bytes: u64,
    files: u64,
}

/// What `dir` holds, the trees left out of the kernels (they are a kind of their own).
fn usage(dir: &Path, kind: CacheKind) -> Usage {
    let mut used = Usage::default();
    let skip = (kind == CacheKind::Kernels).then(|| dir.join(TREES));
    add_usage(dir, skip.as_deref(), &mut used);
    used
}

fn add_usage(dir: &Path, skip: Option<&Path>, used: &mut Usage) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if Some(path.as_path()) == skip {
            continue;
        }
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => add_usage(&path, skip, used),
            Ok(meta) => {
                used.bytes += meta.len();
                used.files += 1;
            }
            Err(_) => {}
        }
    }
}

/// Removes what `dir` holds (the trees kept when clearing the kernels), leaving `dir`.
fn clear_dir(dir: &Path, kind: CacheKind) -> anyhow::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(crate::path_io::PathIo::new("read", dir, error).into()),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if kind == CacheKind::Kernels && path == dir.join(TREES) {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|error| crate::path_io::PathIo::new("remove", &path, error))?;
    }
    Ok(())
}

/// `1.2 GB`, `340 MB`, `12 kB`, `17 B`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(17), "17 B");
        assert_eq!(human(12_345), "12.3 kB");
        assert_eq!(human(4_200_000_000), "4.2 GB");
    }

    #[test]
    fn the_kernels_leave_the_trees_out_and_clearing_keeps_them() {
        let dir = std::env::temp_dir().join(format!("nestfault-caches-{}", std::process::id()));
        fs::create_dir_all(dir.join(TREES).join("linux")).unwrap();
        fs::write(dir.join("kernel.deb"), [0u8; 100]).unwrap();
        fs::write(dir.join(TREES).join("linux").join("big"), [0u8; 1000]).unwrap();
        assert_eq!(
            usage(&dir, CacheKind::Kernels),
            Usage {
                bytes: 100,
                files: 1
            }
        );
        assert_eq!(usage(&dir.join(TREES), CacheKind::Trees).bytes, 1000);
        clear_dir(&dir, CacheKind::Kernels).unwrap();
        assert!(!dir.join("kernel.deb").exists());
        assert!(dir.join(TREES).join("linux").join("big").exists());
        clear_dir(&dir.join(TREES), CacheKind::Trees).unwrap();
        assert_eq!(usage(&dir, CacheKind::Kernels), Usage::default());
        fs::remove_dir_all(&dir).unwrap();
    }
}
