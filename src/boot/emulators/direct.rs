//! A boot without the kernel's decompressor, for an emulator that cannot start the kernel at its
//! PVH entry point: Bochs, which boots through its BIOS and isolinux, and QEMU for a kernel
//! without CONFIG_PVH (`start` chooses). Under Bochs the decompressor was the single biggest part
//! of a boot: ~13 s of host time for Debian 7.2's zstd kernel, ~60 s for 6.1's xz one, while
//! isolinux reads the uncompressed kernel from the emulated CD at ~15 MB/s (measured).
//!
//! The boot loader (isolinux, or QEMU's own) is handed a bzImage made of the kernel's own
//! real-mode setup code and, as its protected-mode part, the small program below instead of the
//! compressed kernel; the uncompressed kernel, flattened to the bytes it occupies from its first
//! physical address on, leads the ramdisk, followed by the initramfs. The setup code does what it always does
//! (the BIOS memory map, the command line, `boot_params`) and jumps to the program in 32-bit
//! protected mode, which does what the decompressor would have done after decompressing:
//! - copies the kernel to its physical load address and zeroes the rest of its image (.bss);
//! - moves the ramdisk's start past the kernel, so that the kernel finds only the initramfs;
//! - identity-maps the first 4 GiB, enters long mode and jumps to the ELF entry point
//!   (`startup_64`, by its physical address) with `boot_params` in RSI: the 64-bit boot
//!   protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"), which is also how
//!   kexec starts an ELF vmlinux.
//!
//! The kernel then runs from the same bytes at the same address it would have been decompressed
//! to (without randomisation, as `nokaslr` or QEMU's PVH boot); nothing of KVM or of the rest of
//! the kernel's code differs, so no verdict can. Anything unexpected about the kernel's ELF
//! image makes [`prepare`] decline, with the reason, and the bzImage boots as before.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::boot::error::BootError;
use crate::elf::Elf;

// The program the setup code jumps to. Position-independent: it finds its own address first, and
// the host appends its parameters (PARAMS_LEN bytes at its end) when it builds the image.
core::arch::global_asm!(
    ".pushsection .rodata.nestfault_direct_boot, \"a\"",
    ".balign 16",
    ".globl nestfault_direct_boot_start",
    ".globl nestfault_direct_boot_end",
    "nestfault_direct_boot_start:",
    ".code32",
    "cld",
    "movl %esi, %ebp", // boot_params
    "call 2f",
    "2:",
    "popl %ebx",
    "subl $(2b - nestfault_direct_boot_start), %ebx", // ebx: where the loader put us
    // The kernel leads the ramdisk: copy it to its physical address, zero the rest of its image.
    "movl 0x218(%ebp), %esi", // boot_params.hdr.ramdisk_image
    "movl (3f - nestfault_direct_boot_start)(%ebx), %edi",
    "movl (3f - nestfault_direct_boot_start + 4)(%ebx), %ecx",
    "rep movsl",
    "xorl %eax, %eax",
    "movl (3f - nestfault_direct_boot_start + 8)(%ebx), %ecx",
    "rep stosl",
    // The initramfs starts where the kernel's pages end.
    "movl (3f - nestfault_direct_boot_start + 12)(%ebx), %eax",
    "addl %eax, 0x218(%ebp)",
    "subl %eax, 0x21c(%ebp)", // boot_params.hdr.ramdisk_size
    // Page tables at `tables`: PML4, PDPT, four PDs of 2 MiB pages for the first 4 GiB.
    "movl (3f - nestfault_direct_boot_start + 16)(%ebx), %edi",
    "movl %edi, %edx",
    "xorl %eax, %eax",
    "movl $(6 * 1024), %ecx",
    "rep stosl",
    "leal 0x1003(%edx), %eax", // present, writable
    "movl %eax, (%edx)",
    "leal 0x2003(%edx), %eax",
    "movl %eax, 0x1000(%edx)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1008(%edx)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1010(%edx)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1018(%edx)",
    "leal 0x2000(%edx), %edi",
    "movl $0x83, %eax", // present, writable, 2 MiB
    "movl $2048, %ecx",
    "4:",
    "movl %eax, (%edi)",
    "addl $0x200000, %eax",
    "addl $8, %edi",
    "decl %ecx",
    "jnz 4b",
    // Long mode: PAE, the tables, EFER.LME, then paging; a far return into 64-bit code.
    "movl %edx, %cr3",
    "movl %cr4, %eax",
    "orl $0x20, %eax",
    "movl %eax, %cr4",
    "movl $0xc0000080, %ecx",
    "rdmsr",
    "orl $0x100, %eax",
    "wrmsr",
    "leal (5f - nestfault_direct_boot_start)(%ebx), %eax",
    "movl %eax, (6f - nestfault_direct_boot_start + 2)(%ebx)",
    "lgdtl (6f - nestfault_direct_boot_start)(%ebx)",
    "movl %cr0, %eax",
    "orl $0x80000000, %eax",
    "movl %eax, %cr0",
    "leal (7f - nestfault_direct_boot_start)(%ebx), %eax",
    "pushl $0x08",
    "pushl %eax",
    "lretl",
    "7:",
    ".code64",
    "movl %ebp, %esi", // boot_params, zero-extended
    "movl %ebx, %ebx",
    "movl (3f - nestfault_direct_boot_start + 20)(%rbx), %eax",
    "jmpq *%rax",
    ".balign 8",
    "5:", // the GDT: null, 64-bit code (0x08), and the setup's 32-bit code (0x10) and data (0x18)
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "6:",
    ".word 31",
    ".long 0",
    ".balign 4",
    "3:", // parameters: destination, dwords to copy, dwords to zero, bytes to skip, tables, entry
    ".long 0, 0, 0, 0, 0, 0",
    "nestfault_direct_boot_end:",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static nestfault_direct_boot_start: u8;
    static nestfault_direct_boot_end: u8;
}

