//! The hypervisor's own page tables, replacing the boot tables: all of physical
//! memory identity mapped, writable and not executable; the image mapped with
//! per-section rights (text RX, rodata R, data/bss RW), so no page is both
//! writable and executable. Page 0 is left unmapped to catch null pointers.

use crate::mem::paging::{Host, MapFlags, PageSize, PageTable};
use crate::mem::FrameTables;

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __bss_end: u8;
}

const MIB2: u64 = 2 << 20;
const GIB4: u64 = 4 << 30;
/// The local and I/O APICs live in this range; map it uncached.
const APIC_RANGE: (u64, u64) = (0xfe00_0000, 0x1_0000_0000);

/// Physical page of the AP start-up trampoline, executable in these tables.
pub const TRAMPOLINE_PAGE: u64 = 0x8000;

fn addr(sym: &u8) -> u64 {
    sym as *const u8 as u64
}

/// Builds the tables and switches this CPU to them.
pub fn init(ram_end: u64) {
    // SAFETY: linker-script symbols; only their addresses are used.
    let (text, rodata, data) = unsafe {
        (
            (addr(&__text_start), addr(&__text_end)),
            (addr(&__rodata_start), addr(&__rodata_end)),
            (addr(&__data_start), addr(&__bss_end)),
        )
    };
    let mut mem = FrameTables;
    let mut pt = PageTable::<Host>::new(&mut mem).expect("out of memory for page tables");
    let mut map = |from: u64, to: u64, flags: MapFlags| {
        if to > from {
            pt.map_range(&mut mem, from, from, to - from, flags, PageSize::Size2M)
                .expect("cannot build the hypervisor page tables");
        }
    };
    // The 2 MiB regions around the image and low memory in 4 KiB pages.
    let image_lo = text.0 & !(MIB2 - 1);
    let image_hi = data.1.div_ceil(MIB2) * MIB2;
    map(0x1000, TRAMPOLINE_PAGE, MapFlags::RW);
    map(TRAMPOLINE_PAGE, TRAMPOLINE_PAGE + 0x1000, MapFlags::RX);
    map(TRAMPOLINE_PAGE + 0x1000, MIB2.min(image_lo), MapFlags::RW);
    map(MIB2.max(image_lo).min(image_lo), text.0, MapFlags::RW);
    map(text.0, text.1, MapFlags::RX);
    map(rodata.0, rodata.1, MapFlags::READ);
    map(data.0, data.1, MapFlags::RW);
    map(data.1.div_ceil(0x1000) * 0x1000, image_hi, MapFlags::RW);
    let end = ram_end.max(GIB4).div_ceil(MIB2) * MIB2;
    map(image_hi.max(MIB2), APIC_RANGE.0.min(end), MapFlags::RW);
    map(APIC_RANGE.0, APIC_RANGE.1, MapFlags::RW | MapFlags::UNCACHED);
    map(APIC_RANGE.1, end, MapFlags::RW);
    let root = pt.root();
    ROOT.store(root, core::sync::atomic::Ordering::Release);
    // SAFETY: the new tables map everything the hypervisor touches (image, stack,
    // heap, all RAM, APICs) at the same addresses as the boot tables.
    unsafe { load() };
    // `pt` is dropped without `destroy`: the tables stay in use for good.
}

static ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Physical address of the hypervisor's PML4 (for APs and VMCS/VMCB host state).
pub fn root() -> u64 {
    ROOT.load(core::sync::atomic::Ordering::Acquire)
}

/// Loads the hypervisor tables on this CPU, with CR0.WP and EFER.NXE set.
///
/// # Safety
/// `init` must have run on the boot CPU.
pub unsafe fn load() {
    // SAFETY: the tables are valid (caller), NXE was set by the boot code.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root(), options(nostack)) };
}
