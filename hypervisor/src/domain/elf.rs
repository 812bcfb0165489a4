//! domU kernels: ELF64 x86-64 executables (`ET_EXEC`), loaded by their program
//! headers at their physical addresses.
//!
//! The image comes from dom0 (`domctl::LOAD_IMAGE`), so every field is checked
//! before it is used and every sum is checked: a malformed image is an
//! `ElfError` naming the field, never a panic or an access outside `image`.
//! What `parse` accepts can be copied into a domain without further checks:
//! each segment's file bytes are inside the image, its memory inside the window
//! the caller gave, no two segments overlap, and the entry point is inside the
//! file-backed part of an executable segment.

use crate::mem::GuestPhysAddr;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// `e_ident` and the header fields Oxen requires (System V gABI, "ELF Header";
/// the x86-64 psABI for `EM_X86_64`).
const MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Program header types (gABI, "Program Header").
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

/// Segment permission bits (`p_flags`).
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// More program headers than any kernel Oxen boots needs; bounds the work done
/// on an image (`e_phnum` = 0xffff, extended numbering, is refused by it too).
pub const MAX_PROGRAM_HEADERS: u16 = 64;

/// One `PT_LOAD` segment: `filesz` bytes from `file_offset` in the image go to
/// guest-physical `paddr`, and the rest up to `memsz` is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: GuestPhysAddr,
    /// Where the image is linked to run (`p_vaddr`); Oxen's own kernels run
    /// identity mapped, Linux's `vmlinux` in its kernel mapping.
    pub vaddr: u64,
    pub file_offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// `PF_R | PF_W | PF_X` as the image gives them (informational: the boot
    /// page tables map all RAM read-write-execute).
    pub flags: u32,
}

impl Segment {
    /// Where the segment's file bytes are in the image (checked by `parse`).
    pub fn file_range(&self) -> Range<usize> {
        self.file_offset as usize..(self.file_offset + self.filesz) as usize
    }

    /// The guest-physical memory it occupies, `[paddr, paddr + memsz)`.
    pub fn memory(&self) -> Range<GuestPhysAddr> {
        self.paddr..GuestPhysAddr::new(self.paddr.as_u64() + self.memsz)
    }
}

/// A kernel `parse` accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The first RIP. The boot page tables are an identity map, so this is
    /// also a guest-physical address, inside an executable segment's file bytes.
    pub entry: u64,
    /// The `PT_LOAD` segments with a non-zero `memsz`, in program-header order.
    pub segments: Vec<Segment>,
}

/// Where x86-64 Linux maps its kernel image: virtual `KERNEL_MAP + physical`
/// (`__START_KERNEL_map`, Documentation/arch/x86/x86_64/mm.rst).
pub const LINUX_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

impl Kernel {
    /// Whether this is an x86-64 Linux `vmlinux`: its entry point's segment is
    /// linked in Linux's kernel mapping (its other segments may not be:
    /// `.data..percpu` is linked at 0).
    pub fn is_linux(&self) -> bool {
        self.segments.iter().any(|s| {
            s.flags & PF_X != 0
                && (s.paddr.as_u64()..s.paddr.as_u64() + s.filesz).contains(&self.entry)
                && s.vaddr == LINUX_KERNEL_MAP.wrapping_add(s.paddr.as_u64())
        })
    }

    /// The lowest and the end of the highest guest-physical byte it loads.
    pub fn extent(&self) -> Range<GuestPhysAddr> {
        let start = self.segments.iter().map(|s| s.paddr).min().unwrap_or_default();
        let end = self.segments.iter().map(|s| s.memory().end).max().unwrap_or_default();
        start..end
    }
}

