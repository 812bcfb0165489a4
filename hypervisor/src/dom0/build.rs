//! Building and running dom0 (target only): memory, boot structures, vCPU.

use super::layout::{self, Layout};
use crate::arch::x86_64::{apic, irq, time};
use crate::devices::ioapic::{DeliveryMode, IoApic, TriggerMode};
use crate::devices::lapic::{LapicClock, LapicEvent, VirtualLapic};
use crate::console_switch::{ConsoleSwitch, Focus, Input};
use crate::devices::{uart16550::Uart16550, PortDevice};
use crate::emulate::mmio::{self, EmulateError};
use crate::virt::{Access, VmExit};
use crate::exit::{self, cpuid::CpuidResult, io::PortBus, GuestEnv, Outcome};
use crate::linux::{boot_params, bzimage::BzImage, e820};
use crate::mem::memmap::{self, Region};
use crate::mem::paging::MapFlags;
use crate::mem::{self, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::start::{fatal, BootInfo};
use crate::virt::{guest_mem::GuestRegion, AnyVcpu, EntryMode, GuestMemory, InitialState, NestedTables, Vcpu};
use crate::arch::x86_64::smp;
use crate::domain::control;
use crate::hypercall::{self, After, Args, Caller};
use crate::sched::run::{self as sched, now_ns, ns_to_tsc, Poll, Runnable};
use alloc::vec::Vec;
use log::{info, warn};

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

    let plan: Layout = layout::plan(&ram, &module_pages, bz.alignment(), bz.pref_address(), bz.init_size())
        .unwrap_or_else(|e| fatal(format_args!("dom0: cannot lay out the kernel in dom0's memory: {e:?}")));

    // Boot structures, all in dom0's own (identity-mapped) RAM.
    copy_to(plan.kernel_load, bz.kernel());
    let given = kmod.cmdline.split_once(' ').map_or("", |(_, args)| args);
    // MSIs from dom0's devices are not delivered yet (they would reach the
    // physical APIC with vectors only dom0 knows): dom0 uses INTx lines, which
    // the hypervisor forwards through its I/O APIC.
    let cmdline = alloc::format!("{given} {DOM0_FORCED_ARGS}");
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
    let mut vcpu = AnyVcpu::new(&tables, &entry, 1).unwrap_or_else(|e| fatal(format_args!("dom0: vCPU: {e}")));
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
    let _ = tables;
    sched::init(info.options.sched_slice_ms);
    run(vcpu, gm, ram_map)
}

/// Masks both 8259s: the hypervisor owns interrupt delivery and does not use them.
fn mask_legacy_pic() {
    // SAFETY: writing the PICs' interrupt-mask registers only masks interrupts.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
}

/// dom0's emulated devices: its console UART, its IOAPIC and its (one, for
/// now) local APIC, plus the masked PICs.
struct Dom0Env {
    uart: Uart16550,
    uart_irq: bool,
    pic_masks: [u8; 2],
    ioapic: IoApic,
    lapic: VirtualLapic,
    switch: ConsoleSwitch,
    /// Redirection entries last mirrored onto the physical I/O APIC.
    routed: [u64; irq::PINS as usize],
    /// The physical APIC id forwarded interrupts are sent to (this CPU's).
    host_apic_id: u32,
    /// dom0's RAM: where its hypercall arguments may be.
    ram: GuestMemory,
}

/// Redirection-entry bits dom0's routing depends on.
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;

/// The UART's ISA IRQ, wired to IOAPIC pin 4 as on a PC.
const UART_PIN: u8 = 4;

impl Dom0Env {
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

