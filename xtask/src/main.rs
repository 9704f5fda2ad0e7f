//! Developer tasks for nestfault, run as `cargo xtask <task>`.
#![deny(clippy::undocumented_unsafe_blocks)]

mod as_host;
mod bench;
mod e2e;
mod kernels;
mod tree;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nestfault's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch (without installing) the Debian kernels the end-to-end tests boot.
    Kernels(kernels::KernelsArgs),
    /// Run every scenario inside each cached kernel, both vendors, and check the known results.
    E2e(e2e::E2eArgs),
    /// Measure a full run against a plain boot of the same kernel, under QEMU TCG and Bochs.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Kernels(args) => kernels::run(&args),
        Task::E2e(args) => e2e::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
