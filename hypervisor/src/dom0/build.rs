//! Building and running dom0 (target only): memory, boot structures, its vCPUs
//! (vCPU i on CPU i) and the devices they share.

use super::apic_bus::{bits, ApicBus, Power, Vectors, Wake};
use super::layout::{self, Layout};
use crate::arch::x86_64::{apic, irq, smp, time, xstate::XState};
use crate::console_switch::{ConsoleSwitch, Focus, Input};
use crate::devices::ioapic::{Delivery, IoApic, IOAPIC_PINS};
use crate::devices::lapic::{LapicClock, VirtualLapic};
use crate::devices::{uart16550::Uart16550, PortDevice};
use crate::domain::control;
use crate::emulate::mmio::{self, EmulateError};
use crate::exit::{self, cpuid::CpuidResult, io::PortBus, GuestEnv, Outcome};
use crate::hypercall::{self, After, Args, Caller};
use crate::linux::{boot_params, bzimage::BzImage, e820};
use crate::mem::memmap::{self, Region};
use crate::mem::paging::MapFlags;
use crate::mem::{self, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::sched::run::{self as sched, now_ns, ns_to_tsc, Poll, Runnable};
use crate::start::{fatal, BootInfo};
use crate::virt::{guest_mem::GuestRegion, AnyVcpu, EntryMode, GuestMemory, InitialState, NestedTables, Vcpu};
use crate::virt::{Access, VmExit};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use log::{info, warn};
use spin::{Mutex, Once};

const MIB: u64 = 1 << 20;
const LOW_MEMORY_END: u64 = 0xa_0000;
/// Pages the hypervisor emulates for dom0 instead of mapping: the local APIC and
/// the IOAPIC.
const EMULATED_PAGES: [u64; 2] = [LAPIC_PAGE, IOAPIC_PAGE];
/// COM1 belongs to the hypervisor; dom0 gets an emulated one in its place.
const COM1: core::ops::RangeInclusive<u16> = 0x3f8..=0x3ff;
/// The legacy PICs: the hypervisor keeps them masked; dom0 uses the IOAPIC.
const PIC_PORTS: [u16; 4] = [0x20, 0x21, 0xa0, 0xa1];

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

/// Builds dom0 from the boot modules and runs it. Does not return.
pub fn boot(info: &BootInfo) -> ! {
    let kmod = &info.modules[0];
    // SAFETY: GRUB loaded the module there; its pages are reserved from the frame
    // allocator and identity mapped.
    let image = unsafe { core::slice::from_raw_parts(kmod.start as *const u8, (kmod.end - kmod.start) as usize) };
    let bz = BzImage::parse(image).unwrap_or_else(|e| fatal(format_args!("dom0 kernel: {e}")));
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

    let plan: Layout = layout::plan(&ram, &module_pages, bz.alignment(), bz.pref_address(), bz.init_size())
        .unwrap_or_else(|e| fatal(format_args!("dom0: cannot lay out the kernel in dom0's memory: {e:?}")));

    // Boot structures, all in dom0's own (identity-mapped) RAM.
    copy_to(plan.kernel_load, bz.kernel());
    let given = kmod.cmdline.split_once(' ').map_or("", |(_, args)| args);
    // MSIs from dom0's devices are not delivered yet (they would reach the
    // physical APIC with vectors only dom0 knows): dom0 uses INTx lines, which
    // the hypervisor forwards through its I/O APIC. dom0 reads the firmware's
    // MADT, which lists every CPU: nr_cpus keeps it from waiting for the ones
    // it has no vCPU for.
    let cmdline = alloc::format!("{given} {DOM0_FORCED_ARGS} nr_cpus={vcpus}");
    let mut cl = [0u8; layout::CMDLINE_MAX];
    let n = cmdline.len().min((bz.cmdline_size() as usize).min(layout::CMDLINE_MAX - 1));
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
    boot_params::build(&mut zero_page, &bz, &e820, &at);
    copy_to(layout::BOOT_PARAMS, &zero_page);

    // Nested tables: the whole physical address space but the hypervisor's RAM
    // and the emulated interrupt controllers.
    let top = plan.identity_top.max(info.host_map.iter().map(|e| e.end).max().unwrap_or(0).div_ceil(1 << 30) << 30);
    let mut hidden = withheld.clone();
    hidden.extend(EMULATED_PAGES.iter().map(|&p| Region::new(p, p + PAGE_SIZE)));
    let mut gm = GuestMemory::new();
    for r in subtract(&[Region::new(0, top)], &hidden) {
        let region = GuestRegion { gpa: GuestPhysAddr::new(r.start), hpa: HostPhysAddr::new(r.start), len: r.len(), flags: MapFlags::RWX };
        if gm.add(region).is_err() {
            fatal(format_args!("dom0: bad memory region {:#x}-{:#x}", r.start, r.end));
        }
    }
    let ram_bytes: u64 = ram.iter().map(|r| r.len()).sum();
    info!(
        "dom0: {} MiB RAM in {} ranges, kernel at {:#x} (boot protocol {}.{:02}), initrd {} KiB, cmdline \"{cmdline}\"",
        ram_bytes / MIB,
        ram.len(),
        plan.kernel_load,
        bz.version() >> 8,
        bz.version() & 0xff,
        initrd.map_or(0, |r| r.len() / 1024),
    );
    for w in &withheld {
        info!("dom0: hypervisor memory {:#x}-{:#x} is not mapped into dom0", w.start, w.end);
    }
    let tables = NestedTables::build(&gm).unwrap_or_else(|_| fatal(format_args!("dom0: out of memory for nested tables")));
    let entry = InitialState {
        mode: EntryMode::Linux64 { cr3: layout::PAGE_TABLES, gdt_base: layout::GDT, gdt_limit: (gdt.len() - 1) as u16 },
        rip: plan.kernel_load + crate::linux::bzimage::ENTRY_64_OFFSET,
        rsp: 0,
    };
    let mut vcpu = AnyVcpu::new(&tables, &entry).unwrap_or_else(|e| fatal(format_args!("dom0: vCPU: {e}")));
    vcpu.gprs().rsi = layout::BOOT_PARAMS;
    vcpu.pass_through_dom0_io(&[COM1], &PIC_PORTS);
    mask_legacy_pic();
    let mut ram_map = GuestMemory::new();
    for r in &ram {
        let region = GuestRegion { gpa: GuestPhysAddr::new(r.start), hpa: HostPhysAddr::new(r.start), len: r.len(), flags: MapFlags::RWX };
        if ram_map.add(region).is_err() {
            fatal(format_args!("dom0: bad RAM region {:#x}-{:#x}", r.start, r.end));
        }
    }
    // The nested tables stay as long as dom0, for good (never `destroy`ed).
    let root = tables.root();
    let _ = tables;
    sched::init(info.options.sched_slice_ms);
    run(vcpu, vcpus, root, gm, ram_map)
}

/// Masks both 8259s: the hypervisor owns interrupt delivery and does not use them.
fn mask_legacy_pic() {
    // SAFETY: writing the PICs' interrupt-mask registers only masks interrupts.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
}

/// dom0's state its vCPUs share. `devices` and `bus` are never held together
/// (each is taken, used and let go), and never across a guest entry.
struct Dom0 {
    devices: Mutex<Devices>,
    /// Every vCPU's local APIC, and its INIT / START-UP state.
    bus: Mutex<ApicBus>,
    /// Per vCPU, for the console and the log.
    stats: Vec<VcpuStats>,
    /// Everything dom0 may touch (for MMIO emulation's page walks).
    gm: GuestMemory,
    /// Its RAM only: where hypercall arguments may be.
    ram: GuestMemory,
    /// The nested tables' root, for the vCPUs START-UP makes.
    root: u64,
}

static DOM0: Once<Dom0> = Once::new();

impl Dom0 {
    fn vcpus(&self) -> usize {
        self.stats.len()
    }

    /// How vCPU `i` is named in the log: plain "dom0" while it has one.
    fn label(&self, i: usize) -> alloc::string::String {
        if self.vcpus() == 1 {
            "dom0".into()
        } else {
            alloc::format!("dom0 vcpu{i}")
        }
    }
}

/// dom0's emulated devices but the local APICs: its console UART, its IOAPIC,
/// the masked PICs, the console switch and the physical IRQ routing.
struct Devices {
    uart: Uart16550,
    uart_irq: bool,
    pic_masks: [u8; 2],
    ioapic: IoApic,
    switch: ConsoleSwitch,
    /// Redirection entries last mirrored onto the physical I/O APIC.
    routed: [u64; irq::PINS as usize],
    /// The physical APIC id forwarded interrupts are sent to (the boot CPU's,
    /// where vCPU 0 runs).
    host_apic_id: u32,
}

/// Redirection-entry bits dom0's routing depends on.
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;

/// The UART's ISA IRQ, wired to IOAPIC pin 4 as on a PC.
const UART_PIN: u8 = 4;


impl Devices {
    /// Prints what dom0 wrote to its UART, each line tagged `(d0)`.
    fn flush_console(&mut self) {
        let out: Vec<u8> = self.uart.take_output().collect();
        if out.is_empty() {
            return;
        }
        crate::console::write_guest("(oxen) (d0) ", out.iter().copied());
        if let Some(d) = control::DOMAINS.lock().get_mut(control::DOM0_ID) {
            d.res.console.write(&out);
        }
    }

    /// Moves serial input from the hypervisor's COM1 into dom0's UART, or to
    /// the hypervisor's console after Ctrl-A three times. Returns the keys for
    /// the hypervisor's console.
    fn poll_input(&mut self) -> Vec<u8> {
        let mut keys = Vec::new();
        while self.uart.rx_space() > 2 {
            let Some(b) = crate::console::try_read_byte() else { break };
            match self.switch.feed(b) {
                None => {}
                Some(Input::ToDom0(bytes)) => {
                    self.uart.push_input(&bytes);
                }
                Some(Input::ToHypervisor(bytes)) => keys.extend(bytes),
                Some(Input::Switched(Focus::Hypervisor)) => info!(
                    "console: input now goes to the hypervisor (Ctrl-A three times for dom0); keys: {HELP}"
                ),
                Some(Input::Switched(Focus::Dom0)) => info!("console: input now goes to dom0"),
            }
        }
        keys
    }

    /// The IOAPIC's input lines: the UART's, and the physical interrupts
    /// forwarded to dom0 (a pulse on the virtual pin; a level line stays
    /// masked on the physical side until dom0's EOI, then is unmasked here).
    fn update_lines(&mut self) {
        let level = self.uart.irq_level();
        if level != self.uart_irq {
            self.uart_irq = level;
            self.ioapic.set_irq(UART_PIN, level);
        }
        let pending = irq::take_pending();
        for pin in (0..irq::PINS).filter(|p| pending & (1 << p) != 0) {
            self.ioapic.set_irq(pin, true);
            self.ioapic.set_irq(pin, false);
        }
        let eoied = self.ioapic.take_eoied_pins();
        for pin in (0..irq::PINS).filter(|p| eoied & (1 << p) != 0 && *p != UART_PIN) {
            let e = self.routed[usize::from(pin)];
            if e & RTE_LEVEL != 0 && e & RTE_MASKED == 0 {
                irq::unmask_level(pin, e & RTE_ACTIVE_LOW != 0, self.host_apic_id);
            }
        }
    }

    /// Mirrors the pins dom0 enabled or changed on its I/O APIC onto the
    /// physical one. Pin 4 is dom0's virtual UART, never a physical line.
    fn sync_routes(&mut self) {
        for pin in (0..irq::PINS).filter(|&p| p != UART_PIN) {
            let Some(e) = self.ioapic.redirection_entry(pin) else { continue };
            let e = e & (RTE_ACTIVE_LOW | RTE_LEVEL | RTE_MASKED);
            if e != self.routed[usize::from(pin)] {
                self.routed[usize::from(pin)] = e;
                irq::route(pin, e & RTE_MASKED == 0, e & RTE_LEVEL != 0, e & RTE_ACTIVE_LOW != 0, self.host_apic_id);
            }
        }
    }
}

/// What one vCPU's exits reach: the shared devices and its own local APIC.
struct Env<'a> {
    dom0: &'a Dom0,
    vcpu: usize,
    msrs: &'a mut exit::msr::VcpuMsrs,
}

