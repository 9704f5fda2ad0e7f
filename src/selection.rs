//! Which cases a command line selects: `--scenario` (ids, names, globs over ids or `all`),
//! `--vendor`, `--path`.

use std::collections::HashSet;

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
    // Each id formatted once, and the patterns without wildcards (the inner run of --kernel
    // passes every case's id, 85 of them) looked up instead of matched against every case in
    // turn: under an emulated CPU that took 70 ms.
    let ids: Vec<String> = all.iter().map(Case::id).collect();
    let (globs, exact): (Vec<&String>, Vec<&String>) = patterns
        .iter()
        .partition(|pattern| pattern.contains(['*', '?']));
    let exact: HashSet<&str> = exact.into_iter().map(String::as_str).collect();
    // Without wildcards a pattern is `all`, a scenario's name or an id; with them, a glob over ids.
    let selects = |case: &Case, id: &str| {
        exact.contains("all")
            || exact.contains(case.scenario.name.as_str())
            || exact.contains(id)
            || globs
                .iter()
                .any(|glob_pattern| glob(glob_pattern.as_bytes(), id.as_bytes()))
    };
    let known: HashSet<&str> = ids
        .iter()
        .map(String::as_str)
        .chain(all.iter().map(|case| case.scenario.name.as_str()))
        .chain(["all"])
        .collect();
    for pattern in patterns {
        let found = if exact.contains(pattern.as_str()) {
            known.contains(pattern.as_str())
        } else {
            ids.iter().any(|id| glob(pattern.as_bytes(), id.as_bytes()))
        };
        if !found {
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
                ids: ids
                    .iter()
                    .map(|id| format!("  {id}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
    Ok(all
        .iter()
        .zip(&ids)
        .filter(|(case, id)| patterns.is_empty() || selects(case, id))
        .map(|(case, _)| case)
        .filter(|case| vendors.contains(&case.vendor) && path_ok(case))
        .cloned()
        .collect())
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
        // Every id, last first, as the inner run of --kernel passes them: all, in order.
        let named: Vec<&str> = every.iter().rev().map(String::as_str).collect();
        assert_eq!(ids(&named, &VendorKind::ALL, PathChoice::All), every);
        // Ids and globs together.
        let mixed = ids(
            &["svm/*/forced", "vmx/final_page_unmapped/hardware"],
            &VendorKind::ALL,
            PathChoice::All,
        );
        assert!(mixed.contains(&"vmx/final_page_unmapped/hardware".to_string()));
        assert_eq!(
            mixed.len(),
            1 + ids(&["svm/*/forced"], &VendorKind::ALL, PathChoice::All).len()
        );
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

    /// The refusal of `pattern`, as text.
    fn unknown(pattern: &str) -> String {
        select(
            &all(),
            &[pattern.to_string()],
            &VendorKind::ALL,
            PathChoice::All,
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn unknown_scenarios_list_the_valid_ids() {
        let text = unknown("pt_page_unmaped");
        assert!(text.contains("\"pt_page_unmaped\""), "{text}");
        assert!(text.contains("  svm/pt_page_unmapped/emulated\n"), "{text}");
        assert_eq!(
            text.matches("  vmx/").count(),
            ids(&["vmx/*"], &VendorKind::ALL, PathChoice::All).len(),
            "{text}"
        );
        assert_eq!(text.matches("pt_page_unmapped,").count(), 1, "{text}");
        // A glob that matches nothing is unknown too.
        assert!(unknown("svm/no_such_*").contains("\"svm/no_such_*\""));
    }
}
