//! An emulated 8042 keyboard controller with a PS/2 keyboard behind it, so that
//! the hypervisor can ask a guest to shut down the way a user would — Ctrl-Alt-Del
//! (Firecracker does the same) — and so that the guest's "reset the CPU through
//! the keyboard controller" reaches the hypervisor.
//!
//! Register and command behaviour follows the IBM PS/2 Hardware Interface
//! Technical Reference ("Keyboard/Auxiliary Device Controller" and "Keyboard"
//! chapters; cited as "PS/2 TR") as Linux's `i8042` and `atkbd` drivers use it.
//! The tests at the bottom replay their probes.
//!
//! What the model is, and leaves out:
//! - Ports 0x60 (data) and 0x64 (status on read, command on write). Commands
//!   and keyboard bytes take no time: IBF never shows, replies are there at once.
//! - No auxiliary (mouse) port. The platform's DSDT should describe the
//!   controller as a `PNP0303` keyboard only (IO 0x60, IO 0x64, IRQ 1, as
//!   Firecracker's does): Linux then says "PS/2 appears to have AUX port
//!   disabled", sets `i8042.noaux` itself and never probes it, so the guest
//!   needs no `i8042.*` option. Without that PNP device Linux probes the ports
//!   only if the FADT's IA-PC boot flags announce an 8042 (or with
//!   `i8042.nopnp`); its AUX probe then finds nothing here: the AUX loopback
//!   (0xD3) is not answered (a 0.5 s timeout in the guest) and the AUX
//!   interface test (0xA9) reports the clock line stuck low.
//! - The keyboard: it answers the commands of a standard MF2 keyboard (ACK,
//!   reset with its self-test result, ID, scan-code set, LEDs, typematic,
//!   enable/disable, echo, resend) and types only what the hypervisor queues
//!   ([`I8042::ctrl_alt_del`]). Its codes are in its current scan-code set
//!   (2 after reset); with the controller's translation on (CTR bit 6, as
//!   Linux keeps it) they reach the guest as set 1, as on a PC.
//! - No password, no input port, no test inputs, no A20 effect: writes to the
//!   output port are kept and read back; only its reset line acts.
//!
//! How the hypervisor drives it:
//! - Forward guest accesses to 0x60 and 0x64 (`PortDevice`); after each, and
//!   after [`I8042::ctrl_alt_del`]: forward [`I8042::irq_level`] to ISA IRQ 1,
//!   then call [`I8042::service`] and forward [`I8042::irq_level`] again. The
//!   line follows "output buffer full" and Linux reads one byte per interrupt,
//!   so the next byte must arrive as a new edge: `service` loads it only after
//!   the line was seen low.
//! - After each write, [`I8042::take_event`]: [`Event::CpuReset`] when the guest
//!   pulsed the reset line (0xFE on 0x64, as Linux's `reboot=k` does, or any
//!   pulse or output-port write that drives bit 0 low).

use super::PortDevice;

/// The data port: keyboard bytes and command replies in, keyboard commands and
/// command parameters out.
pub const DATA_PORT: u16 = 0x60;
/// Status register on read, controller command on write.
pub const COMMAND_PORT: u16 = 0x64;
/// ISA IRQ of the keyboard.
pub const KBD_IRQ: u8 = 1;

/// Status register (PS/2 TR, "Status Register").
mod status {
    /// Output buffer full: a byte waits at 0x60.
    pub const OBF: u8 = 1 << 0;
    // Bit 1, input buffer full, never shows: the model takes every byte at once.
    /// System flag: mirrors the CTR's, set once the self-test passed.
    pub const SYS: u8 = 1 << 2;
    /// The last byte written went to 0x64 (a command) rather than 0x60.
    pub const CMD: u8 = 1 << 3;
    /// Keyboard not inhibited by the keylock.
    pub const UNLOCKED: u8 = 1 << 4;
    // Bit 5 (the byte is from the AUX device), 6 (timeout) and 7 (parity
    // error) never show: no AUX device, and the wire is perfect.
}

/// Controller command byte, internal RAM byte 0 (PS/2 TR, "Command Byte").
mod ctr {
    /// Raise IRQ 1 while a keyboard byte is in the output buffer.
    pub const KBDINT: u8 = 1 << 0;
    pub const SYS: u8 = 1 << 2;
    /// Keyboard interface disabled: its bytes wait in the keyboard.
    pub const KBDDIS: u8 = 1 << 4;
    /// AUX interface disabled.
    pub const AUXDIS: u8 = 1 << 5;
    /// Translate the keyboard's set-2 codes to set 1.
    pub const XLATE: u8 = 1 << 6;
    /// What firmware leaves for the OS on a PC without a mouse: keyboard
    /// interrupt on, POST passed, AUX off, translation on.
    pub const AT_BOOT: u8 = KBDINT | SYS | AUXDIS | XLATE;
}

/// Controller commands written to 0x64 (PS/2 TR, "Commands (I/O Address Hex 64)").
mod cmd {
    /// 0x20..=0x3F: read internal RAM byte (0x20 is the command byte).
    pub const READ_RAM: u8 = 0x20;
    /// 0x60..=0x7F: write internal RAM byte; the value follows at 0x60.
    pub const WRITE_RAM: u8 = 0x60;
    pub const RAM_LAST: u8 = 0x1f;
    pub const AUX_DISABLE: u8 = 0xa7;
    pub const AUX_ENABLE: u8 = 0xa8;
    pub const AUX_TEST: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const KBD_TEST: u8 = 0xab;
    pub const KBD_DISABLE: u8 = 0xad;
    pub const KBD_ENABLE: u8 = 0xae;
    pub const READ_OUTPUT: u8 = 0xd0;
    pub const WRITE_OUTPUT: u8 = 0xd1;
    /// The next byte at 0x60 comes back as if the keyboard sent it.
    pub const WRITE_KBD_BUFFER: u8 = 0xd2;
    /// The next byte at 0x60 comes back as if the AUX device sent it.
    pub const WRITE_AUX_BUFFER: u8 = 0xd3;
    /// The next byte at 0x60 goes to the AUX device.
    pub const WRITE_AUX: u8 = 0xd4;
    /// 0xF0..=0xFF: pulse the output-port lines whose bits (3:0) are 0 for 6 µs.
    pub const PULSE: u8 = 0xf0;
}

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// AUX interface test: "clock line stuck low", what an empty AUX socket gives.
const INTERFACE_CLOCK_LOW: u8 = 0x01;
/// Output port bit 0: the CPU reset line, active low.
const OUTPUT_RESET: u8 = 1 << 0;
/// Output port at power-on: reset and A20 lines high, keyboard clock and data
/// idle high (QEMU's reset value).
const OUTPUT_AT_RESET: u8 = 0xcf;

