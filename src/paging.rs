//! One 4-level page-table builder for the three formats nestfault needs: L1's and L2's own x86-64
//! tables, AMD NPT and Intel EPT. Only 4 KiB mappings: the images are a few MiB, and 4 KiB leaves
//! give every page its own nested-table entry to break.
//!
//! A fault is an edit of a built table, addressed by what it breaks: [`PageTable::set_leaf`] on the
//! data page's GPA, or on the GPA of the page-table page that [`PageTable::leaf_table`] names.

use thiserror::Error;

pub const PAGE_SIZE: u64 = 4096;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The entry formats (Intel SDM vol. 3 4.5 and 29.3.2; AMD APM vol. 2 5.3 and 15.25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// x86-64 4-level paging: P, R/W in bit 1. Used for L1's and L2's own tables (CPL0 only).
    X86_64,
    /// AMD nested paging: the x86-64 format, and every entry has U=1 because the walk is a user access.
    Npt,
    /// Intel EPT: R, W, X in bits 2:0, memory type WB in bits 5:3 of leaves.
    Ept,
}

/// What a mapping allows. Reads are always allowed (nothing here makes a page write-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
}

impl Perms {
    pub const RWX: Perms = Perms { write: true };
    pub const READ_EXEC: Perms = Perms { write: false };
}

mod bits {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const EPT_READ: u64 = 1 << 0;
    pub const EPT_WRITE: u64 = 1 << 1;
    pub const EPT_EXEC: u64 = 1 << 2;
    pub const EPT_MEMTYPE_WB: u64 = 6 << 3;
}

impl Format {
    fn entry(self, address: u64, perms: Perms, leaf: bool) -> u64 {
        use bits::*;
        let write = |bit| if perms.write { bit } else { 0 };
        let flags = match self {
            Format::X86_64 => PRESENT | write(WRITABLE),
            Format::Npt => PRESENT | USER | write(WRITABLE),
            Format::Ept if leaf => EPT_READ | EPT_EXEC | write(EPT_WRITE) | EPT_MEMTYPE_WB,
            Format::Ept => EPT_READ | EPT_EXEC | write(EPT_WRITE),
        };
        (address & ADDRESS_MASK) | flags
    }

    fn is_present(self, entry: u64) -> bool {
        match self {
            Format::X86_64 | Format::Npt => entry & bits::PRESENT != 0,
            Format::Ept => entry & (bits::EPT_READ | bits::EPT_WRITE | bits::EPT_EXEC) != 0,
        }
    }