impl PortBus for Env<'_> {
    fn read(&mut self, port: u16, size: u8) -> Option<u32> {
        let mut dev = self.dom0.devices.lock();
        match port {
            p if dev.uart.claims(p) => Some(dev.uart.port_read(p, size)),
            0x21 => Some(dev.pic_masks[0].into()),
            0xa1 => Some(dev.pic_masks[1].into()),
            _ => None,
        }
    }
    fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        let mut dev = self.dom0.devices.lock();
        match port {
            p if dev.uart.claims(p) => {
                dev.uart.port_write(p, size, value);
                // Under the lock, so lines from two vCPUs keep their order.
                dev.flush_console();
            }
            0x21 => dev.pic_masks[0] = value as u8,
            0xa1 => dev.pic_masks[1] = value as u8,
            _ => return false,
        }
        true
    }
}

impl GuestEnv for Env<'_> {
    fn ports(&mut self) -> &mut dyn PortBus {
        self
    }
    fn memory(&self) -> Option<&dyn crate::emulate::GuestPhysRead> {
        Some(&self.dom0.gm)
    }
    fn refused_cpl(&mut self, cpl: u8, number: u64) {
        // dom0's unprivileged processes are as untrusted as a domU: their
        // refusals count against dom0's log limit like a domU's.
        use crate::hypercall::Services;
        control::Hv.refused(control::DOM0_ID, format_args!("hypercall {number:#x} from CPL {cpl}"));
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        // vCPU i runs on CPU i and has its APIC ID: the host's topology leaves
        // (leaf 1's APIC ID, leaf 0xb) describe it as they are.
        crate::arch::x86_64::cpuid(leaf, subleaf)
    }
    fn cpuid_kind(&self) -> exit::cpuid::Kind {
        exit::cpuid::Kind::Dom0
    }
    fn vcpu_msrs(&mut self) -> Option<&mut exit::msr::VcpuMsrs> {
        Some(self.msrs)
    }
    fn tsc_hz(&self) -> u64 {
        crate::arch::x86_64::time::tsc_hz()
    }
    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        if !VirtualLapic::owns_msr(msr) {
            return None;
        }
        self.dom0.bus.lock().lapic(self.vcpu).msr_read(msr, now_ns()).ok()
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        VirtualLapic::owns_msr(msr) && self.dom0.bus.lock().lapic(self.vcpu).msr_write(msr, value, now_ns()).is_ok()
    }
    fn wbinvd(&mut self) {
        // dom0 drives the machine's devices: a driver that flushes caches for
        // a device's sake gets the real flush.
        // SAFETY: WBINVD writes caches back; it changes no hypervisor state.
        unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
    }
    fn hypercall(&mut self, args: &Args) -> (Result<u64, oxen_abi::Error>, After) {
        let mut ram = control::RamView(&self.dom0.ram);
        let mut caller = Caller { domid: control::DOM0_ID, privileged: true, ram: &mut ram };
        hypercall::dispatch(&mut caller, &mut control::Hv, args)
    }
}

