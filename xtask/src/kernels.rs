//! `cargo xtask kernels`: fetches, without installing, the Debian kernels the
//! end-to-end tests boot, into a cache directory, and lists them.
//!
//! Output (stdout) and the cache's `manifest.tsv` hold one line per kernel:
//! `label<TAB>kernel .deb<TAB>modules .deb or ->`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt};

/// Where the cache is unless --cache says otherwise.
const CACHE_ENV: &str = "NESTFAULT_KERNEL_CACHE";
pub const MANIFEST: &str = "manifest.tsv";

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
            None => default_cache_dir(),
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

/// Which Debian suite a kernel comes from.
#[derive(Clone, Copy)]
enum Suite {
    /// The system's own apt sources (bookworm on this project's machines).
    System,
    /// Another suite through a private apt configuration.
    Private(&'static str),
}

/// A kernel the tests use, and how its package names are built from its ABI
/// (e.g. `6.1.0-40`, `7.2.13+deb14`).
struct KernelSpec {
    label: &'static str,
    suite: Suite,
    /// `<image_prefix><abi><image_suffix>` is the kernel package.
    image_prefix: &'static str,
    image_suffix: &'static str,
    /// `<prefix><abi><suffix>` is the modules package, when split off.
    modules: Option<(&'static str, &'static str)>,
    series: Series,
}

/// Which kernel series a spec takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Exactly this major.minor.
    Exactly(u32, u32),
    /// This major.minor or a later one, the newest available: unstable moves on, and every later
    /// series has the fixes too.
    AtLeast(u32, u32),
}

impl Series {
    /// Whether a kernel ABI or release (`7.2.13+deb14`, `6.1.0-56-amd64`) is of this series.
    pub fn accepts(self, release: &str) -> bool {
        let mut numbers = release.split(['.', '-', '+']).map(str::parse::<u32>);
        let (Some(Ok(major)), Some(Ok(minor))) = (numbers.next(), numbers.next()) else {
            return false;
        };
        match self {
            Series::Exactly(a, b) => (major, minor) == (a, b),
            Series::AtLeast(a, b) => (major, minor) >= (a, b),
        }
    }

    /// What package names of this series start with after the image prefix, for apt's search.
    fn name_prefix(self) -> String {
        match self {
            Series::Exactly(major, minor) => format!("{major}.{minor}."),
            Series::AtLeast(..) => String::new(),
        }
    }
}

/// The series behind a kernel label (`6.1`, `7.2`), for the e2e checks.
pub fn series(label: &str) -> Option<Series> {
    KERNELS
        .iter()
        .find(|spec| spec.label == label)
        .map(|spec| spec.series)
}

const KERNELS: &[KernelSpec] = &[
    // Bookworm: one package with boot/vmlinuz-* and lib/modules/.
    KernelSpec {
        label: "6.1",
        suite: Suite::System,
        image_prefix: "linux-image-",
        image_suffix: "-amd64-unsigned",
        modules: None,
        series: Series::Exactly(6, 1),
    },
    // Unstable: the image and the modules in separate packages. 7.2 has the fixes; when unstable
    // moves to a later series, that is what gets tested.
    KernelSpec {
        label: "7.2",
        suite: Suite::Private("sid"),
        image_prefix: "linux-binary-unsigned-",
        image_suffix: "-amd64",
        modules: Some(("linux-modules-", "-amd64")),
        series: Series::AtLeast(7, 2),
    },
];

/// A fetched kernel: its label and package files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedKernel {
    pub label: String,
    pub image: PathBuf,
    pub modules: Option<PathBuf>,
}

impl FetchedKernel {
    pub fn manifest_line(&self) -> String {
        let modules = self
            .modules
            .as_ref()
            .map_or_else(|| "-".to_owned(), |path| path.display().to_string());
        format!("{}\t{}\t{modules}", self.label, self.image.display())
    }

    pub fn parse_manifest_line(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let label = fields.next()?.to_owned();
        let image = PathBuf::from(fields.next()?);
        let modules = match fields.next()? {
            "-" => None,
            path => Some(PathBuf::from(path)),
        };
        Some(FetchedKernel {
            label,
            image,
            modules,
        })
    }
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").context("neither $NESTFAULT_KERNEL_CACHE nor $HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/nestfault/kernels"))
}

/// The kernels listed in the cache's manifest (for the e2e driver).
pub fn read_manifest(cache: &Path) -> Result<Vec<FetchedKernel>> {
    let path = cache.join(MANIFEST);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: run `cargo xtask kernels` first",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(FetchedKernel::parse_manifest_line)
        .collect())
}

