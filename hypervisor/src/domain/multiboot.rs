//! Multiboot (v1) kernels as domUs, as the Multiboot Specification 0.6.96
//! says a boot loader must load and enter them. Pure: `detect` finds the
//! header, `parse_header` and `load_plan` check it and say what goes where,
//! `info_page` builds the boot information (with the module list and memory
//! map), and `lay_out` does all of it into any `GuestRam`.
//!
//! A domU's RAM is guest-physical `[0, memory)`. What a Multiboot domU finds
//! there:
//!
//! | where | what |
//! |---|---|
//! | `INFO_ADDR` (0x8000), one page | the multiboot information (EBX), module list, memory map, strings |
//! | the kernel's own addresses, ≥ 1 MiB | its text, data and zeroed bss (a.out-kludge fields, else ELF `p_paddr`) |
//! | the next 4 KiB boundary after the kernel | the domain's ramdisk: module 0 |
//!
//! and its memory map: `[0, 0xA0000)` available (`mem_lower` = 640),
//! `[0xE0000, 0x100000)` reserved (the BIOS area, where a domain's ACPI tables
//! go), `[0x100000, memory)` available (`mem_upper` = its KiB). The kernel
//! and the module lie in available memory, as with any boot loader: the kernel
//! knows where they are from the information structure.
//!
//! vCPU 0 starts as section 3.2 of the specification says: 32-bit protected
//! mode, paging off, flat 4 GiB segments, interrupts off (`EntryMode::Protected32`),
//! EAX = `BOOTLOADER_MAGIC`, EBX = `INFO_ADDR`, EIP = the entry point; the
//! GDTR and IDTR are empty and ESP is 0 (the specification leaves them
//! undefined: the kernel loads its own).
//!
//! Refused, with the reason (`MultibootError`, `-ENOEXEC` unless it is the
//! domain's size or command line that is wrong): a header that is not 4-byte
//! aligned or not wholly in the first 8 KiB; required flags (bits 0-15) other
//! than 0 (page-aligned modules: always so) and 1 (memory information: always
//! given), in particular 2 (a video mode: a domU has no display); anything
//! that would load below 1 MiB, beyond the domain's RAM or above 4 GiB;
//! address fields that do not match the file; an image that is neither
//! a.out-kludge nor a static ELF32/ELF64 x86 executable.

use crate::hypercall::GuestRam;
use crate::virt::{EntryMode, GuestGprs, InitialState};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use oxen_abi::{Error, CMDLINE_LEN};

/// The header's magic (§3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie wholly within the image's first 8192 bytes (§3.1.1).
pub const SEARCH_BYTES: usize = 8192;
/// Where the boot information page goes: below 1 MiB, where no kernel loads.
pub const INFO_ADDR: u64 = 0x8000;
/// Kernels load at or above 1 MiB (the first MiB is the legacy PC area).
pub const KERNEL_MIN: u64 = 1 << 20;
/// Conventional memory the domain reports: all 640 KiB (it has no EBDA).
pub const LOWER_END: u64 = 0xa_0000;
/// The BIOS area, reserved in the memory map (ACPI's RSDP is searched there).
pub const BIOS_AREA: Range<u64> = 0xe_0000..0x10_0000;
/// Everything a Multiboot kernel is given has a 32-bit address.
const FOUR_GIB: u64 = 1 << 32;
const PAGE: u64 = 4096;

/// Header flags (§3.1.2).
pub mod flags {
    /// Modules must be 4 KiB aligned.
    pub const PAGE_ALIGN: u32 = 1 << 0;
    /// `mem_*` (and the memory map) must be given.
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// A video mode table must be given.
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The a.out-kludge address fields (offsets 12-28) are valid.
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    /// Bits 0-15 are requirements: a loader that does not meet one must refuse.
    pub const REQUIRED: u32 = 0xffff;
    /// The requirements Oxen meets.
    pub const MET: u32 = PAGE_ALIGN | MEMORY_INFO;
}

/// Information-structure flags (§3.3).
pub mod info_flags {
    pub const MEMORY: u32 = 1 << 0;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MODS: u32 = 1 << 3;
    pub const MMAP: u32 = 1 << 6;
    pub const BOOT_LOADER_NAME: u32 = 1 << 9;
}

/// Memory map entry types (§3.3).
pub const MMAP_AVAILABLE: u32 = 1;
pub const MMAP_RESERVED: u32 = 2;

/// Offsets in the boot information page (`info_page`).
pub mod page {
    /// The information structure itself, 116 bytes (to the framebuffer fields).
    pub const INFO: usize = 0x000;
    pub const INFO_LEN: usize = 116;
    /// The module list: one 16-byte entry (the ramdisk).
    pub const MODS: usize = 0x080;
    /// The memory map: `MMAP_ENTRIES` entries of 24 bytes (size field included).
    pub const MMAP: usize = 0x0a0;
    pub const MMAP_ENTRY: usize = 24;
    pub const BOOT_LOADER_NAME: usize = 0x100;
    pub const MODULE_STRING: usize = 0x120;
    pub const CMDLINE: usize = 0x200;
}
/// `boot_loader_name`.
pub const BOOT_LOADER_NAME: &[u8] = b"Oxen\0";
/// Module 0's string: the hypervisor knows the ramdisk's bytes, not its path.
pub const MODULE_STRING: &[u8] = b"ramdisk\0";

