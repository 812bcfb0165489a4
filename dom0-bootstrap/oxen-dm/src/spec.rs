//! The `oxen-dm` command line: what `oxl create` passes for each domU (one process per domU).
//!
//! ```text
//! oxen-dm --domid N --name NAME [--ready-fd FD] [--disk SPEC ...] [--vif VIF ...]
//! SPEC = base=0xfeb00000,gsi=16,access=rw|ro,vdev=xvda,target=/path/to/image-or-blockdev
//! VIF  = base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0[,vifname=NAME]
//! ```
//!
//! At least one device. A vif's tap in dom0 is `vifDOMID.N` (N its place among the `--vif`s,
//! from 0, as Xen names them) unless `vifname=` names it.
//!
//! `base` and `gsi` are what `DEVICE_ADD` gave oxl for the device; the order of `--disk` is the
//! order of the devices. `target=` is last and takes the rest of the string, so a path may hold
//! commas (xl's `disk=` rule for `target=`).

use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
use oxen_abi::{DEVICE_GSI_FIRST, MAX_DEVICES};

use crate::mmio::MMIO_WINDOW_SIZE;
use crate::net::{format_mac, parse_mac};

/// One domU's device model: its virtio-mmio disks and network devices, served until the domain
/// is gone.
#[derive(Clone, Debug, Parser, PartialEq, Eq)]
#[command(name = "oxen-dm", version)]
pub struct Args {
    /// The domU whose devices these are.
    #[arg(long)]
    pub domid: u32,
    /// Its name (for the log).
    #[arg(long)]
    pub name: String,
    /// A descriptor to write "ready\n" to, then close, once every device answers.
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// A disk: base=ADDR,gsi=N,access=rw|ro,vdev=NAME,target=PATH (target last).
    #[arg(long = "disk", value_name = "SPEC", required_unless_present = "vifs")]
    pub disks: Vec<DiskSpec>,
    /// A network device: base=ADDR,gsi=N,mac=MAC,bridge=BRIDGE[,vifname=NAME].
    #[arg(long = "vif", value_name = "VIF")]
    pub vifs: Vec<VifSpec>,
    /// Where SIGUSR1 (`oxl save`) makes it write its devices' state, then stop serving until
    /// SIGUSR2.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<std::path::PathBuf>,
    /// Go on from the devices' state in PATH (written by `--state-file`, carried in a save
    /// file): a restored domain's drivers find their devices as they left them.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<std::path::PathBuf>,
}

impl Args {
    /// What no single `--disk` or `--vif` shows: two devices in one window or on one line, two
    /// disks or two taps with one name, two vifs with one MAC.
    pub fn check(&self) -> Result<(), String> {
        let windows: Vec<(String, u64, u32)> = (self.disks.iter().map(|d| (d.vdev.clone(), d.base, d.gsi)))
            .chain(self.vifs.iter().enumerate().map(|(i, v)| (self.ifname(i), v.base, v.gsi)))
            .collect();
        for (i, (an, ab, ag)) in windows.iter().enumerate() {
            for (bn, bb, bg) in &windows[..i] {
                if ab == bb {
                    return Err(format!("{bn} and {an}: both at base={ab:#x}"));
                }
                if ag == bg {
                    return Err(format!("{bn} and {an}: both on gsi={ag}"));
                }
            }
        }
        for (i, a) in self.vifs.iter().enumerate() {
            for (j, b) in self.vifs[..i].iter().enumerate() {
                if a.mac == b.mac {
                    return Err(format!("{} and {}: both mac={}", self.ifname(j), self.ifname(i), format_mac(&a.mac)));
                }
                if self.ifname(i) == self.ifname(j) {
                    return Err(format!("two vifs named {}", self.ifname(i)));
                }
            }
        }
        for (i, a) in self.disks.iter().enumerate() {
            for b in &self.disks[..i] {
                if a.vdev == b.vdev {
                    return Err(format!("two disks named vdev={}", a.vdev));
                }
            }
        }
        Ok(())
    }

