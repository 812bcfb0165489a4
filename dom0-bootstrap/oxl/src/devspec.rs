//! xl's disk and vif specs (the strings in a config's `disk = [...]` and
//! `vif = [...]` lists), parsed and checked as xl documents them
//! (xl-disk-configuration, xl-network-configuration), limited to what an Oxen
//! domU can be given: raw images and block devices as virtio disks, virtio NICs
//! on a Linux bridge in dom0.
//!
//! ```text
//! disk = ['/var/lib/oxen/web.img,raw,xvda,rw',        # target, format, vdev, access
//!         'format=raw, vdev=xvdb, access=ro, target=/srv/data.img',
//!         'phy:/dev/vg0/web-swap,xvdc,w']             # xm's form: [phy:|file:]target, vdev, access
//! vif  = ['mac=00:16:3e:01:02:03,bridge=xenbr0', '']  # '' = a NIC with the defaults
//! ```
//!
//! Every mistake is an error that says what was wrong and what is accepted;
//! nothing is silently dropped.

use std::fmt;
use std::path::PathBuf;

/// xl's default bridge (`xenbr0`, as Xen and Oracle VM name the one dom0 sets up).
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// The OUI xl gives generated MACs (Xen's, 00:16:3e).
pub const MAC_OUI: [u8; 3] = [0x00, 0x16, 0x3e];
/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;

/// What the domU may do with a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Where a disk's blocks are in dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A regular file (xl's `file:` or a plain path).
    File,
    /// A block device (xl's `phy:`).
    Device,
}

/// One `disk` entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub target: PathBuf,
    /// Only `raw` exists for Oxen: the spec says it or leaves it out.
    pub backing: Backing,
    /// As written (`xvda`, `hdb`, `sdc`, `vdd`...); `index` is its position.
    pub vdev: String,
    /// 0 for ?da, 1 for ?db, ..., 26 for ?daa (xl's numbering of vdevs).
    pub index: u32,
    pub access: Access,
}

/// One `vif` entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifSpec {
    pub mac: [u8; 6],
    /// Whether `mac` came from the spec (else derived from the domain's name).
    pub mac_given: bool,
    pub bridge: String,
    /// dom0's name for the tap device, if the spec gives one (`vifname=`).
    pub vifname: Option<String>,
}

/// What is wrong with a spec (the caller adds the file and line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

const FORMATS_XL_KNOWS: &[&str] = &["raw", "qcow", "qcow2", "vhd", "qed"];
const DISK_USAGE: &str = "expected 'TARGET,raw,VDEV,ACCESS' or key=value pairs \
     (format=raw, vdev=xvda, access=rw|ro, target=PATH last)";

