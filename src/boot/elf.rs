//! Just enough of ELF64 (little endian) to read a kernel module's `.modinfo`
//! section and an executable's interpreter and needed libraries. Every read is
//! bounds-checked: the input is a user's file.

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
pub(crate) const EM_X86_64: u16 = 62;

pub(crate) struct Elf<'a> {
    data: &'a [u8],
    pub(crate) machine: u16,
}

struct ProgramHeader {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
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
                    filesz: read_u64(ph, 32).unwrap_or(0),
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
mod tests {
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
}
