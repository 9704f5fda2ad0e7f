//! Progress on stderr while a run prepares and boots: on a terminal one line that updates in
//! place (phase, cases done of total); anywhere else, a line per step, as logs want them.

use std::io::{IsTerminal, Write};

#[derive(Clone, Copy, Debug)]
pub struct Progress {
    in_place: bool,
}

impl Progress {
    /// In place where stderr is a terminal that can move the cursor (not `TERM=dumb`).
    pub fn for_stderr() -> Self {
        let dumb = std::env::var("TERM").is_ok_and(|term| term == "dumb");
        Progress {
            in_place: std::io::stderr().is_terminal() && !dumb,
        }
    }

    /// A step. On a terminal it replaces the line before.
    pub fn step(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = if self.in_place {
            write!(stderr, "\r\u{1b}[K{text}")
        } else {
            writeln!(stderr, "{text}")
        };
        let _ = stderr.flush();
    }

    /// A case's verdict: on a terminal the count so far, elsewhere the case's own line.
    pub fn case(&self, stamp: &str, done: usize, total: usize, line: &str) {
        if self.in_place {
            self.step(&format!("{stamp} {done} of {total} cases"));
        } else {
            self.step(&format!("{stamp} {line}"));
        }
    }

    /// A line that stays (a note the report also carries): the in-place line makes way for it.
    pub fn note(&self, text: &str) {
        if self.in_place {
            self.step("");
        }
        eprintln!("{text}");
    }

    /// Clears the in-place line before the report.
    pub fn finish(&self) {
        if self.in_place {
            self.step("");
        }
    }
}