/// Parses one `disk` entry.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, SpecError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return bad(format!("an empty disk spec: {DISK_USAGE}"));
    }
    let mut target: Option<String> = None;
    let mut format: Option<String> = None;
    let mut vdev: Option<String> = None;
    let mut access: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let mut rest = spec;
    loop {
        let (item, next) = match rest.split_once(',') {
            Some((a, b)) => (a.trim(), Some(b)),
            None => (rest.trim(), None),
        };
        if let Some(t) = item.strip_prefix("target=") {
            // `target=` takes the rest of the spec, commas and all (xl's rule).
            let whole = match next {
                Some(n) => format!("{t},{n}"),
                None => t.to_owned(),
            };
            set(&mut target, "target", whole.trim().to_owned())?;
            break;
        }
        match item.split_once('=') {
            Some((k, v)) => {
                let (k, v) = (k.trim(), v.trim().to_owned());
                match k {
                    "format" => set(&mut format, k, v)?,
                    "vdev" => set(&mut vdev, k, v)?,
                    "access" => set(&mut access, k, v)?,
                    "devtype" if v == "disk" => {}
                    "devtype" => return bad(format!("devtype={v}: Oxen gives domUs disks only (devtype=disk)")),
                    "backendtype" | "script" | "backend" | "discard" | "direct-io-safe" | "colo-host"
                    | "colo-port" | "colo-export" | "active-disk" | "hidden-disk" | "trusted" => {
                        return bad(format!(
                            "{k}= is xl's but not Oxen's: a disk is a file or block device that dom0's device model serves as virtio"
                        ))
                    }
                    _ => return bad(format!("unknown key '{k}': {DISK_USAGE}")),
                }
            }
            None => {
                if item == "cdrom" || item.ends_with(":cdrom") {
                    return bad("cdrom: Oxen gives domUs disks only");
                }
                positional.push(item.to_owned());
            }
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    // xm's three-field form `[phy:|file:]TARGET,VDEV,ACCESS`: the second field is
    // a disk name. Otherwise xl's order: target, format, vdev, access.
    let legacy = positional.len() == 3 && vdev_index(&positional[1]).is_ok();
    let names: &[&str] = if legacy {
        &["target", "vdev", "access"]
    } else {
        &["target", "format", "vdev", "access"]
    };
    if positional.len() > names.len() {
        return bad(format!("too many fields ({}): {DISK_USAGE}", positional.len()));
    }
    for (name, v) in names.iter().zip(positional) {
        let slot = match *name {
            "target" => &mut target,
            "format" => &mut format,
            "vdev" => &mut vdev,
            _ => &mut access,
        };
        // An empty positional field leaves the setting to its default, as in xl.
        if !v.is_empty() {
            set(slot, name, v)?;
        }
    }

    let Some(mut target) = target.filter(|t| !t.is_empty()) else {
        return bad(format!("no target (the image file or block device): {DISK_USAGE}"));
    };
    let mut backing = None;
    for (prefix, b) in [("phy:", Backing::Device), ("file:", Backing::File), ("aio:", Backing::File)] {
        if let Some(t) = target.strip_prefix(prefix) {
            backing = Some(b);
            target = t.to_owned();
        }
    }
    if target.starts_with("tap:") || target.starts_with("qcow") || target.starts_with("vhd:") {
        return bad(format!("'{target}': only raw images and block devices (phy:) are served"));
    }
    if target.is_empty() {
        return bad(format!("no target after the prefix: {DISK_USAGE}"));
    }
    let backing = backing.unwrap_or(if target.starts_with("/dev/") {
        Backing::Device
    } else {
        Backing::File
    });
    match format.as_deref() {
        None | Some("raw") => {}
        Some(f) if FORMATS_XL_KNOWS.contains(&f) => {
            return bad(format!("format={f}: Oxen serves raw images only (convert with qemu-img convert -O raw)"))
        }
        Some(f) => return bad(format!("unknown format '{f}': use raw")),
    }
    let Some(vdev) = vdev else {
        return bad(format!("no vdev (the name the domU sees, e.g. xvda): {DISK_USAGE}"));
    };
    let index = vdev_index(&vdev)?;
    let access = match access.as_deref() {
        None | Some("rw") | Some("w") => Access::ReadWrite,
        Some("ro") | Some("r") => Access::ReadOnly,
        Some(a) => return bad(format!("access={a}: use rw (or w) or ro (or r)")),
    };
    Ok(DiskSpec {
        target: PathBuf::from(target),
        backing,
        vdev,
        index,
        access,
    })
}

fn set(slot: &mut Option<String>, name: &str, v: String) -> Result<(), SpecError> {
    if slot.is_some() {
        return bad(format!("{name} is given twice"));
    }
    *slot = Some(v);
    Ok(())
}

/// xl's disk numbering: `xvda` 0, `xvdz` 25, `xvdaa` 26 ...; `hd` and `sd`
/// names and Linux's `vd` too. Partitions (`xvda1`) are not disks.
pub fn vdev_index(vdev: &str) -> Result<u32, SpecError> {
    let letters = ["xvd", "hd", "sd", "vd"]
        .iter()
        .find_map(|p| vdev.strip_prefix(p))
        .filter(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_lowercase()));
    let Some(letters) = letters else {
        return bad(format!(
            "vdev '{vdev}' is not a disk name: use xvda, xvdb, ... (or hdX, sdX, vdX); partitions are not disks"
        ));
    };
    // Bijective base 26: a=1 .. z=26, then minus one.
    let n = letters
        .bytes()
        .fold(0u32, |n, b| n * 26 + u32::from(b - b'a' + 1));
    Ok(n - 1)
}

/// Parses one `vif` entry for the domain `domain`'s NIC number `index`.
pub fn parse_vif(spec: &str, domain: &str, index: u32) -> Result<VifSpec, SpecError> {
    let mut mac = None;
    let mut bridge = None;
    let mut vifname = None;
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return bad(format!("'{item}' is not key=value: e.g. 'mac=00:16:3e:01:02:03,bridge={DEFAULT_BRIDGE}'"));
        };
        let (k, v) = (k.trim(), v.trim().to_owned());
        match k {
            "mac" => set(&mut mac, k, v)?,
            "bridge" => set(&mut bridge, k, v)?,
            "vifname" => set(&mut vifname, k, v)?,
            "model" if v == "virtio" || v == "virtio-net" => {}
            "model" => return bad(format!("model={v}: Oxen's domU NICs are virtio-net (model=virtio)")),
            "type" if v == "vif" || v == "ioemu" => {}
            "type" => return bad(format!("type={v}: use vif (or leave it out)")),
            "ip" | "script" | "rate" | "backend" | "gatewaydev" | "accel" | "devid" | "mtu" => {
                return bad(format!(
                    "{k}= is xl's but not Oxen's: a vif is a tap device on a bridge in dom0 (mac=, bridge=, vifname=)"
                ))
            }
            _ => return bad(format!("unknown key '{k}': use mac=, bridge=, vifname=, model=virtio")),
        }
    }
    let (mac, mac_given) = match mac {
        Some(m) => (parse_mac(&m)?, true),
        None => (default_mac(domain, index), false),
    };
    let bridge = bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_owned());
    check_ifname("bridge", &bridge)?;
    if let Some(v) = &vifname {
        check_ifname("vifname", v)?;
    }
    Ok(VifSpec {
        mac,
        mac_given,
        bridge,
        vifname,
    })
}

