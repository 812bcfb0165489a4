//! Address newtypes. Guest-physical and host-physical addresses never mix: the only
//! way from one to the other is through a guest's memory map.

use core::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// The address `off` bytes further on, or `None` on overflow.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// Offset within a 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & 0xfff
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A host-physical address. The hypervisor maps all RAM at virtual = physical,
    /// so `as_ptr` is valid for any frame it owns.
    HostPhysAddr
);
address_type!(
    /// A guest-physical address: meaningful only together with one guest's memory map.
    GuestPhysAddr
);

impl HostPhysAddr {
    /// The hypervisor's pointer to this address (RAM is identity mapped).
    pub const fn as_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

/// Whether `addr` is canonical for 48-bit linear addresses (SDM Vol. 1
/// §3.3.7.1): bits 63:47 all equal. VM entry checks guest segment bases,
/// SYSENTER_ESP/EIP and MSR-load values for this, so guest writes are checked
/// before they reach the VMCS / VMCB.
pub const fn is_canonical(addr: u64) -> bool {
    is_canonical_bits(addr, 48)
}

/// Whether `addr` is canonical for `bits`-bit linear addresses (48, or 57
/// with 5-level paging): bits 63:`bits - 1` all equal.
pub const fn is_canonical_bits(addr: u64, bits: u32) -> bool {
    let bits = if bits < 32 || bits > 64 { 48 } else { bits };
    let top = (addr as i64) >> (bits - 1);
    top == 0 || top == -1
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    #[test]
    fn five_level_addresses_are_canonical_only_with_57_bits() {
        // Linux's direct map under 5-level paging.
        assert!(!is_canonical(0xff11_0000_0b60_0000));
        assert!(is_canonical_bits(0xff11_0000_0b60_0000, 57));
        assert!(is_canonical_bits(0xffff_8000_0000_0000, 57));
        assert!(!is_canonical_bits(0xfe00_0000_0000_0000, 57));
        assert!(is_canonical_bits(0x00ff_ffff_ffff_ffff, 57));
        assert!(!is_canonical_bits(0x0100_0000_0000_0000, 57));
        assert_eq!(is_canonical_bits(0x0000_8000_0000_0000, 7), is_canonical(0x0000_8000_0000_0000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(HostPhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(GuestPhysAddr::new(0x1000).checked_add(0x10), Some(GuestPhysAddr::new(0x1010)));
        assert_eq!(HostPhysAddr::new(0x1234).align_down(0x1000), HostPhysAddr::new(0x1000));
        assert!(GuestPhysAddr::new(0x200000).is_aligned(0x200000));
        assert_eq!(GuestPhysAddr::new(0x1234).page_offset(), 0x234);
    }
}
