//! A small encoder for ACPI Machine Language (AML), enough to describe a
//! virtual platform's devices in a DSDT: names, integers, strings, EISA IDs,
//! packages, scopes, devices, methods with `Return`, and resource templates
//! (I/O ports, IRQs, extended interrupts, fixed 32-bit memory).
//!
//! Grammar and opcodes are those of the ACPI 6.5 specification, chapter 20
//! ("ACPI Machine Language Specification", cited as "§20.2.x"); resource
//! descriptors are those of §6.4 ("Resource Data Types for ACPI").
//!
//! Every node implements [`Aml`] and encodes itself into a byte vector. Nodes
//! borrow their children (`&[&dyn Aml]`), so a device is written as one
//! expression and encoded in the same statement (`to_bytes(&Device::new(…))`),
//! while its temporaries live; [`Raw`] carries the bytes on. Nothing here
//! panics: a name, string or length that AML cannot hold is an [`Error`].

use alloc::vec::Vec;

/// Why an object could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A name path that is empty, has an empty segment, a segment longer than
    /// four characters or characters outside `[A-Z0-9_]` (a segment may not
    /// start with a digit), or more than 255 segments (§20.2.2).
    BadName,
    /// A string with a character outside 0x01..=0x7F (§20.2.3 `AsciiCharList`).
    BadString,
    /// An EISA ID that is not three capital letters and four hex digits.
    BadEisaId,
    /// An object longer than a `PkgLength` can hold (2^28 - 1 bytes, §20.2.4).
    TooLong,
    /// A package with more than 255 elements (`NumElements` is a byte, §20.2.5.4).
    TooManyElements,
    /// A method with more than 7 arguments or a sync level above 15 (§20.2.5.2).
    BadMethodFlags,
    /// An IRQ descriptor for an IRQ above 15 (§6.4.2.1: a 16-bit mask).
    BadIrq,
    /// A resource descriptor whose fields contradict each other (e.g. an I/O
    /// range whose maximum base is below its minimum).
    BadResource,
}

/// Something that encodes as AML.
pub trait Aml {
    /// Appends this object's AML encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error>;
}

/// Encodes one object into a fresh vector.
pub fn to_bytes(obj: &dyn Aml) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    obj.encode(&mut out)?;
    Ok(out)
}

// Opcodes and prefixes, §20.3 (AML byte stream byte values).
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82; // after EXT_OP_PREFIX
const ROOT_CHAR: u8 = b'\\';
const PARENT_PREFIX_CHAR: u8 = b'^';
const NULL_NAME: u8 = 0x00;
const NOTIFY_OP: u8 = 0x86;
const RETURN_OP: u8 = 0xa4;

/// Largest value a `PkgLength` encodes: 28 bits (§20.2.4).
const PKG_LENGTH_MAX: usize = (1 << 28) - 1;

/// Appends `PkgLength` for a body of `body_len` bytes that follows it.
///
/// §20.2.4: the encoded length counts the `PkgLength` bytes themselves. One
/// byte holds up to 63 in bits 0-5; otherwise bits 6-7 of the lead byte say how
/// many bytes follow (1-3), the lead byte's bits 0-3 hold the low nibble and
/// each following byte the next eight bits.
fn pkg_length(body_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    if body_len < 63 {
        out.push((body_len + 1) as u8);
        return Ok(());
    }
    for extra in 1..=3usize {
        let total = body_len.checked_add(extra + 1).ok_or(Error::TooLong)?;
        if total < 1 << (4 + 8 * extra) {
            if total > PKG_LENGTH_MAX {
                return Err(Error::TooLong);
            }
            out.push(((extra as u8) << 6) | (total & 0xf) as u8);
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return Ok(());
        }
    }
    Err(Error::TooLong)
}