/// Keyboard commands and replies (PS/2 TR, "Keyboard", "Commands from the System").
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const SCANCODE_SET: u8 = 0xf0;
    pub const GET_ID: u8 = 0xf2;
    pub const SET_TYPEMATIC: u8 = 0xf3;
    pub const ENABLE: u8 = 0xf4;
    pub const DISABLE: u8 = 0xf5;
    pub const DEFAULTS: u8 = 0xf6;
    /// 0xF7..=0xFD: set-3 key types, acknowledged and otherwise ignored.
    pub const SET3_FIRST: u8 = 0xf7;
    pub const SET3_LAST: u8 = 0xfd;
    pub const RESEND: u8 = 0xfe;
    pub const RESET: u8 = 0xff;
    pub const ACK: u8 = 0xfa;
    /// Self-test passed (after reset).
    pub const BAT_OK: u8 = 0xaa;
    /// An MF2 keyboard's ID.
    pub const ID: [u8; 2] = [0xab, 0x83];
    /// In sets 2 and 3, a break (key release) is this prefix and the make code.
    pub const BREAK: u8 = 0xf0;
    /// Extended-key prefix.
    pub const EXT: u8 = 0xe0;
}

/// Bytes the keyboard holds for the controller: a real one buffers 16 keys.
const KBD_BUFFER: usize = 16;
/// Replies the controller holds while the output buffer is busy.
const CTL_BUFFER: usize = 4;

/// The 8042's translation of set-2 codes 0x00..=0x7F into set 1 (PS/2 TR,
/// "Scan Code Translation"); bytes above pass unchanged but the two set-2 codes
/// there (0x83 F7, 0x84 SysRq).
#[rustfmt::skip]
const XLATE_TABLE: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

fn translate(code: u8) -> u8 {
    match code {
        0x00..=0x7f => XLATE_TABLE[usize::from(code)],
        0x83 => 0x41,
        0x84 => 0x54,
        _ => code,
    }
}

/// The keys the hypervisor types, as make codes in scan-code sets 1, 2 and 3
/// (PS/2 TR, "Scan Code Tables"); an `EXT` first byte is the extended prefix.
#[derive(Clone, Copy, Debug)]
enum Key {
    LeftCtrl,
    LeftAlt,
    Delete,
}

impl Key {
    fn make(self, set: u8) -> &'static [u8] {
        match (self, set) {
            (Key::LeftCtrl, 1) => &[0x1d],
            (Key::LeftAlt, 1) => &[0x38],
            (Key::Delete, 1) => &[kbd::EXT, 0x53],
            (Key::LeftCtrl, 3) => &[0x11],
            (Key::LeftAlt, 3) => &[0x19],
            (Key::Delete, 3) => &[0x64],
            (Key::LeftCtrl, _) => &[0x14],
            (Key::LeftAlt, _) => &[0x11],
            (Key::Delete, _) => &[kbd::EXT, 0x71],
        }
    }

    /// Writes the break code into `out`, returning its length. Set 1 sets bit 7
    /// of the code; sets 2 and 3 put `BREAK` before it (after any `EXT`).
    fn brk(self, set: u8, out: &mut [u8; 3]) -> usize {
        let make = self.make(set);
        let (ext, code) = match make {
            [kbd::EXT, code] => (true, *code),
            [code, ..] => (false, *code),
            [] => (false, 0),
        };
        let mut n = 0;
        if ext {
            out[n] = kbd::EXT;
            n += 1;
        }
        if set == 1 {
            out[n] = code | 0x80;
        } else {
            out[n] = kbd::BREAK;
            n += 1;
            out[n] = code;
        }
        n + 1
    }
}

/// What the guest asked of the machine through the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The reset line was pulsed: reset the domain (what `on_reboot` says).
    CpuReset,
}

/// A fixed-capacity byte queue.
#[derive(Clone, Debug)]
struct Queue<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Queue<N> {
    const fn new() -> Self {
        Self { buf: [0; N], head: 0, len: 0 }
    }
    fn push(&mut self, byte: u8) -> bool {
        if self.len == N {
            return false;
        }
        self.buf[(self.head + self.len) % N] = byte;
        self.len += 1;
        true
    }
    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.buf[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(byte)
    }
    fn room(&self) -> usize {
        N - self.len
    }
    /// Its length, then its bytes oldest first, packed low byte first (N ≤ 7).
    fn save(&self) -> u64 {
        (0..self.len).fold(self.len as u64, |w, i| w | u64::from(self.buf[(self.head + i) % N]) << (8 * (i + 1)))
    }
    /// What `save` gave, if it fits.
    fn restore(word: u64) -> Option<Self> {
        let len = (word & 0xff) as usize;
        if len > N || N > 7 || word >> (8 * (len + 1)) != 0 {
            return None;
        }
        let mut q = Self::new();
        for i in 0..len {
            q.push((word >> (8 * (i + 1))) as u8);
        }
        Some(q)
    }
    /// Its bytes oldest first, into `out` (at least N long); its length.
    fn save_bytes(&self, out: &mut [u8]) -> usize {
        for (i, d) in out.iter_mut().take(self.len).enumerate() {
            *d = self.buf[(self.head + i) % N];
        }
        self.len
    }
    fn clear(&mut self) {
        self.len = 0;
    }
}

/// The PS/2 keyboard on the controller's keyboard port.
#[derive(Clone, Debug)]
struct Keyboard {
    /// Replies to the system's commands; they go out before any key.
    replies: Queue<4>,
    /// Key codes not yet sent.
    keys: Queue<KBD_BUFFER>,
    /// A command waiting for its parameter byte.
    awaiting: Option<u8>,
    /// Scanning enabled (after reset, and after 0xF4).
    scanning: bool,
    /// Scan-code set, 1 to 3.
    set: u8,
    leds: u8,
    /// The last byte sent, for the resend command.
    last_sent: u8,
}

