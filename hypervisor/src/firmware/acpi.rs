//! The ACPI tables a domain boots with, for a hardware-reduced platform
//! (ACPI 6.5 §4.1: no PM1/GPE blocks, no SCI, no fixed buttons, no PM timer)
//! like Firecracker's and Cloud Hypervisor's guests.
//!
//! [`build`] lays out, at a guest-physical address the caller picks:
//!
//! | table | contents |
//! |-------|----------|
//! | XSDT  | at `tables_gpa`: the FADT, the MADT and any table added with [`Builder::add_table`] |
//! | FADT  | revision 6 (§5.2.9): `HW_REDUCED_ACPI`, `RESET_REG_SUP`, no fixed power/sleep buttons; the sleep control, sleep status and reset registers as byte-wide SystemIO addresses; `X_DSDT`; no FACS (allowed when hardware-reduced, §5.2.9) |
//! | MADT  | §5.2.12: one enabled Local APIC entry per vCPU (Local x2APIC for APIC IDs above 254, §5.2.12.12), the IOAPIC; `PCAT_COMPAT` clear (no 8259s) |
//! | DSDT  | `\_S5` and, under `\_SB`, COM1, the PS/2 keyboard, the CMOS RTC, a power button (with its Generic Event Device) and a pvpanic device when present, then whatever [`Builder::add_dsdt`] added |
//!
//! Each table starts 8-byte aligned and is checksummed (§5.2.6). The 36-byte
//! ACPI 2.0+ RSDP (§5.2.5.3) comes back separately: the caller copies it where
//! the guest looks (0xE0000–0xFFFFF, and the zero page's `acpi_rsdp_addr`).
//!
//! Why no Interrupt Source Overrides: on a hardware-reduced platform Linux uses no
//! legacy PIC (`acpi_generic_reduced_hw_init` sets `null_legacy_pic`), so it keeps
//! no ISA IRQ numbers and takes each device's line from its `_CRS` as a GSI; the
//! IOAPIC's pins are the ISA IRQs one to one (GSI base 0), edge-triggered and
//! active high as the `_CRS` says. There is no PIT whose IRQ 0 would go to pin 2,
//! and no SCI.
//!
//! Checked with Debian's 6.1 kernel under QEMU's `microvm` (no PIC, PIT or RTC;
//! these tables loaded at 0xE0000/0xE1000): no ACPI warnings, "ACPI: PM: (supports
//! S0 S5)", both CPUs from the MADT, ttyS0 and the keyboard found through PnP ACPI
//! (GSIs 4 and 1 as Linux IRQs 24 and 25), `poweroff` writes 0x34 to the sleep
//! control register, and an edge on the power button's GSI (COM2's IRQ 3 in the
//! experiment) reaches user space as `KEY_POWER` through the GED. Debian builds
//! the button driver and evdev as modules (`button.ko`, `evdev.ko`): an initramfs
//! that wants the button loads them and runs something that acts on `KEY_POWER`.
//! What such a guest still needs on its command line:
//! - `reboot=acpi`: on a hardware-reduced platform Linux prefers an EFI reset
//!   (`reboot_init` and `efi_reboot_required` in arch/x86/kernel/reboot.c) and,
//!   with no EFI, jumps to the BIOS reset vector; any `reboot=` skips that choice,
//!   and `acpi` writes RESET_VALUE to the reset register.
//! - a TSC frequency (`tsc_early_khz=`) unless CPUID gives one: hardware-reduced
//!   Linux sets up no PIT and there is no HPET or PM timer to calibrate against,
//!   and it hangs in "tsc: Marking TSC unstable due to could not calculate TSC khz".
//!
//! Later devices extend the tables through [`Builder`]: `add_dsdt` appends an AML
//! object (a `Device` under `\_SB`, say a virtio-mmio window with its interrupt),
//! `add_madt_entry` an interrupt-controller structure, `add_table` a whole table
//! listed in the XSDT (an MCFG for a PCI host bridge, an SSDT).

use super::aml::{
    self, Aml, Device, EisaId, Interrupt, Io, Irq, Method, Name, Notify, Package, Raw, Resource, ResourceTemplate,
    Scope, Trigger,
};
use alloc::vec::Vec;

/// Size of the ACPI 2.0+ RSDP (§5.2.5.3).
pub const RSDP_LEN: usize = 36;
/// Every system description table starts with this header (§5.2.6).
const HEADER_LEN: usize = 36;
/// The FADT of revision 6 ends with the Hypervisor Vendor Identity (§5.2.9, Table 5.9).
const FADT_LEN: usize = 276;
/// MADT header plus Local Interrupt Controller Address and Flags (§5.2.12, Table 5.43).
const MADT_FIXED_LEN: usize = HEADER_LEN + 8;
/// Tables start at multiples of this (the brief of the lead; Linux needs none).
const TABLE_ALIGN: usize = 8;

const OEM_ID: [u8; 6] = *b"OXEN  ";
const OEM_TABLE_ID: [u8; 8] = *b"OXENVM  ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"OXEN";
const CREATOR_REVISION: u32 = 1;

/// Table revisions: ACPI 6.5's FADT is 6 (minor 5), its MADT 5 at least; a DSDT of
/// revision 2 or more makes AML integers 64-bit (§5.2.11.1).
const XSDT_REVISION: u8 = 1;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
const MADT_REVISION: u8 = 5;
const DSDT_REVISION: u8 = 2;

/// FADT Fixed Feature Flags (§5.2.9.3, Table 5.10).
mod fadt_flags {
    /// The power button, if any, is a control-method device: there is no fixed one.
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// Likewise the sleep button.
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// RESET_REG describes a working reset register.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Hardware-reduced ACPI (§4.1): no fixed hardware, sleep through SLEEP_CONTROL_REG.
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// FADT IA-PC Boot Architecture Flags (§5.2.9.3, Table 5.11).
mod iapc_boot_arch {
    /// User-visible devices on the ISA/LPC bus (COM1, the keyboard, the RTC).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller at ports 0x60/0x64.
    pub const I8042: u16 = 1 << 1;
    /// Do not probe for VGA: there is none.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// No CMOS RTC at ports 0x70/0x71.
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

// FADT field offsets (§5.2.9, Table 5.9).
mod fadt_off {
    pub const P_LVL2_LAT: usize = 96;
    pub const P_LVL3_LAT: usize = 98;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR_ID: usize = 268;
}

/// MADT Interrupt Controller Structure types and flags (§5.2.12, Tables 5.45-5.47).
mod madt {
    pub const LOCAL_APIC: u8 = 0;
    pub const IO_APIC: u8 = 1;
    pub const LOCAL_X2APIC: u8 = 9;
    /// Local APIC Flags bit 0: the processor is usable.
    pub const ENABLED: u32 = 1 << 0;
    /// xAPIC IDs stop at 254: 255 is the broadcast ID (§5.2.12.12).
    pub const MAX_XAPIC_ID: u32 = 254;
}

/// The domain's IOAPIC as the MADT lists it (§5.2.12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    /// First GSI its pin 0 stands for.
    pub gsi_base: u32,
}

/// A 16550 UART: its I/O base (8 ports) and ISA IRQ (= GSI, see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    pub port: u16,
    pub irq: u8,
}

