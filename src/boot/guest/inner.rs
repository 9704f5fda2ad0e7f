//! The guest side: what nestfault does first when it runs as /init inside the
//! kernel under test, and how it powers the guest off at the end.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::contract::{paths, INIT_MARKER, POWER_OFF_MARKER};
use crate::arch;
use crate::boot::error::BootError;
use crate::boot::input::compression::Compression;
use crate::module_param;
use crate::scenario::VendorKind;

/// What the guest side knows once set up.
#[derive(Clone, Debug)]
pub struct InnerEnv {
    /// The nestfault arguments to run with inside the guest.
    pub args: Vec<String>,
    /// `uname -r` of the kernel under test.
    pub kernel_release: String,
    /// The modules loaded, in order, with their parameters and whether signed
    /// (`kvm_amd nested=1 npt=1 (unsigned)`).
    pub loaded: Vec<String>,
}

/// True when this process is PID 1 in an initramfs built by build_initramfs.
pub fn running_as_init() -> bool {
    std::process::id() == 1 && Path::new(paths::ARGS).exists()
}

/// Mounts /proc, /sys and /dev, quiets the kernel console, loads the KVM
/// modules with their parameters and checks that nested virtualization is on.
pub fn inner_setup() -> Result<InnerEnv, BootError> {
    announce(INIT_MARKER);
    mount("proc", "/proc")?;
    mount("sysfs", "/sys")?;
    mount("devtmpfs", "/dev")?;
    // Only emergencies reach the console from now on, so kernel messages do
    // not cut into nestfault's output lines. Failing to do so is harmless.
    let _ = fs::write("/proc/sys/kernel/printk", "1");

    let vendor_name = read_text(paths::VENDOR)?;
    let vendor = VendorKind::ALL
        .into_iter()
        .find(|kind| kind.name() == vendor_name.trim())
        .ok_or_else(|| BootError::NotOurInitramfs {
            path: paths::VENDOR.into(),
        })?;
    let args = read_text(paths::ARGS)?
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    let mut loaded = Vec::new();
    for line in read_text(paths::LOAD_ORDER)?.lines() {
        let (name, params) = line.split_once('\t').unwrap_or((line, ""));
        let how = load_module(name, params)?;
        let with_params = format!("{name} {params}");
        loaded.push(format!("{} ({how})", with_params.trim_end()));
    }
    check_nested(vendor)?;
    Ok(InnerEnv {
        args,
        kernel_release: kernel_release(),
        loaded,
    })
}

fn announce(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn read_text(path: &'static str) -> Result<String, BootError> {
    fs::read_to_string(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BootError::NotOurInitramfs { path: path.into() },
        _ => BootError::io("read", path, e),
    })
}

fn mount(fstype: &'static str, target: &'static str) -> Result<(), BootError> {
    let mount_error = |cause| BootError::Mount {
        fstype,
        target,
        cause,
    };
    fs::create_dir_all(target).map_err(mount_error)?;
    let source = CString::new(fstype).expect("file system names hold no NUL");
    let target_c = CString::new(target).expect("mount points hold no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Already mounted (e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT).
            e if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            e => Err(mount_error(e)),
        },
    }
}

/// Loads a module: its unsigned copy where there is one and the kernel takes it, else the signed
/// module. Returns which, for the console.
fn load_module(name: &str, params: &str) -> Result<&'static str, BootError> {
    let params_c = CString::new(params).map_err(|_| BootError::NotOurInitramfs {
        path: paths::LOAD_ORDER.into(),
    })?;
    let unsigned = paths::unsigned_module(name);
    let mut refused = false;
    if Path::new(&unsigned).exists() {
        match finit_module(&unsigned, &params_c)? {
            Ok(()) => return Ok("unsigned"),
            // The kernel enforces module signatures (EKEYREJECTED) or is locked down (EPERM).
            Err(error)
                if matches!(error.raw_os_error(), Some(libc::EKEYREJECTED | libc::EPERM)) =>
            {
                refused = true
            }
            Err(error) => return Err(module_load_error(name, params, error)),
        }
    }
    match load_signed_module(name, &params_c)? {
        Ok(()) if refused => Ok("signed: the kernel refused the unsigned copy"),
        Ok(()) => Ok("signed"),
        Err(error) => Err(module_load_error(name, params, error)),
    }
}