/// Why an image cannot be booted as a Multiboot kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultibootError {
    NoHeader,
    /// The magic and checksum are at an offset that is not a multiple of 4.
    HeaderMisaligned { offset: usize },
    /// The header's fields (`len` bytes for its flags) run past the first 8 KiB or the file.
    HeaderTruncated { offset: usize, len: usize },
    /// Flag 2: a video mode table, which a domU (no display) cannot give.
    VideoModeRequired,
    /// Required flags (bits 0-15) this loader does not know.
    UnknownRequiredFlags { bits: u32 },
    /// a.out kludge: `load_addr` > `header_addr`, or the header would sit
    /// before the start of the file.
    BadHeaderAddr { header_addr: u32, load_addr: u32 },
    /// a.out kludge: `load_end_addr` before `load_addr`, or `bss_end_addr` before the loaded end.
    BadLoadRange { load_addr: u32, load_end_addr: u32, bss_end_addr: u32 },
    /// a.out kludge: the text and data reach past the end of the file.
    LoadPastFile { offset: u64, len: u64, file_len: u64 },
    /// Not ELF, and no a.out-kludge address fields (flag 16).
    NotElfNoAddresses,
    /// ELF but not a static little-endian x86 executable of class 32 or 64.
    BadElf { why: &'static str },
    /// An ELF program header or segment outside the file, or filesz > memsz.
    BadSegment { index: usize },
    /// Two ELF segments share memory.
    SegmentsOverlap,
    /// Nothing to load.
    NothingLoaded,
    /// Something loads outside `[1 MiB, min(memory, 4 GiB))`.
    OutsideRam { start: u64, end: u64, ram_end: u64 },
    /// The entry point is not in what is loaded.
    EntryOutside { entry: u64 },
    /// The ramdisk does not fit between the kernel and the end of RAM (or 4 GiB - 1).
    ModuleTooLarge { len: u64, room: u64 },
    /// The memory size is not whole pages, or leaves no room above 1 MiB.
    BadMemory { memory: u64 },
    /// The command line has no NUL within `CMDLINE_LEN` bytes.
    CmdlineTooLong,
    /// Writing into the domain's RAM failed (a bug: everything was checked).
    Fault,
}

impl MultibootError {
    /// The errno `domctl BUILD` returns.
    pub fn errno(&self) -> Error {
        match self {
            Self::ModuleTooLarge { .. } | Self::BadMemory { .. } => Error::NoMem,
            Self::CmdlineTooLong => Error::Inval,
            Self::Fault => Error::Fault,
            _ => Error::NoExec,
        }
    }
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "multiboot kernel: ")?;
        match *self {
            Self::NoHeader => write!(f, "no multiboot header in the first 8 KiB"),
            Self::HeaderMisaligned { offset } => {
                write!(f, "header at offset {offset:#x} is not 4-byte aligned")
            }
            Self::HeaderTruncated { offset, len } => {
                write!(f, "header at offset {offset:#x} needs {len} bytes within the file's first 8 KiB")
            }
            Self::VideoModeRequired => {
                write!(f, "it requires a video mode (flag 2); a domU has no display")
            }
            Self::UnknownRequiredFlags { bits } => {
                write!(f, "it requires features this loader does not know (flags {bits:#x})")
            }
            Self::BadHeaderAddr { header_addr, load_addr } => write!(
                f,
                "header_addr {header_addr:#x} and load_addr {load_addr:#x} do not match the header's place in the file"
            ),
            Self::BadLoadRange { load_addr, load_end_addr, bss_end_addr } => write!(
                f,
                "bad address fields: load {load_addr:#x}, load_end {load_end_addr:#x}, bss_end {bss_end_addr:#x}"
            ),
            Self::LoadPastFile { offset, len, file_len } => write!(
                f,
                "{len:#x} bytes to load from offset {offset:#x}, but the file has {file_len:#x}"
            ),
            Self::NotElfNoAddresses => {
                write!(f, "not an ELF file, and its header has no address fields (flag 16)")
            }
            Self::BadElf { why } => write!(f, "ELF image {why}"),
            Self::BadSegment { index } => write!(f, "ELF program header {index} is outside the file or has filesz > memsz"),
            Self::SegmentsOverlap => write!(f, "ELF segments overlap"),
            Self::NothingLoaded => write!(f, "nothing to load"),
            Self::OutsideRam { start, end, ram_end } => write!(
                f,
                "loads at {start:#x}-{end:#x}, outside {KERNEL_MIN:#x}-{ram_end:#x} (1 MiB up to the domain's memory and 4 GiB)"
            ),
            Self::EntryOutside { entry } => write!(f, "entry point {entry:#x} is not in the loaded image"),
            Self::ModuleTooLarge { len, room } => write!(
                f,
                "the ramdisk ({} KiB) does not fit after the kernel ({} KiB free)",
                len.div_ceil(1024),
                room / 1024
            ),
            Self::BadMemory { memory } => write!(f, "memory size {memory:#x} is not whole pages above 1 MiB"),
            Self::CmdlineTooLong => write!(f, "command line longer than {} bytes", CMDLINE_LEN - 1),
            Self::Fault => write!(f, "laid out outside the domain's memory"),
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// The a.out-kludge address fields (flag 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A checked Multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its offset in the file.
    pub offset: usize,
    pub flags: u32,
    pub addresses: Option<Addresses>,
}

/// Where a magic with a matching checksum is, at any byte offset in the
/// first 8 KiB (so a misaligned header is found, then refused).
fn find_magic(image: &[u8]) -> Option<usize> {
    let end = image.len().min(SEARCH_BYTES);
    (0..end.saturating_sub(11)).find(|&o| {
        let (magic, fl, sum) = (u32_at(image, o), u32_at(image, o + 4), u32_at(image, o + 8));
        magic == HEADER_MAGIC && magic.wrapping_add(fl).wrapping_add(sum) == 0
    })
}

/// Whether `image` carries a Multiboot header (magic and checksum in its first
/// 8 KiB): then it is booted as a Multiboot kernel, even if it is also ELF64.
pub fn detect(image: &[u8]) -> bool {
    find_magic(image).is_some()
}

/// Finds and checks the header.
pub fn parse_header(image: &[u8]) -> Result<Header, MultibootError> {
    let offset = find_magic(image).ok_or(MultibootError::NoHeader)?;
    if !offset.is_multiple_of(4) {
        return Err(MultibootError::HeaderMisaligned { offset });
    }
    let flags = u32_at(image, offset + 4);
    if flags & flags::VIDEO_MODE != 0 {
        return Err(MultibootError::VideoModeRequired);
    }
    let unknown = flags & flags::REQUIRED & !flags::MET;
    if unknown != 0 {
        return Err(MultibootError::UnknownRequiredFlags { bits: unknown });
    }
    let addresses = if flags & flags::AOUT_KLUDGE != 0 {
        let len = 32;
        if offset + len > image.len().min(SEARCH_BYTES) {
            return Err(MultibootError::HeaderTruncated { offset, len });
        }
        let f = |i: usize| u32_at(image, offset + 12 + 4 * i);
        Some(Addresses { header_addr: f(0), load_addr: f(1), load_end_addr: f(2), bss_end_addr: f(3), entry_addr: f(4) })
    } else {
        None
    };
    Ok(Header { offset, flags, addresses })
}