/// A CMOS RTC (index/data ports at `port`, `port + 1`), with its alarm/update IRQ
/// if the model raises one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rtc {
    pub port: u16,
    pub irq: Option<u8>,
}

/// An ACPI power button (PNP0C0C) behind a Generic Event Device (ACPI0013,
/// §5.6.9): an edge on `gsi` makes the guest run the GED's `_EVT`, which
/// notifies the button (0x80, "pressed"), and the guest's OSPM shuts down
/// (systemd-logind or acpid on `KEY_POWER`). Press it by raising and lowering
/// the IOAPIC input `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerButton {
    pub gsi: u32,
}

/// The hardware-reduced power-management registers (byte-wide, SystemIO): where
/// they are and the values the guest writes to them. `devices::acpi_pm` decodes
/// the same description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmPorts {
    /// Sleep Control Register (§4.8.3.7): SLP_TYP in bits 2-4, SLP_EN in bit 5.
    pub sleep_control: u16,
    /// Sleep Status Register (§4.8.3.7): WAK_STS in bit 7.
    pub sleep_status: u16,
    /// Reset Register (§4.8.3.6).
    pub reset: u16,
    /// Written to `reset` to reset the system (FADT RESET_VALUE).
    pub reset_value: u8,
    /// SLP_TYP of S5 (soft off), the first element of `\_S5` (§7.4.2); 3 bits.
    pub s5_slp_typ: u8,
}

/// What the domain's platform has, for the tables to describe.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// The APIC ID of each vCPU; vCPU `i` gets ACPI processor UID `i`. vCPU 0 is
    /// the boot processor.
    pub apic_ids: &'a [u32],
    /// Physical address of every local APIC (0xFEE00000).
    pub local_apic_address: u32,
    pub io_apic: IoApic,
    pub uart: Option<Uart>,
    /// An i8042 with a keyboard at ports 0x60 (data) and 0x64 (command), IRQ 1.
    pub i8042: bool,
    pub rtc: Option<Rtc>,
    pub power_button: Option<PowerButton>,
    /// A pvpanic device (`devices::pvpanic`) at this port: ACPI `QEMU0001`,
    /// which Linux's `pvpanic-mmio` driver binds (it takes an I/O resource
    /// as well as a memory one).
    pub pvpanic: Option<u16>,
    pub pm: PmPorts,
    /// virtio-mmio transports, each a `LNRO0005` device (`VirtioMmio`).
    pub virtio_mmio: &'a [VirtioMmio],
}

/// A virtio-mmio transport (virtio 1.2 §4.2) as Linux's `virtio_mmio` driver
/// finds it through ACPI: `_HID "LNRO0005"` (its `virtio_mmio_acpi_match`),
/// its registers as the first memory resource and its interrupt as the first
/// IRQ of `_CRS` (`platform_get_resource(IORESOURCE_MEM, 0)`,
/// `platform_get_irq(0)`). The line is level triggered, active high: the
/// device holds it up while its InterruptStatus is not zero, as QEMU's ARM
/// `virt` machine and Cloud Hypervisor describe theirs, so an interrupt the
/// guest acknowledged late is not lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    pub base: u32,
    pub size: u32,
    pub gsi: u32,
}

/// Level triggered, active high, not shared: a virtio-mmio device's line.
const LEVEL_HIGH: Trigger = Trigger { edge: false, active_low: false, shared: false };

/// What the guest is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// The RSDP, pointing at the XSDT at `tables_gpa`.
    pub rsdp: [u8; RSDP_LEN],
    /// XSDT, FADT, MADT, added tables and DSDT: copy to `tables_gpa`.
    pub tables: Vec<u8>,
}

/// Why tables could not be built; all come from the configuration or from code
/// adding to the tables, never from a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No vCPU.
    NoVcpus,
    /// Two vCPUs with this APIC ID.
    DuplicateApicId(u32),
    /// A vCPU with an xAPIC ID whose index does not fit the Local APIC entry's
    /// 8-bit processor UID (more than 255 vCPUs before it).
    ProcessorUid(usize),
    /// PM registers on the same port, on port 0, or an S5 SLP_TYP above 7.
    BadPmPorts,
    /// `tables_gpa` is not 8-byte aligned.
    Misaligned,
    /// The tables would run past the end of the address space, or a table is
    /// longer than its 32-bit length field holds.
    TooLarge,
    /// Two devices described on this GSI; each line here is exclusive.
    SharedIrq(u32),
    /// A MADT entry whose length byte does not match its size.
    BadMadtEntry,
    /// A table this module builds itself (XSDT, RSDT, FACP, APIC, DSDT, FACS).
    ReservedSignature([u8; 4]),
    /// AML that cannot be encoded.
    Aml(aml::Error),
}

impl From<aml::Error> for Error {
    fn from(e: aml::Error) -> Self {
        Error::Aml(e)
    }
}

/// Builds the tables for `cfg`, to be copied to `tables_gpa`.
pub fn build(cfg: &Config, tables_gpa: u64) -> Result<Tables, Error> {
    Builder::new(cfg)?.finish(tables_gpa)
}

/// The tables under construction: those [`build`] makes, plus what later devices add.
#[derive(Clone, Debug)]
pub struct Builder {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    /// Added tables, each complete but for its header fields and checksum.
    extra: Vec<Vec<u8>>,
}

impl Builder {
    /// The FADT, MADT and DSDT for `cfg`.
    pub fn new(cfg: &Config) -> Result<Self, Error> {
        check_pm(&cfg.pm)?;
        check_irqs(cfg)?;
        Ok(Builder { fadt: fadt(cfg), madt: madt(cfg)?, dsdt: dsdt(cfg)?, extra: Vec::new() })
    }

    /// Appends `obj` to the DSDT's root, after the built-in objects. Give
    /// devices a full path (`\_SB.VIO0`) or wrap them in `Scope(\_SB)`.
    pub fn add_dsdt(&mut self, obj: &dyn Aml) -> Result<(), Error> {
        obj.encode(&mut self.dsdt)?;
        Ok(())
    }

