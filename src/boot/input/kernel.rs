//! Turning what the user gave (`--kernel`, `--modules`) into a kernel image,
//! its release string and its modules directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{deb, tree};
use crate::boot::error::BootError;

/// What the user gave: `--kernel IMAGE [--modules DIR]`.
///
/// `image` is a bzImage/vmlinuz, a kernel build tree (its `arch/x86/boot/bzImage`, and its
/// built modules when KVM is modular), or a Debian kernel package (`linux-image-*`
/// with `boot/vmlinuz-*`, or `linux-binary[-unsigned]-*` with
/// `usr/lib/modules/<release>/vmlinuz*`). `modules` is a modules directory
/// (`lib/modules/<release>`, its parent, or the root of an unpacked tree) or a
/// `linux-modules-*` / `linux-image-*` package.
#[derive(Clone, Debug)]
pub struct KernelInput {
    pub image: PathBuf,
    pub modules: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct PreparedKernel {
    pub vmlinuz: PathBuf,
    /// The kernel release, e.g. `6.1.0-40-amd64`.
    pub release: String,
    /// `lib/modules/<release>`; None when the kernel has KVM built in.
    pub modules_dir: Option<PathBuf>,
}

/// Resolves `input` into a bootable kernel, unpacking packages into `workdir`
/// (reused on later calls with the same workdir). `on_progress` hears of each
/// package being unpacked (seconds each).
pub fn prepare_kernel(
    input: &KernelInput,
    workdir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<PreparedKernel, BootError> {
    std::fs::create_dir_all(workdir).map_err(|e| BootError::io("create", workdir, e))?;
    let (vmlinuz, release, packaged_modules) = if input.image.is_dir() {
        let built = tree::open(&input.image, workdir)?;
        let release = bzimage_release_of(&built.image)?;
        (built.image, release, built.modules_dir)
    } else if deb::is_deb(&input.image)? {
        image_from_deb(&input.image, workdir, on_progress)?
    } else {
        let release = bzimage_release_of(&input.image)?;
        (input.image.clone(), release, None)
    };

    let modules_dir = match &input.modules {
        Some(given) => Some(modules_from(given, &release, workdir, on_progress)?),
        None => match packaged_modules {
            Some(dir) => Some(dir),
            // A split-layout package: its modules live in a sibling package.
            None if deb::is_deb(&input.image)? => {
                let sibling =
                    deb::sibling_modules_deb(&input.image, &release).ok_or_else(|| {
                        BootError::ModulesMissing {
                            release: release.clone(),
                            hint: format!(" (none lies next to {})", input.image.display()),
                        }
                    })?;
                Some(modules_from(&sibling, &release, workdir, on_progress)?)
            }
            None => None,
        },
    };
    Ok(PreparedKernel {
        vmlinuz,
        release,
        modules_dir,
    })
}

/// (image, release, modules dir if the same package carries them)
fn image_from_deb(
    deb_path: &Path,
    workdir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, String, Option<PathBuf>), BootError> {
    let root = deb::unpack(deb_path, workdir, on_progress)?;
    let layout = deb::layout(&root);
    let (release, image) = match layout.images.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(BootError::BadPackage {
                path: deb_path.to_owned(),
                reason: "holds no kernel image (looked for boot/vmlinuz-* and \
                         usr/lib/modules/*/vmlinuz*); pass the linux-image-* or \
                         linux-binary-unsigned-* package as the kernel"
                    .into(),
            })
        }
        several => {
            return Err(BootError::BadPackage {
                path: deb_path.to_owned(),
                reason: format!(
                    "holds {} kernel images; pass one image file instead",
                    several.len()
                ),
            })
        }
    };
    // Validate the image now rather than at boot.
    bzimage_release_of(&image)?;
    let modules = layout
        .modules
        .into_iter()
        .find(|(r, _)| *r == release)
        .map(|(_, dir)| dir);
    Ok((image, release, modules))
}

