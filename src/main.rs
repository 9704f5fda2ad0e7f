//! The `nestfault` binary; everything lives in the library (src/lib.rs). Run as the /init of a
//! kernel under test, it is the guest side of `--kernel`; otherwise the command line.

fn main() -> std::process::ExitCode {
    if nestfault::boot::running_as_init() {
        nestfault::guest_init::main();
    }
    nestfault::cli::main()
}
