//! nestfault: does this kernel's KVM tell an L1 hypervisor the truth about nested page faults?
//! See README.md for use and docs/architecture.md for how the modules fit together.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod as_host;
pub mod boot;
pub mod cache_lock;
pub mod caches;
pub mod cli;
pub mod clock;
pub mod console_stream;
pub mod debian;
pub mod elf;
pub mod environment;
pub mod exit;
pub mod guest_init;
pub mod host;
pub mod host_check;
pub mod input_file;
pub mod interrupt;
pub mod kconfig;
pub mod kernel_mode;
pub mod layout;
pub mod machine;
pub mod mailbox;
pub mod module_param;
pub mod observation;
pub mod options;
pub mod output;
pub mod paging;
pub mod path_io;
pub mod progress;
pub mod repeat;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod selection;
pub mod survey;
pub mod verdict;
pub mod vm;
mod watchdog;