/// Loads the module as built, which the initramfs holds as it came (`.ko`, or `.ko.xz` and the
/// like beside an unsigned copy); a compressed one is decompressed here and loaded from memory.
fn load_signed_module(name: &str, params: &CString) -> Result<io::Result<()>, BootError> {
    let found = Compression::ALL
        .into_iter()
        .map(|compression| (paths::signed_module(name, compression), compression))
        .find(|(path, _)| Path::new(path).exists());
    let Some((path, compression)) = found else {
        return Err(BootError::NotOurInitramfs {
            path: paths::signed_module(name, Compression::Plain).into(),
        });
    };
    if compression == Compression::Plain {
        return finit_module(&path, params);
    }
    let packed = fs::read(&path).map_err(|e| BootError::io("read", &path, e))?;
    let image = compression
        .decompress(&packed)
        .map_err(|e| BootError::BadModule {
            path: path.clone().into(),
            reason: format!("cannot decompress: {e}"),
        })?;
    // SAFETY: init_module reads `image.len()` bytes from `image` and the NUL-terminated
    // parameter string; both stay alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    Ok(syscall_result(rc))
}

/// finit_module(2) on the file at `path`; Ok when the module is loaded or already there.
fn finit_module(path: &str, params: &CString) -> Result<io::Result<()>, BootError> {
    let file = File::open(path).map_err(|e| BootError::io("open", path, e))?;
    // SAFETY: finit_module reads the module from a valid open descriptor and
    // the parameter string, a NUL-terminated string alive across the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    Ok(syscall_result(rc))
}

/// A module-loading syscall's outcome: Ok when the module is loaded or already there.
fn syscall_result(rc: libc::c_long) -> io::Result<()> {
    let error = io::Error::last_os_error();
    match rc {
        0 => Ok(()),
        _ if error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        _ => Err(error),
    }
}

fn module_load_error(name: &str, params: &str, error: io::Error) -> BootError {
    let hint = match error.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::EIO) | Some(libc::EOPNOTSUPP) => {
            "; the (emulated) CPU lacks the virtualization extension: kvm_amd needs SVM \
             (QEMU TCG), kvm_intel needs VMX (Bochs)"
        }
        Some(libc::ENOEXEC) => "; the module does not match this kernel",
        Some(libc::ENOENT) => "; a symbol it needs is missing: a dependency did not load",
        Some(libc::EINVAL) => "; a parameter was refused",
        _ => "",
    };
    BootError::ModuleLoad {
        module: name.to_owned(),
        params: if params.is_empty() {
            "no parameters".to_owned()
        } else {
            params.to_owned()
        },
        cause: error,
        hint,
    }
}

fn check_nested(vendor: VendorKind) -> Result<(), BootError> {
    let module = arch::kvm_module(vendor);
    match module_param::read(module, "nested") {
        Some(value) if module_param::is_on(&value) => Ok(()),
        Some(value) => Err(BootError::NestedOff { module, value }),
        None => Err(BootError::KvmAbsent { module }),
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Flushes the console, then switches the guest off. Does not return; if
/// the kernel refuses (not PID 1), exits, which for PID 1 panics the kernel.
pub fn power_off() -> ! {
    let _ = io::stderr().flush();
    announce(POWER_OFF_MARKER);
    drain_console();
    // SAFETY: sync and reboot take no pointers; reboot only acts if allowed.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    eprintln!(
        "nestfault: power-off refused: {}",
        io::Error::last_os_error()
    );
    std::process::exit(1)
}

/// Waits until the serial port has sent everything written so far. Bochs's
/// UART runs in virtual time: without this, the last lines never reach the
/// host. (Measured under Bochs: with it, every line up to the kernel's own
/// "reboot: Power down" arrives.)
fn drain_console() {
    // /dev/console rather than stdout: stdout may have been redirected.
    let console = File::options()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console");
    if let Ok(console) = console {
        // SAFETY: tcdrain only waits on a descriptor we hold open.
        unsafe { libc::tcdrain(console.as_raw_fd()) };
    }
}
