//! A vCPU's complete state as one value (`VcpuSnapshot`): the architectural
//! state (`VcpuState`), what the vendor code keeps beside it (`AuxState`:
//! the event pending injection, the interrupt shadow, DR0-3/DR6, TSC_AUX),
//! the extended state, the other MSRs the guest owns, its local APIC, its
//! KVM clock registration, its TSC and whether it runs. Vendor-neutral: no
//! VMCS or VMCB layout; the backends convert (`Vcpu::aux_state`).
//!
//! Its bytes are `oxen_abi::vcpu_snapshot`'s encoding: `to_record` /
//! `from_record` convert, and `from_record` checks every value a later load
//! could trip on (non-canonical addresses, reserved bits, events VM entry
//! refuses), so a state that decodes is one the vCPU can take. Pure: host-tested.

use super::state::{Segment, Table, VcpuState};
use super::GuestGprs;
use alloc::vec::Vec;
use oxen_abi::vcpu_snapshot::{event_kind, power, VcpuStateRecord, ARCH_WORDS, LAPIC_WORDS};

/// An event waiting to be delivered at the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    /// `oxen_abi::vcpu_snapshot::event_kind`.
    pub kind: u8,
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Software events' instruction length (VT-x re-delivers them with it).
    pub insn_len: u32,
}

/// What a vCPU holds beside `VcpuState` in its vendor's structures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuxState {
    pub pending: Option<PendingEvent>,
    /// Blocking by STI (bit 0) and by MOV SS (bit 1).
    pub shadow: u8,
    pub nmi_blocked: bool,
    /// VT-x's pending debug exceptions (0 on AMD-V).
    pub pending_debug: u64,
    pub dr: [u64; 4],
    pub dr6: u64,
    pub tsc_aux: u64,
}

/// Whether the vCPU runs guest code or waits for START-UP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Power {
    pub wait_for_sipi: bool,
    pub halted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuSnapshot {
    pub arch: VcpuState,
    pub aux: AuxState,
    /// SPEC_CTRL, VIRT_SPEC_CTRL (`exit::msr::VcpuMsrs`).
    pub spec_ctrl: u64,
    pub virt_spec_ctrl: u64,
    pub xcr0: u64,
    /// The XSAVE area (standard form), or the FXSAVE image on a CPU without XSAVE.
    pub xsave: Vec<u8>,
    /// `oxen_abi::vcpu_snapshot::LAPIC_FIELDS` then `LAPIC_TIMER_FIELDS`
    /// (`devices::lapic::VirtualLapic::save_state`).
    pub lapic: [u64; LAPIC_WORDS],
    /// The KVM clock's system-time and wall-clock MSRs.
    pub kvmclock: [u64; 2],
    /// The guest's TSC when taken, the TSC's rate, the guest's TSC offset.
    pub tsc: u64,
    pub tsc_hz: u64,
    pub tsc_offset: u64,
    pub power: Power,
}

/// Where a domU's vCPU states wait between the domctls and the vCPUs
/// (`domctl::VCPU_STATE_GET/SET`): one slot per vCPU. A paused vCPU fills
/// an empty slot with its state and loads a state posted to it, in its own
/// poll (where its VMCS / VMCB may be used); the domctls only read and post.
pub struct Mailbox {
    slots: spin::Mutex<Vec<Slot>>,
}

enum Slot {
    /// Nothing taken since the last pause (or a load in progress).
    Empty,
    Taken(alloc::boxed::Box<VcpuSnapshot>),
    /// Posted by `VCPU_STATE_SET`, for the vCPU to load.
    ToLoad(alloc::boxed::Box<VcpuSnapshot>),
    /// The vCPU could not give its state.
    Failed(&'static str),
}

/// What the vCPU should do for its slot.
pub enum Request {
    None,
    Take,
    Load(alloc::boxed::Box<VcpuSnapshot>),
}

/// What `Mailbox::get` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// The encoding's length (written to the buffer).
    Bytes(usize),
    /// Not taken yet, or a load in progress.
    NotYet,
    /// The buffer is shorter than the state (this many bytes).
    Short(usize),
    Failed(&'static str),
}

impl Mailbox {
    pub fn new(vcpus: usize) -> Self {
        Self { slots: spin::Mutex::new((0..vcpus).map(|_| Slot::Empty).collect()) }
    }

