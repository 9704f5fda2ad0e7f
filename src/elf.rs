//! Just enough of ELF64 (little endian) for nestfault's four uses: loading the L1 stub's
//! segments, reading a kernel module's `.modinfo` section, finding an executable's
//! interpreter and needed libraries, and reading a vmlinux's notes (its PVH entry point). Every read is bounds-checked: the input may be a user's file.

use std::ops::Range;

use thiserror::Error;

use crate::paging::PhysImage;

/// The stub, built by build.rs for x86_64-unknown-none.
pub const L1_STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/l1-stub.elf"));

const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
pub(crate) const EM_X86_64: u16 = 62;

pub(crate) struct Elf<'a> {
    data: &'a [u8],
    pub(crate) machine: u16,
}

/// A PT_LOAD segment: where it goes, its bytes from the file, and its size in memory (the rest
/// zero).
pub(crate) struct LoadSegment<'a> {
    pub(crate) paddr: u64,
    pub(crate) contents: &'a [u8],
    pub(crate) memsz: u64,
}

struct ProgramHeader {
    kind: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

impl<'a> Elf<'a> {
    pub(crate) fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.get(..4) != Some(b"\x7fELF") {
            return Err("not an ELF file".into());
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        let machine = read_u16(data, 18).ok_or("truncated ELF header")?;
        Ok(Elf { data, machine })
    }

    fn field_u16(&self, at: usize) -> Result<usize, String> {
        read_u16(self.data, at)
            .map(usize::from)
            .ok_or_else(|| "truncated ELF header".into())
    }

    fn field_u64(&self, at: usize) -> Result<u64, String> {
        read_u64(self.data, at).ok_or_else(|| "truncated ELF header".into())
    }

