//! Scenarios are data. A scenario is one point of the nested-TDP fault space: which L2 page the
//! fault is on ([`Target`]), how L1's nested entry for it is broken ([`Fault`]), what L2 does
//! ([`Access`]) and the sizes of the nested and L2 leaves. `scenarios/matrix.toml` spans the space
//! in blocks and excludes, with a reason each, the combinations that mean nothing; a scenario
//! expands into one [`Case`] per vendor and path the exclusions leave. docs/oracle.md explains
//! every axis.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// The built-in fault matrix.
const MATRIX: &str = include_str!("../scenarios/matrix.toml");
const MATRIX_FILE: &str = "scenarios/matrix.toml";

/// Enums whose serialized names are the contract (ids, JSON, scenario files): `name()` gives the
/// same text serde reads, written once in the `#[serde(rename)]` of each variant.
macro_rules! axis {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            pub const ALL: [$name; [$($text),*].len()] = [$($name::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

axis! {
    /// The page whose entry in L1's nested tables is broken: the final (data) page of L2's access,
    /// or one of the L2 paging-structure pages its translation walks through.
    pub enum Target {
        Final = "final_page",
        PageTable = "pt_page",
        PageDirectory = "pd_page",
        Pdpt = "pdpt_page",
        /// With 4-level paging L2's CR3 page: every walk starts there, instruction fetches
        /// included.
        Pml4 = "pml4_page",
        /// With 5-level paging L2's CR3 page.
        Pml5 = "pml5_page",
    }
}

axis! {
    /// How L1's nested entry for the target is broken. What each means in NPT and EPT terms is
    /// the architecture's business (`arch::Vendor::nested_edit`).
    pub enum Fault {
        /// Not present.
        Unmapped = "unmapped",
        /// Present, not writable.
        WriteProtected = "write_protected",
        /// SVM: a reserved physical-address bit set; VMX: write-only, a misconfiguration.
        ReservedBit = "reserved_bit",
        /// SVM only: U/S=0, so the (always user-mode) nested walk may not use it.
        Supervisor = "supervisor",
        /// Present, readable and writable, not executable.
        NoExecute = "no_execute",
    }
}

axis! {
    /// What L2 does at the faulting address.
    pub enum Access {
        Read = "read",
        Write = "write",
        Fetch = "fetch",
    }
}

axis! {
    /// A leaf's size: of L1's nested entry that maps the target, or of L2's own page.
    pub enum LeafSize {
        Size4K = "4k",
        Size2M = "2m",
        Size1G = "1g",
    }
}

axis! {
    /// Where in its pages the faulting access lies, which decides the addresses L1 must be told.
    pub enum Placement {
        /// At byte 0 of its page, through entry 0 of every L2 table below the root: page-aligned
        /// and exact addresses coincide.
        Aligned = "aligned",
        /// At a non-zero byte offset, through a non-zero entry of every L2 table (PML4, PDPT, PD,
        /// PT): a GPA or linear address wrong at any level, or rounded to its page, shows.
        Offset = "offset",
    }
}

axis! {
    /// How much of the access lies on the broken page.
    pub enum Span {
        /// All of it.
        Within = "within",
        /// A 4-byte access whose first two bytes lie on the page before, which is whole (and
        /// walked through other L2 tables): the fault must name the broken page's first byte.
        Crossing = "crossing",
    }
}

axis! {
    /// VMX: whether L1's EPTP enables EPT accessed and dirty flags (bit 6). With them on, every
    /// access to an L2 paging-structure entry is a write as far as EPT is concerned; with them
    /// off, a read, and a write only where the CPU sets an A or D bit (SDM 29.3.3.2).
    pub enum EptAd {
        On = "on",
        Off = "off",
    }
}

axis! {
    /// L2's own accessed and dirty bits on the faulting address's walk: still clear (the CPU
    /// must write them, a write to the table page) or already set (it need not).
    pub enum L2Ad {
        Clear = "clear",
        Set = "set",
    }
}

axis! {
    /// L2's own paging mode, which decides the tables its walk goes through (SDM vol. 3A 4.3-4.5,
    /// APM vol. 2 5.2-5.3): KVM's emulator walks 32-bit tables with its paging32 walker and the
    /// others with paging64, and with PAE the root's four entries are special.
    pub enum L2Paging {
        /// Long mode, 4-level paging: PML4, PDPT, PD, PT.
        FourLevel = "4level",
        /// Protected mode, PAE paging: a PDPT of four entries at CR3, then PD and PT. With EPT
        /// the CPU takes the four PDPTEs from the VMCS at VM entry (SDM 26.3.2.4); with NPT the
        /// walk reads them from memory.
        Pae = "pae",
        /// Protected mode, 32-bit paging: PD and PT of 1024 4-byte entries.
        Bits32 = "32bit",
        /// Long mode, 5-level paging (CR4.LA57): PML5 above the PML4.
        FiveLevel = "5level",
    }
}

axis! {
    /// How the fault reaches L0.
    pub enum AccessPath {
        /// String I/O (OUTSB reads, INSB writes), which L0 emulates since L1 does not intercept I/O:
        /// KVM's software walk hits the fault.
        Emulated = "emulated",
        /// A plain MOV load or store, or a jump for a fetch: the CPU faults and L0 reflects it.
        Hardware = "hardware",
        /// The hardware path's MOV behind KVM's forced-emulation prefix: L0's emulator runs the
        /// very instruction the CPU runs on the hardware path.
        Forced = "forced",
    }
}

axis! {
    /// The extension whose nested-paging fault report is checked.
    pub enum VendorKind {
        Svm = "svm",
        Vmx = "vmx",
    }
}

impl Target {
    /// The L2 paging level whose table page is broken (1: page table ... 4: PML4), or `None` for
    /// the final page.
    pub fn table_level(self) -> Option<u32> {
        match self {
            Target::Final => None,
            Target::PageTable => Some(1),
            Target::PageDirectory => Some(2),
            Target::Pdpt => Some(3),
            Target::Pml4 => Some(4),
            Target::Pml5 => Some(5),
        }
    }
}

impl L2Paging {
    /// How many table levels L2's walk has.
    pub fn levels(self) -> u32 {
        match self {
            L2Paging::Bits32 => 2,
            L2Paging::Pae => 3,
            L2Paging::FourLevel => 4,
            L2Paging::FiveLevel => 5,
        }
    }

    /// L2's CR3 page in this mode: the table every walk starts at.
    pub fn root(self) -> Target {
        match self {
            L2Paging::Bits32 => Target::PageDirectory,
            L2Paging::Pae => Target::Pdpt,
            L2Paging::FourLevel => Target::Pml4,
            L2Paging::FiveLevel => Target::Pml5,
        }
    }

    /// Whether L2 runs in long mode (64-bit code) rather than protected mode (32-bit code).
    pub fn long_mode(self) -> bool {
        matches!(self, L2Paging::FourLevel | L2Paging::FiveLevel)
    }
}

/// One point of the fault space with the vendors and paths it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The middle part of a case id: derived from the axes, or a seed scenario's old name.
    pub name: String,
    pub summary: String,
    pub target: Target,
    pub fault: Fault,
    pub access: Access,
    pub nested_leaf: LeafSize,
    pub l2_leaf: LeafSize,
    pub placement: Placement,
    pub span: Span,
    pub ept_ad: EptAd,
    pub l2_ad: L2Ad,
    pub l2_paging: L2Paging,
    /// The (vendor, path) pairs left after the matrix's exclusions, vendor-major.
    pub runs: Vec<(VendorKind, AccessPath)>,
}

impl Scenario {
    fn at(
        name: String,
        summary: String,
        point: Point,
        runs: Vec<(VendorKind, AccessPath)>,
    ) -> Self {
        Scenario {
            name,
            summary,
            target: point.target,
            fault: point.fault,
            access: point.access,
            nested_leaf: point.nested_leaf,
            l2_leaf: point.l2_leaf,
            placement: point.placement,
            span: point.span,
            ept_ad: point.ept_ad,
            l2_ad: point.l2_ad,
            l2_paging: point.l2_paging,
            runs,
        }
    }

    /// Whether the broken page is L2's CR3 page, which every access walks (its first
    /// instruction fetch included).
    pub fn breaks_root(&self) -> bool {
        self.target == self.l2_paging.root()
    }

    /// `<target>_<fault>_<access>`, then for each axis off its default a suffix:
    /// `_nested_<size>`, `_l2_<size>`, `_offset`, `_crossing`, `_ept_ad_off`, `_l2_ad_set`,
    /// `_pae`, `_32bit`, `_5level`.
    fn derived_name(point: &Point) -> String {
        let suffix =
            |off_default: bool, text: String| if off_default { text } else { String::new() };
        let p = point;
        [
            format!("{}_{}_{}", p.target, p.fault, p.access),
            suffix(
                p.nested_leaf != LeafSize::default(),
                format!("_nested_{}", p.nested_leaf),
            ),
            suffix(
                p.l2_leaf != LeafSize::default(),
                format!("_l2_{}", p.l2_leaf),
            ),
            suffix(
                p.placement != Placement::default(),
                format!("_{}", p.placement),
            ),
            suffix(p.span != Span::default(), format!("_{}", p.span)),
            suffix(
                p.ept_ad != EptAd::default(),
                format!("_ept_ad_{}", p.ept_ad),
            ),
            suffix(p.l2_ad != L2Ad::default(), format!("_l2_ad_{}", p.l2_ad)),
            suffix(
                p.l2_paging != L2Paging::default(),
                format!("_{}", p.l2_paging),
            ),
        ]
        .concat()
    }

    fn describe(point: &Point) -> String {
        let does = match point.access {
            Access::Read => "reads",
            Access::Write => "writes",
            Access::Fetch => "executes",
        };
        let page = match point.target {
            Target::Final => "the page".to_string(),
            root if root == point.l2_paging.root() => {
                "anything (every walk starts at its CR3 page)".to_string()
            }
            table => format!("through its {}", table.name().replace('_', " ")),
        };
        let broken = match point.fault {
            Fault::Unmapped => "not present",
            Fault::WriteProtected => "read-only",
            Fault::ReservedBit => "reserved-bit / misconfigured",
            Fault::Supervisor => "supervisor-only",
            Fault::NoExecute => "execute-disabled",
        };
        let mut text = format!("L2 {does} {page}; L1's nested entry for it is {broken}");
        if point.nested_leaf != LeafSize::Size4K {
            text += &format!(
                ", a {} nested leaf",
                point.nested_leaf.name().to_uppercase()
            );
        }
        if point.l2_leaf != LeafSize::Size4K {
            text += &format!(
                ", through a {} L2 page",
                point.l2_leaf.name().to_uppercase()
            );
        }
        if point.placement == Placement::Offset {
            text += ", at a byte offset through non-zero entries of every L2 table";
        }
        if point.span == Span::Crossing {
            text += ", 4 bytes starting 2 bytes before the page";
        }
        if point.ept_ad == EptAd::Off {
            text += ", EPT A/D flags off";
        }
        if point.l2_ad == L2Ad::Set {
            text += ", L2's A/D bits already set";
        }
        match point.l2_paging {
            L2Paging::FourLevel => {}
            L2Paging::Pae => text += ", L2 in PAE paging",
            L2Paging::Bits32 => text += ", L2 in 32-bit paging",
            L2Paging::FiveLevel => text += ", L2 in 5-level paging",
        }
        text
    }
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

/// The axes of a scenario without its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Point {
    target: Target,
    fault: Fault,
    access: Access,
    nested_leaf: LeafSize,
    l2_leaf: LeafSize,
    placement: Placement,
    span: Span,
    ept_ad: EptAd,
    l2_ad: L2Ad,
    l2_paging: L2Paging,
}

impl Point {
    /// Why nestfault cannot build this point, if so: a table the mode's walk does not have, or
    /// an axis the layout builds in 4-level paging only.
    fn unbuildable(&self) -> Option<String> {
        let mode = self.l2_paging;
        if self
            .target
            .table_level()
            .is_some_and(|level| level > mode.levels())
        {
            return Some(format!(
                "{} does not exist in {mode} paging (its CR3 page is the {})",
                self.target,
                mode.root()
            ));
        }
        if mode != L2Paging::FourLevel
            && (self.l2_leaf != LeafSize::Size4K || self.span != Span::Within)
        {
            return Some(format!(
                "l2_leaf and span are built with 4-level paging only, not {mode}"
            ));
        }
        None
    }
}

/// Seeds and scenario files spell a point out field by field (serde's `flatten` would not
/// reject unknown keys).
macro_rules! point_of {
    ($spelled:expr) => {
        Point {
            target: $spelled.target,
            fault: $spelled.fault,
            access: $spelled.access,
            nested_leaf: $spelled.nested_leaf,
            l2_leaf: $spelled.l2_leaf,
            placement: $spelled.placement,
            span: $spelled.span,
            ept_ad: $spelled.ept_ad,
            l2_ad: $spelled.l2_ad,
            l2_paging: $spelled.l2_paging,
        }
    };
}

/// The default of an axis that a block, a seed or a file may leave out: the usual case.
macro_rules! default_axis {
    ($($axis:ident => $value:expr,)*) => {
        $(impl Default for $axis {
            fn default() -> Self {
                $value
            }
        })*
    };
}

default_axis! {
    LeafSize => LeafSize::Size4K,
    Placement => Placement::Aligned,
    Span => Span::Within,
    EptAd => EptAd::On,
    L2Ad => L2Ad::Clear,
    L2Paging => L2Paging::FourLevel,
}

/// A block's axis left out: the default value alone.
fn only_default<T: Default>() -> Vec<T> {
    vec![T::default()]
}

fn all_paths() -> Vec<AccessPath> {
    AccessPath::ALL.to_vec()
}

fn all_vendors() -> Vec<VendorKind> {
    VendorKind::ALL.to_vec()
}

/// A product of axis values; every point of it is a scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    /// What the block covers: for the reader of the file, and to name it in errors.
    why: String,
    target: Vec<Target>,
    fault: Vec<Fault>,
    access: Vec<Access>,
    #[serde(default = "only_default")]
    nested_leaf: Vec<LeafSize>,
    #[serde(default = "only_default")]
    l2_leaf: Vec<LeafSize>,
    #[serde(default = "only_default")]
    placement: Vec<Placement>,
    #[serde(default = "only_default")]
    span: Vec<Span>,
    #[serde(default = "only_default")]
    ept_ad: Vec<EptAd>,
    #[serde(default = "only_default")]
    l2_ad: Vec<L2Ad>,
    #[serde(default = "only_default")]
    l2_paging: Vec<L2Paging>,
}

impl Block {
    /// Every point of the product, in axis order.
    fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.target.iter().flat_map(move |&target| {
            self.fault.iter().flat_map(move |&fault| {
                self.access.iter().flat_map(move |&access| {
                    self.nested_leaf.iter().flat_map(move |&nested_leaf| {
                        self.l2_leaf.iter().flat_map(move |&l2_leaf| {
                            self.placement.iter().flat_map(move |&placement| {
                                self.span.iter().flat_map(move |&span| {
                                    self.ept_ad.iter().flat_map(move |&ept_ad| {
                                        self.l2_ad.iter().flat_map(move |&l2_ad| {
                                            self.l2_paging.iter().map(move |&l2_paging| Point {
                                                target,
                                                fault,
                                                access,
                                                nested_leaf,
                                                l2_leaf,
                                                placement,
                                                span,
                                                ept_ad,
                                                l2_ad,
                                                l2_paging,
                                            })
                                        })
                                    })
                                })
                            })
                        })
                    })
                })
            })
        })
    }
}

