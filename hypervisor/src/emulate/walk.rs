//! Guest-linear to guest-physical translation through the guest's own page
//! tables, in every paging mode a guest can run in (AMD APM vol. 2 §5; Intel SDM
//! vol. 3 §4).
//!
//! This walk exists so the hypervisor can re-read an instruction the guest has
//! just fetched. It therefore checks only what makes a translation exist
//! (present bits, reserved bits, canonical form) and not the permission bits
//! (U/S, R/W, NX, SMEP/SMAP, protection keys): the guest's own fetch already
//! passed them. Nor does it set accessed/dirty bits: the guest's fetch did.
//! Do not use it to emulate a guest's *data* access without adding those checks.

use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;

use super::{GuestPhysRead, Unbacked};
use crate::mem::GuestPhysAddr;

const PAGE: u64 = 4096;
const PRESENT: u64 = 1 << 0;
const PAGE_SIZE: u64 = 1 << 7;
const NX: u64 = 1 << 63;

/// The guest registers that decide how it translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingState {
    pub cr0: Cr0Flags,
    /// Guest-physical; its low bits (PCID, PWT/PCD) are masked off here.
    pub cr3: u64,
    pub cr4: Cr4Flags,
    pub efer: EferFlags,
    /// The guest's MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0] as the guest sees it):
    /// entry bits from here up to bit 51 are reserved.
    pub phys_bits: u8,
}

/// How linear addresses translate, derived from `PagingState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical (32-bit wrap).
    Off,
    /// 32-bit paging; `pse` allows 4 MiB pages.
    Bits32 { pse: bool },
    /// PAE paging: 4-entry PDPT, 2 MiB or 4 KiB pages.
    Pae,
    /// 4-level long mode: 1 GiB, 2 MiB or 4 KiB pages.
    Level4,
    /// 5-level long mode (CR4.LA57).
    Level5,
}

/// Why a linear address does not translate. `level` numbers the table the bad
/// entry is in: 1 = page table, 2 = page directory, 3 = PDPT, 4 = PML4, 5 = PML5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    NotPresent {
        level: u8,
    },
    ReservedBit {
        level: u8,
    },
    /// The address is not canonical for the long-mode paging depth.
    NonCanonical,
    /// A page table or the final page lies outside the guest's memory.
    Unbacked(GuestPhysAddr),
}

impl From<Unbacked> for WalkError {
    fn from(u: Unbacked) -> Self {
        WalkError::Unbacked(u.0)
    }
}

impl PagingState {
    pub fn mode(&self) -> PagingMode {
        if !self.cr0.contains(Cr0Flags::PAGING) {
            PagingMode::Off
        } else if self.efer.contains(EferFlags::LONG_MODE_ACTIVE) {
            if self.cr4.contains(Cr4Flags::L5_PAGING) {
                PagingMode::Level5
            } else {
                PagingMode::Level4
            }
        } else if self.cr4.contains(Cr4Flags::PHYSICAL_ADDRESS_EXTENSION) {
            PagingMode::Pae
        } else {
            PagingMode::Bits32 { pse: self.cr4.contains(Cr4Flags::PAGE_SIZE_EXTENSION) }
        }
    }

    /// Bits 51..MAXPHYADDR of a PAE/long-mode entry, which must be zero, plus
    /// bit 63 (XD) when EFER.NXE is off.
    fn reserved_high(&self) -> u64 {
        let bits = self.phys_bits.clamp(32, 52);
        let above_maxphys = ((1u64 << 52) - 1) & !((1u64 << bits) - 1);
        if self.efer.contains(EferFlags::NO_EXECUTE_ENABLE) {
            above_maxphys
        } else {
            above_maxphys | NX
        }
    }
}

/// Translates one linear address.
pub fn translate(mem: &(impl GuestPhysRead + ?Sized), paging: &PagingState, linear: u64) -> Result<GuestPhysAddr, WalkError> {
    match paging.mode() {
        PagingMode::Off => Ok(GuestPhysAddr::new(linear & 0xffff_ffff)),
        PagingMode::Bits32 { pse } => walk32(mem, paging, linear as u32, pse),
        PagingMode::Pae => walk_pae(mem, paging, linear as u32),
        PagingMode::Level4 => walk_long(mem, paging, linear, 4, &mut |_, _, _| {}),
        PagingMode::Level5 => walk_long(mem, paging, linear, 5, &mut |_, _, _| {}),
    }
}

