//! Talking to apt: the system's own configuration, or a private one beside it
//! for another suite; reading the system's sources; comparing versions.
//!
//! No mirror is named here: the private configuration takes the mirror URI
//! and its Signed-By from the system's sources at run time.

use std::cmp::Ordering;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use super::DebianError;

type Result<T> = std::result::Result<T, DebianError>;

/// Where apt's sources are configured on Debian.
const DEB822_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const ONE_LINE_SOURCES: &str = "/etc/apt/sources.list";
/// Private package lists older than this are refreshed.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One apt source entry, from either file format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// A keyring path, or an inline key block (deb822 only), verbatim.
    pub signed_by: Option<String>,
}

/// Parses deb822 `.sources` text: stanzas separated by blank lines, fields
/// `Key: value` continued on indented lines; `Enabled: no` stanzas dropped.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in split_stanzas(text) {
        let mut source = Source::default();
        let mut enabled = true;
        for (key, value) in stanza {
            let words = || value.split_whitespace().map(str::to_owned).collect();
            match key.to_ascii_lowercase().as_str() {
                "types" => source.types = words(),
                "uris" => source.uris = words(),
                "suites" => source.suites = words(),
                "components" => source.components = words(),
                "signed-by" => source.signed_by = Some(value.trim().to_owned()),
                "enabled" => enabled = !value.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled && !source.uris.is_empty() {
            sources.push(source);
        }
    }
    sources
}

fn split_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                stanzas.push(std::mem::take(&mut fields));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !fields.is_empty() {
        stanzas.push(fields);
    }
    stanzas
}

/// Parses one-line `sources.list` text: `deb [options] URI suite components...`.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let (kind, rest) = line.split_once(char::is_whitespace)?;
            if kind != "deb" && kind != "deb-src" {
                return None;
            }
            let rest = rest.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(inner) => inner.split_once(']')?,
                None => ("", rest),
            };
            let mut words = rest.split_whitespace().map(str::to_owned);
            let uri = words.next()?;
            let suite = words.next()?;
            let signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_owned);
            Some(Source {
                types: vec![kind.to_owned()],
                uris: vec![uri],
                suites: vec![suite],
                components: words.collect(),
                signed_by,
            })
        })
        .collect()
}

/// The entry for Debian's main archive: binary packages, a plain release
/// suite (not -security, -updates or -backports).
pub fn main_archive(sources: &[Source]) -> Option<&Source> {
    sources.iter().find(|source| {
        source.types.iter().any(|t| t == "deb")
            && source
                .suites
                .iter()
                .any(|suite| !suite.contains(['-', '/']))
    })
}

/// The system's sources: the deb822 files first, then the one-line file.
pub fn system_sources() -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let mut deb822_files = vec![PathBuf::from(DEB822_SOURCES)];
    if let Ok(entries) = fs::read_dir(SOURCES_DIR) {
        let mut others: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sources"))
            .filter(|path| path != Path::new(DEB822_SOURCES))
            .collect();
        others.sort();
        deb822_files.extend(others);
    }
    for file in deb822_files {
        if let Ok(text) = fs::read_to_string(&file) {
            sources.extend(parse_deb822(&text));
        }
    }
    if let Ok(text) = fs::read_to_string(ONE_LINE_SOURCES) {
        sources.extend(parse_one_line(&text));
    }
    if sources.is_empty() {
        return Err(DebianError::NoSources(format!(
            "no apt sources found in {DEB822_SOURCES}, {SOURCES_DIR}/*.sources or \
             {ONE_LINE_SOURCES}: this needs a Debian system with apt configured"
        )));
    }
    Ok(sources)
}

/// Renders a deb822 stanza for `suite` from the main archive's URI and key.
pub fn private_sources_text(main: &Source, suite: &str) -> String {
    let mut text = format!(
        "Types: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n",
        main.uris[0]
    );
    match main.signed_by.as_deref() {
        // An inline key block: one indented line per key line.
        Some(key) if key.contains('\n') => {
            text.push_str("Signed-By:\n");
            for line in key.lines() {
                text.push_str(&format!(" {}\n", line.trim_start()));
            }
        }
        Some(keyring) => text.push_str(&format!("Signed-By: {keyring}\n")),
        None => {}
    }
    text
}

/// Runs apt-get / apt-cache, with the system's configuration or a private one.
pub struct Apt {
    /// Extra `-o` options; empty for the system's own configuration.
    options: Vec<String>,
    private_lists: Option<PathBuf>,
    label: String,
}

