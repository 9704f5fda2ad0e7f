//! The e2e's kernel-tree stage: the README's kernel developer's loop, done for real on Debian's
//! linux-source of the newest fixed series. Configure with `nestfault kconfig --tree`, build
//! bzImage, run the SVM suite on the tree (all pass); then commit a revert of the SVM fix's
//! effect between two harmless commits and let `git bisect run`, with the README's own recipe,
//! find it. Last, a copy of the same source with KVM as modules (`kconfig --modules`) must pass
//! too: `--kernel DIR` takes the .ko files from the tree.
//!
//! The unpacked source and its builds stay in the cache (`<cache>/tree/`), the source as a git
//! repository whose first commit is Debian's: a second run checks that commit out again and
//! rebuilds only what the bisect's commits touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use nestfault::boot::Location;
use nestfault::debian::apt::Apt;
use nestfault::debian::kernels::{major_minor, obtain, Series};
use nestfault::kconfig::{self, KvmBuild};

/// The suite with the newest kernels, and the series that has both fixes.
const SUITE: &str = "sid";
const FIXED: Series = Series::AtLeast(7, 2);
/// Names Debian's unchanged source in the tree's repository.
const BASE_TAG: &str = "debian-source";
const BRANCH: &str = "nestfault-bisect";
/// The programs and headers a kernel build needs, and the packages with them.
const BUILD_PROGRAMS: [&str; 8] = ["gcc", "make", "flex", "bison", "bc", "cpio", "git", "xz"];
const BUILD_HEADERS: [&str; 2] = ["/usr/include/gelf.h", "/usr/include/openssl/opensslv.h"];
/// Besides a kernel build's own (nestfault::kconfig::BUILD_PACKAGES): git for the bisect, xz for
/// the source tarball.
const STAGE_PACKAGES: &str = "git xz-utils";

/// The file and line the revert changes: before 7.2 an NPF injected by the emulator always
/// carried GUEST_FINAL; the fix takes the stage from the walker's error code instead.
const NESTED_C: &str = "arch/x86/kvm/svm/nested.c";
const FIXED_LINE: &str = "fault_stage = fault->error_code & PFERR_GUEST_FAULT_STAGE_MASK;";
const REVERTED_LINE: &str = "fault_stage = PFERR_GUEST_FINAL_MASK;";

