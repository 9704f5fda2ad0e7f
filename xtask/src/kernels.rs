//! `cargo xtask kernels`: fetches, without installing, the Debian kernels the end-to-end tests
//! boot into the cache `nestfault --kernel debian:...` uses too, and lists them (one
//! `label<TAB>kernel .deb<TAB>modules .deb or -` line each). The fetching is nestfault's own
//! (nestfault::debian).

use std::path::{Path, PathBuf};

use anyhow::Result;
use nestfault::debian::kernels;
pub use nestfault::debian::kernels::{series, FetchedKernel};

#[derive(clap::Args)]
pub struct CacheArg {
    /// Cache directory [default: $NESTFAULT_KERNEL_CACHE or ~/.cache/nestfault/kernels]
    #[arg(long)]
    cache: Option<PathBuf>,
}

impl CacheArg {
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.cache {
            Some(dir) => Ok(dir.clone()),
            None => Ok(kernels::default_cache_dir()?),
        }
    }
}

/// Which kernels, from which cache: shared by the tasks that use them.
#[derive(clap::Args)]
pub struct KernelsArgs {
    #[command(flatten)]
    pub cache: CacheArg,
    /// Only these kernels (repeatable): 6.1, 7.2
    #[arg(long = "only", value_name = "LABEL")]
    pub only: Vec<String>,
}

/// Fetches the kernels labelled `only` (all when empty) into `cache`; packages already there are
/// not fetched again.
pub fn fetch_kernels(cache: &Path, only: &[String]) -> Result<Vec<FetchedKernel>> {
    Ok(kernels::fetch_labelled(cache, only, &mut |phase| {
        eprintln!("{phase}")
    })?)
}

pub fn run(args: &KernelsArgs) -> Result<()> {
    for kernel in fetch_kernels(&args.cache.dir()?, &args.only)? {
        println!("{}", kernel.manifest_line());
    }
    Ok(())
}