/// One piece of the kernel: `image[file]` copied to `at`, then `zero` bytes of zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub at: u64,
    pub file: Range<usize>,
    pub zero: u64,
}

impl Piece {
    pub fn memory(&self) -> Range<u64> {
        self.at..self.at + self.file.len() as u64 + self.zero
    }
}

/// What to load and where to enter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub pieces: Vec<Piece>,
    pub entry: u32,
}

impl LoadPlan {
    /// The end of the highest piece.
    pub fn end(&self) -> u64 {
        self.pieces.iter().map(|p| p.memory().end).max().unwrap_or(KERNEL_MIN)
    }
}

/// The highest address + 1 a kernel or module may use in a domain of `memory` bytes.
fn ram_end(memory: u64) -> u64 {
    memory.min(FOUR_GIB)
}

fn check_in_ram(r: Range<u64>, memory: u64) -> Result<(), MultibootError> {
    let end = ram_end(memory);
    if r.start < KERNEL_MIN || r.end > end || r.start > r.end {
        return Err(MultibootError::OutsideRam { start: r.start, end: r.end, ram_end: end });
    }
    Ok(())
}

/// Says what of `image` goes where in a domain of `memory` bytes.
pub fn load_plan(image: &[u8], header: &Header, memory: u64) -> Result<LoadPlan, MultibootError> {
    let plan = match header.addresses {
        Some(a) => aout_plan(image, header.offset, &a)?,
        None => elf_plan(image)?,
    };
    for p in &plan.pieces {
        check_in_ram(p.memory(), memory)?;
    }
    let entry = u64::from(plan.entry);
    if !plan.pieces.iter().any(|p| p.memory().contains(&entry)) {
        return Err(MultibootError::EntryOutside { entry });
    }
    Ok(plan)
}

/// The a.out kludge (§3.1.3): the file from `header_offset - (header_addr -
/// load_addr)` loads at `load_addr`, up to `load_end_addr` (0: the end of the
/// file), and zeros follow up to `bss_end_addr` (0: none).
fn aout_plan(image: &[u8], header_offset: usize, a: &Addresses) -> Result<LoadPlan, MultibootError> {
    let bad_addr = MultibootError::BadHeaderAddr { header_addr: a.header_addr, load_addr: a.load_addr };
    let before = a.header_addr.checked_sub(a.load_addr).ok_or(bad_addr)?;
    let offset = (header_offset as u64).checked_sub(u64::from(before)).ok_or(bad_addr)?;
    let file_len = image.len() as u64;
    let bad_range =
        MultibootError::BadLoadRange { load_addr: a.load_addr, load_end_addr: a.load_end_addr, bss_end_addr: a.bss_end_addr };
    let len = match a.load_end_addr {
        0 => file_len - offset,
        end => u64::from(end.checked_sub(a.load_addr).ok_or(bad_range)?),
    };
    if offset + len > file_len {
        return Err(MultibootError::LoadPastFile { offset, len, file_len });
    }
    let loaded_end = u64::from(a.load_addr) + len;
    let zero = match a.bss_end_addr {
        0 => 0,
        end => u64::from(end).checked_sub(loaded_end).ok_or(bad_range)?,
    };
    let piece = Piece { at: a.load_addr.into(), file: offset as usize..(offset + len) as usize, zero };
    if piece.memory().is_empty() {
        return Err(MultibootError::NothingLoaded);
    }
    Ok(LoadPlan { pieces: alloc::vec![piece], entry: a.entry_addr })
}

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const MAX_PROGRAM_HEADERS: usize = 64;

/// A static ELF32 (i386) or ELF64 (x86-64) executable: each `PT_LOAD` at its
/// `p_paddr`; the entry point, if inside a segment's virtual range, moved to
/// the matching physical address (as GRUB does).
fn elf_plan(image: &[u8]) -> Result<LoadPlan, MultibootError> {
    if image.len() < 52 || image[..4] != *b"\x7fELF" {
        return Err(MultibootError::NotElfNoAddresses);
    }
    let bad = |why| MultibootError::BadElf { why };
    let wide = match image[4] {
        1 => false,
        2 if image.len() >= 64 => true,
        _ => return Err(bad("is neither ELF32 nor ELF64")),
    };
    if image[5] != 1 {
        return Err(bad("is not little-endian"));
    }
    if u16_at(image, 16) != ET_EXEC {
        return Err(bad("is not an executable (ET_EXEC)"));
    }
    let machine = u16_at(image, 18);
    if machine != if wide { EM_X86_64 } else { EM_386 } {
        return Err(bad("is not for i386 (ELF32) or x86-64 (ELF64)"));
    }
    let (entry, phoff, phentsize, phnum, ph_size) = if wide {
        (u64_at(image, 24), u64_at(image, 32), u16_at(image, 54), u16_at(image, 56), 56)
    } else {
        (u32_at(image, 24).into(), u32_at(image, 28).into(), u16_at(image, 42), u16_at(image, 44), 32)
    };
    let phnum = usize::from(phnum);
    if usize::from(phentsize) != ph_size || phnum == 0 || phnum > MAX_PROGRAM_HEADERS {
        return Err(bad("has no usable program header table"));
    }
    let file_len = image.len() as u64;
    if phoff.checked_add((phnum * ph_size) as u64).is_none_or(|end| end > file_len) {
        return Err(bad("has its program header table outside the file"));
    }
    let mut pieces = Vec::new();
    let mut mapped_entry = None;
    for index in 0..phnum {
        let ph = &image[phoff as usize + index * ph_size..][..ph_size];
        let (kind, offset, vaddr, paddr, filesz, memsz) = if wide {
            (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 40))
        } else {
            let f = |o| u64::from(u32_at(ph, o));
            (u32_at(ph, 0), f(4), f(8), f(12), f(16), f(20))
        };
        match kind {
            PT_LOAD => {}
            PT_INTERP | PT_DYNAMIC => return Err(bad("is not static (PT_INTERP or PT_DYNAMIC)")),
            _ => continue,
        }
        if filesz > memsz || offset.checked_add(filesz).is_none_or(|end| end > file_len) {
            return Err(MultibootError::BadSegment { index });
        }
        if memsz == 0 {
            continue;
        }
        let Some(end) = paddr.checked_add(memsz) else {
            return Err(MultibootError::OutsideRam { start: paddr, end: u64::MAX, ram_end: FOUR_GIB });
        };
        if vaddr <= entry && entry - vaddr < memsz && mapped_entry.is_none() {
            mapped_entry = Some(paddr + (entry - vaddr));
        }
        pieces.push(Piece { at: paddr, file: offset as usize..(offset + filesz) as usize, zero: end - paddr - filesz });
    }
    if pieces.is_empty() {
        return Err(MultibootError::NothingLoaded);
    }
    let mut order: Vec<Range<u64>> = pieces.iter().map(Piece::memory).collect();
    order.sort_unstable_by_key(|r| r.start);
    if order.windows(2).any(|w| w[0].end > w[1].start) {
        return Err(MultibootError::SegmentsOverlap);
    }
    let entry = mapped_entry.unwrap_or(entry);
    let entry = u32::try_from(entry).map_err(|_| MultibootError::EntryOutside { entry })?;
    Ok(LoadPlan { pieces, entry })
}

