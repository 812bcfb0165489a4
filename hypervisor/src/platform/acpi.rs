//! Reads the firmware's ACPI tables (through the `acpi` crate) into a
//! `Platform`. Every odd table is a warning, never a panic: without a usable
//! MADT Oxen runs on the boot CPU alone, without a PM timer it calibrates
//! against the PIT.

use super::{check_madt_entries, IoApic, MadtCpu, Platform, PmTimer, MADT_FIXED_LEN};
use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use log::{info, warn};

/// Physical memory is identity mapped from 4 KiB (page 0 is left unmapped) up to
/// `end`, so a mapping is the physical address itself.
#[derive(Clone, Copy, Debug)]
struct IdentityMap {
    end: u64,
}

/// What a mapping outside the identity map reads as: zeroes, so the table's
/// signature check fails and the table is skipped.
#[repr(C, align(4096))]
struct ZeroPage([u8; 4096]);
static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

impl AcpiHandler for IdentityMap {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let start = physical_address as u64;
        let inside = start >= 0x1000 && start.checked_add(size as u64).is_some_and(|end| end <= self.end);
        let virt = if inside {
            physical_address as *mut T
        } else {
            warn!("acpi: table at {start:#x} (+{size:#x}) is outside the identity map; ignoring it");
            if size > ZERO_PAGE.0.len() {
                // Only reachable if a header inside the map claims a length reaching
                // past it; `acpi` maps headers (36 bytes) before whole tables.
                crate::console::fatal(format_args!("acpi: table at {start:#x} runs past the end of memory"));
            }
            ZERO_PAGE.0.as_ptr() as *mut T
        };
        // SAFETY: `virt` is non-null (checked above, or the zero page) and
        // `size` bytes there are readable: identity-mapped RAM/firmware memory
        // or the zero page. `acpi` only reads through it.
        unsafe { PhysicalMapping::new(physical_address, NonNull::new_unchecked(virt), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Reads the MADT and FADT found from the RSDP at `rsdp` (from the boot
/// loader). `identity_end` is where the hypervisor's identity map stops.
pub fn discover(rsdp: Option<u64>, identity_end: u64) -> Platform {
    let mut p = Platform::default();
    let Some(rsdp) = rsdp else {
        warn!("acpi: the boot loader gave no RSDP; running on the boot CPU only");
        return p;
    };
    let handler = IdentityMap { end: identity_end };
    // SAFETY: `rsdp` points at the boot loader's copy of the RSDP, identity
    // mapped; `from_rsdp` checks its signature and checksum before trusting it.
    let tables = match unsafe { AcpiTables::from_rsdp(handler, rsdp as usize) } {
        Ok(t) => t,
        Err(e) => {
            warn!("acpi: unusable RSDP at {rsdp:#x} ({e:?}); running on the boot CPU only");
            return p;
        }
    };
    info!("acpi: revision {} tables from RSDP at {rsdp:#x}", tables.revision());
    read_madt(&tables, &mut p);
    read_fadt(&tables, &mut p);
    p
}

fn read_madt(tables: &AcpiTables<IdentityMap>, p: &mut Platform) {
    let madt = match tables.find_table::<Madt>() {
        Ok(m) => m,
        Err(e) => {
            warn!("acpi: no usable MADT ({e:?}); running on the boot CPU only");
            return;
        }
    };
    let fixed = madt.get();
    let len = { fixed.header.length } as usize;
    if len < MADT_FIXED_LEN {
        warn!("acpi: MADT too short ({len} bytes); running on the boot CPU only");
        return;
    }
    // `Madt::entries` trusts every entry's length; check the stream first.
    // SAFETY: `find_table` mapped the whole table (`length` bytes) and checked
    // its checksum over exactly those bytes.
    let raw = unsafe {
        core::slice::from_raw_parts(
            (madt.virtual_start().as_ptr() as *const u8).add(MADT_FIXED_LEN),
            len - MADT_FIXED_LEN,
        )
    };
    if let Err(bad) = check_madt_entries(raw) {
        warn!("acpi: malformed MADT entry at offset {}; running on the boot CPU only", bad.offset);
        return;
    }
    p.local_apic_address = Some(u64::from(fixed.local_apic_address));
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => p.madt_cpus.push(MadtCpu {
                apic_id: u32::from(e.apic_id),
                flags: e.flags,
                x2apic: false,
            }),
            MadtEntry::LocalX2Apic(e) => p.madt_cpus.push(MadtCpu { apic_id: e.x2apic_id, flags: e.flags, x2apic: true }),
            MadtEntry::IoApic(e) => p.io_apics.push(IoApic {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            MadtEntry::LocalApicAddressOverride(e) => p.local_apic_address = Some(e.local_apic_address),
            _ => {}
        }
    }
    let enabled = p.madt_cpus.iter().filter(|c| c.flags & super::MADT_CPU_ENABLED != 0).count();
    info!("acpi: MADT: {} processor entries, {enabled} enabled; {} I/O APIC(s)", p.madt_cpus.len(), p.io_apics.len());
    for io in &p.io_apics {
        info!("acpi: I/O APIC id {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
    }
}

fn read_fadt(tables: &AcpiTables<IdentityMap>, p: &mut Platform) {
    let fadt = match tables.find_table::<Fadt>() {
        Ok(f) => f,
        Err(e) => {
            warn!("acpi: no usable FADT ({e:?}); no ACPI PM timer");
            return;
        }
    };
    let flags = fadt.flags;
    let bits32 = flags.pm_timer_is_32_bit();
    p.pm_timer = match fadt.pm_timer_block() {
        Ok(Some(GenericAddress { address_space: AddressSpace::SystemIo, address, .. })) => {
            match u16::try_from(address) {
                Ok(port) => Some(PmTimer::Port { port, bits32 }),
                Err(_) => {
                    warn!("acpi: PM timer at I/O address {address:#x} is not a port; ignoring it");
                    None
                }
            }
        }
        Ok(Some(GenericAddress { address_space: AddressSpace::SystemMemory, address, .. })) => {
            Some(PmTimer::Mmio { address, bits32 })
        }
        Ok(Some(g)) => {
            warn!("acpi: PM timer in address space {:?}; ignoring it", g.address_space);
            None
        }
        Ok(None) => None,
        Err(e) => {
            warn!("acpi: bad PM timer block in the FADT ({e:?}); ignoring it");
            None
        }
    };
    match p.pm_timer {
        Some(PmTimer::Port { port, bits32 }) => {
            info!("acpi: PM timer at port {port:#x}, {} bits", if bits32 { 32 } else { 24 })
        }
        Some(PmTimer::Mmio { address, bits32 }) => {
            info!("acpi: PM timer at {address:#x}, {} bits", if bits32 { 32 } else { 24 })
        }
        None => info!("acpi: no PM timer"),
    }
}
