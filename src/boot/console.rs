//! Watching a running emulator: its console lines, the phases they show,
//! how it ended, and the timeout that makes every boot end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::BootError;
use super::inner::{INIT_MARKER, POWER_OFF_MARKER};
use super::{BootEnd, BootOptions, BootReport};

const TAIL_LINES: usize = 40;
/// After "Kernel panic" the rest of the panic report still arrives; then an
/// emulator that did not end by itself (Bochs reboots) is killed.
const PANIC_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// Once the emulator ended, how long its readers may take to deliver the
/// rest (a leftover process could hold a pipe open for ever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the reader threads send to the watcher.
pub(crate) enum Output {
    /// A line of the guest's serial console.
    Console(String),
    /// A line of the emulator's own diagnostics (its stderr).
    Emulator(String),
}

/// Cuts a byte stream into lines, dropping the serial console's '\r'.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &byte in bytes {
            match byte {
                b'\n' => emit(self.take()),
                b'\r' => {}
                _ => self.partial.push(byte),
            }
        }
    }

    /// The unterminated rest, if any, at the end of the stream.
    pub(crate) fn finish(mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        line
    }
}

/// Reads `input` to its end on a thread, sending each line wrapped by `wrap`.
pub(crate) fn spawn_line_reader(
    mut input: impl Read + Send + 'static,
    sender: Sender<Output>,
    wrap: fn(String) -> Output,
) {
    std::thread::spawn(move || {
        let mut splitter = LineSplitter::default();
        let mut buffer = [0u8; 4096];
        loop {
            match input.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => splitter.push(&buffer[..n], |line| {
                    let _ = sender.send(wrap(line));
                }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if let Some(line) = splitter.finish() {
            let _ = sender.send(wrap(line));
        }
    });
}

/// Makes the emulator die with us (it must never outlive a killed nestfault)
/// and, for a terminal-based display, gives it `stdin` as controlling tty.
pub(crate) fn tie_to_parent(command: &mut Command, controlling_tty: bool) {
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, setsid, ioctl); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if controlling_tty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0) {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A started emulator and where its output arrives.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) output: Receiver<Output>,
    /// Set once the emulator has ended, so that readers that poll (a file
    /// tail) read the rest and stop.
    pub(crate) ended: Arc<AtomicBool>,
    /// Exit codes that mean a normal power-off (QEMU 0; Bochs 1).
    pub(crate) power_off_codes: &'static [i32],
    /// Prefix for the emulator's own lines in the tail, e.g. "[qemu]".
    pub(crate) label: &'static str,
}

/// Phases shown by console lines: (text in the line, phase), each reported once.
pub(crate) type PhaseRules = &'static [(&'static str, &'static str)];

/// Phases every guest shows.
const COMMON_PHASES: PhaseRules = &[(INIT_MARKER, "init running")];

