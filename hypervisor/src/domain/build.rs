//! Lays a domU's staged kernel (and ramdisk) out in its memory, with the boot
//! structures of docs/hypercalls.md "domU boot state" (`boot::plan`), ready
//! for its first vCPU entry; a kernel with a Multiboot header goes to
//! `multiboot::lay_out` instead. Used by `domctl BUILD` and on every restart.

use super::boot;
use super::control::{BootSpec, RamView, Resources};
use super::elf;
use super::linux;
use crate::linux::{boot_params, bzimage::BzImage};
use super::multiboot;
use crate::hypercall::GuestRam;
use crate::mem::GuestPhysAddr;
use crate::virt::{EntryMode, InitialState};
use alloc::string::{String, ToString};
use oxen_abi::{Error, Pod};

pub struct BuildError {
    pub error: Error,
    pub why: String,
}

fn err(error: Error, why: impl ToString) -> BuildError {
    BuildError { error, why: why.to_string() }
}

/// Copies the kernel's segments, the ramdisk, page tables, GDT and
/// `StartInfo` into the domain's RAM and returns where its vCPU starts.
pub fn lay_out(res: &mut Resources, vcpus: u32) -> Result<BootSpec, BuildError> {
    // Borrowed from `res` only while laying out; the staged images stay.
    let image = res.images[0]
        .as_ref()
        .filter(|s| s.loaded == s.len)
        .ok_or_else(|| err(Error::Inval, "no kernel loaded, or not all of it"))?;
    let ramdisk = match &res.images[1] {
        Some(r) if r.loaded != r.len => return Err(err(Error::Inval, "ramdisk not all loaded")),
        r => r.as_ref(),
    };
    let memory: u64 = res.ram.regions().iter().map(|r| r.len).sum();
    if let Ok(bz) = BzImage::parse(image.bytes()) {
        return lay_out_linux(res, &bz, ramdisk.map(|r| r.bytes()), memory, vcpus);
    }
    if multiboot::detect(image.bytes()) {
        let mut ram = RamView(&res.ram);
        write_acpi(&mut ram, vcpus, &res.devices)?;
        let cmdline = res.cmdline.as_bytes();
        let (entry, gprs) = multiboot::lay_out(image.bytes(), ramdisk.map(|r| r.bytes()), memory, cmdline, &mut ram)
            .map_err(|e| err(e.errno(), e))?;
        return Ok(BootSpec { entry, gprs, format: "Multiboot" });
    }
    // An ELF linked where x86-64 Linux runs, without a Multiboot header (a
    // higher-half Multiboot kernel may be linked so too): an uncompressed
    // `vmlinux`. Told apart before its segments are checked against any
    // window, so that one that does not fit says so as a Linux kernel.
    let any = GuestPhysAddr::new(0)..GuestPhysAddr::new(1 << 52);
    if let Some(kernel) = elf::parse(image.bytes(), any).ok().filter(elf::Kernel::is_linux) {
        return lay_out_vmlinux(res, &kernel, image.bytes(), ramdisk.map(|r| r.bytes()), memory, vcpus);
    }
    let layout = boot::plan(memory, ramdisk.map_or(0, |r| r.len)).map_err(|e| err(Error::NoMem, e))?;
    let kernel = elf::parse(image.bytes(), layout.kernel_window()).map_err(|e| err(Error::NoExec, e))?;
    layout.check_kernel(&kernel).map_err(|e| err(Error::NoExec, e))?;
    let info = layout.start_info(vcpus, res.cmdline.as_bytes()).map_err(|e| err(Error::Inval, e))?;

    let bytes = image.bytes();
    let mut ram = RamView(&res.ram);
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    for s in &kernel.segments {
        ram.write(s.paddr.as_u64(), &bytes[s.file_range()]).map_err(fault)?;
        // The rest of the segment (.bss) is zero, even if the RAM was used.
        zero(&mut ram, s.paddr.as_u64() + s.filesz, s.paddr.as_u64() + s.memsz).map_err(fault)?;
    }
    if let Some(r) = ramdisk {
        ram.write(layout.ramdisk.as_u64(), r.bytes()).map_err(fault)?;
    }
    ram.write(layout.page_tables.as_u64(), &layout.page_table_image()).map_err(fault)?;
    ram.write(layout.gdt.as_u64(), &boot::gdt_image()).map_err(fault)?;
    ram.write(layout.start_info.as_u64(), info.as_bytes()).map_err(fault)?;
    let entry = InitialState {
        mode: EntryMode::Linux64 {
            cr3: layout.page_tables.as_u64(),
            gdt_base: layout.gdt.as_u64(),
            gdt_limit: boot::GDT_LIMIT,
        },
        rip: kernel.entry,
        rsp: layout.stack_top.as_u64(),
    };
    let gprs = crate::virt::GuestGprs { rdi: layout.start_info.as_u64(), ..Default::default() };
    Ok(BootSpec { entry, gprs, format: "ELF" })
}

