//! SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) end a run cleanly: the
//! vCPU loop and the emulator wait notice, stop what runs, the cases not finished are reported as
//! interrupted, and the temporary directories are removed on the way out; main then exits 255 (the
//! user must rerun, so `git bisect run` stops rather than judging the commit).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that arrived, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [(libc::c_int, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
];

extern "C" fn on_signal(signal: libc::c_int) {
    // An atomic store is async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() {
    for (signal, _) in SIGNALS {
        // SAFETY: the handler only stores to an atomic. No SA_RESTART: a blocking KVM_RUN or
        // wait returns EINTR, so the loops get to look at the flag.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Whether one of the signals arrived.
pub fn requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}

/// What a case that did not finish says, in every report format: `interrupted by SIGTERM`.
pub fn reason() -> String {
    let received = RECEIVED.load(Ordering::SeqCst);
    let name = SIGNALS
        .iter()
        .find(|(signal, _)| *signal == received)
        .map_or("a signal", |(_, name)| name);
    format!("interrupted by {name}")
}
