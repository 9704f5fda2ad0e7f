//! One lock per cache entry being made, so that concurrent nestfault runs sharing a cache (a CI
//! runner's vendor matrix, jobs for several kernels) wait for the one fetching or deriving the
//! same thing and then use its result, instead of racing it. The lock is an advisory file lock
//! (`flock`, through std's `File::lock`): it dies with its holder, so a lock left by a killed
//! process never blocks anyone. Waiting is said once and can be interrupted (SIGINT, SIGTERM,
//! SIGHUP).

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;
use std::time::Duration;

/// How often a waiting run looks again (and at the interrupt flag).
const POLL: Duration = Duration::from_millis(100);

/// Held while one cache entry is made; released when dropped.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
}

impl EntryLock {
    /// Takes the lock `<dir>/<name>.lock`, waiting for another holder; `what` says what the
    /// holder is doing ("fetching debian:sid"), for the one line `on_wait` hears if this run has
    /// to wait. An interruption while waiting is an `Interrupted` error.
    pub fn acquire(
        dir: &Path,
        name: &str,
        what: &str,
        on_wait: &mut dyn FnMut(&str),
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(EntryLock { _file: file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(error)) => return Err(error),
            }
            if !said {
                on_wait(&format!("waiting for another nestfault {what}"));
                said = true;
            }
            if crate::interrupt::requested() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    format!(
                        "{} while waiting for another nestfault {what}",
                        crate::interrupt::reason()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A second taker waits, says so once, and gets the lock when the first lets go; a lock is
    /// a file lock, so two opens in one process exclude each other as two processes would.
    #[test]
    fn a_second_taker_waits_for_the_first() {
        let dir = std::env::temp_dir().join(format!("nestfault-lock-test-{}", std::process::id()));
        let first = EntryLock::acquire(&dir, "entry", "testing", &mut |_| {}).unwrap();
        let (sender, waited) = mpsc::channel();
        let taker = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut said = Vec::new();
                let started = Instant::now();
                let lock = EntryLock::acquire(&dir, "entry", "testing", &mut |line| {
                    said.push(line.to_string())
                })
                .unwrap();
                sender.send((said, started.elapsed())).unwrap();
                drop(lock);
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(waited.try_recv().is_err(), "took a lock that is held");
        drop(first);
        taker.join().unwrap();
        let (said, after) = waited.recv().unwrap();
        assert_eq!(said, ["waiting for another nestfault testing"]);
        assert!(after >= Duration::from_millis(250), "{after:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
