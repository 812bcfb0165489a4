//! A vCPU's architectural state as a value: what `Vcpu::state` returns and
//! `Vcpu::set_state` loads, on both vendors. Boot states (`from_entry`),
//! INIT and reboots go through it today; save/restore and migration will.
//!
//! Segment attributes use the VMX access-rights layout (SDM Vol. 3C §25.4.1,
//! Table 25-2: type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15,
//! unusable 16); the SVM backend packs them into the VMCB's 12-bit form.

use super::{EntryMode, GuestGprs, InitialState};

/// Access-rights values used at boot.
pub mod ar {
    /// Present, DPL 0, code, execute/read, accessed (16-bit).
    pub const CODE16: u32 = 0x9b;
    /// As CODE16 with D/B = 1 and G = 1 (32-bit, 4 GiB).
    pub const CODE32: u32 = 0xc09b;
    /// As CODE16 with L = 1 and G = 1 (64-bit).
    pub const CODE64: u32 = 0xa09b;
    /// Present, read/write data, accessed (16-bit).
    pub const DATA16: u32 = 0x93;
    /// As DATA16 with D/B = 1 and G = 1.
    pub const DATA32: u32 = 0xc093;
    /// Present, busy 32/64-bit TSS.
    pub const TSS_BUSY: u32 = 0x8b;
    /// Present LDT.
    pub const LDT: u32 = 0x82;
    /// The segment register holds nothing usable (VMX's bit 16).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// One segment register, hidden part included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Access rights (see the module's note).
    pub ar: u32,
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub base: u64,
    pub limit: u16,
}

/// Everything of a vCPU's CPU state a guest can see, but its extended
/// (x87/SSE/AVX…) state (`arch::x86_64::xstate`, per vCPU beside this), its
/// local APIC (the platform's) and the MSRs the exit handlers keep
/// (`exit::msr::VcpuMsrs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuState {
    pub gprs: GuestGprs,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
    /// As the guest sees them (no bits the hypervisor forces).
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: Table,
    pub idtr: Table,
    pub dr7: u64,
    pub pat: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
}

pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
/// RFLAGS at reset: only the always-one bit 1.
pub const RESET_RFLAGS: u64 = 1 << 1;
/// PAT at reset (SDM Vol. 3A §13.12.4).
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;
pub const RESET_DR7: u64 = 0x400;
const REAL_LIMIT: u32 = 0xffff;
const FLAT_LIMIT: u32 = 0xffff_ffff;
/// A 64-bit TSS's limit.
const TSS64_LIMIT: u32 = 0x67;

impl VcpuState {
    /// Long mode with paging on `cr3`, flat segments `cs` / `ds`.
    fn long(cr3: u64, cs: u16, ds: u16) -> Self {
        let data = Segment { selector: ds, base: 0, limit: FLAT_LIMIT, ar: ar::DATA32 };
        Self {
            cr0: CR0_PG | CR0_WP | CR0_NE | CR0_ET | CR0_PE,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA | EFER_NXE,
            cs: Segment { selector: cs, base: 0, limit: FLAT_LIMIT, ar: ar::CODE64 },
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: Segment { selector: 0, base: 0, limit: TSS64_LIMIT, ar: ar::TSS_BUSY },
            ..Self::reset_common()
        }
    }

    /// What every boot state shares: RFLAGS, PAT, DR7 at their reset values,
    /// an unusable LDTR.
    fn reset_common() -> Self {
        Self {
            rflags: RESET_RFLAGS,
            pat: RESET_PAT,
            dr7: RESET_DR7,
            ldtr: Segment { selector: 0, base: 0, limit: 0, ar: ar::UNUSABLE },
            ..Self::default()
        }
    }