impl Apt {
    pub fn system() -> Self {
        Apt {
            options: Vec::new(),
            private_lists: None,
            label: "the system's apt sources".into(),
        }
    }

    /// A private configuration in `dir` for `suite` of the system's Debian
    /// mirror; the system's sources, lists and caches stay untouched.
    pub fn private(dir: &Path, suite: &str) -> Result<Self> {
        let sources = system_sources()?;
        let main = main_archive(&sources).ok_or_else(|| {
            DebianError::NoSources(
                "the system's apt sources have no Debian main archive entry (Types: deb with a \
                 plain suite such as bookworm) to take the mirror from"
                    .into(),
            )
        })?;
        let lists = dir.join("lists");
        fs::create_dir_all(lists.join("partial"))
            .map_err(|e| DebianError::io("create", &lists, e))?;
        // The .sources extension makes apt read the file as deb822, so an
        // inline Signed-By key block carries over as it is.
        let source_file = dir.join(format!("nestfault-{suite}.sources"));
        fs::write(&source_file, private_sources_text(main, suite))
            .map_err(|e| DebianError::io("write", &source_file, e))?;
        let options = [
            format!("Dir::Etc::SourceList={}", source_file.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", lists.display()),
            // No binary cache: it would be the system's, filled with this suite.
            "Dir::Cache::pkgcache=".to_owned(),
            "Dir::Cache::srcpkgcache=".to_owned(),
        ];
        Ok(Apt {
            options: options.into_iter().collect(),
            private_lists: Some(lists),
            label: format!(
                "Debian {suite} (private apt configuration in {})",
                dir.display()
            ),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        // Its output is parsed: no translations.
        command.env("LC_ALL", "C");
        for option in &self.options {
            command.arg("-o").arg(option);
        }
        // As root, apt hands downloads to the _apt user, who cannot write
        // into a private directory under root's home.
        if running_as_root() {
            command.args(["-o", "APT::Sandbox::User=root"]);
        }
        command
    }

    fn run(&self, command: Command, what: &str) -> Result<Output> {
        self.run_with_hint(command, what, "")
    }

    fn run_with_hint(
        &self,
        mut command: Command,
        what: &str,
        hint: &'static str,
    ) -> Result<Output> {
        let output = command.output().map_err(|cause| match cause.kind() {
            std::io::ErrorKind::NotFound => DebianError::AptMissing {
                program: format!("{:?}", command.get_program()).replace('"', ""),
            },
            _ => DebianError::io("run", what, cause),
        })?;
        if !output.status.success() {
            return Err(DebianError::AptFailed {
                what: what.to_owned(),
                status: output.status.to_string(),
                using: self.label.clone(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                hint,
            });
        }
        Ok(output)
    }

    /// Refreshes the package lists. apt exits 0 when it could not reach the archive (it
    /// warns and keeps the old lists, if any): that is an error here, [`DebianError::Unreachable`],
    /// so that "nothing found" is never said of an archive that was not asked.
    pub fn update(&self) -> Result<()> {
        let mut command = self.command("apt-get");
        command.args(["-q", "update"]);
        let hint = if self.private_lists.is_none() {
            "; updating the system's package lists needs root: run `sudo apt-get update` and \
             try again"
        } else {
            ""
        };
        let stderr = match self.run_with_hint(command, "apt-get update", hint) {
            Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
            Err(DebianError::AptFailed { stderr, .. }) if !unreachable(&stderr).is_empty() => {
                stderr
            }
            Err(error) => return Err(error),
        };
        let failures = unreachable(&stderr);
        if failures.is_empty() {
            return Ok(());
        }
        Err(DebianError::Unreachable {
            using: self.label.clone(),
            apt: failures.join("\n"),
        })
    }

    /// Refreshes a private configuration's lists when missing or stale. Stale lists are kept
    /// when the archive cannot be reached (`on_progress` hears of it): the packages they name
    /// may be in the cache already.
    pub fn update_if_stale(&self, on_progress: &mut dyn FnMut(&str)) -> Result<()> {
        let Some(lists) = &self.private_lists else {
            return Ok(());
        };
        if lists_are_fresh(lists) {
            return Ok(());
        }
        match self.update() {
            Err(DebianError::Unreachable { apt, .. }) if has_lists(lists) => {
                let first = apt.lines().next().unwrap_or_default();
                on_progress(&format!(
                    "cannot reach the Debian archive ({first}); using the package lists of an \
                     earlier run"
                ));
                Ok(())
            }
            other => other,
        }
    }

    /// Package names matching the POSIX regular expression `pattern`.
    pub fn search_names(&self, pattern: &str) -> Result<Vec<String>> {
        let mut command = self.command("apt-cache");
        command.args(["search", "--names-only", pattern]);
        let output = self.run(command, "apt-cache search")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(" - ").next())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect())
    }

    /// The candidate version of each package that has one.
    pub fn candidates(&self, packages: &[String]) -> Result<Vec<(String, String)>> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = self.command("apt-cache");
        command.arg("policy").args(packages);
        let output = self.run(command, "apt-cache policy")?;
        Ok(parse_policy(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Downloads `package` at `version` into `dir`, returning the file.
    pub fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        let mut command = self.command("apt-get");
        command
            .current_dir(dir)
            .args(["-q", "download"])
            .arg(format!("{package}={version}"));
        self.run(command, &format!("apt-get download {package}"))?;
        downloaded_file(dir, package, version).ok_or_else(|| {
            DebianError::NotFound(format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            ))
        })
    }
}

/// apt's lines that say it could not reach the archive, in its C-locale words.
fn unreachable(stderr: &str) -> Vec<&str> {
    const SIGNS: [&str; 6] = [
        "Failed to fetch",
        "Temporary failure resolving",
        "Could not resolve",
        "Unable to connect",
        "Could not connect",
        "Some index files failed to download",
    ];
    stderr
        .lines()
        .filter(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .collect()
}

/// The package lists in `lists` (apt may keep them compressed: `..._Packages.lz4`).
fn package_lists(lists: &Path) -> impl Iterator<Item = fs::DirEntry> {
    fs::read_dir(lists)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
}

/// Whether `lists` holds any package list, however old.
fn has_lists(lists: &Path) -> bool {
    package_lists(lists).next().is_some()
}

/// Whether `lists` holds package lists younger than LISTS_MAX_AGE.
fn lists_are_fresh(lists: &Path) -> bool {
    package_lists(lists)
        .filter_map(|entry| entry.metadata().ok()?.modified().ok())
        .max()
        .and_then(|time| SystemTime::now().duration_since(time).ok())
        .is_some_and(|age| age < LISTS_MAX_AGE)
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Whether `deb` is a whole ar archive (what a .deb is): the magic, then every member's 60-byte
/// header and data inside the file. A download cut short, or a disk that filled up while it was
/// copied, leaves a member cut off. Seeks from header to header: a 100 MB package costs a few
/// reads.
pub fn check_package(deb: &Path) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(deb).map_err(|e| e.to_string())?;
    let length = file.metadata().map_err(|e| e.to_string())?.len();
    let mut magic = [0u8; 8];
    if file.read_exact(&mut magic).is_err() || &magic != b"!<arch>\n" {
        return Err(format!("{length} bytes: not an ar archive"));
    }
    let mut at = 8u64;
    let mut members = 0;
    while at < length {
        let mut header = [0u8; 60];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|_| format!("{length} bytes: member {} has no whole header", members + 1))?;
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| format!("member {} has an unreadable size", members + 1))?;
        at += 60 + size + size % 2;
        members += 1;
        if at > length + 1 {
            return Err(format!(
                "{length} bytes, member {members} ends at {}",
                at - size % 2
            ));
        }
    }
    if members < 3 {
        return Err(format!("{members} members, a .deb has three"));
    }
    Ok(())
}

/// The .deb of `package` at `version` in `dir`, if there (apt names it
/// `<package>_<version, ':' as %3a>_<arch>.deb`).
pub fn downloaded_file(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        })
}

