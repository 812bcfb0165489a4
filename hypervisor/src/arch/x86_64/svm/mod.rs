//! AMD-V (SVM) backend: VMCB, nested paging, ASIDs, I/O and MSR permission maps
//! (AMD APM Vol. 2, chapter 15).
//!
//! QEMU's TCG SVM has no next-RIP save and no decode assists, so instruction
//! lengths come from `exit::translate`, from the VMCB's next-RIP field only
//! where the CPU fills it.
mod exit;
pub mod vmcb;
mod vcpu;

pub use vcpu::SvmVcpu;

use super::cpu::{cpuid, msr, rdmsr, wrmsr};
use crate::mem::{alloc_frames, HostPhysAddr};
use core::sync::atomic::{AtomicU64, Ordering};

/// CPUID.80000001H:ECX.SVM.
const CPUID_EXT1_ECX_SVM: u32 = 1 << 2;
/// CPUID.8000000AH:EDX feature bits (APM Vol. 3, CPUID Fn8000_000A).
const SVM_FEATURE_NPT: u32 = 1 << 0;
const SVM_FEATURE_NRIPS: u32 = 1 << 3;
const SVM_FEATURE_FLUSH_BY_ASID: u32 = 1 << 6;
/// VM_CR.SVMDIS: firmware disabled SVM.
const VM_CR_SVMDIS: u64 = 1 << 4;
const EFER_SVME: u64 = 1 << 12;

const MAX_CPUS: usize = 64;

/// Per CPU: the host save area (VM_HSAVE_PA) and a page VMSAVE/VMLOAD keep the
/// host's FS/GS/TR/LDTR/syscall state in across a guest run.
struct CpuPages {
    hsave: AtomicU64,
    host_vmcb: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_PAGES: CpuPages = CpuPages { hsave: AtomicU64::new(0), host_vmcb: AtomicU64::new(0) };
static CPU_PAGES: [CpuPages; MAX_CPUS] = [NO_PAGES; MAX_CPUS];

/// Per CPU: the IA32_TSC_AUX value last loaded for a guest (`NO_TSC_AUX`: the
/// CPU has none, or nothing loaded yet). The host never reads TSC_AUX, so a
/// guest's value stays until another guest's replaces it.
static TSC_AUX_LOADED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(NO_TSC_AUX) }; MAX_CPUS];
const NO_TSC_AUX: u64 = u64::MAX;
static HAS_TSC_AUX: spin::Once<bool> = spin::Once::new();

/// Loads a guest's TSC_AUX into this CPU if it does not hold it already.
fn load_tsc_aux(value: u32) {
    if !*HAS_TSC_AUX.call_once(super::cpu::has_tsc_aux) {
        return;
    }
    let slot = &TSC_AUX_LOADED[super::cpu_id() as usize];
    if slot.load(Ordering::Relaxed) != u64::from(value) {
        // SAFETY: the MSR exists (checked above) and takes any 32-bit value;
        // the hypervisor does not use it.
        unsafe { wrmsr(msr::IA32_TSC_AUX, value.into()) };
        slot.store(value.into(), Ordering::Relaxed);
    }
}

/// Whether guests have a TSC_AUX of their own (see `load_tsc_aux`).
fn has_tsc_aux() -> bool {
    *HAS_TSC_AUX.call_once(super::cpu::has_tsc_aux)
}

/// Whether the CPU saves the next RIP in the VMCB on instruction intercepts
/// (APM Vol. 2 §15.7.1); QEMU's does not.
static HAS_NRIPS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn has_nrips() -> bool {
    HAS_NRIPS.load(Ordering::Relaxed)
}

/// Number of ASIDs (CPUID.8000000AH:EBX), read by `probe`.
static NUM_ASIDS: AtomicU64 = AtomicU64::new(0);

/// Checks AMD-V with nested paging; on success a description for the log.
pub fn probe() -> Result<&'static str, &'static str> {
    if cpuid(0x8000_0001, 0).ecx & CPUID_EXT1_ECX_SVM == 0 {
        return Err("CPUID reports no SVM");
    }
    // SAFETY: VM_CR exists on every CPU with SVM.
    if unsafe { rdmsr(msr::VM_CR) } & VM_CR_SVMDIS != 0 {
        return Err("SVM is disabled by firmware (VM_CR.SVMDIS)");
    }
    let f = cpuid(0x8000_000a, 0);
    if f.edx & SVM_FEATURE_NPT == 0 {
        return Err("no nested paging (NPT)");
    }
    NUM_ASIDS.store(f.ebx.into(), Ordering::Relaxed);
    HAS_NRIPS.store(f.edx & SVM_FEATURE_NRIPS != 0, Ordering::Relaxed);
    log::info!(
        "svm: revision {}, {} ASIDs, nested paging, next-RIP save {}, flush-by-ASID {}",
        f.eax & 0xff,
        f.ebx,
        if f.edx & SVM_FEATURE_NRIPS != 0 { "yes" } else { "no" },
        if f.edx & SVM_FEATURE_FLUSH_BY_ASID != 0 { "yes" } else { "no" }
    );
    Ok("SVM (AMD-V with nested paging)")
}

/// Sets EFER.SVME on the calling CPU and gives it a host save area.
pub fn enable_cpu() -> Result<(), &'static str> {
    let cpu = super::cpu_id() as usize;
    let pages = CPU_PAGES.get(cpu).ok_or("too many CPUs")?;
    if pages.hsave.load(Ordering::Acquire) == 0 {
        let hsave = alloc_frames(1, 1).ok_or("out of memory")?;
        let host = alloc_frames(1, 1).ok_or("out of memory")?;
        pages.hsave.store(hsave.as_u64(), Ordering::Release);
        pages.host_vmcb.store(host.as_u64(), Ordering::Release);
    }
    // SAFETY: SVM was probed present and enabled; setting SVME and the save area
    // does not change how the hypervisor itself executes.
    unsafe {
        wrmsr(msr::IA32_EFER, rdmsr(msr::IA32_EFER) | EFER_SVME);
        wrmsr(msr::VM_HSAVE_PA, pages.hsave.load(Ordering::Acquire));
    }
    Ok(())
}

/// This CPU's page for the host's VMSAVE state.
fn host_vmcb() -> HostPhysAddr {
    HostPhysAddr::new(CPU_PAGES[super::cpu_id() as usize].host_vmcb.load(Ordering::Acquire))
}

/// Every CPU's host save area (VM_HSAVE_PA) and host VMSAVE page, for the log
/// when a guest's VMCB is found holding host state.
fn host_save_areas() -> alloc::vec::Vec<(u64, u64)> {
    CPU_PAGES
        .iter()
        .map(|p| (p.hsave.load(Ordering::Relaxed), p.host_vmcb.load(Ordering::Relaxed)))
        .filter(|&(h, _)| h != 0)
        .collect()
}

/// How many ASIDs this CPU has (ASID 0 is the host's).
pub fn num_asids() -> u64 {
    NUM_ASIDS.load(Ordering::Relaxed)
}
