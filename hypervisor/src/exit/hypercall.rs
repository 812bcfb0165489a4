//! Hypercalls (docs/hypercalls.md). Number in RAX, arguments in RDI, RSI, RDX,
//! R10, R8, result in RAX. Only CPL 0 may call; anything else gets -EPERM.

use super::Outcome;
use crate::virt::Vcpu;
use oxen_abi::{nr, Error, ABI_VERSION};

pub fn handle(vcpu: &mut impl Vcpu) -> Outcome {
    let cpl = vcpu.cpl();
    let number = vcpu.gprs().rax;
    let result = if cpl != 0 {
        log::warn!("hypercall {number:#x} from CPL {cpl} refused");
        Err(Error::Perm)
    } else {
        dispatch(number)
    };
    vcpu.gprs().rax = match result {
        Ok(v) => v,
        Err(e) => e.to_rax(),
    };
    vcpu.skip_instruction();
    Outcome::Continue
}

fn dispatch(number: u64) -> Result<u64, Error> {
    match number {
        nr::VERSION => Ok(ABI_VERSION.into()),
        nr::NULL => Ok(0),
        _ => Err(Error::NoSys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::io::tests::FakeVcpu;

    #[test]
    fn version_null_and_unknown() {
        let mut v = FakeVcpu::default();
        v.gprs.rax = nr::VERSION;
        handle(&mut v);
        assert_eq!(v.gprs.rax, u64::from(ABI_VERSION));
        v.gprs.rax = nr::NULL;
        handle(&mut v);
        assert_eq!(v.gprs.rax, 0);
        v.gprs.rax = 0xdead;
        handle(&mut v);
        assert_eq!(v.gprs.rax as i64, -38);
        assert_eq!(v.skipped, 3);
    }

    #[test]
    fn user_mode_callers_are_refused() {
        let mut v = FakeVcpu { cpl: 3, ..Default::default() };
        v.gprs.rax = nr::VERSION;
        handle(&mut v);
        assert_eq!(v.gprs.rax as i64, -1);
    }
}
