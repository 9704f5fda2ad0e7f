//! Finding a module and its dependencies in a kernel's modules directory.
//!
//! modules.dep is not relied on (Debian's 6.1 and 7.2 packages ship none):
//! each module's own `.modinfo` says what it depends on. Names are compared
//! with '-' and '_' treated alike, as the kernel does.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::compression::Compression;
use super::unsigned::CopyCache;
use crate::boot::error::BootError;
use crate::elf::Elf;

/// A module ready to be put into the initramfs, with its modinfo.
pub(crate) struct ResolvedModule {
    pub(crate) name: String,
    /// The module file as found, and how it is compressed.
    pub(crate) packed: Vec<u8>,
    pub(crate) compression: Compression,
    pub(crate) contents: Contents,
    pub(crate) info: ModInfo,
}

/// A module's ELF image.
pub(crate) enum Contents {
    /// Decompressed, as built.
    Image(Vec<u8>),
    /// Its unsigned copy, which an earlier run made and cached ([`CopyCache`]).
    UnsignedCopy(Vec<u8>),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ModInfo {
    pub(crate) depends: Vec<String>,
    pub(crate) vermagic: Option<String>,
    /// Names of the parameters the module declares.
    pub(crate) params: Vec<String>,
}

/// The kernel's own spelling of a module name: '-' becomes '_'.
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kvm-amd.ko.xz` -> (`kvm_amd`, Xz); None for files that are not modules.
fn module_file_name(file_name: &str) -> Option<(String, Compression)> {
    let (stem, compression) = Compression::split_suffix(file_name);
    let name = stem.strip_suffix(".ko")?;
    Some((normalize(name), compression))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub(crate) fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in section.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(normalize),
            ),
            "vermagic" => info.vermagic = Some(value.trim().to_owned()),
            // parmtype=NAME:TYPE is emitted for every module_param; parm=NAME:DESC
            // only for those with a description.
            "parmtype" | "parm" => {
                if let Some((name, _)) = value.split_once(':') {
                    if !info.params.iter().any(|known| known == name) {
                        info.params.push(name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Yields a module's direct dependencies: `(name, needed_by)`.
pub(crate) type DependsOf<'a> =
    dyn FnMut(&str, Option<&str>) -> Result<Vec<String>, BootError> + 'a;

/// Orders `root` and everything it depends on so that each module comes after
/// its dependencies. `depends_of(name, needed_by)` yields a module's direct
/// dependencies.
pub(crate) fn dependency_order(
    root: &str,
    depends_of: &mut DependsOf,
) -> Result<Vec<String>, BootError> {
    fn visit(
        name: &str,
        needed_by: Option<&str>,
        depends_of: &mut DependsOf,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), BootError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|n| n == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_owned());
            return Err(BootError::ModuleCycle { cycle });
        }
        path.push(name.to_owned());
        for dependency in depends_of(name, needed_by)? {
            visit(&dependency, Some(name), depends_of, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push(name.to_owned());
        Ok(())
    }

    let mut order = Vec::new();
    visit(
        &normalize(root),
        None,
        depends_of,
        &mut Vec::new(),
        &mut HashSet::new(),
        &mut order,
    )?;
    Ok(order)
}

/// The module files under a modules directory, by normalized name, and the
/// names the kernel has built in (modules.builtin).
pub(crate) struct ModuleIndex {
    dir: PathBuf,
    files: HashMap<String, (PathBuf, Compression)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    pub(crate) fn scan(dir: &Path) -> Result<Self, BootError> {
        let mut index = ModuleIndex {
            dir: dir.to_owned(),
            files: HashMap::new(),
            builtin: HashSet::new(),
        };
        index.walk(dir)?;
        if let Ok(builtin) = fs::read_to_string(dir.join("modules.builtin")) {
            index.builtin = builtin
                .lines()
                .filter_map(|line| line.rsplit('/').next())
                .filter_map(|file| module_file_name(file).map(|(name, _)| name))
                .collect();
        }
        Ok(index)
    }

    fn walk(&mut self, dir: &Path) -> Result<(), BootError> {
        let entries = fs::read_dir(dir).map_err(|e| BootError::io("read directory", dir, e))?;
        let mut entries: Vec<_> = entries
            .collect::<Result<_, _>>()
            .map_err(|e| BootError::io("read directory", dir, e))?;
        // Sorted, so that a name found twice resolves the same way every time.
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|e| BootError::io("inspect", &path, e))?;
            // Symlinked directories (build/, source/) lead out of the tree.
            if file_type.is_dir() {
                self.walk(&path)?;
                continue;
            }
            let Some((name, compression)) = entry.file_name().to_str().and_then(module_file_name)
            else {
                continue;
            };
            // depmod lets updates/ override the stock module; otherwise first wins.
            let overrides = path
                .strip_prefix(&self.dir)
                .is_ok_and(|rel| rel.starts_with("updates"));
            if overrides || !self.files.contains_key(&name) {
                self.files.insert(name, (path, compression));
            }
        }
        Ok(())
    }

    fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name)
    }

    /// Reads and inspects one module, checking it was built for `release`: its unsigned copy
    /// from `copies` if an earlier run made one, else the module decompressed.
    fn load(
        &self,
        name: &str,
        release: &str,
        copies: Option<&CopyCache>,
    ) -> Option<Result<ResolvedModule, BootError>> {
        let (path, compression) = self.files.get(name)?;
        let read = || {
            let packed = fs::read(path).map_err(|e| BootError::io("read", path, e))?;
            let contents = match copies.and_then(|copies| copies.get(&packed)) {
                Some(copy) => Contents::UnsignedCopy(copy),
                None => Contents::Image(compression.decompress(&packed).map_err(|e| {
                    BootError::BadModule {
                        path: path.to_owned(),
                        reason: format!("cannot decompress: {e}"),
                    }
                })?),
            };
            let (Contents::Image(image) | Contents::UnsignedCopy(image)) = &contents;
            let info = inspect(path, image, release)?;
            Ok(ResolvedModule {
                name: name.to_owned(),
                packed,
                compression: *compression,
                contents,
                info,
            })
        };
        Some(read())
    }
}

/// The modinfo of the module `image` (read from `path`), which must have been built for
/// `release`.
fn inspect(path: &Path, image: &[u8], release: &str) -> Result<ModInfo, BootError> {
    let bad = |reason: String| BootError::BadModule {
        path: path.to_owned(),
        reason,
    };
    let elf = Elf::parse(image).map_err(bad)?;
    let section = elf
        .section(".modinfo")
        .map_err(bad)?
        .ok_or_else(|| bad("no .modinfo section: not a kernel module".into()))?;
    let info = parse_modinfo(section);
    if let Some(vermagic) = &info.vermagic {
        if vermagic.split_whitespace().next() != Some(release) {
            return Err(BootError::ModuleForOtherKernel {
                path: path.to_owned(),
                vermagic: vermagic.clone(),
                release: release.to_owned(),
            });
        }
    }
    Ok(info)
}

/// `root` and its transitive dependencies from `dir`, in load order, each as cached in `copies`
/// if it is there. Empty when the kernel has `root` built in.
pub(crate) fn resolve(
    dir: &Path,
    root: &str,
    release: &str,
    copies: Option<&CopyCache>,
) -> Result<Vec<ResolvedModule>, BootError> {
    let index = ModuleIndex::scan(dir)?;
    let root = normalize(root);
    if index.is_builtin(&root) && !index.files.contains_key(&root) {
        return Ok(Vec::new());
    }
    let mut loaded: HashMap<String, ResolvedModule> = HashMap::new();
    let order = dependency_order(&root, &mut |name, needed_by| {
        let module = match index.load(name, release, copies) {
            Some(module) => module?,
            // depends= never names built-in code, but a hand-made tree might.
            None if index.is_builtin(name) => return Ok(Vec::new()),
            None => {
                return Err(BootError::ModuleNotFound {
                    module: name.to_owned(),
                    needed_by: needed_by.map(str::to_owned),
                    dir: dir.to_owned(),
                })
            }
        };
        let depends = module.info.depends.clone();
        loaded.insert(name.to_owned(), module);
        Ok(depends)
    })?;
    Ok(order
        .iter()
        .filter_map(|name| loaded.remove(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_file_names() {
        assert_eq!(
            module_file_name("kvm-amd.ko.xz"),
            Some(("kvm_amd".into(), Compression::Xz))
        );
        assert_eq!(
            module_file_name("kvm.ko"),
            Some(("kvm".into(), Compression::Plain))
        );
        assert_eq!(module_file_name("modules.dep"), None);
        assert_eq!(module_file_name("vmlinuz.unsigned"), None);
    }

    #[test]
    fn parses_modinfo() {
        let section = b"license=GPL\0depends=kvm,ccp\0retpoline=Y\0intree=Y\0name=kvm_amd\0\
vermagic=6.1.0-40-amd64 SMP preempt mod_unload modversions \0parm=nested:int\0parmtype=nested:int\0\
parmtype=npt:int\0\0\0";
        let info = parse_modinfo(section);
        assert_eq!(info.depends, vec!["kvm", "ccp"]);
        assert_eq!(
            info.vermagic.as_deref(),
            Some("6.1.0-40-amd64 SMP preempt mod_unload modversions")
        );
        assert_eq!(info.params, vec!["nested", "npt"]);
    }

    #[test]
    fn empty_depends_means_none() {
        assert!(parse_modinfo(b"depends=\0name=irqbypass\0")
            .depends
            .is_empty());
    }

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(name, deps)| {
                (
                    name.to_string(),
                    deps.iter().map(|d| d.to_string()).collect(),
                )
            })
            .collect()
    }

    fn order_of(
        root: &str,
        graph: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<String>, BootError> {
        dependency_order(root, &mut |name, needed_by| {
            graph
                .get(name)
                .cloned()
                .ok_or_else(|| BootError::ModuleNotFound {
                    module: name.into(),
                    needed_by: needed_by.map(str::to_owned),
                    dir: PathBuf::from("/m"),
                })
        })
    }

    #[test]
    fn orders_like_debian_6_1() {
        let g = graph(&[
            ("kvm_amd", &["kvm", "ccp"]),
            ("kvm", &["irqbypass"]),
            ("ccp", &[]),
            ("irqbypass", &[]),
        ]);
        assert_eq!(
            order_of("kvm-amd", &g).unwrap(),
            vec!["irqbypass", "kvm", "ccp", "kvm_amd"]
        );
    }

    #[test]
    fn shared_dependency_comes_once() {
        let g = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])]);
        assert_eq!(order_of("a", &g).unwrap(), vec!["d", "b", "c", "a"]);
    }

    #[test]
    fn missing_dependency_names_its_user() {
        let g = graph(&[("kvm_intel", &["kvm"])]);
        match order_of("kvm_intel", &g) {
            Err(BootError::ModuleNotFound {
                module, needed_by, ..
            }) => {
                assert_eq!(module, "kvm");
                assert_eq!(needed_by.as_deref(), Some("kvm_intel"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cycle_is_reported() {
        let g = graph(&[("a", &["b"]), ("b", &["a"])]);
        match order_of("a", &g) {
            Err(BootError::ModuleCycle { cycle }) => assert_eq!(cycle, vec!["a", "b", "a"]),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A module ELF with this `.modinfo` (made with binutils' objcopy, which the unsigned
    /// copies need anyway).
    fn module_elf(modinfo: &str, scratch: &Path) -> Vec<u8> {
        let (input, output) = (scratch.join("modinfo.bin"), scratch.join("module.o"));
        fs::write(&input, modinfo).unwrap();
        let status = std::process::Command::new("objcopy")
            .args(["-I", "binary", "-O", "elf64-x86-64"])
            .args(["--rename-section", ".data=.modinfo"])
            .arg(&input)
            .arg(&output)
            .status()
            .unwrap();
        assert!(status.success());
        fs::read(output).unwrap()
    }

    /// With an unsigned copy cached for the module file, the copy stands in for decompressing
    /// it, modinfo and all; a changed module file is decompressed again.
    #[test]
    fn a_cached_copy_stands_in_for_the_module_it_was_made_of() {
        let dir = crate::boot::tempdir::private_dir("test").unwrap();
        let modules = dir.path().join("modules");
        fs::create_dir_all(modules.join("kernel")).unwrap();
        let module = module_elf("vermagic=6.1.0 SMP\0depends=\0", dir.path());
        fs::write(modules.join("kernel/kvm.ko"), &module).unwrap();
        let copies = CopyCache::in_dir(dir.path().join("cache")).unwrap();
        let resolve_kvm = || resolve(&modules, "kvm", "6.1.0", Some(&copies)).unwrap();

        let [first] = &resolve_kvm()[..] else {
            panic!("one module")
        };
        assert!(matches!(&first.contents, Contents::Image(image) if *image == module));
        assert!(first.info.params.is_empty());

        let copy = module_elf(
            "vermagic=6.1.0 SMP\0depends=\0parm=nested:int\0",
            dir.path(),
        );
        copies.put(&module, &copy, dir.path());
        let [cached] = &resolve_kvm()[..] else {
            panic!("one module")
        };
        assert!(matches!(&cached.contents, Contents::UnsignedCopy(found) if *found == copy));
        assert_eq!(cached.info.params, ["nested"], "modinfo from the copy");

        // Issue 22: a copy cut short in the cache is not used but made again.
        let cached_copy = fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "ko"))
            .unwrap();
        fs::write(&cached_copy, &copy[..copy.len() / 2]).unwrap();
        let [decompressed] = &resolve_kvm()[..] else {
            panic!("one module")
        };
        assert!(matches!(&decompressed.contents, Contents::Image(image) if *image == module));
        assert!(!cached_copy.exists(), "the damaged copy is removed");

        let rebuilt = module_elf("vermagic=6.1.0 SMP\0depends=\0\0", dir.path());
        fs::write(modules.join("kernel/kvm.ko"), &rebuilt).unwrap();
        let [fresh] = &resolve_kvm()[..] else {
            panic!("one module")
        };
        assert!(matches!(&fresh.contents, Contents::Image(image) if *image == rebuilt));
    }

    #[test]
    fn index_prefers_updates_and_knows_builtins() {
        let dir = std::env::temp_dir().join(format!("nestfault-modidx-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kernel/arch/x86/kvm")).unwrap();
        fs::create_dir_all(dir.join("updates")).unwrap();
        fs::write(dir.join("kernel/arch/x86/kvm/kvm.ko.zst"), b"").unwrap();
        fs::write(dir.join("updates/kvm.ko"), b"").unwrap();
        fs::write(
            dir.join("modules.builtin"),
            "kernel/virt/lib/irqbypass.ko\n",
        )
        .unwrap();
        let index = ModuleIndex::scan(&dir).unwrap();
        assert_eq!(index.files["kvm"].0, dir.join("updates/kvm.ko"));
        assert!(index.is_builtin("irqbypass"));
        assert!(!index.is_builtin("kvm"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
