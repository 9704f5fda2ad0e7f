//! The uncompressed kernel inside a bzImage, for the boots that skip the
//! decompressor the bzImage would run first under emulation (about 1 s under
//! TCG for a zstd kernel, ~13 s under Bochs, more for xz): QEMU's PVH boot,
//! which loads an ELF vmlinux that carries a PVH entry point and starts it
//! there, and the direct boot under Bochs (`direct`). What runs afterwards is
//! the same kernel, so the boot path cannot change a verdict.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::cache;
use super::compression::Compression;
use crate::boot::error::BootError;
use crate::cache_lock::EntryLock;
use crate::elf::{Elf, EM_X86_64};

/// The Xen ELF note that gives the 32-bit PVH entry point,
/// XEN_ELFNOTE_PHYS32_ENTRY (include/xen/interface/elfnote.h), which QEMU
/// looks for; every x86 kernel built with CONFIG_PVH carries it.
const PVH_NOTE_OWNER: &[u8] = b"Xen";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The cache's name for "this bzImage yields no vmlinux", with the reason inside. It names the
/// extractor's generation: raise it whenever extraction learns a payload it failed on, so that an
/// older nestfault's "cannot" is not believed (2: xz payloads, whose size trailer 1 misread).
const NO_VMLINUX: &str = "no-vmlinux-2";

/// How many extracted kernels the cache keeps (each is some 60 MB): enough for the e2e's two Debian
/// kernels and the builds its tree stage makes, so that a rerun finds the Debian ones.
const CACHE_KEEP: usize = 6;

/// An extracted vmlinux.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Vmlinux {
    pub(crate) path: PathBuf,
    /// Whether QEMU can start it at its PVH entry point; if not, why not.
    pub(crate) pvh: Result<(), String>,
}