impl Keyboard {
    const fn new() -> Self {
        Self {
            replies: Queue::new(),
            keys: Queue::new(),
            awaiting: None,
            scanning: true,
            set: 2,
            leds: 0,
            last_sent: kbd::BAT_OK,
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // Never more than three replies are outstanding: each command is
            // answered before the next byte is taken (the controller's
            // interface carries one byte at a time).
            self.replies.push(b);
        }
    }

    /// The next byte for the controller.
    fn send(&mut self) -> Option<u8> {
        let byte = self.replies.pop().or_else(|| self.keys.pop())?;
        self.last_sent = byte;
        Some(byte)
    }

    /// A byte from the system.
    fn receive(&mut self, byte: u8) {
        // Any byte from the system cancels what has not been sent yet of the
        // previous reply, so a retried command is answered afresh.
        self.replies.clear();
        if let Some(command) = self.awaiting.take() {
            match command {
                kbd::SET_LEDS => {
                    self.leds = byte & 0x07;
                    self.reply(&[kbd::ACK]);
                }
                kbd::SCANCODE_SET => match byte {
                    0 => self.reply(&[kbd::ACK, self.set]),
                    1..=3 => {
                        self.set = byte;
                        self.keys.clear();
                        self.reply(&[kbd::ACK]);
                    }
                    _ => self.reply(&[kbd::RESEND]),
                },
                // The typematic rate/delay shapes nothing here.
                _ => self.reply(&[kbd::ACK]),
            }
            return;
        }
        match byte {
            kbd::SET_LEDS | kbd::SCANCODE_SET | kbd::SET_TYPEMATIC => {
                self.awaiting = Some(byte);
                self.reply(&[kbd::ACK]);
            }
            kbd::ECHO => self.reply(&[kbd::ECHO]),
            kbd::GET_ID => self.reply(&[kbd::ACK, kbd::ID[0], kbd::ID[1]]),
            kbd::ENABLE => {
                self.keys.clear();
                self.scanning = true;
                self.reply(&[kbd::ACK]);
            }
            // Disable: defaults, and no scanning until enabled.
            kbd::DISABLE => {
                self.keys.clear();
                self.scanning = false;
                self.reply(&[kbd::ACK]);
            }
            kbd::DEFAULTS => {
                self.keys.clear();
                self.reply(&[kbd::ACK]);
            }
            kbd::SET3_FIRST..=kbd::SET3_LAST => self.reply(&[kbd::ACK]),
            kbd::RESEND => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            kbd::RESET => {
                *self = Self::new();
                self.reply(&[kbd::ACK, kbd::BAT_OK]);
            }
            // Not a command: ask for it again, as a keyboard does.
            _ => self.reply(&[kbd::RESEND]),
        }
    }
}

/// The controller and its keyboard. See the module documentation.
#[derive(Clone, Debug)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte (CTR).
    ram: [u8; 32],
    output_port: u8,
    /// The output buffer: what 0x60 returns, if full.
    obf: Option<u8>,
    /// What 0x60 returns when the output buffer is empty: the last byte.
    last_read: u8,
    /// Controller replies waiting for the output buffer.
    replies: Queue<CTL_BUFFER>,
    /// A command waiting for its parameter at 0x60.
    awaiting: Option<u8>,
    /// The last write went to 0x64.
    last_was_command: bool,
    /// Translation saw a break prefix; the next code gets bit 7.
    xlate_break: bool,
    keyboard: Keyboard,
    event: Option<Event>,
}

/// The controller's state as `oxen_abi::platform_state`'s `I8042` words.
pub type I8042State = [u64; oxen_abi::platform_state::I8042_FIELDS.len()];

impl I8042 {
    /// Its state, for save and migration. A reset it raised and nobody took
    /// is not part of it (the vCPU takes events before it stops).
    pub fn save(&self) -> I8042State {
        use oxen_abi::platform_state::pack;
        let mut w = [0u64; oxen_abi::platform_state::I8042_FIELDS.len()];
        for (d, chunk) in w[..4].iter_mut().zip(self.ram.chunks_exact(8)) {
            *d = pack(chunk);
        }
        w[4] = pack(&[
            self.output_port,
            self.obf.is_some().into(),
            self.obf.unwrap_or(0),
            self.last_read,
            self.awaiting.is_some().into(),
            self.awaiting.unwrap_or(0),
            self.last_was_command.into(),
            self.xlate_break.into(),
        ]);
        w[5] = self.replies.save();
        let k = &self.keyboard;
        w[6] = pack(&[k.awaiting.is_some().into(), k.awaiting.unwrap_or(0), k.scanning.into(), k.set, k.leds, k.last_sent]);
        w[7] = k.replies.save();
        let mut keys = [0u8; KBD_BUFFER];
        w[8] = k.keys.save_bytes(&mut keys) as u64;
        w[9] = pack(&keys[..8]);
        w[10] = pack(&keys[8..]);
        w
    }