    /// Appends one Interrupt Controller Structure (`[type, length, ...]`,
    /// §5.2.12) to the MADT.
    pub fn add_madt_entry(&mut self, entry: &[u8]) -> Result<(), Error> {
        match entry {
            [_, len, ..] if usize::from(*len) == entry.len() => {
                self.madt.extend_from_slice(entry);
                Ok(())
            }
            _ => Err(Error::BadMadtEntry),
        }
    }

    /// Adds a table listed in the XSDT: `body` is what follows the 36-byte header.
    pub fn add_table(&mut self, signature: [u8; 4], revision: u8, body: &[u8]) -> Result<(), Error> {
        if [*b"XSDT", *b"RSDT", *b"FACP", *b"APIC", *b"DSDT", *b"FACS"].contains(&signature) {
            return Err(Error::ReservedSignature(signature));
        }
        let mut t = Vec::with_capacity(HEADER_LEN + body.len());
        t.extend_from_slice(&signature);
        t.resize(HEADER_LEN, 0);
        t[8] = revision;
        t.extend_from_slice(body);
        self.extra.push(t);
        Ok(())
    }

    /// Lays the tables out from `tables_gpa` and fills in their addresses and checksums.
    pub fn finish(mut self, tables_gpa: u64) -> Result<Tables, Error> {
        if !tables_gpa.is_multiple_of(TABLE_ALIGN as u64) {
            return Err(Error::Misaligned);
        }
        let mut dsdt = Vec::with_capacity(HEADER_LEN + self.dsdt.len());
        dsdt.extend_from_slice(b"DSDT");
        dsdt.resize(HEADER_LEN, 0);
        dsdt[8] = DSDT_REVISION;
        dsdt.append(&mut self.dsdt);

        // Order in memory: XSDT, FADT, MADT, added tables, DSDT.
        let listed = 2 + self.extra.len();
        let xsdt_len = HEADER_LEN + 8 * listed;
        let mut offsets = Vec::with_capacity(listed + 1);
        let mut end = align(xsdt_len);
        for len in [self.fadt.len(), self.madt.len()].into_iter().chain(self.extra.iter().map(Vec::len)) {
            offsets.push(end);
            end = align(end.checked_add(len).ok_or(Error::TooLarge)?);
        }
        let dsdt_off = end;
        let total = dsdt_off.checked_add(dsdt.len()).ok_or(Error::TooLarge)?;
        let gpa = |off: usize| tables_gpa.checked_add(off as u64).ok_or(Error::TooLarge);
        gpa(total)?;

        put(&mut self.fadt, fadt_off::X_DSDT, &gpa(dsdt_off)?.to_le_bytes());
        let mut xsdt = Vec::with_capacity(xsdt_len);
        xsdt.extend_from_slice(b"XSDT");
        xsdt.resize(HEADER_LEN, 0);
        xsdt[8] = XSDT_REVISION;
        for &off in &offsets {
            xsdt.extend_from_slice(&gpa(off)?.to_le_bytes());
        }

        let mut out = Vec::with_capacity(total);
        let tables = [xsdt, self.fadt, self.madt].into_iter().chain(self.extra).chain([dsdt]);
        for mut t in tables {
            seal(&mut t)?;
            out.resize(align(out.len()), 0);
            out.extend_from_slice(&t);
        }
        debug_assert_eq!(out.len(), total);
        Ok(Tables { rsdp: rsdp(tables_gpa), tables: out })
    }
}

fn align(n: usize) -> usize {
    n.next_multiple_of(TABLE_ALIGN)
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_sub(b))
}

/// Fills in a table's header (§5.2.6, Table 5.4) — signature and revision are
/// already there — and its checksum.
fn seal(t: &mut [u8]) -> Result<(), Error> {
    let len = u32::try_from(t.len()).map_err(|_| Error::TooLarge)?;
    put(t, 4, &len.to_le_bytes());
    t[9] = 0;
    put(t, 10, &OEM_ID);
    put(t, 16, &OEM_TABLE_ID);
    put(t, 24, &OEM_REVISION.to_le_bytes());
    put(t, 28, &CREATOR_ID);
    put(t, 32, &CREATOR_REVISION.to_le_bytes());
    t[9] = checksum(t);
    Ok(())
}

/// The RSDP (§5.2.5.3, Table 5.3): revision 2, no RSDT, the XSDT at `xsdt`.
fn rsdp(xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    put(&mut r, 0, b"RSD PTR ");
    put(&mut r, 9, &OEM_ID);
    r[15] = 2;
    put(&mut r, 20, &(RSDP_LEN as u32).to_le_bytes());
    put(&mut r, 24, &xsdt.to_le_bytes());
    // Checksum of the ACPI 1.0 part (bytes 0-19), then the extended checksum of all 36.
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn check_pm(pm: &PmPorts) -> Result<(), Error> {
    let ports = [pm.sleep_control, pm.sleep_status, pm.reset];
    let distinct = ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2];
    if !distinct || ports.contains(&0) || pm.s5_slp_typ > 7 {
        return Err(Error::BadPmPorts);
    }
    Ok(())
}

/// The GSIs the DSDT's devices use (ISA IRQs are GSIs here, see the module doc)
/// must differ: their `_CRS` say "exclusive".
fn check_irqs(cfg: &Config) -> Result<(), Error> {
    let uart = cfg.uart.map(|u| u32::from(u.irq));
    let kbd = cfg.i8042.then_some(1);
    let rtc = cfg.rtc.and_then(|r| r.irq).map(u32::from);
    let button = cfg.power_button.map(|b| b.gsi);
    let mut gsis: Vec<u32> = [uart, kbd, rtc, button].into_iter().flatten().collect();
    gsis.extend(cfg.virtio_mmio.iter().map(|v| v.gsi));
    gsis.sort_unstable();
    match gsis.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(Error::SharedIrq(w[0])),
        None => Ok(()),
    }
}