/// A unicast MAC as six hex octets split by `:` (or `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], SpecError> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let octets: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok()).flatten())
                .collect()
        })
        .flatten();
    let Some(o) = octets else {
        return bad(format!("mac '{s}' is not a MAC address: six hex octets, e.g. 00:16:3e:01:02:03"));
    };
    let mac = [o[0], o[1], o[2], o[3], o[4], o[5]];
    if mac[0] & 1 != 0 {
        return bad(format!("mac '{s}' is a multicast address (the first octet is odd): a NIC needs a unicast one"));
    }
    if mac == [0; 6] {
        return bad("mac 00:00:00:00:00:00 is not a NIC's address");
    }
    Ok(mac)
}

/// The MAC a vif gets without `mac=`: Xen's OUI and three bytes hashed from
/// the domain's name and the NIC's number (FNV-1a), so a domain created again
/// under its name keeps its addresses.
pub fn default_mac(domain: &str, index: u32) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in domain.bytes().chain([0]).chain(index.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [MAC_OUI[0], MAC_OUI[1], MAC_OUI[2], a & 0x7f, b, c]
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace or `:`.
fn check_ifname(what: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        return bad(format!(
            "{what} '{name}' is not an interface name: 1 to {IFNAME_MAX} characters, no '/', ':' or spaces"
        ));
    }
    Ok(())
}

/// Disks of one domain that clash: one vdev twice.
pub fn check_disks(disks: &[DiskSpec]) -> Result<(), SpecError> {
    for (i, d) in disks.iter().enumerate() {
        if let Some(e) = disks[..i].iter().find(|e| e.index == d.index) {
            return bad(format!(
                "vdev {} is used twice ({} and {}): give each disk its own",
                d.vdev,
                e.target.display(),
                d.target.display()
            ));
        }
    }
    Ok(())
}