    /// Takes a state `save` gave; refuses (and keeps its own) one it could
    /// not have been in.
    pub fn restore(&mut self, w: &I8042State) -> Result<(), &'static str> {
        use oxen_abi::platform_state::byte;
        let flag = |word: u64, i: usize| match byte(word, i) {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        let opt = |word: u64, i: usize| flag(word, i).map(|full| full.then_some(byte(word, i + 1)));
        let (Some(obf), Some(awaiting), Some(last_was_command), Some(xlate_break)) =
            (opt(w[4], 1), opt(w[4], 4), flag(w[4], 6), flag(w[4], 7))
        else {
            return Err("i8042: a controller flag that is not 0 or 1");
        };
        let (Some(kbd_awaiting), Some(scanning), 1..=3, 0, 0) =
            (opt(w[6], 0), flag(w[6], 2), byte(w[6], 3), w[6] >> 48, w[8] & !0xff)
        else {
            return Err("i8042: a keyboard flag or scan-code set out of range");
        };
        let (Some(replies), Some(kbd_replies), true) =
            (Queue::<CTL_BUFFER>::restore(w[5]), Queue::<4>::restore(w[7]), w[8] <= KBD_BUFFER as u64)
        else {
            return Err("i8042: a queue longer than it holds");
        };
        let mut keys = Queue::<KBD_BUFFER>::new();
        let key_bytes = [w[9].to_le_bytes(), w[10].to_le_bytes()];
        for &b in key_bytes.iter().flatten().take(w[8] as usize) {
            keys.push(b);
        }
        for (chunk, word) in self.ram.chunks_exact_mut(8).zip(&w[..4]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        self.output_port = byte(w[4], 0);
        self.obf = obf;
        self.last_read = byte(w[4], 3);
        self.replies = replies;
        self.awaiting = awaiting;
        self.last_was_command = last_was_command;
        self.xlate_break = xlate_break;
        self.keyboard = Keyboard {
            replies: kbd_replies,
            keys,
            awaiting: kbd_awaiting,
            scanning,
            set: byte(w[6], 3),
            leds: byte(w[6], 4),
            last_sent: byte(w[6], 5),
        };
        self.event = None;
        Ok(())
    }
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as firmware hands it to the OS (see `ctr::AT_BOOT`), the
    /// keyboard reset and scanning in set 2.
    pub const fn new() -> Self {
        let mut ram = [0; 32];
        ram[0] = ctr::AT_BOOT;
        Self {
            ram,
            output_port: OUTPUT_AT_RESET,
            obf: None,
            last_read: 0,
            replies: Queue::new(),
            awaiting: None,
            last_was_command: false,
            xlate_break: false,
            keyboard: Keyboard::new(),
            event: None,
        }
    }

    /// Whether `port` is one of the controller's two.
    pub fn claims(port: u16) -> bool {
        port == DATA_PORT || port == COMMAND_PORT
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// The level of IRQ 1: a byte waits and the guest enabled the keyboard
    /// interrupt (every byte here is on the keyboard channel).
    pub fn irq_level(&self) -> bool {
        self.obf.is_some() && self.ctr() & ctr::KBDINT != 0
    }

    /// Moves the next byte — a controller reply first, else one from the
    /// keyboard if its interface is enabled — into an empty output buffer.
    /// Call it after forwarding a low [`Self::irq_level`] (see the module
    /// documentation); status reads call it themselves, so polling guests
    /// need nothing more.
    pub fn service(&mut self) {
        if self.obf.is_some() {
            return;
        }
        if let Some(byte) = self.replies.pop() {
            self.obf = Some(byte);
            return;
        }
        if self.ctr() & ctr::KBDDIS != 0 {
            return;
        }
        while let Some(code) = self.keyboard.send() {
            if self.ctr() & ctr::XLATE == 0 {
                self.obf = Some(code);
                return;
            }
            // Translation folds a set-2 break prefix into bit 7 of the next code.
            if code == kbd::BREAK {
                self.xlate_break = true;
                continue;
            }
            let high = if core::mem::take(&mut self.xlate_break) { 0x80 } else { 0 };
            self.obf = Some(translate(code) | high);
            return;
        }
    }

    /// Whether the guest's keyboard driver is listening: interface and
    /// interrupt enabled, keyboard scanning.
    pub fn listening(&self) -> bool {
        self.ctr() & (ctr::KBDINT | ctr::KBDDIS) == ctr::KBDINT && self.keyboard.scanning
    }

    /// Types Ctrl-Alt-Del: presses Ctrl, Alt and Delete, then releases them,
    /// in the keyboard's scan-code set. Returns false, typing nothing, if the
    /// guest is not [listening](Self::listening) or the keyboard's buffer
    /// lacks room; the caller then falls back (timeout, destroy).
    pub fn ctrl_alt_del(&mut self) -> bool {
        const KEYS: [Key; 3] = [Key::LeftCtrl, Key::LeftAlt, Key::Delete];
        let set = self.keyboard.set;
        let mut codes = [0u8; 16];
        let mut n = 0;
        for key in KEYS {
            for &b in key.make(set) {
                codes[n] = b;
                n += 1;
            }
        }
        for key in KEYS.into_iter().rev() {
            let mut brk = [0; 3];
            let len = key.brk(set, &mut brk);
            codes[n..n + len].copy_from_slice(&brk[..len]);
            n += len;
        }
        if !self.listening() || self.keyboard.keys.room() < n {
            return false;
        }
        for &b in &codes[..n] {
            self.keyboard.keys.push(b);
        }
        self.service();
        true
    }

    /// What the guest asked for since the last call.
    pub fn take_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    fn status(&self) -> u8 {
        let mut s = status::UNLOCKED;
        if self.obf.is_some() {
            s |= status::OBF;
        }
        if self.ctr() & ctr::SYS != 0 {
            s |= status::SYS;
        }
        if self.last_was_command {
            s |= status::CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        // The next byte waits for `service`, so the IRQ line can fall first.
        if let Some(byte) = self.obf.take() {
            self.last_read = byte;
        }
        self.last_read
    }

    fn controller_reply(&mut self, byte: u8) {
        // At most two replies are ever outstanding (one command's, and the
        // byte of a 0xD2 behind it); the queue holds four.
        self.replies.push(byte);
        self.service();
    }

    fn pulse(&mut self, lines: u8) {
        // A line whose bit is 0 is pulsed low; bit 0 is the reset line.
        if lines & OUTPUT_RESET == 0 {
            self.event = Some(Event::CpuReset);
        }
    }

    fn write_command(&mut self, command: u8) {
        self.last_was_command = true;
        // A new command abandons one still waiting for its parameter.
        self.awaiting = None;
        match command {
            c if c & !cmd::RAM_LAST == cmd::READ_RAM => self.controller_reply(self.ram[usize::from(c & cmd::RAM_LAST)]),
            c if c & !cmd::RAM_LAST == cmd::WRITE_RAM => self.awaiting = Some(c),
            cmd::AUX_DISABLE => self.ram[0] |= ctr::AUXDIS,
            cmd::AUX_ENABLE => self.ram[0] &= !ctr::AUXDIS,
            cmd::AUX_TEST => self.controller_reply(INTERFACE_CLOCK_LOW),
            cmd::SELF_TEST => {
                self.ram[0] |= ctr::SYS;
                self.controller_reply(SELF_TEST_OK);
            }
            cmd::KBD_TEST => self.controller_reply(INTERFACE_OK),
            cmd::KBD_DISABLE => self.ram[0] |= ctr::KBDDIS,
            cmd::KBD_ENABLE => {
                self.ram[0] &= !ctr::KBDDIS;
                self.service();
            }
            cmd::READ_OUTPUT => self.controller_reply(self.output_port),
            cmd::WRITE_OUTPUT | cmd::WRITE_KBD_BUFFER | cmd::WRITE_AUX_BUFFER | cmd::WRITE_AUX => {
                self.awaiting = Some(command)
            }
            c if c >= cmd::PULSE => self.pulse(c & 0x0f),
            // Anything else (password, input port, test inputs, vendor
            // commands) does nothing, as on an 8042 that lacks it.
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        self.last_was_command = false;
        match self.awaiting.take() {
            Some(c) if c & !cmd::RAM_LAST == cmd::WRITE_RAM => {
                self.ram[usize::from(c & cmd::RAM_LAST)] = byte;
                // Enabling the interface lets waiting keyboard bytes through.
                self.service();
            }
            Some(cmd::WRITE_OUTPUT) => {
                self.output_port = byte;
                if byte & OUTPUT_RESET == 0 {
                    self.event = Some(Event::CpuReset);
                }
            }
            Some(cmd::WRITE_KBD_BUFFER) => self.controller_reply(byte),
            // No AUX port: its loopback and its device take the byte and
            // answer nothing.
            Some(_) => {}
            None => {
                // A byte for the keyboard. Sending it re-enables the keyboard
                // interface, as QEMU does and PCs do.
                self.ram[0] &= !ctr::KBDDIS;
                self.keyboard.receive(byte);
                self.service();
            }
        }
    }

    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => {
                self.service();
                self.status()
            }
            _ => u8::MAX,
        }
    }

    fn write_port(&mut self, port: u16, value: u8) {
        match port {
            DATA_PORT => self.write_data(value),
            COMMAND_PORT => self.write_command(value),
            _ => {}
        }
    }
}

impl PortDevice for I8042 {
    /// Byte registers: wider accesses split into bytes at successive ports, as
    /// the ISA bus does; ports not the controller's read as all ones. Sizes
    /// other than 1, 2 or 4 read as all ones with no effect.
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        super::read_bytewise(port, size, |p| self.read_port(p))
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        super::write_bytewise(port, size, value, |p, b| self.write_port(p, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux's names (drivers/input/serio/i8042.h, atkbd.c), so the replayed
    // sequences read like the drivers.
    const I8042_STR_OBF: u8 = 0x01;
    const I8042_STR_IBF: u8 = 0x02;
    const I8042_STR_KEYLOCK: u8 = 0x10;
    const I8042_STR_AUXDATA: u8 = 0x20;
    const I8042_CTR_KBDINT: u8 = 0x01;
    const I8042_CTR_AUXINT: u8 = 0x02;
    const I8042_CTR_KBDDIS: u8 = 0x10;
    const I8042_CTR_AUXDIS: u8 = 0x20;
    const I8042_CTR_XLATE: u8 = 0x40;
    const I8042_CMD_CTL_RCTR: u16 = 0x0120;
    const I8042_CMD_CTL_WCTR: u16 = 0x1060;
    const I8042_CMD_CTL_TEST: u16 = 0x01aa;
    const I8042_CMD_KBD_TEST: u16 = 0x01ab;
    const I8042_CMD_AUX_LOOP: u16 = 0x11d3;
    const I8042_CMD_AUX_TEST: u16 = 0x01a9;
    const I8042_CMD_AUX_DISABLE: u16 = 0x00a7;
    const I8042_CMD_AUX_ENABLE: u16 = 0x00a8;
    /// udelay(50) polls before Linux gives up waiting: 0.5 s.
    const I8042_CTL_TIMEOUT: u32 = 10000;
    const I8042_BUFFER_SIZE: u32 = 16;
    const ATKBD_CMD_SETLEDS: u16 = 0x10ed;
    const ATKBD_CMD_GSCANSET: u16 = 0x11f0;
    const ATKBD_CMD_SSCANSET: u16 = 0x10f0;
    const ATKBD_CMD_GETID: u16 = 0x02f2;
    const ATKBD_CMD_SETREP: u16 = 0x10f3;
    const ATKBD_CMD_ENABLE: u16 = 0x00f4;
    const ATKBD_CMD_RESET_DIS: u16 = 0x00f5;
    const ATKBD_CMD_RESET_BAT: u16 = 0x02ff;

    fn inb(k: &mut I8042, port: u16) -> u8 {
        k.port_read(port, 1) as u8
    }
    fn outb(k: &mut I8042, port: u16, v: u8) {
        k.port_write(port, 1, u32::from(v));
    }

    /// The platform side: ISA IRQ 1 into an edge-triggered IOAPIC pin, wired as
    /// the module documentation says. Counts rising edges.
    #[derive(Default)]
    struct Irq1 {
        level: bool,
        edges: u32,
    }

    impl Irq1 {
        fn forward(&mut self, k: &mut I8042) {
            self.set(k.irq_level());
            k.service();
            self.set(k.irq_level());
        }
        fn set(&mut self, level: bool) {
            if level && !self.level {
                self.edges += 1;
            }
            self.level = level;
        }
    }

    /// `i8042_wait_read`: polls of the status register until OBF, or None at the timeout.
    fn wait_read(k: &mut I8042) -> Option<u32> {
        (0..I8042_CTL_TIMEOUT).find(|_| inb(k, COMMAND_PORT) & I8042_STR_OBF != 0)
    }

    fn wait_write(k: &mut I8042) {
        assert_eq!(inb(k, COMMAND_PORT) & I8042_STR_IBF, 0, "IBF never shows");
    }

    /// `__i8042_command`: Err(polls) on a timeout or AUX error.
    fn i8042_command(k: &mut I8042, param: &mut [u8], command: u16) -> Result<(), &'static str> {
        wait_write(k);
        outb(k, COMMAND_PORT, command as u8);
        for &p in param.iter().take(usize::from((command >> 12) & 0xf)) {
            wait_write(k);
            outb(k, DATA_PORT, p);
        }
        for p in param.iter_mut().take(usize::from((command >> 8) & 0xf)) {
            wait_read(k).ok_or("wait read timeout")?;
            if command == I8042_CMD_AUX_LOOP && inb(k, COMMAND_PORT) & I8042_STR_AUXDATA == 0 {
                return Err("auxerr");
            }
            *p = inb(k, DATA_PORT);
        }
        Ok(())
    }

    /// `i8042_flush`: false if the controller never empties.
    fn i8042_flush(k: &mut I8042) -> bool {
        let mut count = 0;
        while inb(k, COMMAND_PORT) & I8042_STR_OBF != 0 {
            count += 1;
            if count > I8042_BUFFER_SIZE {
                return false;
            }
            inb(k, DATA_PORT);
        }
        true
    }

    /// i8042_init → i8042_probe with `noaux` (what the PNP0303-only DSDT gives):
    /// controller check, self-test (as `i8042.reset` would), CTR setup, keyboard
    /// port enabled. Returns the CTR Linux keeps.
    fn linux_i8042_probe(k: &mut I8042) -> u8 {
        assert!(i8042_flush(k), "No controller found");
        let mut p = [0u8; 1];
        i8042_command(k, &mut p, I8042_CMD_CTL_TEST).unwrap();
        assert_eq!(p[0], 0x55, "self test");
        // i8042_controller_init: two equal CTR reads.
        let mut ctr = [0u8; 2];
        for c in &mut ctr {
            let mut p = [0u8; 1];
            i8042_command(k, &mut p, I8042_CMD_CTL_RCTR).unwrap();
            *c = p[0];
        }
        assert_eq!(ctr[0], ctr[1], "stable CTR read");
        let mut ctr = ctr[0];
        ctr |= I8042_CTR_KBDDIS;
        ctr &= !I8042_CTR_KBDINT;
        assert_ne!(inb(k, COMMAND_PORT) & I8042_STR_KEYLOCK, 0, "Keylock active");
        assert_ne!(ctr & I8042_CTR_XLATE, 0, "firmware left translation on: no i8042.direct");
        i8042_command(k, &mut [ctr], I8042_CMD_CTL_WCTR).unwrap();
        assert!(i8042_flush(k));
        // i8042_setup_kbd → i8042_enable_kbd_port.
        ctr &= !I8042_CTR_KBDDIS;
        ctr |= I8042_CTR_KBDINT;
        i8042_command(k, &mut [ctr], I8042_CMD_CTL_WCTR).unwrap();
        ctr
    }

    /// libps2's `ps2_command` over `i8042_kbd_write`: each byte written to 0x60
    /// is answered by an ACK taken from the interrupt handler; then the reply
    /// bytes. Returns the reply, or None (no ACK, or missing reply bytes).
    fn ps2_command(k: &mut I8042, irq: &mut Irq1, params: &[u8], command: u16) -> Option<Vec<u8>> {
        let send = (command >> 12) & 0xf;
        let receive = usize::from((command >> 8) & 0xf);
        let mut bytes = vec![command as u8];
        bytes.extend_from_slice(&params[..usize::from(send)]);
        for b in bytes {
            wait_write(k);
            outb(k, DATA_PORT, b);
            irq.forward(k);
            // i8042_interrupt, one byte per interrupt.
            if !irq.level || inb(k, COMMAND_PORT) & I8042_STR_OBF == 0 {
                return None;
            }
            let ack = inb(k, DATA_PORT);
            irq.forward(k);
            if ack != kbd::ACK {
                return None;
            }
        }
        let mut reply = Vec::new();
        while reply.len() < receive && irq.level {
            reply.push(inb(k, DATA_PORT));
            irq.forward(k);
        }
        // RESET_BAT may end after one byte (a keyboard sends no ID after AA).
        (reply.len() == receive || (command == ATKBD_CMD_RESET_BAT && reply.len() == 1)).then_some(reply)
    }

    fn linux_keyboard(k: &mut I8042, irq: &mut Irq1) {
        linux_i8042_probe(k);
        irq.forward(k);
        // atkbd_probe with atkbd.reset (not the x86 default, but must work), GETID.
        assert_eq!(ps2_command(k, irq, &[], ATKBD_CMD_RESET_BAT), Some(vec![0xaa]));
        let id = ps2_command(k, irq, &[], ATKBD_CMD_GETID).expect("GETID answered");
        // Through translation: AB 41 ("ab83" untranslated); ps2_is_keyboard_id(0xab).
        assert_eq!(id, [0xab, 0x41]);
        // atkbd_deactivate, atkbd_select_set (translated: set 2, no command),
        // atkbd_reset_state, atkbd_activate.
        assert_eq!(ps2_command(k, irq, &[], ATKBD_CMD_RESET_DIS), Some(vec![]));
        assert_eq!(ps2_command(k, irq, &[0], ATKBD_CMD_SETLEDS), Some(vec![]));
        assert_eq!(ps2_command(k, irq, &[0], ATKBD_CMD_SETREP), Some(vec![]));
        assert_eq!(ps2_command(k, irq, &[], ATKBD_CMD_ENABLE), Some(vec![]));
        assert!(!irq.level);
    }

    /// Reads what the keyboard sends as Linux's interrupt handler does: one
    /// byte per IRQ 1 edge.
    fn drain_by_interrupt(k: &mut I8042, irq: &mut Irq1) -> Vec<u8> {
        let mut got = Vec::new();
        let mut edges = irq.edges;
        while irq.level {
            assert_ne!(inb(k, COMMAND_PORT) & I8042_STR_OBF, 0);
            got.push(inb(k, DATA_PORT));
            irq.forward(k);
            if irq.level {
                assert_eq!(irq.edges, edges + 1, "each further byte is a new edge");
                edges = irq.edges;
            }
        }
        got
    }

    #[test]
    fn linux_probes_controller_and_keyboard_without_options() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        assert!(k.listening());
        assert_eq!(k.take_event(), None);
    }

    #[test]
    fn ctrl_alt_del_reaches_linux_as_set_1_through_translation() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        let before = irq.edges;
        assert!(k.ctrl_alt_del());
        irq.forward(&mut k);
        let got = drain_by_interrupt(&mut k, &mut irq);
        // Ctrl, Alt, E0 Del pressed; E0 Del, Alt, Ctrl released (set 1: bit 7).
        assert_eq!(got, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        assert_eq!(irq.edges - before, 8, "one edge per byte");
    }

    #[test]
    fn saved_state_carries_keys_in_flight_and_the_drivers_setup() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        assert!(k.ctrl_alt_del());
        irq.forward(&mut k);
        // One byte read; the other seven (in the controller and keyboard)
        // move with the state.
        let first = inb(&mut k, DATA_PORT);
        let saved = k.save();
        let mut m = I8042::new();
        assert_eq!(m.restore(&saved), Ok(()));
        assert_eq!(m.save(), saved);
        assert!(m.listening());
        let mut irq2 = Irq1::default();
        irq2.forward(&mut m);
        let mut got = vec![first];
        got.extend(drain_by_interrupt(&mut m, &mut irq2));
        assert_eq!(got, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        // A scan-code set 4, a flag of 2, a queue longer than it holds: refused, kept.
        let before = m.save();
        for (word, value) in [(6, saved[6] & !(0xff << 24) | 4 << 24), (4, saved[4] | 2 << 8), (8, 17), (5, 5)] {
            let mut bad = saved;
            bad[word] = value;
            assert!(m.restore(&bad).is_err(), "word {word} = {value:#x} accepted");
            assert_eq!(m.save(), before);
        }
    }

    #[test]
    fn ctrl_alt_del_untranslated_in_each_set() {
        for (set, want) in [
            (2u8, &[0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14][..]),
            (1, &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d][..]),
            (3, &[0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11][..]),
        ] {
            let mut k = I8042::new();
            let mut irq = Irq1::default();
            // i8042.direct: translation off; atkbd then selects its set.
            let ctr = linux_i8042_probe(&mut k) & !I8042_CTR_XLATE;
            i8042_command(&mut k, &mut [ctr], I8042_CMD_CTL_WCTR).unwrap();
            irq.forward(&mut k);
            assert_eq!(ps2_command(&mut k, &mut irq, &[set], ATKBD_CMD_SSCANSET), Some(vec![]));
            assert_eq!(ps2_command(&mut k, &mut irq, &[0], ATKBD_CMD_GSCANSET), Some(vec![set]));
            assert!(k.ctrl_alt_del());
            irq.forward(&mut k);
            assert_eq!(drain_by_interrupt(&mut k, &mut irq), want, "set {set}");
        }
    }

    #[test]
    fn ctrl_alt_del_waits_for_a_listening_driver() {
        let mut k = I8042::new();
        // Linux's controller init disables the keyboard interface and interrupt.
        outb(&mut k, COMMAND_PORT, 0x60);
        outb(&mut k, DATA_PORT, (ctr::AT_BOOT | I8042_CTR_KBDDIS) & !I8042_CTR_KBDINT);
        assert!(!k.listening());
        assert!(!k.ctrl_alt_del());
        assert_eq!(inb(&mut k, COMMAND_PORT) & I8042_STR_OBF, 0, "nothing typed");
        // atkbd disabled scanning.
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        assert_eq!(ps2_command(&mut k, &mut irq, &[], ATKBD_CMD_RESET_DIS), Some(vec![]));
        assert!(!k.ctrl_alt_del());
        // No room: the keyboard buffers 16 bytes, one Ctrl-Alt-Del is 8 (set 2: 11).
        assert_eq!(ps2_command(&mut k, &mut irq, &[], ATKBD_CMD_ENABLE), Some(vec![]));
        assert!(k.ctrl_alt_del());
        assert!(!k.ctrl_alt_del(), "11 + 11 bytes do not fit in 16");
    }

    #[test]
    fn keyboard_bytes_wait_while_the_interface_is_disabled() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        assert!(k.ctrl_alt_del());
        irq.forward(&mut k);
        assert!(irq.level);
        assert_eq!(inb(&mut k, DATA_PORT), 0x1d);
        // 0xAD disables the interface: the rest waits in the keyboard.
        outb(&mut k, COMMAND_PORT, cmd::KBD_DISABLE);
        irq.forward(&mut k);
        assert!(!irq.level);
        assert_eq!(inb(&mut k, COMMAND_PORT) & I8042_STR_OBF, 0);
        outb(&mut k, COMMAND_PORT, cmd::KBD_ENABLE);
        irq.forward(&mut k);
        assert_eq!(drain_by_interrupt(&mut k, &mut irq), [0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        // With the keyboard interrupt off, bytes are there for polling, no IRQ.
        let ctr = I8042_CTR_XLATE | ctr::SYS | I8042_CTR_AUXDIS;
        i8042_command(&mut k, &mut [ctr], I8042_CMD_CTL_WCTR).unwrap();
        let mut p = [0; 1];
        i8042_command(&mut k, &mut p, I8042_CMD_KBD_TEST).unwrap();
        assert_eq!(p[0], 0);
        irq.forward(&mut k);
        assert!(!irq.level);
    }

    #[test]
    fn controller_commands() {
        let mut k = I8042::new();
        let mut p = [0u8; 1];
        i8042_command(&mut k, &mut p, I8042_CMD_CTL_RCTR).unwrap();
        assert_eq!(p[0], I8042_CTR_KBDINT | 0x04 | I8042_CTR_AUXDIS | I8042_CTR_XLATE);
        assert_ne!(inb(&mut k, COMMAND_PORT) & status::SYS, 0, "POST passed");
        // Internal RAM beyond the CTR reads back.
        outb(&mut k, COMMAND_PORT, 0x65);
        outb(&mut k, DATA_PORT, 0x42);
        assert_eq!(inb(&mut k, COMMAND_PORT) & status::CMD, 0, "last write was data");
        i8042_command(&mut k, &mut p, 0x0125).unwrap();
        assert_eq!(p[0], 0x42);
        assert_ne!(inb(&mut k, COMMAND_PORT) & status::CMD, 0, "last write was a command");
        // Output port read back.
        i8042_command(&mut k, &mut [0xdf], 0x10d1).unwrap();
        i8042_command(&mut k, &mut p, 0x01d0).unwrap();
        assert_eq!(p[0], 0xdf);
        assert_eq!(k.take_event(), None, "bit 0 high: no reset");
        // 0xD2 echoes a byte as keyboard data, untranslated.
        let mut echo = [0x14];
        i8042_command(&mut k, &mut echo, 0x11d2).unwrap();
        assert_eq!(echo[0], 0x14);
        // AUX enable/disable toggle the CTR bit as Linux's i8042_toggle_aux checks.
        i8042_command(&mut k, &mut p, I8042_CMD_AUX_ENABLE).unwrap();
        i8042_command(&mut k, &mut p, I8042_CMD_CTL_RCTR).unwrap();
        assert_eq!(p[0] & I8042_CTR_AUXDIS, 0);
        i8042_command(&mut k, &mut p, I8042_CMD_AUX_DISABLE).unwrap();
        i8042_command(&mut k, &mut p, I8042_CMD_CTL_RCTR).unwrap();
        assert_ne!(p[0] & I8042_CTR_AUXDIS, 0);
        assert_eq!(p[0] & I8042_CTR_AUXINT, 0);
        // An empty data port reads the last byte again.
        assert_eq!(inb(&mut k, DATA_PORT), p[0]);
    }

    #[test]
    fn direct_probe_finds_no_aux_port() {
        // Linux's i8042_check_aux, for a platform without the PNP0303 device.
        let mut k = I8042::new();
        linux_i8042_probe(&mut k);
        assert!(i8042_flush(&mut k));
        let mut p = [0x5a];
        // The loopback is not answered: Linux waits out its 0.5 s timeout...
        assert_eq!(i8042_command(&mut k, &mut p, I8042_CMD_AUX_LOOP), Err("wait read timeout"));
        // ...then the interface test fails at once: no AUX, no mouse probing.
        let mut p = [0u8];
        i8042_command(&mut k, &mut p, I8042_CMD_AUX_TEST).unwrap();
        assert!(p[0] != 0 && p[0] != 0xfa && p[0] != 0xff, "check_aux returns -1");
        assert!(i8042_flush(&mut k));
    }

    #[test]
    fn reset_line() {
        // 0xFE: pulse bit 0 (machine_restart with reboot=k).
        let mut k = I8042::new();
        outb(&mut k, COMMAND_PORT, 0xfe);
        assert_eq!(k.take_event(), Some(Event::CpuReset));
        assert_eq!(k.take_event(), None, "taken once");
        // Every pulse that includes bit 0 resets; 0xFF (Linux's null command) does not.
        for c in 0xf0..=0xffu8 {
            outb(&mut k, COMMAND_PORT, c);
            assert_eq!(k.take_event().is_some(), c & 1 == 0, "{c:#x}");
        }
        // The output port with bit 0 low.
        outb(&mut k, COMMAND_PORT, 0xd1);
        outb(&mut k, DATA_PORT, 0xfe);
        assert_eq!(k.take_event(), Some(Event::CpuReset));
        // A data byte alone is for the keyboard, not the output port.
        outb(&mut k, DATA_PORT, 0xfe);
        assert_eq!(k.take_event(), None);
    }

    #[test]
    fn keyboard_commands() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        linux_keyboard(&mut k, &mut irq);
        // Echo, resend, unknown command.
        outb(&mut k, DATA_PORT, kbd::ECHO);
        irq.forward(&mut k);
        assert_eq!(drain_by_interrupt(&mut k, &mut irq), [0xee]);
        outb(&mut k, DATA_PORT, kbd::RESEND);
        irq.forward(&mut k);
        assert_eq!(drain_by_interrupt(&mut k, &mut irq), [0xee]);
        outb(&mut k, DATA_PORT, 0x42);
        irq.forward(&mut k);
        assert_eq!(drain_by_interrupt(&mut k, &mut irq), [kbd::RESEND]);
        // A bad scan-code set is refused; set 2 reads back translated (0x41).
        assert_eq!(ps2_command(&mut k, &mut irq, &[7], ATKBD_CMD_SSCANSET), None);
        drain_by_interrupt(&mut k, &mut irq);
        assert_eq!(ps2_command(&mut k, &mut irq, &[0], ATKBD_CMD_GSCANSET), Some(vec![0x41]));
        // LEDs and set-3 key-type commands are acknowledged.
        assert_eq!(ps2_command(&mut k, &mut irq, &[7], ATKBD_CMD_SETLEDS), Some(vec![]));
        assert_eq!(k.keyboard.leds, 7);
        assert_eq!(ps2_command(&mut k, &mut irq, &[], 0x00f8), Some(vec![]));
    }

    #[test]
    fn every_byte_to_every_port_is_safe_and_bounded() {
        let mut k = I8042::new();
        let mut irq = Irq1::default();
        for ctr_value in [0u8, 0xff, ctr::AT_BOOT] {
            for first in 0..=u8::MAX {
                for port in [DATA_PORT, COMMAND_PORT] {
                    outb(&mut k, COMMAND_PORT, 0x60);
                    outb(&mut k, DATA_PORT, ctr_value);
                    outb(&mut k, port, first);
                    outb(&mut k, DATA_PORT, first.wrapping_mul(7));
                    k.ctrl_alt_del();
                    irq.forward(&mut k);
                    k.port_read(port, 1);
                    k.take_event();
                }
            }
            // Whatever happened, the output drains.
            let mut n = 0;
            while inb(&mut k, COMMAND_PORT) & I8042_STR_OBF != 0 {
                inb(&mut k, DATA_PORT);
                n += 1;
                assert!(n < 64, "bounded");
            }
        }
        // Odd sizes and foreign ports.
        for size in [0, 3, 5, 255] {
            assert_eq!(k.port_read(DATA_PORT, size), u32::MAX);
            k.port_write(COMMAND_PORT, size, 0xfe);
        }
        assert_eq!(k.take_event(), None);
        assert_eq!(k.port_read(0x61, 1), 0xff);
        assert!(I8042::claims(0x60) && I8042::claims(0x64) && !I8042::claims(0x61));
        // A word read at 0x63 reads 0x63 (not ours) then the status at 0x64.
        assert_eq!(k.port_read(0x63, 2) & 0xff, 0xff);
    }

    #[test]
    fn translation_table_agrees_with_set_1_for_known_keys() {
        // (set 2, set 1): Esc, 1, A, Enter, Space, Backspace, Tab, LShift, F1, F7, F11.
        for (s2, s1) in [
            (0x76, 0x01),
            (0x16, 0x02),
            (0x1c, 0x1e),
            (0x5a, 0x1c),
            (0x29, 0x39),
            (0x66, 0x0e),
            (0x0d, 0x0f),
            (0x12, 0x2a),
            (0x05, 0x3b),
            (0x83, 0x41),
            (0x78, 0x57),
        ] {
            assert_eq!(translate(s2), s1, "{s2:#x}");
        }
        // Replies pass unchanged.
        for b in [kbd::ACK, kbd::BAT_OK, kbd::ECHO, kbd::RESEND, kbd::ID[0]] {
            assert_eq!(translate(b), b);
        }
    }
}
