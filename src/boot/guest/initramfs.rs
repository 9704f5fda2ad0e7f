//! The initramfs: an uncompressed newc cpio archive (the kernel unpacks it faster than it could
//! decompress one, which counts under an emulator) holding /init (a copy of the
//! running nestfault binary), what its dynamic linker needs, the vendor's KVM
//! modules in load order (if asked, each signed one also unsigned, see `unsigned`, with the
//! signed file kept compressed as a fallback), and
//! the arguments to run with inside.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::contract::paths;
use crate::arch;
use crate::boot::error::BootError;
use crate::boot::input::compression::Compression;
use crate::boot::input::kernel::PreparedKernel;
use crate::boot::input::modules::{self, Contents};
use crate::boot::input::unsigned::{unsigned_copy, CopyCache, Unsigning};
use crate::boot::tempdir::private_dir;
use crate::elf::{Elf, EM_X86_64};
use crate::module_param;
use crate::scenario::VendorKind;

/// Where the dynamic linker of a Debian system finds libraries without an
/// ld.so.cache; libraries are searched here and put at the same place.
const LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// How the guest loads the KVM modules.
#[derive(Clone, Debug, Default)]
pub struct ModuleLoading {
    /// Each signed module also goes in unsigned (and stripped), for the guest to try first.
    pub unsigned_copies: bool,
    /// The user's kernel parameters; `MODULE.PARAM=VALUE` ones become load parameters.
    pub user_params: Vec<String>,
    /// Load the modules as a distribution does: without nestfault's parameters (nested=1, the
    /// forced-emulation prefix), with the user's only.
    pub stock: bool,
}

/// Builds the initramfs at `out`. See the module documentation for its contents. `files` (name,
/// contents) go to [`GUEST_FILES_DIR`](super::GUEST_FILES_DIR) for the inner nestfault to read.
/// `modules_as` says whether each signed module also goes in unsigned, for the guest to try
/// first, and which of the user's `--kernel-param`s (`MODULE.PARAM=VALUE`) reach a modular KVM
/// as load parameters, over nestfault's own (see [`module_param::with_user_params`]).
pub fn build_initramfs(
    init_exe: &Path,
    kernel: &PreparedKernel,
    vendor: VendorKind,
    inner_args: &[String],
    files: &[(String, Vec<u8>)],
    modules_as: &ModuleLoading,
    out: &Path,
) -> Result<(), BootError> {
    let init = fs::read(init_exe).map_err(|e| BootError::io("read", init_exe, e))?;
    let runtime = runtime_files(init_exe, &init)?;
    let unsigned_modules = modules_as.unsigned_copies;
    let copies = unsigned_modules.then(CopyCache::open).flatten();
    let modules = match &kernel.modules_dir {
        Some(dir) => modules::resolve(
            dir,
            arch::kvm_module(vendor),
            &kernel.release,
            copies.as_ref(),
        )?,
        None => Vec::new(),
    };
    // Each module's unsigned copy, where one was made (with `unsigned_modules`, of a signed one).
    let unsigned: Vec<Option<Vec<u8>>> = if unsigned_modules && !modules.is_empty() {
        let scratch = private_dir("strip")?;
        modules
            .iter()
            .map(|module| match &module.contents {
                Contents::UnsignedCopy(copy) => Ok(Some(copy.clone())),
                Contents::Image(image) => {
                    let copy = unsigned_copy(&module.name, image, scratch.path())?;
                    if let (Some((copy, Unsigning::Stripped)), Some(copies)) = (&copy, &copies) {
                        copies.put(&module.packed, copy, scratch.path());
                    }
                    Ok(copy.map(|(image, _)| image))
                }
            })
            .collect::<Result<_, BootError>>()?
    } else {
        vec![None; modules.len()]
    };

    let file = File::create(out).map_err(|e| BootError::io("create", out, e))?;
    let mut cpio = CpioWriter::new(BufWriter::new(file));
    let written: io::Result<()> = (|| {
        for dir in [
            "dev",
            "proc",
            "sys",
            "tmp",
            "root",
            paths::MODULES_DIR,
            paths::FILES_DIR,
        ] {
            cpio.dir(dir.trim_start_matches('/'))?;
        }
        // The kernel opens /dev/console for init's stdio before anything is mounted.
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        cpio.file("init", 0o755, &init)?;
        for (guest_path, data) in &runtime {
            cpio.file(guest_path.trim_start_matches('/'), 0o755, data)?;
        }
        let mut load_order = String::new();
        for (module, unsigned) in modules.iter().zip(&unsigned) {
            let ours = if modules_as.stock {
                String::new()
            } else {
                arch::module_parameters(vendor, &module.name, &module.info.params)
            };
            let params =
                module_param::with_user_params(&module.name, &ours, &modules_as.user_params);
            load_order.push_str(&format!("{}\t{}\n", module.name, params));
            if let Some(copy) = unsigned {
                let path = paths::unsigned_module(&module.name);
                cpio.file(path.trim_start_matches('/'), 0o644, copy)?;
            }
            // Beside an unsigned copy (made now or cached) the signed module is only a fallback,
            // so it goes in as it came: Debian's kvm.ko is 0.47 MB as .ko.xz and 3.1 MB unpacked,
            // and the initramfs costs its unpacking by the megabyte (~70 ms a MB under Bochs).
            let (signed, image) = match (unsigned, &module.contents) {
                (None, Contents::Image(image)) => (
                    paths::signed_module(&module.name, Compression::Plain),
                    image,
                ),
                _ => (
                    paths::signed_module(&module.name, module.compression),
                    &module.packed,
                ),
            };
            cpio.file(signed.trim_start_matches('/'), 0o644, image)?;
        }
        cpio.file(
            paths::LOAD_ORDER.trim_start_matches('/'),
            0o644,
            load_order.as_bytes(),
        )?;
        let args: Vec<u8> = inner_args
            .iter()
            .flat_map(|arg| arg.bytes().chain([0]))
            .collect();
        cpio.file(paths::ARGS.trim_start_matches('/'), 0o644, &args)?;
        for (name, contents) in files {
            let path = format!("{}/{name}", paths::FILES_DIR);
            cpio.file(path.trim_start_matches('/'), 0o644, contents)?;
        }
        cpio.file(
            paths::VENDOR.trim_start_matches('/'),
            0o644,
            vendor.name().as_bytes(),
        )?;
        cpio.finish()?.flush()
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(out);
        BootError::io("write", out, e)
    })
}

