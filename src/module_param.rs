//! KVM's module parameters as sysfs shows them, `/sys/module/<module>/parameters/<name>`: the one
//! reader behind every "does this KVM nest, or force emulation" question, on the host and inside
//! a kernel under test alike.

/// The parameter's value, trimmed; `None` when the module is not loaded (or lacks it).
pub fn read(module: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(path(module, name))
        .ok()
        .map(|value| value.trim().to_owned())
}

/// Whether the parameter can be changed at runtime: sysfs gives it an owner-write bit (root
/// writes it) when the module declares it writable.
pub fn is_writable(module: &str, name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path(module, name)).is_ok_and(|meta| meta.permissions().mode() & 0o200 != 0)
}

pub fn path(module: &str, name: &str) -> String {
    format!("/sys/module/{module}/parameters/{name}")
}

/// Booleans read `Y`/`N`; integer parameters (kvm_amd's `nested`, kvm's
/// `force_emulation_prefix`, a bit mask on newer kernels) are on when not zero.
pub fn is_on(value: &str) -> bool {
    let value = value.trim();
    value == "Y" || value.parse::<u64>().is_ok_and(|number| number != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_integers_read_as_on_or_off() {
        for on in ["Y", "Y\n", "1", "3\n"] {
            assert!(is_on(on), "{on:?}");
        }
        for off in ["N", "0\n", "", "yes"] {
            assert!(!is_on(off), "{off:?}");
        }
        assert_eq!(read("no_such_module", "nested"), None);
        assert_eq!(path("kvm", "nested"), "/sys/module/kvm/parameters/nested");
    }
}
