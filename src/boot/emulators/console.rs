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

use super::options::BootOptions;
use super::outcome::{BootEnd, BootReport};
use crate::boot::error::BootError;
use crate::boot::guest::contract::{INIT_MARKER, POWER_OFF_MARKER};

const TAIL_LINES: usize = 40;
/// The emulator's own last lines kept for when the console cannot explain the end.
const DIAGNOSTIC_LINES: usize = 10;
/// After "Kernel panic" the rest of the panic report still arrives; then an
/// emulator that did not end by itself (Bochs reboots) is killed.
const PANIC_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// How often to look for the emulator's exit once its output has ended.
const ENDING_POLL: Duration = Duration::from_millis(2);
/// Once the emulator ended, how long its readers may take to deliver the
/// rest (a leftover process could hold a pipe open for ever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the reader threads send to the watcher.
pub(crate) enum Output {
    /// A line of the guest's serial console.
    Console(String),
    /// The console's current unterminated line, so far. Some fatal messages
    /// ("-- System halted") end without a newline.
    Unfinished(String),
    /// A line of the emulator's own diagnostics (its stderr).
    Emulator(String),
    /// The emulated machine reset itself (a triple fault), which a guest does only when it
    /// cannot go on: Bochs then starts its BIOS again, and the run would wait for its timeout.
    Reset,
}