/// Runs the stage; `nestfault` is the binary under test, put first in PATH for the recipe.
pub fn run(cache: &Path, nestfault: &Path, workspace: &Path) -> Result<()> {
    ensure_build_tools()?;
    let recipe = readme_recipe(&workspace.join("README.md"))?;
    let started = Instant::now();
    let tree = source_tree(cache)?;
    println!(
        "e2e tree: source ready in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        tree.display()
    );
    let step = Instant::now();
    prepare_repository(&tree)?;
    println!(
        "e2e tree: repository ready in {:.0} s",
        step.elapsed().as_secs_f64()
    );

    configure_build_and_pass(&tree, nestfault, KvmBuild::BuiltIn)?;

    let revert = commit_bisect_history(&tree)?;
    let step = Instant::now();
    let first_bad = bisect(&tree, &recipe, nestfault)?;
    ensure!(
        first_bad == revert,
        "git bisect named {first_bad}, not the revert {revert}"
    );
    println!(
        "e2e tree: git bisect named the revert {} in {:.0} s",
        &revert[..12],
        step.elapsed().as_secs_f64(),
    );

    // The same source with KVM as modules: `--kernel DIR` takes the .ko files from the tree.
    let modular = modular_copy(&tree)?;
    configure_build_and_pass(&modular, nestfault, KvmBuild::Modules)?;
    println!(
        "e2e tree: stage total {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `nestfault kconfig --tree`, `make`, then `nestfault --kernel DIR --vendor svm`, which must
/// pass: the source is Debian's, with the fix.
fn configure_build_and_pass(tree: &Path, nestfault: &Path, kvm: KvmBuild) -> Result<()> {
    let step = Instant::now();
    let mut kconfig = Command::new(nestfault);
    kconfig.args(["kconfig", "--tree"]).arg(tree);
    let targets: &[&str] = match kvm {
        KvmBuild::BuiltIn => &["bzImage"],
        KvmBuild::Modules => {
            kconfig.arg("--modules");
            &["bzImage", "modules"]
        }
    };
    run_checked(&mut kconfig, "nestfault kconfig --tree")?;
    make(tree, targets)?;
    println!(
        "e2e tree: {} configured and built ({}) in {:.0} s",
        tree.display(),
        targets.join(" "),
        step.elapsed().as_secs_f64()
    );
    let step = Instant::now();
    let status = Command::new(nestfault)
        .arg("--kernel")
        .arg(tree)
        .args(["--vendor", "svm"])
        .status()
        .context("running nestfault --kernel on the tree")?;
    ensure!(
        status.code() == Some(0),
        "nestfault --kernel {} --vendor svm: {status}, wanted 0 (the fixed source passes)",
        tree.display()
    );
    println!(
        "e2e tree: the SVM suite passed on {} in {:.1} s",
        tree.display(),
        step.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A plain copy of Debian's source (the tagged commit) beside the tree, for the modular build;
/// made again when the source changed.
fn modular_copy(tree: &Path) -> Result<PathBuf> {
    let mut name = tree.file_name().unwrap_or_default().to_os_string();
    name.push("-modules");
    let copy = tree.with_file_name(name);
    let base = git(tree, &["rev-parse", BASE_TAG])?;
    let stamp = copy.join(".nestfault-source");
    if fs::read_to_string(&stamp).is_ok_and(|text| text.trim() == base) {
        return Ok(copy);
    }
    if copy.exists() {
        fs::remove_dir_all(&copy).with_context(|| format!("cannot remove {}", copy.display()))?;
    }
    fs::create_dir_all(&copy).with_context(|| format!("cannot create {}", copy.display()))?;
    run_checked(
        Command::new("sh").current_dir(tree).args([
            "-c",
            "git archive \"$1\" | tar -x -C \"$2\"",
            "sh",
            BASE_TAG,
            &copy.display().to_string(),
        ]),
        "copying the source for the modular build",
    )?;
    fs::write(&stamp, &base).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(copy)
}

/// What building a kernel needs, installed first when missing and running as root (as .ci/run
/// does); otherwise an error with the install command.
fn ensure_build_tools() -> Result<()> {
    let missing = missing_build_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = format!("{} {STAGE_PACKAGES}", kconfig::BUILD_PACKAGES);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    ensure!(
        root,
        "building a kernel needs {}: install with `sudo apt-get install {packages}`",
        missing.join(", ")
    );
    println!(
        "e2e tree: installing {packages} (missing: {})",
        missing.join(", ")
    );
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages.split_whitespace()),
        "apt-get install",
    )?;
    let still = missing_build_tools();
    ensure!(
        still.is_empty(),
        "still missing after apt-get install: {}",
        still.join(", ")
    );
    Ok(())
}

fn missing_build_tools() -> Vec<&'static str> {
    let mut missing: Vec<&str> = BUILD_PROGRAMS
        .into_iter()
        .filter(|program| Location::Program(program).find().is_none())
        .collect();
    missing.extend(
        BUILD_HEADERS
            .into_iter()
            .filter(|header| !Path::new(header).is_file()),
    );
    missing
}

/// The `git bisect run` line of the README's kernel developer's loop, exactly as written there.
pub fn readme_recipe(readme: &Path) -> Result<String> {
    let text =
        fs::read_to_string(readme).with_context(|| format!("cannot read {}", readme.display()))?;
    let section = text
        .split("\n## ")
        .find(|section| section.starts_with("The kernel developer's loop"))
        .context("the README has no \"The kernel developer's loop\" section")?;
    section
        .lines()
        .find(|line| line.starts_with("git bisect run "))
        .map(str::to_owned)
        .context("the README's kernel developer's loop has no `git bisect run` line")
}

/// The tree this stage built with KVM built in (`nestfault kconfig --tree`), if one is in the
/// cache, for the benchmark; the newest series first. Its commit is whatever the last bisect
/// step built: fine for timing, which is all the benchmark wants of it.
pub fn cached_build(cache: &Path) -> Option<PathBuf> {
    let mut built: Vec<PathBuf> = fs::read_dir(cache.join("tree"))
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let series = name.strip_prefix("linux-source-").unwrap_or_default();
            // linux-source-7.2, not the modular copy linux-source-7.2-modules.
            let plain = series
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte == b'.');
            plain && major_minor(series).is_some() && path.join("arch/x86/boot/bzImage").is_file()
        })
        .collect();
    built.sort_by_key(|path| {
        major_minor(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_start_matches("linux-source-"),
        )
    });
    built.pop()
}

