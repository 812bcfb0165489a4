//! The boot sequence: what runs, in order, from `kmain` to the first guest.

use crate::arch::x86_64 as arch;
use crate::cmdline;
use crate::mem::{self, frame::FrameAllocator, memmap::Region, PAGE_SIZE};
use log::{info, warn};
use crate::linux::e820;
use alloc::{string::String, vec::Vec};
use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// A boot module GRUB loaded (`module2 FILE ARGS...`).
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub cmdline: String,
}

/// What the boot CPU learned from the boot loader, for the later stages.
pub struct BootInfo {
    /// The firmware memory map, all types.
    pub host_map: Vec<e820::Entry>,
    /// Modules in GRUB order: dom0's kernel, then its initrd.
    pub modules: Vec<Module>,
    pub options: cmdline::Options,
    /// Physical address of a copy of the ACPI RSDP, if the boot loader gave one.
    pub rsdp: Option<u64>,
    /// Highest RAM address, for the hypervisor's identity map.
    pub ram_end: u64,
}

/// Rust entry point, called by `_start` on the boot CPU in 64-bit mode on the
/// boot page tables.
#[no_mangle]
pub extern "C" fn kmain(magic: u32, mbi: u32) -> ! {
    crate::console::init();
    info!("Oxen hypervisor v{} booting", env!("CARGO_PKG_VERSION"));
    if magic != MULTIBOOT2_MAGIC {
        fatal(format_args!("not started by a multiboot2 boot loader (magic {magic:#x})"));
    }
    // SAFETY: a multiboot2 loader put a valid boot information structure at `mbi`,
    // identity mapped by the boot page tables; we never write to it.
    let mb = unsafe { BootInformation::load(mbi as usize as *const BootInformationHeader) }
        .unwrap_or_else(|_| fatal(format_args!("malformed multiboot2 information at {mbi:#x}")));
    let boot = init_memory(&mb);
    arch::init_bsp(&boot);
    crate::virt::init_bsp();
    let platform = crate::platform::acpi::discover(boot.rsdp, arch::paging::identity_end(boot.ram_end));
    arch::smp::init(&platform);
    arch::wallclock::init();
    if boot.options.selftest {
        let cpus: Vec<u32> = (0..arch::smp::cpu_count()).collect();
        crate::selftest::run(&cpus, arch::smp::run_on);
    }
    if boot.options.bench {
        crate::selftest::bench();
    }
    if boot.options.selftest || boot.options.bench {
        halt("selftest done");
    }
    if boot.modules.is_empty() {
        halt("no dom0 kernel: add `module2 /boot/vmlinuz ARGS` to the GRUB entry");
    }
    crate::dom0::boot(&boot)
}