/// A bzImage: Linux's 64-bit boot protocol (`domain::linux` has the layout),
/// with the ACPI tables of the domain's platform.
fn lay_out_linux(res: &Resources, bz: &BzImage, ramdisk: Option<&[u8]>, memory: u64, vcpus: u32) -> Result<BootSpec, BuildError> {
    let initrd_len = ramdisk.map_or(0, |r| r.len() as u64);
    let layout = linux::plan(memory, bz.pref_address(), bz.alignment(), bz.init_size(), initrd_len, u64::from(bz.initrd_addr_max()))
        .map_err(|e| err(Error::NoMem, e))?;
    let limit = (bz.cmdline_size() as usize).min(linux::CMDLINE_MAX as usize - 1);
    let mut ram = RamView(&res.ram);
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    ram.write(layout.kernel_load, bz.kernel()).map_err(fault)?;
    let entry = layout.kernel_load + crate::linux::bzimage::ENTRY_64_OFFSET;
    boot_linux(res, &layout, bz.setup_header(), limit, entry, ramdisk, vcpus).map(|b| BootSpec { format: "bzImage", ..b })
}

/// An uncompressed `vmlinux` (the ELF inside a bzImage, as `extract-vmlinux`
/// gives it): its segments at their physical addresses, entered at its
/// `startup_64` with the zero page, as the bzImage's decompressor enters it
/// once it has unpacked it. The decompression, a few billion instructions
/// for Debian's XZ-packed kernel, is what this saves.
fn lay_out_vmlinux(
    res: &Resources,
    kernel: &elf::Kernel,
    image: &[u8],
    ramdisk: Option<&[u8]>,
    memory: u64,
    vcpus: u32,
) -> Result<BootSpec, BuildError> {
    use boot_params::VMLINUX_ALIGN as ALIGN;
    let extent = kernel.extent();
    let (start, end) = (extent.start.as_u64(), extent.end.as_u64());
    if start < linux::ACPI_END || !start.is_multiple_of(ALIGN) {
        return Err(err(Error::NoExec, alloc::format!("vmlinux: loads at {start:#x}, not at a 2 MiB boundary above 1 MiB")));
    }
    let initrd_len = ramdisk.map_or(0, |r| r.len() as u64);
    let layout = linux::plan(memory, start, ALIGN, end - start, initrd_len, linux::VMLINUX_INITRD_MAX)
        .map_err(|e| err(Error::NoMem, e))?;
    let mut ram = RamView(&res.ram);
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    for s in &kernel.segments {
        ram.write(s.paddr.as_u64(), &image[s.file_range()]).map_err(fault)?;
        zero(&mut ram, s.paddr.as_u64() + s.filesz, s.paddr.as_u64() + s.memsz).map_err(fault)?;
    }
    let header = boot_params::vmlinux_header(ALIGN as u32);
    boot_linux(res, &layout, &header, boot_params::VMLINUX_CMDLINE_MAX as usize, kernel.entry, ramdisk, vcpus)
        .map(|b| BootSpec { format: "vmlinux", ..b })
}

/// Zeroes `[at, end)` of the domain's RAM (a segment's .bss: RAM reused by a
/// restart is not zero).
fn zero(ram: &mut RamView, mut at: u64, end: u64) -> Result<(), Error> {
    let zeros = [0u8; 4096];
    while at < end {
        let n = (end - at).min(zeros.len() as u64);
        ram.write(at, &zeros[..n as usize])?;
        at += n;
    }
    Ok(())
}

