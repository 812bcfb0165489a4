//! Where a Linux domU's boot pieces go (Documentation/arch/x86/boot.rst,
//! "64-bit BOOT PROTOCOL"). Pure: `plan` computes the layout; the domain
//! builder copies the pieces into the domain's zeroed RAM.
//!
//! A domU's RAM is guest-physical `[0, memory)`:
//!
//! | where | what |
//! |---|---|
//! | 0x10000 | the zero page (RSI at entry) |
//! | 0x11000 | the command line (4 KiB) |
//! | 0x12000 | the boot GDT (as dom0's: CS 0x10, DS 0x18) |
//! | 0x13000 | identity page tables for `[0, min(memory, 4 GiB))` (CR3) |
//! | 0x9f000 – 1 MiB | reserved in the e820 map: the BIOS area, where the RSDP (0xE0000) and the ACPI tables are |
//! | `kernel_load` | a bzImage's protected-mode kernel, at its preferred address (rounded to its alignment), `init_size` bytes reserved; or a `vmlinux`'s segments, at their physical addresses |
//! | top of the low 4 GiB (or of RAM) | the initrd, page aligned, below the kernel's `initrd_addr_max` |
//!
//! A bzImage is entered at `kernel_load + 0x200`, a `vmlinux` at its ELF entry
//! (`startup_64`), in 64-bit mode with paging on those tables, interrupts off,
//! RSI = the zero page.

use crate::dom0::layout::{identity_map_bytes, GDT_ENTRIES};
use core::fmt;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub const BOOT_PARAMS: u64 = 0x1_0000;
pub const CMDLINE: u64 = 0x1_1000;
pub const CMDLINE_MAX: u64 = 0x1000;
pub const GDT: u64 = 0x1_2000;
pub const PAGE_TABLES: u64 = 0x1_3000;
/// Low RAM ends here; above it the reserved BIOS area up to 1 MiB.
pub const LOW_RAM_END: u64 = 0x9_f000;
/// The ACPI root pointer where Linux and Multiboot kernels search for it (the
/// BIOS read-only area, ACPI 6.5 §5.2.5.1), and the tables after it.
pub const RSDP: u64 = 0xe_0000;
pub const ACPI_TABLES: u64 = 0xe_1000;
pub const ACPI_END: u64 = 0x10_0000;
/// The x86 reset vector (F000:FFF0), in the reserved BIOS area.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// GDTR limit of the boot GDT.
pub const GDT_LIMIT: u16 = (GDT_ENTRIES.len() * 8 - 1) as u16;
/// The highest byte of a `vmlinux`'s initrd: what x86-64 bzImages say in
/// `initrd_addr_max`; a `vmlinux` has no header to say it.
pub const VMLINUX_INITRD_MAX: u64 = 0x7fff_ffff;
/// The least RAM a Linux domU is laid out in (the kernel needs far more to
/// boot; this only keeps the layout meaningful).
pub const MIN_MEMORY: u64 = 16 * MIB;

/// A Linux domU's layout; every address guest-physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub memory: u64,
    pub kernel_load: u64,
    /// The identity map covers `[0, identity_top)`.
    pub identity_top: u64,
    /// Where the initrd goes and its length (0 when there is none).
    pub initrd: u64,
    pub initrd_len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    TooLittleMemory { memory: u64 },
    /// More memory than the boot identity map's low 4 GiB need not be a
    /// problem; a size that is not whole pages is.
    NotPageAligned { memory: u64 },
    /// The kernel's `init_size` does not fit above its preferred address.
    NoRoomForKernel { needs: u64, memory: u64 },
    /// The initrd does not fit between the kernel and its highest address.
    InitrdTooLarge { len: u64, room: u64 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooLittleMemory { memory } => {
                write!(f, "{} MiB is too little for a Linux domU (at least {} MiB)", memory / MIB, MIN_MEMORY / MIB)
            }
            Self::NotPageAligned { memory } => write!(f, "memory size {memory:#x} is not a multiple of 4 KiB"),
            Self::NoRoomForKernel { needs, memory } => write!(
                f,
                "the kernel needs {} MiB from its load address; the domain has {} MiB",
                needs.div_ceil(MIB),
                memory / MIB
            ),
            Self::InitrdTooLarge { len, room } => write!(
                f,
                "the ramdisk ({} KiB) does not fit above the kernel ({} KiB free below its highest address): give the domain more memory",
                len / 1024,
                room / 1024
            ),
        }
    }
}