fn read_u32(mem: &(impl GuestPhysRead + ?Sized), gpa: u64) -> Result<u64, WalkError> {
    let mut b = [0; 4];
    mem.read(GuestPhysAddr::new(gpa), &mut b)?;
    Ok(u32::from_le_bytes(b).into())
}

fn read_u64(mem: &(impl GuestPhysRead + ?Sized), gpa: u64) -> Result<u64, WalkError> {
    let mut b = [0; 8];
    mem.read(GuestPhysAddr::new(gpa), &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// 32-bit paging (SDM §4.3): 4-byte entries, two levels, optional 4 MiB pages
/// whose PDE bits 20:13 give physical bits 39:32 (PSE-36).
fn walk32(mem: &(impl GuestPhysRead + ?Sized), p: &PagingState, la: u32, pse: bool) -> Result<GuestPhysAddr, WalkError> {
    let la = u64::from(la);
    let pde = read_u32(mem, (p.cr3 & 0xffff_f000) + ((la >> 22) << 2))?;
    if pde & PRESENT == 0 {
        return Err(WalkError::NotPresent { level: 2 });
    }
    if pse && pde & PAGE_SIZE != 0 {
        let high = (pde >> 13) & 0xff;
        let high_bits = p.phys_bits.clamp(32, 40) - 32;
        if pde & (1 << 21) != 0 || high >> high_bits != 0 {
            return Err(WalkError::ReservedBit { level: 2 });
        }
        return Ok(GuestPhysAddr::new((high << 32) | (pde & 0xffc0_0000) | (la & 0x3f_ffff)));
    }
    let pte = read_u32(mem, (pde & 0xffff_f000) + (((la >> 12) & 0x3ff) << 2))?;
    if pte & PRESENT == 0 {
        return Err(WalkError::NotPresent { level: 1 });
    }
    Ok(GuestPhysAddr::new((pte & 0xffff_f000) | (la & 0xfff)))
}

/// PAE paging (SDM §4.4): a 4-entry PDPT at CR3[31:5], then the long-mode
/// directory and table formats.
fn walk_pae(mem: &(impl GuestPhysRead + ?Sized), p: &PagingState, la: u32) -> Result<GuestPhysAddr, WalkError> {
    let la = u64::from(la);
    let pdpte = read_u64(mem, (p.cr3 & 0xffff_ffe0) + ((la >> 30) << 3))?;
    if pdpte & PRESENT == 0 {
        return Err(WalkError::NotPresent { level: 3 });
    }
    // PDPTE bits 2:1 and 8:5 are reserved, and so is 63 whatever EFER.NXE says.
    if pdpte & (p.reserved_high() | NX | 0x1e6) != 0 {
        return Err(WalkError::ReservedBit { level: 3 });
    }
    walk_tables(mem, p, la, pdpte & 0x000f_ffff_ffff_f000, 2, &mut |_, _, _| {})
}

/// 4- or 5-level paging (SDM §4.5); `observe` as for `walk_tables`.
fn walk_long(
    mem: &(impl GuestPhysRead + ?Sized),
    p: &PagingState,
    la: u64,
    levels: u8,
    observe: &mut impl FnMut(u8, u64, u64),
) -> Result<GuestPhysAddr, WalkError> {
    let va_bits = 12 + 9 * u32::from(levels);
    let shift = 64 - va_bits;
    if (((la << shift) as i64) >> shift) as u64 != la {
        return Err(WalkError::NonCanonical);
    }
    walk_tables(mem, p, la, p.cr3 & 0x000f_ffff_ffff_f000, levels, observe)
}

/// The 8-byte-entry levels shared by PAE and long mode, from `level` down.
/// `observe(level, entry's address, entry)` sees each entry read, before it
/// is checked (a no-op for translation; `WalkTrace` keeps them).
fn walk_tables(
    mem: &(impl GuestPhysRead + ?Sized),
    p: &PagingState,
    la: u64,
    mut table: u64,
    mut level: u8,
    observe: &mut impl FnMut(u8, u64, u64),
) -> Result<GuestPhysAddr, WalkError> {
    let reserved = p.reserved_high();
    loop {
        let shift = 12 + 9 * u32::from(level - 1);
        let at = table + (((la >> shift) & 0x1ff) << 3);
        let entry = read_u64(mem, at)?;
        observe(level, at, entry);
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent { level });
        }
        let large = level > 1 && entry & PAGE_SIZE != 0;
        // PS is reserved in PML4Es and PML5Es; a large page's address field
        // has reserved bits between bit 13 and its alignment (bit 12 is PAT).
        let mut rsvd = reserved;
        if large {
            rsvd |= match level {
                2 => ((1 << 21) - 1) & !((1 << 13) - 1),
                3 => ((1 << 30) - 1) & !((1 << 13) - 1),
                _ => PAGE_SIZE,
            };
        }
        if entry & rsvd != 0 {
            return Err(WalkError::ReservedBit { level });
        }
        let frame = entry & 0x000f_ffff_ffff_f000;
        if level == 1 || large {
            let page_mask = (1u64 << shift) - 1;
            return Ok(GuestPhysAddr::new((frame & !page_mask) | (la & page_mask)));
        }
        table = frame;
        level -= 1;
    }
}