/// Combinations that make no sense; a case matches when every axis the rule names holds its
/// value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Exclusion {
    why: String,
    target: Option<Vec<Target>>,
    fault: Option<Vec<Fault>>,
    access: Option<Vec<Access>>,
    nested_leaf: Option<Vec<LeafSize>>,
    l2_leaf: Option<Vec<LeafSize>>,
    placement: Option<Vec<Placement>>,
    span: Option<Vec<Span>>,
    ept_ad: Option<Vec<EptAd>>,
    l2_ad: Option<Vec<L2Ad>>,
    l2_paging: Option<Vec<L2Paging>>,
    path: Option<Vec<AccessPath>>,
    vendor: Option<Vec<VendorKind>>,
}

impl Exclusion {
    fn excludes(&self, point: &Point, vendor: VendorKind, path: AccessPath) -> bool {
        fn holds<T: PartialEq>(axis: &Option<Vec<T>>, value: T) -> bool {
            axis.as_ref().is_none_or(|values| values.contains(&value))
        }
        holds(&self.target, point.target)
            && holds(&self.fault, point.fault)
            && holds(&self.access, point.access)
            && holds(&self.nested_leaf, point.nested_leaf)
            && holds(&self.l2_leaf, point.l2_leaf)
            && holds(&self.placement, point.placement)
            && holds(&self.span, point.span)
            && holds(&self.ept_ad, point.ept_ad)
            && holds(&self.l2_ad, point.l2_ad)
            && holds(&self.l2_paging, point.l2_paging)
            && holds(&self.path, path)
            && holds(&self.vendor, vendor)
    }
}

