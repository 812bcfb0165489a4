//! Building dom0 (target only): its memory and boot structures, then its
//! platform and vCPUs (`crate::vm`, vCPU i pinned to CPU i).

use super::layout::{self, Layout};
use crate::arch::x86_64::{irq, smp};
use crate::domain::control::{self, BootSpec};
use crate::domain::elf;
use crate::linux::{boot_params, bzimage::BzImage, e820};
use crate::mem::memmap::{self, Region};
use crate::mem::paging::MapFlags;
use crate::mem::{self, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::sched::run as sched;
use crate::console::fatal;
use crate::start::BootInfo;
use crate::virt::{guest_mem::GuestRegion, EntryMode, GuestGprs, GuestMemory, InitialState, NestedTables};
use crate::vm::platform::{Platform, Role, IOAPIC_PAGE, LAPIC_PAGE};
use crate::vm::vcpu::GuestVcpu;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use log::{info, warn};

const MIB: u64 = 1 << 20;
const LOW_MEMORY_END: u64 = 0xa_0000;
/// Pages the hypervisor emulates for dom0 instead of mapping: the local APIC and
/// the IOAPIC (on its platform's MMIO bus).
const EMULATED_PAGES: [u64; 2] = [LAPIC_PAGE, IOAPIC_PAGE];

/// Takes RAM for dom0 from the frame allocator in 2 MiB-aligned chunks.
fn take_ram(want: u64) -> Vec<Region> {
    let mut got = Vec::new();
    let mut have = 0;
    while have < want {
        match mem::alloc_frames_unzeroed(512, 512) {
            Some(f) => {
                got.push(Region::new(f.as_u64(), f.as_u64() + 2 * MIB));
                have += 2 * MIB;
            }
            None => break,
        }
    }
    if have < want {
        warn!("dom0: asked for {} MiB, only {} MiB free in 2 MiB chunks", want / MIB, have / MIB);
    }
    got.sort();
    merge(got)
}

fn merge(mut v: Vec<Region>) -> Vec<Region> {
    v.sort();
    let mut out: Vec<Region> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus every region of `b`.
fn subtract(a: &[Region], b: &[Region]) -> Vec<Region> {
    // `carve` works in whole pages, which all these regions are.
    memmap::carve(a, b).as_slice().to_vec()
}

/// The firmware's own RSDP in the BIOS area, for dom0 (the boot loader's copy
/// lives in hypervisor memory). `None` lets Linux search for it itself.
fn firmware_rsdp() -> Option<u64> {
    const BIOS_AREA: u64 = 0xe_0000;
    // SAFETY: the BIOS read-only area is identity mapped and never written.
    let area = unsafe { core::slice::from_raw_parts(BIOS_AREA as *const u8, 0x2_0000) };
    boot_params::find_rsdp(area).map(|o| BIOS_AREA + o as u64)
}

fn copy_to(gpa: u64, data: &[u8]) {
    // SAFETY: `gpa` lies in dom0's identity-mapped RAM, which the hypervisor owns
    // until dom0 first runs; the builder checked the ranges in `layout::plan`.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, data.len()) };
}

/// dom0's kernel, as GRUB loaded it: a bzImage, or its `vmlinux` (the ELF a
/// bzImage unpacks, as `domain::build` boots it for domUs), which skips the
/// unpacking: under Bochs about 40 s of every boot.
enum Kernel<'a> {
    BzImage(BzImage<'a>),
    /// Segments at their offset from the lowest (2 MiB aligned), wherever the
    /// layout puts it: `startup_64` finds its physical base from where it runs.
    Vmlinux { image: &'a [u8], elf: elf::Kernel, start: u64, span: u64 },
}

use crate::linux::boot_params::VMLINUX_ALIGN;

impl<'a> Kernel<'a> {
    fn parse(image: &'a [u8]) -> Result<Self, alloc::string::String> {
        use alloc::string::ToString;
        let any = GuestPhysAddr::new(0)..GuestPhysAddr::new(1 << 52);
        if let Some(elf) = elf::parse(image, any).ok().filter(elf::Kernel::is_linux) {
            let extent = elf.extent();
            let (start, end) = (extent.start.as_u64(), extent.end.as_u64());
            if !start.is_multiple_of(VMLINUX_ALIGN) {
                return Err(alloc::format!("vmlinux: its lowest segment ({start:#x}) is not 2 MiB aligned"));
            }
            return Ok(Self::Vmlinux { image, elf, start, span: end - start });
        }
        BzImage::parse(image).map(Self::BzImage).map_err(|e| e.to_string())
    }

    /// (alignment, preferred address, bytes needed from the load address).
    fn placement(&self) -> (u64, u64, u64) {
        match self {
            Self::BzImage(bz) => (bz.alignment(), bz.pref_address(), bz.init_size()),
            Self::Vmlinux { start, span, .. } => (VMLINUX_ALIGN, *start, *span),
        }
    }

    /// Copies it to `load`; returns the 64-bit entry point there.
    fn copy(&self, load: u64) -> u64 {
        match self {
            Self::BzImage(bz) => {
                copy_to(load, bz.kernel());
                load + crate::linux::bzimage::ENTRY_64_OFFSET
            }
            Self::Vmlinux { image, elf, start, .. } => {
                for s in &elf.segments {
                    let at = load + (s.paddr.as_u64() - start);
                    copy_to(at, &image[s.file_range()]);
                    // SAFETY: as `copy_to`: the segment's memory is inside the
                    // span `layout::plan` placed in dom0's RAM.
                    unsafe { core::ptr::write_bytes((at + s.filesz) as *mut u8, 0, (s.memsz - s.filesz) as usize) };
                }
                load + (elf.entry - start)
            }
        }
    }

    /// The setup header for the zero page.
    fn header(&self) -> HeaderBytes<'a> {
        match self {
            Self::BzImage(bz) => HeaderBytes::Image(bz.setup_header()),
            Self::Vmlinux { .. } => HeaderBytes::Made(boot_params::vmlinux_header(VMLINUX_ALIGN as u32)),
        }
    }

    fn cmdline_size(&self) -> usize {
        match self {
            Self::BzImage(bz) => bz.cmdline_size() as usize,
            Self::Vmlinux { .. } => boot_params::VMLINUX_CMDLINE_MAX as usize,
        }
    }

    /// For the log.
    fn describe(&self) -> alloc::string::String {
        match self {
            Self::BzImage(bz) => alloc::format!("bzImage, boot protocol {}.{:02}", bz.version() >> 8, bz.version() & 0xff),
            Self::Vmlinux { span, .. } => alloc::format!("vmlinux, {} MiB", span.div_ceil(MIB)),
        }
    }
}

enum HeaderBytes<'a> {
    Image(&'a [u8]),
    Made([u8; boot_params::VMLINUX_HEADER_LEN]),
}

impl HeaderBytes<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Image(b) => b,
            Self::Made(b) => b,
        }
    }
}