/// The entries a long-mode walk of `la` reads, top level first, and where it
/// ends: for a log line when a guest dies of an address that does not
/// translate (a triple fault's IDT entry), so the entry that is wrong shows.
#[derive(Clone, Copy, Debug)]
pub struct WalkTrace {
    /// (level, guest-physical address of the entry, the entry).
    steps: [(u8, u64, u64); 5],
    len: usize,
    end: Result<GuestPhysAddr, WalkError>,
}

impl WalkTrace {
    /// Walks `la` as `translate` does, keeping each entry read in 4- and
    /// 5-level long mode; other modes give an empty trace with the result.
    pub fn new(mem: &(impl GuestPhysRead + ?Sized), paging: &PagingState, la: u64) -> Self {
        let mut steps = [(0, 0, 0); 5];
        let mut len = 0;
        let mut keep = |level, at, entry| {
            if let Some(slot) = steps.get_mut(len) {
                *slot = (level, at, entry);
                len += 1;
            }
        };
        let end = match paging.mode() {
            PagingMode::Level4 => walk_long(mem, paging, la, 4, &mut keep),
            PagingMode::Level5 => walk_long(mem, paging, la, 5, &mut keep),
            _ => translate(mem, paging, la),
        };
        WalkTrace { steps, len, end }
    }

    pub fn steps(&self) -> &[(u8, u64, u64)] {
        &self.steps[..self.len]
    }

    /// Where the walk ended: the address it translates to, or why not.
    pub fn end(&self) -> Result<GuestPhysAddr, WalkError> {
        self.end
    }
}

impl core::fmt::Display for WalkTrace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (level, at, entry) in self.steps() {
            write!(f, "L{level} [{at:#x}] = {entry:#x}, ")?;
        }
        match self.end {
            Ok(gpa) => write!(f, "-> {:#x}", gpa.as_u64()),
            Err(e) => write!(f, "-> {e:?}"),
        }
    }
}

/// Reads `buf.len()` bytes from linear address `linear` onwards, page by page,
/// so an access that crosses into another page reads whichever frame that page
/// maps to. Stops at the first failure and reports how many bytes it did read
/// (an instruction may fit before an unmapped page).
pub fn read_linear_partial(
    mem: &(impl GuestPhysRead + ?Sized),
    paging: &PagingState,
    linear: u64,
    buf: &mut [u8],
) -> (usize, Result<(), WalkError>) {
    // Outside long mode linear addresses are 32 bits wide and wrap.
    let wrap = match paging.mode() {
        PagingMode::Level4 | PagingMode::Level5 => u64::MAX,
        _ => 0xffff_ffff,
    };
    let mut done = 0;
    while done < buf.len() {
        let la = linear.wrapping_add(done as u64) & wrap;
        let n = core::cmp::min(PAGE - la % PAGE, (buf.len() - done) as u64) as usize;
        let r = translate(mem, paging, la).and_then(|gpa| Ok(mem.read(gpa, &mut buf[done..done + n])?));
        if let Err(e) = r {
            return (done, Err(e));
        }
        done += n;
    }
    (done, Ok(()))
}