/// The unpacked linux-source of the newest fixed series in `<cache>/tree`, fetched and unpacked
/// unless already there.
fn source_tree(cache: &Path) -> Result<PathBuf> {
    let apt = Apt::private(&cache.join(format!("apt-{SUITE}")), SUITE)?;
    apt.update_if_stale(&mut |line| println!("e2e tree: {line}"))?;
    let names: Vec<String> = apt
        .search_names("^linux-source-[0-9]+\\.[0-9]+$")?
        .into_iter()
        .filter(|name| {
            name.strip_prefix("linux-source-")
                .is_some_and(|series| FIXED.accepts(series))
        })
        .collect();
    let mut candidates = apt.candidates(&names)?;
    // The newest series last.
    candidates.sort_by_key(|(name, _)| major_minor(name.trim_start_matches("linux-source-")));
    let (package, version) = candidates
        .pop()
        .with_context(|| format!("no linux-source-X.Y of series {FIXED:?} in {}", apt.label()))?;
    let root = cache.join("tree");
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tree = root.join(&package);
    let stamp = root.join(format!("{package}.unpacked"));
    if fs::read_to_string(&stamp).is_ok_and(|text| text.trim() == version) && tree.is_dir() {
        return Ok(tree);
    }
    let deb = obtain(&apt, &package, &version, &root, &mut |phase| {
        println!("e2e tree: {phase}")
    })?;
    println!("e2e tree: unpacking {}", deb.display());
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    // The package holds usr/src/<package>.tar.xz, which holds <package>/.
    let tarball = format!("./usr/src/{package}.tar.xz");
    run_checked(
        Command::new("sh").current_dir(&root).args([
            "-c",
            "dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\" | xz -dc | tar -x",
            "sh",
            &deb.display().to_string(),
            &tarball,
        ]),
        "unpacking the linux-source package",
    )?;
    ensure!(
        tree.is_dir(),
        "{} did not unpack into {}",
        deb.display(),
        tree.display()
    );
    fs::write(&stamp, &version).with_context(|| format!("cannot write {}", stamp.display()))?;
    // Unpacked, the package is 160 MB of nothing.
    fs::remove_file(&deb).ok();
    Ok(tree)
}

/// A git repository whose first commit, tagged, is Debian's source; checked out on a fresh
/// bisect branch. Build outputs survive (they are ignored), so a rebuild is incremental.
fn prepare_repository(tree: &Path) -> Result<()> {
    let tagged = git(tree, &["rev-parse", "-q", "--verify", BASE_TAG]).is_ok();
    if !tagged {
        // Never set up, or an earlier run stopped halfway.
        let repository = tree.join(".git");
        if repository.exists() {
            fs::remove_dir_all(&repository)
                .with_context(|| format!("cannot remove {}", repository.display()))?;
        }
        // Debian's .gitignore ends with a packaging block ignoring everything at the top level:
        // without removing it, `git add` adds nothing.
        let gitignore = tree.join(".gitignore");
        let text = fs::read_to_string(&gitignore)
            .with_context(|| format!("cannot read {}", gitignore.display()))?;
        if let Some(at) = text.find("\n#\n# Debian packaging") {
            fs::write(&gitignore, &text[..at + 1])
                .with_context(|| format!("cannot write {}", gitignore.display()))?;
        }
        git(tree, &["init", "-q"])?;
        git(tree, &["add", "-A"])?;
        git(
            tree,
            &["commit", "-q", "-m", "Debian's linux-source, as unpacked"],
        )?;
        git(tree, &["tag", BASE_TAG])?;
    }
    // A bisect interrupted last time.
    git(tree, &["bisect", "reset"]).ok();
    git(tree, &["checkout", "-q", "-f", "-B", BRANCH, BASE_TAG])?;
    Ok(())
}