/// Why an image is not a kernel Oxen can boot. Offsets and addresses are the
/// image's own values, for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF header.
    TooShort { len: usize },
    /// `e_ident` does not start with 0x7f 'E' 'L' 'F'.
    BadMagic,
    /// `EI_CLASS` is not ELFCLASS64.
    NotElf64 { class: u8 },
    /// `EI_DATA` is not little endian.
    NotLittleEndian { data: u8 },
    /// `EI_VERSION` or `e_version` is not 1 (EV_CURRENT).
    BadVersion { version: u32 },
    /// `e_type` is not ET_EXEC (ET_DYN: a position-independent executable).
    NotExecutable { e_type: u16 },
    /// `e_machine` is not EM_X86_64.
    NotX86_64 { machine: u16 },
    /// `e_phentsize` is not the ELF64 program-header size, 56.
    BadProgramHeaderSize { size: u16 },
    NoProgramHeaders,
    TooManyProgramHeaders { count: u16 },
    /// The program-header table is not inside the image.
    ProgramHeadersOutsideImage { offset: u64, count: u16 },
    /// A `PT_INTERP` or `PT_DYNAMIC` header: it needs a dynamic loader.
    NotStatic { index: usize },
    /// A `PT_LOAD` header with `p_filesz > p_memsz`.
    FileszOverMemsz { index: usize, filesz: u64, memsz: u64 },
    /// A `PT_LOAD` header's file bytes are not inside the image.
    SegmentOutsideImage { index: usize, offset: u64, filesz: u64 },
    /// A `PT_LOAD` header's memory is not inside the load window.
    SegmentOutsideWindow { index: usize, paddr: u64, memsz: u64, window: (u64, u64) },
    /// Two `PT_LOAD` headers' memory overlaps.
    SegmentsOverlap { first: usize, second: usize },
    /// No `PT_LOAD` header with memory.
    NoLoadableSegments,
    /// `e_entry` is not inside the file bytes of an executable (`PF_X`) segment.
    EntryNotInCode { entry: u64 },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(f, "image is {len} bytes, shorter than an ELF64 header ({EHDR_SIZE})"),
            Self::BadMagic => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::NotElf64 { class } => write!(f, "ELF class {class} is not ELFCLASS64 (2)"),
            Self::NotLittleEndian { data } => write!(f, "ELF data encoding {data} is not little endian (1)"),
            Self::BadVersion { version } => write!(f, "ELF version {version} is not EV_CURRENT (1)"),
            Self::NotExecutable { e_type: ET_DYN } => {
                write!(f, "e_type ET_DYN: a position-independent executable, link it static (ET_EXEC)")
            }
            Self::NotExecutable { e_type } => write!(f, "e_type {e_type} is not ET_EXEC (2)"),
            Self::NotX86_64 { machine } => write!(f, "e_machine {machine} is not EM_X86_64 (62)"),
            Self::BadProgramHeaderSize { size } => {
                write!(f, "e_phentsize {size} is not the ELF64 program-header size ({PHDR_SIZE})")
            }
            Self::NoProgramHeaders => write!(f, "no program headers"),
            Self::TooManyProgramHeaders { count } => {
                write!(f, "{count} program headers, more than the {MAX_PROGRAM_HEADERS} allowed")
            }
            Self::ProgramHeadersOutsideImage { offset, count } => {
                write!(f, "program-header table ({count} at offset {offset:#x}) runs past the end of the image")
            }
            Self::NotStatic { index } => {
                write!(f, "program header {index} asks for a dynamic loader (PT_INTERP/PT_DYNAMIC): link it static")
            }
            Self::FileszOverMemsz { index, filesz, memsz } => {
                write!(f, "segment {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}")
            }
            Self::SegmentOutsideImage { index, offset, filesz } => {
                write!(f, "segment {index}: file bytes {offset:#x}+{filesz:#x} run past the end of the image")
            }
            Self::SegmentOutsideWindow { index, paddr, memsz, window: (lo, hi) } => write!(
                f,
                "segment {index}: physical {paddr:#x}+{memsz:#x} is outside the kernel's window {lo:#x}-{hi:#x}"
            ),
            Self::SegmentsOverlap { first, second } => write!(f, "segments {first} and {second} overlap"),
            Self::NoLoadableSegments => write!(f, "no PT_LOAD segment with memory"),
            Self::EntryNotInCode { entry } => {
                write!(f, "entry point {entry:#x} is not inside the file bytes of an executable segment")
            }
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