/// VM exits counted by kind, for the log and the boot benchmark.
const TALLY_NAMES: [&str; 10] =
    ["cpuid", "io", "msr-read", "msr-write", "hlt", "hypercall", "npf", "preempted", "intr-window", "other"];

fn tally_index(exit: &VmExit) -> usize {
    match exit {
        VmExit::Cpuid { .. } => 0,
        VmExit::Io { .. } => 1,
        VmExit::MsrRead { .. } => 2,
        VmExit::MsrWrite { .. } => 3,
        VmExit::Hlt => 4,
        VmExit::Hypercall => 5,
        VmExit::NestedPageFault { .. } => 6,
        VmExit::Preempted => 7,
        VmExit::InterruptWindow => 8,
        _ => 9,
    }
}

/// `(oxen) LABEL: N exits (WHY): name=count ...` (the boot benchmark reads
/// dom0's `first idle stretch` and `console` lines).
fn log_tally(label: &str, why: &str, counts: [u64; 10]) {
    let total: u64 = counts.iter().sum();
    let mut s = alloc::string::String::new();
    for (name, n) in TALLY_NAMES.iter().zip(counts) {
        if n > 0 {
            let _ = core::fmt::Write::write_fmt(&mut s, format_args!(" {name}={n}"));
        }
    }
    info!("{label}: {total} exits ({why}):{s}");
}