/// Finds the modules directory for `release` in a package or directory.
fn modules_from(
    given: &Path,
    release: &str,
    workdir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BootError> {
    let root = if deb::is_deb(given)? {
        deb::unpack(given, workdir, on_progress)?
    } else if given.is_dir() {
        given.to_owned()
    } else {
        return Err(BootError::io(
            "use as modules directory",
            given,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory or .deb"),
        ));
    };
    let candidates = [
        root.clone(),
        root.join(release),
        root.join("lib/modules").join(release),
        root.join("usr/lib/modules").join(release),
    ];
    if let Some(dir) = candidates.iter().find(|dir| is_modules_dir(dir)) {
        return Ok(dir.clone());
    }
    let others: Vec<String> = deb::layout(&root)
        .modules
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    Err(BootError::ModulesDirMismatch {
        path: given.to_owned(),
        release: release.to_owned(),
        found: if others.is_empty() {
            String::new()
        } else {
            format!(" (it has modules for {})", others.join(", "))
        },
    })
}

/// A modules directory holds a `kernel/` tree or at least depmod's files.
/// Whether it belongs to this release is checked per module (vermagic).
fn is_modules_dir(dir: &Path) -> bool {
    dir.join("kernel").is_dir() || dir.join("modules.order").is_file()
}

fn bzimage_release_of(path: &Path) -> Result<String, BootError> {
    let mut head = Vec::with_capacity(64 * 1024);
    crate::input_file::open_regular(path)
        .and_then(|file| file.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| BootError::io("read", path, e))?;
    bzimage_release(&head).map_err(|reason| BootError::NotAKernel {
        path: path.to_owned(),
        reason: reason.into(),
    })
}

/// Reads the release from a bzImage's setup header: the `kernel_version`
/// field (offset 0x20e) points, relative to 0x200, at a string such as
/// `6.1.0-40-amd64 (builder@build.invalid) #1 SMP ...`.
pub(crate) fn bzimage_release(head: &[u8]) -> Result<String, &'static str> {
    if head.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no bzImage setup header (HdrS magic at 0x202)");
    }
    let field = head.get(0x20e..0x210).ok_or("truncated setup header")?;
    let pointer = u16::from_le_bytes([field[0], field[1]]) as usize;
    if pointer == 0 {
        return Err("the setup header carries no version string");
    }
    let text = head
        .get(0x200 + pointer..)
        .ok_or("the version string lies past the file's start")?;
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let release = String::from_utf8_lossy(text)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or("empty version string")?;
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        let at = 0x800usize;
        image[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        image[at..at + version.len()].copy_from_slice(version.as_bytes());
        image
    }

    #[test]
    fn reads_release_from_header() {
        let image = fake_bzimage("6.1.0-40-amd64 (builder@build.invalid) #1 SMP");
        assert_eq!(bzimage_release(&image).unwrap(), "6.1.0-40-amd64");
    }

    #[test]
    fn rejects_non_kernels() {
        assert!(bzimage_release(b"hello").is_err());
        assert!(bzimage_release(&[0u8; 0x1000]).is_err());
        let mut no_version = fake_bzimage("x");
        no_version[0x20e..0x210].copy_from_slice(&[0, 0]);
        assert!(bzimage_release(&no_version).is_err());
    }

    #[test]
    fn bzimage_with_a_modules_directory_in_any_form() {
        let dir = std::env::temp_dir().join(format!("nestfault-kmods-{}", std::process::id()));
        let release = "6.1.0-40-amd64";
        let modules = dir.join("tree/lib/modules").join(release);
        std::fs::create_dir_all(modules.join("kernel/virt/lib")).unwrap();
        std::fs::write(modules.join("kernel/virt/lib/irqbypass.ko"), b"").unwrap();
        let image = dir.join("bzImage");
        std::fs::write(&image, fake_bzimage(&format!("{release} (me@host) #1 SMP"))).unwrap();
        for given in [
            modules.clone(),
            dir.join("tree/lib/modules"),
            dir.join("tree"),
        ] {
            let input = KernelInput {
                image: image.clone(),
                modules: Some(given.clone()),
            };
            let kernel = prepare_kernel(&input, &dir.join("work"), &mut |_| {}).unwrap();
            assert_eq!(kernel.release, release);
            assert_eq!(
                kernel.modules_dir.as_ref(),
                Some(&modules),
                "{}",
                given.display()
            );
        }
        let without = KernelInput {
            image: image.clone(),
            modules: None,
        };
        assert_eq!(
            prepare_kernel(&without, &dir.join("work"), &mut |_| {})
                .unwrap()
                .modules_dir,
            None
        );
        let elsewhere = KernelInput {
            image,
            modules: Some(dir.join("work")),
        };
        let err = prepare_kernel(&elsewhere, &dir.join("work"), &mut |_| {}).unwrap_err();
        assert!(matches!(err, BootError::ModulesDirMismatch { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_image_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("nestfault-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("garbage");
        std::fs::write(&image, vec![0x5a; 4096]).unwrap();
        let input = KernelInput {
            image: image.clone(),
            modules: None,
        };
        let err = prepare_kernel(&input, &dir.join("work"), &mut |_| {}).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