/// A Generic Address Structure (§5.2.3.2) for a byte-wide register at I/O `port`.
fn gas_io_byte(port: u16) -> [u8; 12] {
    const SYSTEM_IO: u8 = 1;
    const BYTE_ACCESS: u8 = 1;
    let mut g = [0u8; 12];
    g[..4].copy_from_slice(&[SYSTEM_IO, 8, 0, BYTE_ACCESS]);
    g[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// The FADT but for its header and X_DSDT. What stays zero is absent: FACS,
/// SCI, SMI command port, PM1/PM2/GPE blocks, the PM timer (a hardware-reduced
/// OS ignores them all, §4.1).
fn fadt(cfg: &Config) -> Vec<u8> {
    let mut f = Vec::with_capacity(FADT_LEN);
    f.extend_from_slice(b"FACP");
    f.resize(FADT_LEN, 0);
    f[8] = FADT_REVISION;
    // No C2 or C3 states (latencies above 100 and 1000 µs say so).
    put(&mut f, fadt_off::P_LVL2_LAT, &101u16.to_le_bytes());
    put(&mut f, fadt_off::P_LVL3_LAT, &1001u16.to_le_bytes());
    let mut boot = iapc_boot_arch::VGA_NOT_PRESENT;
    if cfg.uart.is_some() || cfg.i8042 || cfg.rtc.is_some() {
        boot |= iapc_boot_arch::LEGACY_DEVICES;
    }
    if cfg.i8042 {
        boot |= iapc_boot_arch::I8042;
    }
    if cfg.rtc.is_none() {
        boot |= iapc_boot_arch::CMOS_RTC_NOT_PRESENT;
    }
    put(&mut f, fadt_off::IAPC_BOOT_ARCH, &boot.to_le_bytes());
    let flags =
        fadt_flags::HW_REDUCED_ACPI | fadt_flags::RESET_REG_SUP | fadt_flags::PWR_BUTTON | fadt_flags::SLP_BUTTON;
    put(&mut f, fadt_off::FLAGS, &flags.to_le_bytes());
    put(&mut f, fadt_off::RESET_REG, &gas_io_byte(cfg.pm.reset));
    f[fadt_off::RESET_VALUE] = cfg.pm.reset_value;
    f[fadt_off::MINOR_VERSION] = FADT_MINOR_REVISION;
    put(&mut f, fadt_off::SLEEP_CONTROL_REG, &gas_io_byte(cfg.pm.sleep_control));
    put(&mut f, fadt_off::SLEEP_STATUS_REG, &gas_io_byte(cfg.pm.sleep_status));
    put(&mut f, fadt_off::HYPERVISOR_VENDOR_ID, b"OXEN    ");
    f
}

/// The MADT but for its header.
fn madt(cfg: &Config) -> Result<Vec<u8>, Error> {
    if cfg.apic_ids.is_empty() {
        return Err(Error::NoVcpus);
    }
    let mut sorted = cfg.apic_ids.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::DuplicateApicId(w[0]));
    }
    let mut m = Vec::with_capacity(MADT_FIXED_LEN + 16 * cfg.apic_ids.len() + 12);
    m.extend_from_slice(b"APIC");
    m.resize(HEADER_LEN, 0);
    m[8] = MADT_REVISION;
    m.extend_from_slice(&cfg.local_apic_address.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // Flags: PCAT_COMPAT clear, no 8259s
    for (i, &id) in cfg.apic_ids.iter().enumerate() {
        if id <= madt::MAX_XAPIC_ID {
            // Processor Local APIC (§5.2.12.2): UID, APIC ID, flags.
            let uid = u8::try_from(i).map_err(|_| Error::ProcessorUid(i))?;
            m.extend_from_slice(&[madt::LOCAL_APIC, 8, uid, id as u8]);
            m.extend_from_slice(&madt::ENABLED.to_le_bytes());
        } else {
            // Processor Local x2APIC (§5.2.12.12): reserved, x2APIC ID, flags, UID.
            let uid = u32::try_from(i).map_err(|_| Error::ProcessorUid(i))?;
            m.extend_from_slice(&[madt::LOCAL_X2APIC, 16, 0, 0]);
            m.extend_from_slice(&id.to_le_bytes());
            m.extend_from_slice(&madt::ENABLED.to_le_bytes());
            m.extend_from_slice(&uid.to_le_bytes());
        }
    }
    // I/O APIC (§5.2.12.3): ID, reserved, address, GSI base.
    let io = cfg.io_apic;
    m.extend_from_slice(&[madt::IO_APIC, 12, io.id, 0]);
    m.extend_from_slice(&io.address.to_le_bytes());
    m.extend_from_slice(&io.gsi_base.to_le_bytes());
    Ok(m)
}

/// The DSDT's definition block: `\_S5` and the legacy devices under `\_SB`.
fn dsdt(cfg: &Config) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    // \_S5: SLP_TYPa and SLP_TYPb (§7.4.2); hardware-reduced OSPM uses only the first.
    let s5 = u64::from(cfg.pm.s5_slp_typ);
    Name::new("_S5", &Package(&[&s5, &s5])).encode(&mut out)?;

    // Each device is encoded in the statement that builds it: AML nodes borrow
    // their children, which live only as long as that statement.
    let mut devices: Vec<Vec<u8>> = Vec::new();
    if let Some(uart) = cfg.uart {
        let crs = [&Io::fixed(uart.port, 8) as &dyn Resource, &Irq { irq: uart.irq, trigger: Trigger::EDGE_HIGH }];
        devices.push(aml::to_bytes(&Device::new(
            "COM1",
            &[
                &Name::new("_HID", &EisaId("PNP0501")), // 16550A-compatible COM port
                &Name::new("_UID", &1u8),
                &Name::new("_DDN", &"COM1"),
                &Name::new("_CRS", &ResourceTemplate(&crs)),
            ],
        ))?);
    }
    if cfg.i8042 {
        // Data port first, command/status second: the order Linux's i8042 PNP probe expects.
        let crs =
            [&Io::fixed(0x60, 1) as &dyn Resource, &Io::fixed(0x64, 1), &Irq { irq: 1, trigger: Trigger::EDGE_HIGH }];
        devices.push(aml::to_bytes(&Device::new(
            "KBD",
            &[
                &Name::new("_HID", &EisaId("PNP0303")), // IBM Enhanced (101/102-key) keyboard
                &Name::new("_CRS", &ResourceTemplate(&crs)),
            ],
        ))?);
    }
    if let Some(rtc) = cfg.rtc {
        let io = Io::fixed(rtc.port, 2);
        let irq = rtc.irq.map(|irq| Irq { irq, trigger: Trigger::EDGE_HIGH });
        let mut crs: Vec<&dyn Resource> = Vec::from([&io as &dyn Resource]);
        if let Some(irq) = &irq {
            crs.push(irq);
        }
        devices.push(aml::to_bytes(&Device::new(
            "RTC",
            &[
                &Name::new("_HID", &EisaId("PNP0B00")), // AT real-time clock
                &Name::new("_CRS", &ResourceTemplate(&crs)),
            ],
        ))?);
    }
    if let Some(button) = cfg.power_button {
        devices.push(aml::to_bytes(&Device::new(
            "PWRB",
            &[&Name::new("_HID", &EisaId("PNP0C0C")), &Name::new("_UID", &0u8)],
        ))?);
        let irq = Interrupt { gsi: button.gsi, trigger: Trigger::EDGE_HIGH };
        devices.push(aml::to_bytes(&Device::new(
            "GED",
            &[
                &Name::new("_HID", &"ACPI0013"),
                &Name::new("_UID", &0u8),
                &Name::new("_CRS", &ResourceTemplate(&[&irq])),
                // One interrupt, one event: `_EVT(gsi)` needs not look at its argument.
                &Method::new("_EVT", 1, false, &[&Notify::new("\\_SB.PWRB", 0x80)]),
            ],
        ))?);
    }
    if let Some(port) = cfg.pvpanic {
        // QEMU's ISA pvpanic as QEMU describes it (docs/specs/pvpanic.rst,
        // "ACPI Interface"; its device is named PEVT too): the ID and the one
        // port. QEMU's RDPT/WRPT methods are for ACPI-only guests; Linux
        // reads and writes the port from `_CRS` directly.
        let crs = [&Io::fixed(port, 1) as &dyn Resource];
        devices.push(aml::to_bytes(&Device::new(
            "PEVT",
            &[&Name::new("_HID", &"QEMU0001"), &Name::new("_CRS", &ResourceTemplate(&crs))],
        ))?);
    }
    for (uid, v) in cfg.virtio_mmio.iter().enumerate() {
        // Named VR00, VR01, ...: `_UID` tells them apart for Linux
        // (`LNRO0005:00`, `:01` in /sys/bus/acpi/devices follow the order here).
        let uid = u8::try_from(uid).map_err(|_| Error::TooLarge)?;
        let name = alloc::format!("VR{uid:02X}");
        let crs = [
            &aml::Memory32Fixed { writable: true, base: v.base, length: v.size } as &dyn Resource,
            &Interrupt { gsi: v.gsi, trigger: LEVEL_HIGH },
        ];
        devices.push(aml::to_bytes(&Device::new(
            &name,
            &[&Name::new("_HID", &"LNRO0005"), &Name::new("_UID", &uid), &Name::new("_CRS", &ResourceTemplate(&crs))],
        ))?);
    }
    if !devices.is_empty() {
        let raw: Vec<Raw> = devices.iter().map(|d| Raw(d)).collect();
        let terms: Vec<&dyn Aml> = raw.iter().map(|r| r as &dyn Aml).collect();
        Scope::new("\\_SB", &terms).encode(&mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::acpi::address::{AccessSize, AddressSpace};
    use ::acpi::fadt::Fadt;
    use ::acpi::madt::{Madt, MadtEntry};
    use ::acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
    use std::process::Command;
    use std::rc::Rc;

    const GPA: u64 = 0x000e_1000;
    const RSDP_GPA: u64 = 0x000e_0000;

    const PM: PmPorts =
        PmPorts { sleep_control: 0x600, sleep_status: 0x601, reset: 0x602, reset_value: 0x06, s5_slp_typ: 5 };

    fn config(apic_ids: &[u32]) -> Config<'_> {
        Config {
            apic_ids,
            local_apic_address: 0xfee0_0000,
            io_apic: IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 },
            uart: Some(Uart { port: 0x3f8, irq: 4 }),
            i8042: true,
            rtc: None,
            power_button: None,
            pvpanic: None,
            pm: PM,
            virtio_mmio: &[],
        }
    }

    /// Guest memory for the `acpi` crate: the RSDP and the tables where the guest sees them.
    #[derive(Clone)]
    struct Memory(Rc<Vec<(u64, Vec<u8>)>>);

    impl Memory {
        fn new(t: &Tables, gpa: u64) -> Self {
            Memory(Rc::new(vec![(RSDP_GPA, t.rsdp.to_vec()), (gpa, t.tables.clone())]))
        }
    }

    impl AcpiHandler for Memory {
        unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
            let pa = physical_address as u64;
            let (base, bytes) = self
                .0
                .iter()
                .find(|(base, b)| pa >= *base && pa + size as u64 <= base + b.len() as u64)
                .unwrap_or_else(|| panic!("the tables point outside themselves: {pa:#x} +{size:#x}"));
            let ptr = bytes[(pa - base) as usize..].as_ptr() as *mut T;
            // SAFETY: `size` bytes from `ptr` lie inside a vector that `self` keeps
            // alive for as long as the mapping (which holds a clone of `self`).
            unsafe {
                PhysicalMapping::new(physical_address, core::ptr::NonNull::new(ptr).unwrap(), size, size, self.clone())
            }
        }

        fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    }

    fn parse(t: &Tables, gpa: u64) -> AcpiTables<Memory> {
        // SAFETY: `Memory` maps only the bytes it holds, and panics on anything else.
        unsafe { AcpiTables::from_rsdp(Memory::new(t, gpa), RSDP_GPA as usize) }
            .expect("the acpi crate accepts the tables")
    }

    /// (signature, offset in `tables`, length) of each table, walked from the XSDT and the FADT.
    fn table_list(t: &Tables, gpa: u64) -> Vec<([u8; 4], usize, usize)> {
        let b = &t.tables;
        let at = |off: usize| {
            let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
            (b[off..off + 4].try_into().unwrap(), off, len)
        };
        let xsdt = at(0);
        let mut list = vec![xsdt];
        for e in b[HEADER_LEN..xsdt.2].chunks(8) {
            let off = (u64::from_le_bytes(e.try_into().unwrap()) - gpa) as usize;
            list.push(at(off));
        }
        let fadt = list.iter().find(|x| &x.0 == b"FACP").unwrap().1;
        let x_dsdt = u64::from_le_bytes(b[fadt + 140..fadt + 148].try_into().unwrap());
        list.push(at((x_dsdt - gpa) as usize));
        list
    }

    #[test]
    fn every_checksum_and_alignment() {
        let t = build(&config(&[0, 1, 2, 3]), GPA).unwrap();
        let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        assert_eq!(&t.rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[..20]), 0, "RSDP checksum (first 20 bytes)");
        assert_eq!(sum(&t.rsdp), 0, "RSDP extended checksum");
        assert_eq!(t.rsdp[15], 2, "ACPI 2.0+ RSDP");
        assert_eq!(u64::from_le_bytes(t.rsdp[24..32].try_into().unwrap()), GPA, "XSDT at tables_gpa");
        let list = table_list(&t, GPA);
        let sigs: Vec<&[u8; 4]> = list.iter().map(|x| &x.0).collect();
        assert_eq!(sigs, [b"XSDT", b"FACP", b"APIC", b"DSDT"]);
        for (sig, off, len) in list {
            let name = String::from_utf8_lossy(&sig);
            assert_eq!(off % 8, 0, "{name} 8-byte aligned");
            assert_eq!(sum(&t.tables[off..off + len]), 0, "{name} checksum");
            assert_eq!(&t.tables[off + 10..off + 16], b"OXEN  ", "{name} OEM ID");
        }
    }

    #[test]
    fn the_acpi_crate_reads_back_fadt_madt_and_dsdt() {
        let t = build(&config(&[0, 1, 2, 3]), GPA).unwrap();
        let tables = parse(&t, GPA);
        assert_eq!(tables.revision(), 2);

        let fadt = tables.find_table::<Fadt>().unwrap();
        let flags = { fadt.flags };
        assert!(flags.system_is_hw_reduced_acpi());
        assert!(flags.supports_system_reset_via_fadt());
        assert!(flags.power_button_is_control_method() && flags.sleep_button_is_control_method());
        let reset = fadt.reset_register().unwrap();
        assert_eq!((reset.address_space, reset.address, reset.bit_width), (AddressSpace::SystemIo, 0x602, 8));
        assert_eq!(reset.access_size, AccessSize::ByteAccess);
        assert_eq!({ fadt.reset_value }, 0x06);
        let sleep_control = fadt.sleep_control_register().unwrap().unwrap();
        assert_eq!((sleep_control.address_space, sleep_control.address), (AddressSpace::SystemIo, 0x600));
        let sleep_status = fadt.sleep_status_register().unwrap().unwrap();
        assert_eq!((sleep_status.address_space, sleep_status.address), (AddressSpace::SystemIo, 0x601));
        assert_eq!(fadt.pm_timer_block().unwrap(), None, "no PM timer");
        let boot = { fadt.iapc_boot_arch };
        assert!(boot.motherboard_implements_8042() && boot.legacy_devices_are_accessible() && boot.dont_probe_vga());
        assert_eq!({ fadt.sci_interrupt }, 0);
        assert!(matches!(fadt.facs_address(), Err(::acpi::AcpiError::InvalidFacsAddress)), "no FACS");

        let madt = tables.find_table::<Madt>().unwrap();
        assert_eq!({ madt.get().local_apic_address }, 0xfee0_0000);
        assert!(!madt.get().supports_8259(), "PCAT_COMPAT clear");
        let mut cpus = Vec::new();
        let mut io_apics = Vec::new();
        for e in madt.get().entries() {
            match e {
                MadtEntry::LocalApic(l) => cpus.push((l.processor_id, l.apic_id, { l.flags })),
                MadtEntry::IoApic(io) => {
                    io_apics.push((io.io_apic_id, { io.io_apic_address }, { io.global_system_interrupt_base }))
                }
                other => panic!("unexpected MADT entry {other:?}"),
            }
        }
        assert_eq!(cpus, [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        assert_eq!(io_apics, [(0, 0xfec0_0000, 0)]);

        let dsdt = tables.dsdt().unwrap();
        let (_, off, len) = *table_list(&t, GPA).last().unwrap();
        assert_eq!(dsdt.address as u64, GPA + off as u64 + HEADER_LEN as u64);
        assert_eq!(dsdt.length as usize, len - HEADER_LEN);
        assert!(len > HEADER_LEN + 100, "the DSDT holds _S5, COM1 and the keyboard ({len} bytes)");
    }

    #[test]
    fn apic_ids_above_254_use_x2apic_entries() {
        let t = build(&config(&[0, 254, 255, 300]), GPA).unwrap();
        let tables = parse(&t, GPA);
        let madt = tables.find_table::<Madt>().unwrap();
        let (mut xapic, mut x2apic) = (Vec::new(), Vec::new());
        for e in madt.get().entries() {
            match e {
                MadtEntry::LocalApic(l) => xapic.push((l.processor_id, l.apic_id)),
                MadtEntry::LocalX2Apic(l) => x2apic.push(({ l.processor_uid }, { l.x2apic_id }, { l.flags })),
                _ => {}
            }
        }
        assert_eq!(xapic, [(0, 0), (1, 254)]);
        assert_eq!(x2apic, [(2, 255, 1), (3, 300, 1)]);
    }

    #[test]
    fn optional_devices_and_flags_follow_the_config() {
        let bare = Config { uart: None, i8042: false, ..config(&[0]) };
        let t = build(&bare, GPA).unwrap();
        let tables = parse(&t, GPA);
        let fadt = tables.find_table::<Fadt>().unwrap();
        let boot = { fadt.iapc_boot_arch };
        assert!(!boot.motherboard_implements_8042() && !boot.legacy_devices_are_accessible());
        // Only \_S5 is left: Name (_S5, Package (0x02) {5, 5}).
        assert_eq!(tables.dsdt().unwrap().length, 12);

        let with_rtc = Config { rtc: Some(Rtc { port: 0x70, irq: Some(8) }), ..bare };
        let fadt_boot = |t: &Tables| {
            let (_, off, _) = table_list(t, GPA)[1];
            u16::from_le_bytes(t.tables[off + 109..off + 111].try_into().unwrap())
        };
        assert_eq!(fadt_boot(&t) & iapc_boot_arch::CMOS_RTC_NOT_PRESENT, iapc_boot_arch::CMOS_RTC_NOT_PRESENT);
        assert_eq!(fadt_boot(&build(&with_rtc, GPA).unwrap()) & iapc_boot_arch::CMOS_RTC_NOT_PRESENT, 0);

        // A pvpanic device is one more object in \_SB, and only that.
        let with_pvpanic = build(&Config { pvpanic: Some(0x505), ..bare }, GPA).unwrap();
        let dsdt = parse(&with_pvpanic, GPA).dsdt().unwrap().length;
        assert!(dsdt > 12, "{dsdt}");
        let (_, off, len) = *table_list(&with_pvpanic, GPA).last().unwrap();
        let body = &with_pvpanic.tables[off..off + len];
        assert!(body.windows(8).any(|w| w == b"QEMU0001"), "the _HID string");
        // The IO descriptor (ACPI 6.5 §6.4.2.5): 16-bit decode, min = max = 0x505, align 1, length 1.
        assert!(body.windows(8).any(|w| w == [0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]), "the IO descriptor");
    }

    #[test]
    fn bad_configs_are_errors() {
        assert_eq!(build(&config(&[]), GPA), Err(Error::NoVcpus));
        assert_eq!(build(&config(&[0, 3, 1, 3]), GPA), Err(Error::DuplicateApicId(3)));
        assert_eq!(build(&config(&[0]), GPA + 4), Err(Error::Misaligned));
        assert_eq!(build(&config(&[0]), u64::MAX - 7), Err(Error::TooLarge));
        let same_port = Config { pm: PmPorts { reset: 0x600, ..PM }, ..config(&[0]) };
        assert_eq!(build(&same_port, GPA), Err(Error::BadPmPorts));
        let wide_typ = Config { pm: PmPorts { s5_slp_typ: 8, ..PM }, ..config(&[0]) };
        assert_eq!(build(&wide_typ, GPA), Err(Error::BadPmPorts));
        let button_on_com1 = Config { power_button: Some(PowerButton { gsi: 4 }), ..config(&[0]) };
        assert_eq!(build(&button_on_com1, GPA), Err(Error::SharedIrq(4)));
        let high_irq = Config { uart: Some(Uart { port: 0x3f8, irq: 16 }), ..config(&[0]) };
        assert_eq!(build(&high_irq, GPA), Err(Error::Aml(aml::Error::BadIrq)));
        // 300 vCPUs with xAPIC IDs: the 256th has no 8-bit processor UID left.
        let ids: Vec<u32> = (0..300).map(|i| if i < 45 { 300 + i } else { i - 45 }).collect();
        assert_eq!(build(&config(&ids), GPA), Err(Error::ProcessorUid(256)));
    }

    #[test]
    fn later_devices_add_dsdt_objects_madt_entries_and_tables() {
        let cfg = config(&[0, 1]);
        let plain = build(&cfg, GPA).unwrap();
        let mut b = Builder::new(&cfg).unwrap();
        let mmio = aml::Memory32Fixed { writable: true, base: 0xd000_0000, length: 0x200 };
        let irq = aml::Interrupt { gsi: 5, trigger: Trigger::EDGE_HIGH };
        let crs = [&mmio as &dyn Resource, &irq];
        let hid = "LNRO0005"; // virtio-mmio's ACPI _HID
        let dev = aml::to_bytes(&Device::new(
            "\\_SB.VR00",
            &[&Name::new("_HID", &hid), &Name::new("_CRS", &ResourceTemplate(&crs))],
        ))
        .unwrap();
        b.add_dsdt(&Raw(&dev)).unwrap();
        // A Local APIC NMI structure (§5.2.12.7): all processors, LINT1, flags 0.
        b.add_madt_entry(&[4, 6, 0xff, 0, 0, 1]).unwrap();
        assert_eq!(b.add_madt_entry(&[4, 7, 0xff, 0, 0, 1]), Err(Error::BadMadtEntry));
        assert_eq!(b.add_table(*b"APIC", 1, &[]), Err(Error::ReservedSignature(*b"APIC")));
        b.add_table(*b"OEMX", 1, &[1, 2, 3, 4]).unwrap();
        let t = b.finish(GPA).unwrap();

        let tables = parse(&t, GPA);
        let sigs: Vec<[u8; 4]> =
            tables.headers().map(|h| *h.signature.as_str().as_bytes().first_chunk().unwrap()).collect();
        assert_eq!(sigs, [*b"FACP", *b"APIC", *b"OEMX"]);
        let madt = tables.find_table::<Madt>().unwrap();
        assert!(madt.get().entries().any(|e| matches!(e, MadtEntry::LocalApicNmi(n) if n.nmi_line == 1)));
        let grown = tables.dsdt().unwrap().length;
        let before = parse(&plain, GPA).dsdt().unwrap().length;
        assert_eq!(grown - before, dev.len() as u32);
        for (sig, off, len) in table_list(&t, GPA) {
            assert_eq!(t.tables[off..off + len].iter().fold(0u8, |s, &x| s.wrapping_add(x)), 0, "{sig:?}");
        }
    }

    /// Disassembles the tables with iasl (Debian's `acpica-tools`) and returns
    /// the text of each, keyed by signature.
    fn iasl_disassemble(t: &Tables, gpa: u64, tag: &str) -> Vec<([u8; 4], String)> {
        let dir = std::env::temp_dir().join(format!("oxen-acpi-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        for (sig, off, len) in table_list(t, gpa) {
            let name = String::from_utf8_lossy(&sig).into_owned();
            let aml = dir.join(format!("{name}.aml"));
            std::fs::write(&aml, &t.tables[off..off + len]).unwrap();
            let run = Command::new("iasl").arg("-d").arg(&aml).current_dir(&dir).output();
            let run = match run {
                Ok(r) => r,
                Err(e) => panic!(
                    "cannot run iasl ({e}): install Debian's acpica-tools \
                     (`sudo apt-get install -y acpica-tools`; `cargo xtask` installs it too)"
                ),
            };
            let log = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "iasl -d {name}.aml failed:\n{log}");
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            out.push((sig, dsl));
        }
        // OXEN_KEEP_IASL=1 keeps the .aml and .dsl files to read (their directory is in the panic messages).
        if std::env::var_os("OXEN_KEEP_IASL").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        out
    }

    /// The ASL text without comments, indentation or blank lines.
    fn asl_lines(dsl: &str) -> String {
        let mut out = String::new();
        for line in dsl.lines() {
            let mut l = String::from(line);
            while let (Some(a), Some(b)) = (l.find("/*"), l.find("*/")) {
                if b < a {
                    break;
                }
                let a = l[..a].trim_end().len();
                l.replace_range(a..b + 2, "");
            }
            if let Some(c) = l.find("//") {
                l.truncate(c);
            }
            let l = l.trim();
            if !l.is_empty() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The value iasl shows for a data-table field (`Name : value`), from the first match.
    fn field<'a>(dsl: &'a str, name: &str) -> &'a str {
        dsl.lines()
            .filter_map(|l| l.split_once(" : "))
            .find(|(k, _)| k.trim_start().ends_with(name))
            .map(|(_, v)| v.trim())
            .unwrap_or_else(|| panic!("iasl shows no `{name}`:\n{dsl}"))
    }

    #[test]
    fn iasl_disassembles_the_tables() {
        let rtc = Some(Rtc { port: 0x70, irq: Some(8) });
        let power_button = Some(PowerButton { gsi: 9 });
        let t = build(&Config { rtc, power_button, pvpanic: Some(0x505), ..config(&[0, 1, 300]) }, GPA).unwrap();
        let text = iasl_disassemble(&t, GPA, "all");
        let get = |sig: &[u8; 4]| &text.iter().find(|(s, _)| s == sig).unwrap().1;

        let dsdt = asl_lines(get(b"DSDT"));
        let has = |block: &str| assert!(dsdt.contains(block), "the DSDT lacks\n{block}\nin\n{dsdt}");
        has("DefinitionBlock (\"\", \"DSDT\", 2, \"OXEN  \", \"OXENVM  \", 0x00000001)\n{\n");
        has("Name (_S5, Package (0x02)\n{\n0x05,\n0x05\n})\nScope (\\_SB)\n{\n");
        has(concat!(
            "Device (COM1)\n{\n",
            "Name (_HID, EisaId (\"PNP0501\"))\n",
            "Name (_UID, One)\n",
            "Name (_DDN, \"COM1\")\n",
            "Name (_CRS, ResourceTemplate ()\n{\n",
            "IO (Decode16,\n0x03F8,\n0x03F8,\n0x01,\n0x08,\n)\n",
            "IRQ (Edge, ActiveHigh, Exclusive, )\n{4}\n",
            "})\n}\n",
        ));
        has(concat!(
            "Device (KBD)\n{\n",
            "Name (_HID, EisaId (\"PNP0303\"))\n",
            "Name (_CRS, ResourceTemplate ()\n{\n",
            "IO (Decode16,\n0x0060,\n0x0060,\n0x01,\n0x01,\n)\n",
            "IO (Decode16,\n0x0064,\n0x0064,\n0x01,\n0x01,\n)\n",
            "IRQ (Edge, ActiveHigh, Exclusive, )\n{1}\n",
            "})\n}\n",
        ));
        has(concat!(
            "Device (RTC)\n{\n",
            "Name (_HID, EisaId (\"PNP0B00\"))\n",
            "Name (_CRS, ResourceTemplate ()\n{\n",
            "IO (Decode16,\n0x0070,\n0x0070,\n0x01,\n0x02,\n)\n",
            "IRQ (Edge, ActiveHigh, Exclusive, )\n{8}\n",
            "})\n}\n",
        ));

        has(concat!(
            "Device (PWRB)\n{\n",
            "Name (_HID, EisaId (\"PNP0C0C\"))\n",
            "Name (_UID, Zero)\n",
            "}\n",
            "Device (GED)\n{\n",
            "Name (_HID, \"ACPI0013\")\n",
            "Name (_UID, Zero)\n",
            "Name (_CRS, ResourceTemplate ()\n{\n",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n{\n0x00000009,\n}\n",
            "})\n",
            "Method (_EVT, 1, NotSerialized)\n{\nNotify (\\_SB.PWRB, 0x80)\n}\n",
            "}\n",
        ));
        has(concat!(
            "Device (PEVT)\n{\n",
            "Name (_HID, \"QEMU0001\")\n",
            "Name (_CRS, ResourceTemplate ()\n{\n",
            "IO (Decode16,\n0x0505,\n0x0505,\n0x01,\n0x01,\n)\n",
            "})\n}\n",
        ));

        // iasl decodes the data tables field by field.
        let fadt = get(b"FACP");
        for (name, want) in [
            ("Revision", "06"),
            ("FADT Minor Revision", "05"),
            ("Hardware Reduced (V5)", "1"),
            ("Reset Register Supported (V2)", "1"),
            ("Control Method Power Button (V1)", "1"),
            ("PM Timer Block Length", "00"),
            ("8042 Present on ports 60/64 (V2)", "1"),
            ("VGA Not Present (V4)", "1"),
            ("Value to cause reset", "06"),
        ] {
            assert_eq!(field(fadt, name), want, "FADT {name}");
        }
        let dsdt_gpa = format!("{:016X}", GPA + table_list(&t, GPA).last().unwrap().1 as u64);
        assert!(fadt.contains(&format!("DSDT Address : {dsdt_gpa}")), "X_DSDT {dsdt_gpa}:\n{fadt}");
        for (reg, port) in
            [("Reset Register", 0x602), ("Sleep Control Register", 0x600), ("Sleep Status Register", 0x601)]
        {
            let block = fadt.split_once(&format!("{reg} : [Generic Address Structure]")).expect(reg).1;
            assert_eq!(field(block, "Space ID"), "01 [SystemIO]", "{reg}");
            assert_eq!(field(block, "Bit Width"), "08", "{reg}");
            assert_eq!(field(block, "Address"), format!("{port:016X}"), "{reg}");
        }

        let madt = get(b"APIC");
        assert_eq!(field(madt, "PC-AT Compatibility"), "0");
        assert_eq!(madt.matches("Subtable Type : 00 [Processor Local APIC]").count(), 2, "{madt}");
        assert_eq!(madt.matches("Subtable Type : 09 [Processor Local x2APIC]").count(), 1, "{madt}");
        assert_eq!(madt.matches("Subtable Type : 01 [I/O APIC]").count(), 1, "{madt}");
        assert_eq!(madt.matches("Processor Enabled : 1").count(), 3, "{madt}");
        assert_eq!(field(madt, "Processor x2Apic ID"), "0000012C");
        assert_eq!(field(madt, "I/O Apic ID"), "00");
        assert_eq!(field(madt.split_once("[I/O APIC]").unwrap().1, "Address"), "FEC00000");
        for (sig, dsl) in &text {
            assert!(!dsl.contains("Unknown") && !dsl.contains("Invalid"), "{sig:?}:\n{dsl}");
        }
    }

    #[test]
    fn virtio_mmio_devices_are_lnro0005_with_their_window_and_level_line() {
        let vio = [
            VirtioMmio { base: 0xfeb0_0000, size: 0x1000, gsi: 16 },
            VirtioMmio { base: 0xfeb0_1000, size: 0x1000, gsi: 17 },
        ];
        let t = build(&Config { virtio_mmio: &vio, ..config(&[0, 1]) }, GPA).unwrap();
        let text = iasl_disassemble(&t, GPA, "virtio");
        let dsdt = asl_lines(&text.iter().find(|(s, _)| s == b"DSDT").unwrap().1);
        for (uid, (base, gsi)) in [("Zero", ("0xFEB00000", "0x00000010")), ("One", ("0xFEB01000", "0x00000011"))] {
            let name = if uid == "Zero" { "VR00" } else { "VR01" };
            let block = format!(
                "Device ({name})\n{{\nName (_HID, \"LNRO0005\")\nName (_UID, {uid})\nName (_CRS, ResourceTemplate ()\n{{\n\
                 Memory32Fixed (ReadWrite,\n{base},\n0x00001000,\n)\n\
                 Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )\n{{\n{gsi},\n}}\n}})\n}}\n"
            );
            assert!(dsdt.contains(&block), "the DSDT lacks\n{block}\nin\n{dsdt}");
        }
        // The `acpi` crate reads the tables as a guest's OS would.
        assert!(parse(&t, GPA).dsdt().unwrap().length > 0);
        // A device on COM1's line, or two on one, is refused.
        let on_com1 = [VirtioMmio { base: 0xfeb0_0000, size: 0x1000, gsi: 4 }];
        assert_eq!(build(&Config { virtio_mmio: &on_com1, ..config(&[0]) }, GPA), Err(Error::SharedIrq(4)));
        let twice = [vio[0], VirtioMmio { base: 0xfeb0_2000, ..vio[0] }];
        assert_eq!(build(&Config { virtio_mmio: &twice, ..config(&[0]) }, GPA), Err(Error::SharedIrq(16)));
    }
}
