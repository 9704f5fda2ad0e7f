//! Where nestfault writes: the `--output` report and the `--console-log` files. An output never
//! lands on an input (the same file by any name, or inside the modules directory), and the report
//! goes to a temporary file beside its destination, renamed over it only once complete: a run
//! that fails or is killed leaves the destination as it was, neither empty nor half-written.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error(
        "{flag} {}: that is {input}; nestfault never writes over what it reads or writes \
         already: choose another file",
        path.display()
    )]
    IsInput {
        flag: &'static str,
        path: PathBuf,
        input: String,
    },
    #[error("{flag} {}: {reason}", path.display())]
    Unusable {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// A path nestfault reads (or writes) and the flag that named it.
#[derive(Clone, Debug)]
pub struct NamedPath {
    pub flag: &'static str,
    pub path: PathBuf,
}

/// Checks that `path`, given with `flag`, can be an output file: its directory exists, it is not
/// a directory, and it is none of `others`, nor inside one of them that is a directory.
pub fn check(flag: &'static str, path: &Path, others: &[NamedPath]) -> Result<(), OutputError> {
    let unusable = |reason: String| OutputError::Unusable {
        flag,
        path: path.to_owned(),
        reason,
    };
    if path.is_dir() {
        return Err(unusable("is a directory; name a file".into()));
    }
    let Some(resolved) = resolved(path) else {
        return Err(unusable(format!(
            "its directory {} does not exist",
            parent(path).display()
        )));
    };
    for other in others {
        let inside = other.path.is_dir()
            && other
                .path
                .canonicalize()
                .is_ok_and(|dir| resolved.starts_with(dir));
        if inside || same_file(path, &other.path) {
            return Err(OutputError::IsInput {
                flag,
                path: path.to_owned(),
                input: format!(
                    "{}{} {}",
                    if inside { "inside " } else { "" },
                    other.flag,
                    other.path.display()
                ),
            });
        }
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `path` with its directory made absolute and free of symlinks; None if that directory is
/// missing (or not a directory).
fn resolved(path: &Path) -> Option<PathBuf> {
    let dir = parent(path)
        .canonicalize()
        .ok()
        .filter(|dir| dir.is_dir())?;
    Some(dir.join(path.file_name()?))
}

/// Whether `a` and `b` name one file: by device and inode when both exist (hard links,
/// symlinks), else by their resolved paths.
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => resolved(a).is_some_and(|a| resolved(b) == Some(a)),
    }
}

/// The `--output` report while it is being written.
pub struct ReportFile {
    /// As the user named it, for messages.
    path: PathBuf,
    sink: Sink,
}

enum Sink {
    /// A new or regular file: the report goes to a temporary file beside `target` (the file
    /// itself, a symlink followed) and is renamed over it once complete.
    Replace {
        temporary: NamedTempFile,
        target: PathBuf,
    },
    /// A device or pipe (`/dev/stdout`, a FIFO): nothing there to destroy, and nothing to rename
    /// over it, so the report is written in place.
    Stream(File),
}

impl ReportFile {
    /// Opens what `path` needs now, so that an unwritable destination fails before a long boot.
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        let unusable = |reason: String| OutputError::Unusable {
            flag: "--output",
            path: path.to_owned(),
            reason,
        };
        let sink = match fs::metadata(path) {
            Ok(meta) if !meta.is_file() => Sink::Stream(
                open_stream(path)
                    .map_err(|error| unusable(format!("cannot open it for writing: {error}")))?,
            ),
            _ => {
                let target = fs::canonicalize(path)
                    .ok()
                    .or_else(|| resolved(path))
                    .unwrap_or_else(|| path.to_owned());
                // Beside the target, so that the rename stays on one file system.
                let temporary = tempfile::Builder::new()
                    .prefix(".nestfault-report-")
                    .tempfile_in(parent(&target))
                    .map_err(|error| {
                        unusable(format!("cannot create a file in its directory: {error}"))
                    })?;
                Sink::Replace { temporary, target }
            }
        };
        Ok(ReportFile {
            path: path.to_owned(),
            sink,
        })
    }

    pub fn file(&mut self) -> &mut File {
        match &mut self.sink {
            Sink::Replace { temporary, .. } => temporary.as_file_mut(),
            Sink::Stream(file) => file,
        }
    }

    /// Puts the complete report in place. Dropped without this, the temporary file goes.
    pub fn finish(mut self) -> Result<(), OutputError> {
        let path = self.path.clone();
        let failed = |error: io::Error| OutputError::Unusable {
            flag: "--output",
            path: path.clone(),
            reason: format!("cannot write the report: {error}"),
        };
        self.file().flush().map_err(failed)?;
        let Sink::Replace { temporary, target } = self.sink else {
            return Ok(());
        };
        // A report is for others to read, unlike a temporary file (0600).
        temporary
            .as_file()
            .set_permissions(Permissions::from_mode(0o644))
            .map_err(failed)?;
        temporary
            .persist(&target)
            .map(drop)
            .map_err(|error| failed(error.error))
    }
}

/// Opens a device or FIFO for writing without waiting for a reader (a FIFO without one fails at
/// once, ENXIO), then makes the writes blocking again.
fn open_stream(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: fd is open for the lifetime of `file`; F_GETFL/F_SETFL only change its flags.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nestfault-output-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn input(flag: &'static str, path: &Path) -> NamedPath {
        NamedPath {
            flag,
            path: path.to_owned(),
        }
    }

    #[test]
    fn outputs_never_land_on_inputs() {
        let dir = scratch("inputs");
        let kernel = dir.join("bzImage");
        fs::write(&kernel, "kernel").unwrap();
        std::os::unix::fs::symlink(&kernel, dir.join("link")).unwrap();
        fs::create_dir(dir.join("mods")).unwrap();
        let inputs = [
            input("--kernel", &kernel),
            input("--modules", &dir.join("mods")),
        ];
        for clash in [
            kernel.clone(),
            dir.join("link"),
            dir.join("mods/../bzImage"),
            dir.join("mods/report.json"),
        ] {
            let error = check("--output", &clash, &inputs).unwrap_err();
            assert!(matches!(error, OutputError::IsInput { .. }), "{error}");
        }
        check("--output", &dir.join("report.json"), &inputs).unwrap();
        let missing = check("--output", &dir.join("nowhere/report.json"), &inputs).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let is_dir = check("--console-log", &dir, &[]).unwrap_err();
        assert!(is_dir.to_string().contains("is a directory"), "{is_dir}");
        assert_eq!(fs::read(&kernel).unwrap(), b"kernel");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unfinished_report_leaves_nothing_behind() {
        let dir = scratch("report");
        let path = dir.join("report.json");
        fs::write(&path, "previous").unwrap();
        let mut report = ReportFile::create(&path).unwrap();
        report.file().write_all(b"half").unwrap();
        drop(report);
        assert_eq!(fs::read(&path).unwrap(), b"previous");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let mut report = ReportFile::create(&path).unwrap();
        report.file().write_all(b"whole").unwrap();
        report.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_are_followed_and_devices_written_in_place() {
        let dir = scratch("streams");
        let real = dir.join("real.json");
        fs::write(&real, "previous").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut report = ReportFile::create(&link).unwrap();
        report.file().write_all(b"through the link").unwrap();
        report.finish().unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"through the link");
        let mut null = ReportFile::create(Path::new("/dev/null")).unwrap();
        null.file().write_all(b"gone").unwrap();
        null.finish().unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        fs::remove_dir_all(dir).unwrap();
    }
}