    /// Propagates interrupt state: UART line → IOAPIC → local APIC, the local
    /// APIC's timer, its IPIs and level-triggered EOIs.
    fn update_interrupts(&mut self, now: u64) {
        let level = self.uart.irq_level();
        if level != self.uart_irq {
            self.uart_irq = level;
            self.ioapic.set_irq(UART_PIN, level);
        }
        self.lapic.tick(now);
        while let Some(ev) = self.lapic.pop_event() {
            match ev {
                LapicEvent::LevelEoi(vector) => self.ioapic.eoi(vector),
                LapicEvent::Ipi(ipi) => {
                    if self.lapic.matches(&ipi.dest, ipi.source, self.lapic.logical_mode()) {
                        self.lapic.receive_ipi(&ipi);
                    } else {
                        log::debug!("dom0: IPI to {:?} has no vCPU (dom0 has one)", ipi.dest);
                    }
                }
            }
        }
        while let Some(d) = self.ioapic.pop_delivery() {
            match d.delivery_mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    self.lapic.accept(d.vector, d.trigger_mode == TriggerMode::Level);
                }
                other => log::debug!("dom0: IOAPIC pin {} delivery mode {other:?} not delivered", d.pin),
            }
        }
        // Physical interrupts forwarded to dom0: a pulse on the virtual pin (a
        // level line stays masked on the physical side until dom0's EOI).
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

impl PortBus for Dom0Env {
    fn read(&mut self, port: u16, size: u8) -> Option<u32> {
        match port {
            p if self.uart.claims(p) => Some(self.uart.port_read(p, size)),
            0x21 => Some(self.pic_masks[0].into()),
            0xa1 => Some(self.pic_masks[1].into()),
            _ => None,
        }
    }
    fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        match port {
            p if self.uart.claims(p) => {
                self.uart.port_write(p, size, value);
                self.flush_console();
            }
            0x21 => self.pic_masks[0] = value as u8,
            0xa1 => self.pic_masks[1] = value as u8,
            _ => return false,
        }
        true
    }
}

impl GuestEnv for Dom0Env {
    fn ports(&mut self) -> &mut dyn PortBus {
        self
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::arch::x86_64::cpuid(leaf, subleaf)
    }
    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        if !VirtualLapic::owns_msr(msr) {
            return None;
        }
        self.lapic.msr_read(msr, now_ns()).ok()
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        VirtualLapic::owns_msr(msr) && self.lapic.msr_write(msr, value, now_ns()).is_ok()
    }
    fn hypercall(&mut self, args: &Args) -> (Result<u64, oxen_abi::Error>, After) {
        let mut ram = control::RamView(&self.ram);
        let mut caller = Caller { domid: control::DOM0_ID, privileged: true, ram: &mut ram };
        hypercall::dispatch(&mut caller, &mut control::Hv, args)
    }
}

/// dom0's VM exits counted by kind, for the log and the boot benchmark.
#[derive(Default)]
struct ExitTally([u64; 10]);

