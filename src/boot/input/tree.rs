//! A kernel build tree given as `--kernel DIR`: its bzImage, and when its KVM is modular, the
//! modules it built, taken from where the build left them (no `make modules_install`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::boot::error::BootError;

/// Where kbuild leaves the x86 boot image.
const BZIMAGE: &str = "arch/x86/boot/bzImage";

/// A built tree: its bzImage, and its modules gathered under `workdir` when KVM is modular.
pub(crate) struct BuiltTree {
    pub(crate) image: PathBuf,
    pub(crate) modules_dir: Option<PathBuf>,
}

/// Opens `tree`, a kernel source tree or `O=` build directory that has been built.
pub(crate) fn open(tree: &Path, workdir: &Path) -> Result<BuiltTree, BootError> {
    if !tree.join("Makefile").is_file() && !tree.join(".config").is_file() {
        return Err(BootError::NotAKernel {
            path: tree.to_owned(),
            reason: "a directory, but no kernel tree (it has neither a Makefile nor a .config)"
                .into(),
        });
    }
    let image = tree.join(BZIMAGE);
    if !image.is_file() {
        return Err(BootError::TreeNotBuilt {
            tree: tree.to_owned(),
            missing: BZIMAGE,
            command: "make bzImage",
        });
    }
    let config_path = tree.join(".config");
    let config =
        fs::read_to_string(&config_path).map_err(|e| BootError::io("read", &config_path, e))?;
    let modules_dir = match config_value(&config, "KVM") {
        Some("m") => Some(gather_modules(tree, &workdir.join("tree-modules"))?),
        // Built in; or absent, which the guest reports as a kernel that cannot be judged.
        _ => None,
    };
    Ok(BuiltTree { image, modules_dir })
}

/// Links every module of `modules.order` (the modules this build made) into `into/kernel/`,
/// at its path in the tree, with `modules.builtin` beside: the shape of a modules directory.
/// Dependencies are then read from each module's `.modinfo` as for any modules directory.
fn gather_modules(tree: &Path, into: &Path) -> Result<PathBuf, BootError> {
    let order_path = tree.join("modules.order");
    let not_built = || BootError::TreeNotBuilt {
        tree: tree.to_owned(),
        missing: "modules.order (its .config has CONFIG_KVM=m)",
        command: "make modules",
    };
    let order = fs::read_to_string(&order_path).map_err(|_| not_built())?;
    if into.exists() {
        fs::remove_dir_all(into).map_err(|e| BootError::io("remove", into, e))?;
    }
    for entry in order.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // kbuild lists `dir/name.o` (newer) or `dir/name.ko` (older); the module is the .ko.
        let module = Path::new(entry.strip_suffix(".o").unwrap_or(entry)).with_extension("ko");
        // Absolute: the link must resolve from where it lies, whatever form `tree` came in.
        let built = fs::canonicalize(tree.join(&module)).map_err(|_| not_built())?;
        let link = into.join("kernel").join(&module);
        let parent = link.parent().unwrap_or(into);
        fs::create_dir_all(parent).map_err(|e| BootError::io("create", parent, e))?;
        symlink(&built, &link).map_err(|e| BootError::io("link", &link, e))?;
    }
    if let Ok(builtin) = fs::canonicalize(tree.join("modules.builtin")) {
        let link = into.join("modules.builtin");
        symlink(&builtin, &link).map_err(|e| BootError::io("link", &link, e))?;
    }
    fs::create_dir_all(into.join("kernel")).map_err(|e| BootError::io("create", into, e))?;
    Ok(into.to_owned())
}

/// The value `.config` text gives `CONFIG_<name>`, None when unset.
pub fn config_value<'a>(config: &'a str, name: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        line.strip_prefix("CONFIG_")?
            .strip_prefix(name)?
            .strip_prefix('=')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nestfault-tree-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(path: PathBuf, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_config_values_exactly() {
        let config = "CONFIG_KVM_AMD=m\nCONFIG_KVM=y\n# CONFIG_KVM_XEN is not set\n";
        assert_eq!(config_value(config, "KVM"), Some("y"));
        assert_eq!(config_value(config, "KVM_AMD"), Some("m"));
        assert_eq!(config_value(config, "KVM_XEN"), None);
    }

    #[test]
    fn built_in_kvm_needs_no_modules() {
        let tree = scratch("builtin");
        write(tree.join(BZIMAGE), "image");
        write(tree.join(".config"), "CONFIG_KVM=y\nCONFIG_KVM_AMD=y\n");
        // A stale modules.order from an earlier modular build is not used.
        write(tree.join("modules.order"), "arch/x86/kvm/kvm.o\n");
        let built = open(&tree, &tree.join("work")).unwrap();
        assert_eq!(built.image, tree.join(BZIMAGE));
        assert_eq!(built.modules_dir, None);
        fs::remove_dir_all(tree).unwrap();
    }

    #[test]
    fn modular_kvm_gathers_the_built_modules() {
        let tree = scratch("modular");
        write(tree.join(BZIMAGE), "image");
        write(tree.join(".config"), "CONFIG_KVM=m\n");
        write(
            tree.join("modules.order"),
            "virt/lib/irqbypass.o\narch/x86/kvm/kvm.o\narch/x86/kvm/kvm-amd.ko\n",
        );
        for module in [
            "virt/lib/irqbypass.ko",
            "arch/x86/kvm/kvm.ko",
            "arch/x86/kvm/kvm-amd.ko",
        ] {
            write(tree.join(module), module);
        }
        write(tree.join("modules.builtin"), "kernel/lib/x.ko\n");
        let work = tree.join("work");
        let dir = open(&tree, &work).unwrap().modules_dir.unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("kernel/arch/x86/kvm/kvm-amd.ko")).unwrap(),
            "arch/x86/kvm/kvm-amd.ko"
        );
        assert!(dir.join("modules.builtin").is_file());
        // Again, as a second run in the same workdir does.
        assert_eq!(open(&tree, &work).unwrap().modules_dir, Some(dir.clone()));
        // The tree named relative to the current directory (`--kernel .`): links still resolve.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = Path::new(&up).join(tree.strip_prefix("/").unwrap());
        let dir = open(&relative, &work).unwrap().modules_dir.unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("kernel/virt/lib/irqbypass.ko")).unwrap(),
            "virt/lib/irqbypass.ko"
        );
        fs::remove_dir_all(tree).unwrap();
    }

    #[test]
    fn an_unbuilt_tree_says_what_to_make() {
        let tree = scratch("unbuilt");
        let err = open(&tree, &tree.join("work")).err().unwrap();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        write(tree.join(".config"), "CONFIG_KVM=m\n");
        let err = open(&tree, &tree.join("work")).err().unwrap();
        assert!(err.to_string().contains("make bzImage"), "{err}");
        write(tree.join(BZIMAGE), "image");
        let err = open(&tree, &tree.join("work")).err().unwrap();
        assert!(err.to_string().contains("make modules"), "{err}");
        write(tree.join("modules.order"), "arch/x86/kvm/kvm.o\n");
        let err = open(&tree, &tree.join("work")).err().unwrap();
        assert!(err.to_string().contains("make modules"), "{err}");
        fs::remove_dir_all(tree).unwrap();
    }
}
