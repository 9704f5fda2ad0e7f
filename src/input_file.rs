//! Opening a file the user named as input: regular files only. A FIFO would block the open (and
//! every read) until some writer came, beyond the reach of SIGINT; a pipe from `<(cat bzImage)`
//! can be read only once, while its reader needs the file twice; a device or directory is not
//! what was meant. So the open itself never blocks (O_NONBLOCK), and what it opened is checked
//! (fstat) before a byte is read.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is (or a symlink resolves to) a regular file; otherwise fails
/// with a message that says what it is instead.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| explain_open_error(path, error))?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        // O_NONBLOCK means nothing for a regular file's reads: no need to clear it.
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a pipe (FIFO)"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}; nestfault needs a regular file (save a stream to a file first)"),
    ))
}

/// Opening fails on a name that exists as a symlink for its own reasons: say so, as "No such
/// file or directory" for a dangling symlink reads as if the name itself were missing.
fn explain_open_error(path: &Path, error: io::Error) -> io::Error {
    let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink());
    match error.raw_os_error() {
        Some(libc::ENOENT) if is_symlink => {
            let target = std::fs::read_link(path)
                .map(|target| target.display().to_string())
                .unwrap_or_default();
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("it is a symlink to {target:?}, which does not exist"),
            )
        }
        Some(libc::ELOOP) => io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symlink that loops (or chains too deep)",
        ),
        _ => error,
    }
}

/// The whole of `path` as UTF-8 text, through [`open_regular`].
pub fn read_text(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    io::Read::read_to_string(&mut open_regular(path)?, &mut text).map_err(|error| {
        if error.kind() == io::ErrorKind::InvalidData {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "it is not UTF-8 text (a binary file?)",
            )
        } else {
            error
        }
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nestfault-inputfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn message(result: io::Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn only_regular_files_open() {
        let dir = scratch("kinds");
        std::fs::write(dir.join("plain"), "text").unwrap();
        assert_eq!(read_text(&dir.join("plain")).unwrap(), "text");
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c_path is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Would block for ever without O_NONBLOCK: no writer ever comes.
        assert!(message(open_regular(&fifo)).contains("a pipe (FIFO)"));
        assert!(message(open_regular(&dir)).contains("a directory"));
        assert!(message(open_regular(Path::new("/dev/null"))).contains("a device"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn broken_symlinks_and_binary_files_say_what_they_are() {
        let dir = scratch("links");
        symlink(dir.join("gone"), dir.join("dangling")).unwrap();
        assert!(message(open_regular(&dir.join("dangling"))).contains("does not exist"));
        symlink(dir.join("loop"), dir.join("loop")).unwrap();
        assert!(message(open_regular(&dir.join("loop"))).contains("loops"));
        std::fs::write(dir.join("binary"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
        assert!(message(read_text(&dir.join("binary"))).contains("not UTF-8"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