/// Builds dom0 from the boot modules and runs it. Does not return.
pub fn boot(info: &BootInfo) -> ! {
    let kmod = &info.modules[0];
    // SAFETY: GRUB loaded the module there; its pages are reserved from the frame
    // allocator and identity mapped.
    let image = unsafe { core::slice::from_raw_parts(kmod.start as *const u8, (kmod.end - kmod.start) as usize) };
    let kernel = Kernel::parse(image).unwrap_or_else(|e| fatal(format_args!("dom0 kernel: {e}")));
    let initrd = info.modules.get(1).map(|m| Region::new(m.start, m.end));
    let module_pages: Vec<Region> = info
        .modules
        .iter()
        .map(|m| Region::new(m.start & !(PAGE_SIZE - 1), m.end.div_ceil(PAGE_SIZE) * PAGE_SIZE))
        .collect();

    let host_ram: Vec<Region> =
        info.host_map.iter().filter(|e| e.kind == e820::Kind::Ram).map(|e| Region::new(e.start, e.end)).collect();
    let low: Vec<Region> = host_ram
        .iter()
        .filter(|r| r.start < LOW_MEMORY_END)
        .map(|r| Region::new(r.start, r.end.min(LOW_MEMORY_END) & !(PAGE_SIZE - 1)))
        .filter(|r| !r.is_empty())
        .collect();
    let want = info.options.dom0_mem.unwrap_or_else(|| mem::free_frame_count() as u64 * PAGE_SIZE / 2);
    let mut ram = take_ram(want.div_ceil(2 * MIB) * 2 * MIB);
    ram.extend_from_slice(&low);
    ram.extend_from_slice(&module_pages);
    let ram = merge(ram);

    let vcpus = super::vcpu_count(info.options.dom0_max_vcpus, smp::cpu_count());
    if vcpus < info.options.dom0_max_vcpus {
        warn!(
            "dom0: dom0_max_vcpus={} but {} CPU(s) online: dom0 gets {vcpus} vCPU(s), one per CPU",
            info.options.dom0_max_vcpus,
            smp::cpu_count()
        );
    }

    let (align, pref, init_size) = kernel.placement();
    let plan: Layout = layout::plan(&ram, &module_pages, align, pref, init_size)
        .unwrap_or_else(|e| fatal(format_args!("dom0: cannot lay out the kernel in dom0's memory: {e:?}")));

    // Boot structures, all in dom0's own (identity-mapped) RAM.
    let entry_rip = kernel.copy(plan.kernel_load);
    let given = kmod.cmdline.split_once(' ').map_or("", |(_, args)| args);
    // MSIs from dom0's devices are not delivered yet (they would reach the
    // physical APIC with vectors only dom0 knows): dom0 uses INTx lines, which
    // the hypervisor forwards through its I/O APIC. dom0 reads the firmware's
    // MADT, which lists every CPU: nr_cpus keeps it from waiting for the ones
    // it has no vCPU for.
    let cmdline = alloc::format!("{given} {DOM0_FORCED_ARGS} nr_cpus={vcpus}");
    let mut cl = [0u8; layout::CMDLINE_MAX];
    let n = cmdline.len().min(kernel.cmdline_size().min(layout::CMDLINE_MAX - 1));
    cl[..n].copy_from_slice(&cmdline.as_bytes()[..n]);
    copy_to(layout::CMDLINE, &cl);
    let gdt: Vec<u8> = layout::GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
    copy_to(layout::GDT, &gdt);
    copy_to(layout::PAGE_TABLES, &layout::identity_tables(&plan));

    let withheld = subtract(&host_ram, &ram);
    let e820 = e820::build(&info.host_map, &withheld)
        .unwrap_or_else(|e| fatal(format_args!("dom0: e820 map: {e:?}")));
    let mut zero_page = [0u8; boot_params::ZERO_PAGE_SIZE];
    let at = boot_params::Placement {
        cmdline: layout::CMDLINE,
        initrd: initrd.map(|r| (r.start, r.len())),
        rsdp: firmware_rsdp(),
    };
    boot_params::build(&mut zero_page, kernel.header().bytes(), &e820, &at);
    copy_to(layout::BOOT_PARAMS, &zero_page);

    // Nested tables: the whole physical address space but the hypervisor's RAM
    // and the emulated interrupt controllers.
    let top = plan.identity_top.max(info.host_map.iter().map(|e| e.end).max().unwrap_or(0).div_ceil(1 << 30) << 30);
    let mut hidden = withheld.clone();
    hidden.extend(EMULATED_PAGES.iter().map(|&p| Region::new(p, p + PAGE_SIZE)));
    // The window for foreign mappings (`mem::foreign`): in no entry of the
    // machine's map, above dom0's RAM, inside the physical address width the
    // CPU reports (and dom0's CPUID shows unchanged). Inside `top` it is cut
    // out of the identity map; dom0's e820 does not list it.
    let phys_bits = crate::emulate::mmio::host_phys_bits();
    let occupied: Vec<(u64, u64)> = info.host_map.iter().map(|e| (e.start, e.end)).collect();
    let ram_end = ram.iter().map(|r| r.end).max().unwrap_or(0);
    let window = mem::foreign::place_window(&occupied, ram_end, oxen_abi::FOREIGN_WINDOW_BYTES, phys_bits);
    if let Some(base) = window {
        hidden.push(Region::new(base, base + oxen_abi::FOREIGN_WINDOW_BYTES));
    }
    let mut gm = GuestMemory::new();
    for r in subtract(&[Region::new(0, top)], &hidden) {
        let region = GuestRegion { gpa: GuestPhysAddr::new(r.start), hpa: HostPhysAddr::new(r.start), len: r.len(), flags: MapFlags::RWX };
        if gm.add(region).is_err() {
            fatal(format_args!("dom0: bad memory region {:#x}-{:#x}", r.start, r.end));
        }
    }
    let ram_bytes: u64 = ram.iter().map(|r| r.len()).sum();
    info!(
        "dom0: {} MiB RAM in {} ranges, kernel at {:#x} ({}), initrd {} KiB, cmdline \"{cmdline}\"",
        ram_bytes / MIB,
        ram.len(),
        plan.kernel_load,
        kernel.describe(),
        initrd.map_or(0, |r| r.len() / 1024),
    );
    for w in &withheld {
        info!("dom0: hypervisor memory {:#x}-{:#x} is not mapped into dom0", w.start, w.end);
    }
    let tables = NestedTables::build(&gm).unwrap_or_else(|_| fatal(format_args!("dom0: out of memory for nested tables")));
    let entry = InitialState {
        mode: EntryMode::Linux64 { cr3: layout::PAGE_TABLES, gdt_base: layout::GDT, gdt_limit: (gdt.len() - 1) as u16 },
        rip: entry_rip,
        rsp: 0,
    };
    let format = if matches!(kernel, Kernel::Vmlinux { .. }) { "vmlinux" } else { "bzImage" };
    let boot = BootSpec { entry, gprs: GuestGprs { rsi: layout::BOOT_PARAMS, ..Default::default() }, format };
    mask_legacy_pic();
    let mut ram_map = GuestMemory::new();
    for r in &ram {
        let region = GuestRegion { gpa: GuestPhysAddr::new(r.start), hpa: HostPhysAddr::new(r.start), len: r.len(), flags: MapFlags::RWX };
        if ram_map.add(region).is_err() {
            fatal(format_args!("dom0: bad RAM region {:#x}-{:#x}", r.start, r.end));
        }
    }
    // The nested tables stay as long as dom0, for good (never `destroy`ed),
    // kept by `mem::foreign`, which maps domUs' pages into the window.
    let root = tables.root();
    match window {
        Some(base) => mem::foreign::init(tables, base),
        None => {
            warn!("dom0: no room for the foreign-mapping window in {phys_bits} address bits: no foreign mappings");
            mem::foreign::init_without_window(tables);
        }
    }
    sched::init(info.options.sched_slice_ms);
    crate::vm::vcpu::set_tally_period(info.options.exit_tally_s);
    crate::vm::vcpu::set_console_direct(info.options.dom0_console_direct);
    run(boot, vcpus, root, gm, ram_map)
}