    /// The state a vCPU starts in for `entry` (RIP, RSP and the mode's
    /// registers; the general-purpose registers zero).
    pub fn from_entry(entry: &InitialState) -> Self {
        let mut s = match entry.mode {
            // As after START-UP (SDM Vol. 3A §10.1.1, Table 10-1): CS =
            // the page's selector and base, 64 KiB segments, CR0 = ET | NE
            // (the hypervisor keeps NE; real CPUs clear CD/NW only later).
            EntryMode::Real { cs_selector } => {
                let data = Segment { selector: 0, base: 0, limit: REAL_LIMIT, ar: ar::DATA16 };
                Self {
                    cr0: CR0_ET | CR0_NE,
                    cs: Segment { selector: cs_selector, base: u64::from(cs_selector) << 4, limit: REAL_LIMIT, ar: ar::CODE16 },
                    ds: data,
                    es: data,
                    fs: data,
                    gs: data,
                    ss: data,
                    tr: Segment { selector: 0, base: 0, limit: REAL_LIMIT, ar: ar::TSS_BUSY },
                    gdtr: Table { base: 0, limit: REAL_LIMIT as u16 },
                    idtr: Table { base: 0, limit: REAL_LIMIT as u16 },
                    ..Self::reset_common()
                }
            }
            // Multiboot's entry (Multiboot 0.6.96 §3.2): flat 4 GiB 32-bit
            // segments, CS 0x08, data 0x10, protection on, paging off; no GDT
            // or IDT loaded (the kernel sets its own).
            EntryMode::Protected32 => {
                let data = Segment { selector: 0x10, base: 0, limit: FLAT_LIMIT, ar: ar::DATA32 };
                Self {
                    cr0: CR0_ET | CR0_NE | CR0_PE,
                    cs: Segment { selector: 0x08, base: 0, limit: FLAT_LIMIT, ar: ar::CODE32 },
                    ds: data,
                    es: data,
                    fs: data,
                    gs: data,
                    ss: data,
                    tr: Segment { selector: 0, base: 0, limit: TSS64_LIMIT, ar: ar::TSS_BUSY },
                    ..Self::reset_common()
                }
            }
            // No GDT or IDT: any exception escalates to a triple fault.
            EntryMode::Long64 { cr3 } => Self::long(cr3, 0x08, 0x10),
            EntryMode::Linux64 { cr3, gdt_base, gdt_limit } => {
                Self { gdtr: Table { base: gdt_base, limit: gdt_limit }, ..Self::long(cr3, 0x10, 0x18) }
            }
        };
        s.rip = entry.rip;
        s.rsp = entry.rsp;
        s
    }

    /// Whether the state is 64-bit mode's (IA-32e with a 64-bit CS).
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_boot_state_is_the_protocols() {
        let s = VcpuState::from_entry(&InitialState {
            mode: EntryMode::Linux64 { cr3: 0x13000, gdt_base: 0x12000, gdt_limit: 31 },
            rip: 0x100_0200,
            rsp: 0,
        });
        // boot.rst: CS 0x10 (__BOOT_CS), DS/ES/SS 0x18 (__BOOT_DS), paging
        // on, long mode, interrupts off.
        assert_eq!((s.cs.selector, s.ds.selector, s.ss.selector), (0x10, 0x18, 0x18));
        assert_eq!(s.cs.ar & (1 << 13), 1 << 13, "64-bit code");
        assert!(s.long_mode() && s.cr0 & CR0_PG != 0 && s.cr4 & CR4_PAE != 0);
        assert_eq!(s.rflags & (1 << 9), 0, "IF clear");
        assert_eq!((s.rip, s.cr3, s.gdtr), (0x100_0200, 0x13000, Table { base: 0x12000, limit: 31 }));
        assert_eq!(s.ldtr.ar, ar::UNUSABLE);
        assert_eq!(s.tr.ar, ar::TSS_BUSY);
    }

    #[test]
    fn multiboot_state_is_flat_protected_mode() {
        let s = VcpuState::from_entry(&InitialState { mode: EntryMode::Protected32, rip: 0x10_0000, rsp: 0 });
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!((s.cs.selector, s.cs.limit, s.cs.ar), (0x08, 0xffff_ffff, 0xc09b));
        assert_eq!((s.ds.selector, s.ss.ar), (0x10, 0xc093));
        assert!(!s.long_mode());
        assert_eq!((s.rip, s.rflags), (0x10_0000, RESET_RFLAGS));
    }

    #[test]
    fn startup_state_is_real_mode_at_the_page() {
        let s = VcpuState::from_entry(&InitialState { mode: EntryMode::Real { cs_selector: 0x9a00 }, rip: 0, rsp: 0 });
        assert_eq!((s.cs.selector, s.cs.base, s.cs.limit), (0x9a00, 0x9a000, 0xffff));
        assert_eq!(s.cr0 & CR0_PE, 0);
        assert!(!s.long_mode());
        assert_eq!(s.rflags, RESET_RFLAGS);
    }
}