/// What the console and the log see of one vCPU: its CPU counts, the others read.
#[derive(Default)]
struct VcpuStats {
    tally: [AtomicU64; 10],
    /// `STATE_*`.
    state: AtomicU8,
}

const STATE_WAIT_FOR_SIPI: u8 = 0;
const STATE_RUNNING: u8 = 1;
const STATE_HALTED: u8 = 2;

impl VcpuStats {
    fn counts(&self) -> [u64; 10] {
        core::array::from_fn(|i| self.tally[i].load(Ordering::Relaxed))
    }

    fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            STATE_WAIT_FOR_SIPI => "waiting for START-UP",
            STATE_HALTED => "halted",
            _ => "running",
        }
    }
}

/// Exits between two tallies in the log.
const TALLY_EVERY: u64 = 1 << 18;

/// The hypervisor console's keys.
const HELP: &str = "h help, d domains, c CPUs, e VM exits by reason, m memory, s scheduler, n NMI to the other CPUs";

/// Answers one key on the hypervisor's console.
fn debug_key(key: u8, dom0: &Dom0) {
    match key {
        b'h' | b'?' => info!("console: keys: {HELP}"),
        b'd' => {
            control::describe_all();
            for (i, s) in dom0.stats.iter().enumerate() {
                let (id, ppr) = {
                    let mut bus = dom0.bus.lock();
                    let l = bus.lapic(i);
                    (l.id(), l.ppr())
                };
                let exits: u64 = s.counts().iter().sum();
                info!("console: dom0 vcpu{i} on cpu{i}: {}, {exits} exits, vLAPIC id {id} ppr {ppr:#x}", s.state_name());
            }
            let u = dom0.bus.lock().undelivered();
            if u != Default::default() {
                info!("console: dom0 messages not delivered: {u:?}");
            }
        }
        b'c' => {
            for cpu in 0..smp::cpu_count() {
                let (watched, busy) = sched::cpu_summary(cpu);
                let busy = busy || cpu == crate::arch::x86_64::cpu_id();
                let mine = (cpu as usize) < dom0.vcpus();
                info!("console: cpu{cpu}: {}, watching {watched} blocked vCPU(s)", if busy { "running a vCPU" } else { "idle" });
                if mine {
                    let s = &dom0.stats[cpu as usize];
                    info!("console: cpu{cpu}: dom0 vcpu{cpu} {}", s.state_name());
                }
            }
            info!("console: {} physical NMI(s) taken since boot", crate::arch::x86_64::idt::nmi_count());
        }
        b's' => sched::log_stats(),
        b'n' => info!("console: sent an NMI to {} other CPU(s)", smp::nmi_others()),
        b'e' => {
            let mut total = [0u64; 10];
            for s in &dom0.stats {
                total.iter_mut().zip(s.counts()).for_each(|(t, n)| *t += n);
            }
            log_tally("dom0", "console", total);
            if dom0.vcpus() > 1 {
                for (i, s) in dom0.stats.iter().enumerate() {
                    log_tally(&dom0.label(i), "console", s.counts());
                }
            }
        }
        b'm' => info!("console: {} MiB free in the hypervisor's frame allocator", mem::free_frame_count() * 4 / 1024),
        b'\r' | b'\n' => {}
        other => info!("console: no key {:?}; keys: {HELP}", char::from(other)),
    }
}

