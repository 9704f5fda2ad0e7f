//! `--as-host` (hidden; the e2e's "as a host" stage): the kernel under test plays a distribution
//! host. Its KVM is loaded as the distribution loads it (no nestfault parameters, only the
//! user's `--kernel-param`s, so the forced-emulation prefix is off), /dev/kvm belongs to group
//! `kvm` with mode 0660 as udev leaves it, and `nestfault ARGS` runs in direct mode as an
//! unprivileged user, the way the README tells a user to run it. The guest side is here: it
//! makes the users and runs the commands; each one's outcome goes to the host as a record.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The kvm group's id in the guest (Debian's udev rules give /dev/kvm to group kvm).
const KVM_GID: u32 = 994;

/// Who runs a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// An unprivileged user in the kvm group.
    InKvmGroup,
    /// An unprivileged user outside it: /dev/kvm is not theirs to open.
    OutsideKvmGroup,
}

impl User {
    const ALL: [User; 2] = [User::InKvmGroup, User::OutsideKvmGroup];

    /// How `--as-host` spells it before the colon.
    pub fn tag(self) -> &'static str {
        match self {
            User::InKvmGroup => "kvm",
            User::OutsideKvmGroup => "nokvm",
        }
    }

    fn name(self) -> &'static str {
        match self {
            User::InKvmGroup => "tester",
            User::OutsideKvmGroup => "guest",
        }
    }

    fn uid(self) -> u32 {
        match self {
            User::InKvmGroup => 1000,
            User::OutsideKvmGroup => 1001,
        }
    }

    fn groups(self) -> Vec<u32> {
        match self {
            User::InKvmGroup => vec![self.uid(), KVM_GID],
            User::OutsideKvmGroup => vec![self.uid()],
        }
    }
}

/// One `--as-host` value: `kvm: ARGS` or `nokvm: ARGS`, ARGS split at whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCommand {
    pub user: User,
    pub args: Vec<String>,
}

impl HostCommand {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (tag, args) = text
            .split_once(':')
            .ok_or_else(|| format!("--as-host {text:?}: wanted `kvm: ARGS` or `nokvm: ARGS`"))?;
        let user = User::ALL
            .into_iter()
            .find(|user| user.tag() == tag.trim())
            .ok_or_else(|| format!("--as-host {text:?}: the user is `kvm` or `nokvm`"))?;
        Ok(HostCommand {
            user,
            args: args.split_whitespace().map(str::to_string).collect(),
        })
    }
}

/// What one command did, as the guest saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The `--as-host` value it ran.
    pub command: String,
    /// Its exit code; `None` when it could not start or died of a signal (`stderr` says which).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The file its `--output` named, as it was left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Makes the users and gives /dev/kvm to the kvm group, as a distribution host has them.
pub fn prepare() -> std::io::Result<()> {
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    for user in User::ALL {
        let (name, uid) = (user.name(), user.uid());
        passwd.push_str(&format!("{name}:x:{uid}:{uid}::/tmp:/bin/sh\n"));
        group.push_str(&format!("{name}:x:{uid}:\n"));
    }
    group.push_str(&format!("kvm:x:{KVM_GID}:{}\n", User::InKvmGroup.name()));
    fs::create_dir_all("/etc")?;
    fs::write("/etc/passwd", passwd)?;
    fs::write("/etc/group", group)?;
    fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown("/dev/kvm", Some(0), Some(KVM_GID))?;
    fs::set_permissions("/dev/kvm", fs::Permissions::from_mode(0o660))
}

/// Runs `nestfault` (`exe`, this binary) with the command's arguments as its user.
pub fn run(exe: &str, text: &str) -> CommandResult {
    let failed = |why: String| CommandResult {
        command: text.to_string(),
        code: None,
        stdout: String::new(),
        stderr: why,
        output: None,
    };
    let command = match HostCommand::parse(text) {
        Ok(command) => command,
        Err(why) => return failed(why),
    };
    let user = command.user;
    let groups = user.groups();
    let mut process = Command::new(exe);
    process
        .args(&command.args)
        .current_dir("/tmp")
        .env_clear()
        .env("HOME", "/tmp")
        .env("PATH", "/")
        .env("USER", user.name());
    // SAFETY: the closure runs in the child between fork and exec and calls only setgroups,
    // setgid and setuid (async-signal-safe) on a vector allocated before the fork.
    unsafe {
        process.pre_exec(move || {
            let uid = user.uid();
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = match process.output() {
        Ok(output) => output,
        Err(error) => return failed(format!("cannot start {exe} as {}: {error}", user.name())),
    };
    let written = command
        .args
        .iter()
        .position(|arg| arg == "--output")
        .and_then(|at| command.args.get(at + 1))
        .and_then(|path| fs::read_to_string(std::path::Path::new("/tmp").join(path)).ok());
    CommandResult {
        command: text.to_string(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        output: written,
    }
}

/// The kernel parameters of a boot that leaves KVM as a distribution loads it: the
/// forced-emulation prefix off (its default, which nestfault's own parameters would turn on for
/// a built-in KVM), then the user's own, which win.
pub fn stock_kernel_params(user: &[String]) -> Vec<String> {
    std::iter::once("kvm.force_emulation_prefix=0".to_string())
        .chain(user.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_their_user() {
        let command = HostCommand::parse("kvm: --vendor svm --format junit").unwrap();
        assert_eq!(command.user, User::InKvmGroup);
        assert_eq!(command.args, ["--vendor", "svm", "--format", "junit"]);
        assert_eq!(
            HostCommand::parse("nokvm:host").unwrap().user,
            User::OutsideKvmGroup
        );
        assert!(HostCommand::parse("root: host").is_err());
        assert!(HostCommand::parse("host").is_err());
    }

    #[test]
    fn only_the_kvm_user_is_in_the_kvm_group() {
        assert!(User::InKvmGroup.groups().contains(&KVM_GID));
        assert!(!User::OutsideKvmGroup.groups().contains(&KVM_GID));
    }
}
