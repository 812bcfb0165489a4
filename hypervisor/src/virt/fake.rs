//! A vCPU for host tests of code that drives the `Vcpu` interface: registers
//! in memory, and a record of what was done to it.

use crate::virt::{GuestGprs, Vcpu, VmExit};

#[derive(Default)]
pub struct FakeVcpu {
    pub gprs: GuestGprs,
    pub rip: u64,
    pub cpl: u8,
    pub rsp: u64,
    pub skipped: u32,
    pub injected: Option<(u8, Option<u32>)>,
    /// `reflect_exception` calls.
    pub reflected: u32,
    /// One MSR the fake backend keeps: (number, value).
    pub msr: Option<(u32, u64)>,
}

impl Vcpu for FakeVcpu {
    fn run(&mut self) -> VmExit {
        VmExit::Hlt
    }
    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.gprs
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.rip = rip;
    }
    fn rsp(&self) -> u64 {
        self.rsp
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn skip_instruction(&mut self) {
        self.skipped += 1;
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.injected = Some((vector, error_code));
    }
    fn reflect_exception(&mut self) {
        self.reflected += 1;
    }
    fn guest_msr(&self, msr: u32) -> Option<u64> {
        self.msr.filter(|m| m.0 == msr).map(|m| m.1)
    }
}