/// (package, candidate version) from `apt-cache policy` output.
pub fn parse_policy(text: &str) -> Vec<(String, String)> {
    let mut result = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line.strip_suffix(':').map(str::to_owned);
        } else if let Some(candidate) = line.trim().strip_prefix("Candidate:") {
            let candidate = candidate.trim();
            if let Some(package) = current.take() {
                if candidate != "(none)" {
                    result.push((package, candidate.to_owned()));
                }
            }
        }
    }
    result
}

/// Debian version order (as `dpkg --compare-versions`): epoch, upstream
/// version, revision; '~' sorts before everything, even the end.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(version: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match version.split_once(':') {
            Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
                (epoch.parse().unwrap_or(0), rest)
            }
            _ => (0, version),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    let (epoch_a, upstream_a, revision_a) = split(a);
    let (epoch_b, upstream_b, revision_b) = split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_part(upstream_a, upstream_b))
        .then_with(|| compare_part(revision_a, revision_b))
}

fn compare_part(a: &str, b: &str) -> Ordering {
    fn weight(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // The non-digit run, character by character.
        while a.first().is_some_and(|c| !c.is_ascii_digit())
            || b.first().is_some_and(|c| !c.is_ascii_digit())
        {
            let (wa, wb) = (weight(a.first().copied()), weight(b.first().copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            a = a.get(1..).unwrap_or_default();
            b = b.get(1..).unwrap_or_default();
        }
        // The digit run, as a number of any length.
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (na, nb) = (digits(a), digits(b));
        let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
        let (za, zb) = (strip(&a[..na]), strip(&b[..nb]));
        let (da, db) = (&a[za..na], &b[zb..nb]);
        let order = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if order != Ordering::Equal {
            return order;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "Types: deb
# a mirror snapshot comment
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn parses_deb822() {
        let sources = parse_deb822(BOOKWORM);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].uris, vec!["http://mirror.invalid/debian"]);
        assert_eq!(sources[0].suites, vec!["bookworm", "bookworm-updates"]);
        assert_eq!(
            sources[1].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        let main = main_archive(&sources).unwrap();
        assert_eq!(main.uris[0], "http://mirror.invalid/debian");
    }

    #[test]
    fn keeps_inline_keys_and_skips_disabled() {
        let text = "Types: deb\nURIs: http://m.invalid/debian\nSuites: trixie\n\
                    Components: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n \
                    abc\n -----END PGP PUBLIC KEY BLOCK-----\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://other.invalid/\nSuites: sid\n";
        let sources = parse_deb822(text);
        assert_eq!(sources.len(), 1);
        let key = sources[0].signed_by.as_deref().unwrap();
        assert!(
            key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
            "{key}"
        );
        let rendered = private_sources_text(&sources[0], "sid");
        assert!(rendered.contains("Suites: sid\n"));
        assert!(rendered.ends_with(
            "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n \
             -----END PGP PUBLIC KEY BLOCK-----\n"
        ));
    }

    #[test]
    fn parses_one_line_sources() {
        let text = "# comment\n\
            deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib\n\
            deb-src http://m.invalid/debian bookworm main\n\
            deb http://m.invalid/debian-security bookworm-security main\n";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(sources[0].components, vec!["main", "contrib"]);
        assert_eq!(
            main_archive(&sources).unwrap().uris[0],
            "http://m.invalid/debian"
        );
        assert_eq!(
            private_sources_text(&sources[0], "sid"),
            "Types: deb\nURIs: http://m.invalid/debian\nSuites: sid\nComponents: main\n\
             Signed-By: /k.gpg\n"
        );
    }

    #[test]
    fn parses_policy() {
        let text = "linux-image-6.1.0-48-amd64-unsigned:\n  Installed: (none)\n  \
                    Candidate: (none)\n  Version table:\n\
                    linux-image-6.1.0-56-amd64-unsigned:\n  Installed: (none)\n  \
                    Candidate: 6.1.192-2\n  Version table:\n     6.1.192-2 500\n";
        assert_eq!(
            parse_policy(text),
            vec![(
                "linux-image-6.1.0-56-amd64-unsigned".into(),
                "6.1.192-2".into()
            )]
        );
    }

    #[test]
    fn compares_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("6.1.192-2", "6.1.176-1", Greater),
            ("7.2.13-1", "7.2.9-1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0-1", "1.0-1", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0+deb12u1", "1.0", Greater),
            ("1.01", "1.1", Equal),
            ("6.1.0-56", "6.1.0-50", Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn compressed_lists_count_as_fresh() {
        let dir = std::env::temp_dir().join(format!("nestfault-lists-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(!lists_are_fresh(&dir));
        fs::write(dir.join("mirror_dists_sid_InRelease"), b"").unwrap();
        assert!(!lists_are_fresh(&dir));
        fs::write(
            dir.join("mirror_dists_sid_main_binary-amd64_Packages.lz4"),
            b"",
        )
        .unwrap();
        assert!(lists_are_fresh(&dir));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finds_downloaded_files() {
        let dir = std::env::temp_dir().join(format!("xtask-apt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("linux-x_1%3a2.0-1_amd64.deb"), b"").unwrap();
        assert!(downloaded_file(&dir, "linux-x", "1:2.0-1").is_some());
        assert!(downloaded_file(&dir, "linux-x", "2.0-1").is_none());
        fs::remove_dir_all(dir).unwrap();
    }
}