/// What dom0 sees where it has no memory (hypervisor RAM, or nothing): reads
/// return all ones, writes are dropped, as on a bus where nothing answers.
struct Blocked;

impl crate::devices::MmioDevice for Blocked {
    fn mmio_read(&mut self, _offset: u64, _size: u8) -> u64 {
        u64::MAX
    }
    fn mmio_write(&mut self, _offset: u64, _size: u8, _value: u64) {}
}

/// An exit nothing emulates, by dom0 (an MMIO instruction the emulator does
/// not decode, string I/O on an emulated port, an exit no handler knows):
/// dom0 gets #UD, as from a CPU that cannot run the instruction, and runs on.
/// Logged up to `BLOCKED_LOG_LIMIT` times, then counted.
fn refuse(vcpu: &mut AnyVcpu, count: &mut u64, what: core::fmt::Arguments<'_>) {
    const UD: u8 = 6;
    *count += 1;
    if *count <= BLOCKED_LOG_LIMIT {
        warn!("{what} at rip {:#x}: #UD injected", vcpu.rip());
    } else if *count == BLOCKED_LOG_LIMIT + 1 {
        warn!("dom0: further exits answered with #UD are counted, not logged");
    }
    vcpu.inject_exception(UD, None);
}

/// Most blocked accesses logged one by one; after that only counted.
const BLOCKED_LOG_LIMIT: u64 = 16;

/// dom0 touched guest-physical memory it does not have. The access fails
/// inside dom0 and dom0 runs on: a plain MOV completes against `Blocked`,
/// anything else (string copies, as from /dev/mem) gets #GP, which Linux's
/// exception fixups turn into an error for the caller.
fn blocked_access(vcpu: &mut AnyVcpu, gm: &GuestMemory, gpa: GuestPhysAddr, access: Access, count: &mut u64) {
    *count += 1;
    let page = GuestPhysAddr::new(gpa.as_u64() & !(PAGE_SIZE - 1));
    let rip = vcpu.rip();
    let result = match vcpu.cpu_state() {
        Some(cpu) => mmio::emulate_mmio(vcpu, gm, &cpu, gpa, page, &mut Blocked).map(|_| ()),
        None => Err(EmulateError::Decode(crate::emulate::decode::DecodeError::Unsupported)),
    };
    let kind = if access.contains(Access::EXEC) {
        "execute"
    } else if access.contains(Access::WRITE) {
        "write"
    } else {
        "read"
    };
    let what = match (&result, kind) {
        (Err(_), _) => "refused with #GP",
        (Ok(()), "write") => "dropped",
        (Ok(()), _) => "reads all ones",
    };
    if *count <= BLOCKED_LOG_LIMIT {
        warn!("dom0: {kind} of {:#x} (not dom0 memory) at rip {rip:#x}: {what}", gpa.as_u64());
    } else if *count == BLOCKED_LOG_LIMIT + 1 {
        warn!("dom0: further blocked accesses are counted, not logged");
    }
    if result.is_err() {
        const GP: u8 = 13;
        vcpu.inject_exception(GP, Some(0));
    }
}

