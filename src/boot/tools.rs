//! Host tools and files the boot layer needs (emulators, xorriso, strip, firmware images): where
//! to find them, which Debian package has them, and running them. A leaf of the boot layer, so
//! that the emulators and the image builders need not import each other.

use std::path::PathBuf;
use std::process::Command;

use super::error::BootError;

/// Something an emulator needs on the host, and the Debian package with it.
pub(crate) struct Requirement {
    pub(crate) what: &'static str,
    pub(crate) location: Location,
    pub(crate) package: &'static str,
}

/// Where something the host must provide is found: a program in PATH or a file.
pub enum Location {
    /// A program looked up in PATH.
    Program(&'static str),
    /// A file at one of these paths.
    File(&'static [&'static str]),
}

impl Location {
    pub fn find(&self) -> Option<PathBuf> {
        match self {
            Location::Program(name) => std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            }),
            Location::File(paths) => paths.iter().map(PathBuf::from).find(|p| p.is_file()),
        }
    }
}

/// Runs a host tool (xorriso, strip) to completion; a failure, with what the tool printed on
/// stderr, is an error naming `what` it was doing.
pub(crate) fn run_tool(command: &mut Command, what: &str) -> Result<(), BootError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|cause| BootError::Spawn {
        program: program.clone(),
        cause,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(BootError::ToolFailed {
        program: format!("{program} ({what})"),
        status: output.status.to_string(),
        output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_are_not_found() {
        assert!(Location::Program("no-such-program-nestfault")
            .find()
            .is_none());
        assert!(Location::Program("sh").find().is_some());
    }
}
