//! The VMCALL/VMMCALL exit: number in RAX, arguments in RDI, RSI, RDX, R10, R8,
//! result in RAX. Only CPL 0 may call; anything else gets -EPERM here, before
//! the call is looked at. The call itself is `hypercall::dispatch`'s, through
//! the guest's `GuestEnv`.

use super::{GuestEnv, Outcome};
use crate::hypercall::{After, Args};
use crate::virt::Vcpu;
use oxen_abi::Error;

pub fn handle(vcpu: &mut impl Vcpu, env: &mut dyn GuestEnv) -> Outcome {
    let cpl = vcpu.cpl();
    let g = vcpu.gprs();
    let args = Args { nr: g.rax, a: [g.rdi, g.rsi, g.rdx, g.r10, g.r8] };
    let (result, after) = if cpl != 0 {
        env.refused_cpl(cpl, args.nr);
        (Err(Error::Perm), After::Continue)
    } else {
        env.hypercall(&args)
    };
    vcpu.gprs().rax = match result {
        Ok(v) => v,
        Err(e) => e.to_rax(),
    };
    vcpu.skip_instruction();
    match after {
        After::Continue => Outcome::Continue,
        After::Yield => Outcome::Yield,
        After::Block { timeout_ns } => Outcome::Block { timeout_ns },
        After::Shutdown(reason) => Outcome::Shutdown(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::io::tests::FakeVcpu;
    use crate::exit::io::tests::FakeEnv;
    use oxen_abi::{nr, ABI_VERSION};

    #[test]
    fn version_null_and_unknown() {
        let mut v = FakeVcpu::default();
        let mut env = FakeEnv::default();
        v.gprs.rax = nr::VERSION;
        handle(&mut v, &mut env);
        assert_eq!(v.gprs.rax, u64::from(ABI_VERSION));
        v.gprs.rax = nr::NULL;
        handle(&mut v, &mut env);
        assert_eq!(v.gprs.rax, 0);
        v.gprs.rax = 0xdead;
        handle(&mut v, &mut env);
        assert_eq!(v.gprs.rax as i64, -38);
        assert_eq!(v.skipped, 3);
    }

    #[test]
    fn user_mode_callers_are_refused() {
        let mut v = FakeVcpu { cpl: 3, ..Default::default() };
        v.gprs.rax = nr::VERSION;
        handle(&mut v, &mut FakeEnv::default());
        assert_eq!(v.gprs.rax as i64, -1);
    }
}
