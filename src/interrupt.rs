//! SIGINT and SIGTERM end a run cleanly: the vCPU loop and the emulator wait notice, stop what
//! runs, and the temporary directories are removed on the way out; main then exits 255 (a
//! harness error, so `git bisect run` stops rather than judging the commit).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // An atomic store is async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM from now on.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
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

/// Whether SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