/// NICs of one domain that clash: one MAC twice.
pub fn check_vifs(vifs: &[VifSpec]) -> Result<(), SpecError> {
    for (i, v) in vifs.iter().enumerate() {
        if vifs[..i].iter().any(|e| e.mac == v.mac) {
            return bad(format!("mac {} is used twice: give each vif its own", format_mac(&v.mac)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(s: &str) -> DiskSpec {
        parse_disk(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn disk_err(s: &str) -> String {
        match parse_disk(s) {
            Ok(d) => panic!("{s} was accepted: {d:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn positional_disk() {
        let d = disk("/var/lib/oxen/web.img,raw,xvda,rw");
        assert_eq!(d.target, PathBuf::from("/var/lib/oxen/web.img"));
        assert_eq!((d.backing, d.vdev.as_str(), d.index, d.access), (Backing::File, "xvda", 0, Access::ReadWrite));
        let d = disk("/srv/ro.img, raw, xvdb, ro");
        assert_eq!((d.index, d.access), (1, Access::ReadOnly));
        // Empty positional fields keep the defaults.
        let d = disk("/srv/x.img,,xvdc");
        assert_eq!((d.index, d.access), (2, Access::ReadWrite));
    }

    #[test]
    fn keyed_disk_and_target_last() {
        let d = disk("format=raw, vdev=xvdb, access=ro, target=/srv/a,b.img");
        assert_eq!(d.target, PathBuf::from("/srv/a,b.img"));
        assert_eq!((d.index, d.access), (1, Access::ReadOnly));
        let d = disk("vdev=xvda, devtype=disk, target=/dev/vg0/web");
        assert_eq!(d.backing, Backing::Device);
    }

    #[test]
    fn xm_legacy_form() {
        let d = disk("phy:/dev/vg0/web-swap,xvdc,w");
        assert_eq!(d.target, PathBuf::from("/dev/vg0/web-swap"));
        assert_eq!((d.backing, d.index, d.access), (Backing::Device, 2, Access::ReadWrite));
        let d = disk("file:/srv/web.img,hda,r");
        assert_eq!((d.backing, d.index, d.access), (Backing::File, 0, Access::ReadOnly));
    }

    #[test]
    fn bad_disks_say_why() {
        assert!(disk_err("").contains("empty"));
        assert!(disk_err("/srv/a.img,qcow2,xvda,rw").contains("raw images only"));
        assert!(disk_err("/srv/a.img,ext4,xvda,rw").contains("unknown format"));
        assert!(disk_err("/srv/a.img,raw,xvda1,rw").contains("not a disk name"));
        assert!(disk_err("/srv/a.img,raw,eth0,rw").contains("not a disk name"));
        assert!(disk_err("/srv/a.img,raw,xvda,rwx").contains("access=rwx"));
        assert!(disk_err("/srv/a.img,raw").contains("no vdev"));
        assert!(disk_err("raw,xvda,rw,,x").contains("too many"));
        assert!(disk_err("vdev=xvda").contains("no target"));
        assert!(disk_err("vdev=xvda,vdev=xvdb,target=/a").contains("twice"));
        assert!(disk_err("colour=red,target=/a").contains("unknown key"));
        assert!(disk_err("script=block-iscsi,vdev=xvda,target=/a").contains("not Oxen's"));
        assert!(disk_err("/srv/a.iso,raw,hdc:cdrom,r").contains("cdrom"));
        assert!(disk_err("devtype=cdrom,vdev=hdc,target=/a.iso").contains("disks only"));
        assert!(disk_err("phy:,xvda,w").contains("no target"));
    }

    #[test]
    fn vdev_numbering_is_xls() {
        for (v, n) in [("xvda", 0), ("xvdz", 25), ("xvdaa", 26), ("xvdaz", 51), ("xvdba", 52), ("hdb", 1), ("sdc", 2), ("vdd", 3)] {
            assert_eq!(vdev_index(v), Ok(n), "{v}");
        }
        for v in ["xvd", "xvdA", "xvdaaaa", "xvda1", "nvme0n1", ""] {
            assert!(vdev_index(v).is_err(), "{v}");
        }
    }

    #[test]
    fn duplicate_vdevs_refused() {
        let a = disk("/a,raw,xvda,rw");
        let b = disk("/b,raw,xvdb,rw");
        let c = disk("/c,raw,xvda,ro");
        assert!(check_disks(&[a.clone(), b.clone()]).is_ok());
        assert!(check_disks(&[a, b, c]).unwrap_err().0.contains("used twice"));
    }

    #[test]
    fn vifs() {
        let v = parse_vif("mac=00:16:3e:01:02:03,bridge=xenbr0", "web", 0).unwrap();
        assert_eq!((v.mac, v.mac_given, v.bridge.as_str()), ([0, 0x16, 0x3e, 1, 2, 3], true, "xenbr0"));
        let v = parse_vif("", "web", 0).unwrap();
        assert_eq!((v.mac_given, v.bridge.as_str(), v.vifname.as_deref()), (false, DEFAULT_BRIDGE, None));
        let v = parse_vif("bridge=br1, model=virtio, vifname=web-eth0, type=vif", "web", 1).unwrap();
        assert_eq!((v.bridge.as_str(), v.vifname.as_deref()), ("br1", Some("web-eth0")));
        let e = |s: &str| parse_vif(s, "web", 0).unwrap_err().0;
        assert!(e("mac=01:16:3e:01:02:03").contains("multicast"));
        assert!(e("mac=00:16:3e:01:02").contains("not a MAC"));
        assert!(e("mac=00:16:3e:01:02:0g").contains("not a MAC"));
        assert!(e("mac=00:00:00:00:00:00").contains("not a NIC"));
        assert!(e("model=e1000").contains("virtio"));
        assert!(e("ip=10.0.0.2").contains("not Oxen's"));
        assert!(e("bridge=a/b").contains("interface name"));
        assert!(e("bridge=averyveryverylongname").contains("interface name"));
        assert!(e("vifname=").contains("interface name"));
        assert!(e("xenbr0").contains("key=value"));
        assert!(e("speed=10").contains("unknown key"));
        assert!(e("bridge=a,bridge=b").contains("twice"));
    }

    #[test]
    fn default_macs_are_stable_unicast_and_distinct() {
        let a = default_mac("web", 0);
        assert_eq!(a, default_mac("web", 0), "stable per name and index");
        assert_eq!(&a[..3], &MAC_OUI);
        assert_eq!(a[0] & 1, 0);
        assert_ne!(a, default_mac("web", 1));
        assert_ne!(a, default_mac("db", 0));
        // Within Xen's OUI the fourth octet stays below 0x80, as xl's do.
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let m = default_mac(&format!("dom{i}"), 0);
            assert!(m[3] < 0x80);
            seen.insert(m);
        }
        assert_eq!(seen.len(), 200);
        let v = [parse_vif("", "web", 0).unwrap(), parse_vif(&format!("mac={}", format_mac(&a)), "web", 1).unwrap()];
        assert!(check_vifs(&v).unwrap_err().0.contains("used twice"));
    }
}