/// The dynamic linker and every library the executable needs, transitively,
/// as (path, contents): each goes to the same path inside the guest. Empty
/// for a static binary.
fn runtime_files(exe: &Path, exe_data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BootError> {
    let bad = |path: &Path, reason: String| BootError::BadExecutable {
        path: path.to_owned(),
        reason,
    };
    let elf = Elf::parse(exe_data).map_err(|r| bad(exe, r))?;
    if elf.machine != EM_X86_64 {
        return Err(bad(exe, format!("built for ELF machine {}", elf.machine)));
    }
    let mut files = Vec::new();
    if let Some(interpreter) = elf.interpreter().map_err(|r| bad(exe, r))? {
        let data = fs::read(&interpreter).map_err(|e| BootError::io("read", &interpreter, e))?;
        files.push((interpreter, data));
    }
    let mut seen = HashSet::new();
    let mut pending: VecDeque<(String, PathBuf)> = elf
        .needed_libraries()
        .map_err(|r| bad(exe, r))?
        .into_iter()
        .map(|lib| (lib, exe.to_owned()))
        .collect();
    while let Some((library, needed_by)) = pending.pop_front() {
        if !seen.insert(library.clone()) {
            continue;
        }
        let found = find_library(&library).ok_or_else(|| BootError::LibraryNotFound {
            library: library.clone(),
            needed_by: needed_by.clone(),
            searched: LIBRARY_DIRS.iter().map(|d| d.to_string()).collect(),
        })?;
        let data = fs::read(&found).map_err(|e| BootError::io("read", &found, e))?;
        let lib_elf = Elf::parse(&data).map_err(|r| bad(&found, r))?;
        for next in lib_elf.needed_libraries().map_err(|r| bad(&found, r))? {
            pending.push_back((next, found.clone()));
        }
        let path = found.to_string_lossy().into_owned();
        if !files.iter().any(|(known, _)| *known == path) {
            files.push((path, data));
        }
    }
    Ok(files)
}

fn find_library(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|path| path.is_file());
    }
    LIBRARY_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// Writes a newc ("070701") cpio archive, creating parent directories of
/// every entry before the entry itself, as the kernel's unpacker expects.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// `path` is relative to the archive root, e.g. `lib/x86_64-linux-gnu`.
    pub(crate) fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_end_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    pub(crate) fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        links: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let name_size = name.len() as u32 + 1;
        let fields = [
            inode, mode, 0, 0, links, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // Header and name together, then the data, are padded to 4 bytes.
        self.pad(header.len() + name_size as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let padding = (4 - len % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal newc reader, to check the writer against the format.
    fn read_newc(mut data: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let field = |header: &[u8], index: usize| {
            let text = std::str::from_utf8(&header[6 + index * 8..14 + index * 8]).unwrap();
            u32::from_str_radix(text, 16).unwrap()
        };
        loop {
            assert_eq!(&data[..6], b"070701");
            let mode = field(data, 1);
            let size = field(data, 6) as usize;
            let name_size = field(data, 11) as usize;
            let name = std::str::from_utf8(&data[110..110 + name_size - 1])
                .unwrap()
                .to_owned();
            let data_start = (110 + name_size).next_multiple_of(4);
            let body = data[data_start..data_start + size].to_vec();
            data = &data[(data_start + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(data.is_empty());
                return entries;
            }
            entries.push((name, mode, body));
        }
    }

    #[test]
    fn newc_round_trip_with_parents() {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.file("init", 0o755, b"#!").unwrap();
        cpio.file("lib/x86_64-linux-gnu/libc.so.6", 0o755, b"libc!")
            .unwrap();
        cpio.dir("lib").unwrap();
        cpio.char_device("dev/console", 0o600, 5, 1).unwrap();
        let archive = cpio.finish().unwrap();
        let entries = read_newc(&archive);
        let names: Vec<_> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "init",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(entries[0].1, S_IFREG | 0o755);
        assert_eq!(entries[0].2, b"#!");
        assert_eq!(entries[1].1, S_IFDIR | 0o755);
        assert_eq!(entries[3].2, b"libc!");
        assert_eq!(entries[5].1, S_IFCHR | 0o600);
    }

    #[test]
    fn finds_runtime_of_a_dynamic_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = fs::read(&exe).unwrap();
        let files = runtime_files(&exe, &data).unwrap();
        assert!(files[0].0.contains("ld-linux-x86-64"), "{files:?}");
        assert!(files.iter().any(|(guest, _)| guest.ends_with("/libc.so.6")));
    }

    #[test]
    fn rejects_a_non_elf_init() {
        let err = runtime_files(Path::new("/x"), b"#!/bin/sh\n").unwrap_err();
        assert!(matches!(err, BootError::BadExecutable { .. }));
    }
}
