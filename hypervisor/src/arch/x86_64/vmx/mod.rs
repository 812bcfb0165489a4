//! Intel VT-x backend.
//!
//! - `caps`: capability MSRs and the controls every vCPU runs with, fixed at boot.
//! - `vmcs`: VMX instructions and typed VMCS fields.
//! - `vcpu`: `VmxVcpu`, its VMCS set-up and the world switch.
//! - `exit`: reading an exit out of the VMCS and handling what is VMX-only.
//! - pure decoding lives in `crate::arch::x86_64::vmx::decode`, tested on the host.
//!
//! Per-CPU VMX state (the VMXON region, the current VMCS) is in `CPUS`, indexed
//! by `cpu_id()`; a vCPU is created, run and dropped on one CPU.

mod caps;
pub mod decode;
mod exit;
mod vcpu;
mod vmcs;

pub use vcpu::VmxVcpu;

use crate::arch::x86_64::{cpu_id, cpuid, rdmsr, wrmsr, cpu::msr};
use crate::arch::x86_64::vmx::decode::{apply_fixed_bits, ept_vpid_cap};
use caps::{feature_control, VmxCaps};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// CPUID.1:ECX bit 5: VMX (SDM Vol. 2A, CPUID).
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// Highest CPU index the per-CPU table holds.
pub const MAX_CPUS: usize = 64;

/// Capabilities and controls, read on the boot CPU by `probe`.
static CAPS: Once<VmxCaps> = Once::new();

/// One CPU's VMX state. Only that CPU writes it.
struct CpuVmx {
    /// Physical address of the VMXON region; 0 while not in VMX operation.
    vmxon_region: AtomicU64,
    /// Physical address of the VMCS current on this CPU, or 0.
    current_vmcs: AtomicU64,
}

static CPUS: [CpuVmx; MAX_CPUS] =
    [const { CpuVmx { vmxon_region: AtomicU64::new(0), current_vmcs: AtomicU64::new(0) } }; MAX_CPUS];

/// The calling CPU's VMX state.
fn this_cpu() -> Result<&'static CpuVmx, &'static str> {
    CPUS.get(cpu_id() as usize).ok_or("CPU index beyond the VMX per-CPU table")
}

fn caps() -> Result<&'static VmxCaps, &'static str> {
    CAPS.get().ok_or("VMX not probed")
}

/// Checks VT-x on this CPU; on success, a one-line description for the log.
pub fn probe() -> Result<&'static str, &'static str> {
    if cpuid(1, 0).ecx & CPUID_1_ECX_VMX == 0 {
        return Err("CPUID.1:ECX.VMX is clear");
    }
    enable_in_feature_control()?;
    // SAFETY: CPUID reports VMX, so the capability MSRs exist.
    let caps = unsafe { VmxCaps::read() }?;
    let caps = CAPS.call_once(|| caps);
    let timer = if caps.has_preemption_timer {
        alloc::format!(", preemption timer (TSC>>{})", caps.preemption_timer_shift)
    } else {
        alloc::string::String::new()
    };
    let desc = alloc::format!(
        "VMX (EPT 4-level WB, VPID, unrestricted guest{timer}, {} controls, VMCS rev {:#x})",
        if caps.basic.has_true_controls() { "TRUE" } else { "legacy" },
        caps.basic.revision()
    );
    Ok(desc.leak())
}

/// Makes sure IA32_FEATURE_CONTROL allows VMXON outside SMX, locking it if the
/// firmware left it unlocked (SDM Vol. 3C §24.7).
fn enable_in_feature_control() -> Result<(), &'static str> {
    // SAFETY: IA32_FEATURE_CONTROL exists on every CPU with VMX.
    let fc = unsafe { rdmsr(msr::IA32_FEATURE_CONTROL) };
    if fc & feature_control::LOCKED == 0 {
        // SAFETY: unlocked, so the write is allowed; it only enables VMXON.
        unsafe { wrmsr(msr::IA32_FEATURE_CONTROL, fc | feature_control::VMX_OUTSIDE_SMX | feature_control::LOCKED) };
        return Ok(());
    }
    if fc & feature_control::VMX_OUTSIDE_SMX == 0 {
        return Err("IA32_FEATURE_CONTROL is locked with VMX disabled (firmware setting)");
    }
    Ok(())
}

/// VMXON on the calling CPU.
pub fn enable_cpu() -> Result<(), &'static str> {
    let caps = caps()?;
    let cpu = this_cpu()?;
    if cpu.vmxon_region.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    if cpuid(1, 0).ecx & CPUID_1_ECX_VMX == 0 {
        return Err("CPUID.1:ECX.VMX is clear");
    }
    enable_in_feature_control()?;
    let region = crate::mem::alloc_frame().ok_or("out of memory for the VMXON region")?;
    // SAFETY: a fresh, zeroed frame of ours; the first dword is the revision
    // identifier (SDM Vol. 3C §25.11.5).
    unsafe { region.as_ptr::<u32>().write(caps.basic.revision()) };

    // VMX operation pins CR0 and CR4 to the fixed bits (SDM Vol. 3D §A.7, §A.8).
    let cr0 = apply_fixed_bits(Cr0::read_raw(), caps.cr0_fixed0, caps.cr0_fixed1);
    let cr4 = apply_fixed_bits(Cr4::read_raw() | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits(), caps.cr4_fixed0, caps.cr4_fixed1);
    if cr0 & Cr0Flags::PAGING.bits() == 0 || cr4 & Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits() == 0 {
        crate::mem::free_frames(region, 1);
        return Err("CR0/CR4 fixed bits forbid paging or VMXE");
    }
    // SAFETY: the fixed-0 bits are ones the hypervisor already runs with (PE, PG,
    // NE) plus VMXE, which only enables VMX instructions.
    unsafe {
        Cr0::write_raw(cr0);
        Cr4::write_raw(cr4);
    }
    // SAFETY: the region is ours for good (VMXOFF is never executed) and holds
    // the revision identifier; CR0/CR4 now satisfy the fixed bits.
    if let Err(e) = unsafe { vmcs::vmxon(region.as_u64()) } {
        log::error!("cpu{}: VMXON failed: {e}", cpu_id());
        crate::mem::free_frames(region, 1);
        return Err("VMXON failed");
    }
    cpu.vmxon_region.store(region.as_u64(), Ordering::Relaxed);
    // A VPID or EPT tag left over from firmware or a previous boot must not match.
    if caps.ept_vpid & ept_vpid_cap::INVEPT_ALL_CONTEXT != 0 {
        let _ = vmcs::invept(vmcs::InveptType::AllContexts, 0);
    }
    if caps.ept_vpid & ept_vpid_cap::INVVPID_ALL_CONTEXT != 0 {
        let _ = vmcs::invvpid(vmcs::InvvpidType::AllContexts, 0);
    }
    Ok(())
}
