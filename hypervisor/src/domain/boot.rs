//! Where a domU's boot pieces go in its memory (docs/hypercalls.md, "domU boot
//! state"). Pure: `plan` computes the layout, the other functions the bytes the
//! domain builder copies into the domain's (zeroed) memory.
//!
//! A domU's RAM is guest-physical `[0, memory_bytes)`. The hypervisor's boot
//! area sits at its top, in this order from `boot_area` up:
//!
//! | what | size |
//! |---|---|
//! | stack (RSP = its top) | 64 KiB |
//! | `StartInfo` (RDI) | 4 KiB |
//! | GDT (4 entries, as dom0's) | 4 KiB |
//! | PML4, PDPT, one PD per GiB begun, a page table if RAM ends inside a 2 MiB page (CR3 = the PML4) | 4 KiB each |
//!
//! so the tables end exactly at `memory_bytes`. A ramdisk goes just below
//! `boot_area`, page aligned; the kernel loads at or above 1 MiB, below the
//! ramdisk (or `boot_area` when there is none).
//!
//! The builder, in order:
//! 1. `let layout = boot::plan(memory_bytes, ramdisk.len())?;`
//! 2. `let kernel = elf::parse(image, layout.kernel_window())?;` then
//!    `layout.check_kernel(&kernel)?;`
//! 3. into the zeroed memory: each segment's `image[s.file_range()]` at
//!    `s.paddr` (the rest of `memsz` stays zero), the ramdisk at
//!    `layout.ramdisk`, `layout.page_table_image()` at `layout.page_tables`,
//!    `gdt_image()` at `layout.gdt`, `layout.start_info(vcpus, &cmdline)?` (as
//!    bytes, `oxen_abi::Pod`) at `layout.start_info`;
//! 4. vCPU 0: `EntryMode::Linux64 { cr3: layout.page_tables, gdt_base:
//!    layout.gdt, gdt_limit: GDT_LIMIT }`, RIP = `kernel.entry`, RSP =
//!    `layout.stack_top`, RDI = `layout.start_info`.
//!
//! `ElfError` and the `Kernel*` errors mean the image cannot be booted
//! (`-ENOEXEC`); the others that the domain's size or ramdisk are wrong.

use super::elf::Kernel;
use crate::dom0::layout::{identity_map, identity_map_bytes, GDT_ENTRIES};
use crate::mem::{GuestPhysAddr, PAGE_SIZE};
use core::fmt;
use core::ops::Range;
use oxen_abi::{StartInfo, ABI_VERSION, CMDLINE_LEN, START_INFO_MAGIC};

pub use crate::dom0::layout::{BOOT_CS, BOOT_DS};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The lowest address a kernel segment may load at: the first MiB stays free
/// (the place real-mode code such as an AP trampoline would need).
pub const KERNEL_MIN: u64 = MIB;
/// The boot stack's size.
pub const STACK_SIZE: u64 = 64 * 1024;
/// Bytes of the boot area before the page tables: stack, `StartInfo` page, GDT page.
const FIXED_BYTES: u64 = STACK_SIZE + 2 * PAGE_SIZE;
/// The least memory `plan` accepts: 1 MiB, one page of kernel, and the boot
/// area with its largest tables for that size (PML4, PDPT, PD and page table).
pub const MIN_MEMORY: u64 = KERNEL_MIN + PAGE_SIZE + FIXED_BYTES + 4 * PAGE_SIZE;
/// The boot page tables use one PDPT: at most 512 GiB of RAM.
pub const MAX_MEMORY: u64 = 512 * GIB;
/// GDTR limit of the boot GDT.
pub const GDT_LIMIT: u16 = (GDT_ENTRIES.len() * 8 - 1) as u16;

