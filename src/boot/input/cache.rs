//! The host's caches of what it derives from a kernel's files, so that a rerun of the same files
//! (the e2e's stages, the bench, a CI job on a fixed kernel) need not derive it again: the
//! vmlinux extracted from a bzImage (`vmlinux`) and the unsigned copies of KVM modules
//! (`unsigned`). Entries are named by the SHA-256 of what they came from, so a changed input is
//! a miss, never a stale hit; each cache keeps only its most recently used entries.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The extracted vmlinux files.
pub const VMLINUX: &str = "vmlinux";
/// The unsigned copies of KVM modules.
pub const UNSIGNED: &str = "unsigned";

/// The directories of both caches, where there is a cache at all: for a benchmark that reads
/// them before it times a run.
pub fn dirs() -> Vec<PathBuf> {
    [VMLINUX, UNSIGNED].into_iter().filter_map(dir).collect()
}

/// `$XDG_CACHE_HOME/nestfault/<kind>`, or `~/.cache/nestfault/<kind>`.
pub fn dir(kind: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("nestfault").join(kind))
}

/// The name an entry derived from `input` has: its SHA-256 in hex.
pub(crate) fn key(input: &[u8]) -> String {
    Sha256::digest(input)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Marks a cached file as just used (its modification time orders [`prune`]); false if it is
/// not there.
pub(crate) fn touch(path: &Path) -> bool {
    fs::File::options()
        .append(true)
        .open(path)
        .and_then(|file| file.set_modified(SystemTime::now()))
        .is_ok()
}

/// Moves `partial` (written in full elsewhere) to `path`, so that a concurrent run never reads
/// half a file; false if it could not.
pub(crate) fn install(partial: &Path, path: &Path) -> bool {
    fs::rename(partial, path)
        .or_else(|_| fs::copy(partial, path).map(drop))
        .is_ok()
}

/// Removes all but the `keep` most recently used entries of `cache` whose names end in
/// `.<extension>`, each with its `companions` (the same name with those extensions instead).
pub(crate) fn prune(cache: &Path, extension: &str, keep: usize, companions: &[&str]) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let mut found: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .filter_map(|path| Some((fs::metadata(&path).ok()?.modified().ok()?, path)))
        .collect();
    found.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, stale) in found.into_iter().skip(keep) {
        for companion in companions {
            let _ = fs::remove_file(stale.with_extension(companion));
        }
        let _ = fs::remove_file(stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tempdir::private_dir;
    use std::time::Duration;

    #[test]
    fn keys_are_the_sha256_of_the_input() {
        assert_eq!(
            key(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The least recently used entries go, with their companions; others stay.
    #[test]
    fn prune_keeps_the_most_recently_used() {
        let dir = private_dir("test").unwrap();
        let cache = dir.path();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        for name in ["a", "b", "c"] {
            fs::write(cache.join(format!("{name}.entry")), name).unwrap();
            fs::write(cache.join(format!("{name}.note")), name).unwrap();
            let entry = fs::File::options()
                .append(true)
                .open(cache.join(format!("{name}.entry")))
                .unwrap();
            entry.set_modified(long_ago).unwrap();
        }
        fs::write(cache.join("other.file"), "").unwrap();
        assert!(touch(&cache.join("b.entry")));
        assert!(!touch(&cache.join("missing.entry")));
        prune(cache, "entry", 1, &["note"]);
        let mut left: Vec<String> = fs::read_dir(cache)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b.entry", "b.note", "other.file"]);
    }
}