    /// Forgets every state taken or posted (a pause or an unpause: the next
    /// pause takes them afresh).
    pub fn clear(&self) {
        self.slots.lock().iter_mut().for_each(|s| *s = Slot::Empty);
    }

    /// Whether a posted state waits to be loaded.
    pub fn loading(&self) -> bool {
        self.slots.lock().iter().any(|s| matches!(s, Slot::ToLoad(_)))
    }

    /// Encodes vCPU `vcpu`'s taken state into `out`.
    pub fn get(&self, vcpu: usize, out: &mut [u8]) -> Got {
        let slots = self.slots.lock();
        match slots.get(vcpu) {
            Some(Slot::Taken(s)) => {
                let r = s.to_record();
                match r.encode(out) {
                    Some(n) => Got::Bytes(n),
                    None => Got::Short(r.encoded_len()),
                }
            }
            Some(Slot::Failed(why)) => Got::Failed(why),
            _ => Got::NotYet,
        }
    }

    /// Posts a state for vCPU `vcpu` to load.
    pub fn post(&self, vcpu: usize, s: VcpuSnapshot) -> bool {
        match self.slots.lock().get_mut(vcpu) {
            Some(slot) => {
                *slot = Slot::ToLoad(alloc::boxed::Box::new(s));
                true
            }
            None => false,
        }
    }

    /// The vCPU's turn: what it should do (a posted state is handed over).
    pub fn request(&self, vcpu: usize) -> Request {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(vcpu) else { return Request::None };
        match core::mem::replace(slot, Slot::Empty) {
            Slot::Empty => Request::Take,
            Slot::ToLoad(s) => Request::Load(s),
            kept => {
                *slot = kept;
                Request::None
            }
        }
    }

    /// The vCPU's state, or why it has none.
    pub fn store(&self, vcpu: usize, s: Result<VcpuSnapshot, &'static str>) {
        if let Some(slot) = self.slots.lock().get_mut(vcpu) {
            *slot = match s {
                Ok(s) => Slot::Taken(alloc::boxed::Box::new(s)),
                Err(why) => Slot::Failed(why),
            };
        }
    }
}

const RFLAGS_RESERVED_ONE: u64 = 1 << 1;
/// RFLAGS bits that exist (SDM Vol. 1 §3.4.3): CF 0, 1, PF 2, AF 4, ZF 6,
/// SF 7, TF 8, IF 9, DF 10, OF 11, IOPL 13:12, NT 14, RF 16, VM 17, AC 18,
/// VIF 19, VIP 20, ID 21.
const RFLAGS_DEFINED: u64 = 0x3f_7fd7;
const RFLAGS_IF: u64 = 1 << 9;
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
/// CR4 bits a guest may hold (Vol. 3A §2.5): VME..SMXE 0-14, FSGSBASE 16,
/// PCIDE 17, OSXSAVE 18, KL 19, SMEP 20, SMAP 21, PKE 22, CET 23, PKS 24,
/// LAM_SUP 28 (this once read 0x11f_7fff, which refused the SMAP, PKE and CET
/// a Linux guest sets: its saved state could not be loaded again).
const CR4_DEFINED: u64 = 0x11ff_7fff;
/// EFER: SCE, LME, LMA, NXE, SVME is ours, FFXSR 14.
const EFER_DEFINED: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 14);
/// DR6's bits 63:32 and DR7's are reserved zero (MOV to DR #GP).
const HIGH: u64 = 0xffff_ffff_0000_0000;


