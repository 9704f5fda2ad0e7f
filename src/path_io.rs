//! An I/O error together with what was being done and to which path, the one shape every layer's
//! error type carries: "cannot read /x/.config: No such file or directory". The OS error is part
//! of the message rather than a separate source, so printing the error tells the whole story once.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {}", path.display(), with_causes(cause))]
pub struct PathIo {
    pub action: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

impl PathIo {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        PathIo {
            action,
            path: path.into(),
            cause,
        }
    }
}

/// `error` and every error behind it, "outer: inner: ...". Wrapped I/O errors (tar's "failed to
/// unpack `x`") print only their own words; the OS's ("No space left on device") is behind them.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

/// The OS error at the bottom of `error`, if there is one: "the disk is full" rather than "the
/// package is broken".
pub fn os_error(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(code) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to unpack `boot/vmlinuz`")]
    struct Unpack(#[source] io::Error);

    /// The OS's words survive the wrapping (issue 22: a full TMPDIR said only "failed to unpack").
    #[test]
    fn the_os_cause_is_printed_through_wrappers() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let wrapped = io::Error::other(Unpack(full));
        assert_eq!(os_error(&wrapped), Some(libc::ENOSPC));
        let error = PathIo::new("unpack into", "/tmp/x", wrapped);
        let text = error.to_string();
        assert!(
            text.starts_with("cannot unpack into /tmp/x: failed to unpack `boot/vmlinuz`: "),
            "{text}"
        );
        assert!(text.contains("No space left on device"), "{text}");
        assert_eq!(os_error(&Unpack(io::Error::other("no code"))), None);
    }
}