/// Lays out a kernel loaded at `pref` (rounded up to `align`, at least
/// 1 MiB) needing `init_size` bytes there, with an initrd of `initrd_len`
/// bytes whose last byte may be at most `initrd_max`.
pub fn plan(memory: u64, pref: u64, align: u64, init_size: u64, initrd_len: u64, initrd_max: u64) -> Result<Layout, LayoutError> {
    if !memory.is_multiple_of(4096) {
        return Err(LayoutError::NotPageAligned { memory });
    }
    if memory < MIN_MEMORY {
        return Err(LayoutError::TooLittleMemory { memory });
    }
    let align = align.max(4096);
    let kernel_load = pref.max(MIB).div_ceil(align).saturating_mul(align);
    let kernel_end = kernel_load.checked_add(init_size).filter(|&e| e <= memory);
    let Some(kernel_end) = kernel_end else {
        return Err(LayoutError::NoRoomForKernel { needs: kernel_load.saturating_add(init_size), memory });
    };
    let identity_top = memory.min(4 * GIB);
    let (mut initrd, mut initrd_len_out) = (0, 0);
    if initrd_len > 0 {
        let top = identity_top.min(initrd_max.saturating_add(1));
        let room = top.saturating_sub(kernel_end.div_ceil(4096) * 4096);
        let at = top.checked_sub(initrd_len).map(|a| a & !4095);
        match at {
            Some(at) if at >= kernel_end => (initrd, initrd_len_out) = (at, initrd_len),
            _ => return Err(LayoutError::InitrdTooLarge { len: initrd_len, room }),
        }
    }
    Ok(Layout { memory, kernel_load, identity_top, initrd, initrd_len: initrd_len_out })
}

impl Layout {
    /// Bytes of identity tables at `PAGE_TABLES`.
    pub fn page_table_bytes(&self) -> u64 {
        identity_map_bytes(self.identity_top)
    }

    /// The guest's e820 map: low RAM, the reserved BIOS area (with the ACPI
    /// tables), RAM from 1 MiB.
    pub fn e820(&self) -> [crate::linux::e820::Entry; 3] {
        use crate::linux::e820::{Entry, Kind};
        [
            Entry { start: 0, end: LOW_RAM_END, kind: Kind::Ram },
            Entry { start: LOW_RAM_END, end: ACPI_END, kind: Kind::Reserved },
            Entry { start: ACPI_END, end: self.memory, kind: Kind::Ram },
        ]
    }
}

const _: () = assert!(ACPI_TABLES < RESET_VECTOR && RESET_VECTOR + 16 == ACPI_END);

/// The page tables must end below the reserved area: `[0, 4 GiB)` at most
/// needs 7 pages.
const _: () = assert!(PAGE_TABLES + identity_map_bytes(4 * GIB) <= LOW_RAM_END);

#[cfg(test)]
mod tests {
    use super::*;

    const MAX32: u64 = 0x7fff_ffff;

    #[test]
    fn kernel_at_its_preferred_address_initrd_at_the_top() {
        let l = plan(256 * MIB, 16 * MIB, 2 * MIB, 40 * MIB, 10 * MIB + 5, MAX32).unwrap();
        assert_eq!(l.kernel_load, 16 * MIB);
        assert_eq!(l.identity_top, 256 * MIB);
        assert_eq!(l.initrd_len, 10 * MIB + 5);
        assert_eq!(l.initrd % 4096, 0);
        assert!(l.initrd + l.initrd_len <= 256 * MIB && l.initrd >= 56 * MIB);
        assert_eq!(l.e820()[2].end, 256 * MIB);
        assert_eq!(l.page_table_bytes(), 3 * 4096);
    }

    #[test]
    fn initrd_stays_below_its_limit_and_4_gib() {
        let l = plan(8 * GIB, 16 * MIB, 2 * MIB, 40 * MIB, MIB, MAX32).unwrap();
        assert_eq!(l.identity_top, 4 * GIB);
        assert_eq!(l.initrd + MIB, 0x8000_0000);
        let l = plan(8 * GIB, 16 * MIB, 2 * MIB, 40 * MIB, MIB, u64::MAX).unwrap();
        assert_eq!(l.initrd + MIB, 4 * GIB);
    }

    #[test]
    fn alignment_and_errors() {
        assert_eq!(plan(64 * MIB, 0x10_0001, 2 * MIB, MIB, 0, MAX32).unwrap().kernel_load, 2 * MIB);
        assert_eq!(plan(64 * MIB, 0, 0, MIB, 0, MAX32).unwrap().kernel_load, MIB);
        assert_eq!(plan(8 * MIB, 16 * MIB, 2 * MIB, MIB, 0, MAX32), Err(LayoutError::TooLittleMemory { memory: 8 * MIB }));
        assert_eq!(plan(64 * MIB + 1, 16 * MIB, 2 * MIB, MIB, 0, MAX32), Err(LayoutError::NotPageAligned { memory: 64 * MIB + 1 }));
        assert!(matches!(plan(64 * MIB, 16 * MIB, 2 * MIB, 60 * MIB, 0, MAX32), Err(LayoutError::NoRoomForKernel { .. })));
        assert!(matches!(plan(64 * MIB, 16 * MIB, 2 * MIB, 40 * MIB, 9 * MIB, MAX32), Err(LayoutError::InitrdTooLarge { .. })));
        assert!(plan(64 * MIB, 16 * MIB, 2 * MIB, 40 * MIB, 8 * MIB, MAX32).is_ok());
        // Huge lengths never wrap.
        assert!(plan(64 * MIB, u64::MAX - 10, 2 * MIB, MIB, 0, MAX32).is_err());
        assert!(plan(64 * MIB, 16 * MIB, 2 * MIB, u64::MAX, 0, MAX32).is_err());
        assert!(plan(64 * MIB, 16 * MIB, 2 * MIB, MIB, u64::MAX, MAX32).is_err());
    }
}