/// A scenario that keeps the name it had before the matrix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    name: String,
    target: Target,
    fault: Fault,
    access: Access,
    #[serde(default)]
    nested_leaf: LeafSize,
    #[serde(default)]
    l2_leaf: LeafSize,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    span: Span,
    #[serde(default)]
    ept_ad: EptAd,
    #[serde(default)]
    l2_ad: L2Ad,
    #[serde(default)]
    l2_paging: L2Paging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    #[serde(default)]
    seed: Vec<Seed>,
    block: Vec<Block>,
    #[serde(default)]
    exclude: Vec<Exclusion>,
}

/// One scenario file of a `--scenarios-dir`: a single point, named by its file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    summary: String,
    target: Target,
    fault: Fault,
    access: Access,
    #[serde(default)]
    nested_leaf: LeafSize,
    #[serde(default)]
    l2_leaf: LeafSize,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    span: Span,
    #[serde(default)]
    ept_ad: EptAd,
    #[serde(default)]
    l2_ad: L2Ad,
    #[serde(default)]
    l2_paging: L2Paging,
    #[serde(default = "all_paths")]
    paths: Vec<AccessPath>,
    #[serde(default = "all_vendors")]
    vendors: Vec<VendorKind>,
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
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, ScenarioError> {
    toml::from_str(text).map_err(|error| ScenarioError::Malformed {
        file: file.to_string(),
        line: error.span().map_or(1, |span| line_of(text, span.start)),
        message: error.message().trim_end().to_string(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The built-in matrix and its exclusions: what every scenario, built-in or from a file, obeys.
pub struct Matrix {
    scenarios: Vec<Scenario>,
    exclusions: Vec<Exclusion>,
}

impl Matrix {
    pub fn parse(file: &str, text: &str) -> Result<Self, ScenarioError> {
        let parsed: MatrixFile = parse_toml(file, text)?;
        let invalid = |message: String| ScenarioError::Invalid {
            file: file.to_string(),
            message,
        };
        let mut points: Vec<(Point, &str)> = Vec::new();
        for block in &parsed.block {
            points.extend(block.points().map(|point| (point, block.why.as_str())));
        }
        let mut matrix = Matrix {
            scenarios: Vec::new(),
            exclusions: parsed.exclude,
        };
        let mut seen: std::collections::HashMap<Point, &str> = Default::default();
        for (point, why) in points {
            if let Some(problem) = point.unbuildable() {
                return Err(invalid(format!(
                    "block \"{why}\": {}: {problem}",
                    Scenario::derived_name(&point)
                )));
            }
            if let Some(first) = seen.insert(point, why) {
                return Err(invalid(format!(
                    "{} is spanned by two blocks (\"{first}\" and \"{why}\")",
                    Scenario::derived_name(&point)
                )));
            }
            let runs = matrix.runs(&point, &all_vendors(), &all_paths());
            if runs.is_empty() {
                continue;
            }
            let seed = parsed.seed.iter().find(|seed| point_of!(seed) == point);
            let name = seed.map_or_else(|| Scenario::derived_name(&point), |s| s.name.clone());
            let summary = Scenario::describe(&point);
            matrix
                .scenarios
                .push(Scenario::at(name, summary, point, runs));
        }
        for seed in &parsed.seed {
            if !matrix.scenarios.iter().any(|s| s.name == seed.name) {
                return Err(invalid(format!(
                    "seed {} is not a point any block spans (or every run of it is excluded)",
                    seed.name
                )));
            }
        }
        for (index, rule) in matrix.exclusions.iter().enumerate() {
            let used = seen.keys().any(|point| {
                VendorKind::ALL.iter().any(|&vendor| {
                    AccessPath::ALL
                        .iter()
                        .any(|&path| rule.excludes(point, vendor, path))
                })
            });
            if !used {
                return Err(invalid(format!(
                    "exclusion #{} (\"{}\") excludes nothing any block spans",
                    index + 1,
                    rule.why
                )));
            }
        }
        Ok(matrix)
    }

    /// The (vendor, path) pairs of `point` no exclusion removes, vendor-major.
    fn runs(
        &self,
        point: &Point,
        vendors: &[VendorKind],
        paths: &[AccessPath],
    ) -> Vec<(VendorKind, AccessPath)> {
        let mut runs = Vec::new();
        for vendor in VendorKind::ALL.into_iter().filter(|v| vendors.contains(v)) {
            for path in AccessPath::ALL.into_iter().filter(|p| paths.contains(p)) {
                if self.exclusion(point, vendor, path).is_none() {
                    runs.push((vendor, path));
                }
            }
        }
        runs
    }

    fn exclusion(&self, point: &Point, vendor: VendorKind, path: AccessPath) -> Option<&str> {
        self.exclusions
            .iter()
            .find(|rule| rule.excludes(point, vendor, path))
            .map(|rule| rule.why.as_str())
    }

    pub fn scenarios(&self) -> &[Scenario] {
        &self.scenarios
    }

    /// Parses one scenario file; `file` gives the name and is used in error messages. The
    /// matrix's exclusions apply: a file whose every run is excluded is an error that says why.
    pub fn parse_file(&self, file: &str, text: &str) -> Result<Scenario, ScenarioError> {
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
        let parsed: ScenarioFile = parse_toml(file, text)?;
        let point = point_of!(parsed);
        let invalid = |message: String| ScenarioError::Invalid {
            file: file.to_string(),
            message,
        };
        if parsed.paths.is_empty() || parsed.vendors.is_empty() {
            return Err(invalid(
                "`paths` and `vendors` must not be empty (leave them out for all)".into(),
            ));
        }
        if parsed.summary.trim().is_empty() {
            return Err(invalid("`summary` must say what L2 does".into()));
        }
        if let Some(problem) = point.unbuildable() {
            return Err(invalid(problem));
        }
        let runs = self.runs(&point, &parsed.vendors, &parsed.paths);
        if runs.is_empty() {
            let reasons: Vec<String> = parsed
                .vendors
                .iter()
                .flat_map(|&vendor| parsed.paths.iter().map(move |&path| (vendor, path)))
                .filter_map(|(vendor, path)| {
                    self.exclusion(&point, vendor, path)
                        .map(|why| format!("{vendor}/{path}: {why}"))
                })
                .collect();
            return Err(invalid(format!(
                "every run is excluded by {MATRIX_FILE}:\n  {}",
                reasons.join("\n  ")
            )));
        }
        Ok(Scenario::at(name.to_string(), parsed.summary, point, runs))
    }
}

/// The built-in matrix.
pub fn matrix() -> Result<Matrix, ScenarioError> {
    Matrix::parse(MATRIX_FILE, MATRIX)
}

/// The built-in scenarios, in matrix order.
pub fn built_in() -> Result<Vec<Scenario>, ScenarioError> {
    Ok(matrix()?.scenarios)
}

/// The `*.toml` files in `dir` as (file name, contents), in name order. Each must be a regular
/// UTF-8 file; one that is not is refused with its own name (crate::input_file).
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, ScenarioError> {
    let unreadable = |path: &Path, error: std::io::Error| ScenarioError::Unreadable {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let path = entry.map_err(|e| unreadable(dir, e))?.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(ScenarioError::Unreadable {
            path: dir.display().to_string(),
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
            let text = crate::input_file::read_text(path).map_err(|e| unreadable(path, e))?;
            Ok((name, text))
        })
        .collect()
}

/// The built-in scenarios, then those in `dir` (for trying new ones without rebuilding); a name
/// may occur once.
pub fn with_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let matrix = matrix()?;
    let mut scenarios = matrix.scenarios().to_vec();
    for (name, text) in read_dir(dir)? {
        let file = dir.join(&name).display().to_string();
        let scenario = matrix.parse_file(&file, &text)?;
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
        for scenario in scenarios {
            for &(_, path) in scenario.runs.iter().filter(|(v, _)| *v == vendor) {
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

/// The built-in case with this id, for tests across the crate.
#[cfg(test)]
pub fn built_in_case(id: &str) -> Case {
    expand(&built_in().unwrap())
        .into_iter()
        .find(|case| case.id() == id)
        .unwrap_or_else(|| panic!("no built-in case {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        expand(&built_in().unwrap()).iter().map(Case::id).collect()
    }

    #[test]
    fn the_matrix_keeps_the_seed_ids_and_spans_well_over_a_hundred() {
        let ids = ids();
        assert!(ids.len() > 140, "{}", ids.len());
        for seed in [
            "final_page_unmapped",
            "pt_page_unmapped",
            "final_page_write_protected",
            "pt_page_write_protected",
        ] {
            for vendor in ["svm", "vmx"] {
                for path in ["emulated", "hardware", "forced"] {
                    let id = format!("{vendor}/{seed}/{path}");
                    assert!(ids.contains(&id), "{id} missing");
                }
            }
        }
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "ids are unique");
    }

    #[test]
    fn seeds_are_the_points_they_always_were() {
        let case = built_in_case("svm/final_page_write_protected/emulated");
        let s = &case.scenario;
        assert_eq!(
            (s.target, s.fault, s.access),
            (Target::Final, Fault::WriteProtected, Access::Write)
        );
        let case = built_in_case("vmx/pt_page_write_protected/hardware");
        assert_eq!(case.scenario.access, Access::Read);
    }

    #[test]
    fn names_derive_from_the_axes() {
        let ids = ids();
        for id in [
            "svm/pdpt_page_unmapped_read/forced",
            "vmx/final_page_unmapped_read_nested_1g/hardware",
            "svm/pd_page_unmapped_read_l2_2m/emulated",
            "svm/final_page_supervisor_read/hardware",
            "vmx/final_page_reserved_bit_read/emulated",
            "vmx/final_page_no_execute_fetch/hardware",
        ] {
            assert!(ids.contains(&id.to_string()), "{id} missing");
        }
    }

    #[test]
    fn exclusions_remove_what_makes_no_sense() {
        let ids = ids();
        let absent = |fragment: &str| !ids.iter().any(|id| id.contains(fragment));
        assert!(absent("vmx/final_page_supervisor"), "no U/S bit in EPT");
        assert!(absent("fetch/emulated"), "no string-I/O fetch");
        assert!(
            absent("pt_page_unmapped_read_l2_2m"),
            "a 2M L2 page has no PT"
        );
        assert!(
            absent("final_page_write_protected_read"),
            "a read of a read-only page works"
        );
        for case in expand(&built_in().unwrap()) {
            if case.scenario.breaks_root() {
                assert_eq!(case.path, AccessPath::Hardware, "{}", case.id());
            }
        }
        assert!(
            ids.contains(&"vmx/pml4_page_unmapped_read_offset_5level/emulated".to_string()),
            "below a PML5, the PML4 is an ordinary table"
        );
    }

    #[test]
    fn files_obey_the_matrix_exclusions_and_say_why() {
        let matrix = matrix().unwrap();
        let error = matrix
            .parse_file(
                "x.toml",
                "summary = \"s\"\ntarget = \"final_page\"\nfault = \"supervisor\"\n\
                 access = \"read\"\nvendors = [\"vmx\"]\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("every run is excluded") && error.contains("vmx/"),
            "{error}"
        );
        let scenario = matrix
            .parse_file(
                "y.toml",
                "summary = \"s\"\ntarget = \"pd_page\"\nfault = \"supervisor\"\naccess = \"read\"\n\
                 paths = [\"hardware\"]\n",
            )
            .unwrap();
        assert_eq!(scenario.runs, [(VendorKind::Svm, AccessPath::Hardware)]);
    }

    #[test]
    fn a_table_a_mode_does_not_have_is_refused() {
        let matrix = matrix().unwrap();
        let file = |axes: &str| {
            matrix.parse_file(
                "a.toml",
                &format!("summary = \"s\"\nfault = \"unmapped\"\n{axes}"),
            )
        };
        let refused = |axes: &str| file(axes).unwrap_err().to_string();
        let error = refused("access = \"read\"\ntarget = \"pdpt_page\"\nl2_paging = \"32bit\"\n");
        assert!(
            error.contains("pdpt_page does not exist in 32bit paging") && error.contains("pd_page"),
            "{error}"
        );
        let error = refused(
            "access = \"read\"\ntarget = \"pt_page\"\nl2_paging = \"pae\"\nspan = \"crossing\"\n",
        );
        assert!(error.contains("4-level paging only"), "{error}");
        let root = file("access = \"fetch\"\ntarget = \"pml5_page\"\nl2_paging = \"5level\"\n");
        assert!(root.unwrap().breaks_root());
    }

    #[test]
    fn the_matrix_file_is_checked() {
        let block = "[[block]]\nwhy = \"w\"\ntarget = [\"final_page\"]\nfault = [\"unmapped\"]\naccess = [\"read\"]\n";
        let twice = Matrix::parse("m.toml", &format!("{block}{block}"))
            .err()
            .unwrap();
        assert!(twice.to_string().contains("two blocks"), "{twice}");
        let dead = format!("{block}[[exclude]]\nwhy = \"never\"\nfault = [\"supervisor\"]\n");
        let dead = Matrix::parse("m.toml", &dead).err().unwrap();
        assert!(dead.to_string().contains("excludes nothing"), "{dead}");
        let seed = format!("[[seed]]\nname = \"old\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\n{block}");
        let seed = Matrix::parse("m.toml", &seed).err().unwrap();
        assert!(seed.to_string().contains("seed old"), "{seed}");
    }

    #[test]
    fn bad_value_names_file_and_line() {
        let error = matrix()
            .unwrap()
            .parse_file(
                "scenarios/bad.toml",
                "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"sideways\"\naccess = \"read\"\n",
            )
            .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("scenarios/bad.toml:"), "{text}");
        assert!(
            text.contains("sideways") && text.contains("write_protected"),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_missing_keys_and_bad_names_are_errors() {
        let matrix = matrix().unwrap();
        let body =
            "summary = \"s\"\ntarget = \"pt_page\"\nfault = \"unmapped\"\naccess = \"read\"\n";
        let unknown = matrix.parse_file("a.toml", &format!("{body}colour = 1\n"));
        assert!(unknown.unwrap_err().to_string().contains("colour"));
        let missing = matrix.parse_file("a.toml", "summary = \"s\"\ntarget = \"pt_page\"\n");
        assert!(missing.unwrap_err().to_string().contains("fault"));
        assert!(matches!(
            matrix.parse_file("Bad-Name.toml", body),
            Err(ScenarioError::BadName { .. })
        ));
        let empty = matrix.parse_file("a.toml", &format!("{body}paths = []\n"));
        assert!(empty.unwrap_err().to_string().contains("must not be empty"));
    }
}