pub fn run(args: &KernelsArgs) -> Result<()> {
    let cache = args.cache.dir()?;
    for label in &args.only {
        if !KERNELS.iter().any(|spec| spec.label == label) {
            bail!(
                "unknown kernel {label:?}: choose from {}",
                KERNELS
                    .iter()
                    .map(|s| s.label)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let fetched = fetch_kernels(&cache, &args.only)?;
    for kernel in &fetched {
        println!("{}", kernel.manifest_line());
    }
    Ok(())
}

/// Fetches the kernels (all, or those labelled in `only`) into `cache` and
/// updates its manifest. Packages already there are not fetched again.
pub fn fetch_kernels(cache: &Path, only: &[String]) -> Result<Vec<FetchedKernel>> {
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let mut fetched = Vec::new();
    for spec in KERNELS {
        if only.is_empty() || only.iter().any(|label| label == spec.label) {
            let kernel = fetch(spec, cache)
                .with_context(|| format!("cannot fetch Debian's {} kernel", spec.label))?;
            fetched.push(kernel);
        }
    }
    write_manifest(cache, &fetched)?;
    Ok(fetched)
}

fn fetch(spec: &KernelSpec, cache: &Path) -> Result<FetchedKernel> {
    let apt = match spec.suite {
        Suite::System => Apt::system(),
        Suite::Private(suite) => {
            let apt = Apt::private(&cache.join(format!("apt-{suite}")), suite)?;
            apt.update_if_stale()?;
            apt
        }
    };
    eprintln!("{}: resolving in {}", spec.label, apt.label());
    let (abi, image_package, image_version) = match newest(spec, &apt)? {
        Some(found) => found,
        // The system's lists may predate the package, or be absent.
        None if matches!(spec.suite, Suite::System) => {
            eprintln!("{}: nothing found; running apt-get update", spec.label);
            apt.update()?;
            newest(spec, &apt)?.with_context(|| no_package_message(spec, &apt))?
        }
        None => bail!(no_package_message(spec, &apt)),
    };
    let image = obtain(&apt, &image_package, &image_version, cache)?;
    let modules = match spec.modules {
        Some((prefix, suffix)) => {
            let package = format!("{prefix}{abi}{suffix}");
            let (_, version) = apt
                .candidates(std::slice::from_ref(&package))?
                .into_iter()
                .next()
                .with_context(|| {
                    format!("{package} has no installable version in {}", apt.label())
                })?;
            Some(obtain(&apt, &package, &version, cache)?)
        }
        None => None,
    };
    Ok(FetchedKernel {
        label: spec.label.to_owned(),
        image,
        modules,
    })
}

fn no_package_message(spec: &KernelSpec, apt: &Apt) -> String {
    format!(
        "no package {}{}*{} ({:?}) found in {}",
        spec.image_prefix,
        spec.series.name_prefix(),
        spec.image_suffix,
        spec.series,
        apt.label()
    )
}

/// (abi, package, version) of the newest kernel package matching `spec`.
fn newest(spec: &KernelSpec, apt: &Apt) -> Result<Option<(String, String, String)>> {
    let pattern = format!(
        "^{}{}",
        regex_escape(spec.image_prefix),
        regex_escape(&spec.series.name_prefix())
    );
    let names: Vec<String> = apt
        .search_names(&pattern)?
        .into_iter()
        .filter(|name| abi_of(spec, name).is_some())
        .collect();
    let mut candidates = apt.candidates(&names)?;
    candidates.sort_by(|(_, a), (_, b)| apt::compare_versions(a, b));
    Ok(candidates.pop().and_then(|(package, version)| {
        let abi = abi_of(spec, &package)?.to_owned();
        Some((abi, package, version))
    }))
}

/// The ABI in a package name of `spec`'s shape, if it is a plain one: that
/// excludes the cloud, rt and dbg flavours (`6.1.0-40-cloud`).
fn abi_of<'a>(spec: &KernelSpec, package: &'a str) -> Option<&'a str> {
    let abi = package
        .strip_prefix(spec.image_prefix)?
        .strip_suffix(spec.image_suffix)?;
    let plain = abi
        .replace("+deb", "")
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    (spec.series.accepts(abi) && plain).then_some(abi)
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = ".+*?()[]{}|^$\\".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The package's .deb in the cache, downloaded unless already there.
pub fn obtain(apt: &Apt, package: &str, version: &str, cache: &Path) -> Result<PathBuf> {
    if let Some(file) = apt::downloaded_file(cache, package, version) {
        eprintln!("{package} {version}: already in {}", cache.display());
        return Ok(file);
    }
    eprintln!("{package} {version}: downloading");
    match apt.download(package, version, cache) {
        Ok(file) => Ok(file),
        // Stale lists point at files the mirror no longer has.
        Err(first) => {
            eprintln!("{package}: download failed ({first:#}); updating the package lists");
            apt.update()?;
            apt.download(package, version, cache)
        }
    }
}

/// Rewrites the manifest: these kernels, plus earlier entries for other labels.
fn write_manifest(cache: &Path, fetched: &[FetchedKernel]) -> Result<()> {
    let mut entries: Vec<FetchedKernel> = read_manifest(cache)
        .unwrap_or_default()
        .into_iter()
        .filter(|old| !fetched.iter().any(|new| new.label == old.label))
        .collect();
    entries.extend(fetched.iter().cloned());
    entries.sort_by(|a, b| a.label.cmp(&b.label));
    let text: String = entries
        .iter()
        .map(|kernel| kernel.manifest_line() + "\n")
        .collect();
    let path = cache.join(MANIFEST);
    let partial = cache.join(format!("{MANIFEST}.partial"));
    fs::write(&partial, text).with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(label: &str) -> &'static KernelSpec {
        KERNELS.iter().find(|s| s.label == label).unwrap()
    }

    #[test]
    fn abi_accepts_only_the_plain_flavour() {
        let bookworm = spec("6.1");
        assert_eq!(
            abi_of(bookworm, "linux-image-6.1.0-56-amd64-unsigned"),
            Some("6.1.0-56")
        );
        assert_eq!(
            abi_of(bookworm, "linux-image-6.1.0-56-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            abi_of(bookworm, "linux-image-6.1.0-56-rt-amd64-unsigned"),
            None
        );
        assert_eq!(
            abi_of(bookworm, "linux-image-6.12.0-1-amd64-unsigned"),
            None
        );
        let sid = spec("7.2");
        assert_eq!(
            abi_of(sid, "linux-binary-unsigned-7.2.13+deb14-amd64"),
            Some("7.2.13+deb14")
        );
        assert_eq!(
            abi_of(sid, "linux-binary-unsigned-7.2.13+deb14-cloud-amd64"),
            None
        );
        // Unstable moving on to a later series still gives a fixed kernel; an older one is not.
        assert_eq!(
            abi_of(sid, "linux-binary-unsigned-7.3.1+deb14-amd64"),
            Some("7.3.1+deb14")
        );
        assert_eq!(abi_of(sid, "linux-binary-unsigned-7.1.9+deb14-amd64"), None);
    }

    #[test]
    fn series_take_releases_and_abis() {
        assert!(Series::Exactly(6, 1).accepts("6.1.0-56-amd64"));
        assert!(!Series::Exactly(6, 1).accepts("6.12.0-1-amd64"));
        assert!(Series::AtLeast(7, 2).accepts("7.2.13+deb14-amd64"));
        assert!(Series::AtLeast(7, 2).accepts("8.0.1"));
        assert!(!Series::AtLeast(7, 2).accepts("6.19.0"));
        assert!(!Series::AtLeast(7, 2).accepts("garbage"));
        assert_eq!(series("7.2"), Some(Series::AtLeast(7, 2)));
    }

    #[test]
    fn escapes_regex() {
        assert_eq!(regex_escape("linux-image-6.1."), "linux-image-6\\.1\\.");
        assert_eq!(regex_escape("a+b"), "a\\+b");
    }

    #[test]
    fn manifest_lines_round_trip() {
        let kernels = [
            FetchedKernel {
                label: "6.1".into(),
                image: "/c/linux-image.deb".into(),
                modules: None,
            },
            FetchedKernel {
                label: "7.2".into(),
                image: "/c/linux-binary.deb".into(),
                modules: Some("/c/linux-modules.deb".into()),
            },
        ];
        for kernel in kernels {
            let line = kernel.manifest_line();
            assert_eq!(FetchedKernel::parse_manifest_line(&line), Some(kernel));
        }
        assert_eq!(
            FetchedKernel {
                label: "6.1".into(),
                image: "/i.deb".into(),
                modules: None
            }
            .manifest_line(),
            "6.1\t/i.deb\t-"
        );
    }
}
