//! The guest side of `--kernel`: this same binary as the /init of the kernel under test. It sets
//! the guest up, runs the selected cases on the guest's KVM and streams one console record per
//! verdict to the host (kernel_mode reads them). The host side never imports this module.

use std::io::Write;
use std::time::Duration;

use clap::Parser;

use crate::boot;
use crate::kernel_mode::{Record, LOADED};
use crate::options::Cli;
use crate::repeat;
use crate::runner::RunOptions;

/// /init: set up, run, report, power off.
pub fn main() -> ! {
    let mut console = std::io::stdout();
    let mut say = |record: Record| {
        let _ = writeln!(console, "{}", record.to_line());
        let _ = console.flush();
    };
    match boot::inner_setup() {
        Err(error) => say(Record::Untestable(error.to_string())),
        Ok(env) => {
            say(Record::Kernel(env.kernel_release.clone()));
            // Not a record: for the progress output, the console log and --verbose.
            println!("{LOADED}{}", env.loaded.join(", "));
            let args = std::iter::once("nestfault".to_string()).chain(env.args);
            match Cli::try_parse_from(args)
                .map_err(anyhow::Error::from)
                .and_then(|cli| inner_run(&cli, &mut say))
            {
                Ok(()) => say(Record::Done),
                Err(error) => say(Record::Untestable(format!(
                    "inner harness error: {error:#}"
                ))),
            }
        }
    }
    boot::power_off()
}

fn inner_run(cli: &Cli, say: &mut dyn FnMut(Record)) -> anyhow::Result<()> {
    if cli.bare_boot {
        // Set up (modules loaded) and done: what the benchmark compares a full run with.
        return Ok(());
    }
    let cases = cli.select(&cli.cases()?, &cli.explicit_vendors().unwrap_or_default())?;
    let options = RunOptions {
        timeout: Duration::from_secs(cli.timeout.unwrap_or(30)),
    };
    // Every run's verdict goes out as it lands; the outer side merges them (collate).
    repeat::run(&cases, &options, cli.repeat, &mut |verdict| {
        say(Record::Verdict(Box::new(verdict.run_result())))
    });
    Ok(())
}