    #[cfg(test)]
    fn perms(self, entry: u64) -> Perms {
        let write_bit = match self {
            Format::X86_64 | Format::Npt => bits::WRITABLE,
            Format::Ept => bits::EPT_WRITE,
        };
        Perms {
            write: entry & write_bit != 0,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("guest memory exhausted: no page left for {what}")]
    OutOfPages { what: &'static str },
    #[error("{what} at {address:#x} (+{len:#x}) is outside guest memory ({size:#x} bytes)")]
    OutOfRange {
        what: &'static str,
        address: u64,
        len: u64,
        size: u64,
    },
    #[error("{address:#x} is already mapped in a {format:?} table")]
    AlreadyMapped { format: Format, address: u64 },
    #[error("{address:#x} is not mapped in a {format:?} table")]
    NotMapped { format: Format, address: u64 },
}

/// L1's physical memory as a byte image, with a bump allocator for table pages. Built in full
/// before the VM exists, then copied into guest memory in one go.
pub struct PhysImage {
    bytes: Vec<u8>,
    next_free: u64,
}

impl PhysImage {
    /// `size` bytes of zeroed memory; pages for tables and data come from `[pool_start, size)`.
    pub fn new(size: u64, pool_start: u64) -> Self {
        Self {
            bytes: vec![0; size as usize],
            next_free: pool_start,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A zeroed, page-aligned page from the pool.
    pub fn alloc_page(&mut self, what: &'static str) -> Result<u64, LayoutError> {
        let page = self.next_free;
        if page + PAGE_SIZE > self.size() {
            return Err(LayoutError::OutOfPages { what });
        }
        self.next_free += PAGE_SIZE;
        Ok(page)
    }

    /// Skips pool pages up to the next multiple of `align`, so that the next pages share no
    /// prefetch group or cache line with earlier ones.
    pub fn align_pool(&mut self, align: u64) {
        self.next_free = self.next_free.next_multiple_of(align);
    }

    fn range(
        &self,
        what: &'static str,
        address: u64,
        len: u64,
    ) -> Result<std::ops::Range<usize>, LayoutError> {
        match address.checked_add(len) {
            Some(end) if end <= self.size() => Ok(address as usize..end as usize),
            _ => Err(LayoutError::OutOfRange {
                what,
                address,
                len,
                size: self.size(),
            }),
        }
    }

    pub fn write(
        &mut self,
        what: &'static str,
        address: u64,
        data: &[u8],
    ) -> Result<(), LayoutError> {
        let range = self.range(what, address, data.len() as u64)?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    pub fn read(&self, what: &'static str, address: u64, len: u64) -> Result<&[u8], LayoutError> {
        Ok(&self.bytes[self.range(what, address, len)?])
    }

    pub fn write_u64(
        &mut self,
        what: &'static str,
        address: u64,
        value: u64,
    ) -> Result<(), LayoutError> {
        self.write(what, address, &value.to_le_bytes())
    }

    pub fn read_u64(&self, what: &'static str, address: u64) -> Result<u64, LayoutError> {
        let bytes = self.read(what, address, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }
}

/// A 4-level table rooted at `root` in a [`PhysImage`].
#[derive(Clone, Copy, Debug)]
pub struct PageTable {
    pub format: Format,
    pub root: u64,
}

const LEVELS: u32 = 4;

fn index(address: u64, level: u32) -> u64 {
    (address >> (12 + 9 * (level - 1))) & 0x1ff
}

impl PageTable {
    pub fn new(format: Format, image: &mut PhysImage) -> Result<Self, LayoutError> {
        Ok(Self {
            format,
            root: image.alloc_page("a page-table root")?,
        })
    }

    /// Maps the 4 KiB page at `address` to `target`, allocating intermediate tables as needed.
    pub fn map(
        &self,
        image: &mut PhysImage,
        address: u64,
        target: u64,
        perms: Perms,
    ) -> Result<(), LayoutError> {
        let mut table = self.root;
        for level in (2..=LEVELS).rev() {
            let slot = table + 8 * index(address, level);
            let entry = image.read_u64("a page-table entry", slot)?;
            table = if self.format.is_present(entry) {
                entry & ADDRESS_MASK
            } else {
                let next = image.alloc_page("a page table")?;
                image.write_u64(
                    "a page-table entry",
                    slot,
                    self.format.entry(next, Perms::RWX, false),
                )?;
                next
            };
        }
        let slot = table + 8 * index(address, 1);
        if self
            .format
            .is_present(image.read_u64("a page-table entry", slot)?)
        {
            return Err(LayoutError::AlreadyMapped {
                format: self.format,
                address,
            });
        }
        image.write_u64(
            "a page-table entry",
            slot,
            self.format.entry(target, perms, true),
        )
    }

    /// Identity-maps `[start, end)` read-write(-execute).
    pub fn identity_map(
        &self,
        image: &mut PhysImage,
        start: u64,
        end: u64,
    ) -> Result<(), LayoutError> {
        (start..end)
            .step_by(PAGE_SIZE as usize)
            .try_for_each(|page| self.map(image, page, page, Perms::RWX))
    }

    /// The GPA of the leaf entry that maps `address`.
    pub fn leaf_entry(&self, image: &PhysImage, address: u64) -> Result<u64, LayoutError> {
        self.entry(image, address, 1)
    }

    /// The GPA of the entry at `level` (1: page table, 2: page directory, ...) on the walk of
    /// `address`; the levels above it must be present.
    pub fn entry(&self, image: &PhysImage, address: u64, level: u32) -> Result<u64, LayoutError> {
        let mut table = self.root;
        for upper in (level + 1..=LEVELS).rev() {
            let entry = image.read_u64("a page-table entry", table + 8 * index(address, upper))?;
            if !self.format.is_present(entry) {
                return Err(LayoutError::NotMapped {
                    format: self.format,
                    address,
                });
            }
            table = entry & ADDRESS_MASK;
        }
        Ok(table + 8 * index(address, level))
    }

    /// Rewrites the leaf entry of `address` with new permissions, or clears it (`None`: unmapped).
    pub fn set_leaf(
        &self,
        image: &mut PhysImage,
        address: u64,
        perms: Option<Perms>,
    ) -> Result<(), LayoutError> {
        let slot = self.leaf_entry(image, address)?;
        let entry = image.read_u64("a page-table entry", slot)?;
        let new = perms.map_or(0, |perms| self.format.entry(entry, perms, true));
        image.write_u64("a page-table entry", slot, new)
    }

    /// Where `address` leads and with what permissions, or `None` if a level is not present:
    /// the walk the tests check the builder with.
    #[cfg(test)]
    pub fn translate(
        &self,
        image: &PhysImage,
        address: u64,
    ) -> Result<Option<(u64, Perms)>, LayoutError> {
        let leaf = match self.leaf_entry(image, address) {
            Ok(slot) => image.read_u64("a page-table entry", slot)?,
            Err(LayoutError::NotMapped { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        if !self.format.is_present(leaf) {
            return Ok(None);
        }
        Ok(Some((
            (leaf & ADDRESS_MASK) | (address & (PAGE_SIZE - 1)),
            self.format.perms(leaf),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn image() -> PhysImage {
        PhysImage::new(4 * MIB, 2 * MIB)
    }

    #[test]
    fn entries_have_each_formats_bits() {
        let address = 0x12_3000;
        assert_eq!(
            Format::X86_64.entry(address, Perms::RWX, true),
            address | 0b011
        );
        assert_eq!(
            Format::Npt.entry(address, Perms::RWX, true),
            address | 0b111
        );
        assert_eq!(
            Format::Npt.entry(address, Perms::READ_EXEC, true),
            address | 0b101
        );
        assert_eq!(Format::Ept.entry(address, Perms::RWX, true), address | 0x37);
        assert_eq!(
            Format::Ept.entry(address, Perms::READ_EXEC, true),
            address | 0x35
        );
        assert_eq!(Format::Ept.entry(address, Perms::RWX, false), address | 0x7);
    }

    #[test]
    fn every_format_maps_and_translates() {
        for format in [Format::X86_64, Format::Npt, Format::Ept] {
            let mut image = image();
            let table = PageTable::new(format, &mut image).unwrap();
            table
                .map(&mut image, 0x4000_0000, 0x30_0000, Perms::RWX)
                .unwrap();
            table.identity_map(&mut image, 0, 0x2000).unwrap();
            assert_eq!(
                table.translate(&image, 0x4000_0123).unwrap(),
                Some((0x30_0123, Perms::RWX))
            );
            assert_eq!(
                table.translate(&image, 0x1008).unwrap(),
                Some((0x1008, Perms::RWX))
            );
            assert_eq!(table.translate(&image, 0x2000).unwrap(), None);
            assert_eq!(table.translate(&image, 0x8000_0000).unwrap(), None);
        }
    }

    #[test]
    fn four_levels_are_walked_with_the_right_indices() {
        let mut image = image();
        let table = PageTable::new(Format::X86_64, &mut image).unwrap();
        // PML4 1, PDPT 2, PD 3, PT 4.
        let address = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12);
        table.map(&mut image, address, 0x5000, Perms::RWX).unwrap();
        let pdpt = image.read_u64("", table.root + 8).unwrap() & ADDRESS_MASK;
        let pd = image.read_u64("", pdpt + 16).unwrap() & ADDRESS_MASK;
        let pt = image.read_u64("", pd + 24).unwrap() & ADDRESS_MASK;
        assert_eq!(table.leaf_entry(&image, address).unwrap(), pt + 32);
        assert_eq!(table.entry(&image, address, 2).unwrap(), pd + 24);
        assert_eq!(table.entry(&image, address, 4).unwrap(), table.root + 8);
        assert_eq!(image.read_u64("", pt + 32).unwrap(), 0x5003);
    }

    #[test]
    fn faults_are_leaf_edits() {
        let mut image = image();
        let table = PageTable::new(Format::Ept, &mut image).unwrap();
        table
            .identity_map(&mut image, 0x10_0000, 0x10_4000)
            .unwrap();
        table
            .set_leaf(&mut image, 0x10_1000, Some(Perms::READ_EXEC))
            .unwrap();
        table.set_leaf(&mut image, 0x10_2000, None).unwrap();
        assert_eq!(
            table.translate(&image, 0x10_1000).unwrap(),
            Some((0x10_1000, Perms::READ_EXEC))
        );
        assert_eq!(table.translate(&image, 0x10_2000).unwrap(), None);
        assert_eq!(
            table.translate(&image, 0x10_3000).unwrap(),
            Some((0x10_3000, Perms::RWX))
        );
    }

    #[test]
    fn double_maps_and_exhaustion_are_errors() {
        let mut image = PhysImage::new(4 * MIB, 4 * MIB - 3 * PAGE_SIZE);
        let table = PageTable::new(Format::Npt, &mut image).unwrap();
        table.map(&mut image, 0, 0, Perms::RWX).unwrap_err();
        let mut image = image_with_table();
        let (table, image) = (&image.0, &mut image.1);
        assert!(matches!(
            table.map(image, 0, 0, Perms::RWX),
            Err(LayoutError::AlreadyMapped { .. })
        ));
        assert!(matches!(
            image.write("x", 4 * MIB - 4, &[0; 8]),
            Err(LayoutError::OutOfRange { .. })
        ));
    }

    fn image_with_table() -> (PageTable, PhysImage) {
        let mut image = image();
        let table = PageTable::new(Format::Npt, &mut image).unwrap();
        table.map(&mut image, 0, 0, Perms::RWX).unwrap();
        (table, image)
    }
}