fn pat_valid(pat: u64) -> bool {
    // Each byte 0, 1, 4, 5, 6 or 7 (SDM Vol. 3A §13.12.2).
    pat.to_le_bytes().iter().all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

/// Exceptions that push an error code (SDM Vol. 3A §7.3, Table 7-1).
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

impl VcpuSnapshot {
    /// The record to encode (borrowing the XSAVE area).
    pub fn to_record(&self) -> VcpuStateRecord<'_> {
        let a = &self.arch;
        let g = &a.gprs;
        let mut arch = [0u64; ARCH_WORDS];
        let mut w = arch.iter_mut();
        let mut put = |v: u64| {
            if let Some(slot) = w.next() {
                *slot = v;
            }
        };
        for v in [g.rax, g.rcx, g.rdx, g.rbx, a.rsp, g.rbp, g.rsi, g.rdi, g.r8, g.r9, g.r10, g.r11, g.r12, g.r13, g.r14, g.r15] {
            put(v);
        }
        for v in [a.rip, a.rflags, a.cr0, a.cr2, a.cr3, a.cr4, a.efer] {
            put(v);
        }
        for s in [&a.cs, &a.ds, &a.es, &a.fs, &a.gs, &a.ss, &a.tr, &a.ldtr] {
            for v in [u64::from(s.selector), s.base, u64::from(s.limit), u64::from(s.ar)] {
                put(v);
            }
        }
        for v in [a.gdtr.base, u64::from(a.gdtr.limit), a.idtr.base, u64::from(a.idtr.limit), a.dr7] {
            put(v);
        }
        for v in [a.pat, a.sysenter_cs, a.sysenter_esp, a.sysenter_eip, a.star, a.lstar, a.cstar, a.sfmask, a.kernel_gs_base] {
            put(v);
        }
        let x = &self.aux;
        let pending = x.pending.map_or(0, |p| {
            1 | (u64::from(p.kind) << 8) | (u64::from(p.vector) << 16) | (u64::from(p.error_code.is_some()) << 24)
        });
        let error_code = x.pending.and_then(|p| p.error_code).map_or(0, u64::from);
        let insn_len = x.pending.map_or(0, |p| u64::from(p.insn_len));
        VcpuStateRecord {
            arch,
            events: [pending, error_code, insn_len, u64::from(x.shadow), u64::from(x.nmi_blocked), x.pending_debug],
            debug: [x.dr[0], x.dr[1], x.dr[2], x.dr[3], x.dr6],
            msrs: [x.tsc_aux, self.spec_ctrl, self.virt_spec_ctrl],
            lapic: self.lapic,
            kvmclock: self.kvmclock,
            tsc: [self.tsc, self.tsc_hz, self.tsc_offset],
            power: [
                if self.power.wait_for_sipi { power::WAIT_FOR_SIPI } else { power::RUNNING },
                u64::from(self.power.halted),
            ],
            xcr0: self.xcr0,
            xsave: &self.xsave,
        }
    }

    /// The value a record stands for, if every field is one a vCPU can hold.
    /// The XSAVE area and the LAPIC are checked where they are loaded
    /// (`XState::load_image`, `VirtualLapic::load_state`), which know the host.
    /// `linear_bits` is the host CPU's linear-address width (48, or 57 with
    /// 5-level paging: `cpu::linear_address_bits`): VM entry checks the bases
    /// and RIP against it (SDM Vol. 3A §4.5.1), and a Linux guest on such a
    /// CPU keeps its per-CPU GS base at 0xff11... addresses.
    pub fn from_record(r: &VcpuStateRecord, linear_bits: u32) -> Result<Self, &'static str> {
        let mut w = r.arch.iter().copied();
        let mut next = || w.next().unwrap_or(0);
        let gprs_rax = next();
        let (rcx, rdx, rbx, rsp, rbp, rsi, rdi) = (next(), next(), next(), next(), next(), next(), next());
        let (r8, r9, r10, r11, r12, r13, r14, r15) = (next(), next(), next(), next(), next(), next(), next(), next());
        let (rip, rflags, cr0, cr2, cr3, cr4, efer) = (next(), next(), next(), next(), next(), next(), next());
        let mut seg = || -> Result<Segment, &'static str> {
            let (sel, base, limit, ar) = (next(), next(), next(), next());
            Ok(Segment {
                selector: u16::try_from(sel).map_err(|_| "a segment selector over 16 bits")?,
                base,
                limit: u32::try_from(limit).map_err(|_| "a segment limit over 32 bits")?,
                // Type, S, DPL, P, AVL, L, D/B, G, unusable (SDM Vol. 3C §25.4.1).
                ar: u32::try_from(ar).ok().filter(|ar| ar & !0x1_f0ff == 0).ok_or("segment access rights with reserved bits")?,
            })
        };
        let (cs, ds, es, fs, gs, ss, tr, ldtr) = (seg()?, seg()?, seg()?, seg()?, seg()?, seg()?, seg()?, seg()?);
        let mut table = || -> Result<Table, &'static str> {
            let (base, limit) = (next(), next());
            Ok(Table { base, limit: u16::try_from(limit).map_err(|_| "a descriptor-table limit over 16 bits")? })
        };
        let (gdtr, idtr) = (table()?, table()?);
        let dr7 = next();
        let (pat, sysenter_cs, sysenter_esp, sysenter_eip) = (next(), next(), next(), next());
        let (star, lstar, cstar, sfmask, kernel_gs_base) = (next(), next(), next(), next(), next());
        let mut arch = VcpuState {
            gprs: GuestGprs { rax: gprs_rax, rcx, rdx, rbx, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 },
            rsp,
            rip,
            rflags,
            cr0,
            cr2,
            cr3,
            cr4,
            efer,
            cs,
            ds,
            es,
            fs,
            gs,
            ss,
            tr,
            ldtr,
            gdtr,
            idtr,
            dr7,
            pat,
            sysenter_cs,
            sysenter_esp,
            sysenter_eip,
            star,
            lstar,
            cstar,
            sfmask,
            kernel_gs_base,
        };
        // A TR of an available TSS type (1, 9) is one busy in the guest's
        // GDT: LTR reads the descriptor and then marks it busy (SDM Vol. 2A,
        // LTR), so a CPU may keep the type it read in TR's hidden part. AMD-V
        // does not check it (QEMU's SVM keeps 9 after a Linux guest's LTR);
        // VM entry wants 11 (§27.3.1.2), as the descriptor in memory is.
        if arch.tr.ar & super::state::ar::UNUSABLE == 0 && matches!(arch.tr.ar & 0xf, 1 | 9) {
            arch.tr.ar |= 2;
        }
        check_arch(&arch, linear_bits)?;
        let [pending, error_code, insn_len, shadow, nmi_blocked, pending_debug] = r.events;
        let pending = match pending {
            0 => None,
            p if p & !0x1ff_ff01 != 0 || p & 1 == 0 => return Err("events.pending has reserved bits"),
            p => {
                let kind = ((p >> 8) & 0xff) as u8;
                let vector = ((p >> 16) & 0xff) as u8;
                let with_code = p & (1 << 24) != 0;
                let event = PendingEvent {
                    kind,
                    vector,
                    error_code: with_code.then_some(u32::try_from(error_code).map_err(|_| "events.error_code over 32 bits")?),
                    insn_len: u32::try_from(insn_len).map_err(|_| "events.insn_len too large")?,
                };
                check_event(&event, &arch)?;
                Some(event)
            }
        };
        if shadow >= 0b11 {
            return Err("events.shadow: STI and MOV SS blocking at once, or reserved bits");
        }
        // VM entry: no STI blocking with IF clear, no external interrupt
        // injected under a shadow (SDM Vol. 3C §27.3.1.5).
        if shadow & 1 != 0 && rflags & RFLAGS_IF == 0 {
            return Err("events.shadow: STI blocking with RFLAGS.IF clear");
        }
        if shadow != 0 && pending.is_some_and(|p| u64::from(p.kind) == event_kind::EXTERNAL_INTERRUPT) {
            return Err("events: an external interrupt pending under an interrupt shadow");
        }
        if nmi_blocked > 1 {
            return Err("events.nmi_blocked is 0 or 1");
        }
        // B3-B0, enabled breakpoint, BS, RTM (SDM Vol. 3C §25.4.2).
        if pending_debug & !0x1_500f != 0 {
            return Err("events.pending_debug has reserved bits");
        }
        let [dr0, dr1, dr2, dr3, dr6] = r.debug;
        if dr6 & HIGH != 0 || arch.dr7 & HIGH != 0 {
            return Err("DR6 or DR7 with bits 63:32 set");
        }
        let [tsc_aux, spec_ctrl, virt_spec_ctrl] = r.msrs;
        if tsc_aux >> 32 != 0 {
            return Err("TSC_AUX over 32 bits");
        }
        let [tsc, tsc_hz, tsc_offset] = r.tsc;
        let power = match r.power {
            [s @ (power::RUNNING | power::WAIT_FOR_SIPI), h @ (0 | 1)] => Power { wait_for_sipi: s == power::WAIT_FOR_SIPI, halted: h == 1 },
            _ => return Err("power: state 0 or 1, halted 0 or 1"),
        };
        let mut xsave = Vec::new();
        xsave.try_reserve_exact(r.xsave.len()).map_err(|_| "no memory for the XSAVE area")?;
        xsave.extend_from_slice(r.xsave);
        Ok(Self {
            arch,
            aux: AuxState {
                pending,
                shadow: shadow as u8,
                nmi_blocked: nmi_blocked == 1,
                pending_debug,
                dr: [dr0, dr1, dr2, dr3],
                dr6,
                tsc_aux,
            },
            spec_ctrl,
            virt_spec_ctrl,
            xcr0: r.xcr0,
            xsave,
            lapic: r.lapic,
            kvmclock: r.kvmclock,
            tsc,
            tsc_hz,
            tsc_offset,
            power,
        })
    }
}

