//! Debian packages: recognising them, unpacking their data member (without
//! dpkg), and finding the kernel image and modules inside.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::compression::Compression;
use crate::boot::error::BootError;

/// A .deb is an ar archive whose first member is `debian-binary`.
pub(crate) fn is_deb(path: &Path) -> Result<bool, BootError> {
    if path.is_dir() {
        return Ok(false);
    }
    let mut head = [0u8; 21];
    let mut file =
        crate::input_file::open_regular(path).map_err(|e| BootError::io("open", path, e))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(BootError::io("read", path, e)),
        }
    }
    Ok(&head[..filled] == b"!<arch>\ndebian-binary")
}

/// Unpacks `deb` into a directory under `workdir` and returns it. A previous
/// complete unpacking of the same file (same size and mtime) is reused, as a
/// kernel package takes seconds to decompress; so `workdir` may be a
/// persistent cache, shared by concurrent runs. `on_progress` hears of an
/// unpacking that is not reused.
pub(crate) fn unpack(
    deb: &Path,
    workdir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BootError> {
    let meta = fs::metadata(deb).map_err(|e| BootError::io("inspect", deb, e))?;
    let stamp_text = format!("{} {}\n", meta.size(), meta.mtime());
    let stem = deb
        .file_name()
        .map(|name| name.to_string_lossy().trim_end_matches(".deb").to_owned())
        .unwrap_or_else(|| "package".to_owned());
    let target = workdir.join(&stem);
    let complete =
        || fs::read_to_string(target.join(UNPACKED_STAMP)).is_ok_and(|text| text == stamp_text);
    if complete() {
        return Ok(target);
    }

    // Unpack into a directory of our own and rename it into place, so that
    // neither an interrupted run nor a concurrent one leaves a half-filled
    // directory that looks complete.
    on_progress(&format!("unpacking {stem}.deb"));
    let partial = workdir.join(format!("{stem}.partial-{}", std::process::id()));
    let remove = |dir: &Path| match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BootError::io("remove", dir, e)),
        _ => Ok(()),
    };
    remove(&partial)?;
    fs::create_dir_all(&partial).map_err(|e| BootError::io("create", &partial, e))?;
    let unpacked = extract_data(deb, &partial).and_then(|()| {
        fs::write(partial.join(UNPACKED_STAMP), &stamp_text)
            .map_err(|e| BootError::io("write", &partial, e))
    });
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    // An outdated unpacking (the .deb changed) makes way.
    if target.exists() && !complete() {
        remove(&target)?;
    }
    match fs::rename(&partial, &target) {
        Ok(()) => Ok(target),
        // Another run got there first with the same package.
        Err(_) if complete() => {
            remove(&partial)?;
            Ok(target)
        }
        Err(e) => Err(BootError::io("rename", &partial, e)),
    }
}

/// Marks a complete unpacking; holds the package's size and mtime.
const UNPACKED_STAMP: &str = ".nestfault-unpacked";

fn extract_data(deb: &Path, into: &Path) -> Result<(), BootError> {
    let bad = |reason: String| BootError::BadPackage {
        path: deb.to_owned(),
        reason,
    };
    let file = File::open(deb).map_err(|e| BootError::io("open", deb, e))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|e| bad(format!("broken ar archive: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let (stem, compression) = Compression::split_suffix(&name);
        if !name.starts_with("data.tar") {
            continue;
        }
        if stem != "data.tar" {
            return Err(bad(format!("unsupported data member {name}")));
        }
        let reader = compression
            .decoder(BufReader::with_capacity(1 << 20, member))
            .map_err(|e| bad(format!("cannot decompress {name}: {e}")))?;
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_ownerships(false);
        return tar
            .unpack(into)
            .map_err(|e| match crate::path_io::os_error(&e) {
                // The machine's (a full disk, no permission), not the package's.
                Some(_) => BootError::io("unpack into", into, e),
                None => bad(format!(
                    "cannot unpack {name}: {}",
                    crate::path_io::with_causes(&e)
                )),
            });
    }
    Err(bad("no data.tar member: not a binary package".into()))
}

/// What an unpacked kernel package (or a tree in the same shape) holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// (release, kernel image)
    pub(crate) images: Vec<(String, PathBuf)>,
    /// (release, modules directory)
    pub(crate) modules: Vec<(String, PathBuf)>,
}

/// Recognises both Debian layouts: `boot/vmlinuz-<release>` with
/// `lib/modules/<release>/` (up to trixie), and
/// `usr/lib/modules/<release>/vmlinuz.unsigned` with the modules in a separate
/// package (unstable, backports).
pub(crate) fn layout(root: &Path) -> Layout {
    let mut found = Layout::default();
    for (name, path) in sorted_entries(&root.join("boot")) {
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            if path.is_file() {
                found.images.push((release.to_owned(), path));
            }
        }
    }
    for base in ["lib/modules", "usr/lib/modules"] {
        for (release, dir) in sorted_entries(&root.join(base)) {
            if !dir.is_dir() {
                continue;
            }
            for (name, path) in sorted_entries(&dir) {
                if name.starts_with("vmlinuz") && path.is_file() {
                    found.images.push((release.clone(), path));
                }
            }
            if dir.join("kernel").is_dir() {
                found.modules.push((release, dir));
            }
        }
    }
    found
}

