//! The guest side of `--kernel`: this same binary as the /init of the kernel under test. It sets
//! the guest up, runs the selected cases on the guest's KVM and streams one console record per
//! verdict to the host (kernel_mode reads them). The host side never imports this module.

use std::io::Write;
use std::time::Duration;

use clap::Parser;

use anyhow::Context;

use crate::as_host;
use crate::boot;
use crate::environment::VendorEnvironment;
use crate::kernel_mode::{Record, RecordWriter, LOADED};
use crate::options::Cli;
use crate::repeat;
use crate::runner::{ExitAllowance, RunOptions};

/// /init: set up, run, report, power off.
pub fn main() -> ! {
    let mut console = std::io::stdout();
    let mut writer = RecordWriter::default();
    let mut say = |record: Record| {
        let _ = writeln!(console, "{}", writer.line(record));
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
    if !cli.as_host.is_empty() {
        as_host::prepare().context("making the guest a distribution host")?;
        for command in &cli.as_host {
            say(Record::HostCommand(Box::new(as_host::run(
                "/init", command,
            ))));
        }
        return Ok(());
    }
    if cli.bare_boot {
        // Set up (modules loaded) and done: what the benchmark compares a full run with.
        return Ok(());
    }
    let vendors = cli.explicit_vendors().unwrap_or_default();
    for &vendor in &vendors {
        say(Record::Environment(Box::new(VendorEnvironment::probe(
            vendor, "",
        ))));
    }
    let cases = cli.select(&cli.cases()?, &vendors)?;
    let options = RunOptions {
        timeout: Duration::from_secs(cli.timeout.unwrap_or(30)),
        left_to_exit: ExitAllowance::up_to(vms_to_leave()),
    };
    // Every run's verdict goes out as it lands; the outer side merges them (collate).
    repeat::run(&cases, &options, cli.repeat, &mut |verdict| {
        say(Record::Verdict(Box::new(verdict.run_result())))
    });
    Ok(())
}

/// How many finished VMs the guest may leave for its power-off (see [`ExitAllowance`]): as many
/// as two file descriptors each and a quarter of the memory available now allow, at 1 MiB a VM,
/// about twice what Debian's 7.2 used (SVM under QEMU TCG: 206 VMs, 100 MB; VMX under Bochs: 79
/// VMs, 42 MB). Beyond that, VMs are destroyed as on a host.
fn vms_to_leave() -> usize {
    const DESCRIPTORS_KEPT_FREE: u64 = 64;
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let descriptors = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) } {
        0 => files.rlim_cur.saturating_sub(DESCRIPTORS_KEPT_FREE) / 2,
        _ => 0,
    };
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let memory = available_kib / 4 / 1024;
    usize::try_from(descriptors.min(memory)).unwrap_or(0)
}