/// What VM entry (SDM Vol. 3C §27.3.1) or VMRUN (APM Vol. 2 §15.5.1) would
/// refuse, or the guest's WRMSR would: refused here, before anything changes.
fn check_arch(a: &VcpuState, linear_bits: u32) -> Result<(), &'static str> {
    if a.rflags & !RFLAGS_DEFINED != 0 || a.rflags & RFLAGS_RESERVED_ONE == 0 {
        return Err("RFLAGS: reserved bits, or bit 1 clear");
    }
    if a.cr0 >> 32 != 0 || (a.cr0 & CR0_PG != 0 && a.cr0 & CR0_PE == 0) {
        return Err("CR0: bits 63:32 set, or PG without PE");
    }
    if a.cr4 & !CR4_DEFINED != 0 {
        return Err("CR4: reserved bits");
    }
    if a.efer & !EFER_DEFINED != 0 {
        return Err("EFER: reserved bits");
    }
    let lma = a.efer & (1 << 10) != 0;
    let lme = a.efer & (1 << 8) != 0;
    if lma != (lme && a.cr0 & CR0_PG != 0) {
        return Err("EFER.LMA must be EFER.LME with CR0.PG");
    }
    if !pat_valid(a.pat) {
        return Err("PAT: a memory type that does not exist");
    }
    for (what, v) in [
        ("RIP", if lma { a.rip } else { a.rip & 0xffff_ffff }),
        ("FS base", a.fs.base),
        ("GS base", a.gs.base),
        ("TR base", a.tr.base),
        ("LDTR base", a.ldtr.base),
        ("GDTR base", a.gdtr.base),
        ("IDTR base", a.idtr.base),
        ("SYSENTER_ESP", a.sysenter_esp),
        ("SYSENTER_EIP", a.sysenter_eip),
        ("LSTAR", a.lstar),
        ("CSTAR", a.cstar),
        ("KERNEL_GS_BASE", a.kernel_gs_base),
    ] {
        if !crate::mem::addr::is_canonical_bits(v, linear_bits) {
            return Err(match what {
                "RIP" => "RIP is not canonical",
                _ => "a segment, descriptor-table or MSR base is not canonical",
            });
        }
    }
    if !lma && a.rip >> 32 != 0 {
        return Err("RIP over 32 bits outside long mode");
    }
    if a.sfmask >> 32 != 0 || a.sysenter_cs >> 32 != 0 {
        return Err("SFMASK or SYSENTER_CS over 32 bits");
    }
    // VM entry needs a usable TR of a busy TSS type (§27.3.1.2).
    if a.tr.ar & super::state::ar::UNUSABLE != 0 || !matches!(a.tr.ar & 0xf, 3 | 11) || a.tr.ar & 0x80 == 0 {
        return Err("TR must be a present, busy TSS");
    }
    Ok(())
}