/// Appends `op`, a `PkgLength` and `body` — the shape of every variable-length object.
fn with_pkg_length(op: &[u8], body: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    out.extend_from_slice(op);
    pkg_length(body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Encodes each object of a `TermList` in order.
fn term_list(objs: &[&dyn Aml], out: &mut Vec<u8>) -> Result<(), Error> {
    objs.iter().try_for_each(|o| o.encode(out))
}

/// A 4-character name segment (§20.2.2 `NameSeg`): a leading capital letter or
/// underscore, then capitals, digits or underscores; shorter names are padded
/// with `_` as ASL does (`_SB` is `_SB_`).
fn name_seg(seg: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let lead_ok = |c: u8| c.is_ascii_uppercase() || c == b'_';
    let ok = |c: u8| lead_ok(c) || c.is_ascii_digit();
    match seg {
        [first, rest @ ..] if seg.len() <= 4 && lead_ok(*first) && rest.iter().all(|&c| ok(c)) => {
            out.extend_from_slice(seg);
            out.extend(core::iter::repeat_n(b'_', 4 - seg.len()));
            Ok(())
        }
        _ => Err(Error::BadName),
    }
}

/// A name path in ASL form — `_S5`, `COM1`, `_SB.COM1`, `\_SB.PCI0`, `^^FOO`,
/// or `\` for the root — as an AML `NameString` (§20.2.2).
#[derive(Clone, Copy, Debug)]
pub struct Path<'a>(pub &'a str);

impl Aml for Path<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut s = self.0.as_bytes();
        if let [ROOT_CHAR, rest @ ..] = s {
            out.push(ROOT_CHAR);
            s = rest;
        } else {
            while let [PARENT_PREFIX_CHAR, rest @ ..] = s {
                out.push(PARENT_PREFIX_CHAR);
                s = rest;
            }
        }
        if s.is_empty() {
            // Only the root itself may be named by a prefix alone.
            if self.0 != "\\" {
                return Err(Error::BadName);
            }
            out.push(NULL_NAME);
            return Ok(());
        }
        let count = s.split(|&c| c == b'.').count();
        match count {
            1 => {}
            2 => out.push(DUAL_NAME_PREFIX),
            3..=255 => out.extend_from_slice(&[MULTI_NAME_PREFIX, count as u8]),
            _ => return Err(Error::BadName),
        }
        s.split(|&c| c == b'.').try_for_each(|seg| name_seg(seg, out))
    }
}

/// Integers take the shortest encoding (§20.2.3): `ZeroOp`, `OneOp`, or a byte,
/// word, dword or qword constant. (`OnesOp` is not used: its value depends on
/// the table revision.)
impl Aml for u64 {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let v = *self;
        match v {
            0 => out.push(ZERO_OP),
            1 => out.push(ONE_OP),
            2..=0xff => out.extend_from_slice(&[BYTE_PREFIX, v as u8]),
            0x100..=0xffff => {
                out.push(WORD_PREFIX);
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(DWORD_PREFIX);
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
            _ => {
                out.push(QWORD_PREFIX);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(())
    }
}

macro_rules! small_integer {
    ($($t:ty),*) => {$(
        impl Aml for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
                u64::from(*self).encode(out)
            }
        }
    )*};
}
small_integer!(u8, u16, u32);

/// A string constant (§20.2.3 `String`): `StringPrefix`, ASCII, a NUL.
impl Aml for &str {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if !self.bytes().all(|c| (0x01..=0x7f).contains(&c)) {
            return Err(Error::BadString);
        }
        out.push(STRING_PREFIX);
        out.extend_from_slice(self.as_bytes());
        out.push(0);
        Ok(())
    }
}

/// A compressed EISA ID such as `PNP0501`, ASL's `EisaId()` (§19.6.35): three
/// letters at five bits each (`A` = 1) big-endian in the first two bytes, then
/// the four hex digits as two bytes, read as one little-endian dword constant.
#[derive(Clone, Copy, Debug)]
pub struct EisaId<'a>(pub &'a str);

impl EisaId<'_> {
    /// The 32-bit value the ID stands for.
    pub fn value(&self) -> Result<u32, Error> {
        let b = self.0.as_bytes();
        let [l0, l1, l2, h0, h1, h2, h3] = *b else {
            return Err(Error::BadEisaId);
        };
        let letter = |c: u8| {
            if c.is_ascii_uppercase() {
                Ok(u16::from(c - b'@'))
            } else {
                Err(Error::BadEisaId)
            }
        };
        let hex = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(Error::BadEisaId),
        };
        let vendor = (letter(l0)? << 10) | (letter(l1)? << 5) | letter(l2)?;
        let [v_hi, v_lo] = vendor.to_be_bytes();
        let bytes = [v_hi, v_lo, (hex(h0)? << 4) | hex(h1)?, (hex(h2)? << 4) | hex(h3)?];
        Ok(u32::from_le_bytes(bytes))
    }
}

impl Aml for EisaId<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        // Always a dword, as iasl emits it, so the encoding does not depend on the value.
        out.push(DWORD_PREFIX);
        out.extend_from_slice(&self.value()?.to_le_bytes());
        Ok(())
    }
}