/// Masks both 8259s: the hypervisor owns interrupt delivery and does not use them.
fn mask_legacy_pic() {
    // SAFETY: writing the PICs' interrupt-mask registers only masks interrupts.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Starts every CPU's scheduler loop with dom0's vCPU `i` pinned to CPU `i`
/// (vCPU 0 from the boot state, the others waiting for START-UP). Never
/// returns.
fn run(boot: BootSpec, vcpus: u32, root: u64, gm: GuestMemory, ram: GuestMemory) -> ! {
    // vCPU i takes CPU i's APIC ID: the firmware's MADT, which dom0 reads,
    // then names its vCPUs, and CPUID (not intercepted for the topology)
    // agrees with it.
    let apic_ids: Vec<u32> = (0..vcpus).map(smp::apic_id).collect();
    let platform = Arc::new(Platform::new(control::DOM0_ID, Role::Dom0, "dom0", &apic_ids, gm, ram.clone(), root));
    crate::vm::platform::set_dom0(platform.clone());
    irq::init(IOAPIC_PAGE);
    control::register_dom0(ram, vcpus);
    sched::set_housekeeping(control::housekeeping);
    for cpu in 1..smp::cpu_count() {
        smp::start_on(cpu, sched::cpu_loop);
    }
    info!("dom0: starting ({vcpus} vCPU(s): vCPU i on cpu i, APIC IDs {apic_ids:?})");
    for i in 1..vcpus {
        sched::enqueue(i, Box::new(GuestVcpu::new(i as usize, platform.clone(), None)));
    }
    sched::enqueue(0, Box::new(GuestVcpu::new(0, platform, Some(boot))));
    sched::cpu_loop()
}

/// Appended to dom0's kernel command line (see `boot`).
const DOM0_FORCED_ARGS: &str = "pci=nomsi";