fn check_event(e: &PendingEvent, a: &VcpuState) -> Result<(), &'static str> {
    let kind = u64::from(e.kind);
    let software = matches!(
        kind,
        event_kind::SOFTWARE_INTERRUPT | event_kind::PRIVILEGED_SOFTWARE_EXCEPTION | event_kind::SOFTWARE_EXCEPTION
    );
    match kind {
        event_kind::EXTERNAL_INTERRUPT if e.vector < 32 => return Err("events: an external interrupt below vector 32"),
        event_kind::NMI if e.vector != 2 => return Err("events: an NMI not on vector 2"),
        event_kind::HARDWARE_EXCEPTION if e.vector >= 32 || e.vector == 2 => {
            return Err("events: a hardware exception must be a vector below 32 other than 2")
        }
        event_kind::EXTERNAL_INTERRUPT
        | event_kind::NMI
        | event_kind::HARDWARE_EXCEPTION
        | event_kind::SOFTWARE_INTERRUPT
        | event_kind::PRIVILEGED_SOFTWARE_EXCEPTION
        | event_kind::SOFTWARE_EXCEPTION => {}
        _ => return Err("events: no such event kind"),
    }
    // An error code comes with exactly the exceptions that push one, and
    // only in protected mode (SDM Vol. 3C §27.2.1.3).
    let wants_code = kind == event_kind::HARDWARE_EXCEPTION && has_error_code(e.vector) && a.cr0 & CR0_PE != 0;
    if e.error_code.is_some() != wants_code {
        return Err("events: an error code where the exception has none, or none where it has one");
    }
    // AMD-V does not say a software event's length (0); VT-x needs it
    // (its `set_aux_state` refuses 0).
    if e.insn_len > 15 {
        return Err("events: an instruction length over 15");
    }
    if !software && e.insn_len != 0 {
        return Err("events: an instruction length on an event that has none");
    }
    Ok(())
}

