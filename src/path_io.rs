//! An I/O error together with what was being done and to which path, the one shape every layer's
//! error type carries: "cannot read /x/.config: No such file or directory". The OS error is part
//! of the message rather than a separate source, so printing the error tells the whole story once.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {cause}", path.display())]
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