/// A domU's boot layout; every address guest-physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub memory_bytes: u64,
    /// First byte of the boot area (the bottom of the stack); `StartInfo::boot_area`.
    pub boot_area: GuestPhysAddr,
    /// Initial RSP: `boot_area + STACK_SIZE`, 16-byte aligned, nothing pushed.
    pub stack_top: GuestPhysAddr,
    /// The `StartInfo` (initial RDI), at the start of its own page.
    pub start_info: GuestPhysAddr,
    /// The GDT (GDTR base; limit `GDT_LIMIT`), at the start of its own page.
    pub gdt: GuestPhysAddr,
    /// The PML4 (CR3); the other tables follow it.
    pub page_tables: GuestPhysAddr,
    /// Bytes of tables from `page_tables`; they end at `memory_bytes`.
    pub page_table_bytes: u64,
    /// Where the ramdisk goes (0 when there is none) and its length.
    pub ramdisk: GuestPhysAddr,
    pub ramdisk_len: u64,
}

/// Why a domU cannot be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The memory size is not a whole number of 4 KiB pages.
    MemoryNotPageAligned { memory_bytes: u64 },
    /// Less than `MIN_MEMORY`: no room for the boot area and a kernel above 1 MiB.
    TooLittleMemory { memory_bytes: u64 },
    /// More than the boot page tables can map.
    TooMuchMemory { memory_bytes: u64 },
    /// The ramdisk does not fit between 1 MiB and the boot area.
    RamdiskTooLarge { len: u64, room: u64 },
    /// A kernel segment outside `[KERNEL_MIN, boot_area)`.
    KernelOutsideWindow { start: u64, end: u64, window: (u64, u64) },
    /// A kernel segment over the ramdisk.
    KernelOverlapsRamdisk { start: u64, end: u64, ramdisk: (u64, u64) },
    /// The command line has no NUL within `CMDLINE_LEN` bytes.
    CmdlineTooLong,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MemoryNotPageAligned { memory_bytes } => {
                write!(f, "memory size {memory_bytes:#x} is not a multiple of 4 KiB")
            }
            Self::TooLittleMemory { memory_bytes } => write!(
                f,
                "{} KiB of memory is too little: a kernel at 1 MiB and the boot area need at least {} KiB",
                memory_bytes / 1024,
                MIN_MEMORY / 1024
            ),
            Self::TooMuchMemory { memory_bytes } => {
                let (gib, max) = (memory_bytes / GIB, MAX_MEMORY / GIB);
                write!(f, "{gib} GiB of memory is more than the {max} GiB a domU may have")
            }
            Self::RamdiskTooLarge { len, room } => write!(
                f,
                "the ramdisk ({} KiB) does not fit between 1 MiB and the boot area ({} KiB)",
                len.div_ceil(1024),
                room / 1024
            ),
            Self::KernelOutsideWindow { start, end, window: (lo, hi) } => {
                write!(f, "kernel segment {start:#x}-{end:#x} is outside {lo:#x}-{hi:#x}")
            }
            Self::KernelOverlapsRamdisk { start, end, ramdisk: (lo, hi) } => {
                write!(f, "kernel segment {start:#x}-{end:#x} overlaps the ramdisk at {lo:#x}-{hi:#x}")
            }
            Self::CmdlineTooLong => write!(f, "command line longer than {} bytes", CMDLINE_LEN - 1),
        }
    }
}

