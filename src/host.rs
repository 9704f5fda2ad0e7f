//! Facts about the machine nestfault runs on, for choosing what to run and for advice that fits
//! it: the CPU's vendor, and who may open /dev/kvm.

use std::os::unix::fs::MetadataExt;

/// The CPU vendor string of CPUID leaf 0 (EBX, EDX, ECX): "AuthenticAMD", "GenuineIntel", ...
pub fn cpu_vendor() -> String {
    // Leaf 0 exists on every x86-64 CPU.
    let leaf = std::arch::x86_64::__cpuid(0);
    let bytes: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|register| register.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether the CPU is AMD's (or Hygon's, which implements SVM), for SVM; Intel's, for VMX.
pub fn cpu_is_amd() -> bool {
    matches!(cpu_vendor().as_str(), "AuthenticAMD" | "HygonGenuine")
}

pub fn cpu_is_intel() -> bool {
    cpu_vendor() == "GenuineIntel"
}

/// What to do when opening /dev/kvm was refused: the kvm group only where that group may open
/// it; otherwise who may.
pub fn kvm_access_advice() -> String {
    match std::fs::metadata("/dev/kvm") {
        Ok(meta) => access_advice(
            meta.mode(),
            &group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string()),
        ),
        Err(_) => "run as root".into(),
    }
}

/// /dev/kvm's mode and group ("mode 660, group kvm"), or why it cannot be looked at.
pub fn kvm_device_summary() -> String {
    match std::fs::metadata("/dev/kvm") {
        Ok(meta) => format!(
            "mode {:03o}, group {}",
            meta.mode() & 0o777,
            group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string())
        ),
        Err(error) => error.to_string(),
    }
}

/// The advice for a /dev/kvm of this `mode` and `group`.
fn access_advice(mode: u32, group: &str) -> String {
    let group_may = mode & 0o060 == 0o060;
    if group_may && group == "kvm" {
        return format!(
            "/dev/kvm is mode {:03o}, group kvm: add yourself to the kvm group (sudo usermod \
             -aG kvm $USER, then log in again) or run as root",
            mode & 0o777
        );
    }
    let who = if group_may {
        format!("only root and group {group} may open it")
    } else {
        "only root may open it".to_string()
    };
    format!(
        "/dev/kvm is mode {:03o}, group {group}: {who}; run as root, or have an administrator \
         grant access",
        mode & 0o777
    )
}

/// The name of group `gid` in /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == gid.to_string()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_vendor_is_what_proc_cpuinfo_says() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let line = cpuinfo
            .lines()
            .find(|l| l.starts_with("vendor_id"))
            .unwrap();
        assert!(line.ends_with(&cpu_vendor()), "{line} vs {}", cpu_vendor());
        assert!(!(cpu_is_amd() && cpu_is_intel()));
    }

    #[test]
    fn the_kvm_group_is_advised_only_where_it_may_open_dev_kvm() {
        let advice = access_advice(0o20660, "kvm");
        assert!(advice.contains("usermod -aG kvm"), "{advice}");
        assert!(advice.contains("mode 660, group kvm"), "{advice}");
        for (mode, group) in [(0o20600, "root"), (0o20600, "kvm"), (0o20660, "wheel")] {
            let advice = access_advice(mode, group);
            assert!(!advice.contains("usermod"), "{advice}");
            assert!(
                advice.contains(&format!("{:03o}", mode & 0o777)),
                "{advice}"
            );
        }
    }

    #[test]
    fn groups_are_found_by_id() {
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
