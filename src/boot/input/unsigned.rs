//! Unsigned copies of the KVM modules, which load faster: the kernel skips the
//! signature check (SHA-256 and ECDSA over the whole module, ~1.3 s of guest
//! time for Debian 7.2's kvm.ko under Bochs), and with the symbols nothing
//! relocates against gone, ftrace's per-function symbol lookups at load time
//! shrink too (~2.8 s more). The `.BTF` section goes as well: a kernel with
//! CONFIG_DEBUG_INFO_BTF_MODULES parses and checks a module's BTF type
//! information as it loads it (kvm.ko carries 196 KB), for BPF and tracing
//! only (7.2, side by side: loading the modules took 0.39 instead of 0.42 s
//! under QEMU TCG, 3.0-3.5 instead of 3.2-3.9 s under Bochs). The code and
//! data the kernel loads are the same bytes, so a verdict cannot change; the
//! kernel only notes a taint.
//!
//! So does `__mcount_loc`, the list of the module's `call __fentry__` sites
//! (1554 in 7.2's kvm.ko) that ftrace turns into NOPs at load, recording each
//! and looking up the symbol of each in the module's symbol table, a linear
//! search: 7.2 under QEMU TCG, six runs each side by side, loading the modules
//! took 0.33 instead of 0.47 s (medians). Without the list the calls stay,
//! and each goes to `__fentry__`, which without a tracer attached only
//! returns: what KVM computes is the same, only ftrace cannot trace the
//! module's functions (its tracepoints are unaffected; `--no-fast-boot` loads
//! the modules as they are).
//!
//! And `.static_call_sites`, the module's inline static calls (806 in 7.2's
//! kvm.ko, most of them `kvm_x86_ops` calls). When kvm_amd or kvm_intel sets
//! the vendor's ops at load, the kernel rewrites every such call site live,
//! each with three text pokes through a temporary mm (a TLB flush apiece
//! under TCG). Without the list the calls go through their trampolines, which
//! the kernel updates instead: the same functions with the same arguments, as
//! on an architecture without inline static calls. 7.2 under QEMU TCG, six
//! runs each side by side: loading the modules took 0.20 instead of 0.30 s.
//!
//! And the ORC unwind tables (`.orc_unwind`, `.orc_unwind_ip`, `.orc_header`),
//! which the kernel sorts as it loads a module: 25 million guest instructions
//! for 7.2's KVM modules under QEMU TCG (5% of a whole boot's, counted with a
//! TCG plugin), and loading the modules took 0.15 instead of 0.19 s (medians of
//! five runs). They serve only stack traces: one through KVM's functions is
//! then marked unreliable (`?` frames, found by scanning the stack), while an
//! oops or WARN still names the function it happened in.
//!
//! Whether the kernel accepts an unsigned module (CONFIG_MODULE_SIG_FORCE,
//! module.sig_enforce=1, lockdown) is not known on the host: Debian's split
//! packages carry no config. So the guest tries the unsigned copy first and
//! falls back to the signed module when the kernel refuses it (see
//! `inner::load_module`).
//!
//! The copies are cached ([`CopyCache`]) by the module file they were made of
//! and the strip recipe, so a rerun of the same kernel neither decompresses
//! nor strips its modules again.
//!
//! `strip --strip-unneeded` (binutils) does the stripping where it is
//! installed: rewriting a relocatable ELF's symbol table means renumbering
//! every relocation's symbol, which binutils has done right for decades and a
//! hand-rolled rewrite would have to prove. Without it, only the appended
//! signature is cut off, which needs no ELF rewriting at all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache;
use crate::boot::error::BootError;
use crate::boot::tools::{run_tool, Location};
use crate::elf::Elf;