/// Which stream a reader follows.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Console,
    Emulator,
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

    /// The line begun but not ended yet, if any.
    pub(crate) fn unfinished(&self) -> Option<String> {
        (!self.partial.is_empty()).then(|| String::from_utf8_lossy(&self.partial).into_owned())
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

/// Sends a byte stream to the watcher as lines of one stream.
pub(crate) struct LineSender {
    splitter: LineSplitter,
    sender: Sender<Output>,
    stream: Stream,
}

impl LineSender {
    pub(crate) fn new(sender: Sender<Output>, stream: Stream) -> Self {
        LineSender {
            splitter: LineSplitter::default(),
            sender,
            stream,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let (sender, stream) = (&self.sender, self.stream);
        self.splitter.push(bytes, |line| {
            let _ = sender.send(wrap(stream, line));
        });
        if let (Stream::Console, Some(rest)) = (stream, self.splitter.unfinished()) {
            let _ = sender.send(Output::Unfinished(rest));
        }
    }

    pub(crate) fn finish(self) {
        if let Some(line) = self.splitter.finish() {
            let _ = self.sender.send(wrap(self.stream, line));
        }
    }
}

fn wrap(stream: Stream, line: String) -> Output {
    match stream {
        Stream::Console => Output::Console(line),
        Stream::Emulator => Output::Emulator(line),
    }
}

/// Reads `input` to its end on a thread, sending its lines.
pub(crate) fn spawn_line_reader(
    mut input: impl Read + Send + 'static,
    sender: Sender<Output>,
    stream: Stream,
) {
    std::thread::spawn(move || {
        let mut lines = LineSender::new(sender, stream);
        let mut buffer = [0u8; 4096];
        loop {
            match input.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => lines.push(&buffer[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        lines.finish();
    });
}

/// Makes the emulator die with us (it must never outlive a killed nestfault)
/// and, for a terminal-based display, gives it `stdin` as controlling tty.
/// Starts an emulator tied to this process (see [`tie_to_parent`]), telling `on_progress`.
pub(crate) fn start_emulator(
    command: &mut Command,
    program: &str,
    controlling_tty: bool,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Child, BootError> {
    tie_to_parent(command, controlling_tty);
    on_progress(&format!("starting {program}"));
    command.spawn().map_err(|cause| BootError::Spawn {
        program: program.into(),
        cause,
    })
}

fn tie_to_parent(command: &mut Command, controlling_tty: bool) {
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
    /// The emulator's stderr lines that say nothing worth keeping.
    pub(crate) noise: fn(&str) -> bool,
    /// How long after the guest announced its power-off the emulator may take to end by itself
    /// before it is stopped: every result has arrived by then, and a kernel that cannot power
    /// off ("Power off not available: System halted instead") must not cost a whole timeout.
    pub(crate) power_off_grace: Duration,
}

/// A boot phase that console lines show.
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) shown_by: fn(&str) -> bool,
}

/// Phases every guest goes through, after the emulator's own.
const KERNEL_BOOTING: Phase = Phase {
    name: "kernel booting",
    // The decompressor's lines (earlyprintk), then the kernel's log.
    shown_by: |line| {
        is_kernel_message(line) || line.contains("KASLR") || line.contains("Decompressing Linux")
    },
};
const INIT_RUNNING: Phase = Phase {
    name: "init running",
    shown_by: |line| line.contains(INIT_MARKER),
};

/// Reports boot phases once each and only forward, whether reached by a
/// console line or declared by the emulator's code.
pub(crate) struct Progress {
    phases: Vec<&'static Phase>,
    reached: Option<usize>,
}

impl Progress {
    /// `own`: the emulator's phases, in order, before the kernel's.
    pub(crate) fn new(own: &'static [Phase]) -> Self {
        Progress {
            phases: own.iter().chain([&KERNEL_BOOTING, &INIT_RUNNING]).collect(),
            reached: None,
        }
    }

    pub(crate) fn reach(&mut self, name: &str, on_progress: &mut dyn FnMut(&str)) {
        if let Some(index) = self.phases.iter().position(|p| p.name == name) {
            self.advance(index, on_progress);
        }
    }

    fn line(&mut self, line: &str, on_progress: &mut dyn FnMut(&str)) {
        if let Some(index) = self.phases.iter().rposition(|p| (p.shown_by)(line)) {
            self.advance(index, on_progress);
        }
    }

    fn advance(&mut self, index: usize, on_progress: &mut dyn FnMut(&str)) {
        if self.reached.is_none_or(|reached| index > reached) {
            self.reached = Some(index);
            on_progress(self.phases[index].name);
        }
    }
}

/// A kernel log line: `[    1.234567] ...` (Debian kernels stamp printk).
fn is_kernel_message(line: &str) -> bool {
    let stamp = line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(stamp, _)| stamp.trim_start());
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    stamp
        .and_then(|stamp| stamp.split_once('.'))
        .is_some_and(|(seconds, micros)| all_digits(seconds) && all_digits(micros))
}

/// Follows `running` until it ends or the timeout runs out.
pub(crate) fn watch(
    mut running: Running,
    mut progress: Progress,
    opts: &BootOptions,
    on_line: &mut dyn FnMut(&str),
    on_progress: &mut dyn FnMut(&str),
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let deadline = crate::clock::deadline_after(opts.timeout);
    let mut log = match &opts.console_log {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(|e| BootError::io("create", path, e))?,
        )),
        None => None,
    };
    let mut state = ConsoleState::default();
    let mut exit: Option<(ExitStatus, Instant)> = None;
    let mut timed_out = false;
    let mut stopped_after_power_off = false;

    loop {
        match running.output.recv_timeout(POLL) {
            Ok(Output::Console(line)) => {
                if opts.verbose {
                    eprintln!("{line}");
                }
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                progress.line(&line, on_progress);
                state.console(&line);
                on_line(&line);
            }
            Ok(Output::Unfinished(text)) => state.check_fatal(&text),
            Ok(Output::Reset) => {
                state.reset_at.get_or_insert_with(Instant::now);
            }
            Ok(Output::Emulator(line)) => {
                if opts.verbose {
                    eprintln!("{} {line}", running.label);
                }
                if !(running.noise)(&line) {
                    let line = format!("{} {line}", running.label);
                    keep_last(&mut state.diagnostics, line, DIAGNOSTIC_LINES);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every reader is done; after the emulator ended that is the end.
            Err(RecvTimeoutError::Disconnected) if exit.is_some() => break,
            // Every reader is done, so the emulator is ending: look for its end soon, not
            // after a whole POLL (which was 0.1 s of every run).
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(ENDING_POLL),
        }
        if let Some((_, ended_at)) = exit {
            if ended_at.elapsed() >= DRAIN_GRACE {
                break;
            }
            continue;
        }
        let status = match running.child.try_wait() {
            Ok(status) => status,
            Err(e) => {
                let _ = running.child.kill();
                return Err(BootError::io("wait for", "the emulator", e));
            }
        };
        let now = Instant::now();
        // After a panic or a reset the guest can only hang or loop: end it after the grace.
        let fatal_over = [state.panic_at, state.reset_at]
            .into_iter()
            .flatten()
            .any(|at| now >= at + PANIC_GRACE);
        let halted = state
            .power_off_at
            .is_some_and(|at| now >= at + running.power_off_grace);
        let status = match status {
            Some(status) => status,
            // Interrupted: stop the emulator, so that its temporary files go with us.
            None if now >= deadline || fatal_over || halted || crate::interrupt::requested() => {
                stopped_after_power_off = halted;
                timed_out = now >= deadline && !halted;
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
    } else if state.reset_at.is_some() {
        BootEnd::Reset
    } else if stopped_after_power_off {
        BootEnd::DidNotPowerOff
    } else if timed_out {
        BootEnd::TimedOut
    } else {
        let (status, _) = exit.expect("the loop ends only after the emulator ended");
        match status.code() {
            Some(code)
                if state.power_off_at.is_some() && running.power_off_codes.contains(&code) =>
            {
                BootEnd::PoweredOff
            }
            Some(0) => BootEnd::Reset,
            Some(code) => BootEnd::EmulatorExited(code),
            None => BootEnd::EmulatorExited(128 + status.signal().unwrap_or(0)),
        }
    };
    let mut tail: Vec<String> = state.tail.into();
    if !end.explained_by_console() {
        tail.extend(state.diagnostics);
    }
    Ok(BootReport {
        end,
        tail,
        elapsed: start.elapsed(),
    })
}

/// Lines after which the guest can only hang or reboot: a kernel panic, or
/// the decompressor giving up on the kernel image.
const FATAL: [&str; 2] = ["Kernel panic", "-- System halted"];

#[derive(Default)]
struct ConsoleState {
    tail: VecDeque<String>,
    diagnostics: VecDeque<String>,
    panic_at: Option<Instant>,
    /// When the emulator said the machine reset itself ([`Output::Reset`]).
    reset_at: Option<Instant>,
    /// When the guest announced its power-off (POWER_OFF_MARKER).
    power_off_at: Option<Instant>,
}

impl ConsoleState {
    fn console(&mut self, line: &str) {
        self.check_fatal(line);
        if line.contains(POWER_OFF_MARKER) && self.power_off_at.is_none() {
            self.power_off_at = Some(Instant::now());
        }
        keep_last(&mut self.tail, line.to_owned(), TAIL_LINES);
    }

    fn check_fatal(&mut self, text: &str) {
        if self.panic_at.is_none() && FATAL.iter().any(|fatal| text.contains(fatal)) {
            self.panic_at = Some(Instant::now());
        }
    }
}

fn keep_last(lines: &mut VecDeque<String>, line: String, limit: usize) {
    if lines.len() == limit {
        lines.pop_front();
    }
    lines.push_back(line);
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
        run_script_told(script, timeout, power_off_codes, |_| {}).0
    }

    /// `run_script`, with `tell` given the channel the readers send on, as an emulator's own
    /// watcher (Bochs' log) would be; also how long the watch went on after the last line.
    fn run_script_told(
        script: &str,
        timeout: Duration,
        power_off_codes: &'static [i32],
        tell: impl FnOnce(Sender<Output>),
    ) -> (BootReport, Duration) {
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
            Stream::Console,
        );
        spawn_line_reader(
            child.stderr.take().unwrap(),
            sender.clone(),
            Stream::Emulator,
        );
        tell(sender);
        let running = Running {
            child,
            output,
            ended: Arc::default(),
            power_off_codes,
            label: "[sh]",
            noise: |line| line.starts_with("noise"),
            power_off_grace: Duration::from_millis(300),
        };
        let opts = BootOptions {
            timeout,
            ..BootOptions::for_emulator(crate::boot::Emulator::QemuTcg)
        };
        let mut progress = Vec::new();
        let mut last_line = Instant::now();
        let report = watch(
            running,
            Progress::new(&[]),
            &opts,
            &mut |_| last_line = Instant::now(),
            &mut |p| progress.push(p.to_owned()),
        )
        .unwrap();
        let after_last_line = last_line.elapsed();
        if report.end == BootEnd::PoweredOff {
            assert_eq!(progress, vec!["init running"]);
        }
        (report, after_last_line)
    }

    /// An emulator that exits a little after its last line (QEMU takes a few milliseconds) is
    /// seen to end at once, not a poll later: every run paid 0.1 s for that.
    #[test]
    fn an_emulator_that_exits_is_seen_to_end_at_once() {
        let script = format!("echo '{INIT_MARKER}'; echo '{POWER_OFF_MARKER}'; sleep 0.02; exit 0");
        let (report, after_last_line) =
            run_script_told(&script, Duration::from_secs(10), &[0], |_| {});
        assert_eq!(report.end, BootEnd::PoweredOff);
        assert!(
            after_last_line < Duration::from_millis(20) + POLL / 2,
            "ended {after_last_line:?} after the last line"
        );
    }

    #[test]
    fn recognises_kernel_messages() {
        assert!(is_kernel_message(
            "[    0.157529] [Firmware Bug]: TSC_DEADLINE disabled"
        ));
        assert!(is_kernel_message("[12345.000001] reboot: Power down"));
        assert!(!is_kernel_message("[bochs] log"));
        assert!(!is_kernel_message("ISOLINUX 6.04"));
    }

    #[test]
    fn phases_only_go_forward() {
        const OWN: &[Phase] = &[Phase {
            name: "boot loader running",
            shown_by: |line| line.starts_with("ISOLINUX"),
        }];
        let mut progress = Progress::new(OWN);
        let mut seen = Vec::new();
        for line in [
            "ISOLINUX 6.04",
            "[    0.1] a",
            "[    0.2] b",
            INIT_MARKER,
            "[   27.1] reboot: Power down",
            "ISOLINUX again",
        ] {
            progress.line(line, &mut |p| seen.push(p.to_owned()));
        }
        assert_eq!(
            seen,
            vec!["boot loader running", "kernel booting", "init running"]
        );
        progress.reach("kernel booting", &mut |p| seen.push(p.to_owned()));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn unterminated_fatal_line_is_cut_short() {
        let report = run_script(
            "printf '\\n\\nXZ-compressed data is corrupt\\n\\n -- System halted'; exec sleep 30",
            Duration::from_secs(20),
            &[0],
        );
        assert_eq!(report.end, BootEnd::Panicked);
        assert!(report.elapsed < Duration::from_secs(10));
        assert_eq!(report.tail.last().unwrap(), " -- System halted");
    }

    #[test]
    fn power_off_is_recognised() {
        let script = format!("echo '{INIT_MARKER}'; echo '{POWER_OFF_MARKER}'; exit 0");
        let report = run_script(&script, Duration::from_secs(10), &[0]);
        assert_eq!(report.end, BootEnd::PoweredOff);
        assert_eq!(report.tail.last().unwrap(), POWER_OFF_MARKER);
    }

    #[test]
    fn a_guest_that_stays_up_after_its_power_off_is_stopped_at_once() {
        let script = format!(
            "echo '{INIT_MARKER}'; echo '{POWER_OFF_MARKER}'; \
             echo 'reboot: Power off not available: System halted instead'; exec sleep 30"
        );
        let report = run_script(&script, Duration::from_secs(20), &[0]);
        assert_eq!(report.end, BootEnd::DidNotPowerOff);
        assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
        assert!(report.end.explained_by_console());
    }

    #[test]
    fn explained_ends_leave_out_emulator_lines() {
        let script =
            format!("echo chatter >&2; echo '{INIT_MARKER}'; echo '{POWER_OFF_MARKER}'; exit 0");
        let report = run_script(&script, Duration::from_secs(10), &[0]);
        assert_eq!(report.end, BootEnd::PoweredOff);
        assert_eq!(report.tail, vec![INIT_MARKER, POWER_OFF_MARKER]);
    }

    #[test]
    fn exit_without_marker_is_a_reset() {
        let report = run_script("echo hello; exit 0", Duration::from_secs(10), &[0]);
        assert_eq!(report.end, BootEnd::Reset);
    }

    /// A machine that reset itself (Bochs after a triple fault, which then boots its BIOS
    /// again) ends the boot as a reset within the grace, not at the timeout.
    #[test]
    fn a_reset_the_emulator_reports_ends_the_boot() {
        let report = run_script_told(
            "echo booting; exec sleep 30",
            Duration::from_secs(20),
            &[0],
            |sender| {
                sender.send(Output::Reset).unwrap();
            },
        )
        .0;
        assert_eq!(report.end, BootEnd::Reset);
        assert!(
            report.elapsed < PANIC_GRACE + Duration::from_secs(2),
            "{report:?}"
        );
    }

    #[test]
    fn emulator_errors_land_in_the_tail() {
        let report = run_script(
            "echo noise >&2; echo 'bad kernel' >&2; exit 1",
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
