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

/// The user's `MODULE.PARAM[=VALUE]` kernel parameters that name `module`, in order, as (param,
/// value); module and parameter names compare with '-' and '_' alike, as the kernel's do.
pub fn user_params_for<'a>(
    module: &str,
    user: &'a [String],
) -> impl Iterator<Item = (String, Option<&'a str>)> + 'a {
    let module = canonical(module);
    user.iter().filter_map(move |param| {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (param.as_str(), None),
        };
        let (owner, name) = key.split_once('.')?;
        (canonical(owner) == module).then(|| (canonical(name), value))
    })
}

/// The value the user's kernel parameters give `module.name` (the last one wins, as on the
/// kernel's command line and in modprobe); `None` when none gives it one.
pub fn user_value<'a>(module: &str, name: &str, user: &'a [String]) -> Option<&'a str> {
    let name = canonical(name);
    user_params_for(module, user)
        .filter(|(param, _)| *param == name)
        .filter_map(|(_, value)| value)
        .last()
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// `ours`, the load parameters nestfault gives `module` ("name=value ..."), with the user's
/// `MODULE.PARAM[=VALUE]` kernel parameters for that module applied the way modprobe applies the
/// kernel command line's to a module it loads: a parameter the user sets takes the user's value
/// (the last one given), and the user's others are added.
pub fn with_user_params(module: &str, ours: &str, user: &[String]) -> String {
    let mut params: Vec<(String, Option<String>)> = ours
        .split_whitespace()
        .map(|param| match param.split_once('=') {
            Some((name, value)) => (canonical(name), Some(value.to_string())),
            None => (canonical(param), None),
        })
        .collect();
    for (name, value) in user_params_for(module, user) {
        let value = value.map(str::to_string);
        match params.iter_mut().find(|(known, _)| *known == name) {
            Some((_, old)) => *old = value,
            None => params.push((name, value)),
        }
    }
    params
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        })
        .collect::<Vec<_>>()
        .join(" ")
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

    #[test]
    fn the_users_parameters_win_over_ours_and_reach_only_their_module() {
        let user: Vec<String> = [
            "kvm.tdp_mmu=0",
            "kvm-amd.nested=0",
            "kvm.force_emulation_prefix=1",
            "kvm.force_emulation_prefix=0",
            "quiet",
            "kvm_intel.eptad=0",
            "kvm.flag",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            with_user_params("kvm", "force_emulation_prefix=1", &user),
            "force_emulation_prefix=0 tdp_mmu=0 flag"
        );
        assert_eq!(
            with_user_params("kvm_amd", "nested=1 npt=1", &user),
            "nested=0 npt=1"
        );
        assert_eq!(
            with_user_params("kvm_intel", "nested=1 ept=1 eptad=1", &user),
            "nested=1 ept=1 eptad=0"
        );
        assert_eq!(with_user_params("irqbypass", "", &user), "");
        assert_eq!(
            with_user_params("kvm", "force_emulation_prefix=1", &[]),
            "force_emulation_prefix=1"
        );
    }
}