    fn slice(&self, offset: u64, len: u64) -> Result<&'a [u8], String> {
        let start = usize::try_from(offset).map_err(|_| "offset out of range")?;
        let len = usize::try_from(len).map_err(|_| "size out of range")?;
        start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| "a header points past the end of the file".into())
    }

    /// The contents of the section called `name`, if there is one.
    pub(crate) fn section(&self, name: &str) -> Result<Option<&'a [u8]>, String> {
        let shoff = self.field_u64(40)?;
        let entsize = self.field_u16(58)?;
        let count = self.field_u16(60)?;
        let names_index = self.field_u16(62)?;
        if shoff == 0 || count == 0 {
            return Ok(None);
        }
        let header = |index: usize| -> Result<&'a [u8], String> {
            self.slice(
                shoff.saturating_add((index * entsize) as u64),
                entsize.max(64) as u64,
            )
        };
        let names = header(names_index)?;
        let names = self.slice(
            read_u64(names, 24).unwrap_or(0),
            read_u64(names, 32).unwrap_or(0),
        )?;
        for index in 0..count {
            let sh = header(index)?;
            let name_offset = read_u32(sh, 0).unwrap_or(0) as usize;
            if c_str_at(names, name_offset) == Some(name.as_bytes()) {
                let (offset, size) = (read_u64(sh, 24), read_u64(sh, 32));
                return self.slice(offset.unwrap_or(0), size.unwrap_or(0)).map(Some);
            }
        }
        Ok(None)
    }

    fn program_headers(&self) -> Result<Vec<ProgramHeader>, String> {
        let phoff = self.field_u64(32)?;
        let entsize = self.field_u16(54)?;
        let count = self.field_u16(56)?;
        (0..count)
            .map(|index| {
                let ph = self.slice(
                    phoff.saturating_add((index * entsize) as u64),
                    entsize.max(56) as u64,
                )?;
                Ok(ProgramHeader {
                    kind: read_u32(ph, 0).unwrap_or(0),
                    offset: read_u64(ph, 8).unwrap_or(0),
                    vaddr: read_u64(ph, 16).unwrap_or(0),
                    paddr: read_u64(ph, 24).unwrap_or(0),
                    filesz: read_u64(ph, 32).unwrap_or(0),
                    memsz: read_u64(ph, 40).unwrap_or(0),
                })
            })
            .collect()
    }

    /// The entry point (e_entry).
    pub(crate) fn entry(&self) -> Result<u64, String> {
        self.field_u64(24)
    }

    /// The PT_LOAD segments.
    pub(crate) fn loadable_segments(&self) -> Result<Vec<LoadSegment<'a>>, String> {
        self.program_headers()?
            .into_iter()
            .filter(|ph| ph.kind == PT_LOAD)
            .map(|ph| {
                if ph.filesz > ph.memsz {
                    return Err("a segment is bigger in the file than in memory".into());
                }
                Ok(LoadSegment {
                    paddr: ph.paddr,
                    contents: self.slice(ph.offset, ph.filesz)?,
                    memsz: ph.memsz,
                })
            })
            .collect()
    }

    /// The program interpreter (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2;
    /// None for a static executable.
    pub(crate) fn interpreter(&self) -> Result<Option<String>, String> {
        for ph in self.program_headers()? {
            if ph.kind == PT_INTERP {
                let bytes = self.slice(ph.offset, ph.filesz)?;
                let path = c_str_at(bytes, 0).ok_or("unterminated PT_INTERP")?;
                return Ok(Some(String::from_utf8_lossy(path).into_owned()));
            }
        }
        Ok(None)
    }

    /// Whether a PT_NOTE segment holds a note of this owner (`name`, without its NUL) and type.
    pub(crate) fn has_note(&self, name: &[u8], kind: u32) -> Result<bool, String> {
        for ph in self.program_headers()? {
            if ph.kind != PT_NOTE {
                continue;
            }
            let mut notes = self.slice(ph.offset, ph.filesz)?;
            // Each note: namesz, descsz, type, then the name and the descriptor, each padded to 4.
            while let (Some(namesz), Some(descsz), Some(note_kind)) =
                (read_u32(notes, 0), read_u32(notes, 4), read_u32(notes, 8))
            {
                let padded = |size: u32| (size as usize).next_multiple_of(4);
                let owner = notes
                    .get(12..12 + namesz as usize)
                    .ok_or("truncated note")?;
                if note_kind == kind && owner.strip_suffix(b"\0") == Some(name) {
                    return Ok(true);
                }
                let next = 12 + padded(namesz) + padded(descsz);
                notes = notes.get(next..).unwrap_or_default();
            }
        }
        Ok(false)
    }

    /// The DT_NEEDED entries of the dynamic section, in order.
    pub(crate) fn needed_libraries(&self) -> Result<Vec<String>, String> {
        let headers = self.program_headers()?;
        let Some(dynamic) = headers.iter().find(|ph| ph.kind == PT_DYNAMIC) else {
            return Ok(Vec::new());
        };
        let entries = self.slice(dynamic.offset, dynamic.filesz)?;
        let mut needed_offsets = Vec::new();
        let mut strtab_vaddr = None;
        for entry in entries.chunks_exact(16) {
            let tag = read_u64(entry, 0).unwrap_or(DT_NULL);
            let value = read_u64(entry, 8).unwrap_or(0);
            match tag {
                DT_NULL => break,
                DT_NEEDED => needed_offsets.push(value),
                DT_STRTAB => strtab_vaddr = Some(value),
                _ => {}
            }
        }
        if needed_offsets.is_empty() {
            return Ok(Vec::new());
        }
        // DT_STRTAB is a virtual address: find the loaded segment holding it.
        let vaddr = strtab_vaddr.ok_or("dynamic section without DT_STRTAB")?;
        let segment = headers
            .iter()
            .find(|ph| {
                ph.kind == PT_LOAD
                    && (ph.vaddr..ph.vaddr.saturating_add(ph.filesz)).contains(&vaddr)
            })
            .ok_or("DT_STRTAB lies outside every loaded segment")?;
        let strtab = self.slice(
            segment.offset.saturating_add(vaddr - segment.vaddr),
            segment.filesz - (vaddr - segment.vaddr),
        )?;
        needed_offsets
            .into_iter()
            .map(|offset| {
                let name = usize::try_from(offset)
                    .ok()
                    .and_then(|offset| c_str_at(strtab, offset))
                    .ok_or("DT_NEEDED points outside the string table")?;
                Ok(String::from_utf8_lossy(name).into_owned())
            })
            .collect()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF64 little-endian x86-64 executable: {0}")]
    NotAnExecutable(String),
    #[error("segment {start:#x}..{end:#x} lies outside the stub's region {region:#x?}")]
    OutOfRegion {
        start: u64,
        end: u64,
        region: Range<u64>,
    },
}