    /// The tap's name in dom0 of the `index`th `--vif`: its `vifname=`, or `vifDOMID.INDEX`.
    pub fn ifname(&self, index: usize) -> String {
        match self.vifs.get(index).and_then(|v| v.vifname.clone()) {
            Some(n) => n,
            None => format!("vif{}.{index}", self.domid),
        }
    }
}

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Guest-physical address of its `MMIO_WINDOW_SIZE`-byte virtio-mmio window.
    pub base: u64,
    /// The domU's IOAPIC input it raises.
    pub gsi: u32,
    pub read_only: bool,
    /// The guest's name for it (xvda, ...): the log's, and the serial GET_ID returns.
    pub vdev: String,
    /// An image file or a block device in dom0.
    pub target: PathBuf,
}

const KEYS: &str = "base, gsi, access, vdev, target";

fn number(key: &str, v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("{key}={v}: not a number"))
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut base, mut gsi, mut access, mut vdev, mut target) = (None, None, None, None, None);
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(path) = rest.strip_prefix("target=") {
                target = Some(path);
                break;
            }
            let (item, next) = rest.split_once(',').unwrap_or((rest, ""));
            rest = next;
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!("`{item}`: not key=value (keys: {KEYS})"));
            };
            let seen = match key {
                "base" => base.replace(number(key, value)?).is_some(),
                "gsi" => {
                    let n = number(key, value)?;
                    gsi.replace(u32::try_from(n).map_err(|_| format!("gsi={value}: too large"))?).is_some()
                }
                "access" => {
                    let ro = match value {
                        "rw" => false,
                        "ro" => true,
                        _ => return Err(format!("access={value}: rw or ro")),
                    };
                    access.replace(ro).is_some()
                }
                "vdev" => vdev.replace(value).is_some(),
                _ => return Err(format!("`{key}`: unknown key (keys: {KEYS})")),
            };
            if seen {
                return Err(format!("{key} given twice"));
            }
        }
        let missing = |k: &str| format!("no {k}= (a disk needs {KEYS}; target last)");
        let base = base.ok_or_else(|| missing("base"))?;
        let gsi = gsi.ok_or_else(|| missing("gsi"))?;
        let read_only = access.ok_or_else(|| missing("access"))?;
        let vdev = vdev.ok_or_else(|| missing("vdev"))?;
        let target = target.ok_or_else(|| missing("target"))?;
        if base % MMIO_WINDOW_SIZE != 0 || base.checked_add(MMIO_WINDOW_SIZE).is_none() {
            return Err(format!("base={base:#x}: not the start of a {MMIO_WINDOW_SIZE:#x}-byte window"));
        }
        let lines = DEVICE_GSI_FIRST..DEVICE_GSI_FIRST + MAX_DEVICES;
        if !lines.contains(&gsi) {
            return Err(format!(
                "gsi={gsi}: not a declared device's line ({}..={})",
                lines.start,
                lines.end - 1
            ));
        }
        if vdev.is_empty() || !vdev.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("vdev={vdev}: a name of letters, digits, - and _"));
        }
        if target.is_empty() {
            return Err("target= is empty".to_owned());
        }
        Ok(Self { base, gsi, read_only, vdev: vdev.to_owned(), target: PathBuf::from(target) })
    }
}

/// One `--vif`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifSpec {
    /// Guest-physical address of its `MMIO_WINDOW_SIZE`-byte virtio-mmio window.
    pub base: u64,
    /// The domU's IOAPIC input it raises.
    pub gsi: u32,
    /// The guest's MAC address (the device's config space).
    pub mac: [u8; 6],
    /// The dom0 bridge its tap joins.
    pub bridge: String,
    /// The tap's name, if not the default `vifDOMID.N` ([`Args::ifname`]).
    pub vifname: Option<String>,
}

const VIF_KEYS: &str = "base, gsi, mac, bridge, vifname";

