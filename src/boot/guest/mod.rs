//! The guest side of a boot: what the kernel under test is given (the initramfs, `initramfs`; its
//! command line, `cmdline`), what host and guest agree on (`contract`: file places and console
//! markers), and what this binary does as the guest's /init (`inner`).

pub(crate) mod cmdline;
pub(crate) mod contract;
pub(crate) mod initramfs;
pub(crate) mod inner;
