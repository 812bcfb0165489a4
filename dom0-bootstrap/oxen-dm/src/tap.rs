//! A tap device in dom0 on a Linux bridge: the [`Backend`] of a domU's vif, as Xen's
//! `vif-bridge` script sets up a vif (`vifDOMID.N`, MAC fe:ff:ff:ff:ff:ff, a port of the bridge,
//! up).
//!
//! The tap is not persistent: it goes (and leaves the bridge) when the device model's descriptor
//! is closed, at its exit however it ends. Needs `CAP_NET_ADMIN` (root in dom0), dom0's `tun`
//! and `bridge` modules, and the bridge made beforehand (dom0's init makes `xenbr0`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::net::{Backend, FdBackend};
use crate::oxen::describe;

/// `SIOCBRADDIF` from <linux/sockios.h> (not in the libc crate for Linux): adds the interface
/// whose index is in `ifr_ifindex` to the bridge named in `ifr_name`.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// `ARPHRD_ETHER` from <linux/if_arp.h>: the hardware address family for SIOCSIFHWADDR.
const ARPHRD_ETHER: libc::sa_family_t = 1;
/// The tap's own address, as Xen gives its vifs: the bridge takes the lowest port address as its
/// own, and fe:ff:ff:ff:ff:ff never is, so adding or removing a domU's vif does not change the
/// bridge's (and dom0's) address. The guest's MAC is the virtio device's, not this.
const TAP_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The clone device of <linux/if_tun.h>.
const TUN_PATH: &CStr = c"/dev/net/tun";

/// An open tap device, up and on its bridge.
pub struct Tap {
    io: FdBackend,
    name: String,
}

/// An `ifreq` naming `name` (checked: shorter than IFNAMSIZ, no NUL).
fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0) {
        return Err(format!("{name:?}: not an interface name (1 to {} bytes)", libc::IFNAMSIZ - 1));
    }
    // SAFETY: ifreq is plain integers, arrays and a union of them: all zeroes is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

