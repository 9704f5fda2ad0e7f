//! Scenarios are data: one TOML file each under scenarios/, embedded at build time. A scenario says
//! which nested-table entry is broken and how L2 touches memory; it expands into one [`Case`] per
//! vendor and path.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// The scenario files built into the binary: (file name, contents).
const BUILT_IN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/scenarios.rs"));

/// Which entry of L1's nested tables the scenario breaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The entry mapping the GPA of the data page L2 accesses.
    #[serde(rename = "final_page")]
    Final,
    /// The entry mapping the GPA of L2's leaf page-table page for that access.
    #[serde(rename = "pt_page")]
    PageTable,
    /// The entry mapping the GPA of L2's page-directory page for that access.
    #[serde(rename = "pd_page")]
    PageDirectory,
}

impl Target {
    /// The L2 paging level whose table page is broken (1: page table, 2: page directory), or
    /// `None` for the final page.
    pub fn table_level(self) -> Option<u32> {
        match self {
            Target::Final => None,
            Target::PageTable => Some(1),
            Target::PageDirectory => Some(2),
        }
    }
}

/// How that entry is broken.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Not present (NPT P=0, EPT RWX=0).
    Unmapped,
    /// Present, readable and executable, not writable (NPT W=0, EPT R-X).
    WriteProtected,
}

/// What L2's instruction does to the data page.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
}

/// How the fault reaches L0.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AccessPath {
    /// String I/O (OUTSB reads, INSB writes): L0 emulates it and its software walk hits the fault.
    Emulated,
    /// A plain MOV load or store: the CPU faults and L0 reflects the exit to L1.
    Hardware,
}

/// The extension whose nested-paging fault report is checked.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VendorKind {
    Svm,
    Vmx,
}

impl AccessPath {
    pub const ALL: [AccessPath; 2] = [AccessPath::Emulated, AccessPath::Hardware];

    pub fn name(self) -> &'static str {
        match self {
            AccessPath::Emulated => "emulated",
            AccessPath::Hardware => "hardware",
        }
    }
}

impl VendorKind {
    pub const ALL: [VendorKind; 2] = [VendorKind::Svm, VendorKind::Vmx];

    pub fn name(self) -> &'static str {
        match self {
            VendorKind::Svm => "svm",
            VendorKind::Vmx => "vmx",
        }
    }
}

impl fmt::Display for VendorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for AccessPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    summary: String,
    target: Target,
    fault: Fault,
    access: Access,
    #[serde(default = "all_paths")]
    paths: Vec<AccessPath>,
    #[serde(default = "all_vendors")]
    vendors: Vec<VendorKind>,
}

fn all_paths() -> Vec<AccessPath> {
    AccessPath::ALL.to_vec()
}

fn all_vendors() -> Vec<VendorKind> {
    VendorKind::ALL.to_vec()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The file name without `.toml`; the middle part of a case id.
    pub name: String,
    pub summary: String,
    pub target: Target,
    pub fault: Fault,
    pub access: Access,
    pub paths: Vec<AccessPath>,
    pub vendors: Vec<VendorKind>,
}

/// A scenario on one vendor and one path: the unit that runs and gets a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub scenario: Scenario,
    pub vendor: VendorKind,
    pub path: AccessPath,
}

impl Case {
    /// `<vendor>/<scenario>/<path>`, the id `--list` prints and `--scenario` accepts.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.vendor, self.scenario.name, self.path)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScenarioError {
    #[error("{file}:{line}: {message}")]
    Malformed {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: the file name must be <name>.toml with <name> made of a-z, 0-9 and _")]
    BadName { file: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("cannot read scenarios from {dir}: {message}")]
    Unreadable { dir: String, message: String },
}

/// Parses one scenario file; `file` is used for the name and in error messages.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let name = Path::new(file)
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".toml"))
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .ok_or_else(|| ScenarioError::BadName {
            file: file.to_string(),
        })?;
    let parsed: ScenarioFile = toml::from_str(text).map_err(|error| ScenarioError::Malformed {
        file: file.to_string(),
        line: error.span().map_or(1, |span| line_of(text, span.start)),
        message: error.message().trim_end().to_string(),
    })?;
    let invalid = |message: &str| ScenarioError::Invalid {
        file: file.to_string(),
        message: message.to_string(),
    };
    if parsed.paths.is_empty() || parsed.vendors.is_empty() {
        return Err(invalid(
            "`paths` and `vendors` must not be empty (leave them out for all)",
        ));
    }
    if parsed.summary.trim().is_empty() {
        return Err(invalid("`summary` must say what L2 does"));
    }
    let mut paths = parsed.paths;
    paths.sort();
    paths.dedup();
    let mut vendors = parsed.vendors;
    vendors.sort();
    vendors.dedup();
    Ok(Scenario {
        name: name.to_string(),
        summary: parsed.summary,
        target: parsed.target,
        fault: parsed.fault,
        access: parsed.access,
        paths,
        vendors,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The scenarios built into the binary, in file-name order.
pub fn built_in() -> Result<Vec<Scenario>, ScenarioError> {
    BUILT_IN
        .iter()
        .map(|(file, text)| parse(&format!("scenarios/{file}"), text))
        .collect()
}

/// The `*.toml` files in `dir` as (file name, contents), in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, ScenarioError> {
    let unreadable = |error: std::io::Error| ScenarioError::Unreadable {
        dir: dir.display().to_string(),
        message: error.to_string(),
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(ScenarioError::Unreadable {
            dir: dir.display().to_string(),
            message: "no *.toml files".into(),
        });
    }
    paths
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            Ok((name, std::fs::read_to_string(path).map_err(unreadable)?))
        })
        .collect()
}