/// Reads `buf.len()` bytes at linear address `linear`: all or an error.
pub fn read_linear(
    mem: &(impl GuestPhysRead + ?Sized),
    paging: &PagingState,
    linear: u64,
    buf: &mut [u8],
) -> Result<(), WalkError> {
    read_linear_partial(mem, paging, linear, buf).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testmem::VecMem;

    const P: u64 = 1; // present
    const W: u64 = 2; // writable (never checked, set as a real guest would)
    const PS: u64 = 1 << 7;

    fn long(cr3: u64) -> PagingState {
        PagingState {
            cr0: Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE,
            cr3,
            cr4: Cr4Flags::PHYSICAL_ADDRESS_EXTENSION,
            efer: EferFlags::LONG_MODE_ENABLE | EferFlags::LONG_MODE_ACTIVE | EferFlags::NO_EXECUTE_ENABLE,
            phys_bits: 40,
        }
    }

    fn gpa(a: u64) -> Result<GuestPhysAddr, WalkError> {
        Ok(GuestPhysAddr::new(a))
    }

    /// Long-mode tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD),
    /// 0x4000 (PT), mapping:
    /// - 0xffff_8000_0000_0000 + 0x0000_0000 .. (4 KiB pages via PT) -> 0x10000..
    /// - PD entry 1: 2 MiB page at 0x20_0000 -> 0x40_0000
    /// - PDPT entry 1: 1 GiB page at 0x4000_0000 -> 0x8000_0000
    fn long_tables() -> (VecMem, u64) {
        let mut m = VecMem::new(0x20000);
        let pml4_idx = (0xffff_8000_0000_0000u64 >> 39) & 0x1ff;
        m.put_u64(0x1000 + pml4_idx * 8, 0x2000 | P | W);
        m.put_u64(0x2000, 0x3000 | P | W);
        m.put_u64(0x2008, 0x8000_0000 | P | W | PS);
        m.put_u64(0x3000, 0x4000 | P | W);
        m.put_u64(0x3008, 0x40_0000 | P | W | PS | NX);
        m.put_u64(0x4000, 0x10000 | P);
        m.put_u64(0x4008, 0x11000 | P);
        (m, 0xffff_8000_0000_0000)
    }

    #[test]
    fn a_trace_shows_each_entry_down_to_the_missing_one() {
        let (mut m, base) = long_tables();
        let p = long(0x1000);
        let t = WalkTrace::new(&m, &p, base + 0x1123);
        let levels: Vec<u8> = t.steps().iter().map(|s| s.0).collect();
        assert_eq!(levels, [4, 3, 2, 1]);
        assert_eq!(t.steps()[3], (1, 0x4008, 0x11000 | P));
        assert_eq!(t.to_string().rsplit("-> ").next(), Some("0x11123"));
        // The page table's entry gone: the trace ends there, saying so.
        m.put_u64(0x4008, 0);
        let t = WalkTrace::new(&m, &p, base + 0x1123);
        assert_eq!(t.steps().last(), Some(&(1, 0x4008, 0)));
        assert!(t.to_string().ends_with("L1 [0x4008] = 0x0, -> NotPresent { level: 1 }"), "{t}");
        // A 2 MiB page ends the walk at its directory entry.
        assert_eq!(WalkTrace::new(&m, &p, base + 0x20_0000).steps().len(), 3);
    }

    #[test]
    fn paging_off_is_identity_with_32_bit_wrap() {
        let p = PagingState { cr0: Cr0Flags::empty(), ..long(0) };
        assert_eq!(p.mode(), PagingMode::Off);
        let m = VecMem::new(0);
        assert_eq!(translate(&m, &p, 0xfee0_0300), gpa(0xfee0_0300));
        assert_eq!(translate(&m, &p, 0x1_0000_0010), gpa(0x10));
    }

    #[test]
    fn long_mode_4k_2m_1g() {
        let (m, base) = long_tables();
        let p = long(0x1000);
        assert_eq!(p.mode(), PagingMode::Level4);
        assert_eq!(translate(&m, &p, base + 0x123), gpa(0x10123));
        assert_eq!(translate(&m, &p, base + 0x1fff), gpa(0x11fff));
        assert_eq!(translate(&m, &p, base + 0x20_1234), gpa(0x40_1234));
        assert_eq!(translate(&m, &p, base + 0x4123_4567), gpa(0x8123_4567));
    }

    #[test]
    fn long_mode_faults() {
        let (mut m, base) = long_tables();
        let p = long(0x1000);
        assert_eq!(translate(&m, &p, base + 0x2000), Err(WalkError::NotPresent { level: 1 }));
        assert_eq!(translate(&m, &p, base + 0x40_0000), Err(WalkError::NotPresent { level: 2 }));
        assert_eq!(translate(&m, &p, base + 0x8000_0000), Err(WalkError::NotPresent { level: 3 }));
        assert_eq!(translate(&m, &p, 0x1000), Err(WalkError::NotPresent { level: 4 }));
        assert_eq!(translate(&m, &p, 0x0000_8000_0000_0000), Err(WalkError::NonCanonical));
        // NX set on the 2 MiB page is reserved once EFER.NXE is off.
        let no_nx = PagingState { efer: p.efer - EferFlags::NO_EXECUTE_ENABLE, ..p };
        assert_eq!(translate(&m, &no_nx, base + 0x20_0000), Err(WalkError::ReservedBit { level: 2 }));
        // An address bit above MAXPHYADDR (40) in the PT entry.
        m.put_u64(0x4000, (1 << 45) | 0x10000 | P);
        assert_eq!(translate(&m, &p, base), Err(WalkError::ReservedBit { level: 1 }));
        // A 2 MiB page with bit 13 set; PS in a PML4E.
        m.put_u64(0x3008, 0x40_2000 | P | PS);
        assert_eq!(translate(&m, &p, base + 0x20_0000), Err(WalkError::ReservedBit { level: 2 }));
        m.put_u64(0x1000 + 0x100 * 8, 0x2000 | P | PS);
        assert_eq!(translate(&m, &p, base), Err(WalkError::ReservedBit { level: 4 }));
        // A table outside guest memory.
        m.put_u64(0x1000 + 0x100 * 8, 0x100_0000 | P);
        assert_eq!(translate(&m, &p, base), Err(WalkError::Unbacked(GuestPhysAddr::new(0x100_0000))));
    }

    #[test]
    fn five_level() {
        // PML5 at 0x5000 entry 0 -> the 4-level tables at 0x1000, for a
        // 57-bit address whose PML4 index matches.
        let (mut m, _) = long_tables();
        m.put_u64(0x5000 + 0x1ff * 8, 0x1000 | P);
        let p = PagingState { cr4: Cr4Flags::PHYSICAL_ADDRESS_EXTENSION | Cr4Flags::L5_PAGING, ..long(0x5000) };
        assert_eq!(p.mode(), PagingMode::Level5);
        assert_eq!(translate(&m, &p, 0xffff_8000_0000_0123), gpa(0x10123));
        assert_eq!(translate(&m, &p, 0xfeff_8000_0000_0000), Err(WalkError::NonCanonical));
        assert_eq!(translate(&m, &p, 0x0000_8000_0000_0000), Err(WalkError::NotPresent { level: 5 }));
    }

    #[test]
    fn pae() {
        let mut m = VecMem::new(0x20000);
        // PDPT at 0x1020 (32-byte aligned), entry 3 -> PD at 0x3000.
        m.put_u64(0x1020 + 3 * 8, 0x3000 | P);
        m.put_u64(0x3000, 0x4000 | P | W);
        m.put_u64(0x3008, 0x60_0000 | P | PS);
        m.put_u64(0x4000 + 5 * 8, 0x15000 | P);
        let p = PagingState {
            cr0: Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE,
            cr3: 0x1020,
            cr4: Cr4Flags::PHYSICAL_ADDRESS_EXTENSION,
            efer: EferFlags::empty(),
            phys_bits: 36,
        };
        assert_eq!(p.mode(), PagingMode::Pae);
        assert_eq!(translate(&m, &p, 0xc000_5abc), gpa(0x15abc));
        assert_eq!(translate(&m, &p, 0xc020_0010), gpa(0x60_0010));
        assert_eq!(translate(&m, &p, 0x8000_0000), Err(WalkError::NotPresent { level: 3 }));
        assert_eq!(translate(&m, &p, 0xc040_0000), Err(WalkError::NotPresent { level: 2 }));
        // PDPTE bit 1 (R/W) is reserved in PAE mode.
        m.put_u64(0x1020 + 3 * 8, 0x3000 | P | W);
        assert_eq!(translate(&m, &p, 0xc000_5abc), Err(WalkError::ReservedBit { level: 3 }));
    }

    #[test]
    fn bits32_with_and_without_pse() {
        let mut m = VecMem::new(0x20000);
        m.put_u32(0x1000 + 0x300 * 4, 0x2000 | P as u32 | W as u32);
        m.put_u32(0x2000 + 4, 0x7000 | P as u32);
        // 4 MiB page at 0xc040_0000 -> physical 0x2_0080_0000 (PSE-36 bits).
        m.put_u32(0x1000 + 0x301 * 4, 0x0080_0000 | (0x2 << 13) | P as u32 | PS as u32);
        let p = PagingState {
            cr0: Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE,
            cr3: 0x1000,
            cr4: Cr4Flags::PAGE_SIZE_EXTENSION,
            efer: EferFlags::empty(),
            phys_bits: 36,
        };
        assert_eq!(p.mode(), PagingMode::Bits32 { pse: true });
        assert_eq!(translate(&m, &p, 0xc000_1234), gpa(0x7234));
        assert_eq!(translate(&m, &p, 0xc041_2345), gpa(0x2_0081_2345));
        assert_eq!(translate(&m, &p, 0xc000_2000), Err(WalkError::NotPresent { level: 1 }));
        assert_eq!(translate(&m, &p, 0x0000_0000), Err(WalkError::NotPresent { level: 2 }));
        // Without CR4.PSE the PS bit is ignored: the PDE points at a table.
        let nopse = PagingState { cr4: Cr4Flags::empty(), ..p };
        assert_eq!(translate(&m, &nopse, 0xc040_0000), Err(WalkError::Unbacked(GuestPhysAddr::new(0x80_4000))));
        // PSE-36 bits beyond MAXPHYADDR are reserved.
        m.put_u32(0x1000 + 0x301 * 4, 0x0080_0000 | (0x10 << 13) | P as u32 | PS as u32);
        assert_eq!(translate(&m, &p, 0xc040_0000), Err(WalkError::ReservedBit { level: 2 }));
    }

    #[test]
    fn reads_across_a_page_boundary_into_another_frame() {
        let (mut m, base) = long_tables();
        m.put(0x10ffe, &[1, 2]);
        m.put(0x11000, &[3, 4, 5]);
        let p = long(0x1000);
        let mut buf = [0; 5];
        read_linear(&m, &p, base + 0xffe, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5]);
        // The page after 0x11000 is not mapped: the first 2 bytes still arrive.
        let mut buf = [0; 4];
        assert_eq!(read_linear_partial(&m, &p, base + 0x1ffe, &mut buf), (2, Err(WalkError::NotPresent { level: 1 })));
    }

    #[test]
    fn random_tables_never_panic() {
        let mut next = crate::emulate::testmem::xorshift(0x1234_5678_9abc_def0u64);
        let mut m = VecMem::new(0x8000);
        for _ in 0..20_000 {
            for _ in 0..8 {
                let at = (next() % 0x1000) & !7;
                // Entries mostly pointing into the 32 KiB of memory.
                let v = if next().is_multiple_of(4) { next() } else { (next() & 0x7083) | 1 };
                m.put_u64(at + (next() % 8) * 0x1000 % 0x8000, v);
            }
            let mut p = long(next() & 0x7000);
            p.phys_bits = (next() % 64) as u8;
            p.cr0 = Cr0Flags::from_bits_retain(next());
            p.cr4 = Cr4Flags::from_bits_retain(next());
            p.efer = EferFlags::from_bits_retain(next());
            let mut buf = [0; 15];
            let (n, r) = read_linear_partial(&m, &p, next(), &mut buf);
            assert!(n <= 15);
            assert_eq!(r.is_ok(), n == 15);
        }
    }
}