impl ExitTally {
    const NAMES: [&'static str; 10] =
        ["cpuid", "io", "msr-read", "msr-write", "hlt", "hypercall", "npf", "preempted", "intr-window", "other"];

    fn count(&mut self, exit: &VmExit) {
        let i = match exit {
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
        };
        self.0[i] += 1;
    }

    fn log(&self, why: &str) {
        let total: u64 = self.0.iter().sum();
        let mut s = alloc::string::String::new();
        for (name, n) in Self::NAMES.iter().zip(self.0) {
            if n > 0 {
                let _ = core::fmt::Write::write_fmt(&mut s, format_args!(" {name}={n}"));
            }
        }
        info!("dom0: {total} exits ({why}):{s}");
    }
}

/// Exits between two tallies in the log.
const TALLY_EVERY: u64 = 1 << 18;

/// The hypervisor console's keys.
const HELP: &str = "h help, d domains, c CPUs, e VM exits by reason, m memory";

/// Answers one key on the hypervisor's console.
fn debug_key(key: u8, env: &Dom0Env, tally: &ExitTally, exits: u64) {
    match key {
        b'h' | b'?' => info!("console: keys: {HELP}"),
        b'd' => {
            info!("console: dom0: {exits} exits, vLAPIC ppr {:#x}", env.lapic.ppr());
            control::describe_all();
        }
        b'c' => {
            for cpu in 0..smp::cpu_count() {
                let (watched, busy) = sched::cpu_summary(cpu);
                let busy = busy || cpu == crate::arch::x86_64::cpu_id();
                info!("console: cpu{cpu}: {}, watching {watched} blocked vCPU(s)", if busy { "running a vCPU" } else { "idle" });
            }
        }
        b'e' => tally.log("console"),
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

/// Completes dom0's access to an emulated MMIO page, if `gpa` is in one.
fn emulate_mmio(vcpu: &mut AnyVcpu, gm: &GuestMemory, env: &mut Dom0Env, gpa: GuestPhysAddr) -> Option<Result<(), EmulateError>> {
    let page = gpa.as_u64() & !(PAGE_SIZE - 1);
    let cpu = vcpu.cpu_state()?;
    let now = now_ns();
    let result = match page {
        LAPIC_PAGE => mmio::emulate_mmio(vcpu, gm, &cpu, gpa, GuestPhysAddr::new(page), &mut env.lapic.mmio(now)),
        IOAPIC_PAGE => {
            let r = mmio::emulate_mmio(vcpu, gm, &cpu, gpa, GuestPhysAddr::new(page), &mut env.ioapic);
            env.sync_routes();
            r
        }
        _ => return None,
    };
    Some(result.map(|_| ()))
}

/// dom0's vCPU on CPU 0's run queue, with its devices.
struct Dom0Vcpu {
    vcpu: AnyVcpu,
    /// Everything dom0 may touch (for MMIO emulation's page walks).
    gm: GuestMemory,
    /// Its RAM only: where hypercall arguments may be.
    env: Dom0Env,
    exits: u64,
    halted: bool,
    halted_since: Option<u64>,
    stall_reported: bool,
    blocked: u64,
    tally: ExitTally,
}

// SAFETY: dom0's vCPU is made on CPU 0 and only ever run there (it is queued
// on CPU 0 before the loop starts and never moves).
unsafe impl Send for Dom0Vcpu {}

impl Dom0Vcpu {
    /// Console keys, interrupt state, and an interrupt injected if one is due
    /// and dom0 can take it.
    fn service(&mut self, now: u64) {
        for key in self.env.poll_input() {
            debug_key(key, &self.env, &self.tally, self.exits);
        }
        self.env.update_interrupts(now);
        if let Some(vector) = self.env.lapic.pending() {
            if self.vcpu.interrupt_ready() {
                self.vcpu.inject_interrupt(vector);
                self.env.lapic.ack();
                self.halted = false;
                self.halted_since = None;
            } else {
                self.vcpu.request_interrupt_window(true);
            }
        }
    }

    fn report_stall(&mut self, now: u64) {
        let since = *self.halted_since.get_or_insert(now);
        if self.stall_reported || now - since <= STALL_NS {
            return;
        }
        self.stall_reported = true;
        self.tally.log("first idle stretch");
        let (rip, ready, exits) = (self.vcpu.rip(), self.vcpu.interrupt_ready(), self.exits);
        let env = &mut self.env;
        let isr: [u32; 8] = core::array::from_fn(|i| env.lapic.read_register(0x100 + 0x10 * i as u32, now));
        let irr: [u32; 8] = core::array::from_fn(|i| env.lapic.read_register(0x200 + 0x10 * i as u32, now));
        info!(
            "dom0: idle for {} s (nothing to deliver): rip {:#x}, interrupt ready {}, pending {:?}, ppr {:#x}, timer deadline {:?} (now {now}), lvt timer {:#x}, isr {isr:x?}, irr {irr:x?}, exits {}",
            (now - since) / 1_000_000_000,
            rip,
            ready,
            env.lapic.pending(),
            env.lapic.ppr(),
            env.lapic.timer_deadline(),
            env.lapic.read_register(0x320, now),
            exits,
        );
    }
}

impl Runnable for Dom0Vcpu {
    fn poll(&mut self, now: u64) -> Poll {
        self.service(now);
        if !self.halted {
            return Poll::Run;
        }
        self.report_stall(now);
        // While dom0 idles, sleep until its timer or (polled) serial input.
        let poll = now + SERIAL_POLL_NS;
        Poll::Sleep(Some(self.env.lapic.timer_deadline().map_or(poll, |d| d.min(poll))))
    }

    fn run(&mut self, until: u64) {
        let start = now_ns();
        let exits_before = self.exits;
        loop {
            let now = now_ns();
            self.service(now);
            if self.halted || now >= until {
                break;
            }
            let poll = now + SERIAL_POLL_NS;
            let stop = until.min(poll);
            apic::arm_timer(Some(ns_to_tsc(self.env.lapic.timer_deadline().map_or(stop, |d| d.min(stop)))));
            let exit = self.vcpu.run();
            self.exits += 1;
            self.tally.count(&exit);
            if self.exits.is_multiple_of(TALLY_EVERY) {
                self.tally.log("so far");
            }
            if let VmExit::NestedPageFault { gpa, access } = exit {
                match emulate_mmio(&mut self.vcpu, &self.gm, &mut self.env, gpa) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => fatal(format_args!(
                        "dom0: cannot emulate MMIO at {gpa:?} (rip {:#x}): {e:?}",
                        self.vcpu.rip()
                    )),
                    None => blocked_access(&mut self.vcpu, &self.gm, gpa, access, &mut self.blocked),
                }
                continue;
            }
            match exit::handle(&mut self.vcpu, exit, &mut self.env) {
                Outcome::Continue => {}
                // A physical interrupt (the timer, a kick, a device): back to
                // the scheduler, which may have another vCPU to run here.
                Outcome::Preempted => break,
                Outcome::Halted => self.halted = true,
                Outcome::Yield | Outcome::Block { .. } => break,
                other => {
                    let rip = self.vcpu.rip();
                    fatal(format_args!("dom0 stopped after {} exits at rip {rip:#x}: {other:?}", self.exits));
                }
            }
        }
        let ran = now_ns().saturating_sub(start);
        if let Some(d) = control::DOMAINS.lock().get_mut(control::DOM0_ID) {
            d.cpu_time_ns += ran;
            d.exits += self.exits - exits_before;
        }
    }
}

/// Starts every CPU's scheduler loop with dom0's vCPU on CPU 0. Never returns.
fn run(vcpu: AnyVcpu, gm: GuestMemory, ram: GuestMemory) -> ! {
    let clock = LapicClock { bus_hz: apic::timer_hz().max(1), tsc_hz: time::tsc_hz().max(1) };
    let env = Dom0Env {
        uart: Uart16550::com1(),
        uart_irq: false,
        pic_masks: [0xff; 2],
        ioapic: IoApic::new(0),
        lapic: VirtualLapic::new(0, true, clock),
        switch: ConsoleSwitch::default(),
        routed: [RTE_MASKED; irq::PINS as usize],
        host_apic_id: apic::id(),
        ram: ram.clone(),
    };
    irq::init(IOAPIC_PAGE);
    control::register_dom0(ram, 1);
    sched::set_housekeeping(control::housekeeping);
    for cpu in 1..smp::cpu_count() {
        smp::start_on(cpu, sched::cpu_loop);
    }
    info!("dom0: starting");
    let d0 = Dom0Vcpu {
        vcpu,
        gm,
        env,
        exits: 0,
        halted: false,
        halted_since: None,
        stall_reported: false,
        blocked: 0,
        tally: ExitTally::default(),
    };
    sched::enqueue(0, alloc::boxed::Box::new(d0));
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