/// Follows `running` until it ends or the timeout runs out.
pub(crate) fn watch(
    mut running: Running,
    phases: PhaseRules,
    opts: &BootOptions,
    on_line: &mut dyn FnMut(&str),
    on_progress: &mut dyn FnMut(&str),
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut log = match &opts.console_log {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(|e| BootError::io("create", path, e))?,
        )),
        None => None,
    };
    let mut state = ConsoleState::default();
    let mut reported: Vec<&str> = Vec::new();
    let mut exit: Option<(ExitStatus, Instant)> = None;
    let mut timed_out = false;

    loop {
        match running.output.recv_timeout(POLL) {
            Ok(Output::Console(line)) => {
                if opts.verbose {
                    eprintln!("{line}");
                }
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                for &(needle, phase) in phases.iter().chain(COMMON_PHASES) {
                    if line.contains(needle) && !reported.contains(&phase) {
                        reported.push(phase);
                        on_progress(phase);
                    }
                }
                state.console(&line);
                on_line(&line);
            }
            Ok(Output::Emulator(line)) => {
                if opts.verbose {
                    eprintln!("{} {line}", running.label);
                }
                state.remember(format!("{} {line}", running.label));
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every reader is done; after the emulator ended that is the end.
            Err(RecvTimeoutError::Disconnected) if exit.is_some() => break,
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        if let Some((_, ended_at)) = exit {
            if ended_at.elapsed() >= DRAIN_GRACE {
                break;
            }
            continue;
        }
        let status = running
            .child
            .try_wait()
            .map_err(|e| BootError::io("wait for", "the emulator", e))?;
        let now = Instant::now();
        let panic_over = state.panic_at.is_some_and(|at| now >= at + PANIC_GRACE);
        let status = match status {
            Some(status) => status,
            None if now >= deadline || panic_over => {
                timed_out = !panic_over;
                let _ = running.child.kill();
                running
                    .child
                    .wait()
                    .map_err(|e| BootError::io("wait for", "the emulator", e))?
            }
            None => continue,
        };
        exit = Some((status, Instant::now()));
        running.ended.store(true, Ordering::SeqCst);
    }
    if let Some(log) = log.as_mut() {
        let _ = log.flush();
    }

    let end = if state.panic_at.is_some() {
        BootEnd::Panicked
    } else if timed_out {
        BootEnd::TimedOut
    } else {
        let (status, _) = exit.expect("the loop ends only after the emulator ended");
        match status.code() {
            Some(code) if state.powered_off && running.power_off_codes.contains(&code) => {
                BootEnd::PoweredOff
            }
            Some(0) => BootEnd::Reset,
            Some(code) => BootEnd::EmulatorExited(code),
            None => BootEnd::EmulatorExited(128 + status.signal().unwrap_or(0)),
        }
    };
    Ok(BootReport {
        end,
        tail: state.tail.into(),
        elapsed: start.elapsed(),
    })
}

#[derive(Default)]
struct ConsoleState {
    tail: VecDeque<String>,
    panic_at: Option<Instant>,
    powered_off: bool,
}

impl ConsoleState {
    fn console(&mut self, line: &str) {
        if line.contains("Kernel panic") && self.panic_at.is_none() {
            self.panic_at = Some(Instant::now());
        }
        if line.contains(POWER_OFF_MARKER) {
            self.powered_off = true;
        }
        self.remember(line.to_owned());
    }

    fn remember(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::sync::mpsc::channel;

    #[test]
    fn splits_serial_lines() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(b"one\r\ntw", |l| lines.push(l));
        splitter.push(b"o\r\nthr", |l| lines.push(l));
        assert_eq!(lines, vec!["one", "two"]);
        assert_eq!(splitter.finish().as_deref(), Some("thr"));
    }

    fn run_script(script: &str, timeout: Duration, power_off_codes: &'static [i32]) -> BootReport {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tie_to_parent(&mut command, false);
        let mut child = command.spawn().unwrap();
        let (sender, output) = channel();
        spawn_line_reader(
            child.stdout.take().unwrap(),
            sender.clone(),
            Output::Console,
        );
        spawn_line_reader(child.stderr.take().unwrap(), sender, Output::Emulator);
        let running = Running {
            child,
            output,
            ended: Arc::default(),
            power_off_codes,
            label: "[sh]",
        };
        let opts = BootOptions {
            timeout,
            verbose: false,
            console_log: None,
            memory_mib: 0,
        };
        let mut progress = Vec::new();
        let report = watch(running, &[], &opts, &mut |_| {}, &mut |p| {
            progress.push(p.to_owned())
        })
        .unwrap();
        if report.end == BootEnd::PoweredOff {
            assert_eq!(progress, vec!["init running"]);
        }
        report
    }

    #[test]
    fn power_off_is_recognised() {
        let script = format!("echo '{INIT_MARKER}'; echo '{POWER_OFF_MARKER}'; exit 0");
        let report = run_script(&script, Duration::from_secs(10), &[0]);
        assert_eq!(report.end, BootEnd::PoweredOff);
        assert_eq!(report.tail.last().unwrap(), POWER_OFF_MARKER);
    }

    #[test]
    fn exit_without_marker_is_a_reset() {
        let report = run_script("echo hello; exit 0", Duration::from_secs(10), &[0]);
        assert_eq!(report.end, BootEnd::Reset);
    }

    #[test]
    fn emulator_errors_land_in_the_tail() {
        let report = run_script(
            "echo 'bad kernel' >&2; exit 1",
            Duration::from_secs(10),
            &[0],
        );
        assert_eq!(report.end, BootEnd::EmulatorExited(1));
        assert_eq!(report.tail, vec!["[sh] bad kernel"]);
    }

    #[test]
    fn hang_times_out() {
        let report = run_script(
            "echo booting; exec sleep 30",
            Duration::from_millis(500),
            &[0],
        );
        assert_eq!(report.end, BootEnd::TimedOut);
        assert!(report.elapsed < Duration::from_secs(5));
        assert_eq!(report.tail, vec!["booting"]);
    }

    #[test]
    fn panic_without_exit_is_cut_short() {
        let report = run_script(
            "echo 'Kernel panic - not syncing: Attempted to kill init!'; exec sleep 30",
            Duration::from_secs(20),
            &[0],
        );
        assert_eq!(report.end, BootEnd::Panicked);
        assert!(report.elapsed < Duration::from_secs(10));
    }
}
