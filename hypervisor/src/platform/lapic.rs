//! The local APIC's programming model: register offsets, bits and the encoding
//! of inter-processor interrupts. Pure, so it is tested on the host; the
//! register accesses themselves are in `arch::x86_64::apic`.
//!
//! Section numbers follow the Intel SDM Vol. 3A edition the rest of Oxen cites,
//! where chapter 11 is "Advanced Programmable Interrupt Controller (APIC)" and
//! §9.4 "Multiple-Processor (MP) Initialization" (chapters 10 and 8 in editions
//! before 2023); AMD APM Vol. 2 chapter 16 describes the same registers.

/// Register offsets in the 4 KiB xAPIC MMIO page (SDM Table 11-1, "Local APIC Register Address Map"). In x2APIC mode
/// the same register is MSR `0x800 + offset / 16` (SDM §11.12.1.2, Table 11-6).
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const EOI: u32 = 0x0b0;
    /// Spurious-interrupt vector register (SDM §11.9).
    pub const SVR: u32 = 0x0f0;
    pub const ESR: u32 = 0x280;
    /// Interrupt command register, low half (xAPIC) or the whole 64 bits (x2APIC).
    pub const ICR_LOW: u32 = 0x300;
    /// ICR destination field, xAPIC only (bits 63:56 of the ICR).
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL_COUNT: u32 = 0x380;
    pub const TIMER_CURRENT_COUNT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
}

/// The x2APIC MSR for xAPIC register `offset` (SDM §11.12.1.2).
pub const fn x2apic_msr(offset: u32) -> u32 {
    0x800 + (offset >> 4)
}

/// IA32_APIC_BASE bits (SDM §11.4.4, Figure 11-5).
pub mod base {
    /// This CPU is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (EXTD); only with `ENABLE` (SDM §11.12.1).
    pub const X2APIC_ENABLE: u64 = 1 << 10;
    /// APIC global enable.
    pub const ENABLE: u64 = 1 << 11;
    /// Bits 12 up to MAXPHYADDR hold the xAPIC MMIO page.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// SVR bit 8: APIC software enable (SDM §11.4.7.2).
pub const SVR_APIC_ENABLE: u32 = 1 << 8;
/// Any LVT entry: masked (SDM §11.5.1, Figure 11-8).
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode bits 18:17 (one-shot = 0, periodic = 1, TSC-deadline = 2).
pub const LVT_TIMER_ONESHOT: u32 = 0 << 17;
/// Divide configuration value for "divide by 1" (SDM §11.5.4, Figure 11-10).
pub const TIMER_DIVIDE_BY_1: u32 = 0b1011;

/// ICR fields (SDM §11.6.1 "Interrupt Command Register (ICR)", Figure 11-12).
pub mod icr {
    /// Delivery mode, bits 10:8.
    pub const FIXED: u32 = 0b000 << 8;
    pub const NMI: u32 = 0b100 << 8;
    pub const INIT: u32 = 0b101 << 8;
    pub const STARTUP: u32 = 0b110 << 8;
    /// Delivery status (xAPIC only): the previous IPI has not been accepted yet.
    pub const SEND_PENDING: u32 = 1 << 12;
    /// Level: must be 1 (assert) for every IPI but INIT level de-assert.
    pub const LEVEL_ASSERT: u32 = 1 << 14;
    /// Trigger mode, bit 15: 0 = edge.
    pub const TRIGGER_EDGE: u32 = 0 << 15;
    /// xAPIC physical destination: bits 63:56 of the ICR, i.e. 31:24 of ICR_HIGH.
    pub const XAPIC_DEST_SHIFT: u32 = 24;
    /// x2APIC destination: bits 63:32 of the 64-bit ICR.
    pub const X2APIC_DEST_SHIFT: u32 = 32;
}

/// An inter-processor interrupt to one CPU, by physical APIC ID, no shorthand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub dest: u32,
    /// The ICR's low 32 bits: vector, delivery mode, level, trigger.
    pub low: u32,
}

impl Ipi {
    /// INIT (SDM §9.4.4.1 "Typical BSP Initialization Sequence": 000C4500H
    /// there, minus the all-excluding-self shorthand).
    pub const fn init(dest: u32) -> Self {
        Self { dest, low: icr::INIT | icr::LEVEL_ASSERT | icr::TRIGGER_EDGE }
    }

    /// START-UP: the CPU starts in real mode at `page << 12` (CS = page << 8, IP = 0).
    pub const fn startup(dest: u32, page: u8) -> Self {
        Self { dest, low: icr::STARTUP | icr::LEVEL_ASSERT | icr::TRIGGER_EDGE | page as u32 }
    }

    /// A fixed interrupt with `vector` (32..=255).
    pub const fn fixed(dest: u32, vector: u8) -> Self {
        Self { dest, low: icr::FIXED | icr::LEVEL_ASSERT | icr::TRIGGER_EDGE | vector as u32 }
    }

    /// An NMI (the vector field is ignored for NMI delivery, SDM §11.6.1).
    pub const fn nmi(dest: u32) -> Self {
        Self { dest, low: icr::NMI | icr::LEVEL_ASSERT | icr::TRIGGER_EDGE }
    }

    /// The ICR_HIGH value in xAPIC mode (8-bit destination).
    pub const fn xapic_high(self) -> u32 {
        (self.dest & 0xff) << icr::XAPIC_DEST_SHIFT
    }

    /// The whole 64-bit ICR in x2APIC mode (32-bit destination).
    pub const fn x2apic(self) -> u64 {
        ((self.dest as u64) << icr::X2APIC_DEST_SHIFT) | self.low as u64
    }
}

/// The APIC ID from the ID register: bits 31:24 in xAPIC mode, all 32 in x2APIC mode.
pub const fn apic_id_from_reg(value: u32, x2apic: bool) -> u32 {
    if x2apic {
        value
    } else {
        value >> 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdm_example_icr_values() {
        // SDM §9.4.4.1 uses 000C4500H / 000C4608H with the all-excluding-self
        // shorthand (bits 19:18 = 11b); ours are the same minus the shorthand.
        assert_eq!(Ipi::init(0).low, 0x000c_4500 & !(0b11 << 18));
        assert_eq!(Ipi::startup(0, 0x08).low, 0x000c_4608 & !(0b11 << 18));
        assert_eq!(Ipi::fixed(3, 0xf1).low, 0x4000 | 0xf1);
    }

    #[test]
    fn destinations() {
        let ipi = Ipi::startup(3, 0x08);
        assert_eq!(ipi.xapic_high(), 0x0300_0000);
        assert_eq!(ipi.x2apic(), 0x0000_0003_0000_4608);
        assert_eq!(Ipi::init(0x1_0203).x2apic(), 0x0001_0203_0000_4500);
    }

    #[test]
    fn x2apic_msrs() {
        // SDM Table 11-6.
        assert_eq!(x2apic_msr(reg::ID), 0x802);
        assert_eq!(x2apic_msr(reg::EOI), 0x80b);
        assert_eq!(x2apic_msr(reg::SVR), 0x80f);
        assert_eq!(x2apic_msr(reg::ICR_LOW), 0x830);
        assert_eq!(x2apic_msr(reg::LVT_TIMER), 0x832);
        assert_eq!(x2apic_msr(reg::TIMER_CURRENT_COUNT), 0x839);
        assert_eq!(x2apic_msr(reg::TIMER_DIVIDE), 0x83e);
    }

    #[test]
    fn id_register() {
        assert_eq!(apic_id_from_reg(0x0300_0000, false), 3);
        assert_eq!(apic_id_from_reg(0x0000_0103, true), 0x103);
    }
}