/// AML encoded earlier, e.g. by [`to_bytes`].
#[derive(Clone, Copy, Debug)]
pub struct Raw<'a>(pub &'a [u8]);

impl Aml for Raw<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(self.0);
        Ok(())
    }
}

/// `Name(path, value)` (§20.2.5.1 `DefName`).
pub struct Name<'a> {
    path: Path<'a>,
    value: &'a dyn Aml,
}

impl<'a> Name<'a> {
    pub fn new(path: &'a str, value: &'a dyn Aml) -> Self {
        Name { path: Path(path), value }
    }
}

impl Aml for Name<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(NAME_OP);
        self.path.encode(out)?;
        self.value.encode(out)
    }
}

/// `Package() { elements }` (§20.2.5.4 `DefPackage`).
pub struct Package<'a>(pub &'a [&'a dyn Aml]);

impl Aml for Package<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let count = u8::try_from(self.0.len()).map_err(|_| Error::TooManyElements)?;
        let mut body = Vec::from([count]);
        term_list(self.0, &mut body)?;
        with_pkg_length(&[PACKAGE_OP], &body, out)
    }
}

/// `Scope(path) { terms }` (§20.2.5.1 `DefScope`).
pub struct Scope<'a> {
    path: Path<'a>,
    terms: &'a [&'a dyn Aml],
}

impl<'a> Scope<'a> {
    pub fn new(path: &'a str, terms: &'a [&'a dyn Aml]) -> Self {
        Scope { path: Path(path), terms }
    }
}

impl Aml for Scope<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut body = Vec::new();
        self.path.encode(&mut body)?;
        term_list(self.terms, &mut body)?;
        with_pkg_length(&[SCOPE_OP], &body, out)
    }
}

/// `Device(path) { terms }` (§20.2.5.2 `DefDevice`).
pub struct Device<'a> {
    path: Path<'a>,
    terms: &'a [&'a dyn Aml],
}

impl<'a> Device<'a> {
    pub fn new(path: &'a str, terms: &'a [&'a dyn Aml]) -> Self {
        Device { path: Path(path), terms }
    }
}

impl Aml for Device<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut body = Vec::new();
        self.path.encode(&mut body)?;
        term_list(self.terms, &mut body)?;
        with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &body, out)
    }
}

/// `Method(path, args, serialized) { terms }` (§20.2.5.2 `DefMethod`), sync level 0.
pub struct Method<'a> {
    path: Path<'a>,
    args: u8,
    serialized: bool,
    terms: &'a [&'a dyn Aml],
}

impl<'a> Method<'a> {
    pub fn new(path: &'a str, args: u8, serialized: bool, terms: &'a [&'a dyn Aml]) -> Self {
        Method { path: Path(path), args, serialized, terms }
    }
}

impl Aml for Method<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.args > 7 {
            return Err(Error::BadMethodFlags);
        }
        // MethodFlags: bits 0-2 ArgCount, bit 3 SerializeFlag, bits 4-7 SyncLevel.
        let flags = self.args | (u8::from(self.serialized) << 3);
        let mut body = Vec::new();
        self.path.encode(&mut body)?;
        body.push(flags);
        term_list(self.terms, &mut body)?;
        with_pkg_length(&[METHOD_OP], &body, out)
    }
}

/// `Return(value)` (§20.2.5.3 `DefReturn`).
pub struct Return<'a>(pub &'a dyn Aml);

impl Aml for Return<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(RETURN_OP);
        self.0.encode(out)
    }
}

/// `Notify(object, value)` (§20.2.5.3 `DefNotify`), e.g. 0x80 to a power button
/// device: "button pressed" (§5.6.6, device-specific notification values).
pub struct Notify<'a> {
    object: Path<'a>,
    value: u64,
}

impl<'a> Notify<'a> {
    pub fn new(object: &'a str, value: u64) -> Self {
        Notify { object: Path(object), value }
    }
}

impl Aml for Notify<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(NOTIFY_OP);
        self.object.encode(out)?;
        self.value.encode(out)
    }
}

/// A resource data descriptor (§6.4) inside a [`ResourceTemplate`].
pub trait Resource {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error>;
}

