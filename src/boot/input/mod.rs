//! The kernel input: turning `--kernel`/`--modules` into an image, a release and a modules
//! folder (`kernel`, from a bzImage, a built tree `tree`, or Debian packages `deb`, unpacked with
//! `compression`), finding the KVM modules and their dependencies (`modules`), and what the host
//! derives from them and keeps in its caches (`cache`): the uncompressed kernel (`vmlinux`) and
//! unsigned module copies (`unsigned`).

pub(crate) mod cache;
pub(crate) mod compression;
mod deb;
pub(crate) mod kernel;
pub(crate) mod modules;
pub(crate) mod tree;
pub(crate) mod unsigned;
pub(crate) mod vmlinux;
