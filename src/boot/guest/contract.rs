//! What the host and the guest's /init agree on: where the initramfs puts things, and the lines
//! /init prints for the host to watch. A module of its own, so that neither side imports the
//! other.

/// Printed on the console once /init runs; the host reports "init running".
pub(crate) const INIT_MARKER: &str = "nestfault-init: running";
/// Printed by power_off just before the guest is switched off; the host
/// tells a deliberate power-off from a crash or reset by it.
pub(crate) const POWER_OFF_MARKER: &str = "nestfault-init: powering off";

/// Files that build_initramfs writes and inner_setup reads.
pub(crate) mod paths {
    use crate::boot::input::compression::Compression;

    /// One module per line, `name<TAB>parameters`, in load order.
    pub(crate) const LOAD_ORDER: &str = "/nestfault/modules.load";
    /// Holds, for every entry of LOAD_ORDER, the module as built: `<name>.ko`, or, where
    /// build_initramfs also made an unsigned copy `<name>.unsigned.ko`, the file as it came
    /// (`<name>.ko.xz`, ...), which the guest decompresses only if the kernel refuses the copy.
    pub(crate) const MODULES_DIR: &str = "/nestfault/modules";

    pub(crate) fn signed_module(name: &str, compression: Compression) -> String {
        format!("{MODULES_DIR}/{name}.ko{}", compression.suffix())
    }

    pub(crate) fn unsigned_module(name: &str) -> String {
        format!("{MODULES_DIR}/{name}.unsigned.ko")
    }
    /// The inner nestfault arguments, each terminated by a NUL byte.
    pub(crate) const ARGS: &str = "/nestfault/args";
    /// `amd` or `intel`.
    pub(crate) const VENDOR: &str = "/nestfault/vendor";
    /// The caller's own files (build_initramfs's `files`), by name.
    pub const FILES_DIR: &str = "/nestfault/files";
}
