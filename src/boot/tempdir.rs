//! Private temporary directories (mode 0700, under $TMPDIR), removed when dropped, named
//! `nestfault-<purpose>-<pid>-<random>` so that a later run can tell whose they are: a run killed
//! by SIGKILL (or by a signal before its handler was installed) cannot remove its own, so every
//! run first removes those of ours whose process is gone.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::TempDir;

use super::error::BootError;

const PREFIX: &str = "nestfault-";

/// A new private directory for `purpose` (a-z only: the name is parsed back by
/// [`remove_stale_dirs`]).
pub fn private_dir(purpose: &str) -> Result<TempDir, BootError> {
    debug_assert!(purpose.bytes().all(|b| b.is_ascii_lowercase()));
    let parent = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{purpose}-{}-", std::process::id()))
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(|e| BootError::io("create a temporary directory in", parent, e))
}

/// Removes the directories [`private_dir`] made for processes that no longer exist, owned by
/// this user; returns how many. A directory whose process lives (another run, or a reused pid)
/// is left alone.
pub fn remove_stale_dirs() -> usize {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let owner_gone = entry
                .file_name()
                .to_str()
                .and_then(owning_pid)
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            // symlink_metadata: a symlink with a matching name is not ours to follow.
            owner_gone
                && fs::symlink_metadata(entry.path())
                    .is_ok_and(|meta| meta.is_dir() && meta.uid() == me)
        })
        .filter(|entry| fs::remove_dir_all(entry.path()).is_ok())
        .count()
}

/// The pid in a name [`private_dir`] made: `nestfault-<purpose>-<pid>-<random>`.
fn owning_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let (_random, pid, purpose) = (parts.next()?, parts.next()?, parts.next()?);
    let purpose_ok = !purpose.is_empty() && purpose.bytes().all(|b| b.is_ascii_lowercase());
    purpose_ok.then(|| pid.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_removed() {
        let dir = private_dir("test").unwrap();
        let path = dir.path().to_owned();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            owning_pid(path.file_name().unwrap().to_str().unwrap()),
            Some(std::process::id())
        );
        fs::write(path.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn names_parse_back_to_their_pid() {
        assert_eq!(owning_pid("nestfault-kernel-1234-aB3xYz"), Some(1234));
        assert_eq!(owning_pid("nestfault-cli-1234"), None);
        assert_eq!(owning_pid("nestfault-deb-x-1234"), None);
        assert_eq!(owning_pid("other-kernel-1234-aB3xYz"), None);
    }

    #[test]
    fn only_dirs_of_gone_processes_are_removed() {
        // pid_max is at most 2^22: this pid cannot exist.
        let stale = std::env::temp_dir().join(format!("{PREFIX}test-{}-gone", 1u32 << 23));
        fs::create_dir_all(stale.join("inner")).unwrap();
        let live = private_dir("test").unwrap();
        assert!(remove_stale_dirs() >= 1);
        assert!(!stale.exists());
        assert!(live.path().exists());
    }
}