/// Completes vCPU `index`'s access to an emulated MMIO page, if `gpa` is in one.
fn emulate_mmio(vcpu: &mut AnyVcpu, dom0: &Dom0, index: usize, gpa: GuestPhysAddr) -> Option<Result<(), EmulateError>> {
    let page = gpa.as_u64() & !(PAGE_SIZE - 1);
    let cpu = vcpu.cpu_state()?;
    let now = now_ns();
    let at = GuestPhysAddr::new(page);
    let result = match page {
        LAPIC_PAGE => mmio::emulate_mmio(vcpu, &dom0.gm, &cpu, gpa, at, &mut dom0.bus.lock().lapic(index).mmio(now)),
        IOAPIC_PAGE => {
            let mut dev = dom0.devices.lock();
            let r = mmio::emulate_mmio(vcpu, &dom0.gm, &cpu, gpa, at, &mut dev.ioapic);
            dev.sync_routes();
            r
        }
        _ => return None,
    };
    Some(result.map(|_| ()))
}

/// What `service` found.
enum Serviced {
    /// Run on; the vCPU's APIC timer fires next at this time.
    Run { timer: Option<u64> },
    /// INIT or START-UP came for this vCPU: `follow_power` first.
    PowerChanged,
}

/// dom0's vCPU `index`, for good on CPU `index`'s run queue.
struct Dom0Vcpu {
    index: usize,
    dom0: &'static Dom0,
    /// `None` while waiting for START-UP.
    vcpu: Option<AnyVcpu>,
    /// The bus's INIT count this vCPU last acted on.
    inits_seen: u32,
    exits: u64,
    halted: bool,
    halted_since: Option<u64>,
    stall_reported: bool,
    blocked: u64,
    /// Exits answered with #UD because nothing emulates them (see `refuse`).
    refused: u64,
    /// Its x87/SSE/AVX/… registers and XCR0 while it is not running.
    xstate: XState,
    /// SPEC_CTRL and the other MSRs virtualized per vCPU.
    msrs: exit::msr::VcpuMsrs,
}

// SAFETY: a dom0 vCPU is queued on its CPU before it has guest state and never
// moves; its VMCS/VMCB is made (at boot for vCPU 0, at START-UP for the others),
// run and dropped on that CPU only.
unsafe impl Send for Dom0Vcpu {}

impl Dom0Vcpu {
    fn new(index: usize, dom0: &'static Dom0, vcpu: Option<AnyVcpu>) -> Self {
        let xstate = XState::new().unwrap_or_else(|| fatal(format_args!("dom0: no memory for vCPU {index}'s XSAVE area")));
        Self {
            index,
            dom0,
            vcpu,
            inits_seen: 0,
            exits: 0,
            halted: false,
            halted_since: None,
            stall_reported: false,
            blocked: 0,
            refused: 0,
            xstate,
            msrs: Default::default(),
        }
    }

    fn stats(&self) -> &VcpuStats {
        &self.dom0.stats[self.index]
    }

    /// Acts on INIT (the guest state goes; wait for START-UP) and START-UP (a
    /// new vCPU in real mode at the start page, made here on its own CPU).
    fn follow_power(&mut self) {
        let (reset, startup) = {
            let mut bus = self.dom0.bus.lock();
            let inits = bus.inits(self.index);
            let reset = inits != self.inits_seen;
            self.inits_seen = inits;
            (reset, bus.take_startup(self.index))
        };
        if reset {
            // On this CPU, where a VMCS must be cleared.
            if self.vcpu.take().is_some() {
                info!("{}: INIT: waiting for START-UP", self.dom0.label(self.index));
            }
            (self.halted, self.halted_since, self.stall_reported) = (false, None, false);
        }
        if let Some(page) = startup {
            let entry = InitialState { mode: EntryMode::Real { cs_selector: u16::from(page) << 8 }, rip: 0, rsp: 0 };
            match AnyVcpu::with_root(self.dom0.root, &entry) {
                Ok(mut v) => {
                    v.pass_through_dom0_io(&[COM1], &PIC_PORTS);
                    self.vcpu = Some(v);
                    info!(
                        "{}: START-UP: real mode at {:#x} on cpu{}",
                        self.dom0.label(self.index),
                        u32::from(page) << 12,
                        crate::arch::x86_64::cpu_id()
                    );
                }
                Err(e) => warn!("{}: START-UP: cannot make the vCPU: {e}", self.dom0.label(self.index)),
            }
        }
        let state = match (&self.vcpu, self.halted) {
            (None, _) => STATE_WAIT_FOR_SIPI,
            (Some(_), true) => STATE_HALTED,
            (Some(_), false) => STATE_RUNNING,
        };
        self.stats().state.store(state, Ordering::Relaxed);
    }