/// Parses the command line and memory map, sets up the frame allocator and heap.
fn init_memory(mb: &BootInformation) -> BootInfo {
    let cmdline = mb.command_line_tag().and_then(|t| t.cmdline().ok()).unwrap_or("");
    info!("command line: {cmdline}");
    let options = cmdline::parse(cmdline, |b| warn!("ignoring '{}': {}", b.word, b.why));
    let hidden = crate::exit::cpuid::hide(options.cpuid_hide);
    for (i, h) in crate::exit::cpuid::HIDEABLE.iter().enumerate() {
        if hidden & (1 << i) != 0 {
            info!("cpuid: {} hidden from every guest (cpuid_hide=)", h.0);
        }
    }
    log::set_max_level(match options.loglvl {
        cmdline::LogLevel::Error => log::LevelFilter::Error,
        cmdline::LogLevel::Warn => log::LevelFilter::Warn,
        cmdline::LogLevel::Info => log::LevelFilter::Info,
        cmdline::LogLevel::Debug => log::LevelFilter::Debug,
        cmdline::LogLevel::All => log::LevelFilter::Trace,
    });

    let Some(mmap) = mb.memory_map_tag() else {
        fatal(format_args!("the boot loader gave no memory map"));
    };
    let mut available = [Region::new(0, 0); 64];
    let mut n = 0;
    let mut ram_end = 0;
    for area in mmap.memory_areas() {
        if area.typ() == MemoryAreaType::Available && n < available.len() {
            available[n] = Region::new(area.start_address(), area.end_address());
            n += 1;
        }
        ram_end = ram_end.max(area.end_address());
    }
    // SAFETY: linker-script symbols; only their addresses are used.
    let (img_start, img_end) =
        unsafe { (&__image_start as *const u8 as u64, &__image_end as *const u8 as u64) };
    let mut reserved = [Region::new(0, 0); 40];
    reserved[0] = Region::new(0, 0x10_0000); // real-mode area, BIOS data, AP trampoline
    reserved[1] = Region::new(img_start, img_end);
    reserved[2] = Region::new(mb.start_address() as u64, mb.end_address() as u64);
    let mut r = 3;
    for m in mb.module_tags() {
        if r < reserved.len() {
            reserved[r] = Region::new(m.start_address().into(), m.end_address().into());
            r += 1;
        }
    }
    // Carving needs the heap, which needs frames: carve into a fixed buffer first.
    let usable = mem::memmap::carve(&available[..n], &reserved[..r]);
    let usable = usable.as_slice();
    let words = mem::frame::bitmap_words(usable);
    let bitmap_bytes = (words * 8) as u64;
    let bitmap_pages = bitmap_bytes.div_ceil(PAGE_SIZE);
    let Some(home) = usable.iter().find(|u| u.len() >= bitmap_pages * PAGE_SIZE) else {
        fatal(format_args!("no room for the frame bitmap"));
    };
    let home = Region::new(home.start, home.start + bitmap_pages * PAGE_SIZE);
    // SAFETY: `home` is usable RAM not yet handed to anyone, identity mapped.
    let bitmap = unsafe { core::slice::from_raw_parts_mut(home.start as *mut u64, words) };
    let mut frames = FrameAllocator::new(usable, bitmap);
    frames.reserve(home);
    // Sized from the RAM, so domUs' metadata never outgrows it (mem::heap_size_for).
    let heap_size = mem::heap_size_for(frames.total_frames() as u64 * PAGE_SIZE);
    let Some(heap) = frames.alloc_contiguous(heap_size / PAGE_SIZE as usize, 1) else {
        fatal(format_args!("not enough memory for the hypervisor heap"));
    };
    // SAFETY: the heap frames were just taken from the allocator and are never freed.
    unsafe { mem::heap::init(heap.as_ptr(), heap_size) };
    info!(
        "memory: {} MiB usable, {} MiB free after hypervisor image ({:#x}-{:#x}) and heap ({} KiB)",
        frames.total_frames() * 4 / 1024,
        frames.free_frames() * 4 / 1024,
        img_start,
        img_end,
        heap_size / 1024
    );
    *mem::FRAMES.lock() = Some(frames);

    let rsdp = mb
        .rsdp_v2_tag()
        .map(|t| t as *const _ as *const u8 as u64 + 8)
        .or_else(|| mb.rsdp_v1_tag().map(|t| t as *const _ as *const u8 as u64 + 8));
    let host_map = mmap
        .memory_areas()
        .iter()
        .map(|a| e820::Entry {
            start: a.start_address(),
            end: a.end_address(),
            kind: match a.typ() {
                MemoryAreaType::Available => e820::Kind::Ram,
                MemoryAreaType::AcpiAvailable => e820::Kind::Acpi,
                MemoryAreaType::ReservedHibernate => e820::Kind::Nvs,
                MemoryAreaType::Defective => e820::Kind::Unusable,
                _ => e820::Kind::Reserved,
            },
        })
        .collect();
    let modules = mb
        .module_tags()
        .map(|m| Module {
            start: m.start_address().into(),
            end: m.end_address().into(),
            cmdline: String::from(m.cmdline().unwrap_or("")),
        })
        .collect();
    BootInfo { host_map, modules, options, rsdp, ram_end }
}

/// Prints a `FATAL` line and the final `halt:` line, then stops.
pub use crate::console::{fatal, halt};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::console::emergency_print(format_args!("(oxen) PANIC on cpu{}: {info}\n", arch::cpu_id()));
    crate::console::emergency_print(format_args!("(oxen) halt: panic\n"));
    arch::halt_forever()
}