/// The built-in scenarios, then those in `dir` (for trying new ones without rebuilding); a name
/// may occur once.
pub fn with_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let mut scenarios = built_in()?;
    for (name, text) in read_dir(dir)? {
        let file = dir.join(&name).display().to_string();
        let scenario = parse(&file, &text)?;
        if scenarios.iter().any(|known| known.name == scenario.name) {
            return Err(ScenarioError::Invalid {
                file,
                message: format!("a scenario named {} exists already", scenario.name),
            });
        }
        scenarios.push(scenario);
    }
    Ok(scenarios)
}

/// Every case of `scenarios`, vendor-major, so one vendor's cases run (and boot) together.
pub fn expand(scenarios: &[Scenario]) -> Vec<Case> {
    let mut cases = Vec::new();
    for vendor in VendorKind::ALL {
        for scenario in scenarios.iter().filter(|s| s.vendors.contains(&vendor)) {
            for &path in &scenario.paths {
                cases.push(Case {
                    scenario: scenario.clone(),
                    vendor,
                    path,
                });
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_scenarios_expand_to_sixteen_ids() {
        let cases = expand(&built_in().unwrap());
        let ids: Vec<String> = cases.iter().map(Case::id).collect();
        assert_eq!(ids.len(), 16, "{ids:?}");
        assert!(ids.contains(&"svm/pt_page_unmapped/emulated".to_string()));
        assert!(ids.contains(&"vmx/final_page_write_protected/hardware".to_string()));
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let scenario = parse(
            "scenarios/x.toml",
            "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\n",
        )
        .unwrap();
        assert_eq!(scenario.name, "x");
        assert_eq!(scenario.target, Target::PageTable);
        assert_eq!(scenario.paths, AccessPath::ALL);
        assert_eq!(scenario.vendors, VendorKind::ALL);
    }

    #[test]
    fn restricted_paths_and_vendors_are_kept() {
        let scenario = parse(
            "y.toml",
            "summary = \"s\"\ntarget = \"final_page\"\nfault = \"unmapped\"\naccess = \"write\"\n\
             paths = [\"hardware\"]\nvendors = [\"vmx\", \"vmx\"]\n",
        )
        .unwrap();
        assert_eq!(scenario.paths, [AccessPath::Hardware]);
        assert_eq!(scenario.vendors, [VendorKind::Vmx]);
        assert_eq!(expand(&[scenario]).len(), 1);
    }

    #[test]
    fn bad_value_names_file_and_line() {
        let error = parse(
            "scenarios/bad.toml",
            "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"sideways\"\naccess = \"read\"\n",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("scenarios/bad.toml:3: "), "{text}");
        assert!(
            text.contains("sideways") && text.contains("write_protected"),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_errors() {
        let unknown = parse("a.toml", "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\ncolour = 1\n");
        assert!(unknown.unwrap_err().to_string().contains("colour"));
        let missing = parse("a.toml", "summary = \"s\"\ntarget = \"pt_page\"\n").unwrap_err();
        assert!(missing.to_string().contains("fault"), "{missing}");
        let syntax = parse("a.toml", "summary = \"s\ntarget = 1").unwrap_err();
        assert!(
            matches!(syntax, ScenarioError::Malformed { line: 1, .. }),
            "{syntax}"
        );
    }

    #[test]
    fn bad_file_names_and_empty_lists_are_errors() {
        let body =
            "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\n";
        assert!(matches!(
            parse("Bad-Name.toml", body),
            Err(ScenarioError::BadName { .. })
        ));
        assert!(matches!(
            parse("a.txt", body),
            Err(ScenarioError::BadName { .. })
        ));
        let empty = parse("a.toml", &format!("{body}paths = []\n")).unwrap_err();
        assert!(empty.to_string().contains("must not be empty"));
    }
}