/// Lays out a domU of `memory_bytes` whose ramdisk is `ramdisk_len` bytes (0:
/// none).
pub fn plan(memory_bytes: u64, ramdisk_len: u64) -> Result<Layout, LayoutError> {
    if !memory_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(LayoutError::MemoryNotPageAligned { memory_bytes });
    }
    if memory_bytes > MAX_MEMORY {
        return Err(LayoutError::TooMuchMemory { memory_bytes });
    }
    if memory_bytes < MIN_MEMORY {
        return Err(LayoutError::TooLittleMemory { memory_bytes });
    }
    let page_table_bytes = identity_map_bytes(memory_bytes);
    let boot_bytes = FIXED_BYTES + page_table_bytes;
    let boot_area = memory_bytes - boot_bytes;
    let room = boot_area - KERNEL_MIN;
    let ramdisk = match ramdisk_len {
        0 => 0,
        len if len <= room => (boot_area - len) & !(PAGE_SIZE - 1),
        len => return Err(LayoutError::RamdiskTooLarge { len, room }),
    };
    let start_info = boot_area + STACK_SIZE;
    Ok(Layout {
        memory_bytes,
        boot_area: GuestPhysAddr::new(boot_area),
        stack_top: GuestPhysAddr::new(start_info),
        start_info: GuestPhysAddr::new(start_info),
        gdt: GuestPhysAddr::new(start_info + PAGE_SIZE),
        page_tables: GuestPhysAddr::new(start_info + 2 * PAGE_SIZE),
        page_table_bytes,
        ramdisk: GuestPhysAddr::new(ramdisk),
        ramdisk_len,
    })
}

impl Layout {
    /// Where kernel segments may load: `[KERNEL_MIN, boot_area)`, the window for
    /// `elf::parse`. `check_kernel` then keeps them off the ramdisk.
    pub fn kernel_window(&self) -> Range<GuestPhysAddr> {
        GuestPhysAddr::new(KERNEL_MIN)..self.boot_area
    }

    /// Checks that every segment of `kernel` is inside `kernel_window` and off
    /// the ramdisk.
    pub fn check_kernel(&self, kernel: &Kernel) -> Result<(), LayoutError> {
        let (lo, hi) = (KERNEL_MIN, self.boot_area.as_u64());
        let rd = (self.ramdisk.as_u64(), self.ramdisk.as_u64() + self.ramdisk_len);
        for s in &kernel.segments {
            let (start, end) = (s.paddr.as_u64(), s.memory().end.as_u64());
            if start < lo || end > hi {
                return Err(LayoutError::KernelOutsideWindow { start, end, window: (lo, hi) });
            }
            if self.ramdisk_len != 0 && start < rd.1 && rd.0 < end {
                return Err(LayoutError::KernelOverlapsRamdisk { start, end, ramdisk: rd });
            }
        }
        Ok(())
    }

    /// The identity page tables for all of the domain's RAM, to be copied to
    /// `page_tables`.
    pub fn page_table_image(&self) -> alloc::vec::Vec<u8> {
        identity_map(self.page_tables.as_u64(), self.memory_bytes)
    }

    /// The `StartInfo` for this layout, to be copied to `start_info`. `cmdline`
    /// is read up to its first NUL (all of it when it has none) and must leave
    /// room for the terminating NUL.
    pub fn start_info(&self, vcpus: u32, cmdline: &[u8]) -> Result<StartInfo, LayoutError> {
        let len = cmdline.iter().position(|&b| b == 0).unwrap_or(cmdline.len());
        if len >= CMDLINE_LEN {
            return Err(LayoutError::CmdlineTooLong);
        }
        let mut line = [0u8; CMDLINE_LEN];
        line[..len].copy_from_slice(&cmdline[..len]);
        Ok(StartInfo {
            magic: START_INFO_MAGIC,
            abi_version: ABI_VERSION,
            vcpus,
            memory_bytes: self.memory_bytes,
            boot_area: self.boot_area.as_u64(),
            ramdisk_addr: self.ramdisk.as_u64(),
            ramdisk_len: self.ramdisk_len,
            cmdline: line,
        })
    }
}