fn sorted_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
        .collect();
    entries.sort();
    entries
}

/// The `linux-modules-<release>_*.deb` lying next to a split-layout kernel
/// package, newest name last wins.
pub(crate) fn sibling_modules_deb(kernel_deb: &Path, release: &str) -> Option<PathBuf> {
    let dir = kernel_deb.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("linux-modules-{release}_");
    sorted_entries(dir)
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix) && name.ends_with(".deb"))
        .map(|(_, path)| path)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nestfault-deb-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: PathBuf) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn bookworm_layout() {
        let root = scratch("bookworm");
        touch(root.join("boot/vmlinuz-6.1.0-40-amd64"));
        touch(root.join("boot/System.map-6.1.0-40-amd64"));
        touch(root.join("lib/modules/6.1.0-40-amd64/kernel/arch/x86/kvm/kvm.ko"));
        let found = layout(&root);
        assert_eq!(
            found.images,
            vec![(
                "6.1.0-40-amd64".into(),
                root.join("boot/vmlinuz-6.1.0-40-amd64")
            )]
        );
        assert_eq!(
            found.modules,
            vec![(
                "6.1.0-40-amd64".into(),
                root.join("lib/modules/6.1.0-40-amd64")
            )]
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn split_layout() {
        let binary = scratch("binary");
        touch(binary.join("usr/lib/modules/7.2.13+deb14-amd64/vmlinuz.unsigned"));
        let found = layout(&binary);
        assert_eq!(
            found.images,
            vec![(
                "7.2.13+deb14-amd64".into(),
                binary.join("usr/lib/modules/7.2.13+deb14-amd64/vmlinuz.unsigned")
            )]
        );
        assert!(found.modules.is_empty());

        let modules = scratch("modules");
        touch(modules.join("usr/lib/modules/7.2.13+deb14-amd64/kernel/virt/lib/irqbypass.ko.xz"));
        let found = layout(&modules);
        assert!(found.images.is_empty());
        assert_eq!(found.modules.len(), 1);
        for dir in [binary, modules] {
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn finds_sibling_modules_package() {
        let dir = scratch("sibling");
        let kernel = dir.join("linux-binary-unsigned-7.2.13+deb14-amd64_7.2.13-1_amd64.deb");
        touch(kernel.clone());
        assert_eq!(sibling_modules_deb(&kernel, "7.2.13+deb14-amd64"), None);
        let modules = dir.join("linux-modules-7.2.13+deb14-amd64_7.2.13-1_amd64.deb");
        touch(modules.clone());
        touch(dir.join("linux-modules-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb"));
        assert_eq!(
            sibling_modules_deb(&kernel, "7.2.13+deb14-amd64"),
            Some(modules)
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn recognises_debs_by_magic() {
        let dir = scratch("magic");
        let deb = dir.join("a.deb");
        fs::write(&deb, b"!<arch>\ndebian-binary   1234").unwrap();
        let image = dir.join("vmlinuz");
        fs::write(&image, b"MZ").unwrap();
        assert!(is_deb(&deb).unwrap());
        assert!(!is_deb(&image).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Writes a minimal .deb, ar(debian-binary, data.tar.gz), holding one file.
    fn write_deb(deb: &Path, path: &str, contents: &[u8]) {
        let mut data = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        data.append_data(&mut header, path, contents).unwrap();
        let data = data.into_inner().unwrap().finish().unwrap();
        let mut ar = ar::Builder::new(File::create(deb).unwrap());
        for (name, body) in [("debian-binary", b"2.0\n".to_vec()), ("data.tar.gz", data)] {
            ar.append(
                &ar::Header::new(name.as_bytes().to_vec(), body.len() as u64),
                &body[..],
            )
            .unwrap();
        }
    }

    #[test]
    fn unpacks_reuses_and_refreshes() {
        let dir = scratch("unpack");
        let deb = dir.join("linux-image-9.9.9_1_amd64.deb");
        write_deb(&deb, "./boot/vmlinuz-9.9.9", b"abc");
        assert!(is_deb(&deb).unwrap());
        let mut unpacked = 0;
        let root = unpack(&deb, &dir, &mut |_| unpacked += 1).unwrap();
        assert_eq!(fs::read(root.join("boot/vmlinuz-9.9.9")).unwrap(), b"abc");
        // Unchanged: the unpacked tree is reused as it is.
        fs::write(root.join("marker"), b"").unwrap();
        assert_eq!(unpack(&deb, &dir, &mut |_| unpacked += 1).unwrap(), root);
        assert!(root.join("marker").exists());
        assert_eq!(unpacked, 1, "a reused unpacking is not announced");
        // Changed (another size): unpacked anew.
        write_deb(&deb, "./boot/vmlinuz-9.9.9", b"abcdef");
        assert_eq!(unpack(&deb, &dir, &mut |_| {}).unwrap(), root);
        assert_eq!(
            fs::read(root.join("boot/vmlinuz-9.9.9")).unwrap(),
            b"abcdef"
        );
        assert!(!root.join("marker").exists());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn broken_package_is_a_clear_error() {
        let dir = scratch("broken");
        let deb = dir.join("x.deb");
        fs::write(
            &deb,
            b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
        )
        .unwrap();
        let err = unpack(&deb, &dir, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BootError::BadPackage { .. }), "{err}");
        assert!(err.to_string().contains("no data.tar member"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