/// Checks `image` and returns its entry point and loadable segments, each of
/// which must lie inside `window` (guest-physical; for a domU
/// `boot::Layout::kernel_window`).
pub fn parse(image: &[u8], window: Range<GuestPhysAddr>) -> Result<Kernel, ElfError> {
    if image.len() < EHDR_SIZE {
        return Err(ElfError::TooShort { len: image.len() });
    }
    if image[..4] != MAGIC {
        return Err(ElfError::BadMagic);
    }
    if image[4] != ELFCLASS64 {
        return Err(ElfError::NotElf64 { class: image[4] });
    }
    if image[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian { data: image[5] });
    }
    if image[6] != EV_CURRENT {
        return Err(ElfError::BadVersion { version: image[6].into() });
    }
    let e_type = u16_at(image, 16);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type });
    }
    let machine = u16_at(image, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::NotX86_64 { machine });
    }
    let version = u32_at(image, 20);
    if version != u32::from(EV_CURRENT) {
        return Err(ElfError::BadVersion { version });
    }
    let entry = u64_at(image, 24);
    let phoff = u64_at(image, 32);
    let phentsize = u16_at(image, 54);
    let phnum = u16_at(image, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::BadProgramHeaderSize { size: phentsize });
    }
    if phnum == 0 {
        return Err(ElfError::NoProgramHeaders);
    }
    if phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::TooManyProgramHeaders { count: phnum });
    }
    let image_len = image.len() as u64;
    let table_len = u64::from(phnum) * PHDR_SIZE as u64;
    if phoff.checked_add(table_len).is_none_or(|end| end > image_len) {
        return Err(ElfError::ProgramHeadersOutsideImage { offset: phoff, count: phnum });
    }

    let (lo, hi) = (window.start.as_u64(), window.end.as_u64());
    let mut segments = Vec::new();
    // Header index of each segment, for messages.
    let mut indices = Vec::new();
    for index in 0..usize::from(phnum) {
        // In bounds: the table end was checked against the image above.
        let ph = &image[phoff as usize + index * PHDR_SIZE..][..PHDR_SIZE];
        match u32_at(ph, 0) {
            PT_LOAD => {}
            PT_INTERP | PT_DYNAMIC => return Err(ElfError::NotStatic { index }),
            _ => continue,
        }
        let flags = u32_at(ph, 4);
        let offset = u64_at(ph, 8);
        let vaddr = u64_at(ph, 16);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(ElfError::FileszOverMemsz { index, filesz, memsz });
        }
        if offset.checked_add(filesz).is_none_or(|end| end > image_len) {
            return Err(ElfError::SegmentOutsideImage { index, offset, filesz });
        }
        if memsz == 0 {
            continue;
        }
        if paddr < lo || paddr.checked_add(memsz).is_none_or(|end| end > hi) {
            return Err(ElfError::SegmentOutsideWindow { index, paddr, memsz, window: (lo, hi) });
        }
        segments.push(Segment { paddr: GuestPhysAddr::new(paddr), vaddr, file_offset: offset, filesz, memsz, flags });
        indices.push(index);
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegments);
    }

    // Sorted by address, each must end before the next begins.
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_unstable_by_key(|&i| segments[i].paddr);
    for pair in order.windows(2) {
        let (a, b) = (&segments[pair[0]], &segments[pair[1]]);
        if a.memory().end > b.paddr {
            let (x, y) = (indices[pair[0]], indices[pair[1]]);
            return Err(ElfError::SegmentsOverlap { first: x.min(y), second: x.max(y) });
        }
    }

    let in_code = |s: &Segment| {
        s.flags & PF_X != 0 && (s.paddr.as_u64()..s.paddr.as_u64() + s.filesz).contains(&entry)
    };
    if !segments.iter().any(in_code) {
        return Err(ElfError::EntryNotInCode { entry });
    }
    Ok(Kernel { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn window() -> Range<GuestPhysAddr> {
        GuestPhysAddr::new(MIB)..GuestPhysAddr::new(16 * MIB - 0x15000)
    }

    /// One program header: (type, flags, offset, paddr, filesz, memsz).
    type Ph = (u32, u32, u64, u64, u64, u64);

    /// An ELF64 executable: the header, `phdrs` right after it, then `payload`.
    fn elf(entry: u64, phdrs: &[Ph], payload: &[u8]) -> Vec<u8> {
        let mut b = alloc::vec![0u8; EHDR_SIZE];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = ELFCLASS64;
        b[5] = ELFDATA2LSB;
        b[6] = EV_CURRENT;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(ty, flags, offset, paddr, filesz, memsz) in phdrs {
            let mut p = [0u8; PHDR_SIZE];
            p[0..4].copy_from_slice(&ty.to_le_bytes());
            p[4..8].copy_from_slice(&flags.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&paddr.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            b.extend_from_slice(&p);
        }
        b.extend_from_slice(payload);
        b
    }

    /// A small guest: code at 1 MiB (`mov eax, 1; vmcall; hlt`), data with
    /// .bss after it at 1 MiB + 4 KiB, and a PT_GNU_STACK header to skip.
    fn sample() -> Vec<u8> {
        let payload_at = (EHDR_SIZE + 3 * PHDR_SIZE) as u64;
        let code: &[u8] = &[0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x01, 0xc1, 0xf4];
        let data: &[u8] = b"hello";
        let mut payload = code.to_vec();
        payload.extend_from_slice(data);
        elf(
            MIB,
            &[
                (PT_LOAD, PF_R | PF_X, payload_at, MIB, code.len() as u64, code.len() as u64),
                (PT_LOAD, PF_R | PF_W, payload_at + code.len() as u64, MIB + 0x1000, data.len() as u64, 0x3000),
                (0x6474_e551, PF_R | PF_W, 0, 0, 0, 0),
            ],
            &payload,
        )
    }

    #[test]
    fn parses_a_static_executable() {
        let image = sample();
        let k = parse(&image, window()).unwrap();
        assert_eq!(k.entry, MIB);
        assert_eq!(k.segments.len(), 2);
        let text = k.segments[0];
        assert_eq!(text.paddr, GuestPhysAddr::new(MIB));
        assert_eq!(text.flags, PF_R | PF_X);
        assert_eq!(&image[text.file_range()], &[0xb8, 1, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xf4]);
        let data = k.segments[1];
        assert_eq!(&image[data.file_range()], b"hello");
        assert_eq!((data.filesz, data.memsz), (5, 0x3000));
        assert_eq!(k.extent(), GuestPhysAddr::new(MIB)..GuestPhysAddr::new(MIB + 0x4000));
    }

    #[test]
    fn tells_a_linux_vmlinux_by_its_kernel_mapping() {
        assert!(!parse(&sample(), window()).unwrap().is_linux());
        // The code segment linked at __START_KERNEL_map + its physical address.
        let image = patched(ph(0, 16), &(LINUX_KERNEL_MAP + MIB).to_le_bytes());
        let k = parse(&image, window()).unwrap();
        assert!(k.is_linux());
        assert_eq!(k.segments[0].vaddr, LINUX_KERNEL_MAP + MIB);
        // Only the data segment there: the entry's segment decides.
        let image = patched(ph(1, 16), &(LINUX_KERNEL_MAP + MIB + 0x1000).to_le_bytes());
        assert!(!parse(&image, window()).unwrap().is_linux());
    }

    /// `sample()` with one header field changed.
    fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut image = sample();
        image[at..at + bytes.len()].copy_from_slice(bytes);
        image
    }

    /// Offset of field `field` of program header `i` in `sample()`.
    fn ph(i: usize, field: usize) -> usize {
        EHDR_SIZE + i * PHDR_SIZE + field
    }

    #[test]
    fn header_errors() {
        let w = window();
        assert_eq!(parse(&sample()[..63], w.clone()), Err(ElfError::TooShort { len: 63 }));
        assert_eq!(parse(&patched(1, b"X"), w.clone()), Err(ElfError::BadMagic));
        assert_eq!(parse(&patched(4, &[1]), w.clone()), Err(ElfError::NotElf64 { class: 1 }));
        assert_eq!(parse(&patched(5, &[2]), w.clone()), Err(ElfError::NotLittleEndian { data: 2 }));
        assert_eq!(parse(&patched(6, &[0]), w.clone()), Err(ElfError::BadVersion { version: 0 }));
        assert_eq!(parse(&patched(20, &[2, 0, 0, 0]), w.clone()), Err(ElfError::BadVersion { version: 2 }));
        assert_eq!(parse(&patched(16, &[3, 0]), w.clone()), Err(ElfError::NotExecutable { e_type: 3 }));
        assert_eq!(parse(&patched(18, &[3, 0]), w.clone()), Err(ElfError::NotX86_64 { machine: 3 }));
        assert_eq!(parse(&patched(54, &[32, 0]), w.clone()), Err(ElfError::BadProgramHeaderSize { size: 32 }));
        assert_eq!(parse(&patched(56, &[0, 0]), w.clone()), Err(ElfError::NoProgramHeaders));
        assert_eq!(
            parse(&patched(56, &[0xff, 0xff]), w.clone()),
            Err(ElfError::TooManyProgramHeaders { count: 0xffff })
        );
        assert_eq!(
            parse(&patched(56, &[64, 0]), w.clone()),
            Err(ElfError::ProgramHeadersOutsideImage { offset: 64, count: 64 })
        );
        // A table offset so large that offset + size wraps.
        assert_eq!(
            parse(&patched(32, &u64::MAX.to_le_bytes()), w.clone()),
            Err(ElfError::ProgramHeadersOutsideImage { offset: u64::MAX, count: 3 })
        );
    }

    #[test]
    fn segment_errors() {
        let w = window();
        assert_eq!(parse(&patched(ph(0, 0), &[PT_INTERP as u8]), w.clone()), Err(ElfError::NotStatic { index: 0 }));
        let dynamic = patched(ph(2, 0), &[PT_DYNAMIC as u8, 0, 0, 0]);
        assert_eq!(parse(&dynamic, w.clone()), Err(ElfError::NotStatic { index: 2 }));
        assert_eq!(
            parse(&patched(ph(1, 32), &0x4000u64.to_le_bytes()), w.clone()),
            Err(ElfError::FileszOverMemsz { index: 1, filesz: 0x4000, memsz: 0x3000 })
        );
        let len = sample().len() as u64;
        assert_eq!(
            parse(&patched(ph(0, 8), &len.to_le_bytes()), w.clone()),
            Err(ElfError::SegmentOutsideImage { index: 0, offset: len, filesz: 9 })
        );
        assert_eq!(
            parse(&patched(ph(0, 8), &(u64::MAX - 4).to_le_bytes()), w.clone()),
            Err(ElfError::SegmentOutsideImage { index: 0, offset: u64::MAX - 4, filesz: 9 })
        );
        // Below the window, past its end, and wrapping the address space.
        let (lo, hi) = (w.start.as_u64(), w.end.as_u64());
        for (paddr, memsz) in [(lo - 0x1000, 9u64), (hi - 8, 9), (u64::MAX - 4, 9)] {
            let mut image = patched(ph(0, 24), &paddr.to_le_bytes());
            image[ph(0, 40)..ph(0, 48)].copy_from_slice(&memsz.to_le_bytes());
            assert_eq!(
                parse(&image, w.clone()),
                Err(ElfError::SegmentOutsideWindow { index: 0, paddr, memsz, window: (lo, hi) }),
                "{paddr:#x}"
            );
        }
        // Data moved onto the code page.
        assert_eq!(
            parse(&patched(ph(1, 24), &(MIB + 8).to_le_bytes()), w.clone()),
            Err(ElfError::SegmentsOverlap { first: 0, second: 1 })
        );
        // Ending exactly where the next begins is fine.
        let image = patched(ph(1, 24), &(MIB + 9).to_le_bytes());
        assert_eq!(parse(&image, w.clone()).unwrap().segments[1].paddr, GuestPhysAddr::new(MIB + 9));
        // Only empty or non-PT_LOAD headers.
        let mut image = patched(ph(0, 40), &0u64.to_le_bytes());
        image[ph(0, 32)..ph(0, 40)].copy_from_slice(&0u64.to_le_bytes());
        image[ph(1, 0)] = 4; // PT_NOTE
        assert_eq!(parse(&image, w.clone()), Err(ElfError::NoLoadableSegments));
    }

    #[test]
    fn entry_must_be_in_loaded_code() {
        let w = window();
        // In the data segment, past the code's file bytes, outside everything.
        for entry in [MIB + 0x1000, MIB + 9, 0x1234] {
            assert_eq!(
                parse(&patched(24, &entry.to_le_bytes()), w.clone()),
                Err(ElfError::EntryNotInCode { entry })
            );
        }
        // The code segment without PF_X.
        assert_eq!(parse(&patched(ph(0, 4), &[PF_R as u8]), w.clone()), Err(ElfError::EntryNotInCode { entry: MIB }));
        assert!(parse(&patched(24, &(MIB + 8).to_le_bytes()), w).is_ok());
    }

    #[test]
    fn messages_name_the_problem() {
        let e = ElfError::SegmentOutsideWindow { index: 1, paddr: 0x1000, memsz: 0x10, window: (MIB, 2 * MIB) };
        assert_eq!(
            alloc::format!("{e}"),
            "segment 1: physical 0x1000+0x10 is outside the kernel's window 0x100000-0x200000"
        );
        assert!(alloc::format!("{}", ElfError::NotExecutable { e_type: ET_DYN }).contains("position-independent"));
    }

    /// Random corruption of a valid image (bytes, header fields set to edge
    /// values, truncation) never panics, and whatever is still accepted keeps
    /// every promise `parse` makes.
    #[test]
    fn mutated_images_never_panic() {
        let mut next = crate::emulate::testmem::xorshift(0x5eed_e1f0_0dd5_1ce5u64);
        let base = sample();
        let w = window();
        let edges = [0u64, 1, 56, 64, MIB, MIB + 9, w.end.as_u64(), 1 << 63, u64::MAX, u64::MAX - 55];
        let mut accepted = 0;
        for _ in 0..50_000 {
            let mut image = base.clone();
            for _ in 0..1 + next() % 4 {
                let r = next();
                match r % 4 {
                    0 if !image.is_empty() => {
                        let at = (r >> 8) as usize % image.len();
                        image[at] = (r >> 32) as u8;
                    }
                    0 => {}
                    1 | 2 => {
                        // An edge value over a header field (2, 4 or 8 bytes).
                        let span = (EHDR_SIZE + 3 * PHDR_SIZE).min(image.len());
                        if span >= 8 {
                            let at = ((r >> 8) as usize % (span - 7)) & !1;
                            let v = edges[(r >> 40) as usize % edges.len()];
                            let n = [2, 4, 8][(r >> 20) as usize % 3];
                            image[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
                        }
                    }
                    _ => image.truncate((r >> 8) as usize % (image.len() + 1)),
                }
            }
            if let Ok(k) = parse(&image, w.clone()) {
                accepted += 1;
                for s in &k.segments {
                    assert!(s.file_range().end <= image.len() && s.filesz <= s.memsz);
                    assert!(w.start <= s.paddr && s.memory().end <= w.end);
                }
                let mut spans: Vec<_> = k.segments.iter().map(|s| s.memory()).collect();
                spans.sort_by_key(|r| r.start);
                assert!(spans.windows(2).all(|p| p[0].end <= p[1].start));
                assert!(k.segments.iter().any(|s| s.flags & PF_X != 0
                    && (s.paddr.as_u64()..s.paddr.as_u64() + s.filesz).contains(&k.entry)));
            }
        }
        // The mutations are mostly harmless enough that some images survive.
        assert!(accepted > 100, "{accepted}");
    }
}