/// `ioctl(fd, req, ifr)`, the errno as an error.
fn ioctl(fd: RawFd, req: libc::c_ulong, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here (TUNSETIFF, SIOC[GS]IFFLAGS, SIOCGIFINDEX, SIOCSIFHWADDR,
    // SIOCBRADDIF) reads and writes at most one `struct ifreq`, which `ifr` is.
    let r = unsafe { libc::ioctl(fd, req as libc::Ioctl, std::ptr::from_mut(ifr)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The index of interface `name`.
fn ifindex(ctl: RawFd, name: &str) -> io::Result<libc::c_int> {
    let mut r = ifreq(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    ioctl(ctl, libc::SIOCGIFINDEX, &mut r)?;
    // SAFETY: SIOCGIFINDEX filled the union's ifindex member.
    Ok(unsafe { r.ifr_ifru.ifru_ifindex })
}

impl Tap {
    /// Creates tap `name`, adds it to `bridge` and brings it up. A missing bridge, a name in use
    /// or missing privileges are errors saying so, and leave nothing behind.
    pub fn open(name: &str, bridge: &str) -> Result<Self, String> {
        let mut req = ifreq(name)?;
        ifreq(bridge).map_err(|e| format!("bridge={bridge}: {e}"))?;
        // A socket only to carry the interface ioctls (brctl uses an AF_LOCAL one too).
        // SAFETY: plain socket(2); the descriptor is taken by OwnedFd at once.
        let ctl = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if ctl < 0 {
            return Err(format!("socket: {}", describe(&io::Error::last_os_error())));
        }
        // SAFETY: a new descriptor, ours alone.
        let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
        // The bridge first: its absence is dom0's set-up's fault, said before a tap exists.
        ifindex(ctl.as_raw_fd(), bridge).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODEV) {
                format!("bridge {bridge}: no such interface in dom0 (made by dom0's init; module bridge)")
            } else {
                format!("bridge {bridge}: {}", describe(&e))
            }
        })?;

        // SAFETY: open(2) of a constant path; the descriptor is taken by OwnedFd at once.
        let fd = unsafe { libc::open(TUN_PATH.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("{}: {} (module tun)", TUN_PATH.to_string_lossy(), describe(&e)));
        }
        // SAFETY: a new descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // <linux/if_tun.h>: a tap (Ethernet frames) with no packet-information prefix, so each
        // read and write is one bare frame.
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ioctl(fd.as_raw_fd(), libc::TUNSETIFF as libc::c_ulong, &mut req).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EINVAL) => "the name is in use".to_owned(),
                Some(libc::EPERM) => "needs CAP_NET_ADMIN (root)".to_owned(),
                _ => describe(&e),
            };
            format!("tap {name}: {why}")
        })?;
        // From here the tap exists; it goes with `fd` on any error below.
        let setup = |what: &str, e: io::Error| format!("tap {name}: {what}: {}", describe(&e));

        let mut r = ifreq(name)?;
        // SAFETY: writing the sockaddr member of the union of a zeroed ifreq.
        unsafe {
            r.ifr_ifru.ifru_hwaddr.sa_family = ARPHRD_ETHER;
            for (d, s) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(TAP_MAC) {
                *d = s as libc::c_char;
            }
        }
        ioctl(ctl.as_raw_fd(), libc::SIOCSIFHWADDR, &mut r).map_err(|e| setup("setting its address", e))?;

        let index = ifindex(ctl.as_raw_fd(), name).map_err(|e| setup("its index", e))?;
        let mut r = ifreq(bridge)?;
        r.ifr_ifru.ifru_ifindex = index;
        ioctl(ctl.as_raw_fd(), SIOCBRADDIF, &mut r).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                format!("bridge {bridge}: not a bridge")
            } else {
                setup(&format!("adding it to bridge {bridge}"), e)
            }
        })?;

        let mut r = ifreq(name)?;
        ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r).map_err(|e| setup("its flags", e))?;
        // SAFETY: SIOCGIFFLAGS filled the union's flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r).map_err(|e| setup("bringing it up", e))?;

        let io = FdBackend::new(fd).map_err(|e| setup("O_NONBLOCK", e))?;
        Ok(Self { io, name: name.to_owned() })
    }

    /// The interface's name in dom0.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read_frame(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.io.write_frame(frame)
    }

    fn fd(&self) -> RawFd {
        self.io.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bridge_is_refused_before_any_tap_exists() {
        // SIOCGIFINDEX needs no privilege, so this runs anywhere: no tap is made.
        let e = Tap::open("oxtest0.0", "oxen-no-such-br").err().unwrap();
        assert_eq!(e, "bridge oxen-no-such-br: no such interface in dom0 (made by dom0's init; module bridge)");
    }

    #[test]
    fn names_longer_than_ifnamsiz_are_refused() {
        let e = Tap::open("vif12345.123456789", "xenbr0").err().unwrap();
        assert_eq!(e, "\"vif12345.123456789\": not an interface name (1 to 15 bytes)");
        let e = Tap::open("vif1.0", "a-bridge-name-too-long").err().unwrap();
        assert_eq!(e, "bridge=a-bridge-name-too-long: \"a-bridge-name-too-long\": not an interface name (1 to 15 bytes)");
    }

    /// A real tap on a real bridge: needs root, /dev/net/tun and a bridge `oxtestbr0` made
    /// beforehand, none of which a host test run has. Run by hand in a network namespace of its
    /// own (and a sysfs of that namespace, where the test looks), touching no real interface:
    /// `unshare -n -m sh -c 'mount -t sysfs none /sys && ip link add oxtestbr0 type bridge &&
    /// ip link set oxtestbr0 up && cargo test -p oxen-dm --lib -- --ignored tap'`.
    #[test]
    #[ignore = "needs root, /dev/net/tun and a bridge oxtestbr0"]
    fn a_tap_joins_the_bridge_and_carries_frames() {
        let mut tap = Tap::open("oxtest1.0", "oxtestbr0").unwrap();
        let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/oxtest1.0/{f}")).unwrap();
        let master = std::fs::read_link("/sys/class/net/oxtest1.0/master").unwrap();
        assert!(master.ends_with("oxtestbr0"), "{master:?}");
        assert_eq!(sys("address").trim(), "fe:ff:ff:ff:ff:ff");
        let flags = u32::from_str_radix(sys("flags").trim().trim_start_matches("0x"), 16).unwrap();
        assert_ne!(flags & libc::IFF_UP as u32, 0, "up");
        // Nothing to read yet, without blocking.
        let mut buf = [0u8; 2048];
        assert_eq!(tap.read_frame(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // A broadcast frame from the "guest" is taken whole: dom0 receives it on the tap.
        let mut frame = vec![0xffu8; 6];
        frame.extend([0x00, 0x16, 0x3e, 1, 2, 3, 0x88, 0xb5]);
        frame.extend([0u8; 46]);
        tap.write_frame(&frame).unwrap();
        assert_eq!(sys("statistics/rx_packets").trim(), "1");
        assert_eq!(sys("statistics/rx_bytes").trim(), "60");
        // A second tap of the same name is refused, saying so.
        assert_eq!(Tap::open("oxtest1.0", "oxtestbr0").err().unwrap(), "tap oxtest1.0: the name is in use");
        // Closing the descriptor removes the tap (not persistent): nothing outlives the model.
        drop(tap);
        assert!(!std::path::Path::new("/sys/class/net/oxtest1.0").exists());
    }
}
