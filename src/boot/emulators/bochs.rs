//! Bochs: boots an isolinux ISO; the serial console goes to a file that is
//! followed while Bochs runs; its curses display draws on a pseudo-terminal
//! that nobody reads but us (no VNC server, no open port).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::backend::{BootRequest, EmulatorBackend};
use super::console::{self, LineSender, LineSplitter, Output, Phase, Progress, Running, Stream};
use super::iso;
use super::options::BootOptions;
use super::outcome::BootReport;
use crate::boot::error::BootError;
use crate::boot::tempdir::private_dir;
use crate::boot::tools::{Location, Requirement};

const PROGRAM: &str = "bochs-bin";
const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: PROGRAM,
        location: Location::Program(PROGRAM),
        package: "bochs",
    },
    Requirement {
        what: "the Bochs BIOS",
        location: Location::File(&[BIOS]),
        package: "bochsbios",
    },
    Requirement {
        what: "the VGA BIOS",
        location: Location::File(&[VGA_BIOS]),
        package: "vgabios",
    },
    Requirement {
        what: "the Bochs term display",
        location: Location::File(&[
            "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so",
            "/usr/lib/bochs/plugins/libbx_term_gui.so",
        ]),
        package: "bochs-term",
    },
    iso::XORRISO,
    iso::ISOLINUX_BIN,
    iso::LDLINUX_C32,
];

/// Bochs boots through a BIOS and isolinux, whose banner reaches the serial
/// console (its SERIAL directive).
const PHASES: &[Phase] = &[Phase {
    name: "boot loader running",
    shown_by: |line| line.starts_with("ISOLINUX"),
}];

/// The CPU Bochs emulates: a Haswell with VMX, EPT (with A/D bits), VPID,
/// unrestricted guest and shadow VMCS. `ips` and `sync=none` are the fastest
/// settings measured. With `fast_boot`, the BIOS does not wait for a key that
/// would open its boot menu (3 s of guest time); the BIOS is done before the
/// kernel starts, so this cannot change a verdict.
fn bochsrc(opts: &BootOptions, iso: &Path, serial: &Path, log: &Path) -> String {
    let memory_mib = opts.memory_mib;
    let rom_options = if opts.fast_boot {
        ", options=fastboot"
    } else {
        ""
    };
    format!(
        "megs: {memory_mib}\n\
         romimage: file={BIOS}{rom_options}\n\
         vgaromimage: file={VGA_BIOS}\n\
         cpu: model=corei7_haswell_4770, count=1, ips=100000000\n\
         pci: enabled=1, chipset=i440fx\n\
         ata0-master: type=cdrom, path=\"{}\", status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev=\"{}\"\n\
         clock: sync=none, time0=local\n\
         display_library: term\n\
         mouse: enabled=0\n\
         log: \"{}\"\n\
         panic: action=report\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n",
        iso.display(),
        serial.display(),
        log.display()
    )
}

/// Bochs, which emulates Intel VMX with EPT.
pub(crate) struct Bochs;

