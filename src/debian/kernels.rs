//! Which Debian kernel packages to fetch, and fetching them (without installing) into a cache:
//! the labelled kernels the end-to-end tests boot (`cargo xtask kernels`), and whatever
//! `--kernel debian:SUITE|VERSION` asks for.
//!
//! The cache's `manifest.tsv` holds one line per labelled kernel:
//! `label<TAB>kernel .deb<TAB>modules .deb or ->`.

use std::fs;
use std::path::{Path, PathBuf};

use super::apt::{self, Apt};
use super::DebianError;
use crate::cache_lock::EntryLock;

type Result<T> = std::result::Result<T, DebianError>;

/// Where the cache is when neither --cache nor this variable say otherwise:
/// `~/.cache/nestfault/kernels`.
pub const CACHE_ENV: &str = "NESTFAULT_KERNEL_CACHE";
pub const MANIFEST: &str = "manifest.tsv";

/// Which Debian suite a kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The system's own apt sources (bookworm on this project's machines).
    System,
    /// Another suite through a private apt configuration.
    Private(String),
}

/// How a suite packages its kernels, as names built from the kernel's ABI (`6.1.0-40`,
/// `7.2.13+deb14`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageLayout {
    /// `<image_prefix><abi><image_suffix>` is the kernel package.
    image_prefix: &'static str,
    image_suffix: &'static str,
    /// `<prefix><abi><suffix>` is the modules package, when split off.
    modules: Option<(&'static str, &'static str)>,
}

/// Up to trixie: one package with boot/vmlinuz-* and lib/modules/.
const SINGLE: PackageLayout = PackageLayout {
    image_prefix: "linux-image-",
    image_suffix: "-amd64-unsigned",
    modules: None,
};
/// Unstable and backports: the image and the modules in separate packages.
const SPLIT: PackageLayout = PackageLayout {
    image_prefix: "linux-binary-unsigned-",
    image_suffix: "-amd64",
    modules: Some(("linux-modules-", "-amd64")),
};

/// A kernel to fetch: from where, in which layout, of which series.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub label: String,
    pub suite: Suite,
    layout: PackageLayout,
    pub series: Series,
    /// Only a package whose version starts with this (`6.12.117` takes `6.12.117-1`).
    version: Option<String>,
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
        let Some((major, minor)) = major_minor(release) else {
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

/// `7.2` from `7.2.13+deb14`, `6.1.0-56-amd64` or `6.12`.
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(['.', '-', '+']).map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// The kernels the end-to-end tests use, by label.
pub fn labelled() -> Vec<KernelSpec> {
    vec![
        KernelSpec {
            label: "6.1".into(),
            suite: Suite::System,
            layout: SINGLE,
            series: Series::Exactly(6, 1),
            version: None,
        },
        // 7.2 has the fixes; when unstable moves to a later series, that is what gets tested.
        KernelSpec {
            label: "7.2".into(),
            suite: Suite::Private("sid".into()),
            layout: SPLIT,
            series: Series::AtLeast(7, 2),
            version: None,
        },
    ]
}

/// The series behind a kernel label (`6.1`, `7.2`), for the e2e checks.
pub fn series(label: &str) -> Option<Series> {
    labelled()
        .into_iter()
        .find(|spec| spec.label == label)
        .map(|spec| spec.series)
}

/// Suites searched for `debian:VERSION`, newest first.
const VERSION_SUITES: [&str; 3] = ["sid", "trixie", "bookworm"];

/// What `debian:<request>` may mean, in the order to try: a suite's newest kernel in either
/// layout, or a kernel version (`6.12.117`, `6.12`) in any of the suites Debian keeps kernels in.
pub fn specs_for_request(request: &str) -> Result<Vec<KernelSpec>> {
    let label = format!("debian:{request}");
    let is_suite =
        !request.is_empty() && request.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if is_suite {
        return Ok([SPLIT, SINGLE]
            .into_iter()
            .map(|layout| KernelSpec {
                label: label.clone(),
                suite: Suite::Private(request.to_owned()),
                layout,
                series: Series::AtLeast(0, 0),
                version: None,
            })
            .collect());
    }
    let valid_version = request.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let (major, minor) = major_minor(request)
        .filter(|_| valid_version)
        .ok_or_else(|| DebianError::BadRequest(label.clone()))?;
    Ok(VERSION_SUITES
        .into_iter()
        .flat_map(|suite| {
            [SPLIT, SINGLE]
                .into_iter()
                .map(move |layout| (suite, layout))
        })
        .map(|(suite, layout)| KernelSpec {
            label: label.clone(),
            suite: Suite::Private(suite.to_owned()),
            layout,
            series: Series::Exactly(major, minor),
            version: Some(request.to_owned()),
        })
        .collect())
}

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

/// `$NESTFAULT_KERNEL_CACHE`, or `~/.cache/nestfault/kernels`.
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| DebianError::NoCache(format!("neither ${CACHE_ENV} nor $HOME is set")))?;
    Ok(PathBuf::from(home).join(".cache/nestfault/kernels"))
}

