//! Kicks a vCPU thread out of KVM_RUN once its deadline has passed: a guest that never exits to
//! the host would otherwise hold the run for ever.
//!
//! Each vCPU thread gets one watchdog thread, started on its first run and kept until the vCPU
//! thread ends. Starting a thread per case cost ~0.8 ms a case under an emulated L0 (QEMU TCG,
//! 7.2). A POSIX timer aimed at the thread would need no thread at all, but minimal kernels lack
//! them (`make tinyconfig` has no CONFIG_POSIX_TIMERS), and those are kernels nestfault boots.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs `run` on this thread with its watchdog armed for `deadline`: from then on, the thread is
/// signalled every [`REPEAT`] (a signal that lands just before KVM_RUN would be lost) until `run`
/// returns. No signal arrives after this returns. Fails, without running `run`, if the watchdog
/// thread could not be started: a run without one could hang for ever.
pub(crate) fn while_armed<T>(deadline: Instant, run: impl FnOnce() -> T) -> io::Result<T> {
    WATCHDOG.with(|watchdog| {
        if let Err(error) = &watchdog.thread {
            return Err(io::Error::other(format!(
                "cannot start the watchdog thread: {error}"
            )));
        }
        watchdog.arm(deadline);
        let _disarm = Disarm(watchdog);
        Ok(run())
    })
}

/// Disarms the watchdog when a run ends, also by a panic. The watchdog signals only under its
/// lock, after checking that it is still armed, so once this is dropped no signal can land on the
/// run it guarded or on anything after it.
struct Disarm<'a>(&'a Watchdog);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

const REPEAT: Duration = Duration::from_millis(20);

const SIGNAL: libc::c_int = libc::SIGUSR1;

thread_local! {
    static WATCHDOG: Watchdog = Watchdog::start();
}

#[derive(Default)]
struct State {
    /// When to signal the vCPU thread next; None while disarmed.
    deadline: Option<Instant>,
    /// The vCPU thread is ending: the watchdog thread ends too.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still a valid one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Watchdog {
    shared: Arc<Shared>,
    /// The watchdog thread, taken when the vCPU thread ends; why it is missing if it never started.
    thread: Result<JoinHandle<()>, String>,
}

impl Watchdog {
    fn start() -> Self {
        // SAFETY: installs a handler that does nothing, without SA_RESTART, so a pending signal
        // makes KVM_RUN return EINTR instead of being ignored or killing the process.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(SIGNAL, &action, std::ptr::null_mut());
        }
        // SAFETY: pthread_self has no preconditions.
        let vcpu_thread = unsafe { libc::pthread_self() };
        let shared = Arc::new(Shared::default());
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vcpu-watchdog".into())
            .spawn(move || watch(&watched, vcpu_thread))
            .map_err(|error| error.to_string());
        Self { shared, thread }
    }

    fn arm(&self, deadline: Instant) {
        self.shared.lock().deadline = Some(deadline);
        self.shared.changed.notify_one();
    }

    /// Not woken: a watchdog that finds itself disarmed when its wait ends goes back to waiting,
    /// and sparing it a wake per run spares the one emulated CPU a context switch.
    fn disarm(&self) {
        self.shared.lock().deadline = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
        let ended = Err("the vCPU thread has ended".to_string());
        if let Ok(thread) = std::mem::replace(&mut self.thread, ended) {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, vcpu_thread: libc::pthread_t) {
    let mut state = shared.lock();
    while !state.closed {
        let wait = match state.deadline {
            None => None,
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    // SAFETY: the vCPU thread is alive: it joins this thread before it ends (Drop
                    // above), and it is armed, so it is inside `while_armed`.
                    unsafe { libc::pthread_kill(vcpu_thread, SIGNAL) };
                    state.deadline = Some(now + REPEAT);
                    continue;
                }
                Some(at - now)
            }
        };
        state = match wait {
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(wait) => {
                shared
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks in a syscall that only a signal ends (reading a pipe nobody writes); true if a
    /// signal ended it.
    fn interrupted_read() -> bool {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut byte = 0u8;
        // SAFETY: reads one byte into `byte` from the pipe just made.
        let read = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        let error = io::Error::last_os_error();
        // SAFETY: closes the two descriptors made above, once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        read == -1 && error.kind() == io::ErrorKind::Interrupted
    }

    /// Sleeps `duration` in one syscall; true if a signal cut the sleep short.
    fn sleep_cut_short(duration: Duration) -> bool {
        let request = libc::timespec {
            tv_sec: 0,
            tv_nsec: duration.as_nanos() as libc::c_long,
        };
        // SAFETY: both pointers are valid for the call.
        unsafe { libc::nanosleep(&request, std::ptr::null_mut()) != 0 }
    }

    #[test]
    fn a_blocked_thread_is_kicked_out_after_its_deadline() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        assert!(while_armed(deadline, interrupted_read).unwrap());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(5),
            "wanted a kick 50 ms after the start, got one after {waited:?}"
        );
    }

    /// A disarm does not wake the watchdog, which may still be waiting for an earlier, later
    /// deadline; arming must wake it for the new one.
    #[test]
    fn a_run_after_one_with_a_far_deadline_is_kicked_on_time() {
        // Armed long enough for the watchdog thread to start and wait for the far deadline.
        let settle = || std::thread::sleep(Duration::from_millis(20));
        while_armed(Instant::now() + Duration::from_secs(30), settle).unwrap();
        let started = Instant::now();
        assert!(while_armed(started + Duration::from_millis(50), interrupted_read).unwrap());
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "wanted a kick 50 ms after the start, got one after {waited:?}"
        );
    }

    #[test]
    fn no_kick_lands_once_the_run_is_over() {
        for _ in 0..20 {
            // Runs that end around their deadline, the moment a late kick would race the disarm.
            let deadline = Instant::now() + Duration::from_millis(2);
            while_armed(deadline, || std::thread::sleep(Duration::from_millis(2))).unwrap();
            assert!(
                !sleep_cut_short(Duration::from_millis(30)),
                "a signal arrived after while_armed returned"
            );
        }
    }
}
