//! One page-table builder for the formats nestfault needs: L1's and L2's own tables (x86-64 4- and
//! 5-level, and L2's PAE and 32-bit ones), AMD NPT and Intel EPT; 4 KiB leaves, and 2 MiB / 1 GiB
//! ones where a scenario asks. A format says its depth, its entry size and its index width.
//!
//! A fault is an edit of a built table, addressed by what it breaks: [`PageTable::set_leaf`] on the
//! GPA of the data page, or of a page-table page that [`PageTable::walk`] names.

use std::collections::BTreeMap;
use std::ops::Range;

use thiserror::Error;

use crate::scenario::LeafSize;

pub const PAGE_SIZE: u64 = 4096;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The entry formats (Intel SDM vol. 3 4.3-4.5 and 29.3.2; AMD APM vol. 2 5.2-5.3 and 15.25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// x86-64 4-level paging: P, R/W in bit 1. Used for L1's and L2's own tables (CPL0 only).
    X86_64,
    /// x86-64 5-level paging (CR4.LA57): the same entries, a PML5 above the PML4.
    La57,
    /// PAE paging: 8-byte entries, three levels; the root (the PDPT) has four entries, which
    /// may carry no R/W, U/S, A, D or NX bit (SDM 4.4.1: bits 2:1 and 8:5 are reserved).
    Pae,
    /// 32-bit paging: 4-byte entries, two levels of 1024, no NX bit.
    Paging32,
    /// AMD nested paging: the x86-64 format; the nested walk is a user access, so U=1 unless a
    /// scenario takes it away.
    Npt,
    /// Intel EPT: R, W, X in bits 2:0, memory type WB in bits 5:3 of leaves.
    Ept,
}

/// What a mapping allows. The x86-64 formats cannot express "not readable": `read` only matters
/// to EPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// NPT's U/S bit; ignored by EPT and by L1's and L2's own (supervisor) tables.
    pub user: bool,
}

impl Perms {
    pub const RWX: Perms = Perms {
        read: true,
        write: true,
        exec: true,
        user: true,
    };
    pub const READ_EXEC: Perms = Perms {
        write: false,
        ..Perms::RWX
    };
    pub const READ_WRITE: Perms = Perms {
        exec: false,
        ..Perms::RWX
    };
    pub const SUPERVISOR: Perms = Perms {
        user: false,
        ..Perms::RWX
    };
    /// EPT's write-only combination, which the SDM calls a misconfiguration.
    pub const WRITE_ONLY: Perms = Perms {
        read: false,
        exec: false,
        ..Perms::RWX
    };
}

/// How a fault rewrites a leaf: new permissions (or `None`: not present) and raw bits to set on
/// top (a reserved bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafEdit {
    pub perms: Option<Perms>,
    pub extra_bits: u64,
}

mod bits {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    /// PS in a PDE/PDPTE; "this is a 2M/1G page" in EPT too (bit 7).
    pub const LARGE: u64 = 1 << 7;
    pub const NO_EXECUTE: u64 = 1 << 63;
    pub const EPT_READ: u64 = 1 << 0;
    pub const EPT_WRITE: u64 = 1 << 1;
    pub const EPT_EXEC: u64 = 1 << 2;
    pub const EPT_MEMTYPE_WB: u64 = 6 << 3;
}

/// Where an entry sits in a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKind {
    /// Points at the next table: a `level` above 1.
    Table { level: u32 },
    /// Maps a page: 4 KiB at level 1, large above.
    Leaf { level: u32 },
}

impl Format {
    fn entry(self, address: u64, perms: Perms, kind: EntryKind) -> u64 {
        use bits::*;
        let set = |on: bool, bit: u64| if on { bit } else { 0 };
        let (leaf, large) = match kind {
            EntryKind::Table { .. } => (false, false),
            EntryKind::Leaf { level } => (true, level > 1),
        };
        let flags = match self {
            Format::Pae if kind == (EntryKind::Table { level: 3 }) => PRESENT,
            Format::X86_64 | Format::La57 | Format::Pae => {
                PRESENT | set(perms.write, WRITABLE) | set(!perms.exec, NO_EXECUTE)
            }
            Format::Paging32 => PRESENT | set(perms.write, WRITABLE),
            Format::Npt => {
                PRESENT
                    | set(perms.write, WRITABLE)
                    | set(perms.user, USER)
                    | set(!perms.exec, NO_EXECUTE)
            }
            Format::Ept => {
                set(perms.read, EPT_READ)
                    | set(perms.write, EPT_WRITE)
                    | set(perms.exec, EPT_EXEC)
                    | set(leaf, EPT_MEMTYPE_WB)
            }
        };
        (address & ADDRESS_MASK) | flags | set(large, LARGE)
    }