impl EmulatorBackend for Bochs {
    fn requirements(&self) -> &'static [Requirement] {
        REQUIREMENTS
    }

    fn starts_pvh_entry(&self) -> bool {
        false
    }

    fn runs_guest_on_host_tsc(&self) -> bool {
        // Bochs's TSC counts emulated instructions (`ips`), not the host's cycles.
        false
    }

    fn boot(
        &self,
        request: &BootRequest,
        on_line: &mut dyn FnMut(&str),
        on_progress: &mut dyn FnMut(&str),
    ) -> Result<BootReport, BootError> {
        let BootRequest { files, opts, .. } = *request;
        let dir = private_dir("bochs")?;
        on_progress("building the boot ISO");
        let cmdline = opts.kernel_cmdline(&[]);
        let iso = iso::build_iso(dir.path(), &files.kernel, &files.ramdisk, &cmdline)?;
        let serial = dir.path().join("serial.txt");
        let log = dir.path().join("bochs.log");
        let config = dir.path().join("bochsrc");
        let rc = dir.path().join("debugger.rc");
        fs::write(&config, bochsrc(opts, &iso, &serial, &log))
            .map_err(|e| BootError::io("write", &config, e))?;
        // Debian's Bochs has its debugger built in and waits at the first
        // instruction: tell it to go on.
        fs::write(&rc, "continue\n").map_err(|e| BootError::io("write", &rc, e))?;

        let (master, slave) = open_pty()?;
        let slave_copy = slave
            .try_clone()
            .map_err(|e| BootError::io("duplicate", "the pseudo-terminal", e))?;
        let mut command = Command::new(PROGRAM);
        command
            .arg("-q")
            .arg("-f")
            .arg(&config)
            .arg("-rc")
            .arg(&rc)
            .current_dir(dir.path())
            .env("TERM", "vt100")
            .stdin(Stdio::from(slave))
            .stdout(Stdio::from(slave_copy))
            .stderr(Stdio::piped());
        let mut child = console::start_emulator(&mut command, PROGRAM, true, on_progress)?;
        // Our copies of the slave side go with the command, so that the master
        // reads EOF/EIO once Bochs is gone.
        drop(command);
        drain_terminal(master);

        let (sender, output) = channel();
        if let Some(stderr) = child.stderr.take() {
            console::spawn_line_reader(stderr, sender.clone(), Stream::Emulator);
        }
        let ended = Arc::new(AtomicBool::new(false));
        let console = LineSender::new(sender.clone(), Stream::Console);
        follow_file(serial, Arc::clone(&ended), console);
        follow_file(log.clone(), Arc::clone(&ended), ResetWatch::new(sender));
        let running = Running {
            child,
            output,
            ended,
            power_off_codes: &[0, 1],
            label: "[bochs]",
            noise: is_noise,
            // Bochs's guest runs in virtual time and drains its UART first: more room than QEMU.
            power_off_grace: Duration::from_secs(5),
        };
        let mut report =
            console::watch(running, Progress::new(PHASES), opts, on_line, on_progress)?;
        if !report.end.explained_by_console() {
            report.tail.extend(log_tail(&log));
        }
        Ok(report)
    }
}