/// The kernels listed in the cache's manifest.
pub fn read_manifest(cache: &Path) -> Result<Vec<FetchedKernel>> {
    let path = cache.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| DebianError::io("read", &path, e))?;
    Ok(text
        .lines()
        .filter_map(FetchedKernel::parse_manifest_line)
        .collect())
}

/// Fetches the labelled kernels (all, or those in `only`) into `cache` and updates its
/// manifest. Packages already there are not fetched again.
pub fn fetch_labelled(
    cache: &Path,
    only: &[String],
    on_progress: &mut dyn FnMut(&str),
) -> Result<Vec<FetchedKernel>> {
    let specs = labelled();
    if let Some(unknown) = only
        .iter()
        .find(|label| !specs.iter().any(|spec| &spec.label == *label))
    {
        return Err(DebianError::BadRequest(format!(
            "{unknown} (labelled kernels: {})",
            specs
                .iter()
                .map(|spec| spec.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    fs::create_dir_all(cache).map_err(|e| DebianError::io("create", cache, e))?;
    let mut fetched = Vec::new();
    for spec in &specs {
        if only.is_empty() || only.contains(&spec.label) {
            let found = fetch(spec, cache, on_progress)?
                .ok_or_else(|| DebianError::NotFound(spec_description(spec)))?;
            fetched.push(found);
        }
    }
    write_manifest(cache, &fetched)?;
    Ok(fetched)
}

/// Fetches what `debian:<request>` names into `cache`: the first of its specs found.
pub fn fetch_request(
    request: &str,
    cache: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<FetchedKernel> {
    fs::create_dir_all(cache).map_err(|e| DebianError::io("create", cache, e))?;
    let specs = specs_for_request(request)?;
    for spec in &specs {
        if let Some(found) = fetch(spec, cache, on_progress)? {
            return Ok(found);
        }
    }
    let tried: Vec<String> = specs.iter().map(spec_description).collect();
    Err(DebianError::NotFound(tried.join("; ")))
}

/// Fetches the newest kernel of `spec` into `cache`; None when its suite has none.
fn fetch(
    spec: &KernelSpec,
    cache: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Option<FetchedKernel>> {
    // One run at a time fetches a suite into this cache; the others wait and then find its
    // packages there (apt's own lock would make them fail instead).
    let suite = match &spec.suite {
        Suite::System => "system",
        Suite::Private(suite) => suite.as_str(),
    };
    let lock_name = format!("apt-{suite}");
    let _lock = EntryLock::acquire(
        cache,
        &lock_name,
        &format!("fetching {}", spec.label),
        on_progress,
    )
    .map_err(|e| DebianError::io("lock", cache.join(format!("{lock_name}.lock")), e))?;
    let apt = match &spec.suite {
        Suite::System => Apt::system(),
        Suite::Private(suite) => Apt::private(&cache.join(format!("apt-{suite}")), suite)?,
    };
    on_progress(&format!(
        "{}: looking for {}",
        spec.label,
        spec_description(spec)
    ));
    apt.update_if_stale(on_progress)?;
    let found = match newest(spec, &apt)? {
        Some(found) => found,
        // The system's lists may predate the package, or be absent.
        None if spec.suite == Suite::System => {
            on_progress(&format!(
                "{}: nothing found; running apt-get update",
                spec.label
            ));
            apt.update()?;
            match newest(spec, &apt)? {
                Some(found) => found,
                None => return Ok(None),
            }
        }
        None => return Ok(None),
    };
    let (abi, image_package, image_version) = found;
    let image = obtain(&apt, &image_package, &image_version, cache, on_progress)?;
    let modules = match spec.layout.modules {
        Some((prefix, suffix)) => {
            let package = format!("{prefix}{abi}{suffix}");
            let (_, version) = apt
                .candidates(std::slice::from_ref(&package))?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    DebianError::NotFound(format!(
                        "{package} (the modules of {image_package}) in {}",
                        apt.label()
                    ))
                })?;
            Some(obtain(&apt, &package, &version, cache, on_progress)?)
        }
        None => None,
    };
    Ok(Some(FetchedKernel {
        label: spec.label.clone(),
        image,
        modules,
    }))
}

fn spec_description(spec: &KernelSpec) -> String {
    let suite = match &spec.suite {
        Suite::System => "the system's apt sources".to_owned(),
        Suite::Private(suite) => format!("Debian {suite}"),
    };
    let version = spec
        .version
        .as_ref()
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    format!(
        "{}{}*{}{version} in {suite}",
        spec.layout.image_prefix,
        spec.series.name_prefix(),
        spec.layout.image_suffix,
    )
}

/// (abi, package, version) of the newest kernel package matching `spec`.
fn newest(spec: &KernelSpec, apt: &Apt) -> Result<Option<(String, String, String)>> {
    let pattern = format!(
        "^{}{}",
        regex_escape(spec.layout.image_prefix),
        regex_escape(&spec.series.name_prefix())
    );
    let names: Vec<String> = apt
        .search_names(&pattern)?
        .into_iter()
        .filter(|name| abi_of(spec, name).is_some())
        .collect();
    let mut candidates = apt.candidates(&names)?;
    if let Some(wanted) = &spec.version {
        candidates.retain(|(_, version)| version_matches(version, wanted));
    }
    candidates.sort_by(|(_, a), (_, b)| apt::compare_versions(a, b));
    Ok(candidates.pop().and_then(|(package, version)| {
        let abi = abi_of(spec, &package)?.to_owned();
        Some((abi, package, version))
    }))
}

/// Whether a package version (`6.12.117-1`) is the version asked for (`6.12.117`, `6.12`), at
/// a component boundary: `6.1` is not `6.12.117`.
fn version_matches(version: &str, wanted: &str) -> bool {
    version
        .strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+', '~']))
}

/// The ABI in a package name of `spec`'s shape, if it is a plain one: that
/// excludes the cloud, rt and dbg flavours (`6.1.0-40-cloud`).
fn abi_of<'a>(spec: &KernelSpec, package: &'a str) -> Option<&'a str> {
    let abi = package
        .strip_prefix(spec.layout.image_prefix)?
        .strip_suffix(spec.layout.image_suffix)?;
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

/// The package's .deb in `dir`, downloaded unless already there.
pub fn obtain(
    apt: &Apt,
    package: &str,
    version: &str,
    dir: &Path,
    on_progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    if let Some(file) = apt::downloaded_file(dir, package, version) {
        match apt::check_package(&file) {
            Ok(()) => {
                on_progress(&format!(
                    "{package} {version}: already in {}",
                    dir.display()
                ));
                return Ok(file);
            }
            Err(damage) => {
                on_progress(&format!(
                    "the cached {} is damaged ({damage}): downloading it again",
                    file.display()
                ));
                fs::remove_file(&file).map_err(|e| DebianError::io("remove", &file, e))?;
            }
        }
    }
    on_progress(&format!("{package} {version}: downloading"));
    match apt.download(package, version, dir) {
        Ok(file) => Ok(file),
        // Stale lists point at files the mirror no longer has.
        Err(first) => {
            on_progress(&format!(
                "{package}: download failed ({first}); updating the package lists"
            ));
            apt.update()?;
            apt.download(package, version, dir)
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
    fs::write(&partial, text).map_err(|e| DebianError::io("write", &partial, e))?;
    fs::rename(&partial, &path).map_err(|e| DebianError::io("write", &path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(label: &str) -> KernelSpec {
        labelled().into_iter().find(|s| s.label == label).unwrap()
    }

    #[test]
    fn abi_accepts_only_the_plain_flavour() {
        let bookworm = spec("6.1");
        assert_eq!(
            abi_of(&bookworm, "linux-image-6.1.0-56-amd64-unsigned"),
            Some("6.1.0-56")
        );
        assert_eq!(
            abi_of(&bookworm, "linux-image-6.1.0-56-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            abi_of(&bookworm, "linux-image-6.1.0-56-rt-amd64-unsigned"),
            None
        );
        assert_eq!(
            abi_of(&bookworm, "linux-image-6.12.0-1-amd64-unsigned"),
            None
        );
        let sid = spec("7.2");
        assert_eq!(
            abi_of(&sid, "linux-binary-unsigned-7.2.13+deb14-amd64"),
            Some("7.2.13+deb14")
        );
        assert_eq!(
            abi_of(&sid, "linux-binary-unsigned-7.2.13+deb14-cloud-amd64"),
            None
        );
        // Unstable moving on to a later series still gives a fixed kernel; an older one is not.
        assert_eq!(
            abi_of(&sid, "linux-binary-unsigned-7.3.1+deb14-amd64"),
            Some("7.3.1+deb14")
        );
        assert_eq!(
            abi_of(&sid, "linux-binary-unsigned-7.1.9+deb14-amd64"),
            None
        );
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
    fn requests_name_a_suite_or_a_version() {
        let sid = specs_for_request("sid").unwrap();
        assert_eq!(sid.len(), 2);
        assert!(sid
            .iter()
            .all(|s| s.suite == Suite::Private("sid".into()) && s.version.is_none()));
        assert_eq!(sid[0].layout, SPLIT);
        let backports = specs_for_request("trixie-backports").unwrap();
        assert_eq!(
            backports[0].suite,
            Suite::Private("trixie-backports".into())
        );
        let version = specs_for_request("6.12.117").unwrap();
        assert_eq!(version.len(), VERSION_SUITES.len() * 2);
        assert!(version.iter().all(
            |s| s.series == Series::Exactly(6, 12) && s.version.as_deref() == Some("6.12.117")
        ));
        for bad in ["", "6", "Sid", "6.x", "../etc", "6.12;rm"] {
            assert!(
                matches!(specs_for_request(bad), Err(DebianError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn versions_match_at_component_boundaries() {
        assert!(version_matches("6.12.117-1", "6.12.117"));
        assert!(version_matches("6.12.117-1", "6.12"));
        assert!(version_matches("7.2.13-1", "7.2.13"));
        assert!(!version_matches("6.12.117-1", "6.1"));
        assert!(!version_matches("6.12.117-1", "6.12.11"));
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
