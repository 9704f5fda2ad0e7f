//! Loads the L1 stub: an ELF64 x86-64 executable linked at a fixed address (guest/stub/link.ld).
//! Only what a static, relocation-free image needs: the header and its PT_LOAD segments.

use std::ops::Range;

use thiserror::Error;

use crate::paging::PhysImage;

/// The stub, built by build.rs for x86_64-unknown-none.
pub const L1_STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/l1-stub.elf"));

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF64 little-endian x86-64 executable")]
    NotAnExecutable,
    #[error("truncated at offset {0:#x}")]
    Truncated(u64),
    #[error("segment {start:#x}..{end:#x} lies outside the stub's region {region:#x?}")]
    OutOfRegion {
        start: u64,
        end: u64,
        region: Range<u64>,
    },
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

fn field<const N: usize>(bytes: &[u8], offset: u64) -> Result<[u8; N], ElfError> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(N)?))
        .map(|slice| slice.try_into().expect("N bytes"))
        .ok_or(ElfError::Truncated(offset))
}

fn u16_at(bytes: &[u8], offset: u64) -> Result<u16, ElfError> {
    field(bytes, offset).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], offset: u64) -> Result<u32, ElfError> {
    field(bytes, offset).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], offset: u64) -> Result<u64, ElfError> {
    field(bytes, offset).map(u64::from_le_bytes)
}

/// Copies the PT_LOAD segments of `elf` into `memory` (each must lie in `region`, zero-filling
/// their .bss part) and returns the entry point.
pub fn load(elf: &[u8], memory: &mut PhysImage, region: Range<u64>) -> Result<u64, ElfError> {
    let ident = field::<6>(elf, 0)?;
    if ident != [0x7f, b'E', b'L', b'F', 2, 1]
        || u16_at(elf, 16)? != ET_EXEC
        || u16_at(elf, 18)? != EM_X86_64
    {
        return Err(ElfError::NotAnExecutable);
    }
    let entry = u64_at(elf, 24)?;
    let (phoff, phentsize, phnum) = (u64_at(elf, 32)?, u16_at(elf, 54)?, u16_at(elf, 56)?);
    for i in 0..u64::from(phnum) {
        let header = phoff + i * u64::from(phentsize);
        if u32_at(elf, header)? != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (
            u64_at(elf, header + 8)?,
            u64_at(elf, header + 24)?,
            u64_at(elf, header + 32)?,
            u64_at(elf, header + 40)?,
        );
        let end = paddr
            .checked_add(memsz)
            .filter(|&end| paddr >= region.start && end <= region.end && filesz <= memsz);
        let Some(end) = end else {
            return Err(ElfError::OutOfRegion {
                start: paddr,
                end: paddr.saturating_add(memsz),
                region,
            });
        };
        let contents = usize::try_from(offset)
            .ok()
            .and_then(|start| elf.get(start..start.checked_add(usize::try_from(filesz).ok()?)?))
            .ok_or(ElfError::Truncated(offset))?;
        let out_of_region = |_| ElfError::OutOfRegion {
            start: paddr,
            end,
            region: region.clone(),
        };
        memory
            .write("the stub", paddr, contents)
            .map_err(out_of_region)?;
        memory
            .write(
                "the stub",
                paddr + filesz,
                &vec![0; (memsz - filesz) as usize],
            )
            .map_err(out_of_region)?;
    }
    Ok(entry)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A minimal executable: one PT_LOAD of `hlt` at 0x10_0000, entry there.
    pub fn tiny_stub() -> Vec<u8> {
        let mut elf = vec![0u8; 0x80];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        elf[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        elf[32..40].copy_from_slice(&0x40u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        elf[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&1u64.to_le_bytes());
        elf[ph + 40..ph + 48].copy_from_slice(&0x10u64.to_le_bytes());
        elf[0x78] = 0xf4;
        elf
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
        assert_eq!(load(b"MZ", &mut memory, 0..1), Err(ElfError::Truncated(0)));
        assert_eq!(
            load(&[0; 64], &mut memory, 0..1),
            Err(ElfError::NotAnExecutable)
        );
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
            Err(ElfError::Truncated(_))
        ));
    }
}