/// An interface name Linux takes (`dev_valid_name`: 1 to 15 bytes, no '/', ':' or
/// whitespace), kept to the characters an admin types.
fn ifname_ok(n: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&n.len())
        && n != "."
        && n != ".."
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl FromStr for VifSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut base, mut gsi, mut mac, mut bridge, mut vifname) = (None, None, None, None, None);
        for item in s.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!("`{item}`: not key=value (keys: {VIF_KEYS})"));
            };
            let seen = match key {
                "base" => base.replace(number(key, value)?).is_some(),
                "gsi" => {
                    let n = number(key, value)?;
                    gsi.replace(u32::try_from(n).map_err(|_| format!("gsi={value}: too large"))?).is_some()
                }
                "mac" => {
                    let m = parse_mac(value).ok_or_else(|| format!("mac={value}: not six hex octets xx:xx:xx:xx:xx:xx"))?;
                    // Bit 0 of the first octet marks a group address (IEEE 802-2014 §8.2.2):
                    // no NIC has one; an all-zero address is no address.
                    if m[0] & 1 != 0 || m == [0; 6] {
                        return Err(format!("mac={value}: not a unicast address"));
                    }
                    mac.replace(m).is_some()
                }
                "bridge" => bridge.replace(value).is_some(),
                "vifname" => vifname.replace(value).is_some(),
                _ => return Err(format!("`{key}`: unknown key (keys: {VIF_KEYS})")),
            };
            if seen {
                return Err(format!("{key} given twice"));
            }
        }
        let missing = |k: &str| format!("no {k}= (a vif needs base, gsi, mac, bridge; vifname optional)");
        let base = base.ok_or_else(|| missing("base"))?;
        let gsi = gsi.ok_or_else(|| missing("gsi"))?;
        let mac = mac.ok_or_else(|| missing("mac"))?;
        let bridge = bridge.ok_or_else(|| missing("bridge"))?;
        if base % MMIO_WINDOW_SIZE != 0 || base.checked_add(MMIO_WINDOW_SIZE).is_none() {
            return Err(format!("base={base:#x}: not the start of a {MMIO_WINDOW_SIZE:#x}-byte window"));
        }
        let lines = DEVICE_GSI_FIRST..DEVICE_GSI_FIRST + MAX_DEVICES;
        if !lines.contains(&gsi) {
            return Err(format!("gsi={gsi}: not a declared device's line ({}..={})", lines.start, lines.end - 1));
        }
        if !ifname_ok(bridge) {
            return Err(format!("bridge={bridge}: not an interface name (1 to 15 letters, digits, -, _, .)"));
        }
        if let Some(n) = vifname {
            if !ifname_ok(n) {
                return Err(format!("vifname={n}: not an interface name (1 to 15 letters, digits, -, _, .)"));
            }
        }
        Ok(Self { base, gsi, mac, bridge: bridge.to_owned(), vifname: vifname.map(str::to_owned) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<DiskSpec, String> {
        s.parse()
    }

    #[test]
    fn a_full_spec_and_a_target_with_commas() {
        let d = spec("base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=/srv/a,b=c.img").unwrap();
        assert_eq!(
            d,
            DiskSpec {
                base: 0xfeb0_0000,
                gsi: 16,
                read_only: false,
                vdev: "xvda".into(),
                target: "/srv/a,b=c.img".into()
            }
        );
        // Keys in any order before target; decimal numbers too.
        let d = spec("vdev=xvdb,access=ro,gsi=17,base=4272951296,target=/dev/vg/x").unwrap();
        assert_eq!((d.base, d.gsi, d.read_only, d.vdev.as_str()), (0xfeb0_1000, 17, true, "xvdb"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("base=0xfeb00000,gsi=16,access=rw,vdev=xvda", "no target= (a disk needs base, gsi, access, vdev, target; target last)"),
            ("gsi=16,access=rw,vdev=xvda,target=/x", "no base= (a disk needs base, gsi, access, vdev, target; target last)"),
            ("base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=", "target= is empty"),
            ("base=0xfeb00000,gsi=16,access=rx,vdev=xvda,target=/x", "access=rx: rw or ro"),
            ("base=0xfeb00800,gsi=16,access=rw,vdev=xvda,target=/x", "base=0xfeb00800: not the start of a 0x1000-byte window"),
            ("base=0xfffffffffffff000,gsi=16,access=rw,vdev=xvda,target=/x", "base=0xfffffffffffff000: not the start of a 0x1000-byte window"),
            ("base=0xzz,gsi=16,access=rw,vdev=xvda,target=/x", "base=0xzz: not a number"),
            ("base=0xfeb00000,gsi=4,access=rw,vdev=xvda,target=/x", "gsi=4: not a declared device's line (16..=23)"),
            ("base=0xfeb00000,gsi=99999999999,access=rw,vdev=xvda,target=/x", "gsi=99999999999: too large"),
            ("base=0xfeb00000,gsi=16,gsi=17,access=rw,vdev=xvda,target=/x", "gsi given twice"),
            ("base=0xfeb00000,gsi=16,access=rw,vdev=xvda,format=raw,target=/x", "`format`: unknown key (keys: base, gsi, access, vdev, target)"),
            ("base=0xfeb00000,gsi=16,rw,vdev=xvda,target=/x", "`rw`: not key=value (keys: base, gsi, access, vdev, target)"),
            ("base=0xfeb00000,gsi=16,access=rw,vdev=../a,target=/x", "vdev=../a: a name of letters, digits, - and _"),
            ("", "no base= (a disk needs base, gsi, access, vdev, target; target last)"),
        ];
        for (s, want) in cases {
            assert_eq!(spec(s).unwrap_err(), want, "{s}");
        }
    }

    fn args(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("oxen-dm").chain(argv.iter().copied()))
    }

    #[test]
    fn the_command_line_oxl_passes() {
        let a = args(&[
            "--domid", "5", "--name", "web", "--ready-fd", "3",
            "--disk", "base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=/srv/web.img",
            "--disk", "base=0xfeb01000,gsi=17,access=ro,vdev=xvdb,target=/srv/iso,1.img",
        ])
        .unwrap();
        assert_eq!((a.domid, a.name.as_str(), a.ready_fd), (5, "web", Some(3)));
        assert_eq!(a.disks.len(), 2);
        assert_eq!(a.disks[1].target, PathBuf::from("/srv/iso,1.img"));
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let d = "base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=/a";
        // No disk, no domid, a bad disk: clap's usage errors.
        assert!(args(&["--domid", "5", "--name", "web"]).is_err());
        assert!(args(&["--name", "web", "--disk", d]).is_err());
        let e = args(&["--domid", "5", "--name", "web", "--disk", "base=1,gsi=16,access=rw,vdev=x,target=/a"]).unwrap_err().to_string();
        assert!(e.contains("not the start of a 0x1000-byte window"), "{e}");
        // Disks that clash with each other.
        let clash = |b: &str| {
            args(&["--domid", "5", "--name", "web", "--disk", d, "--disk", b]).unwrap().check().unwrap_err()
        };
        assert_eq!(clash("base=0xfeb00000,gsi=17,access=rw,vdev=xvdb,target=/b"), "xvda and xvdb: both at base=0xfeb00000");
        assert_eq!(clash("base=0xfeb01000,gsi=16,access=rw,vdev=xvdb,target=/b"), "xvda and xvdb: both on gsi=16");
        assert_eq!(clash("base=0xfeb01000,gsi=17,access=rw,vdev=xvda,target=/b"), "two disks named vdev=xvda");
    }
    fn vif(s: &str) -> Result<VifSpec, String> {
        s.parse()
    }

    #[test]
    fn a_vif_spec_in_any_order() {
        let v = vif("base=0xfeb02000,gsi=18,mac=00:16:3E:01:02:03,bridge=xenbr0").unwrap();
        let want = VifSpec {
            base: 0xfeb0_2000,
            gsi: 18,
            mac: [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03],
            bridge: "xenbr0".into(),
            vifname: None,
        };
        assert_eq!(v, want);
        let v = vif("vifname=web-eth0,bridge=br.lan,mac=02:00:00:00:00:01,gsi=19,base=4272955392").unwrap();
        assert_eq!((v.base, v.gsi, v.vifname.as_deref(), v.bridge.as_str()), (0xfeb0_2000, 19, Some("web-eth0"), "br.lan"));
    }

    #[test]
    fn bad_vif_specs_say_what_is_wrong() {
        let need = "(a vif needs base, gsi, mac, bridge; vifname optional)";
        let keys = "(keys: base, gsi, mac, bridge, vifname)";
        let ifname = "not an interface name (1 to 15 letters, digits, -, _, .)";
        let cases = [
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03".to_owned(), format!("no bridge= {need}")),
            ("gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0".to_owned(), format!("no base= {need}")),
            ("base=0xfeb02000,gsi=18,bridge=xenbr0".to_owned(), format!("no mac= {need}")),
            ("".to_owned(), format!("``: not key=value {keys}")),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02,bridge=xenbr0".to_owned(), "mac=00:16:3e:01:02: not six hex octets xx:xx:xx:xx:xx:xx".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:0g,bridge=xenbr0".to_owned(), "mac=00:16:3e:01:02:0g: not six hex octets xx:xx:xx:xx:xx:xx".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=0:16:3e:01:02:03:04,bridge=xenbr0".to_owned(), "mac=0:16:3e:01:02:03:04: not six hex octets xx:xx:xx:xx:xx:xx".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=01:00:5e:00:00:01,bridge=xenbr0".to_owned(), "mac=01:00:5e:00:00:01: not a unicast address".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=00:00:00:00:00:00,bridge=xenbr0".to_owned(), "mac=00:00:00:00:00:00: not a unicast address".to_owned()),
            ("base=0xfeb02800,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0".to_owned(), "base=0xfeb02800: not the start of a 0x1000-byte window".to_owned()),
            ("base=0xfeb02000,gsi=24,mac=00:16:3e:01:02:03,bridge=xenbr0".to_owned(), "gsi=24: not a declared device's line (16..=23)".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=a-bridge-named-too-long".to_owned(), format!("bridge=a-bridge-named-too-long: {ifname}")),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=".to_owned(), format!("bridge=: {ifname}")),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0,vifname=../x".to_owned(), format!("vifname=../x: {ifname}")),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0,vifname=a b".to_owned(), format!("vifname=a b: {ifname}")),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0,bridge=xenbr1".to_owned(), "bridge given twice".to_owned()),
            ("base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0,model=e1000".to_owned(), format!("`model`: unknown key {keys}")),
            ("base=0xfeb02000,gsi=18,00:16:3e:01:02:03,bridge=xenbr0".to_owned(), format!("`00:16:3e:01:02:03`: not key=value {keys}")),
        ];
        for (s, want) in cases {
            assert_eq!(vif(&s).unwrap_err(), want, "{s}");
        }
    }

    #[test]
    fn vifs_beside_disks_or_alone_and_their_tap_names() {
        let v0 = "base=0xfeb01000,gsi=17,mac=00:16:3e:00:00:01,bridge=xenbr0";
        let v1 = "base=0xfeb02000,gsi=18,mac=00:16:3e:00:00:02,bridge=xenbr0,vifname=web1";
        let a = args(&["--domid", "7", "--name", "web", "--vif", v0, "--vif", v1]).unwrap();
        assert_eq!((a.disks.len(), a.vifs.len()), (0, 2));
        assert_eq!((a.ifname(0), a.ifname(1)), ("vif7.0".to_owned(), "web1".to_owned()));
        assert_eq!(a.check(), Ok(()));
        let d = "base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=/a";
        let a = args(&["--domid", "7", "--name", "web", "--disk", d, "--vif", v0]).unwrap();
        assert_eq!(a.check(), Ok(()));
        // Clashes between kinds and between vifs.
        let check = |argv: &[&str]| {
            let mut all = vec!["--domid", "7", "--name", "web"];
            all.extend(argv);
            args(&all).unwrap().check().unwrap_err()
        };
        let at_disk = "base=0xfeb00000,gsi=17,mac=00:16:3e:00:00:01,bridge=xenbr0";
        assert_eq!(check(&["--disk", d, "--vif", at_disk]), "xvda and vif7.0: both at base=0xfeb00000");
        let on_16 = "base=0xfeb01000,gsi=16,mac=00:16:3e:00:00:01,bridge=xenbr0";
        assert_eq!(check(&["--disk", d, "--vif", on_16]), "xvda and vif7.0: both on gsi=16");
        let same_mac = "base=0xfeb02000,gsi=18,mac=00:16:3e:00:00:01,bridge=xenbr0";
        assert_eq!(check(&["--vif", v0, "--vif", same_mac]), "vif7.0 and vif7.1: both mac=00:16:3e:00:00:01");
        let named = "base=0xfeb02000,gsi=18,mac=00:16:3e:00:00:02,bridge=xenbr0,vifname=vif7.0";
        assert_eq!(check(&["--vif", v0, "--vif", named]), "two vifs named vif7.0");
        // No device at all is clap's usage error.
        assert!(args(&["--domid", "7", "--name", "web"]).is_err());
    }
}