/// What both Linux formats share once the kernel is in place: the initrd, the
/// command line (at most `cmdline_limit` bytes), the boot GDT and identity
/// tables, the ACPI tables and the zero page with `header`; the vCPU starts
/// at `entry` in 64-bit mode with RSI = the zero page.
fn boot_linux(
    res: &Resources,
    layout: &linux::Layout,
    header: &[u8],
    cmdline_limit: usize,
    entry: u64,
    ramdisk: Option<&[u8]>,
    vcpus: u32,
) -> Result<BootSpec, BuildError> {
    let cmdline = res.cmdline.as_bytes();
    if cmdline.len() > cmdline_limit {
        return Err(err(Error::Inval, alloc::format!("the command line is {} bytes; this kernel takes at most {cmdline_limit}", cmdline.len())));
    }
    let mut ram = RamView(&res.ram);
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    if let Some(r) = ramdisk {
        ram.write(layout.initrd, r).map_err(fault)?;
    }
    ram.write(linux::CMDLINE, cmdline).map_err(fault)?;
    ram.write(linux::CMDLINE + cmdline.len() as u64, &[0]).map_err(fault)?;
    ram.write(linux::GDT, &boot::gdt_image()).map_err(fault)?;
    let tables = crate::dom0::layout::identity_map(linux::PAGE_TABLES, layout.identity_top);
    ram.write(linux::PAGE_TABLES, &tables).map_err(fault)?;
    write_acpi(&mut ram, vcpus, &res.devices)?;
    let mut zero_page = [0u8; boot_params::ZERO_PAGE_SIZE];
    let at = boot_params::Placement {
        cmdline: linux::CMDLINE,
        initrd: (layout.initrd_len > 0).then_some((layout.initrd, layout.initrd_len)),
        rsdp: Some(linux::RSDP),
    };
    boot_params::build(&mut zero_page, header, &layout.e820(), &at);
    ram.write(linux::BOOT_PARAMS, &zero_page).map_err(fault)?;
    let entry = InitialState {
        mode: EntryMode::Linux64 { cr3: linux::PAGE_TABLES, gdt_base: linux::GDT, gdt_limit: linux::GDT_LIMIT },
        rip: entry,
        rsp: 0,
    };
    let gprs = crate::virt::GuestGprs { rsi: linux::BOOT_PARAMS, ..Default::default() };
    Ok(BootSpec { entry, gprs, format: "Linux" })
}

/// The ACPI tables describing the domain's platform (`vm::platform`): its
/// vCPUs' local APICs, the IOAPIC, COM1, the keyboard controller, the CMOS
/// clock, the PM registers and the devices dom0 declared (virtio-mmio), with the RSDP in the BIOS area where Linux and
/// Multiboot kernels look for it (both formats reserve that area).
fn write_acpi(ram: &mut RamView, vcpus: u32, devices: &super::devices::DeviceList) -> Result<(), BuildError> {
    use crate::devices::{acpi_pm, uart16550};
    use crate::firmware::acpi;
    let apic_ids: alloc::vec::Vec<u32> = (0..vcpus).collect();
    // The window is below 4 GiB (`domain::devices`): the casts keep every bit.
    let virtio: alloc::vec::Vec<acpi::VirtioMmio> = devices
        .iter()
        .map(|d| acpi::VirtioMmio { base: d.base as u32, size: d.size as u32, gsi: d.gsi })
        .collect();
    let cfg = acpi::Config {
        apic_ids: &apic_ids,
        local_apic_address: crate::vm::LAPIC_PAGE as u32,
        io_apic: acpi::IoApic { id: 0, address: crate::vm::IOAPIC_PAGE as u32, gsi_base: 0 },
        uart: Some(acpi::Uart { port: uart16550::COM1_BASE, irq: uart16550::COM1_IRQ }),
        i8042: true,
        rtc: Some(acpi::Rtc { port: 0x70, irq: None }),
        power_button: None,
        pvpanic: Some(crate::devices::pvpanic::PORT),
        pm: acpi_pm::PORTS,
        virtio_mmio: &virtio,
    };
    let tables = acpi::build(&cfg, linux::ACPI_TABLES).map_err(|e| err(Error::Inval, alloc::format!("ACPI tables: {e:?}")))?;
    if tables.tables.len() as u64 > linux::RESET_VECTOR - linux::ACPI_TABLES {
        return Err(err(Error::Inval, "the ACPI tables do not fit below 1 MiB"));
    }
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    ram.write(linux::RSDP, &tables.rsdp).map_err(fault)?;
    ram.write(linux::ACPI_TABLES, &tables.tables).map_err(fault)?;
    // The reset vector (0xFFFF0, what a CPU runs after reset, and where Linux
    // jumps for a "BIOS" reboot): a PC's firmware would reset the machine
    // from there; this stub does, through the keyboard controller's reset
    // line (MOV AL, 0xFE; OUT 0x64, AL; HLT; JMP to the HLT).
    const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
    ram.write(linux::RESET_VECTOR, &RESET_STUB).map_err(fault)
}