/// The vmlinux inside `bzimage`, if its payload is compressed in a way this
/// crate can undo (gzip, xz, zstd) and is an x86-64 ELF; otherwise why not,
/// for the progress output.
///
/// Decompressing costs the host about what it saves the guest under TCG, so
/// results are cached in `cache` (normally [`cache_dir`]) by the SHA-256 of
/// the bzImage: a rerun of the same kernel, as in the e2e tests and the
/// bench, skips it. Whether it has a PVH entry point is kept beside it (a
/// `.pvh-entry` file: `yes`, or the reason), so that a rerun need not read it.
/// Without a usable cache the vmlinux goes to `dir`.
///
/// Concurrent runs on the same kernel wait for the one extracting it (a lock per entry), and a
/// cached vmlinux is checked before use ([`check_cached`]): a damaged one is removed and
/// extracted again, which `on_progress` hears.
pub(crate) fn extract_vmlinux(
    bzimage: &Path,
    cache: Option<PathBuf>,
    dir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Result<Vmlinux, String>, BootError> {
    let image = fs::read(bzimage).map_err(|e| BootError::io("read", bzimage, e))?;
    let key = cache::key(&image);
    let cache = cache.filter(|cache| fs::create_dir_all(cache).is_ok());
    let pvh_name = format!("{key}.{PVH_ANSWER}");
    // Held until this run has what it needs from the cache.
    let _lock = match &cache {
        Some(cache) => Some(
            EntryLock::acquire(cache, &key, "extracting this kernel's vmlinux", on_progress)
                .map_err(|e| BootError::io("lock", cache.join(&key), e))?,
        ),
        None => None,
    };
    if let Some(cache) = &cache {
        let cached = cache.join(format!("{key}.vmlinux"));
        if let (true, Err(damage)) = (cached.exists(), check_cached(&cached)) {
            on_progress(&format!(
                "the cached vmlinux {} is damaged ({damage}): extracting it again",
                cached.display()
            ));
            for companion in [PVH_ANSWER, SIZE_RECORD, "vmlinux"] {
                let _ = fs::remove_file(cached.with_extension(companion));
            }
        }
        if cache::touch(&cached) {
            let pvh = match fs::read_to_string(cache.join(&pvh_name)) {
                Ok(answer) => parse_pvh_answer(answer),
                // Cached without the answer (by an older nestfault): find it out once.
                Err(_) => {
                    let image = fs::read(&cached).map_err(|e| BootError::io("read", &cached, e))?;
                    let pvh = Elf::parse(&image).and_then(|elf| pvh_entry(&elf));
                    let _ = fs::write(cache.join(&pvh_name), pvh_answer(&pvh));
                    pvh
                }
            };
            return Ok(Ok(Vmlinux { path: cached, pvh }));
        }
        if let Ok(why) = fs::read_to_string(cache.join(format!("{key}.{NO_VMLINUX}"))) {
            return Ok(Err(why));
        }
    }
    let vmlinux =
        payload(&image)
            .and_then(decompress)
            .and_then(|vmlinux| match Elf::parse(&vmlinux) {
                Ok(elf) if elf.machine == EM_X86_64 => Ok((pvh_entry(&elf), vmlinux)),
                Ok(_) => Err("its payload is not a usable vmlinux: not an x86-64 ELF".into()),
                Err(why) => Err(format!("its payload is not a usable vmlinux: {why}")),
            });
    let Some(cache) = cache else {
        return match vmlinux {
            Ok((pvh, vmlinux)) => {
                let path = write_new(&dir.join("vmlinux"), &vmlinux)?;
                Ok(Ok(Vmlinux { path, pvh }))
            }
            Err(why) => Ok(Err(why)),
        };
    };
    let (name, contents) = match &vmlinux {
        Ok((pvh, vmlinux)) => {
            // Before the vmlinux, so that nobody finds the vmlinux without them.
            let _ = fs::write(cache.join(&pvh_name), pvh_answer(pvh));
            let _ = fs::write(
                cache.join(format!("{key}.{SIZE_RECORD}")),
                vmlinux.len().to_string(),
            );
            (format!("{key}.vmlinux"), vmlinux.as_slice())
        }
        Err(why) => (format!("{key}.{NO_VMLINUX}"), why.as_bytes()),
    };
    // Written under a temporary name and renamed, so that a concurrent run
    // never boots half a file.
    let partial = dir.join(&name);
    let path = cache.join(&name);
    write_new(&partial, contents)?;
    let stored = cache::install(&partial, &path);
    cache::prune(&cache, "vmlinux", CACHE_KEEP, &[PVH_ANSWER, SIZE_RECORD]);
    match vmlinux {
        Ok((pvh, _)) if stored => Ok(Ok(Vmlinux { path, pvh })),
        Ok((pvh, _)) => Ok(Ok(Vmlinux { path: partial, pvh })),
        Err(why) => Ok(Err(why)),
    }
}

/// Beside a cached vmlinux: its length in bytes when it was written.
const SIZE_RECORD: &str = "size";

/// Whether the cached vmlinux at `path` is whole: as long as recorded when it was made (an entry
/// of an older nestfault has no record), and every PT_LOAD segment inside the file. A run killed
/// while the file was copied in, or a full disk, leaves it short, and QEMU then refuses it
/// ("Error while loading elf kernel") on every later run. Reads the ELF and program headers
/// only (every segment must end inside the file): the check costs a few kilobytes, not the
/// 60 MB a digest of the file would.
fn check_cached(path: &Path) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    let io = |e: std::io::Error| e.to_string();
    let mut file = fs::File::open(path).map_err(io)?;
    let length = file.metadata().map_err(io)?.len();
    if let Ok(recorded) = fs::read_to_string(path.with_extension(SIZE_RECORD)) {
        let recorded: u64 = recorded
            .trim()
            .parse()
            .map_err(|_| "an unreadable size record")?;
        if recorded != length {
            return Err(format!("{length} bytes, {recorded} when it was made"));
        }
    }
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| format!("{length} bytes: no ELF header"))?;
    let field = |at: usize, width: usize| {
        header[at..at + width]
            .iter()
            .rev()
            .fold(0u64, |value, &byte| value << 8 | u64::from(byte))
    };
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let (phoff, phentsize, phnum) = (field(32, 8), field(54, 2), field(56, 2));
    let mut headers = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut headers))
        .map_err(|_| format!("{length} bytes: its program headers are cut off"))?;
    for ph in headers.chunks(phentsize.max(1) as usize) {
        let word = |at: usize| u64::from_le_bytes(ph[at..at + 8].try_into().unwrap_or([0; 8]));
        let end = word(8).saturating_add(word(32));
        if end > length {
            return Err(format!("{length} bytes, a segment ends at {end}"));
        }
    }
    Ok(())
}

/// `$XDG_CACHE_HOME/nestfault/vmlinux`, or `~/.cache/nestfault/vmlinux`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    cache::dir(cache::VMLINUX)
}

fn write_new(path: &Path, contents: &[u8]) -> Result<PathBuf, BootError> {
    fs::write(path, contents).map_err(|e| BootError::io("write", path, e))?;
    Ok(path.to_owned())
}