    /// Table levels, root included.
    pub fn levels(self) -> u32 {
        match self {
            Format::Paging32 => 2,
            Format::Pae => 3,
            Format::X86_64 | Format::Npt | Format::Ept => 4,
            Format::La57 => 5,
        }
    }

    /// Bytes per entry.
    pub fn entry_bytes(self) -> u64 {
        match self {
            Format::Paging32 => 4,
            _ => 8,
        }
    }

    /// The index of `address`'s entry in its table at `level` (1: the page table).
    fn index(self, address: u64, level: u32) -> u64 {
        let bits = match self {
            Format::Paging32 => 10,
            _ => 9,
        };
        (address >> (12 + bits * (level - 1))) & ((1 << bits) - 1)
    }

    /// The GPA of `address`'s entry in `table` at `level`.
    fn slot(self, table: u64, address: u64, level: u32) -> u64 {
        table + self.entry_bytes() * self.index(address, level)
    }

    fn is_present(self, entry: u64) -> bool {
        match self {
            Format::X86_64 | Format::La57 | Format::Pae | Format::Paging32 | Format::Npt => {
                entry & bits::PRESENT != 0
            }
            Format::Ept => entry & (bits::EPT_READ | bits::EPT_WRITE | bits::EPT_EXEC) != 0,
        }
    }

    /// The permissions an entry grants, as [`Perms`] spells them (for tests' checks).
    #[cfg(test)]
    pub fn perms_of(self, entry: u64) -> Perms {
        use bits::*;
        match self {
            Format::X86_64 | Format::La57 | Format::Pae | Format::Paging32 | Format::Npt => Perms {
                read: true,
                write: entry & WRITABLE != 0,
                exec: entry & NO_EXECUTE == 0,
                // L1's and L2's own tables are supervisor tables whatever `user` says.
                user: self != Format::Npt || entry & USER != 0,
            },
            Format::Ept => Perms {
                read: entry & EPT_READ != 0,
                write: entry & EPT_WRITE != 0,
                exec: entry & EPT_EXEC != 0,
                user: true,
            },
        }
    }
}

impl LeafSize {
    /// The paging level whose entry maps a page of this size.
    pub fn level(self) -> u32 {
        match self {
            LeafSize::Size4K => 1,
            LeafSize::Size2M => 2,
            LeafSize::Size1G => 3,
        }
    }