    /// Console keys (vCPU 0), interrupt state shared with the other vCPUs, and
    /// an interrupt injected if one is due and the guest can take it.
    fn service(&mut self, now: u64) -> Serviced {
        let (dom0, i) = (self.dom0, self.index);
        if i == 0 {
            // Serial input and the hypervisor's console stay with vCPU 0.
            let keys = dom0.devices.lock().poll_input();
            for key in keys {
                debug_key(key, dom0);
            }
        }
        let mut wake: Wake = 0;
        let mut eois = Vectors::default();
        let mut first = true;
        let result = loop {
            // The IOAPIC: EOIs from the last round, input lines, what it sends.
            let mut out: [Option<Delivery>; IOAPIC_PINS] = [None; IOAPIC_PINS];
            {
                let mut dev = dom0.devices.lock();
                for v in eois.iter() {
                    dev.ioapic.eoi(v);
                }
                dev.update_lines();
                for slot in out.iter_mut() {
                    let Some(d) = dev.ioapic.pop_delivery() else { break };
                    *slot = Some(d);
                }
            }
            eois = Vectors::default();
            // The APICs: the IOAPIC's messages, this APIC's timer and what it sends.
            let mut bus = dom0.bus.lock();
            for d in out.iter().flatten() {
                wake |= bus.deliver(d);
            }
            if first {
                bus.lapic(i).tick(now);
                first = false;
            }
            wake |= bus.drain(i, &mut eois);
            if !eois.is_empty() {
                // A level EOI may let the IOAPIC send again: another round.
                continue;
            }
            if bus.inits(i) != self.inits_seen || matches!(bus.power(i), Power::StartUp(_)) {
                break Serviced::PowerChanged;
            }
            let Some(vcpu) = self.vcpu.as_mut() else { break Serviced::PowerChanged };
            let lapic = bus.lapic(i);
            if let Some(vector) = lapic.pending() {
                if vcpu.interrupt_ready() {
                    vcpu.inject_interrupt(vector);
                    lapic.ack();
                    self.halted = false;
                    self.halted_since = None;
                } else {
                    vcpu.request_interrupt_window(true);
                }
            }
            break Serviced::Run { timer: lapic.timer_deadline() };
        };
        // vCPU j runs on CPU j: wake the others that got something.
        for j in bits(wake & !(1 << i)) {
            smp::kick(j as u32);
        }
        result
    }

    fn report_stall(&mut self, now: u64) {
        let since = *self.halted_since.get_or_insert(now);
        if self.stall_reported || now - since <= STALL_NS {
            return;
        }
        self.stall_reported = true;
        let label = self.dom0.label(self.index);
        log_tally(&label, "first idle stretch", self.stats().counts());
        let Some(vcpu) = self.vcpu.as_ref() else { return };
        let (rip, ready, exits) = (vcpu.rip(), vcpu.interrupt_ready(), self.exits);
        let mut bus = self.dom0.bus.lock();
        let l = bus.lapic(self.index);
        let isr: [u32; 8] = core::array::from_fn(|i| l.read_register(0x100 + 0x10 * i as u32, now));
        let irr: [u32; 8] = core::array::from_fn(|i| l.read_register(0x200 + 0x10 * i as u32, now));
        info!(
            "{label}: idle for {} s (nothing to deliver): rip {:#x}, interrupt ready {}, pending {:?}, ppr {:#x}, timer deadline {:?} (now {now}), lvt timer {:#x}, isr {isr:x?}, irr {irr:x?}, exits {}",
            (now - since) / 1_000_000_000,
            rip,
            ready,
            l.pending(),
            l.ppr(),
            l.timer_deadline(),
            l.read_register(0x320, now),
            exits,
        );
    }
}