/// The compressed kernel: the setup header (boot protocol 2.08+) gives its
/// offset from the start of the protected-mode code and its length
/// (Documentation/arch/x86/boot.rst, payload_offset and payload_length).
fn payload(image: &[u8]) -> Result<&[u8], String> {
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no bzImage setup header".into());
    }
    let version = u16_at(0x206).ok_or("truncated setup header")?;
    if version < 0x208 {
        return Err(format!(
            "boot protocol {version:#x} predates payload_offset (2.08)"
        ));
    }
    // setup_sects 0 means 4 (boot.rst).
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(&sects) => usize::from(sects),
        None => return Err("truncated setup header".into()),
    };
    let (offset, length) = (u32_at(0x248), u32_at(0x24c));
    let (Some(offset), Some(length)) = (offset, length) else {
        return Err("truncated setup header".into());
    };
    let start = (setup_sects + 1) * 512 + offset;
    image
        .get(start..start + length)
        .ok_or_else(|| "the payload lies past the end of the image".into())
}

/// Decompresses the payload, recognised by its magic number. The kernel's build appends the
/// decompressed size (32 bits, little endian) after the stream: it is cut off before decoding
/// (xz reads on after a stream and takes it for a broken next one) and checked afterwards.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, String> {
    let compression = if payload.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if payload.starts_with(b"\xfd7zXZ\0") {
        Compression::Xz
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        return Err("its payload is compressed with lz4, lzo, bzip2 or lzma, which nestfault does not decompress".into());
    };
    let split = payload
        .len()
        .checked_sub(4)
        .ok_or("its payload is too short")?;
    let (stream, size) = payload.split_at(split);
    let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
    let mut vmlinux = Vec::with_capacity(size);
    compression
        .decoder(stream)
        .and_then(|mut decoder| decoder.read_to_end(&mut vmlinux))
        .map_err(|e| format!("its payload does not decompress: {e}"))?;
    if vmlinux.len() != size {
        return Err(format!(
            "its payload decompresses to {} bytes, not the {size} its trailer says",
            vmlinux.len()
        ));
    }
    Ok(vmlinux)
}

/// The cache's name for whether a vmlinux has a PVH entry point: `yes`, or the reason it has none.
const PVH_ANSWER: &str = "pvh-entry";

fn pvh_answer(pvh: &Result<(), String>) -> String {
    match pvh {
        Ok(()) => "yes".into(),
        Err(why) => why.clone(),
    }
}

fn parse_pvh_answer(answer: String) -> Result<(), String> {
    if answer == "yes" {
        Ok(())
    } else {
        Err(answer)
    }
}

