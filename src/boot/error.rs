//! The boot layer's one error type. Every message says what went wrong and,
//! where there is one, what the user can do about it. Underlying OS errors
//! are part of the message (field `cause`) rather than a separate source, so
//! that printing the error alone tells the whole story, once.

use std::io;
use std::path::PathBuf;

use crate::path_io::PathIo;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Io(PathIo),

    #[error(
        "{} is a kernel tree without {missing}: build it first (`{command}`)",
        tree.display()
    )]
    TreeNotBuilt {
        tree: PathBuf,
        missing: &'static str,
        command: &'static str,
    },

    #[error(
        "{} is not a Linux kernel image: {reason}; pass a bzImage/vmlinuz, a built kernel \
         tree, or a Debian linux-image-*-unsigned / linux-binary-unsigned-* .deb",
        path.display()
    )]
    NotAKernel { path: PathBuf, reason: String },

    #[error("{}: {reason}", path.display())]
    BadPackage { path: PathBuf, reason: String },

    #[error(
        "the kernel {release} needs its modules, but none were found: pass --modules with its \
         lib/modules/{release} directory or its linux-modules-{release}_*.deb{hint}"
    )]
    ModulesMissing { release: String, hint: String },

    #[error(
        "{} holds no modules for kernel {release}{found}; pass the modules that belong to this \
         kernel",
        path.display()
    )]
    ModulesDirMismatch {
        path: PathBuf,
        release: String,
        found: String,
    },

    #[error(
        "module {module}{} not found under {}: the kernel has it neither built in nor as a \
         module file; pass the complete modules directory or package of this kernel",
        needed_by.as_ref().map(|m| format!(" (needed by {m})")).unwrap_or_default(),
        dir.display()
    )]
    ModuleNotFound {
        module: String,
        needed_by: Option<String>,
        dir: PathBuf,
    },

    #[error("modules depend on each other in a cycle: {}", cycle.join(" -> "))]
    ModuleCycle { cycle: Vec<String> },

    #[error("module {}: {reason}", path.display())]
    BadModule { path: PathBuf, reason: String },

    #[error(
        "module {} was built for kernel \"{vermagic}\", not {release}: pass the modules that \
         belong to this kernel",
        path.display()
    )]
    ModuleForOtherKernel {
        path: PathBuf,
        vermagic: String,
        release: String,
    },

    #[error("{}: {reason}; /init must be an x86_64 Linux ELF executable", path.display())]
    BadExecutable { path: PathBuf, reason: String },

    #[error(
        "library {library} (needed by {}) not found in {}: install it, or build the binary \
         statically (x86_64-unknown-linux-musl)",
        needed_by.display(),
        searched.join(", ")
    )]
    LibraryNotFound {
        library: String,
        needed_by: PathBuf,
        searched: Vec<String>,
    },

    #[error("{what} not found: install with `apt-get install {}`", packages.join(" "))]
    EmulatorMissing {
        what: String,
        packages: Vec<&'static str>,
    },

    #[error("{emulator} cannot be used here: {reason}")]
    EmulatorUnsuitable { emulator: String, reason: String },

    #[error("cannot run {program}: {cause}")]
    Spawn { program: String, cause: io::Error },

    #[error("{program} failed ({status}): {output}")]
    ToolFailed {
        program: String,
        status: String,
        output: String,
    },

    #[error(
        "{} is missing: this initramfs was not built by nestfault (build_initramfs)",
        path.display()
    )]
    NotOurInitramfs { path: PathBuf },

    #[error("cannot mount {fstype} on {target}: {cause}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        cause: io::Error,
    },

    #[error("loading module {module} ({params}) failed: {cause}{hint}")]
    ModuleLoad {
        module: String,
        params: String,
        cause: io::Error,
        hint: &'static str,
    },

    #[error(
        "{module} is not in this kernel: it is neither built in nor among the loaded modules; \
         pass the kernel's modules (--modules)"
    )]
    KvmAbsent { module: &'static str },

    #[error(
        "{module} is loaded but nested virtualization is off (parameters/nested = {value}): \
         nestfault loads it with nested=1 unless --kernel-param {module}.nested=... says \
         otherwise; a kernel whose {module} refuses nested=1 cannot be judged"
    )]
    NestedOff { module: &'static str, value: String },
}

impl BootError {
    /// Shorthand for the common "cannot <action> <path>: <io error>" case.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        BootError::Io(PathIo::new(action, path, cause))
    }
}