/// Commits a harmless change, the revert, and another harmless change; returns the revert's id.
fn commit_bisect_history(tree: &Path) -> Result<String> {
    let note = tree.join("Documentation/virt/kvm/nestfault-bisect.rst");
    fs::write(&note, "A harmless change before the revert.\n")
        .with_context(|| format!("cannot write {}", note.display()))?;
    commit_all(tree, "Documentation: a harmless change before the revert")?;

    let nested = tree.join(NESTED_C);
    let text =
        fs::read_to_string(&nested).with_context(|| format!("cannot read {}", nested.display()))?;
    ensure!(
        text.matches(FIXED_LINE).count() == 1,
        "{NESTED_C} does not have the fixed line `{FIXED_LINE}` once: has the fix changed shape?"
    );
    fs::write(&nested, text.replacen(FIXED_LINE, REVERTED_LINE, 1))
        .with_context(|| format!("cannot write {}", nested.display()))?;
    commit_all(
        tree,
        "KVM: nSVM: emulator-injected NPFs always carry GUEST_FINAL again (revert the fix's effect)",
    )?;
    let revert = git(tree, &["rev-parse", "HEAD"])?;

    fs::write(&note, "A harmless change after the revert.\n")
        .with_context(|| format!("cannot write {}", note.display()))?;
    commit_all(tree, "Documentation: a harmless change after the revert")?;
    Ok(revert)
}

/// `git bisect run` with the README's recipe between the tag and the branch's head; returns the
/// commit bisect named.
fn bisect(tree: &Path, recipe: &str, nestfault: &Path) -> Result<String> {
    let bin = nestfault
        .parent()
        .context("the nestfault binary has no directory")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(bin.to_owned()).chain(std::env::split_paths(&path)))
            .context("building PATH")?;
    git(tree, &["bisect", "start", BRANCH, BASE_TAG])?;
    let output = Command::new("sh")
        .current_dir(tree)
        .env("PATH", path)
        .args(["-c", recipe])
        .stderr(Stdio::inherit())
        .output()
        .context("running git bisect run");
    let log = git(tree, &["bisect", "log"]).unwrap_or_default();
    git(tree, &["bisect", "reset"])?;
    let output = output?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!("`{recipe}` failed ({}); bisect log:\n{log}", output.status);
    }
    stdout
        .lines()
        .find_map(|line| line.strip_suffix(" is the first bad commit"))
        .map(str::to_owned)
        .with_context(|| format!("git bisect named no first bad commit; bisect log:\n{log}"))
}

fn make(tree: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_checked(
        Command::new("make")
            .current_dir(tree)
            .arg(format!("-j{jobs}"))
            .args(targets)
            .stdout(Stdio::null()),
        &format!("make {}", targets.join(" ")),
    )
}

fn commit_all(tree: &Path, message: &str) -> Result<()> {
    git(tree, &["add", "-A"])?;
    git(tree, &["commit", "-q", "-m", message]).map(|_| ())
}

/// Runs git on `tree`'s own repository (never one around it) with a fixed identity; returns its
/// trimmed stdout.
fn git(tree: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .current_dir(tree)
        .env("GIT_DIR", tree.join(".git"))
        .env("GIT_WORK_TREE", tree)
        .env("LC_ALL", "C")
        .args([
            "-c",
            "user.name=nestfault e2e",
            "-c",
            "user.email=e2e@nestfault.invalid",
        ])
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    ensure!(
        output.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    ensure!(status.success(), "{what} failed: {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_has_the_recipe() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let recipe = readme_recipe(&workspace.join("README.md")).unwrap();
        assert!(recipe.contains("nestfault --kernel"), "{recipe}");
    }

    #[test]
    fn the_recipe_is_found_only_in_its_section() {
        let dir = std::env::temp_dir().join(format!("xtask-readme-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        fs::write(&readme, "# x\n\n## Other\ngit bisect run false\n").unwrap();
        assert!(readme_recipe(&readme).is_err());
        fs::write(
            &readme,
            "# x\n\n## Other\ngit bisect run false\n\n## The kernel developer's loop\n\
             ```\ngit bisect run sh -c 'true'\n```\n",
        )
        .unwrap();
        assert_eq!(
            readme_recipe(&readme).unwrap(),
            "git bisect run sh -c 'true'"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