/// The boot GDT's bytes, to be copied to `Layout::gdt`: dom0's four entries
/// (null, null, 64-bit code at `BOOT_CS` = 0x10, data at `BOOT_DS` = 0x18).
pub fn gdt_image() -> [u8; GDT_ENTRIES.len() * 8] {
    let mut b = [0u8; GDT_ENTRIES.len() * 8];
    for (chunk, e) in b.chunks_exact_mut(8).zip(GDT_ENTRIES) {
        chunk.copy_from_slice(&e.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::elf::Segment;
    use alloc::vec::Vec;
    use oxen_abi::Pod;

    const KIB: u64 = 1024;

    /// Walks `tables` (the image copied to `layout.page_tables`) like the CPU
    /// would for a 4-level identity map and returns the mapped ranges
    /// (virtual = physical is asserted on the way), merged.
    fn mapped(layout: &Layout, tables: &[u8]) -> Vec<Range<u64>> {
        let base = layout.page_tables.as_u64();
        let entry = |table_addr: u64, index: u64| {
            let o = (table_addr - base + index * 8) as usize;
            assert!(table_addr >= base && o + 8 <= tables.len(), "table {table_addr:#x} outside the tables");
            u64::from_le_bytes(tables[o..o + 8].try_into().unwrap())
        };
        let addr = |e: u64| e & 0x000f_ffff_ffff_f000;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut add = |va: u64, pa: u64, len: u64, e: u64| {
            assert_eq!(va, pa, "not identity");
            assert_eq!(e & 0x7, 0x3, "present, writable, supervisor: {e:#x}");
            assert_eq!(e >> 63, 0, "executable");
            match out.last_mut() {
                Some(r) if r.end == va => r.end = va + len,
                _ => out.push(va..va + len),
            }
        };
        for i4 in 0..512 {
            let e4 = entry(base, i4);
            if e4 & 1 == 0 {
                continue;
            }
            for i3 in 0..512 {
                let e3 = entry(addr(e4), i3);
                if e3 & 1 == 0 {
                    continue;
                }
                assert_eq!(e3 & 0x80, 0, "no 1 GiB pages");
                for i2 in 0..512 {
                    let e2 = entry(addr(e3), i2);
                    let va = (i4 << 39) | (i3 << 30) | (i2 << 21);
                    if e2 & 1 == 0 {
                        continue;
                    }
                    if e2 & 0x80 != 0 {
                        add(va, addr(e2), 2 * MIB, e2);
                        continue;
                    }
                    for i1 in 0..512 {
                        let e1 = entry(addr(e2), i1);
                        if e1 & 1 != 0 {
                            add(va | (i1 << 12), addr(e1), 4 * KIB, e1);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn layouts_for_common_sizes() {
        // (MiB, PDs): the boot area is stack + StartInfo + GDT + PML4 + PDPT + PDs.
        for (mib, pds) in [(4u64, 1u64), (16, 1), (64, 1), (1024, 1), (1026, 2), (4096, 4)] {
            let m = mib * MIB;
            let l = plan(m, 0).unwrap();
            let tables = (2 + pds) * 4 * KIB;
            assert_eq!(l.page_table_bytes, tables, "{mib} MiB");
            assert_eq!(l.boot_area.as_u64(), m - 72 * KIB - tables, "{mib} MiB");
            assert_eq!(l.stack_top.as_u64(), l.boot_area.as_u64() + 64 * KIB);
            assert_eq!(l.stack_top.as_u64() % 16, 0);
            assert_eq!(l.start_info, l.stack_top);
            assert_eq!(l.gdt.as_u64(), l.start_info.as_u64() + 4 * KIB);
            assert_eq!(l.page_tables.as_u64(), l.gdt.as_u64() + 4 * KIB);
            assert_eq!(l.page_tables.as_u64() + l.page_table_bytes, m);
            assert_eq!(l.kernel_window(), GuestPhysAddr::new(MIB)..l.boot_area);
            assert_eq!((l.ramdisk.as_u64(), l.ramdisk_len), (0, 0));
        }
        // The table in docs/hypercalls.md, "domU boot state".
        for (mib, boot_area, rsp, gdt, cr3) in [
            (4, 0x3e_b000, 0x3f_b000, 0x3f_c000, 0x3f_d000),
            (16, 0xfe_b000, 0xff_b000, 0xff_c000, 0xff_d000),
            (64, 0x3fe_b000, 0x3ff_b000, 0x3ff_c000, 0x3ff_d000),
            (1024, 0x3ffe_b000, 0x3fff_b000, 0x3fff_c000, 0x3fff_d000),
            (4096, 0xfffe_8000, 0xffff_8000, 0xffff_9000, 0xffff_a000),
        ] {
            let l = plan(mib * MIB, 0).unwrap();
            let got = (l.boot_area.as_u64(), l.stack_top.as_u64(), l.gdt.as_u64(), l.page_tables.as_u64());
            assert_eq!(got, (boot_area, rsp, gdt, cr3), "{mib} MiB");
        }
    }

    #[test]
    fn tables_map_exactly_the_memory() {
        for m in [4 * MIB, 16 * MIB, 64 * MIB, 1024 * MIB, 1025 * MIB, 5 * MIB, 3 * MIB + 20 * KIB, 2 * GIB + 4 * KIB] {
            let l = plan(m, 0).unwrap();
            let t = l.page_table_image();
            assert_eq!(t.len() as u64, l.page_table_bytes);
            assert_eq!(mapped(&l, &t), alloc::vec![0..m], "{m:#x}");
        }
        // A 4 KiB tail gets a page table after the PDs.
        let l = plan(5 * MIB, 0).unwrap();
        assert_eq!(l.page_table_bytes, 4 * 4 * KIB);
    }

    #[test]
    fn ramdisk_goes_just_below_the_boot_area() {
        let l = plan(16 * MIB, 3 * MIB + 5).unwrap();
        assert_eq!(l.ramdisk.as_u64() % PAGE_SIZE, 0);
        assert!(l.ramdisk.as_u64() + l.ramdisk_len <= l.boot_area.as_u64());
        assert!(l.boot_area.as_u64() - (l.ramdisk.as_u64() + l.ramdisk_len) < PAGE_SIZE);
        assert_eq!(l.ramdisk.as_u64(), (0xfe_b000 - 3 * MIB - 5) & !0xfff);
        // The largest that fits ends at the boot area and starts at 1 MiB.
        let room = l.boot_area.as_u64() - MIB;
        assert_eq!(plan(16 * MIB, room).unwrap().ramdisk.as_u64(), MIB);
    }

    #[test]
    fn errors() {
        assert_eq!(plan(4 * MIB + 1, 0), Err(LayoutError::MemoryNotPageAligned { memory_bytes: 4 * MIB + 1 }));
        assert_eq!(MIN_MEMORY, MIB + 92 * KIB);
        assert_eq!(plan(MIB, 0), Err(LayoutError::TooLittleMemory { memory_bytes: MIB }));
        assert_eq!(plan(0, 0), Err(LayoutError::TooLittleMemory { memory_bytes: 0 }));
        // The least memory leaves exactly one page at 1 MiB for a kernel.
        let l = plan(MIN_MEMORY, 0).unwrap();
        assert_eq!(l.boot_area.as_u64(), MIB + 4 * KIB);
        assert_eq!(mapped(&l, &l.page_table_image()), alloc::vec![0..MIN_MEMORY]);
        let small = MIN_MEMORY - 4 * KIB;
        assert_eq!(plan(small, 0), Err(LayoutError::TooLittleMemory { memory_bytes: small }));
        assert_eq!(plan(513 * GIB, 0), Err(LayoutError::TooMuchMemory { memory_bytes: 513 * GIB }));
        assert!(plan(512 * GIB, 0).is_ok());
        let room = 0xfe_b000 - MIB;
        assert_eq!(plan(16 * MIB, room + 1), Err(LayoutError::RamdiskTooLarge { len: room + 1, room }));
        assert_eq!(plan(16 * MIB, u64::MAX), Err(LayoutError::RamdiskTooLarge { len: u64::MAX, room }));
        let e = plan(4 * MIB, 8 * MIB).unwrap_err();
        let text = "the ramdisk (8192 KiB) does not fit between 1 MiB and the boot area (2988 KiB)";
        assert_eq!(alloc::format!("{e}"), text);
    }

    fn kernel(segments: &[(u64, u64)]) -> Kernel {
        Kernel {
            entry: segments[0].0,
            segments: segments
                .iter()
                .map(|&(paddr, memsz)| Segment {
                    paddr: GuestPhysAddr::new(paddr),
                    vaddr: paddr,
                    file_offset: 0,
                    filesz: 0,
                    memsz,
                    flags: 5,
                })
                .collect(),
        }
    }

    #[test]
    fn kernel_must_stay_off_the_ramdisk_and_the_boot_area() {
        let l = plan(16 * MIB, 2 * MIB).unwrap();
        let rd = l.ramdisk.as_u64();
        assert!(l.check_kernel(&kernel(&[(MIB, 0x1000), (MIB + 0x1000, rd - MIB - 0x1000)])).is_ok());
        assert_eq!(
            l.check_kernel(&kernel(&[(MIB, 0x1000), (rd - 0x1000, 0x1001)])),
            Err(LayoutError::KernelOverlapsRamdisk { start: rd - 0x1000, end: rd + 1, ramdisk: (rd, rd + 2 * MIB) })
        );
        assert!(matches!(l.check_kernel(&kernel(&[(rd + MIB, 0x10)])), Err(LayoutError::KernelOverlapsRamdisk { .. })));
        assert!(matches!(l.check_kernel(&kernel(&[(0x8000, 0x10)])), Err(LayoutError::KernelOutsideWindow { .. })));
        let top = l.boot_area.as_u64();
        assert_eq!(
            l.check_kernel(&kernel(&[(top - 8, 16)])),
            Err(LayoutError::KernelOutsideWindow { start: top - 8, end: top + 8, window: (MIB, top) })
        );
        // Without a ramdisk the whole window is the kernel's.
        let l = plan(16 * MIB, 0).unwrap();
        assert!(l.check_kernel(&kernel(&[(MIB, top - MIB)])).is_ok());
    }

    #[test]
    fn start_info_and_gdt() {
        let l = plan(64 * MIB, 4096).unwrap();
        let mut line = [0u8; CMDLINE_LEN];
        line[..13].copy_from_slice(b"interval_ms=5");
        let si = l.start_info(2, &line).unwrap();
        assert_eq!(si.magic, START_INFO_MAGIC);
        assert_eq!(si.abi_version, ABI_VERSION);
        assert_eq!((si.vcpus, si.memory_bytes, si.boot_area), (2, 64 * MIB, l.boot_area.as_u64()));
        assert_eq!((si.ramdisk_addr, si.ramdisk_len), (l.ramdisk.as_u64(), 4096));
        assert_eq!(oxen_abi::c_str(&si.cmdline), Some("interval_ms=5"));
        assert_eq!(si.as_bytes().len(), 304);
        // Unterminated but short, and the longest that fits.
        assert_eq!(oxen_abi::c_str(&l.start_info(1, b"a b").unwrap().cmdline), Some("a b"));
        assert!(l.start_info(1, &[b'x'; CMDLINE_LEN - 1]).is_ok());
        assert_eq!(l.start_info(1, &[b'x'; CMDLINE_LEN]), Err(LayoutError::CmdlineTooLong));

        let g = gdt_image();
        assert_eq!(GDT_LIMIT, 31);
        assert_eq!(u64::from_le_bytes(g[16..24].try_into().unwrap()), 0x00af_9a00_0000_ffff);
        assert_eq!(u64::from_le_bytes(g[24..32].try_into().unwrap()), 0x00cf_9300_0000_ffff);
        assert_eq!((BOOT_CS, BOOT_DS), (0x10, 0x18));
    }
}