/// Loads the L1 stub, a static executable linked at a fixed address (guest/stub/link.ld): copies
/// its PT_LOAD segments to their physical addresses in `memory` (each must lie in `region`,
/// zero-filling their .bss part) and returns the entry point.
pub fn load(image: &[u8], memory: &mut PhysImage, region: Range<u64>) -> Result<u64, ElfError> {
    let elf = Elf::parse(image).map_err(ElfError::NotAnExecutable)?;
    let kind = elf.field_u16(16).map_err(ElfError::NotAnExecutable)?;
    if kind != usize::from(ET_EXEC) || elf.machine != EM_X86_64 {
        return Err(ElfError::NotAnExecutable(format!(
            "type {kind}, machine {}",
            elf.machine
        )));
    }
    let entry = elf.entry().map_err(ElfError::NotAnExecutable)?;
    for segment in elf.loadable_segments().map_err(ElfError::NotAnExecutable)? {
        let out_of_region = || ElfError::OutOfRegion {
            start: segment.paddr,
            end: segment.paddr.saturating_add(segment.memsz),
            region: region.clone(),
        };
        let end = segment
            .paddr
            .checked_add(segment.memsz)
            .ok_or_else(out_of_region)?;
        if segment.paddr < region.start || end > region.end {
            return Err(out_of_region());
        }
        memory
            .write("the stub", segment.paddr, segment.contents)
            .map_err(|_| out_of_region())?;
        let bss = vec![0; (segment.memsz - segment.contents.len() as u64) as usize];
        memory
            .write(
                "the stub",
                segment.paddr + segment.contents.len() as u64,
                &bss,
            )
            .map_err(|_| out_of_region())?;
    }
    Ok(entry)
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// The NUL-terminated string starting at `at`, without its terminator.
fn c_str_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let rest = data.get(at..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(Elf::parse(b"MZ\x90\x00").is_err());
        assert!(Elf::parse(b"\x7fELF\x01\x01").is_err());
    }

    #[test]
    fn reads_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(exe).unwrap();
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.machine, EM_X86_64);
        // Built for the glibc host target, the test binary is dynamic.
        let interp = elf.interpreter().unwrap().expect("PT_INTERP");
        assert!(interp.contains("ld-linux"), "{interp}");
        let needed = elf.needed_libraries().unwrap();
        assert!(
            needed.iter().any(|lib| lib.starts_with("libc.so")),
            "{needed:?}"
        );
        assert!(elf.section(".text").unwrap().is_some());
        assert!(elf.section(".no-such-section").unwrap().is_none());
    }

    /// An x86-64 executable with these PT_LOAD segments, (physical address, contents, size in
    /// memory) each, virtual address = physical.
    pub fn executable(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let headers_end = 0x40 + 56 * segments.len();
        let mut elf = vec![0u8; headers_end];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[24..32].copy_from_slice(&entry.to_le_bytes());
        elf[32..40].copy_from_slice(&0x40u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (index, (paddr, contents, memsz)) in segments.iter().enumerate() {
            let (ph, offset) = (0x40 + 56 * index, elf.len() as u64);
            elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            elf[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 32..ph + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
            elf[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            elf.extend_from_slice(contents);
        }
        elf
    }

    /// A minimal executable: one PT_LOAD of `hlt` at 0x10_0000, entry there.
    pub fn tiny_stub() -> Vec<u8> {
        executable(0x10_0000, &[(0x10_0000, &[0xf4], 0x10)])
    }

    /// An ELF with one PT_NOTE segment holding these (owner, type) notes, each with a 4-byte
    /// descriptor.
    pub fn with_notes(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut elf = tiny_stub();
        elf.truncate(0x78);
        let start = elf.len();
        for (owner, kind) in notes {
            let name_size = owner.len() + 1;
            for word in [name_size as u32, 4, *kind] {
                elf.extend_from_slice(&word.to_le_bytes());
            }
            elf.extend_from_slice(owner);
            let padded_end = elf.len() + name_size.next_multiple_of(4) - owner.len();
            elf.resize(padded_end, 0);
            elf.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        }
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&(start as u64).to_le_bytes());
        let size = (elf.len() - start) as u64;
        elf[ph + 32..ph + 40].copy_from_slice(&size.to_le_bytes());
        elf
    }

    #[test]
    fn finds_notes_by_owner_and_type() {
        let elf = with_notes(&[(b"GNU", 3), (b"Xen", 18)]);
        let elf = Elf::parse(&elf).unwrap();
        assert!(elf.has_note(b"Xen", 18).unwrap());
        assert!(elf.has_note(b"GNU", 3).unwrap());
        assert!(!elf.has_note(b"Xen", 17).unwrap());
        assert!(!elf.has_note(b"Xe", 18).unwrap());
        assert!(!Elf::parse(&tiny_stub())
            .unwrap()
            .has_note(b"Xen", 18)
            .unwrap());
    }

    fn memory() -> PhysImage {
        PhysImage::new(4 << 20, 2 << 20)
    }

    #[test]
    fn loads_segments_and_zero_fills() {
        let mut memory = memory();
        memory.write("", 0x10_0001, &[0xaa; 4]).unwrap();
        assert_eq!(
            load(&tiny_stub(), &mut memory, 0x10_0000..0x20_0000),
            Ok(0x10_0000)
        );
        assert_eq!(memory.read("", 0x10_0000, 5).unwrap(), &[0xf4, 0, 0, 0, 0]);
    }

    #[test]
    fn the_real_stub_loads() {
        let mut memory = memory();
        assert_eq!(
            load(L1_STUB, &mut memory, 0x10_0000..0x20_0000),
            Ok(0x10_0000)
        );
    }

    #[test]
    fn bad_images_are_rejected() {
        let mut memory = memory();
        for garbage in [&b"MZ"[..], &[0; 64]] {
            let error = load(garbage, &mut memory, 0..1).unwrap_err();
            assert!(matches!(error, ElfError::NotAnExecutable(_)), "{error}");
        }
        let error = load(&tiny_stub(), &mut memory, 0x20_0000..0x30_0000).unwrap_err();
        assert!(
            matches!(
                error,
                ElfError::OutOfRegion {
                    start: 0x10_0000,
                    ..
                }
            ),
            "{error}"
        );
        let mut truncated = tiny_stub();
        truncated.truncate(0x60);
        assert!(matches!(
            load(&truncated, &mut memory, 0x10_0000..0x20_0000),
            Err(ElfError::NotAnExecutable(_))
        ));
    }
}