    pub fn bytes(self) -> u64 {
        PAGE_SIZE << (9 * (self.level() - 1))
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

/// L1's physical memory as the pages written to it, with a bump allocator for table pages. Built
/// in full before the VM exists, then copied into guest memory in one go.
pub struct PhysImage {
    size: u64,
    /// The pages written so far, by guest-physical address; every other page is zero. Sparse
    /// because an image is a few dozen pages of 2 MiB, and a dense one cost each case a 2 MiB
    /// allocation and a scan for the pages to copy, under an emulated L0 several ms.
    pages: BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>,
    next_free: u64,
}

const ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

impl PhysImage {
    /// `size` bytes of zeroed memory; pages for tables and data come from `[pool_start, size)`.
    pub fn new(size: u64, pool_start: u64) -> Self {
        Self {
            size,
            pages: BTreeMap::new(),
            next_free: pool_start,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pages that are not known to be zero, as (guest-physical address, contents), in
    /// address order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pages.iter().map(|(&gpa, page)| (gpa, &page[..]))
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

    fn check_range(&self, what: &'static str, address: u64, len: u64) -> Result<(), LayoutError> {
        match address.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(LayoutError::OutOfRange {
                what,
                address,
                len,
                size: self.size(),
            }),
        }
    }

    /// `data` split at page boundaries, each piece with its page and its offset in that page.
    fn pieces(address: u64, data_len: u64) -> impl Iterator<Item = (u64, usize, Range<usize>)> {
        let mut done = 0;
        std::iter::from_fn(move || {
            (done < data_len).then(|| {
                let at = address + done;
                let (page, offset) = (at & !(PAGE_SIZE - 1), (at & (PAGE_SIZE - 1)) as usize);
                let len = (PAGE_SIZE - offset as u64).min(data_len - done);
                let piece = (page, offset, done as usize..(done + len) as usize);
                done += len;
                piece
            })
        })
    }

    pub fn write(
        &mut self,
        what: &'static str,
        address: u64,
        data: &[u8],
    ) -> Result<(), LayoutError> {
        self.check_range(what, address, data.len() as u64)?;
        for (page, offset, piece) in Self::pieces(address, data.len() as u64) {
            let piece = &data[piece];
            // Zeros over a page never written leave it zero, and absent.
            if !self.pages.contains_key(&page) && piece.iter().all(|&byte| byte == 0) {
                continue;
            }
            let contents = self
                .pages
                .entry(page)
                .or_insert_with(|| Box::new(ZERO_PAGE));
            contents[offset..offset + piece.len()].copy_from_slice(piece);
        }
        Ok(())
    }

    pub fn read(&self, what: &'static str, address: u64, len: u64) -> Result<Vec<u8>, LayoutError> {
        let mut bytes = vec![0; len as usize];
        self.read_into(what, address, &mut bytes)?;
        Ok(bytes)
    }

    /// Fills `bytes` from `address` on.
    fn read_into(
        &self,
        what: &'static str,
        address: u64,
        bytes: &mut [u8],
    ) -> Result<(), LayoutError> {
        self.check_range(what, address, bytes.len() as u64)?;
        for (page, offset, piece) in Self::pieces(address, bytes.len() as u64) {
            let contents = self.pages.get(&page).map_or(&ZERO_PAGE, |page| &**page);
            bytes[piece.clone()].copy_from_slice(&contents[offset..offset + piece.len()]);
        }
        Ok(())
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
        // Into an array, not through `read`: page-table building reads thousands of entries.
        let mut bytes = [0; 8];
        self.read_into(what, address, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// A table of [`Format`] rooted at `root` in a [`PhysImage`].
#[derive(Clone, Copy, Debug)]
pub struct PageTable {
    pub format: Format,
    pub root: u64,
}

impl PageTable {
    /// The entry at `slot`, as wide as the format's entries.
    pub fn read_entry(&self, image: &PhysImage, slot: u64) -> Result<u64, LayoutError> {
        match self.format.entry_bytes() {
            4 => {
                let bytes = image.read("a page-table entry", slot, 4)?;
                Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")).into())
            }
            _ => image.read_u64("a page-table entry", slot),
        }
    }

    pub fn write_entry(
        &self,
        image: &mut PhysImage,
        slot: u64,
        entry: u64,
    ) -> Result<(), LayoutError> {
        let bytes = entry.to_le_bytes();
        image.write(
            "a page-table entry",
            slot,
            &bytes[..self.format.entry_bytes() as usize],
        )
    }

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
        self.map_sized(image, address, target, perms, LeafSize::Size4K)
    }

    /// Maps the `size` page at `address` (both aligned to it) to `target`.
    pub fn map_sized(
        &self,
        image: &mut PhysImage,
        address: u64,
        target: u64,
        perms: Perms,
        size: LeafSize,
    ) -> Result<(), LayoutError> {
        let leaf_level = size.level();
        let table = self.leaf_table(image, address, leaf_level)?;
        let slot = self.format.slot(table, address, leaf_level);
        if self.format.is_present(self.read_entry(image, slot)?) {
            return Err(self.already_mapped(address));
        }
        let leaf = EntryKind::Leaf { level: leaf_level };
        self.write_entry(image, slot, self.format.entry(target, perms, leaf))
    }

    /// The table at `leaf_level` on the walk of `address`, with the tables above it allocated
    /// as needed.
    fn leaf_table(
        &self,
        image: &mut PhysImage,
        address: u64,
        leaf_level: u32,
    ) -> Result<u64, LayoutError> {
        let mut table = self.root;
        for level in (leaf_level + 1..=self.format.levels()).rev() {
            let slot = self.format.slot(table, address, level);
            let entry = self.read_entry(image, slot)?;
            table = if !self.format.is_present(entry) {
                let next = image.alloc_page("a page table")?;
                let table_entry = self
                    .format
                    .entry(next, Perms::RWX, EntryKind::Table { level });
                self.write_entry(image, slot, table_entry)?;
                next
            } else if entry & bits::LARGE != 0 {
                return Err(self.already_mapped(address));
            } else {
                entry & ADDRESS_MASK
            };
        }
        Ok(table)
    }

    fn already_mapped(&self, address: u64) -> LayoutError {
        LayoutError::AlreadyMapped {
            format: self.format,
            address,
        }
    }

    /// Identity-maps `[start, end)` (both page-aligned) read-write(-execute) with 4 KiB pages,
    /// filling each leaf table in one write: the same tables as [`PageTable::map`] page by page
    /// would build (and the same error for a page already mapped), without a walk from the root
    /// per page.
    pub fn identity_map(
        &self,
        image: &mut PhysImage,
        start: u64,
        end: u64,
    ) -> Result<(), LayoutError> {
        debug_assert!(
            start.is_multiple_of(PAGE_SIZE) && end.is_multiple_of(PAGE_SIZE),
            "{start:#x}..{end:#x}"
        );
        let leaf = EntryKind::Leaf { level: 1 };
        let entry_bytes = self.format.entry_bytes();
        // What one page table maps.
        let span = PAGE_SIZE * (PAGE_SIZE / entry_bytes);
        let mut address = start;
        while address < end {
            let chunk_end = (address - address % span + span).min(end);
            let table = self.leaf_table(image, address, 1)?;
            let first_slot = self.format.slot(table, address, 1);
            let len = (chunk_end - address) / PAGE_SIZE * entry_bytes;
            let old = image.read("a page table", first_slot, len)?;
            if let Some(at) = old.chunks_exact(entry_bytes as usize).position(|entry| {
                let mut bytes = [0; 8];
                bytes[..entry.len()].copy_from_slice(entry);
                self.format.is_present(u64::from_le_bytes(bytes))
            }) {
                return Err(self.already_mapped(address + at as u64 * PAGE_SIZE));
            }
            let entries: Vec<u8> = (address..chunk_end)
                .step_by(PAGE_SIZE as usize)
                .flat_map(|page| {
                    let entry = self.format.entry(page, Perms::RWX, leaf).to_le_bytes();
                    entry.into_iter().take(entry_bytes as usize)
                })
                .collect();
            image.write("a page table", first_slot, &entries)?;
            address = chunk_end;
        }
        Ok(())
    }

    /// The GPAs of the entries on the walk of `address`, root first, down to its leaf: one per
    /// level for a 4 KiB page (four with 4-level paging), one fewer for 2 MiB, two for 1 GiB.
    pub fn walk(&self, image: &PhysImage, address: u64) -> Result<Vec<u64>, LayoutError> {
        let mut entries = Vec::new();
        let mut table = self.root;
        for level in (1..=self.format.levels()).rev() {
            let slot = self.format.slot(table, address, level);
            entries.push(slot);
            let entry = self.read_entry(image, slot)?;
            if !self.format.is_present(entry) {
                return Err(LayoutError::NotMapped {
                    format: self.format,
                    address,
                });
            }
            if level == 1 || entry & bits::LARGE != 0 {
                return Ok(entries);
            }
            table = entry & ADDRESS_MASK;
        }
        unreachable!("level 1 ends every walk")
    }

    /// Rewrites the leaf that maps `address`, whatever its size, as `edit` says.
    pub fn set_leaf(
        &self,
        image: &mut PhysImage,
        address: u64,
        edit: LeafEdit,
    ) -> Result<(), LayoutError> {
        let entries = self.walk(image, address)?;
        let slot = *entries.last().expect("a walk has a leaf");
        let level = self.format.levels() + 1 - entries.len() as u32;
        let entry = self.read_entry(image, slot)?;
        let new = edit.perms.map_or(0, |perms| {
            self.format.entry(entry, perms, EntryKind::Leaf { level }) | edit.extra_bits
        });
        self.write_entry(image, slot, new)
    }

    /// Where `address` leads and with what permissions, or `None` if a level is not present:
    /// the walk the tests check the builder with.
    #[cfg(test)]
    pub fn translate(
        &self,
        image: &PhysImage,
        address: u64,
    ) -> Result<Option<(u64, Perms)>, LayoutError> {
        let entries = match self.walk(image, address) {
            Ok(entries) => entries,
            Err(LayoutError::NotMapped { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let leaf = self.read_entry(image, *entries.last().unwrap())?;
        let size = PAGE_SIZE << (9 * (self.format.levels() - entries.len() as u32));
        Ok(Some((
            (leaf & ADDRESS_MASK & !(size - 1)) | (address & (size - 1)),
            self.format.perms_of(leaf),
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
        let leaf = EntryKind::Leaf { level: 1 };
        let entry = |format: Format, perms| format.entry(address, perms, leaf);
        assert_eq!(entry(Format::X86_64, Perms::RWX), address | 0b011);
        assert_eq!(entry(Format::Npt, Perms::RWX), address | 0b111);
        assert_eq!(entry(Format::Npt, Perms::READ_EXEC), address | 0b101);
        assert_eq!(entry(Format::Npt, Perms::SUPERVISOR), address | 0b011);
        assert_eq!(
            entry(Format::Npt, Perms::READ_WRITE),
            address | 0b111 | 1 << 63
        );
        assert_eq!(entry(Format::Ept, Perms::RWX), address | 0x37);
        assert_eq!(entry(Format::Ept, Perms::READ_EXEC), address | 0x35);
        assert_eq!(entry(Format::Ept, Perms::READ_WRITE), address | 0x33);
        assert_eq!(entry(Format::Ept, Perms::WRITE_ONLY), address | 0x32);
        let table = EntryKind::Table { level: 2 };
        assert_eq!(Format::Ept.entry(address, Perms::RWX, table), address | 0x7);
        let pdpte = EntryKind::Table { level: 3 };
        assert_eq!(Format::Pae.entry(address, Perms::RWX, pdpte), address | 1);
        assert_eq!(
            Format::Pae.entry(address, Perms::RWX, table),
            address | 0b11
        );
        assert_eq!(entry(Format::Paging32, Perms::READ_WRITE), address | 0b11);
        let large = EntryKind::Leaf { level: 2 };
        assert_eq!(
            Format::Ept.entry(address, Perms::RWX, large),
            address | 0xb7
        );
        assert_eq!(
            Format::Npt.entry(address, Perms::RWX, large),
            address | 0x87
        );
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
        assert_eq!(
            table.walk(&image, address).unwrap(),
            [table.root + 8, pdpt + 16, pd + 24, pt + 32]
        );
        assert_eq!(image.read_u64("", pt + 32).unwrap(), 0x5003);
    }

    /// Each mode's walk by the architecture's index fields and entry sizes (SDM 4.3-4.5): 32-bit
    /// paging 10-bit indices of 4-byte entries, PAE a 2-bit root index, 5-level bits 56:48.
    #[test]
    fn every_l2_mode_walks_its_own_indices() {
        let cases = [
            (Format::Paging32, (3 << 22) | (9 << 12), vec![3 * 4, 9 * 4]),
            (
                Format::Pae,
                (3 << 30) | (7 << 21) | (9 << 12),
                vec![3 * 8, 7 * 8, 9 * 8],
            ),
            (
                Format::La57,
                (2 << 48) | (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12),
                vec![2 * 8, 3 * 8, 5 * 8, 7 * 8, 9 * 8],
            ),
        ];
        for (format, address, offsets) in cases {
            let mut memory = image();
            let table = PageTable::new(format, &mut memory).unwrap();
            table.map(&mut memory, address, 0x5000, Perms::RWX).unwrap();
            let walk = table.walk(&memory, address).unwrap();
            let in_page: Vec<u64> = walk.iter().map(|slot| slot % PAGE_SIZE).collect();
            assert_eq!(in_page, offsets, "{format:?}");
            assert_eq!(walk[0], table.root + offsets[0], "{format:?}: the root");
            let leaf = table.read_entry(&memory, *walk.last().unwrap()).unwrap();
            assert_eq!(
                leaf, 0x5003,
                "{format:?}: present and writable, nothing else"
            );
            assert_eq!(
                table.translate(&memory, address + 0x5a8).unwrap(),
                Some((0x55a8, Perms::RWX)),
                "{format:?}"
            );
        }
        // A 4-byte entry is 4 bytes: its neighbour stays untouched.
        let mut memory = image();
        let table = PageTable::new(Format::Paging32, &mut memory).unwrap();
        table
            .map(&mut memory, 0x40_0000, 0x5000, Perms::RWX)
            .unwrap();
        table
            .map(&mut memory, 0x40_1000, 0x6000, Perms::RWX)
            .unwrap();
        let walk = table.walk(&memory, 0x40_0000).unwrap();
        assert_eq!(memory.read_u64("", walk[1]).unwrap(), 0x6003_0000_5003);
        // PAE's root entries carry P alone (bits 2:1 and 8:5 are reserved there).
        let mut memory = image();
        let table = PageTable::new(Format::Pae, &mut memory).unwrap();
        table
            .map(&mut memory, 0x4000_0000, 0x5000, Perms::RWX)
            .unwrap();
        let pdpte = memory.read_u64("", table.root + 8).unwrap();
        assert_eq!(pdpte & 0xfff, 1, "{pdpte:#x}");
    }

    #[test]
    fn faults_are_leaf_edits() {
        let mut image = image();
        let table = PageTable::new(Format::Ept, &mut image).unwrap();
        table
            .identity_map(&mut image, 0x10_0000, 0x10_4000)
            .unwrap();
        let edit = |perms| LeafEdit {
            perms,
            extra_bits: 0,
        };
        table
            .set_leaf(&mut image, 0x10_1000, edit(Some(Perms::READ_EXEC)))
            .unwrap();
        table.set_leaf(&mut image, 0x10_2000, edit(None)).unwrap();
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
    fn identity_maps_build_what_mapping_page_by_page_builds() {
        // Across a leaf-table boundary, starting and ending inside a table.
        let (start, end) = (MIB, 2 * MIB + 3 * PAGE_SIZE);
        for format in [Format::X86_64, Format::Npt, Format::Ept] {
            let mut fast = PhysImage::new(8 * MIB, 4 * MIB);
            let table = PageTable::new(format, &mut fast).unwrap();
            table.identity_map(&mut fast, start, end).unwrap();
            let mut slow = PhysImage::new(8 * MIB, 4 * MIB);
            let table = PageTable::new(format, &mut slow).unwrap();
            for page in (start..end).step_by(PAGE_SIZE as usize) {
                table.map(&mut slow, page, page, Perms::RWX).unwrap();
            }
            let entries = |image: &PhysImage| -> Vec<(u64, u64)> {
                image
                    .pages()
                    .flat_map(|(gpa, _)| (gpa..gpa + PAGE_SIZE).step_by(8))
                    .map(|slot| (slot, image.read_u64("", slot).unwrap()))
                    .filter(|&(_, entry)| entry != 0)
                    .collect()
            };
            let (got, wanted) = (entries(&fast), entries(&slow));
            if let Some(at) =
                (0..got.len().max(wanted.len())).find(|&i| got.get(i) != wanted.get(i))
            {
                panic!(
                    "{format:?}: entry {at} as (slot, entry) wanted {:x?} got {:x?}",
                    wanted.get(at),
                    got.get(at)
                );
            }
            assert_eq!(fast.next_free, slow.next_free, "{format:?}: next free page");
        }
    }

    #[test]
    fn identity_maps_refuse_a_page_already_mapped() {
        let mut image = PhysImage::new(8 * MIB, 4 * MIB);
        let table = PageTable::new(Format::X86_64, &mut image).unwrap();
        let taken = MIB + 5 * PAGE_SIZE;
        table.map(&mut image, taken, 0, Perms::RWX).unwrap();
        let error = table.identity_map(&mut image, MIB, 2 * MIB).unwrap_err();
        assert!(
            matches!(error, LayoutError::AlreadyMapped { address, .. } if address == taken),
            "wanted AlreadyMapped at {taken:#x}, got {error:?}"
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

    #[test]
    fn large_leaves_end_the_walk_and_take_the_edits() {
        let mut image = image();
        let table = PageTable::new(Format::Ept, &mut image).unwrap();
        let (two_m, one_g) = (0x4020_0000, 0x80_4000_0000);
        table
            .map_sized(&mut image, two_m, two_m, Perms::RWX, LeafSize::Size2M)
            .unwrap();
        table
            .map_sized(&mut image, one_g, one_g, Perms::RWX, LeafSize::Size1G)
            .unwrap();
        assert_eq!(table.walk(&image, two_m + 0x1234).unwrap().len(), 3);
        assert_eq!(table.walk(&image, one_g + 0x1234).unwrap().len(), 2);
        assert_eq!(
            table.translate(&image, one_g + 0x12_3456).unwrap(),
            Some((one_g + 0x12_3456, Perms::RWX))
        );
        let reserved = LeafEdit {
            perms: Some(Perms::WRITE_ONLY),
            extra_bits: 1 << 45,
        };
        table
            .set_leaf(&mut image, two_m + 0x5000, reserved)
            .unwrap();
        let slot = *table.walk(&image, two_m).unwrap().last().unwrap();
        assert_eq!(image.read_u64("", slot).unwrap(), two_m | 0xb2 | 1 << 45);
        assert!(matches!(
            table.map(&mut image, two_m + 0x1000, 0, Perms::RWX),
            Err(LayoutError::AlreadyMapped { .. })
        ));
    }

    fn image_with_table() -> (PageTable, PhysImage) {
        let mut image = image();
        let table = PageTable::new(Format::Npt, &mut image).unwrap();
        table.map(&mut image, 0, 0, Perms::RWX).unwrap();
        (table, image)
    }
}