impl Runnable for Dom0Vcpu {
    fn poll(&mut self, now: u64) -> Poll {
        let timer = loop {
            self.follow_power();
            if self.vcpu.is_none() {
                // Waiting for START-UP: only a kick (from the IPI) can change that.
                return Poll::Sleep(None);
            }
            if let Serviced::Run { timer } = self.service(now) {
                break timer;
            }
        };
        if !self.halted {
            return Poll::Run;
        }
        self.stats().state.store(STATE_HALTED, Ordering::Relaxed);
        self.report_stall(now);
        // While halted, sleep until its timer, a kick, or (vCPU 0) the next
        // look at serial input.
        let poll = (self.index == 0).then_some(now + SERIAL_POLL_NS);
        Poll::Sleep(match (timer, poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    fn run(&mut self, until: u64) {
        let start = now_ns();
        let exits_before = self.exits;
        self.stats().state.store(STATE_RUNNING, Ordering::Relaxed);
        self.xstate.load();
        loop {
            let now = now_ns();
            let Serviced::Run { timer } = self.service(now) else { break };
            if self.halted || now >= until {
                break;
            }
            let stop = if self.index == 0 { until.min(now + SERIAL_POLL_NS) } else { until };
            apic::arm_timer(Some(ns_to_tsc(timer.map_or(stop, |d| d.min(stop)))));
            let Some(vcpu) = self.vcpu.as_mut() else { break };
            exit::msr::load_for_guest(&self.msrs, control::DOM0_ID);
            let exit = vcpu.run();
            self.exits += 1;
            self.dom0.stats[self.index].tally[tally_index(&exit)].fetch_add(1, Ordering::Relaxed);
            if self.exits.is_multiple_of(TALLY_EVERY) {
                log_tally(&self.dom0.label(self.index), "so far", self.dom0.stats[self.index].counts());
            }
            if let VmExit::NestedPageFault { gpa, access } = exit {
                match emulate_mmio(vcpu, self.dom0, self.index, gpa) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        let label = self.dom0.label(self.index);
                        refuse(vcpu, &mut self.refused, format_args!("{label}: cannot emulate MMIO at {gpa:?}: {e:?}"));
                    }
                    None => blocked_access(vcpu, &self.dom0.gm, gpa, access, &mut self.blocked),
                }
                continue;
            }
            let mut env = Env { dom0: self.dom0, vcpu: self.index, msrs: &mut self.msrs };
            match exit::handle(vcpu, exit, &mut env) {
                Outcome::Continue => {}
                // A physical interrupt (the timer, a kick, a device): back to
                // the scheduler, which may have another vCPU to run here.
                Outcome::Preempted => break,
                Outcome::Halted => self.halted = true,
                Outcome::Yield | Outcome::Block { .. } => break,
                // What dom0 does can stop the host only as a real machine
                // stops: a triple fault (or dom0 shutting itself down).
                stop @ (Outcome::TripleFault | Outcome::Shutdown(_)) => {
                    let rip = vcpu.rip();
                    fatal(format_args!(
                        "{} stopped after {} exits at rip {rip:#x}: {stop:?}",
                        self.dom0.label(self.index),
                        self.exits
                    ));
                }
                other => {
                    let label = self.dom0.label(self.index);
                    refuse(vcpu, &mut self.refused, format_args!("{label}: {other:?}"));
                }
            }
        }
        self.xstate.save();
        let ran = now_ns().saturating_sub(start);
        if let Some(d) = control::DOMAINS.lock().get_mut(control::DOM0_ID) {
            d.cpu_time_ns += ran;
            d.exits += self.exits - exits_before;
        }
    }
}

/// Starts every CPU's scheduler loop with dom0's vCPU `i` on CPU `i` (vCPU 0
/// ready to run, the others waiting for START-UP). Never returns.
fn run(vcpu: AnyVcpu, vcpus: u32, root: u64, gm: GuestMemory, ram: GuestMemory) -> ! {
    let clock = LapicClock { bus_hz: apic::timer_hz().max(1), tsc_hz: time::tsc_hz().max(1) };
    // vCPU i takes CPU i's APIC ID: the firmware's MADT, which dom0 reads,
    // then names its vCPUs, and CPUID (not intercepted for the topology)
    // agrees with it.
    let apic_ids: Vec<u32> = (0..vcpus).map(smp::apic_id).collect();
    let dom0 = DOM0.call_once(|| Dom0 {
        devices: Mutex::new(Devices {
            uart: Uart16550::com1(),
            uart_irq: false,
            pic_masks: [0xff; 2],
            ioapic: IoApic::new(0),
            switch: ConsoleSwitch::default(),
            routed: [RTE_MASKED; irq::PINS as usize],
            host_apic_id: apic::id(),
        }),
        bus: Mutex::new(ApicBus::new(&apic_ids, clock)),
        stats: (0..vcpus).map(|_| VcpuStats::default()).collect(),
        gm,
        ram: ram.clone(),
        root,
    });
    irq::init(IOAPIC_PAGE);
    control::register_dom0(ram, vcpus);
    sched::set_housekeeping(control::housekeeping);
    for cpu in 1..smp::cpu_count() {
        smp::start_on(cpu, sched::cpu_loop);
    }
    info!("dom0: starting ({vcpus} vCPU(s): vCPU i on cpu i, APIC IDs {apic_ids:?})");
    for i in 1..vcpus {
        sched::enqueue(i, Box::new(Dom0Vcpu::new(i as usize, dom0, None)));
    }
    sched::enqueue(0, Box::new(Dom0Vcpu::new(0, dom0, Some(vcpu))));
    sched::cpu_loop()
}

/// Appended to dom0's kernel command line (see `boot`).
const DOM0_FORCED_ARGS: &str = "pci=nomsi";

/// dom0 halted this long with nothing delivered is reported (once): normal at
/// an idle shell, and the state to look at when it is not.
const STALL_NS: u64 = 5_000_000_000;
/// How often serial input is polled while dom0 idles.
const SERIAL_POLL_NS: u64 = 10_000_000;
const LAPIC_PAGE: u64 = 0xfee0_0000;
const IOAPIC_PAGE: u64 = 0xfec0_0000;