/// The parameters' bytes at the program's end: six little-endian u32s.
const PARAMS_LEN: usize = 6 * 4;
/// Where the program builds its page tables (six pages): free memory between the boot loader's
/// 1 MiB and the kernel's 16 MiB.
const TABLES: u32 = 0x20_0000;
/// The lowest physical address the kernel may occupy (above TABLES' pages).
const LOWEST_KERNEL: u64 = 0x40_0000;
const PAGE: usize = 4096;

/// The program's bytes as assembled into this binary, parameters zero.
fn program() -> &'static [u8] {
    // SAFETY: both symbols are labels of the one global_asm block above, in one section, `end`
    // after `start`; the bytes between them are initialised read-only data for the program's
    // whole life.
    unsafe {
        let start = std::ptr::addr_of!(nestfault_direct_boot_start);
        let end = std::ptr::addr_of!(nestfault_direct_boot_end);
        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// What the boot loader is to load instead of the bzImage and the initramfs.
#[derive(Debug)]
pub(crate) struct DirectBoot {
    pub(crate) kernel: PathBuf,
    pub(crate) ramdisk: PathBuf,
}

/// The kernel's image as the decompressor would have left it: its bytes from its first physical
/// address up to the last non-zero one, how many zero bytes follow to its end, and its entry.
#[derive(Debug, PartialEq, Eq)]
struct FlatKernel {
    start: u64,
    bytes: Vec<u8>,
    zeros: u64,
    entry: u64,
}

fn flatten(vmlinux: &[u8], memory_bytes: u64) -> Result<FlatKernel, String> {
    let elf = Elf::parse(vmlinux)?;
    let segments = elf.loadable_segments()?;
    let start = segments.iter().map(|segment| segment.paddr).min();
    let end = segments
        .iter()
        .map(|segment| segment.paddr.checked_add(segment.memsz))
        .try_fold(0u64, |end, segment_end| segment_end.map(|e| end.max(e)));
    let (Some(start), Some(end)) = (start, end) else {
        return Err("no loadable segment, or one that ends past 2^64".into());
    };
    // Room for the kernel, the ramdisk the loader puts near the top, and the kernel's own needs.
    if start < LOWEST_KERNEL || end > memory_bytes / 4 {
        return Err(format!(
            "its image [{start:#x}, {end:#x}) is not where a direct boot can put it"
        ));
    }
    let entry = elf.entry()?;
    if !(start..end).contains(&entry) {
        return Err(format!(
            "its entry point {entry:#x} is not a physical address in its image"
        ));
    }
    let mut bytes = vec![0u8; (end - start) as usize];
    for segment in segments {
        let at = (segment.paddr - start) as usize;
        bytes[at..at + segment.contents.len()].copy_from_slice(segment.contents);
    }
    let used = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    bytes.truncate(used.next_multiple_of(4));
    let zeros = (end - start - bytes.len() as u64).next_multiple_of(4);
    Ok(FlatKernel {
        start,
        bytes,
        zeros,
        entry,
    })
}

/// The loader's kernel file: `bzimage`'s real-mode setup, then the program with `flat`'s
/// parameters as its protected-mode part.
fn loader_image(bzimage: &[u8], flat: &FlatKernel) -> Result<Vec<u8>, String> {
    const SETUP_SECTS: usize = 0x1f1;
    const SYSSIZE: usize = 0x1f4;
    const HEADER_MAGIC: usize = 0x202;
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err("the image has no boot protocol header".into());
    }
    let sectors = match bzimage[SETUP_SECTS] {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let setup = bzimage
        .get(..(sectors + 1) * 512)
        .ok_or("the image is shorter than its setup code")?;
    let mut program = program().to_vec();
    let to_u32 = |value: u64, what: &str| {
        u32::try_from(value).map_err(|_| format!("{what} {value:#x} does not fit 32 bits"))
    };
    let params = [
        to_u32(flat.start, "the load address")?,
        to_u32(flat.bytes.len() as u64 / 4, "the kernel's size")?,
        to_u32(flat.zeros / 4, "the kernel's zero tail")?,
        to_u32(skip(flat) as u64, "the kernel's size")?,
        TABLES,
        to_u32(flat.entry, "the entry point")?,
    ];
    let at = program.len() - PARAMS_LEN;
    for (slot, value) in program[at..].chunks_exact_mut(4).zip(params) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    let mut image = setup.to_vec();
    image[SYSSIZE..SYSSIZE + 4].copy_from_slice(&(program.len().div_ceil(16) as u32).to_le_bytes());
    image.extend_from_slice(&program);
    Ok(image)
}

/// The ramdisk bytes the kernel takes: whole pages, so that the initramfs starts on one.
fn skip(flat: &FlatKernel) -> usize {
    flat.bytes.len().next_multiple_of(PAGE)
}

/// Writes the loader's kernel and ramdisk into `dir`, or says why this kernel boots the usual
/// way. `vmlinux` is the kernel inside `bzimage`; `memory_mib` is the emulator's memory.
pub(crate) fn prepare(
    bzimage: &Path,
    vmlinux: &Path,
    initramfs: &Path,
    memory_mib: u32,
    dir: &Path,
) -> Result<Result<DirectBoot, String>, BootError> {
    let elf = fs::read(vmlinux).map_err(|e| BootError::io("read", vmlinux, e))?;
    let flat = match flatten(&elf, u64::from(memory_mib) << 20) {
        Ok(flat) => flat,
        Err(why) => return Ok(Err(why)),
    };
    drop(elf);
    let image = fs::read(bzimage).map_err(|e| BootError::io("read", bzimage, e))?;
    let loader_kernel = match loader_image(&image, &flat) {
        Ok(loader_kernel) => loader_kernel,
        Err(why) => return Ok(Err(why)),
    };
    let kernel = dir.join("direct-boot-kernel");
    fs::write(&kernel, loader_kernel).map_err(|e| BootError::io("write", &kernel, e))?;
    // The kernel's pages, then the initramfs copied in behind them.
    let skip = skip(&flat);
    let mut ramdisk_bytes = flat.bytes;
    ramdisk_bytes.resize(skip, 0);
    let ramdisk = dir.join("direct-boot-ramdisk");
    let mut out = fs::File::create(&ramdisk).map_err(|e| BootError::io("create", &ramdisk, e))?;
    out.write_all(&ramdisk_bytes)
        .map_err(|e| BootError::io("write", &ramdisk, e))?;
    let mut input = fs::File::open(initramfs).map_err(|e| BootError::io("read", initramfs, e))?;
    io::copy(&mut input, &mut out).map_err(|e| BootError::io("write", &ramdisk, e))?;
    Ok(Ok(DirectBoot { kernel, ramdisk }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::executable;

    const MEMORY: u64 = 512 << 20;

    /// Text at 16 MiB; data after a gap, ending in zeros, and a .bss beyond its file bytes.
    fn kernel() -> Vec<u8> {
        let text = [0x90u8; 0x1800];
        let mut data = vec![0u8; 0x1000];
        data[..3].copy_from_slice(&[1, 2, 3]);
        executable(
            0x100_0010,
            &[(0x100_0000, &text, 0x1800), (0x100_4000, &data, 0x3000)],
        )
    }

    #[test]
    fn flattens_to_the_bytes_from_the_first_address_on() {
        let flat = flatten(&kernel(), MEMORY).unwrap();
        assert_eq!((flat.start, flat.entry), (0x100_0000, 0x100_0010));
        // Text, the gap as zeros, then data up to its last non-zero byte (rounded to 4).
        assert_eq!(flat.bytes.len(), 0x4004);
        assert!(flat.bytes[..0x1800].iter().all(|&byte| byte == 0x90));
        assert!(flat.bytes[0x1800..0x4000].iter().all(|&byte| byte == 0));
        assert_eq!(&flat.bytes[0x4000..], &[1, 2, 3, 0]);
        // The rest of the image, to the end of .bss, is zeroed by the program.
        assert_eq!(flat.bytes.len() as u64 + flat.zeros, 0x7000);
        assert_eq!(skip(&flat), 0x5000);
    }

    #[test]
    fn declines_what_it_cannot_place_or_enter() {
        let low = executable(0x1000, &[(0x1000, &[0x90], 1)]);
        assert!(flatten(&low, MEMORY).unwrap_err().contains("not where"));
        let outside = executable(0x200_0000, &[(0x100_0000, &[0x90], 1)]);
        assert!(flatten(&outside, MEMORY)
            .unwrap_err()
            .contains("entry point"));
        let huge = executable(0x100_0000, &[(0x100_0000, &[0x90], MEMORY / 2)]);
        assert!(flatten(&huge, MEMORY).unwrap_err().contains("not where"));
        assert!(flatten(b"not an elf", MEMORY).is_err());
    }

    #[test]
    fn the_loader_image_is_the_setup_code_then_the_program_with_its_parameters() {
        let mut bzimage = vec![0u8; 3 * 512 + 100];
        bzimage[0x1f1] = 2;
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        bzimage[0x300] = 0xaa; // in the setup code
        let flat = flatten(&kernel(), MEMORY).unwrap();
        let image = loader_image(&bzimage, &flat).unwrap();
        let program = program();
        // The parameters are the program's last bytes, zero as assembled.
        assert!(program[program.len() - PARAMS_LEN..]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(program[0], 0xfc, "the program starts with cld");
        assert_eq!(&image[..0x1f4], &bzimage[..0x1f4]);
        assert_eq!(image[0x300], 0xaa);
        let syssize = u32::from_le_bytes(image[0x1f4..0x1f8].try_into().unwrap()) as usize;
        assert_eq!(syssize, program.len().div_ceil(16));
        assert_eq!(image.len(), 3 * 512 + program.len());
        let params: Vec<u32> = image[image.len() - PARAMS_LEN..]
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes(word.try_into().unwrap()))
            .collect();
        assert_eq!(
            params,
            [
                0x100_0000,
                0x4004 / 4,
                (0x7000 - 0x4004) / 4,
                0x5000,
                TABLES,
                0x100_0010
            ]
        );
        let mut not_a_bzimage = bzimage;
        not_a_bzimage[0x202] = b'X';
        assert!(loader_image(&not_a_bzimage, &flat).is_err());
    }
}