/// How far a loaded guest's TSC rate may be from this host's before
/// `VCPU_STATE_SET` says so in the log, in parts per million: the spread of
/// this hypervisor's TSC calibration (3 x 20 ms against the PM timer,
/// `arch::x86_64::apic::calibrate`). Two QEMU machines on one host (the same
/// TSC underneath) were seen up to 0.95 % apart under load, within 600 ppm
/// otherwise; KVM allows 250 ppm for rates calibrated to a few ppm.
pub const TSC_TOLERANCE_PPM: u64 = 1000;

/// Whether a guest whose TSC ran at `guest_hz` runs on at `host_hz` with no
/// more error than calibration gives.
pub fn tsc_rate_close(guest_hz: u64, host_hz: u64) -> bool {
    guest_hz != 0 && host_hz != 0 && u128::from(guest_hz.abs_diff(host_hz)) * 1_000_000 <= u128::from(host_hz) * u128::from(TSC_TOLERANCE_PPM)
}

/// Guest-TSC values (TSC-deadline) and the host TSC the hypervisor's LAPIC
/// model counts in, for a guest whose TSC is the host's plus `offset`.
/// Converted through now, so a deadline the guest set in its past stays in
/// the past whatever the offset's sign (the plain difference would wrap).
pub fn guest_to_host_tsc(guest: u64, offset: u64, host_now: u64) -> u64 {
    let guest_now = host_now.wrapping_add(offset);
    match guest.checked_sub(guest_now) {
        Some(ahead) => host_now.saturating_add(ahead),
        // Passed: due now (a nonzero value, 0 disarms).
        None => host_now.saturating_sub(guest_now - guest).max(1),
    }
}

