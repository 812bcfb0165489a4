//! Intel VT-x backend (placeholder until the backend lands).
use crate::virt::{GuestGprs, InitialState, Vcpu, VmExit};

/// Checks VT-x on this CPU; on success, a one-line description for the log.
pub fn probe() -> Result<&'static str, &'static str> {
    Err("the VMX backend is not built yet")
}

/// VMXON on the calling CPU.
pub fn enable_cpu() -> Result<(), &'static str> {
    Err("the VMX backend is not built yet")
}

pub struct VmxVcpu {
    gprs: GuestGprs,
}

impl VmxVcpu {
    pub fn new(_ept_root: u64, _state: &InitialState, _vpid: u16) -> Result<Self, &'static str> {
        Err("the VMX backend is not built yet")
    }
}

impl Vcpu for VmxVcpu {
    fn run(&mut self) -> VmExit {
        VmExit::Unsupported { reason: 0, info: 0 }
    }
    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.gprs
    }
    fn rip(&self) -> u64 {
        0
    }
    fn set_rip(&mut self, _rip: u64) {}
    fn rsp(&self) -> u64 {
        0
    }
    fn cpl(&self) -> u8 {
        0
    }
    fn skip_instruction(&mut self) {}
    fn inject_exception(&mut self, _vector: u8, _error_code: Option<u32>) {}
}
