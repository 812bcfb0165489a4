//! A writer for "newc" cpio archives, the format the Linux kernel unpacks an
//! initramfs from (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header — the magic `070701` and thirteen 8-digit
//! hexadecimal fields — then the NUL-terminated path padded with NULs to a multiple
//! of 4 bytes (counting the header), then the data padded the same way. The archive
//! ends with an entry named `TRAILER!!!`. Paths are stored without a leading `/`.
//!
//! Entries are written in the order they are added; a directory must come before
//! what is inside it (the kernel creates files with plain `open`, not `mkdir -p`).
//! Every entry is owned by root and has mtime 0, so the same inputs give the same bytes.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built in memory.
pub struct Archive {
    out: Vec<u8>,
    next_ino: u32,
    /// Paths added so far (without leading `/`), to refuse duplicates and orphans.
    paths: BTreeSet<String>,
}

/// The fields of one header that vary between entries.
struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &'a str,
    data: &'a [u8],
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
            paths: BTreeSet::new(),
        }
    }

    /// A directory (`mode` = permission bits, e.g. 0o755).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// Directories for every component of `path` that is not in the archive yet.
    pub fn dirs(&mut self, path: &str) -> Result<()> {
        let path = path.trim_matches('/');
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.paths.contains(&prefix) {
                let p = prefix.clone();
                self.dir(&p, 0o755)?;
            }
        }
        Ok(())
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target` (stored as the entry's data, without a NUL).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node, e.g. `/dev/console` = (5, 1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the archive's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(&Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
            name: TRAILER,
            data: &[],
        });
        self.out
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            bail!("cpio: bad path {path:?}");
        }
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("cpio: path {path:?} must be normalized (no empty, `.` or `..` components)");
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !self.paths.contains(parent) {
                bail!("cpio: {path:?} added before its directory /{parent}");
            }
        }
        if !self.paths.insert(name.to_owned()) {
            bail!("cpio: {path:?} is already in the archive");
        }
        if u32::try_from(data.len()).is_err() {
            bail!("cpio: {path:?} is larger than 4 GiB");
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(&Header {
            ino,
            mode,
            nlink,
            rdev,
            name,
            data,
        });
        Ok(())
    }

    fn header(&mut self, h: &Header) {
        let fields = [
            h.ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            h.data.len() as u32,
            0, // devmajor
            0, // devminor
            h.rdev.0,
            h.rdev.1,
            h.name.len() as u32 + 1, // namesize counts the NUL
            0,                       // check (only for the "070702" crc format)
        ];
        let start = self.out.len();
        self.out.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        debug_assert_eq!(self.out.len() - start, HEADER_LEN);
        self.out.extend_from_slice(h.name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(h.data);
        self.pad();
    }

    /// NULs up to the next multiple of 4 (headers start 4-aligned, so the
    /// archive's length is the alignment that matters).
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: (field values, name, data).
    type Entry = ([u32; 13], String, Vec<u8>);

    /// An independent reader, strict about the format, for checking the writer.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut entries = Vec::new();
        loop {
            let offset = total - b.len();
            assert_eq!(offset % 4, 0, "header at {offset} is not 4-byte aligned");
            assert_eq!(&b[..6], b"070701", "magic at {offset}");
            let mut f = [0u32; 13];
            for (i, v) in f.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{hex:?}");
                *v = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = f[11] as usize;
            let name_end = HEADER_LEN + namesize;
            assert_eq!(b[name_end - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(b[HEADER_LEN..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            assert!(b[name_end..data_start].iter().all(|&c| c == 0));
            let data_end = data_start + f[6] as usize;
            let next = data_end.next_multiple_of(4);
            assert!(b[data_end..next].iter().all(|&c| c == 0));
            let data = b[data_start..data_end].to_vec();
            b = &b[next..];
            let done = name == TRAILER;
            entries.push((f, name, data));
            if done {
                assert!(b.is_empty(), "bytes after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn header_fields_and_padding() {
        let mut a = Archive::new();
        a.dir("/bin", 0o755).unwrap();
        a.file("/bin/hello", 0o755, b"hello").unwrap();
        a.symlink("/bin/sh", "busybox").unwrap();
        a.dir("dev", 0o755).unwrap();
        a.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        // The first header exactly: ino 1, dir 0755, nlink 2, namesize 4 ("bin\0").
        let first = "070701\
            00000001000041ed000000000000000000000002000000000000000000000000\
            00000000000000000000000000000004\
            00000000";
        assert_eq!(std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap(), first);
        // 110 + 4 = 114 -> padded to 116; a directory has no data.
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 6], b"bin\0\0\0");
        assert_eq!(&bytes[116..122], b"070701");

        let e = parse(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "bin/sh", "dev", "dev/console", TRAILER]
        );
        let (f, _, data) = &e[1];
        assert_eq!(f[1], 0o100_755);
        assert_eq!((f[4], f[6]), (1, 5));
        assert_eq!(data, b"hello");
        let (f, _, data) = &e[2];
        assert_eq!(f[1], 0o120_777);
        assert_eq!(data, b"busybox");
        let (f, _, _) = &e[4];
        assert_eq!((f[1], f[9], f[10]), (0o020_600, 5, 1));
        // Inodes are distinct and non-zero; uid, gid, mtime and check are 0.
        let inos: BTreeSet<u32> = e[..5].iter().map(|x| x.0[0]).collect();
        assert_eq!(inos.len(), 5);
        assert!(!inos.contains(&0));
        for (f, _, _) in &e {
            assert_eq!((f[2], f[3], f[5], f[12]), (0, 0, 0, 0));
        }
    }

    #[test]
    fn trailer_alone() {
        let bytes = Archive::new().finish();
        // 110 + "TRAILER!!!\0" (11) = 121 -> 124.
        assert_eq!(bytes.len(), 124);
        let e = parse(&bytes);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1, TRAILER);
        assert_eq!(e[0].0[4], 1); // nlink
        assert_eq!(e[0].0[11], 11); // namesize
    }

    #[test]
    fn every_padding_length() {
        // Name and data lengths 1..8 cover every remainder mod 4.
        let mut a = Archive::new();
        for n in 1..=8 {
            let name = "x".repeat(n);
            a.file(&name, 0o644, &vec![b'a'; n]).unwrap();
        }
        let e = parse(&a.finish());
        for (n, (f, name, data)) in e.iter().take(8).enumerate() {
            assert_eq!(name.len(), n + 1);
            assert_eq!(f[11] as usize, n + 2);
            assert_eq!(data.len(), n + 1);
        }
    }

    #[test]
    fn mistakes_are_refused() {
        let mut a = Archive::new();
        assert!(a.file("/etc/passwd", 0o644, b"").is_err(), "no /etc yet");
        a.dirs("/lib/modules/6.1/kernel").unwrap();
        a.dirs("lib/modules/6.1/extra").unwrap();
        assert!(a.dir("/lib", 0o755).is_err(), "duplicate");
        assert!(a.file("/lib/../x", 0o644, b"").is_err());
        assert!(a.file("/lib//x", 0o644, b"").is_err());
        assert!(a.file("/", 0o644, b"").is_err());
        assert!(a.file(TRAILER, 0o644, b"").is_err());
        let names: Vec<String> = parse(&a.finish()).into_iter().map(|e| e.1).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/extra",
                TRAILER
            ]
        );
    }
}