/// `ResourceTemplate() { descriptors }`: a buffer holding the descriptors and an
/// End Tag (§6.4.2.9), as `_CRS` returns it (§6.2.2).
pub struct ResourceTemplate<'a>(pub &'a [&'a dyn Resource]);

/// End Tag, small item 0xF, one checksum byte. A zero checksum means "treat as
/// correct" (§6.4.2.9), which is what iasl emits.
const END_TAG: [u8; 2] = [0x79, 0x00];

impl Aml for ResourceTemplate<'_> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut data = Vec::new();
        self.0.iter().try_for_each(|r| r.encode(&mut data))?;
        data.extend_from_slice(&END_TAG);
        // DefBuffer := BufferOp PkgLength BufferSize ByteList (§20.2.5.4).
        let mut body = Vec::new();
        (data.len() as u64).encode(&mut body)?;
        body.extend_from_slice(&data);
        with_pkg_length(&[BUFFER_OP], &body, out)
    }
}

/// `IO(Decode16, min, max, alignment, length)`: the small I/O Port Descriptor
/// (§6.4.2.5), with 16-bit address decode.
#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub min: u16,
    pub max: u16,
    pub alignment: u8,
    pub length: u8,
}

impl Io {
    /// `length` ports fixed at `base`.
    pub fn fixed(base: u16, length: u8) -> Self {
        Io { min: base, max: base, alignment: 1, length }
    }
}

impl Resource for Io {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.max < self.min {
            return Err(Error::BadResource);
        }
        // Tag: small item 0x08, length 7. Information bit 0: 16-bit decode.
        out.extend_from_slice(&[0x47, 0x01]);
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        out.extend_from_slice(&[self.alignment, self.length]);
        Ok(())
    }
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub edge: bool,
    pub active_low: bool,
    pub shared: bool,
}

impl Trigger {
    /// Edge-triggered, active high, not shared: an ISA device's line.
    pub const EDGE_HIGH: Trigger = Trigger { edge: true, active_low: false, shared: false };
}

/// `IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) { irq }`: the small
/// IRQ Descriptor with its information byte (§6.4.2.1), for ISA IRQs 0-15.
#[derive(Clone, Copy, Debug)]
pub struct Irq {
    pub irq: u8,
    pub trigger: Trigger,
}

impl Resource for Irq {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.irq > 15 {
            return Err(Error::BadIrq);
        }
        let t = self.trigger;
        // Information byte: bit 0 _HE (edge), bit 3 _LL (active low), bit 4 _SHR.
        let info = u8::from(t.edge) | (u8::from(t.active_low) << 3) | (u8::from(t.shared) << 4);
        out.push(0x23); // small item 0x04, length 3
        out.extend_from_slice(&(1u16 << self.irq).to_le_bytes());
        out.push(info);
        Ok(())
    }
}

/// `Interrupt(ResourceConsumer, …) { gsi }`: the Extended Interrupt Descriptor
/// (§6.4.3.6) with one interrupt number, for lines beyond the ISA range.
#[derive(Clone, Copy, Debug)]
pub struct Interrupt {
    pub gsi: u32,
    pub trigger: Trigger,
}

impl Resource for Interrupt {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let t = self.trigger;
        // Flags: bit 0 consumer, bit 1 _HE (edge), bit 2 _LL, bit 3 _SHR.
        let flags = 1 | (u8::from(t.edge) << 1) | (u8::from(t.active_low) << 2) | (u8::from(t.shared) << 3);
        // Large item 0x09; length 6: flags, table length 1, one dword.
        out.extend_from_slice(&[0x89, 0x06, 0x00, flags, 0x01]);
        out.extend_from_slice(&self.gsi.to_le_bytes());
        Ok(())
    }
}

/// `Memory32Fixed(ReadWrite|ReadOnly, base, length)` (§6.4.3.4), e.g. a
/// virtio-mmio window.
#[derive(Clone, Copy, Debug)]
pub struct Memory32Fixed {
    pub writable: bool,
    pub base: u32,
    pub length: u32,
}

impl Resource for Memory32Fixed {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.base.checked_add(self.length.saturating_sub(1)).is_none() {
            return Err(Error::BadResource);
        }
        // Large item 0x06, length 9; information bit 0: read/write.
        out.extend_from_slice(&[0x86, 0x09, 0x00, u8::from(self.writable)]);
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(obj: &dyn Aml) -> Vec<u8> {
        to_bytes(obj).unwrap()
    }