pub fn host_to_guest_tsc(host: u64, offset: u64, host_now: u64) -> u64 {
    let guest_now = host_now.wrapping_add(offset);
    match host.checked_sub(host_now) {
        Some(ahead) => guest_now.saturating_add(ahead),
        None => guest_now.saturating_sub(host_now - host).max(1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsc_deadlines_convert_through_now_whatever_the_offsets_sign() {
        use super::{guest_to_host_tsc as g2h, host_to_guest_tsc as h2g};
        let now = 1_000_000;
        // The guest's TSC ahead of the host's (it came from a host up longer).
        let ahead = 5_000_000_000u64;
        assert_eq!(g2h(now + ahead + 300, ahead, now), now + 300);
        assert_eq!(h2g(now + 300, ahead, now), now + ahead + 300);
        // Behind (offset negative, as two's complement): no wrap to "never".
        let behind = 0u64.wrapping_sub(600_000);
        assert_eq!(g2h(now - 600_000 + 50, behind, now), now + 50);
        assert_eq!(h2g(now + 50, behind, now), now - 600_000 + 50);
        // A deadline in the guest's past fires now: a host value not after now, never 0.
        assert!(g2h(1, ahead, now) <= now);
        assert!(g2h(1, ahead, now) != 0);
        assert!(g2h(1, behind, now) <= now && g2h(1, behind, now) != 0);
        assert!(h2g(1, behind, now) != 0);
        // No offset: the same value.
        assert_eq!(g2h(now + 7, 0, now), now + 7);
        assert_eq!(h2g(now - 7, 0, now), now - 7);
    }

    #[test]
    fn tsc_rates_within_1000_ppm_are_the_same_clock() {
        use super::tsc_rate_close;
        let host = 2_600_000_000;
        assert!(tsc_rate_close(host, host));
        assert!(tsc_rate_close(host + 2_600_000, host), "1000 ppm");
        assert!(tsc_rate_close(host - 2_600_000, host));
        assert!(!tsc_rate_close(host + 2_600_001, host));
        // Two QEMU machines' calibrations of one TSC (dom0-migrate-svm).
        assert!(tsc_rate_close(2_447_718_080, 2_446_353_432));
        assert!(!tsc_rate_close(2_000_000_000, host));
        assert!(!tsc_rate_close(0, host) && !tsc_rate_close(host, 0));
        assert!(tsc_rate_close(u64::MAX, u64::MAX) && !tsc_rate_close(u64::MAX, 1));
    }

    use super::*;
    use crate::virt::{EntryMode, InitialState};
    use alloc::vec;

    fn sample() -> VcpuSnapshot {
        let mut arch = VcpuState::from_entry(&InitialState {
            mode: EntryMode::Linux64 { cr3: 0x13000, gdt_base: 0x12000, gdt_limit: 31 },
            rip: 0xffff_ffff_8100_0000,
            rsp: 0xffff_c900_0000_0ff8,
        });
        arch.gprs = GuestGprs { rax: 1, rcx: 2, rdx: 3, rbx: 4, rbp: 5, rsi: 6, rdi: 7, r8: 8, r9: 9, r10: 10, r11: 11, r12: 12, r13: 13, r14: 14, r15: 15 };
        arch.rflags |= RFLAGS_IF;
        arch.lstar = 0xffff_ffff_8180_0000;
        VcpuSnapshot {
            arch,
            aux: AuxState {
                pending: Some(PendingEvent { kind: event_kind::HARDWARE_EXCEPTION as u8, vector: 14, error_code: Some(2), insn_len: 0 }),
                shadow: 0,
                nmi_blocked: true,
                pending_debug: 0,
                dr: [0x1000, 0, 0, 0x4000],
                dr6: 0xffff_0ff0,
                tsc_aux: 3,
            },
            spec_ctrl: 1,
            virt_spec_ctrl: 0,
            xcr0: 7,
            xsave: vec![0; 576],
            lapic: [5; LAPIC_WORDS],
            kvmclock: [0x2001, 0],
            tsc: 1 << 40,
            tsc_hz: 2_000_000_000,
            tsc_offset: 0,
            power: Power { wait_for_sipi: false, halted: true },
        }
    }

    fn round_trip(s: &VcpuSnapshot) -> Result<VcpuSnapshot, &'static str> {
        let r = s.to_record();
        let mut bytes = vec![0u8; r.encoded_len()];
        r.encode(&mut bytes).unwrap();
        VcpuSnapshot::from_record(&VcpuStateRecord::decode(&bytes).unwrap(), 48)
    }

    #[test]
    fn snapshot_round_trips_through_its_bytes() {
        let s = sample();
        assert_eq!(round_trip(&s), Ok(s.clone()));
        // Every boot state is a loadable one.
        for mode in [EntryMode::Real { cs_selector: 0x9a00 }, EntryMode::Protected32, EntryMode::Long64 { cr3: 0x1000 }] {
            let arch = VcpuState::from_entry(&InitialState { mode, rip: 0x1000, rsp: 0 });
            let s = VcpuSnapshot { arch, aux: AuxState::default(), ..sample() };
            assert_eq!(round_trip(&s), Ok(s.clone()), "{mode:?}");
        }
    }

    #[test]
    fn mailbox_hands_states_over() {
        let m = Mailbox::new(2);
        let mut buf = vec![0u8; 8192];
        assert_eq!(m.get(0, &mut buf), Got::NotYet);
        assert!(matches!(m.request(0), Request::Take));
        m.store(0, Ok(sample()));
        assert!(matches!(m.request(0), Request::None));
        let Got::Bytes(n) = m.get(0, &mut buf) else { panic!("no state") };
        let decoded = VcpuSnapshot::from_record(&VcpuStateRecord::decode(&buf[..n]).unwrap(), 48).unwrap();
        assert_eq!(decoded, sample());
        assert_eq!(m.get(0, &mut buf[..10]), Got::Short(n));
        assert!(m.post(1, sample()) && !m.post(2, sample()));
        assert!(m.loading());
        assert!(matches!(m.request(1), Request::Load(_)));
        assert!(!m.loading());
        assert_eq!(m.get(1, &mut buf), Got::NotYet, "a load in progress");
        m.store(1, Err("broken"));
        assert_eq!(m.get(1, &mut buf), Got::Failed("broken"));
        m.clear();
        assert_eq!(m.get(0, &mut buf), Got::NotYet);
    }

    #[test]
    fn a_linux_guests_cr4_is_loadable() {
        // What Debian's kernel runs with on a host that has them: PAE, PGE,
        // OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE.
        let mut s = sample();
        s.arch.cr4 = 0x3f_0ea0 | (1 << 11);
        assert_eq!(round_trip(&s).map(|r| r.arch.cr4), Ok(s.arch.cr4));
        s.arch.cr4 |= (1 << 23) | (1 << 24) | (1 << 28);
        assert!(round_trip(&s).is_ok(), "CET, PKS and LAM_SUP are defined bits");
    }

    #[test]
    fn five_level_bases_load_on_a_five_level_host_only() {
        // Linux's per-CPU GS base in its direct map under 5-level paging.
        let mut s = sample();
        s.arch.gs.base = 0xff11_0000_0b60_0000;
        let r = s.to_record();
        let mut bytes = vec![0u8; r.encoded_len()];
        r.encode(&mut bytes).unwrap();
        let rec = VcpuStateRecord::decode(&bytes).unwrap();
        assert!(VcpuSnapshot::from_record(&rec, 57).is_ok());
        assert!(VcpuSnapshot::from_record(&rec, 48).is_err());
    }

    #[test]
    fn an_available_tss_in_tr_loads_as_busy() {
        let mut s = sample();
        s.arch.tr.ar = (s.arch.tr.ar & !0xf) | 9;
        assert_eq!(round_trip(&s).map(|r| r.arch.tr.ar & 0xf), Ok(11));
        s.arch.tr.ar = (s.arch.tr.ar & !0xf) | 2;
        assert!(round_trip(&s).is_err(), "an LDT type in TR");
    }

    #[test]
    fn unloadable_values_are_refused() {
        type Breaks = fn(&mut VcpuSnapshot);
        let bad: [(&str, Breaks); 14] = [
            ("cr4 bit 15", |s| s.arch.cr4 |= 1 << 15),
            ("cr4 bit 25", |s| s.arch.cr4 |= 1 << 25),
            ("rip", |s| s.arch.rip = 0x8000_0000_0000_0000),
            ("rflags", |s| s.arch.rflags = 0),
            ("efer", |s| s.arch.efer |= 1 << 12),
            ("lma", |s| s.arch.efer &= !(1 << 10)),
            ("pat", |s| s.arch.pat = 0x0202_0202_0202_0202),
            ("fs base", |s| s.arch.fs.base = 1 << 60),
            ("tr not present", |s| s.arch.tr.ar = 0x0b),
            ("nmi vector", |s| s.aux.pending = Some(PendingEvent { kind: event_kind::NMI as u8, vector: 3, error_code: None, insn_len: 0 })),
            ("code", |s| s.aux.pending = Some(PendingEvent { kind: 3, vector: 6, error_code: Some(0), insn_len: 0 })),
            ("soft len", |s| s.aux.pending = Some(PendingEvent { kind: 4, vector: 0x80, error_code: None, insn_len: 16 })),
            ("shadow", |s| {
                s.arch.rflags &= !RFLAGS_IF;
                s.aux.shadow = 1;
            }),
            ("tsc_aux", |s| s.aux.tsc_aux = 1 << 32),
        ];
        for (what, f) in bad {
            let mut s = sample();
            f(&mut s);
            assert!(round_trip(&s).is_err(), "{what} accepted");
        }
    }
}