/// Ends a signed module (include/linux/module_signature.h, MODULE_SIG_STRING).
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`, just before the marker: algo, hash, id_type,
/// signer_len, key_id_len (u8 each), 3 bytes of padding, sig_len (big endian u32).
const SIGNATURE_INFO_LEN: usize = 12;

/// What `strip` is asked to do (see the module documentation); it also names the recipe in the
/// keys of [`CopyCache`], so that copies made another way are not found.
const STRIP_ARGS: &[&str] = &[
    "--strip-unneeded",
    "--remove-section=.BTF",
    "--remove-section=__mcount_loc",
    "--remove-section=.static_call_sites",
    "--remove-section=.orc_unwind",
    "--remove-section=.orc_unwind_ip",
    "--remove-section=.orc_header",
];

/// How many unsigned copies the cache keeps (a KVM module and its dependencies are three or four
/// files, together ~4 MB for Debian's 7.2): the modules of a few kernels.
const CACHE_KEEP: usize = 24;

/// The unsigned copies earlier runs made, by the module file they came from and [`STRIP_ARGS`]:
/// a rerun of the same kernel neither decompresses its modules nor strips them. Only stripped
/// copies are kept; a copy made without binutils is made again.
pub(crate) struct CopyCache {
    dir: PathBuf,
}

impl CopyCache {
    /// The user's cache (`cache::dir`), or None where there is none to write.
    pub(crate) fn open() -> Option<Self> {
        Self::in_dir(cache::dir(cache::UNSIGNED)?)
    }

    pub(crate) fn in_dir(dir: PathBuf) -> Option<Self> {
        fs::create_dir_all(&dir).ok()?;
        Some(Self { dir })
    }

    fn path(&self, packed: &[u8]) -> PathBuf {
        let recipe = STRIP_ARGS.join(" ");
        let key = cache::key(&[packed, recipe.as_bytes()].concat());
        self.dir.join(format!("{key}.ko"))
    }

    /// The copy made earlier of the module file `packed` (as found, compressed or not), if it
    /// is whole: an ELF whose section headers and `.modinfo` lie inside the file. A damaged copy
    /// (a full disk while it was copied in) is removed, so that this run makes it again.
    pub(crate) fn get(&self, packed: &[u8]) -> Option<Vec<u8>> {
        let path = self.path(packed);
        if !cache::touch(&path) {
            return None;
        }
        let copy = fs::read(&path).ok()?;
        let whole = Elf::parse(&copy).and_then(|elf| elf.section(".modinfo"));
        if !matches!(whole, Ok(Some(_))) {
            eprintln!(
                "nestfault: the cached module copy {} is damaged: making it again",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return None;
        }
        Some(copy)
    }

    /// Keeps `copy`, made of the module file `packed`, written first to `scratch`. A cache that
    /// cannot be written only costs the next run the time.
    pub(crate) fn put(&self, packed: &[u8], copy: &[u8], scratch: &Path) {
        let path = self.path(packed);
        let Some(name) = path.file_name() else {
            return;
        };
        let partial = scratch.join(name);
        if fs::write(&partial, copy).is_ok() && cache::install(&partial, &path) {
            cache::prune(&self.dir, "ko", CACHE_KEEP, &[]);
        }
        let _ = fs::remove_file(partial);
    }
}

/// How [`unsigned_copy`] made its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unsigning {
    /// `strip --strip-unneeded` removing `.BTF`, `__mcount_loc` and `.static_call_sites`: no
    /// signature, only the symbols relocations need, no BTF, no lists of ftrace or static-call
    /// sites.
    Stripped,
    /// binutils is not installed: the signature cut off, the symbols kept.
    SignatureCut,
}

/// The module without its signature (and, with binutils, without unneeded
/// symbols), or None when it carries no signature to skip. `scratch` is a
/// private directory for strip's files.
pub(crate) fn unsigned_copy(
    name: &str,
    module: &[u8],
    scratch: &Path,
) -> Result<Option<(Vec<u8>, Unsigning)>, BootError> {
    let Some(unsigned) = without_signature(module) else {
        return Ok(None);
    };
    if Location::Program("strip").find().is_none() {
        return Ok(Some((unsigned.to_vec(), Unsigning::SignatureCut)));
    }
    let input = scratch.join(format!("{name}.ko"));
    let output = scratch.join(format!("{name}.stripped.ko"));
    fs::write(&input, unsigned).map_err(|e| BootError::io("write", &input, e))?;
    let mut strip = Command::new("strip");
    strip.args(STRIP_ARGS).arg("-o").arg(&output).arg(&input);
    run_tool(&mut strip, &format!("stripping {name}.ko"))?;
    let stripped = fs::read(&output).map_err(|e| BootError::io("read", &output, e))?;
    let _ = fs::remove_file(&input);
    let _ = fs::remove_file(&output);
    Ok(Some((stripped, Unsigning::Stripped)))
}

/// The module's ELF image without the appended signature; None when it has
/// none (or its trailer does not add up, which is then left to the kernel).
fn without_signature(module: &[u8]) -> Option<&[u8]> {
    let rest = module.strip_suffix(SIGNATURE_MARKER)?;
    let info_at = rest.len().checked_sub(SIGNATURE_INFO_LEN)?;
    let info = &rest[info_at..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let signer_and_key = usize::from(info[3]) + usize::from(info[4]);
    let end = info_at.checked_sub(sig_len)?.checked_sub(signer_and_key)?;
    Some(&module[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tempdir::private_dir;

    /// A copy is kept under the file it was made of; one that is no whole module (here: not an
    /// ELF at all) is not handed out but removed. (modules.rs's tests find real copies by their
    /// module file, and only by that.)
    #[test]
    fn cached_copies_are_checked_before_use() {
        let dir = private_dir("test").unwrap();
        let copies = CopyCache::in_dir(dir.path().join("cache")).unwrap();
        assert_eq!(copies.get(b"kvm.ko.xz bytes"), None);
        copies.put(b"kvm.ko.xz bytes", b"the copy", dir.path());
        let kept = copies.path(b"kvm.ko.xz bytes");
        assert!(kept.exists());
        // The scratch file went into the cache.
        assert!(!dir.path().join(kept.file_name().unwrap()).exists());
        assert_eq!(copies.get(b"kvm.ko.xz bytes"), None);
        assert!(!kept.exists(), "a damaged copy is removed");
    }

    fn signed(elf: &[u8], signature: &[u8]) -> Vec<u8> {
        let mut module = elf.to_vec();
        module.extend_from_slice(signature);
        let mut info = [0u8; SIGNATURE_INFO_LEN];
        info[2] = 2; // PKEY_ID_PKCS7
        info[8..].copy_from_slice(&(signature.len() as u32).to_be_bytes());
        module.extend_from_slice(&info);
        module.extend_from_slice(SIGNATURE_MARKER);
        module
    }

    #[test]
    fn cuts_exactly_the_signature() {
        let module = signed(b"\x7fELF-the-module", &[0xaa; 300]);
        assert_eq!(without_signature(&module), Some(&b"\x7fELF-the-module"[..]));
    }

    #[test]
    fn unsigned_or_broken_trailers_are_left_alone() {
        assert_eq!(without_signature(b"\x7fELF-the-module"), None);
        let mut lying = signed(b"\x7fELF", &[0xaa; 8]);
        let at = lying.len() - SIGNATURE_MARKER.len() - 4;
        lying[at..at + 4].copy_from_slice(&10_000u32.to_be_bytes());
        assert_eq!(without_signature(&lying), None);
    }
}
