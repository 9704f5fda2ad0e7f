//! Debian's kernels, fetched without installing them: apt with the system's configuration or a
//! private one for another suite (apt), and which packages make a kernel (kernels). Shared by
//! `nestfault --kernel debian:SUITE|VERSION` and `cargo xtask kernels`, with one cache.

pub mod apt;
pub mod kernels;

use std::io;
use std::path::PathBuf;

use crate::path_io::PathIo;

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(transparent)]
    Io(PathIo),

    #[error("{program} not found: fetching Debian kernels needs apt (`sudo apt-get install apt`, on Debian or Ubuntu)")]
    AptMissing { program: String },

    #[error("{what} failed ({status}), using {using}:\n{stderr}{hint}")]
    AptFailed {
        what: String,
        status: String,
        using: String,
        stderr: String,
        hint: &'static str,
    },

    #[error(
        "cannot reach the Debian archive ({using}); apt says:\n{apt}\nnestfault fetches \
         debian: kernels with apt; a kernel already in the cache runs without the network \
         (`nestfault cache` lists what it holds)"
    )]
    Unreachable { using: String, apt: String },

    #[error("{0}")]
    NoSources(String),

    #[error("no kernel cache: {0}")]
    NoCache(String),

    #[error(
        "unknown Debian kernel {0}: use debian:SUITE (sid, trixie, bookworm, trixie-backports, \
         ...) or debian:VERSION (7.2, 6.12.117)"
    )]
    BadRequest(String),

    #[error(
        "no Debian kernel found: looked for {0} (the archive holds each suite's current kernel \
         only)"
    )]
    NotFound(String),
}

impl DebianError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        DebianError::Io(PathIo::new(action, path, cause))
    }
}