/// Whether the vmlinux carries the PVH entry point QEMU needs; if not, why not.
fn pvh_entry(vmlinux: &Elf) -> Result<(), String> {
    match vmlinux.has_note(PVH_NOTE_OWNER, XEN_ELFNOTE_PHYS32_ENTRY) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the kernel has no PVH entry point (CONFIG_PVH)".into()),
        Err(why) => Err(format!("its notes are unreadable: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::private_dir;
    use crate::elf::tests::with_notes;
    use std::io::Write;

    /// A bzImage of boot protocol 2.15 whose payload is `vmlinux`, gzipped, followed by the size
    /// the kernel's build appends.
    fn bzimage(vmlinux: &[u8]) -> Vec<u8> {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(vmlinux).unwrap();
        bzimage_with(gzip.finish().unwrap(), vmlinux)
    }

    /// The same with an xz payload, as Debian's 6.1 kernels have.
    fn xz_bzimage(vmlinux: &[u8]) -> Vec<u8> {
        let options = lzma_rust2::XzOptions::with_preset(1);
        let mut xz = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
        xz.write_all(vmlinux).unwrap();
        bzimage_with(xz.finish().unwrap(), vmlinux)
    }

    /// payload_length counts the size trailer, as in a real bzImage (7.2's: 0xd9eebc bytes, the
    /// last four 62173500, its vmlinux's size).
    fn bzimage_with(mut payload: Vec<u8>, vmlinux: &[u8]) -> Vec<u8> {
        payload.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
        let length = payload.len() as u32;
        let mut image = vec![0u8; 5 * 512 + 0x100];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(&payload);
        image
    }

    /// Extracts twice, the second time from the cache, which must agree.
    /// Extracts twice, the second time from the cache, which must agree (the PVH answer too),
    /// and once without a cache; the vmlinux's bytes and the PVH answer.
    fn extract(vmlinux: &[u8]) -> Result<(Vec<u8>, Result<(), String>), String> {
        let dir = private_dir("test").unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, bzimage(vmlinux)).unwrap();
        let cache = dir.path().join("cache");
        let first = extract_vmlinux(&image, Some(cache.clone()), dir.path(), &mut |_| {}).unwrap();
        let again = extract_vmlinux(&image, Some(cache), dir.path(), &mut |_| {}).unwrap();
        assert_eq!(first, again);
        let uncached = extract_vmlinux(&image, None, dir.path(), &mut |_| {}).unwrap();
        let contents = |extracted: &Result<Vmlinux, String>| {
            extracted
                .as_ref()
                .map(|vmlinux| (fs::read(&vmlinux.path).unwrap(), vmlinux.pvh.clone()))
                .map_err(Clone::clone)
        };
        assert_eq!(contents(&first), contents(&uncached));
        contents(&first)
    }

    #[test]
    fn extracts_a_vmlinux_and_finds_its_pvh_note() {
        let vmlinux = with_notes(&[(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)]);
        assert_eq!(extract(&vmlinux), Ok((vmlinux, Ok(()))));
        let without = with_notes(&[(b"Xen", 17)]);
        let (extracted, pvh) = extract(&without).unwrap();
        assert_eq!(extracted, without);
        let why = pvh.unwrap_err();
        assert!(why.contains("no PVH entry point"), "{why}");
    }

    /// Issue 22: a cached vmlinux cut short (a killed run, a full disk) is noticed, removed and
    /// extracted again, once, and the run says so; before, every later run booted the stub.
    #[test]
    fn a_truncated_cached_vmlinux_is_extracted_again() {
        let dir = private_dir("test").unwrap();
        let image = dir.path().join("bzImage");
        let vmlinux = with_notes(&[(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)]);
        fs::write(&image, bzimage(&vmlinux)).unwrap();
        let cache = dir.path().join("cache");
        let extract = |said: &mut Vec<String>| {
            extract_vmlinux(&image, Some(cache.clone()), dir.path(), &mut |line| {
                said.push(line.to_string())
            })
            .unwrap()
            .unwrap()
        };
        let mut said = Vec::new();
        let first = extract(&mut said);
        assert!(said.is_empty(), "{said:?}");
        let file = fs::File::options().write(true).open(&first.path).unwrap();
        file.set_len(vmlinux.len() as u64 / 2).unwrap();
        let healed = extract(&mut said);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("is damaged") && said[0].contains("extracting it again"),
            "{said:?}"
        );
        assert_eq!(fs::read(&healed.path).unwrap(), vmlinux);
        said.clear();
        extract(&mut said);
        assert!(said.is_empty(), "said once: {said:?}");
        // Without a size record (an older nestfault's entry), the ELF headers still show it.
        fs::remove_file(healed.path.with_extension(SIZE_RECORD)).unwrap();
        let file = fs::File::options().write(true).open(&healed.path).unwrap();
        file.set_len(vmlinux.len() as u64 - 1).unwrap();
        assert!(check_cached(&healed.path).is_err());
        file.set_len(40).unwrap();
        assert!(check_cached(&healed.path).is_err());
    }

    /// A vmlinux cached by an older nestfault has no PVH answer beside it; it is found out, not
    /// assumed (a kernel without the note made QEMU refuse to start).
    #[test]
    fn a_cached_vmlinux_without_its_pvh_answer_gets_one() {
        let dir = private_dir("test").unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, bzimage(&with_notes(&[(b"Xen", 17)]))).unwrap();
        let cache = dir.path().join("cache");
        extract_vmlinux(&image, Some(cache.clone()), dir.path(), &mut |_| {})
            .unwrap()
            .unwrap();
        let answers: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == PVH_ANSWER))
            .collect();
        assert_eq!(answers.len(), 1, "{answers:?}");
        fs::remove_file(&answers[0]).unwrap();
        let again = extract_vmlinux(&image, Some(cache), dir.path(), &mut |_| {})
            .unwrap()
            .unwrap();
        assert!(again.pvh.unwrap_err().contains("no PVH entry point"));
        assert!(answers[0].exists());
    }

    #[test]
    fn an_xz_payload_with_its_size_trailer_decompresses() {
        let vmlinux = with_notes(&[(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)]);
        let image = xz_bzimage(&vmlinux);
        assert_eq!(payload(&image).and_then(decompress), Ok(vmlinux));
        let mut lying = image;
        let at = lying.len() - 4;
        lying[at] ^= 1;
        let why = payload(&lying).and_then(decompress).unwrap_err();
        assert!(why.contains("not the"), "{why}");
    }

    #[test]
    fn says_why_without_a_usable_payload() {
        let why = extract(b"not an elf").unwrap_err();
        assert!(why.contains("not a usable vmlinux"), "{why}");
        let mut old = bzimage(b"");
        old[0x206..0x208].copy_from_slice(&0x207u16.to_le_bytes());
        assert!(payload(&old).unwrap_err().contains("predates"));
        let mut cut = bzimage(b"x");
        cut.truncate(5 * 512 + 0x100 + 4);
        assert!(payload(&cut).unwrap_err().contains("past the end"));
    }
}