fn open_pty() -> Result<(OwnedFd, OwnedFd), BootError> {
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize {
        ws_row: 25,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the out-pointers, which
    // are valid; the name and termios pointers may be null; size is valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(BootError::io(
            "open",
            "a pseudo-terminal",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors were just opened by openpty and are owned by
    // nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Reads and discards what Bochs draws, so it never blocks on a full
/// terminal. Ends when Bochs closes the terminal.
fn drain_terminal(master: OwnedFd) {
    std::thread::spawn(move || {
        let mut master = File::from(master);
        let mut buffer = [0u8; 4096];
        while matches!(master.read(&mut buffer), Ok(n) if n > 0) {}
    });
}

/// Follows the serial file as Bochs writes it; reads the rest and stops once
/// `ended` is set.
/// What a followed file's bytes go to.
trait FollowedFile: Send + 'static {
    fn push(&mut self, bytes: &[u8]);
    /// The file will not grow any more.
    fn finish(self);
}

impl FollowedFile for LineSender {
    fn push(&mut self, bytes: &[u8]) {
        LineSender::push(self, bytes);
    }

    fn finish(self) {
        LineSender::finish(self);
    }
}

/// Watches Bochs' log for a triple fault, after which Bochs resets the machine (its
/// reset_on_triple_fault default) and the BIOS starts again: a guest that can only loop. Its
/// line: `exception(): 3rd (13) exception with no resolution, shutdown status is 00h, resetting`.
struct ResetWatch {
    lines: LineSplitter,
    sender: Option<Sender<Output>>,
}

impl ResetWatch {
    fn new(sender: Sender<Output>) -> Self {
        ResetWatch {
            lines: LineSplitter::default(),
            sender: Some(sender),
        }
    }
}

impl FollowedFile for ResetWatch {
    fn push(&mut self, bytes: &[u8]) {
        let sender = &mut self.sender;
        self.lines.push(bytes, |line| {
            if line.contains("exception with no resolution") && line.contains("resetting") {
                if let Some(sender) = sender.take() {
                    let _ = sender.send(Output::Reset);
                }
            }
        });
    }

    fn finish(self) {}
}

/// Follows a file Bochs writes (the serial port, its log) until Bochs has ended.
fn follow_file(path: PathBuf, ended: Arc<AtomicBool>, mut into: impl FollowedFile) {
    std::thread::spawn(move || {
        let mut file = None;
        let mut buffer = [0u8; 4096];
        loop {
            let finishing = ended.load(Ordering::SeqCst);
            if file.is_none() {
                file = File::open(&path).ok();
            }
            if let Some(file) = file.as_mut() {
                // Read everything there is now.
                while let Ok(n @ 1..) = file.read(&mut buffer) {
                    into.push(&buffer[..n]);
                }
            }
            if finishing {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        into.finish();
    });
}

/// What Bochs prints on stderr on every start: informational messages from
/// before its log file is open, its sound library finding no sound card,
/// and where its display went.
fn is_noise(line: &str) -> bool {
    line.trim().is_empty()
        || line.starts_with("ALSA lib ")
        || line.starts_with("Bochs connected to screen")
        || is_info_line(line)
}

/// A Bochs informational message: `00000000000i[PLUGIN] loaded ...`.
fn is_info_line(line: &str) -> bool {
    line.split_once("i[")
        .is_some_and(|(stamp, _)| !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()))
}

/// The last lines of Bochs's own log, without the MSR noise every Linux
/// boot causes, for diagnosing a boot that did not end well.
fn log_tail(log: &Path) -> Vec<String> {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.contains("RDMSR") && !line.contains("WRMSR"))
        .filter(|line| !is_info_line(line))
        .filter(|line| !line.trim().is_empty())
        .rev()
        .take(10)
        .map(|line| format!("[bochs] {}", line.trim_end()))
        .collect();
    lines.reverse();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_headless_and_serial_to_file() {
        let rc_with = |opts: &BootOptions| {
            bochsrc(
                opts,
                Path::new("/t/boot.iso"),
                Path::new("/t/serial.txt"),
                Path::new("/t/bochs.log"),
            )
        };
        let mut opts = BootOptions::for_emulator(crate::boot::Emulator::Bochs);
        let rc = rc_with(&opts);
        assert!(rc.contains("display_library: term\n"));
        assert!(!rc.contains("rfb"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=\"/t/serial.txt\"\n"));
        assert!(rc.contains("cpu: model=corei7_haswell_4770"));
        assert!(rc.contains("megs: 512\n"));
        assert!(
            rc.contains("romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot\n")
        );
        opts.fast_boot = false;
        let rc = rc_with(&opts);
        assert!(rc.contains("romimage: file=/usr/share/bochs/BIOS-bochs-latest\n"));
    }

    #[test]
    fn start_up_chatter_is_noise() {
        assert!(is_noise(
            "00000000000i[PLUGIN] loaded plugin libbx_serial.so"
        ));
        assert!(is_noise(
            "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default"
        ));
        assert!(is_noise("Bochs connected to screen \"/dev/pts/1\""));
        assert!(is_noise(""));
        assert!(!is_noise(
            "00000000000e[CPU0  ] RDMSR: Unknown register 0xe7"
        ));
        assert!(!is_noise(
            "00000000000p[      ] >>PANIC<< bochsrc: unknown option"
        ));
    }

    #[test]
    fn a_triple_fault_in_the_log_is_told_once() {
        let (sender, told) = std::sync::mpsc::channel();
        let mut watch = ResetWatch::new(sender);
        watch.push(b"00114419697e[CPU0  ] interrupt(long mode): vector must be within IDT\n");
        watch.push(b"00114419697e[CPU0  ] exception(): 3rd (13) exception with no resol");
        assert!(told.try_recv().is_err(), "not before the line is whole");
        watch.push(b"ution, shutdown status is 00h, resetting\nagain: exception with no resolution, resetting\n");
        assert!(matches!(told.try_recv(), Ok(Output::Reset)));
        assert!(told.try_recv().is_err(), "once");
    }

    #[test]
    fn log_tail_skips_msr_noise() {
        let dir = private_dir("test").unwrap();
        let log = dir.path().join("bochs.log");
        fs::write(
            &log,
            "00000 [CPU0 ] RDMSR: Unknown register 0xe7\nreal problem\n\
             00001 [CPU0 ] RDMSR: Unknown register 0xe8\n",
        )
        .unwrap();
        assert_eq!(log_tail(&log), vec!["[bochs] real problem"]);
    }
}