/// Where the ramdisk goes: the first 4 KiB boundary after the kernel, so the
/// free memory after them is one piece (and flag 0 always holds).
pub fn module_place(plan: &LoadPlan, len: u64, memory: u64) -> Result<Range<u64>, MultibootError> {
    let start = plan.end().next_multiple_of(PAGE);
    // `mod_end` (one past the last byte) must fit in 32 bits too.
    let room = ram_end(memory).min(FOUR_GIB - 1).saturating_sub(start);
    if len > room {
        return Err(MultibootError::ModuleTooLarge { len, room });
    }
    Ok(start..start + len)
}

/// The boot information page, to be copied to `INFO_ADDR`: the information
/// structure (§3.3) with memory sizes, command line, module list (the ramdisk
/// as module 0, when there is one), memory map and boot loader name.
pub fn info_page(memory: u64, cmdline: &[u8], module: Option<Range<u64>>) -> Result<Vec<u8>, MultibootError> {
    if !memory.is_multiple_of(PAGE) || memory < KERNEL_MIN + PAGE {
        return Err(MultibootError::BadMemory { memory });
    }
    let len = cmdline.iter().position(|&b| b == 0).unwrap_or(cmdline.len());
    if len >= CMDLINE_LEN {
        return Err(MultibootError::CmdlineTooLong);
    }
    let mut p = alloc::vec![0u8; PAGE as usize];
    let addr = |o: usize| (INFO_ADDR as u32) + o as u32;
    let put32 = |p: &mut [u8], o: usize, v: u32| p[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let mut flags = info_flags::MEMORY | info_flags::CMDLINE | info_flags::MODS | info_flags::MMAP;
    flags |= info_flags::BOOT_LOADER_NAME;
    put32(&mut p, page::INFO, flags);
    put32(&mut p, page::INFO + 4, (LOWER_END / 1024) as u32);
    // KiB from 1 MiB to the first hole: the end of RAM. 4 TiB would overflow
    // it; domUs are far smaller (`boot::MAX_MEMORY`).
    put32(&mut p, page::INFO + 8, u32::try_from((memory - KERNEL_MIN) / 1024).unwrap_or(u32::MAX));
    put32(&mut p, page::INFO + 16, addr(page::CMDLINE));
    put32(&mut p, page::INFO + 20, u32::from(module.is_some()));
    put32(&mut p, page::INFO + 24, addr(page::MODS));
    let map = [
        (0, LOWER_END, MMAP_AVAILABLE),
        (BIOS_AREA.start, BIOS_AREA.end - BIOS_AREA.start, MMAP_RESERVED),
        (KERNEL_MIN, memory - KERNEL_MIN, MMAP_AVAILABLE),
    ];
    put32(&mut p, page::INFO + 44, (map.len() * page::MMAP_ENTRY) as u32);
    put32(&mut p, page::INFO + 48, addr(page::MMAP));
    put32(&mut p, page::INFO + 64, addr(page::BOOT_LOADER_NAME));
    if let Some(m) = module {
        // `module_place` kept it below 4 GiB.
        put32(&mut p, page::MODS, m.start as u32);
        put32(&mut p, page::MODS + 4, m.end as u32);
        put32(&mut p, page::MODS + 8, addr(page::MODULE_STRING));
    }
    for (i, (base, len, kind)) in map.into_iter().enumerate() {
        // `size` counts the entry's bytes after itself (§3.3).
        let o = page::MMAP + i * page::MMAP_ENTRY;
        put32(&mut p, o, (page::MMAP_ENTRY - 4) as u32);
        p[o + 4..o + 12].copy_from_slice(&base.to_le_bytes());
        p[o + 12..o + 20].copy_from_slice(&len.to_le_bytes());
        put32(&mut p, o + 20, kind);
    }
    p[page::BOOT_LOADER_NAME..][..BOOT_LOADER_NAME.len()].copy_from_slice(BOOT_LOADER_NAME);
    p[page::MODULE_STRING..][..MODULE_STRING.len()].copy_from_slice(MODULE_STRING);
    p[page::CMDLINE..][..len].copy_from_slice(&cmdline[..len]);
    Ok(p)
}

/// The boot state of §3.2: protected mode, EAX = the magic, EBX = the information.
pub fn entry_state(entry: u32) -> (InitialState, GuestGprs) {
    let state = InitialState { mode: EntryMode::Protected32, rip: entry.into(), rsp: 0 };
    let gprs = GuestGprs { rax: BOOTLOADER_MAGIC.into(), rbx: INFO_ADDR, ..GuestGprs::default() };
    (state, gprs)
}

/// Loads the Multiboot kernel `image` (and `ramdisk` as module 0) into `ram`,
/// a domain of `memory` bytes whose RAM is `[0, memory)`, and returns its
/// first vCPU's state. Everything is checked before the first write.
pub fn lay_out(
    image: &[u8],
    ramdisk: Option<&[u8]>,
    memory: u64,
    cmdline: &[u8],
    ram: &mut impl GuestRam,
) -> Result<(InitialState, GuestGprs), MultibootError> {
    let header = parse_header(image)?;
    let plan = load_plan(image, &header, memory)?;
    let module = ramdisk.map(|r| module_place(&plan, r.len() as u64, memory)).transpose()?;
    let info = info_page(memory, cmdline, module.clone())?;

    let fault = |_| MultibootError::Fault;
    for p in &plan.pieces {
        ram.write(p.at, &image[p.file.clone()]).map_err(fault)?;
        // The bss is zero even if the RAM was used before (a restart).
        let zeros = [0u8; 4096];
        let (mut at, end) = (p.at + p.file.len() as u64, p.memory().end);
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            ram.write(at, &zeros[..n as usize]).map_err(fault)?;
            at += n;
        }
    }
    if let (Some(r), Some(m)) = (ramdisk, &module) {
        ram.write(m.start, r).map_err(fault)?;
    }
    ram.write(INFO_ADDR, &info).map_err(fault)?;
    Ok(entry_state(plan.entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const MIB: u64 = 1 << 20;

    /// A domain's RAM on the host: `[0, len)`, anything else faults.
    struct FakeRam(Vec<u8>);

    impl GuestRam for FakeRam {
        fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Error> {
            let r = gpa as usize..gpa as usize + out.len();
            out.copy_from_slice(self.0.get(r).ok_or(Error::Fault)?);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error> {
            let r = gpa as usize..gpa as usize + data.len();
            self.0.get_mut(r).ok_or(Error::Fault)?.copy_from_slice(data);
            Ok(())
        }
    }

    fn header(flags: u32) -> [u32; 3] {
        [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)]
    }

    fn put(image: &mut [u8], at: usize, words: &[u32]) {
        for (i, w) in words.iter().enumerate() {
            image[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// A flat a.out-kludge image: `len` bytes of a counting pattern loaded at
    /// `load`, its header at file offset 0x40, the entry 0x80 in, `bss` bytes
    /// of bss.
    fn aout(load: u32, len: usize, bss: u32) -> Vec<u8> {
        let mut image: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        put(&mut image, 0x40, &header(flags::AOUT_KLUDGE | flags::PAGE_ALIGN | flags::MEMORY_INFO));
        let end = load + len as u32;
        put(&mut image, 0x4c, &[load + 0x40, load, end, end + bss, load + 0x80]);
        image
    }

    /// An ELF32 i386 executable with one PT_LOAD per (vaddr, paddr, filesz,
    /// memsz), each segment's bytes a pattern, and a bare Multiboot header
    /// (flags 0) at the start of the first segment's bytes.
    fn elf32(entry: u32, segs: &[(u32, u32, u32, u32)]) -> Vec<u8> {
        let phoff = 52usize;
        let mut data_at = (phoff + 32 * segs.len()).next_multiple_of(16);
        let mut image = vec![0u8; data_at];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4..7].copy_from_slice(&[1, 1, 1]);
        image[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        image[18..20].copy_from_slice(&EM_386.to_le_bytes());
        put(&mut image, 20, &[1, entry, phoff as u32]);
        image[42..44].copy_from_slice(&32u16.to_le_bytes());
        image[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(vaddr, paddr, filesz, memsz)) in segs.iter().enumerate() {
            let o = phoff + 32 * i;
            put(&mut image, o, &[PT_LOAD, data_at as u32, vaddr, paddr, filesz, memsz, 5, 0x1000]);
            image.extend((0..filesz).map(|b| (b as u8) ^ (i as u8 + 1)));
            data_at += filesz as usize;
        }
        let first = phoff + 32 * segs.len();
        let first = first.next_multiple_of(16);
        put(&mut image, first, &header(0));
        image
    }

    #[test]
    fn finds_the_header() {
        let image = aout(0x10_0000, 0x1000, 0);
        assert!(detect(&image));
        let h = parse_header(&image).unwrap();
        assert_eq!(h.offset, 0x40);
        assert_eq!(h.addresses.unwrap().load_addr, 0x10_0000);
        // A magic without its checksum is not a header; nor is one past 8 KiB.
        let mut bad = image.clone();
        bad[0x48] ^= 1;
        assert!(!detect(&bad));
        assert_eq!(parse_header(&bad), Err(MultibootError::NoHeader));
        let mut late = vec![0u8; SEARCH_BYTES];
        late.extend_from_slice(&image);
        assert!(!detect(&late));
        // The last place it fits: its 12 bytes end at 8 KiB.
        let mut edge = vec![0u8; SEARCH_BYTES + 64];
        put(&mut edge, SEARCH_BYTES - 12, &header(0));
        assert_eq!(parse_header(&edge).unwrap().offset, SEARCH_BYTES - 12);
        assert!(!detect(b""));
        assert!(!detect(&[0u8; 11]));
    }

    #[test]
    fn refuses_what_it_cannot_boot() {
        let mut image = vec![0u8; 0x200];
        put(&mut image, 0x42, &header(0));
        assert_eq!(parse_header(&image), Err(MultibootError::HeaderMisaligned { offset: 0x42 }));
        for (fl, want) in [
            (flags::VIDEO_MODE, MultibootError::VideoModeRequired),
            (flags::VIDEO_MODE | flags::AOUT_KLUDGE, MultibootError::VideoModeRequired),
            (1 << 3, MultibootError::UnknownRequiredFlags { bits: 1 << 3 }),
            (flags::MEMORY_INFO | 1 << 15, MultibootError::UnknownRequiredFlags { bits: 1 << 15 }),
        ] {
            let mut image = vec![0u8; 0x200];
            put(&mut image, 0x40, &header(fl));
            assert_eq!(parse_header(&image), Err(want), "flags {fl:#x}");
        }
        // Optional flags (16-31) it does not know are ignored.
        let mut image = vec![0u8; 0x200];
        put(&mut image, 0x40, &header(1 << 20 | flags::PAGE_ALIGN | flags::MEMORY_INFO));
        assert_eq!(parse_header(&image).unwrap().addresses, None);
        // The address fields must be in the file's first 8 KiB.
        let mut image = vec![0u8; 0x4c];
        put(&mut image, 0x40, &header(flags::AOUT_KLUDGE));
        assert_eq!(parse_header(&image), Err(MultibootError::HeaderTruncated { offset: 0x40, len: 32 }));
        let mut image = vec![0u8; SEARCH_BYTES + 0x100];
        put(&mut image, SEARCH_BYTES - 16, &header(flags::AOUT_KLUDGE));
        assert!(matches!(parse_header(&image), Err(MultibootError::HeaderTruncated { .. })));
        // No address fields and not ELF: nothing says where it goes.
        let mut image = vec![0u8; 0x200];
        put(&mut image, 0x40, &header(0));
        let h = parse_header(&image).unwrap();
        assert_eq!(load_plan(&image, &h, 64 * MIB), Err(MultibootError::NotElfNoAddresses));
    }

    #[test]
    fn aout_kludge_loads_at_its_addresses() {
        let image = aout(0x20_0000, 0x3000, 0x5000);
        let h = parse_header(&image).unwrap();
        let plan = load_plan(&image, &h, 64 * MIB).unwrap();
        assert_eq!(plan.pieces, vec![Piece { at: 0x20_0000, file: 0..0x3000, zero: 0x5000 }]);
        assert_eq!(plan.entry, 0x20_0080);
        assert_eq!(plan.end(), 0x20_8000);
        // The header may sit further in: the file before it is skipped.
        let mut image = vec![0xeeu8; 0x100];
        image.extend(aout(0x10_0000, 0x2000, 0));
        put(&mut image, 0x14c, &[0x10_0040, 0x10_0000, 0x10_2000, 0, 0x10_0010]);
        let plan = load_plan(&image, &parse_header(&image).unwrap(), 64 * MIB).unwrap();
        assert_eq!(plan.pieces, vec![Piece { at: 0x10_0000, file: 0x100..0x2100, zero: 0 }]);
        // load_end_addr 0: the rest of the file.
        put(&mut image, 0x154, &[0]);
        let plan = load_plan(&image, &parse_header(&image).unwrap(), 64 * MIB).unwrap();
        assert_eq!(plan.pieces[0].file, 0x100..image.len());
    }

    #[test]
    fn aout_kludge_errors() {
        let base = aout(0x10_0000, 0x2000, 0x1000);
        let with = |fields: [u32; 5]| {
            let mut image = base.clone();
            put(&mut image, 0x4c, &fields);
            let h = parse_header(&image).unwrap();
            load_plan(&image, &h, 16 * MIB)
        };
        let ok = [0x10_0040, 0x10_0000, 0x10_2000, 0x10_3000, 0x10_0080];
        assert!(with(ok).is_ok());
        // load_addr above header_addr, or more before the header than the file has.
        assert_eq!(
            with([0x10_0040, 0x10_0041, 0x10_2000, 0, 0x10_0080]),
            Err(MultibootError::BadHeaderAddr { header_addr: 0x10_0040, load_addr: 0x10_0041 })
        );
        assert!(matches!(with([0x10_0040, 0x0f_0000, 0, 0, 0x10_0080]), Err(MultibootError::BadHeaderAddr { .. })));
        assert!(matches!(with([0x10_0040, 0x10_0000, 0x0f_0000, 0, 0x10_0080]), Err(MultibootError::BadLoadRange { .. })));
        assert!(matches!(with([0x10_0040, 0x10_0000, 0x10_2000, 0x10_1000, 0x10_0080]), Err(MultibootError::BadLoadRange { .. })));
        assert_eq!(
            with([0x10_0040, 0x10_0000, 0x10_2001, 0, 0x10_0080]),
            Err(MultibootError::LoadPastFile { offset: 0, len: 0x2001, file_len: 0x2000 })
        );
        // Below 1 MiB, past the RAM, past 4 GiB.
        assert_eq!(
            with([0xf_0040, 0xf_0000, 0xf_2000, 0, 0xf_0080]),
            Err(MultibootError::OutsideRam { start: 0xf_0000, end: 0xf_2000, ram_end: 16 * MIB })
        );
        let top = 16 * MIB as u32;
        assert!(matches!(with([top - 0x1fc0, top - 0x2000, top, top + 1, top - 0x1f00]), Err(MultibootError::OutsideRam { .. })));
        assert!(with([top - 0x1fc0, top - 0x2000, top, top, top - 0x1f00]).is_ok());
        let mut image = base.clone();
        put(&mut image, 0x4c, &[0xffff_f040, 0xffff_f000, 0, 0, 0xffff_f080]);
        let h = parse_header(&image).unwrap();
        assert_eq!(
            load_plan(&image, &h, 8 << 30),
            Err(MultibootError::OutsideRam { start: 0xffff_f000, end: 0x1_0000_1000, ram_end: 1 << 32 })
        );
        // The entry must be in what is loaded (bss counts).
        assert_eq!(with([0x10_0040, 0x10_0000, 0x10_2000, 0x10_3000, 0x10_3000]), Err(MultibootError::EntryOutside { entry: 0x10_3000 }));
        assert!(with([0x10_0040, 0x10_0000, 0x10_2000, 0x10_3000, 0x10_2fff]).is_ok());
    }

    #[test]
    fn elf32_loads_at_physical_addresses() {
        // Linked high (0xc0100000), loaded low (1 MiB): the entry moves too.
        let image = elf32(0xc010_0010, &[(0xc010_0000, 0x10_0000, 0x100, 0x100), (0xc020_0000, 0x20_0000, 0x40, 0x3000)]);
        let h = parse_header(&image).unwrap();
        assert_eq!(h.addresses, None);
        let plan = load_plan(&image, &h, 8 * MIB).unwrap();
        assert_eq!(plan.entry, 0x10_0010);
        assert_eq!(plan.pieces.len(), 2);
        assert_eq!(plan.pieces[0].memory(), 0x10_0000..0x10_0100);
        assert_eq!((plan.pieces[1].file.len(), plan.pieces[1].zero), (0x40, 0x2fc0));
        assert_eq!(plan.end(), 0x20_3000);
        // Identity-linked: the entry stays.
        let image = elf32(0x10_0004, &[(0x10_0000, 0x10_0000, 0x100, 0x100)]);
        assert_eq!(load_plan(&image, &parse_header(&image).unwrap(), 8 * MIB).unwrap().entry, 0x10_0004);
    }

    #[test]
    fn elf_errors() {
        let plan = |image: &[u8]| load_plan(image, &parse_header(image).unwrap(), 8 * MIB);
        let good = elf32(0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x100)]);
        let patched = |at: usize, bytes: &[u8]| {
            let mut i = good.clone();
            i[at..at + bytes.len()].copy_from_slice(bytes);
            i
        };
        assert_eq!(plan(&patched(4, &[3])), Err(MultibootError::BadElf { why: "is neither ELF32 nor ELF64" }));
        assert_eq!(plan(&patched(5, &[2])), Err(MultibootError::BadElf { why: "is not little-endian" }));
        assert!(matches!(plan(&patched(16, &[3, 0])), Err(MultibootError::BadElf { .. })));
        assert!(matches!(plan(&patched(18, &[62, 0])), Err(MultibootError::BadElf { .. })));
        assert!(matches!(plan(&patched(42, &[56, 0])), Err(MultibootError::BadElf { .. })));
        assert!(matches!(plan(&patched(44, &[0, 1])), Err(MultibootError::BadElf { .. })));
        assert!(matches!(plan(&patched(52, &[PT_INTERP as u8])), Err(MultibootError::BadElf { .. })));
        // filesz > memsz, data past the file.
        assert_eq!(plan(&patched(52 + 16, &[0, 2])), Err(MultibootError::BadSegment { index: 0 }));
        assert_eq!(plan(&patched(52 + 4, &[0, 0x10])), Err(MultibootError::BadSegment { index: 0 }));
        // Nothing loaded: the only PT_LOAD turned into PT_NOTE.
        assert_eq!(plan(&patched(52, &[4])), Err(MultibootError::NothingLoaded));
        let image = elf32(0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x100), (0x10_0080, 0x10_0080, 0x10, 0x10)]);
        assert_eq!(plan(&image), Err(MultibootError::SegmentsOverlap));
        let image = elf32(0x8_0000, &[(0x8_0000, 0x8_0000, 0x100, 0x100)]);
        assert!(matches!(plan(&image), Err(MultibootError::OutsideRam { start: 0x8_0000, .. })));
        let image = elf32(0x10_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x100), (0x80_0000, 0x7f_f000, 0, 0x1001)]);
        assert_eq!(plan(&image), Err(MultibootError::OutsideRam { start: 0x7f_f000, end: 0x80_0001, ram_end: 8 * MIB }));
        let image = elf32(0x20_0000, &[(0x10_0000, 0x10_0000, 0x100, 0x100)]);
        assert_eq!(plan(&image), Err(MultibootError::EntryOutside { entry: 0x20_0000 }));
    }

    /// An ELF64 x86-64 file whose header has the address fields, as Oxen's
    /// own multiboot test guest is linked: the fields decide, not the ELF.
    #[test]
    fn elf64_with_address_fields_uses_the_fields() {
        let mut image = vec![0u8; 0x3000];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        put(&mut image, 0x1000, &header(flags::AOUT_KLUDGE | flags::PAGE_ALIGN));
        put(&mut image, 0x100c, &[0x10_0000, 0x10_0000, 0x10_1800, 0x10_4000, 0x10_0020]);
        let plan = load_plan(&image, &parse_header(&image).unwrap(), 8 * MIB).unwrap();
        assert_eq!(plan.pieces, vec![Piece { at: 0x10_0000, file: 0x1000..0x2800, zero: 0x2800 }]);
        assert_eq!(plan.entry, 0x10_0020);
    }

    /// Reads the information structure back as a kernel would, from RAM.
    struct Seen {
        flags: u32,
        mem_lower: u32,
        mem_upper: u32,
        cmdline: Vec<u8>,
        mods: Vec<(u32, u32, Vec<u8>)>,
        mmap: Vec<(u64, u64, u32)>,
        name: Vec<u8>,
    }

    fn seen(ram: &[u8], ebx: u64) -> Seen {
        let at = |a: u32| a as usize;
        let w = |a: usize| u32_at(ram, a);
        let cstr = |a: usize| ram[a..].iter().take_while(|&&b| b != 0).copied().collect::<Vec<u8>>();
        let i = ebx as usize;
        let mods = (0..w(i + 20) as usize)
            .map(|k| {
                let m = at(w(i + 24)) + 16 * k;
                (w(m), w(m + 4), cstr(at(w(m + 8))))
            })
            .collect();
        let mut mmap = Vec::new();
        let (mut e, end) = (at(w(i + 48)), at(w(i + 48)) + w(i + 44) as usize);
        while e < end {
            mmap.push((u64_at(ram, e + 4), u64_at(ram, e + 12), w(e + 20)));
            e += 4 + w(e) as usize;
        }
        Seen {
            flags: w(i),
            mem_lower: w(i + 4),
            mem_upper: w(i + 8),
            cmdline: cstr(at(w(i + 16))),
            mods,
            mmap,
            name: cstr(at(w(i + 64))),
        }
    }

    #[test]
    fn lays_out_kernel_module_and_information() {
        let memory = 64 * MIB;
        let kernel = aout(0x10_0000, 0x2345, 0x1000);
        let ramdisk: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut ram = FakeRam(vec![0xaa; memory as usize]);
        let (state, gprs) = lay_out(&kernel, Some(&ramdisk), memory, b"console=x a=b\0junk", &mut ram).unwrap();
        assert_eq!(state.mode, EntryMode::Protected32);
        assert_eq!((state.rip, state.rsp), (0x10_0080, 0));
        assert_eq!((gprs.rax, gprs.rbx), (0x2bad_b002, 0x8000));
        assert_eq!(GuestGprs { rax: 0, rbx: 0, ..gprs }, GuestGprs::default());
        let ram = ram.0;
        // The kernel, then its bss zeroed over the old contents.
        assert_eq!(&ram[0x10_0000..0x10_2345], &kernel[..]);
        assert!(ram[0x10_2345..0x10_3345].iter().all(|&b| b == 0));
        assert_eq!(ram[0x10_3345], 0xaa);
        let s = seen(&ram, gprs.rbx);
        let want = info_flags::MEMORY | info_flags::CMDLINE | info_flags::MODS | info_flags::MMAP | info_flags::BOOT_LOADER_NAME;
        assert_eq!(s.flags, want);
        assert_eq!(want, 0x24d, "docs/hypercalls.md says so");
        assert_eq!((s.mem_lower, s.mem_upper), (640, 63 * 1024));
        assert_eq!(s.cmdline, b"console=x a=b");
        assert_eq!(s.name, b"Oxen");
        // Module 0, page aligned right after the kernel's bss.
        assert_eq!(s.mods, vec![(0x10_4000, 0x10_4000 + 10_000, b"ramdisk".to_vec())]);
        assert_eq!(&ram[0x10_4000..0x10_4000 + 10_000], &ramdisk[..]);
        assert_eq!(
            s.mmap,
            vec![(0, 0xa_0000, MMAP_AVAILABLE), (0xe_0000, 0x2_0000, MMAP_RESERVED), (MIB, 63 * MIB, MMAP_AVAILABLE)]
        );
        // Fields past those flagged (boot device, syms, drives, APM, VBE, framebuffer) are zero.
        let info = &ram[INFO_ADDR as usize..][..page::INFO_LEN];
        assert!(info[12..16].iter().chain(&info[28..44]).chain(&info[52..64]).chain(&info[68..]).all(|&b| b == 0));
    }

    #[test]
    fn no_ramdisk_no_module() {
        let kernel = aout(0x10_0000, 0x1000, 0);
        let mut ram = FakeRam(vec![0; 8 * MIB as usize]);
        let (_, gprs) = lay_out(&kernel, None, 8 * MIB, b"", &mut ram).unwrap();
        let s = seen(&ram.0, gprs.rbx);
        assert!(s.mods.is_empty());
        assert_eq!(s.cmdline, b"");
        assert_eq!(s.mem_upper, 7 * 1024);
    }

    #[test]
    fn size_and_command_line_errors() {
        let kernel = aout(0x10_0000, 0x1000, 0);
        let plan = load_plan(&kernel, &parse_header(&kernel).unwrap(), 4 * MIB).unwrap();
        assert_eq!(module_place(&plan, 3 * MIB - 0x1000, 4 * MIB), Ok(0x10_1000..4 * MIB));
        assert_eq!(module_place(&plan, 3 * MIB, 4 * MIB), Err(MultibootError::ModuleTooLarge { len: 3 * MIB, room: 3 * MIB - 0x1000 }));
        // A module never reaches past 4 GiB, however big the domain.
        let room = (1u64 << 32) - 1 - 0x10_1000;
        assert_eq!(module_place(&plan, room, 8 << 30), Ok(0x10_1000..0xffff_ffff));
        assert_eq!(module_place(&plan, room + 1, 8 << 30), Err(MultibootError::ModuleTooLarge { len: room + 1, room }));
        let mut ram = FakeRam(vec![0; 4 * MIB as usize]);
        let e = lay_out(&kernel, Some(&vec![0; 3 * MIB as usize]), 4 * MIB, b"", &mut ram).unwrap_err();
        assert_eq!(e.errno(), Error::NoMem);
        assert!(ram.0.iter().all(|&b| b == 0), "nothing written before everything is checked");
        assert!(info_page(4 * MIB, &[b'x'; CMDLINE_LEN - 1], None).is_ok());
        let e = info_page(4 * MIB, &[b'x'; CMDLINE_LEN], None).unwrap_err();
        assert_eq!((e, e.errno()), (MultibootError::CmdlineTooLong, Error::Inval));
        assert_eq!(info_page(4 * MIB + 1, b"", None), Err(MultibootError::BadMemory { memory: 4 * MIB + 1 }));
        assert_eq!(info_page(MIB, b"", None), Err(MultibootError::BadMemory { memory: MIB }));
        // Memory past 4 GiB is reported whole.
        let p = info_page(6 << 30, b"", None).unwrap();
        assert_eq!(u32_at(&p, 8), (((6u64 << 30) - MIB) / 1024) as u32);
        assert_eq!(u64_at(&p, page::MMAP + 2 * 24 + 12), (6u64 << 30) - MIB);
    }

    #[test]
    fn messages_say_why() {
        let text = |e: MultibootError| alloc::format!("{e}");
        assert_eq!(text(MultibootError::VideoModeRequired), "multiboot kernel: it requires a video mode (flag 2); a domU has no display");
        assert_eq!(
            text(MultibootError::OutsideRam { start: 0x8_0000, end: 0x9_0000, ram_end: 0x400_0000 }),
            "multiboot kernel: loads at 0x80000-0x90000, outside 0x100000-0x4000000 (1 MiB up to the domain's memory and 4 GiB)"
        );
        assert_eq!(text(MultibootError::HeaderMisaligned { offset: 0x42 }), "multiboot kernel: header at offset 0x42 is not 4-byte aligned");
        assert_eq!(MultibootError::VideoModeRequired.errno(), Error::NoExec);
    }

    /// Every byte of the first 256 and of the header changed, and every
    /// truncation: an error or a plan inside the RAM, never a panic.
    #[test]
    fn mutated_images_never_panic() {
        let images = [aout(0x10_0000, 0x300, 0x100), elf32(0x10_0010, &[(0x10_0000, 0x10_0000, 0x100, 0x200)])];
        let mut ram = FakeRam(vec![0; 4 * MIB as usize]);
        let mut seed = 0x1234_5678u32;
        for base in &images {
            for len in 0..base.len().min(0x120) {
                let _ = lay_out(&base[..len], None, 4 * MIB, b"", &mut ram);
            }
            for at in 0..0x100.min(base.len()) {
                for _ in 0..8 {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let mut image = base.clone();
                    image[at] = (seed >> 16) as u8;
                    if let Ok((state, _)) = lay_out(&image, Some(b"rd"), 4 * MIB, b"", &mut ram) {
                        assert!((KERNEL_MIN..4 * MIB).contains(&state.rip));
                    }
                }
            }
        }
    }
}