    #[test]
    fn integers_take_the_shortest_form() {
        assert_eq!(enc(&0u64), [0x00]); // ZeroOp
        assert_eq!(enc(&1u8), [0x01]); // OneOp
        assert_eq!(enc(&5u8), [0x0a, 0x05]); // BytePrefix
        assert_eq!(enc(&0x3f8u16), [0x0b, 0xf8, 0x03]); // WordPrefix
        assert_eq!(enc(&0x1234_5678u32), [0x0c, 0x78, 0x56, 0x34, 0x12]); // DWordPrefix
        assert_eq!(enc(&0x1_0000_0000u64), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]); // QWordPrefix
        assert_eq!(enc(&u64::MAX), [0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn strings_are_nul_terminated_ascii() {
        assert_eq!(enc(&"COM1"), [0x0d, b'C', b'O', b'M', b'1', 0x00]);
        assert_eq!(enc(&""), [0x0d, 0x00]);
        assert_eq!(to_bytes(&"caf\u{e9}"), Err(Error::BadString));
        assert_eq!(to_bytes(&"a\0b"), Err(Error::BadString));
    }

    #[test]
    fn eisa_ids_compress_as_iasl_does() {
        // iasl: EisaId ("PNP0501") == 0x0105D041, EisaId ("PNP0303") == 0x0303D041.
        assert_eq!(EisaId("PNP0501").value(), Ok(0x0105_d041));
        assert_eq!(enc(&EisaId("PNP0501")), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
        assert_eq!(enc(&EisaId("PNP0303")), [0x0c, 0x41, 0xd0, 0x03, 0x03]);
        assert_eq!(EisaId("PNP0B00").value(), Ok(0x000b_d041));
        for bad in ["PNP050", "PNP05011", "pnp0501", "PNP05G1", "P1P0501"] {
            assert_eq!(to_bytes(&EisaId(bad)), Err(Error::BadEisaId), "{bad}");
        }
    }

    #[test]
    fn name_paths() {
        assert_eq!(enc(&Path("_S5")), *b"_S5_");
        assert_eq!(enc(&Path("COM1")), *b"COM1");
        assert_eq!(enc(&Path("_SB.COM1")), *b"\x2e_SB_COM1");
        assert_eq!(enc(&Path("\\_SB.PCI0.ISA")), *b"\\\x2f\x03_SB_PCI0ISA_");
        assert_eq!(enc(&Path("^^FOO")), *b"^^FOO_");
        assert_eq!(enc(&Path("\\")), [b'\\', 0x00]);
        assert_eq!(enc(&Path("\\_SB_")), *b"\\_SB_");
        for bad in ["", "^", "COM12", "1COM", "_SB..X", "com1", "\\^A", "A.", "A-B"] {
            assert_eq!(to_bytes(&Path(bad)), Err(Error::BadName), "{bad:?}");
        }
    }

    #[test]
    fn pkg_length_boundaries() {
        // §20.2.4: one byte while the total (body + itself) fits in six bits.
        let mut out = Vec::new();
        pkg_length(62, &mut out).unwrap();
        assert_eq!(out, [63]);
        out.clear();
        pkg_length(63, &mut out).unwrap();
        // Total 65 = 0x41: two bytes, lead 0x40 | low nibble 1, then 0x04.
        assert_eq!(out, [0x41, 0x04]);
        out.clear();
        pkg_length(0xfff - 2, &mut out).unwrap(); // total 0xfff: still two bytes
        assert_eq!(out, [0x4f, 0xff]);
        out.clear();
        pkg_length(0xfff - 1, &mut out).unwrap(); // total 0x1001 needs three
        assert_eq!(out, [0x81, 0x00, 0x01]);
        out.clear();
        pkg_length(PKG_LENGTH_MAX - 4, &mut out).unwrap();
        assert_eq!(out, [0xcf, 0xff, 0xff, 0xff]);
        assert_eq!(pkg_length(PKG_LENGTH_MAX - 3, &mut Vec::new()), Err(Error::TooLong));
    }

    #[test]
    fn name_of_a_sleep_package() {
        // Name (_S5, Package (0x02) { 0x05, 0x05 })
        let s5 = enc(&Name::new("_S5", &Package(&[&5u8, &5u8])));
        assert_eq!(s5, [0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a, 0x05, 0x0a, 0x05]);
    }

    #[test]
    fn device_scope_and_method() {
        // Device (DEV0) { Name (_UID, Zero) }
        let dev = enc(&Device::new("DEV0", &[&Name::new("_UID", &0u8)]));
        assert_eq!(dev, [0x5b, 0x82, 0x0b, b'D', b'E', b'V', b'0', 0x08, b'_', b'U', b'I', b'D', 0x00]);
        // Scope (\_SB) { }
        assert_eq!(enc(&Scope::new("\\_SB", &[])), [0x10, 0x06, b'\\', b'_', b'S', b'B', b'_']);
        // Method (_STA, 0, NotSerialized) { Return (0x0F) }
        let sta = enc(&Method::new("_STA", 0, false, &[&Return(&0x0fu8)]));
        assert_eq!(sta, [0x14, 0x09, b'_', b'S', b'T', b'A', 0x00, 0xa4, 0x0a, 0x0f]);
        // Method (_EVT, 1, NotSerialized) { Notify (\_SB.PWRB, 0x80) }
        let evt = enc(&Method::new("_EVT", 1, false, &[&Notify::new("\\_SB.PWRB", 0x80)]));
        #[rustfmt::skip]
        assert_eq!(evt, [
            0x14, 0x13, b'_', b'E', b'V', b'T', 0x01,
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80,
        ]);
        // Serialized, 2 arguments: flags 0x0A.
        let m = Method::new("MTHD", 2, true, &[]);
        assert_eq!(enc(&m), [0x14, 0x06, b'M', b'T', b'H', b'D', 0x0a]);
        assert_eq!(to_bytes(&Method::new("MTHD", 8, false, &[])), Err(Error::BadMethodFlags));
    }

    #[test]
    fn resource_template_of_a_serial_port() {
        // ResourceTemplate () { IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
        //                       IRQ (Edge, ActiveHigh, Exclusive) {4} }
        let crs = enc(&ResourceTemplate(&[&Io::fixed(0x3f8, 8), &Irq { irq: 4, trigger: Trigger::EDGE_HIGH }]));
        #[rustfmt::skip]
        let want = [
            0x11, 0x11, 0x0a, 0x0e,                         // Buffer, PkgLength 17, size 14
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, // IO
            0x23, 0x10, 0x00, 0x01,                         // IRQ mask 1 << 4, edge
            0x79, 0x00,                                     // End Tag
        ];
        assert_eq!(crs, want);
    }

    #[test]
    fn irq_descriptor_flags_and_limits() {
        let level_low_shared = Trigger { edge: false, active_low: true, shared: true };
        let mut out = Vec::new();
        Irq { irq: 15, trigger: level_low_shared }.encode(&mut out).unwrap();
        assert_eq!(out, [0x23, 0x00, 0x80, 0x18]);
        assert_eq!(Irq { irq: 16, trigger: Trigger::EDGE_HIGH }.encode(&mut Vec::new()), Err(Error::BadIrq));
    }

    #[test]
    fn extended_interrupt_and_memory() {
        let mut out = Vec::new();
        // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 0x21 }
        Interrupt { gsi: 0x21, trigger: Trigger::EDGE_HIGH }.encode(&mut out).unwrap();
        assert_eq!(out, [0x89, 0x06, 0x00, 0x03, 0x01, 0x21, 0x00, 0x00, 0x00]);
        out.clear();
        // Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
        Memory32Fixed { writable: true, base: 0xd000_0000, length: 0x200 }.encode(&mut out).unwrap();
        assert_eq!(out, [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00]);
        let wraps = Memory32Fixed { writable: true, base: 0xffff_f000, length: 0x2000 };
        assert_eq!(wraps.encode(&mut Vec::new()), Err(Error::BadResource));
        let inverted = Io { min: 0x60, max: 0x50, alignment: 1, length: 1 };
        assert_eq!(inverted.encode(&mut Vec::new()), Err(Error::BadResource));
    }

    #[test]
    fn long_bodies_use_longer_pkg_lengths() {
        // A package of 40 word constants: body 1 + 40 * 3 = 121 bytes, total 123 = 0x7B.
        let items: Vec<u16> = (0..40).map(|i| 0x100 + i).collect();
        let refs: Vec<&dyn Aml> = items.iter().map(|i| i as &dyn Aml).collect();
        let bytes = enc(&Package(&refs));
        assert_eq!(bytes[..4], [0x12, 0x4b, 0x07, 40]);
        assert_eq!(bytes.len(), 1 + 2 + 121);
        let too_many: Vec<&dyn Aml> = (0..256).map(|_| &0u8 as &dyn Aml).collect();
        assert_eq!(to_bytes(&Package(&too_many)), Err(Error::TooManyElements));
    }
}
