//! Which cases a command line selects: `--scenario` (ids, names, globs over ids or `all`),
//! `--vendor`, `--path`.

use thiserror::Error;

use crate::scenario::{AccessPath, Case, VendorKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VendorChoice {
    /// What this host's KVM offers nested (direct mode); both, emulated, with --kernel.
    Auto,
    Svm,
    Vmx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PathChoice {
    Emulated,
    Hardware,
    Forced,
    All,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown scenario {wanted:?}; valid are `all`, a scenario name ({names}) or one of these ids:\n{ids}")]
pub struct UnknownScenario {
    wanted: String,
    names: String,
    ids: String,
}

/// The cases named by `patterns` (empty means `all`), restricted to `vendors` and `path`, in
/// the order of `all`.
pub fn select(
    all: &[Case],
    patterns: &[String],
    vendors: &[VendorKind],
    path: PathChoice,
) -> Result<Vec<Case>, UnknownScenario> {
    let path_ok = |case: &Case| match path {
        PathChoice::All => true,
        PathChoice::Emulated => case.path == AccessPath::Emulated,
        PathChoice::Hardware => case.path == AccessPath::Hardware,
        PathChoice::Forced => case.path == AccessPath::Forced,
    };
    for pattern in patterns {
        if !all.iter().any(|case| matches(case, pattern)) {
            // Each name once: `all` is vendor-major, so a name recurs per vendor.
            let mut names: Vec<&str> = Vec::new();
            for case in all {
                if !names.contains(&case.scenario.name.as_str()) {
                    names.push(&case.scenario.name);
                }
            }
            return Err(UnknownScenario {
                wanted: pattern.clone(),
                names: names.join(", "),
                ids: all
                    .iter()
                    .map(|case| format!("  {}", case.id()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
    Ok(all
        .iter()
        .filter(|case| patterns.is_empty() || patterns.iter().any(|pattern| matches(case, pattern)))
        .filter(|case| vendors.contains(&case.vendor) && path_ok(case))
        .cloned()
        .collect())
}

fn matches(case: &Case, pattern: &str) -> bool {
    pattern == "all"
        || pattern == case.scenario.name
        || glob(pattern.as_bytes(), case.id().as_bytes())
}

/// Shell-style matching of a whole id: `*` any run of characters (slashes included), `?` one.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((&p, rest)) => text
            .split_first()
            .is_some_and(|(&t, tail)| (p == b'?' || p == t) && glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{built_in, expand};

    fn all() -> Vec<Case> {
        expand(&built_in().unwrap())
    }

    #[test]
    fn globs_match_whole_ids() {
        let forced = ids(&["svm/*/forced"], &VendorKind::ALL, PathChoice::All);
        assert!(
            forced.len() > 20
                && forced
                    .iter()
                    .all(|id| id.starts_with("svm/") && id.ends_with("/forced"))
        );
        let nested = ids(&["*nested_1g*"], &[VendorKind::Vmx], PathChoice::Hardware);
        assert_eq!(nested.len(), 3, "{nested:?}");
        assert_eq!(
            ids(
                &["vmx/final_page_unmapped/hardwar?"],
                &VendorKind::ALL,
                PathChoice::All
            )
            .len(),
            1
        );
        assert!(!glob(b"svm/*", b"vmx/x"));
        assert!(glob(b"*", b""));
    }

    fn ids(patterns: &[&str], vendors: &[VendorKind], path: PathChoice) -> Vec<String> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        select(&all(), &patterns, vendors, path)
            .unwrap()
            .iter()
            .map(Case::id)
            .collect()
    }

    #[test]
    fn names_ids_and_all_select() {
        let every = ids(&[], &VendorKind::ALL, PathChoice::All);
        assert_eq!(ids(&["all"], &VendorKind::ALL, PathChoice::All), every);
        let svm = ids(&["all"], &[VendorKind::Svm], PathChoice::All);
        assert!(!svm.is_empty() && svm.iter().all(|id| id.starts_with("svm/")));
        assert_eq!(
            ids(
                &["pt_page_unmapped"],
                &VendorKind::ALL,
                PathChoice::Emulated
            ),
            [
                "svm/pt_page_unmapped/emulated",
                "vmx/pt_page_unmapped/emulated"
            ]
        );
        assert_eq!(
            ids(
                &["pt_page_unmapped"],
                &[VendorKind::Vmx],
                PathChoice::Forced
            ),
            ["vmx/pt_page_unmapped/forced"]
        );
        assert_eq!(
            ids(
                &[
                    "vmx/final_page_unmapped/hardware",
                    "svm/final_page_unmapped/hardware"
                ],
                &VendorKind::ALL,
                PathChoice::All
            ),
            [
                "svm/final_page_unmapped/hardware",
                "vmx/final_page_unmapped/hardware"
            ]
        );
    }

    #[test]
    fn unknown_scenarios_list_the_valid_ids() {
        let error = select(
            &all(),
            &["pt_page_unmaped".to_string()],
            &VendorKind::ALL,
            PathChoice::All,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("\"pt_page_unmaped\""), "{text}");
        assert!(text.contains("  svm/pt_page_unmapped/emulated\n"), "{text}");
        assert_eq!(
            text.matches("  vmx/").count(),
            ids(&["vmx/*"], &VendorKind::ALL, PathChoice::All).len(),
            "{text}"
        );
        assert_eq!(text.matches("pt_page_unmapped,").count(), 1, "{text}");
    }
}
