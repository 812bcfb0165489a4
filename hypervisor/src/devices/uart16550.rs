//! An emulated 16550A UART, the guest's COM1, so that dom0's console can run on a
//! serial port while the hypervisor keeps the real one.
//!
//! Register-level behaviour follows the National Semiconductor PC16550D datasheet
//! (cited below as "PC16550D §8.x" for its register descriptions, Table II for the
//! register map and Table IV for interrupt priorities). Linux's 8250 driver must see
//! a 16550A with working interrupts; the tests at the bottom replay its probe and
//! start-up sequences.
//!
//! What the model leaves out on purpose:
//! - Time. Transmission is instantaneous: a byte written to THR goes straight to the
//!   output buffer and THRE/TEMT never drop. For the same reason the FIFO's
//!   character-timeout interrupt (PC16550D §8.6: four character times without a read
//!   while data sits below the trigger level) is reported at once.
//! - The line itself: baud rate, word length, parity and break are stored and read
//!   back but shape nothing, so parity, framing and break errors never occur.
//! - The modem lines of the far end are those of a connected terminal (CTS, DSR and
//!   DCD asserted, RI not), as QEMU's UART shows without a host serial port behind it.
//!
//! How the hypervisor drives it: forward guest port accesses (`PortDevice`), feed
//! host-side input with [`Uart16550::push_input`], drain guest output with
//! [`Uart16550::take_output`], and after every one of those calls forward
//! [`Uart16550::irq_level`] to the interrupt controller pin (ISA IRQ [`COM1_IRQ`]).

use super::PortDevice;

/// I/O base of COM1 on a PC.
pub const COM1_BASE: u16 = 0x3f8;
/// ISA IRQ of COM1 on a PC.
pub const COM1_IRQ: u8 = 4;

/// Registers decoded: offsets 0-7 from the base (PC16550D Table II).
const PORT_COUNT: u16 = 8;

// Register offsets, PC16550D Table II. With LCR.DLAB set, offsets 0 and 1 are the
// divisor latch instead of RBR/THR and IER.
const REG_RBR_THR: u16 = 0;
const REG_IER: u16 = 1;
const REG_IIR_FCR: u16 = 2;
const REG_LCR: u16 = 3;
const REG_MCR: u16 = 4;
const REG_LSR: u16 = 5;
const REG_MSR: u16 = 6;
const REG_SCR: u16 = 7;
const REG_DLL: u16 = 0;
const REG_DLM: u16 = 1;

/// FIFO depth of the 16550A, both directions (PC16550D §1).
pub const FIFO_SIZE: usize = 16;
/// Guest output held for the hypervisor to drain; beyond it bytes are dropped and counted.
pub const OUTPUT_CAPACITY: usize = 1024;

/// Interrupt Enable Register bits (PC16550D §8.4). Bits 4-7 are always 0.
mod ier {
    /// Received data available (and, with FIFOs, character timeout).
    pub const ERBFI: u8 = 1 << 0;
    /// Transmitter holding register empty.
    pub const ETBEI: u8 = 1 << 1;
    /// Receiver line status.
    pub const ELSI: u8 = 1 << 2;
    /// Modem status.
    pub const EDSSI: u8 = 1 << 3;
    pub const WRITABLE: u8 = ERBFI | ETBEI | ELSI | EDSSI;
}

/// Interrupt Identification Register (PC16550D §8.5, Table IV).
mod iir {
    /// Bit 0 set: no interrupt pending.
    pub const NO_INT: u8 = 0x01;
    /// Priority 1: overrun, parity, framing error or break; cleared by reading LSR.
    pub const RLS: u8 = 0x06;
    /// Priority 2: received data at the trigger level; cleared when it drops below.
    pub const RDA: u8 = 0x04;
    /// Priority 2: character timeout (FIFO mode only); cleared by reading RBR.
    pub const CTI: u8 = 0x0c;
    /// Priority 3: THR empty; cleared by reading IIR (when it is the source) or writing THR.
    pub const THRE: u8 = 0x02;
    /// Priority 4: modem status change; cleared by reading MSR.
    pub const MSI: u8 = 0x00;
    /// Bits 6-7: both set when FCR enables the FIFOs.
    pub const FIFOS_ENABLED: u8 = 0xc0;
}

/// FIFO Control Register bits (PC16550D §8.6). Write-only; offset 2 reads as IIR.
mod fcr {
    /// FIFO enable. Changing it clears both FIFOs; the other bits are only
    /// programmed while it is written as 1.
    pub const ENABLE: u8 = 1 << 0;
    pub const CLEAR_RX: u8 = 1 << 1;
    // Bit 2 clears the transmit FIFO, which in this model is always empty.
    /// Receiver trigger level, bits 6-7: 1, 4, 8 or 14 bytes.
    pub const TRIGGER_SHIFT: u8 = 6;
    pub const TRIGGER_LEVELS: [usize; 4] = [1, 4, 8, 14];
}

/// Line Control Register (PC16550D §8.3): all eight bits read back.
mod lcr {
    /// Divisor latch access bit.
    pub const DLAB: u8 = 1 << 7;
}

/// Modem Control Register bits (PC16550D §8.7). Bits 5-7 are always 0.
mod mcr {
    pub const DTR: u8 = 1 << 0;
    pub const RTS: u8 = 1 << 1;
    pub const OUT1: u8 = 1 << 2;
    /// On PCs OUT2 enables the UART's interrupt output onto the ISA IRQ line.
    pub const OUT2: u8 = 1 << 3;
    /// Local loopback: transmitter looped to receiver, modem outputs to modem inputs.
    pub const LOOP: u8 = 1 << 4;
    pub const WRITABLE: u8 = DTR | RTS | OUT1 | OUT2 | LOOP;
}

/// Line Status Register bits (PC16550D §8.4).
mod lsr {
    pub const DR: u8 = 1 << 0;
    pub const OE: u8 = 1 << 1;
    pub const PE: u8 = 1 << 2;
    pub const FE: u8 = 1 << 3;
    pub const BI: u8 = 1 << 4;
    pub const THRE: u8 = 1 << 5;
    pub const TEMT: u8 = 1 << 6;
    /// Conditions that raise the line-status interrupt; cleared by reading LSR.
    pub const ERRORS: u8 = OE | PE | FE | BI;
}

/// Modem Status Register bits (PC16550D §8.8).
mod msr {
    pub const DCTS: u8 = 1 << 0;
    pub const DDSR: u8 = 1 << 1;
    /// Trailing edge of RI (RI went from 1 to 0).
    pub const TERI: u8 = 1 << 2;
    pub const DDCD: u8 = 1 << 3;
    pub const DELTAS: u8 = DCTS | DDSR | TERI | DDCD;
    pub const CTS: u8 = 1 << 4;
    pub const DSR: u8 = 1 << 5;
    pub const RI: u8 = 1 << 6;
    pub const DCD: u8 = 1 << 7;
}

/// Modem inputs seen outside loopback: a terminal that is there and ready.
const PEER_MODEM_LINES: u8 = msr::CTS | msr::DSR | msr::DCD;
/// Divisor after reset; the datasheet leaves it undefined, this is 9600 baud at the PC's
/// 1.8432 MHz clock.
const RESET_DIVISOR: u16 = 12;

/// A fixed-capacity byte ring: the FIFOs and the output buffer, no allocation.
#[derive(Clone, Debug)]
struct Ring<const N: usize> {
    buf: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Ring<N> {
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
    /// Replaces the newest byte (the 16450-mode overrun, where the new character
    /// destroys the one in RBR).
    fn replace_newest(&mut self, byte: u8) {
        if self.len > 0 {
            self.buf[(self.head + self.len - 1) % N] = byte;
        }
    }
    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
    /// Its bytes, oldest first.
    fn contents(&self) -> impl Iterator<Item = u8> + '_ {
        (0..self.len).map(|i| self.buf[(self.head + i) % N])
    }
}

/// A UART's state as `oxen_abi::platform_state`'s `UART` words.
pub type UartState = [u64; oxen_abi::platform_state::UART_FIELDS.len()];

/// A 16550A UART with 16-byte FIFOs. See the module documentation for the model.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    base: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    /// FIFO enable and trigger bits as last programmed.
    fcr: u8,
    /// LSR error bits latched until LSR is read.
    line_errors: u8,
    /// MSR bits 0-3, latched until MSR is read.
    modem_deltas: u8,
    /// The THRE interrupt latch: THR became empty, or ETBEI was enabled while it was.
    thre_pending: bool,
    rx: Ring<FIFO_SIZE>,
    /// What RBR reads when the receiver is empty: the last character received.
    last_rx: u8,
    output: Ring<OUTPUT_CAPACITY>,
    output_dropped: u64,
    /// A driver has had the UART's interrupt output on (an interrupt enabled
    /// with MCR.OUT2 set, outside loopback): the port was opened, and
    /// [`Self::direct_ok`] stays false from then on, even while Linux's
    /// console clears IER around its writes.
    opened: bool,
}

impl Uart16550 {
    /// A UART in its reset state (PC16550D Table III) decoding ports `base..base + 8`.
    pub const fn new(base: u16) -> Self {
        Self {
            base,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: RESET_DIVISOR,
            fcr: 0,
            line_errors: 0,
            modem_deltas: 0,
            thre_pending: false,
            rx: Ring::new(),
            last_rx: 0,
            output: Ring::new(),
            output_dropped: 0,
            opened: false,
        }
    }

    /// COM1: base 0x3f8, ISA IRQ 4.
    pub const fn com1() -> Self {
        Self::new(COM1_BASE)
    }

    /// The first port this UART decodes.
    pub const fn base(&self) -> u16 {
        self.base
    }

    /// Whether `port` is one of this UART's eight registers.
    pub fn claims(&self, port: u16) -> bool {
        port.wrapping_sub(self.base) < PORT_COUNT
    }

    /// The level of the UART's interrupt line as the PC's interrupt controller sees it.
    ///
    /// On PCs the UART's INTR output reaches the ISA IRQ line only while MCR.OUT2 is
    /// set, and loopback forces OUT2 inactive (PC16550D §8.7), so both gate it.
    pub fn irq_level(&self) -> bool {
        self.mcr & mcr::OUT2 != 0 && self.mcr & mcr::LOOP == 0 && self.interrupt_id() != iir::NO_INT
    }

    /// Host-side input into the receiver. In FIFO mode bytes beyond the 16-byte FIFO
    /// are dropped; without FIFOs each new byte overwrites the unread one in RBR
    /// (PC16550D §8.4, OE). Either way LSR.OE is set. In loopback the receiver is
    /// disconnected from the line and nothing is taken. Returns the bytes that went in
    /// without loss; use [`Self::rx_space`] first to hold back what would not fit.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        if self.loopback() {
            return 0;
        }
        let mut accepted = 0;
        for &byte in bytes {
            if self.receive(byte) {
                accepted += 1;
            }
        }
        accepted
    }

    /// Whether a driver has the receiver going: its data-available interrupt
    /// enabled (IER.ERBFI, PC16550D §8.4), as Linux's 8250 driver has while
    /// the port is open. Host-side input waits until then.
    pub fn receiving(&self) -> bool {
        self.ier & ier::ERBFI != 0
    }

    /// Whether the guest's data path may go to the machine's own UART instead
    /// of this model, nothing being lost or reordered: writes to THR and reads
    /// of LSR reaching the hardware directly (dom0's kernel log before its
    /// driver opens the port, `vm::platform`). That holds until a driver first
    /// turns the interrupt output on, while no interrupt is enabled (a driver
    /// polling LSR, as Linux's console and early console do), the divisor latch is not selected (offset 0 would be DLL), there
    /// is no loopback (THR would go to RBR), and the model holds no received
    /// byte, error, or output: its state has nothing the hardware's would not
    /// show.
    pub fn direct_ok(&self) -> bool {
        !self.opened
            && self.ier == 0
            && !self.dlab()
            && !self.loopback()
            && self.rx.len == 0
            && self.line_errors == 0
            && self.output.len == 0
    }

    /// Whether a driver has had the interrupt output on (see `opened`).
    pub const fn opened(&self) -> bool {
        self.opened
    }

    /// How many bytes [`Self::push_input`] would take now without an overrun.
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity() - self.rx.len
        }
    }

    /// Drains the bytes the guest has transmitted, oldest first. Bytes not consumed
    /// stay for the next call.
    pub fn take_output(&mut self) -> impl Iterator<Item = u8> + '_ {
        core::iter::from_fn(move || self.output.pop())
    }

    /// Bytes the guest transmitted while the output buffer was full.
    pub const fn output_dropped(&self) -> u64 {
        self.output_dropped
    }

    fn loopback(&self) -> bool {
        self.mcr & mcr::LOOP != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & fcr::ENABLE != 0
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    /// Without FIFOs the receiver holds one character, in RBR.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        fcr::TRIGGER_LEVELS[usize::from(self.fcr >> fcr::TRIGGER_SHIFT)]
    }

    /// One character arriving at the receiver; false if it caused an overrun.
    fn receive(&mut self, byte: u8) -> bool {
        if self.rx.len < self.rx_capacity() {
            self.rx.push(byte);
            return true;
        }
        // FIFO mode: the character in the shift register is lost, the FIFO is kept.
        // 16450 mode: the new character destroys the unread one (PC16550D §8.4, OE).
        if !self.fifo_enabled() {
            self.rx.replace_newest(byte);
        }
        self.line_errors |= lsr::OE;
        false
    }

    /// The modem inputs (MSR bits 4-7): in loopback the modem outputs wired back
    /// (DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD; PC16550D §8.7), else the peer's lines.
    fn modem_lines(&self) -> u8 {
        if !self.loopback() {
            return PEER_MODEM_LINES;
        }
        let wire = |out: u8, input: u8| if self.mcr & out != 0 { input } else { 0 };
        wire(mcr::DTR, msr::DSR) | wire(mcr::RTS, msr::CTS) | wire(mcr::OUT1, msr::RI) | wire(mcr::OUT2, msr::DCD)
    }

    /// Latches the delta bits for a change of the modem inputs (PC16550D §8.8).
    fn note_modem_change(&mut self, before: u8, after: u8) {
        let changed = before ^ after;
        let delta = |line: u8, bit: u8| if changed & line != 0 { bit } else { 0 };
        self.modem_deltas |= delta(msr::CTS, msr::DCTS) | delta(msr::DSR, msr::DDSR) | delta(msr::DCD, msr::DDCD);
        if before & msr::RI != 0 && after & msr::RI == 0 {
            self.modem_deltas |= msr::TERI;
        }
    }

    /// The highest-priority pending interrupt, as IIR bits 0-3 (PC16550D Table IV).
    fn interrupt_id(&self) -> u8 {
        let rx_len = self.rx.len;
        if self.ier & ier::ELSI != 0 && self.line_errors & lsr::ERRORS != 0 {
            iir::RLS
        } else if self.ier & ier::ERBFI != 0 && rx_len > 0 {
            if !self.fifo_enabled() || rx_len >= self.rx_trigger() {
                iir::RDA
            } else {
                // Below the trigger level the timeout would fire after four
                // character times; the model has no time, so it fires now.
                iir::CTI
            }
        } else if self.ier & ier::ETBEI != 0 && self.thre_pending {
            iir::THRE
        } else if self.ier & ier::EDSSI != 0 && self.modem_deltas & msr::DELTAS != 0 {
            iir::MSI
        } else {
            iir::NO_INT
        }
    }

    fn read_register(&mut self, offset: u16) -> u8 {
        match offset {
            REG_DLL if self.dlab() => self.divisor.to_le_bytes()[0],
            REG_DLM if self.dlab() => self.divisor.to_le_bytes()[1],
            REG_RBR_THR => {
                if let Some(byte) = self.rx.pop() {
                    self.last_rx = byte;
                }
                self.last_rx
            }
            REG_IER => self.ier,
            REG_IIR_FCR => {
                let id = self.interrupt_id();
                // Reading IIR clears a THRE interrupt only when it is what IIR reports.
                if id == iir::THRE {
                    self.thre_pending = false;
                }
                let fifos = if self.fifo_enabled() { iir::FIFOS_ENABLED } else { 0 };
                id | fifos
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                let dr = if self.rx.len > 0 { lsr::DR } else { 0 };
                // Instantaneous transmission: the holding and shift registers are
                // always empty.
                let value = dr | self.line_errors | lsr::THRE | lsr::TEMT;
                self.line_errors = 0;
                value
            }
            REG_MSR => {
                let value = self.modem_lines() | self.modem_deltas;
                self.modem_deltas = 0;
                value
            }
            REG_SCR => self.scr,
            _ => u8::MAX,
        }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        match offset {
            REG_DLL if self.dlab() => self.divisor = u16::from_le_bytes([value, self.divisor.to_le_bytes()[1]]),
            REG_DLM if self.dlab() => self.divisor = u16::from_le_bytes([self.divisor.to_le_bytes()[0], value]),
            REG_RBR_THR => {
                if self.loopback() {
                    self.receive(value);
                } else if !self.output.push(value) {
                    self.output_dropped += 1;
                }
                // Writing THR clears the THRE interrupt; the byte leaves at once, so
                // THR is empty again and raises a new one, as a real UART does one
                // character time later.
                self.thre_pending = true;
            }
            REG_IER => {
                let before = self.ier;
                self.ier = value & ier::WRITABLE;
                // Enabling ETBEI while THR is empty raises THRE even if an IIR read
                // had cleared it; Linux's start-up test relies on this (and so does
                // Windows, QEMU notes). Disabling it drops the latch.
                if (before ^ self.ier) & ier::ETBEI != 0 {
                    self.thre_pending = self.ier & ier::ETBEI != 0;
                }
            }
            REG_IIR_FCR => self.write_fcr(value),
            REG_LCR => self.lcr = value,
            REG_MCR => {
                let before = self.modem_lines();
                self.mcr = value & mcr::WRITABLE;
                let after = self.modem_lines();
                self.note_modem_change(before, after);
            }
            REG_SCR => self.scr = value,
            // LSR and MSR are read-only (PC16550D §8.4, §8.8: writes are for factory test).
            _ => {}
        }
        if self.ier != 0 && self.mcr & mcr::OUT2 != 0 && !self.loopback() {
            self.opened = true;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & fcr::ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Changing FCR0 clears both FIFOs (PC16550D §8.6).
            self.rx.clear();
        }
        if !enable {
            // "FCR0 must be 1 when other FCR bits are written to or they will not be
            // programmed" (PC16550D §8.6).
            self.fcr &= !fcr::ENABLE;
            return;
        }
        if value & fcr::CLEAR_RX != 0 {
            self.rx.clear();
        }
        // DMA mode (bit 3) has no DMA to select; bits 4-5 are reserved on the 16550A and kept at 0 so the guest
        // cannot mistake this for a 16750's 64-byte FIFO.
        let trigger_mask = 0b11 << fcr::TRIGGER_SHIFT;
        self.fcr = fcr::ENABLE | (value & trigger_mask);
    }

    /// Its state, for save and migration (`oxen_abi::platform_state`'s `UART`
    /// words). Output not yet taken is not part of it: the caller takes it
    /// first.
    pub fn save(&self) -> UartState {
        let mut rx = [0u8; FIFO_SIZE];
        for (d, b) in rx.iter_mut().zip(self.rx.contents()) {
            *d = b;
        }
        [
            self.ier.into(),
            self.lcr.into(),
            self.mcr.into(),
            self.scr.into(),
            self.divisor.into(),
            self.fcr.into(),
            self.line_errors.into(),
            self.modem_deltas.into(),
            self.thre_pending.into(),
            self.last_rx.into(),
            self.rx.len as u64,
            oxen_abi::platform_state::pack(&rx[..8]),
            oxen_abi::platform_state::pack(&rx[8..]),
        ]
    }

    /// Takes a state `save` gave; refuses (and keeps its own) one with a
    /// register value the UART could not hold.
    pub fn restore(&mut self, w: &UartState) -> Result<(), &'static str> {
        let byte = |v: u64, mask: u8| (v & !u64::from(mask) == 0).then_some(v as u8);
        let fcr_mask = fcr::ENABLE | (0b11 << fcr::TRIGGER_SHIFT);
        let (Some(ier), Some(lcr), Some(mcr), Some(scr), Some(fcr_v), Some(errors), Some(deltas), Some(last_rx)) = (
            byte(w[0], ier::WRITABLE),
            byte(w[1], 0xff),
            byte(w[2], mcr::WRITABLE),
            byte(w[3], 0xff),
            byte(w[5], fcr_mask),
            byte(w[6], lsr::ERRORS),
            byte(w[7], msr::DELTAS),
            byte(w[9], 0xff),
        ) else {
            return Err("UART: a register value it could not hold");
        };
        let (Ok(divisor), true, true) = (u16::try_from(w[4]), w[8] <= 1, w[10] <= FIFO_SIZE as u64) else {
            return Err("UART: divisor, THRE latch or FIFO length out of range");
        };
        let mut rx = [0u8; FIFO_SIZE];
        rx[..8].copy_from_slice(&w[11].to_le_bytes());
        rx[8..].copy_from_slice(&w[12].to_le_bytes());
        self.ier = ier;
        self.lcr = lcr;
        self.mcr = mcr;
        self.scr = scr;
        self.divisor = divisor;
        self.fcr = fcr_v;
        self.line_errors = errors;
        self.modem_deltas = deltas;
        self.thre_pending = w[8] == 1;
        // A restored guest's driver is past its boot: never the direct path.
        self.opened = true;
        self.last_rx = last_rx;
        self.rx.clear();
        for &b in &rx[..w[10] as usize] {
            self.rx.push(b);
        }
        Ok(())
    }

    fn offset(&self, port: u16) -> Option<u16> {
        let offset = port.wrapping_sub(self.base);
        (offset < PORT_COUNT).then_some(offset)
    }
}

impl PortDevice for Uart16550 {
    /// An 8-bit device: wider accesses are split into byte accesses at successive
    /// ports, as the PC bus does for an 8-bit ISA device; ports past the UART read
    /// as all ones. Sizes other than 1, 2 or 4 read as all ones with no effect.
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return u32::MAX;
        }
        let mut bytes = [0; 4];
        for (i, byte) in bytes.iter_mut().enumerate().take(usize::from(size)) {
            *byte = match self.offset(port.wrapping_add(i as u16)) {
                Some(offset) => self.read_register(offset),
                None => u8::MAX,
            };
        }
        u32::from_le_bytes(bytes)
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        if !matches!(size, 1 | 2 | 4) {
            return;
        }
        for (i, byte) in value.to_le_bytes().into_iter().enumerate().take(usize::from(size)) {
            if let Some(offset) = self.offset(port.wrapping_add(i as u16)) {
                self.write_register(offset, byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux's names for the registers (include/uapi/linux/serial_reg.h), so the
    // replayed sequences read like the driver.
    const UART_RX: u16 = COM1_BASE;
    const UART_TX: u16 = COM1_BASE;
    const UART_DLL: u16 = COM1_BASE;
    const UART_DLM: u16 = COM1_BASE + 1;
    const UART_IER: u16 = COM1_BASE + 1;
    const UART_IIR: u16 = COM1_BASE + 2;
    const UART_FCR: u16 = COM1_BASE + 2;
    const UART_EFR: u16 = COM1_BASE + 2;
    const UART_LCR: u16 = COM1_BASE + 3;
    const UART_MCR: u16 = COM1_BASE + 4;
    const UART_LSR: u16 = COM1_BASE + 5;
    const UART_MSR: u16 = COM1_BASE + 6;
    const UART_SCR: u16 = COM1_BASE + 7;

    const UART_LCR_CONF_MODE_A: u8 = 0x80;
    const UART_LCR_CONF_MODE_B: u8 = 0xbf;
    const UART_LCR_WLEN8: u8 = 0x03;
    const UART_FCR_ENABLE_FIFO: u8 = 0x01;
    const UART_FCR_CLEAR_RCVR: u8 = 0x02;
    const UART_FCR_CLEAR_XMIT: u8 = 0x04;
    const UART_FCR7_64BYTE: u8 = 0x20;
    const UART_FCR_R_TRIG_10: u8 = 0x80;
    const UART_IER_RDI: u8 = 0x01;
    const UART_IER_THRI: u8 = 0x02;
    const UART_IER_RLSI: u8 = 0x04;
    const UART_IER_MSI: u8 = 0x08;
    const UART_IER_UUE: u8 = 0x40;
    const UART_IIR_NO_INT: u8 = 0x01;
    const UART_IIR_ID: u8 = 0x0e;
    const UART_MCR_DTR: u8 = 0x01;
    const UART_MCR_RTS: u8 = 0x02;
    const UART_MCR_OUT2: u8 = 0x08;
    const UART_MCR_LOOP: u8 = 0x10;

    fn inb(u: &mut Uart16550, port: u16) -> u8 {
        u.port_read(port, 1) as u8
    }
    fn outb(u: &mut Uart16550, port: u16, value: u8) {
        u.port_write(port, 1, u32::from(value));
    }
    fn output(u: &mut Uart16550) -> Vec<u8> {
        u.take_output().collect()
    }

    #[test]
    fn direct_path_only_while_the_model_holds_nothing_the_hardware_lacks() {
        let mut u = Uart16550::com1();
        assert!(u.direct_ok(), "reset state: polled, DLAB off, nothing held");
        // The early console's set-up: the divisor latch selected, then not.
        outb(&mut u, UART_LCR, UART_LCR_CONF_MODE_A | UART_LCR_WLEN8);
        assert!(!u.direct_ok(), "offset 0 is DLL while DLAB is set");
        outb(&mut u, UART_DLL, 1);
        outb(&mut u, UART_LCR, UART_LCR_WLEN8);
        assert!(u.direct_ok());
        // A byte written while trapped is output the hypervisor has not sent yet.
        outb(&mut u, UART_TX, b'x');
        assert!(!u.direct_ok(), "unsent output");
        assert_eq!(output(&mut u), b"x");
        assert!(u.direct_ok());
        // Received input waits in the model's FIFO: the hardware's LSR would not show it.
        outb(&mut u, UART_FCR, UART_FCR_ENABLE_FIFO);
        u.push_input(b"k");
        assert!(!u.direct_ok(), "a received byte in the model");
        assert_eq!(inb(&mut u, UART_RX), b'k');
        assert!(u.direct_ok());
        // Loopback sends THR to RBR, not to the line.
        outb(&mut u, UART_MCR, UART_MCR_LOOP);
        assert!(!u.direct_ok(), "loopback");
        outb(&mut u, UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2);
        assert!(u.direct_ok());
        // Linux's probe tests IER with the interrupt output off: not an open port.
        outb(&mut u, UART_MCR, UART_MCR_DTR | UART_MCR_RTS);
        outb(&mut u, UART_IER, 0x0f);
        assert!(!u.direct_ok(), "interrupts enabled");
        outb(&mut u, UART_IER, 0);
        assert!(u.direct_ok(), "the probe's IER test is over");
        // A driver that opened the port takes interrupts: from then on, the model,
        // even while Linux's console clears IER around each of its writes.
        outb(&mut u, UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2);
        outb(&mut u, UART_IER, UART_IER_RDI | UART_IER_RLSI);
        assert!(!u.direct_ok());
        outb(&mut u, UART_IER, 0);
        assert!(!u.direct_ok(), "opened once: the model for good");
    }

    #[test]
    fn saved_state_restores_registers_and_the_receive_fifo() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_FCR, 0xc1);
        outb(&mut u, UART_LCR, 0x83);
        outb(&mut u, UART_DLL, 0x01);
        outb(&mut u, UART_LCR, 0x03);
        outb(&mut u, UART_IER, UART_IER_RDI | UART_IER_THRI);
        outb(&mut u, UART_MCR, UART_MCR_DTR | UART_MCR_OUT2);
        // Wrap the FIFO's ring so the saved order is not the buffer's.
        assert_eq!(u.push_input(b"0123456789"), 10);
        for _ in 0..8 {
            inb(&mut u, UART_RX);
        }
        assert_eq!(u.push_input(b"abcdefghijkl"), 12);
        let saved = u.save();
        let mut v = Uart16550::com1();
        assert_eq!(v.restore(&saved), Ok(()));
        assert_eq!(v.save(), saved);
        for port in [UART_IER, UART_LCR, UART_MCR, UART_LSR, UART_IIR] {
            assert_eq!(inb(&mut v, port), inb(&mut u.clone(), port), "port {port:#x}");
        }
        let rest: Vec<u8> = (0..14).map(|_| inb(&mut v, UART_RX)).collect();
        assert_eq!(rest, b"89abcdefghijkl");
        // A value no register holds, and a FIFO longer than 16: refused, kept.
        let before = v.save();
        let mut bad = saved;
        bad[2] = 0xff;
        assert!(v.restore(&bad).is_err());
        let mut bad = saved;
        bad[10] = 17;
        assert!(v.restore(&bad).is_err());
        assert_eq!(v.save(), before);
    }

    /// `autoconfig()` up to the IIR-based type switch (drivers/tty/serial/8250/8250_port.c).
    /// Returns the two high IIR bits it switches on.
    fn linux_autoconfig_probe(u: &mut Uart16550) -> u8 {
        // IER existence test.
        let scratch = inb(u, UART_IER);
        outb(u, UART_IER, 0);
        let scratch2 = inb(u, UART_IER) & 0x0f;
        outb(u, UART_IER, 0x0f);
        let scratch3 = inb(u, UART_IER) & 0x0f;
        outb(u, UART_IER, scratch);
        assert_eq!((scratch2, scratch3), (0, 0x0f), "IER test");

        // Loopback test: RTS and OUT2 looped to CTS and DCD.
        let save_mcr = inb(u, UART_MCR);
        let save_lcr = inb(u, UART_LCR);
        outb(u, UART_MCR, UART_MCR_LOOP | 0x0a);
        let status1 = inb(u, UART_MSR) & 0xf0;
        outb(u, UART_MCR, save_mcr);
        assert_eq!(status1, 0x90, "LOOP test");

        // EFR init (an FCR write of 0 on a 16550A), then FIFO detection.
        outb(u, UART_LCR, UART_LCR_CONF_MODE_B);
        outb(u, UART_EFR, 0);
        outb(u, UART_LCR, 0);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO);
        let kind = inb(u, UART_IIR) >> 6;
        assert_eq!(save_lcr, 0);
        kind
    }

    /// `size_fifo()`: count what comes back through loopback after sending 256 bytes.
    fn linux_size_fifo(u: &mut Uart16550) -> usize {
        let old_lcr = inb(u, UART_LCR);
        outb(u, UART_LCR, 0);
        let old_fcr = inb(u, UART_FCR);
        let old_mcr = inb(u, UART_MCR);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT);
        outb(u, UART_MCR, UART_MCR_LOOP);
        outb(u, UART_LCR, UART_LCR_CONF_MODE_A);
        let old_dl = (inb(u, UART_DLL), inb(u, UART_DLM));
        outb(u, UART_DLL, 1);
        outb(u, UART_DLM, 0);
        outb(u, UART_LCR, 0x03);
        for count in 0..=255u8 {
            outb(u, UART_TX, count);
        }
        let mut count = 0;
        while inb(u, UART_LSR) & lsr::DR != 0 && count < 256 {
            inb(u, UART_RX);
            count += 1;
        }
        outb(u, UART_FCR, old_fcr);
        outb(u, UART_MCR, old_mcr);
        outb(u, UART_LCR, UART_LCR_CONF_MODE_A);
        outb(u, UART_DLL, old_dl.0);
        outb(u, UART_DLM, old_dl.1);
        outb(u, UART_LCR, old_lcr);
        count
    }

    /// `autoconfig_16550a()`: every test that would make it something other than a
    /// plain 16550A must fail. Returns the detected name.
    fn linux_autoconfig_16550a(u: &mut Uart16550) -> &'static str {
        // EFR with DLAB set: only ST16C650V1 reads 0 here.
        outb(u, UART_LCR, UART_LCR_CONF_MODE_A);
        if inb(u, UART_EFR) == 0 {
            return "ST16650 or FSL64";
        }
        // EFR behind LCR=0xBF (ST16C650V2, TI16C752...).
        outb(u, UART_LCR, UART_LCR_CONF_MODE_B);
        if inb(u, UART_EFR) == 0 {
            return "16650V2 or later";
        }
        // National Semiconductor SuperIO: bank 2's EXCR1 mirrors MCR.LOOP.
        outb(u, UART_LCR, 0);
        let status1 = inb(u, UART_MCR);
        outb(u, UART_LCR, 0xe0);
        let mut status2 = inb(u, UART_IIR);
        if (status2 ^ status1) & UART_MCR_LOOP == 0 {
            outb(u, UART_LCR, 0);
            outb(u, UART_MCR, status1 ^ UART_MCR_LOOP);
            outb(u, UART_LCR, 0xe0);
            status2 = inb(u, UART_IIR);
            outb(u, UART_LCR, 0);
            outb(u, UART_MCR, status1);
            if (status2 ^ status1) & UART_MCR_LOOP != 0 {
                return "NS16550A";
            }
        }
        // TI16750: IIR bit 5 follows the 64-byte FIFO bit, with DLAB set only.
        outb(u, UART_LCR, 0);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
        let status1 = inb(u, UART_IIR) >> 5;
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO);
        outb(u, UART_LCR, UART_LCR_CONF_MODE_A);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR7_64BYTE);
        let status2 = inb(u, UART_IIR) >> 5;
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO);
        outb(u, UART_LCR, 0);
        if status1 == 6 && status2 == 7 {
            return "TI16750";
        }
        // XScale: IER bit 6 (UUE) writable.
        let iersave = inb(u, UART_IER);
        outb(u, UART_IER, iersave & !UART_IER_UUE);
        if inb(u, UART_IER) & UART_IER_UUE == 0 {
            outb(u, UART_IER, iersave | UART_IER_UUE);
            if inb(u, UART_IER) & UART_IER_UUE != 0 {
                return "XScale";
            }
        }
        outb(u, UART_IER, iersave);
        // U6 16550A: a 64-byte FIFO.
        if linux_size_fifo(u) == 64 {
            return "U6_16550A";
        }
        "16550A"
    }

    /// `serial8250_clear_fifos()`.
    fn linux_clear_fifos(u: &mut Uart16550) {
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT);
        outb(u, UART_FCR, 0);
    }

    /// Probe and start-up as Linux does them for ttyS0 with IRQ 4, returning the
    /// UART_BUG_* flags the start-up tests would set.
    fn linux_probe_and_startup(u: &mut Uart16550) -> (bool, bool) {
        assert_eq!(linux_autoconfig_probe(u), 3, "IIR must report FIFOs: 16550A");
        assert_eq!(linux_autoconfig_16550a(u), "16550A");
        // autoconfig's reset tail.
        outb(u, UART_LCR, 0);
        outb(u, UART_MCR, 0);
        linux_clear_fifos(u);
        inb(u, UART_RX);
        outb(u, UART_IER, 0);

        // serial8250_do_startup().
        linux_clear_fifos(u);
        for port in [UART_LSR, UART_RX, UART_IIR, UART_MSR] {
            inb(u, port);
        }
        assert_ne!(inb(u, UART_LSR), 0xff, "LSR safety check");
        // The THRE re-assertion test.
        assert_ne!(inb(u, UART_LSR) & lsr::THRE, 0);
        outb(u, UART_IER, UART_IER_THRI);
        let iir1 = inb(u, UART_IIR);
        outb(u, UART_IER, 0);
        outb(u, UART_IER, UART_IER_THRI);
        let iir = inb(u, UART_IIR);
        outb(u, UART_IER, 0);
        let bug_thre = iir1 & UART_IIR_NO_INT == 0 && iir & UART_IIR_NO_INT != 0;
        // Initialise: 8N1, DTR|RTS|OUT2 (OUT2 because the port has an IRQ).
        outb(u, UART_LCR, UART_LCR_WLEN8);
        outb(u, UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2);
        // The TX-enable test.
        outb(u, UART_IER, UART_IER_THRI);
        let lsr = inb(u, UART_LSR);
        let iir = inb(u, UART_IIR);
        outb(u, UART_IER, 0);
        let bug_txen = lsr & lsr::TEMT != 0 && iir & UART_IIR_NO_INT != 0;
        for port in [UART_LSR, UART_RX, UART_IIR, UART_MSR] {
            inb(u, port);
        }
        // set_termios: 115200 8N1, 16550A FIFO with an 8-byte trigger, then RX interrupts.
        outb(u, UART_LCR, UART_LCR_WLEN8 | UART_LCR_CONF_MODE_A);
        outb(u, UART_DLL, 1);
        outb(u, UART_DLM, 0);
        outb(u, UART_LCR, UART_LCR_WLEN8);
        outb(u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_R_TRIG_10);
        outb(u, UART_IER, UART_IER_RLSI | UART_IER_RDI);
        (bug_thre, bug_txen)
    }

    #[test]
    fn reset_state_matches_the_datasheet() {
        let mut u = Uart16550::com1();
        assert_eq!(inb(&mut u, UART_IER), 0);
        assert_eq!(inb(&mut u, UART_IIR), UART_IIR_NO_INT);
        assert_eq!(inb(&mut u, UART_LCR), 0);
        assert_eq!(inb(&mut u, UART_MCR), 0);
        assert_eq!(inb(&mut u, UART_LSR), lsr::THRE | lsr::TEMT);
        assert_eq!(inb(&mut u, UART_MSR) & msr::DELTAS, 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn linux_detects_a_16550a_and_needs_no_workarounds() {
        let mut u = Uart16550::com1();
        let (bug_thre, bug_txen) = linux_probe_and_startup(&mut u);
        assert!(!bug_thre, "THRE must re-assert when IER.THRI is enabled again");
        assert!(!bug_txen, "enabling THRI with THR empty must raise THRE at once");
        assert_eq!(inb(&mut u, UART_LCR), UART_LCR_WLEN8);
        assert_eq!(inb(&mut u, UART_IIR), iir::FIFOS_ENABLED | UART_IIR_NO_INT);
        // Nothing the probe transmitted in loopback reached the console.
        assert!(output(&mut u).is_empty());
        assert!(!u.irq_level());
    }

    #[test]
    fn size_fifo_counts_sixteen() {
        let mut u = Uart16550::com1();
        assert_eq!(linux_size_fifo(&mut u), FIFO_SIZE);
        // And restores what it changed.
        assert_eq!(inb(&mut u, UART_MCR), 0);
        assert_eq!(inb(&mut u, UART_LCR), 0);
        outb(&mut u, UART_LCR, UART_LCR_CONF_MODE_A);
        assert_eq!((inb(&mut u, UART_DLL), inb(&mut u, UART_DLM)), (12, 0));
    }

    #[test]
    fn interrupt_driven_transmit_as_linux_does_it() {
        let mut u = Uart16550::com1();
        linux_probe_and_startup(&mut u);
        // start_tx: enable THRI; THR is empty so the line rises.
        outb(&mut u, UART_IER, UART_IER_RLSI | UART_IER_RDI | UART_IER_THRI);
        assert!(u.irq_level());
        // The handler: IIR says THRE (and reading it clears the interrupt), LSR says
        // THRE, tx_chars loads up to 16 bytes.
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::THRE);
        assert!(!u.irq_level(), "reading IIR clears THRE when it is the source");
        assert_ne!(inb(&mut u, UART_LSR) & lsr::THRE, 0);
        for &b in b"hello" {
            outb(&mut u, UART_TX, b);
        }
        // The bytes left at once, so THR is empty again: the next THRE interrupt.
        assert!(u.irq_level());
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::THRE);
        // Nothing left to send: __stop_tx drops THRI.
        outb(&mut u, UART_IER, UART_IER_RLSI | UART_IER_RDI);
        assert!(!u.irq_level());
        assert_eq!(output(&mut u), b"hello");
    }

    #[test]
    fn interrupt_driven_receive_as_linux_does_it() {
        let mut u = Uart16550::com1();
        linux_probe_and_startup(&mut u);
        assert_eq!(u.rx_space(), FIFO_SIZE);
        // Three bytes, below the 8-byte trigger: the character timeout reports them.
        assert_eq!(u.push_input(b"ls\n"), 3);
        assert!(u.irq_level());
        assert_eq!(inb(&mut u, UART_IIR), iir::FIFOS_ENABLED | iir::CTI);
        // serial8250_rx_chars: read while LSR.DR.
        let mut got = Vec::new();
        while inb(&mut u, UART_LSR) & lsr::DR != 0 {
            got.push(inb(&mut u, UART_RX));
        }
        assert_eq!(got, b"ls\n");
        assert!(!u.irq_level());
        // At or above the trigger level it is "received data available".
        u.push_input(b"12345678");
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA);
        for _ in 0..4 {
            inb(&mut u, UART_RX);
        }
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::CTI);
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_IER, UART_IER_RDI);
        u.push_input(b"x");
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA, "pending in the UART");
        assert!(!u.irq_level(), "but not on the ISA line without OUT2");
        outb(&mut u, UART_MCR, UART_MCR_OUT2);
        assert!(u.irq_level());
    }

    #[test]
    fn rx_overrun_in_fifo_mode_keeps_the_fifo_and_sets_oe() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_FCR, UART_FCR_ENABLE_FIFO);
        outb(&mut u, UART_IER, UART_IER_RLSI | UART_IER_RDI);
        outb(&mut u, UART_MCR, UART_MCR_OUT2);
        let input: Vec<u8> = (0..20).collect();
        assert_eq!(u.push_input(&input), FIFO_SIZE);
        assert_eq!(u.rx_space(), 0);
        // Line status outranks received data.
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RLS);
        let status = inb(&mut u, UART_LSR);
        assert_eq!(status & (lsr::OE | lsr::DR), lsr::OE | lsr::DR);
        assert_eq!(inb(&mut u, UART_LSR) & lsr::OE, 0, "reading LSR clears OE");
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA);
        let got: Vec<u8> = (0..FIFO_SIZE).map(|_| inb(&mut u, UART_RX)).collect();
        assert_eq!(got, input[..FIFO_SIZE]);
        assert_eq!(inb(&mut u, UART_LSR) & lsr::DR, 0);
    }

    #[test]
    fn rx_overrun_without_fifo_overwrites_rbr() {
        let mut u = Uart16550::com1();
        assert_eq!(u.rx_space(), 1);
        assert_eq!(u.push_input(b"ab"), 1);
        assert_eq!(inb(&mut u, UART_LSR) & (lsr::OE | lsr::DR), lsr::OE | lsr::DR);
        assert_eq!(inb(&mut u, UART_RX), b'b');
        // An empty receiver reads the last character again.
        assert_eq!(inb(&mut u, UART_LSR) & lsr::DR, 0);
        assert_eq!(inb(&mut u, UART_RX), b'b');
    }

    #[test]
    fn fcr_clears_and_toggling_fifo_enable_empties_the_fifo() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_FCR, UART_FCR_ENABLE_FIFO);
        u.push_input(b"abc");
        outb(&mut u, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR);
        assert_eq!(inb(&mut u, UART_LSR) & lsr::DR, 0);
        u.push_input(b"abc");
        outb(&mut u, UART_FCR, 0);
        assert_eq!(inb(&mut u, UART_LSR) & lsr::DR, 0);
        assert_eq!(inb(&mut u, UART_IIR), UART_IIR_NO_INT, "FIFO bits clear again");
        // Trigger bits written with FCR0 clear are not programmed.
        outb(&mut u, UART_FCR, 0xc0);
        outb(&mut u, UART_FCR, UART_FCR_ENABLE_FIFO);
        u.push_input(b"a");
        outb(&mut u, UART_IER, UART_IER_RDI);
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA, "trigger level 1");
    }

    #[test]
    fn loopback_routes_tx_to_rx_and_mcr_to_msr() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_MCR, UART_MCR_LOOP);
        inb(&mut u, UART_MSR);
        outb(&mut u, UART_TX, 0x5a);
        assert!(output(&mut u).is_empty(), "loopback transmits nothing on the line");
        assert_eq!(inb(&mut u, UART_LSR) & lsr::DR, lsr::DR);
        assert_eq!(inb(&mut u, UART_RX), 0x5a);
        // The receiver is cut off from the line.
        assert_eq!(u.push_input(b"x"), 0);
        assert_eq!(u.rx_space(), 0);
        // DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD, each with its delta.
        outb(&mut u, UART_MCR, UART_MCR_LOOP | 0x0f);
        assert_eq!(inb(&mut u, UART_MSR), 0xf0 | msr::DCTS | msr::DDSR | msr::DDCD);
        assert_eq!(inb(&mut u, UART_MSR), 0xf0, "reading MSR clears the deltas");
        outb(&mut u, UART_MCR, UART_MCR_LOOP | UART_MCR_DTR);
        assert_eq!(inb(&mut u, UART_MSR), msr::DSR | msr::DCTS | msr::TERI | msr::DDCD);
        // Out of loopback the peer's lines are back.
        outb(&mut u, UART_MCR, 0);
        assert_eq!(inb(&mut u, UART_MSR) & 0xf0, PEER_MODEM_LINES);
    }

    #[test]
    fn loopback_interrupts_work_but_never_reach_the_irq_line() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_MCR, UART_MCR_LOOP | UART_MCR_OUT2);
        outb(&mut u, UART_IER, UART_IER_RDI);
        outb(&mut u, UART_TX, 1);
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA);
        assert!(!u.irq_level());
    }

    #[test]
    fn modem_status_interrupt_has_the_lowest_priority() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_MCR, UART_MCR_LOOP);
        inb(&mut u, UART_MSR);
        outb(&mut u, UART_IER, UART_IER_MSI | UART_IER_THRI);
        outb(&mut u, UART_MCR, UART_MCR_LOOP | UART_MCR_RTS);
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::THRE);
        assert_eq!(inb(&mut u, UART_IIR), iir::MSI, "after THRE was read");
        inb(&mut u, UART_MSR);
        assert_eq!(inb(&mut u, UART_IIR), UART_IIR_NO_INT);
    }

    #[test]
    fn thre_latch_follows_8250_semantics() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_MCR, UART_MCR_OUT2);
        outb(&mut u, UART_IER, UART_IER_THRI);
        assert!(u.irq_level());
        // Rewriting IER without an ETBEI edge does not re-raise a cleared THRE.
        inb(&mut u, UART_IIR);
        outb(&mut u, UART_IER, UART_IER_THRI);
        assert!(!u.irq_level());
        // A higher-priority source hides THRE, and reading IIR then leaves it pending.
        outb(&mut u, UART_IER, UART_IER_THRI | UART_IER_RDI);
        u.push_input(b"z");
        outb(&mut u, UART_TX, b'!');
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA);
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::RDA);
        inb(&mut u, UART_RX);
        assert_eq!(inb(&mut u, UART_IIR) & UART_IIR_ID, iir::THRE);
        assert_eq!(inb(&mut u, UART_IIR), UART_IIR_NO_INT);
        assert_eq!(output(&mut u), b"!");
    }

    #[test]
    fn polled_console_write_like_early_printk() {
        let mut u = Uart16550::com1();
        for &b in b"Linux version" {
            while inb(&mut u, UART_LSR) & lsr::THRE == 0 {}
            outb(&mut u, UART_TX, b);
        }
        assert_eq!(output(&mut u), b"Linux version");
        assert!(!u.irq_level());
    }

    #[test]
    fn divisor_latch_scratch_and_dlab() {
        let mut u = Uart16550::com1();
        outb(&mut u, UART_LCR, lcr::DLAB | UART_LCR_WLEN8);
        outb(&mut u, UART_DLL, 0x34);
        outb(&mut u, UART_DLM, 0x12);
        assert_eq!(u.port_read(UART_DLL, 2), 0x1234);
        outb(&mut u, UART_LCR, UART_LCR_WLEN8);
        // DLAB clear: offsets 0 and 1 are data and IER again.
        assert_eq!(inb(&mut u, UART_IER), 0);
        outb(&mut u, UART_TX, b'k');
        assert_eq!(output(&mut u), b"k");
        // Scratch test as autoconfig_8250 does it.
        for v in [0xa5, 0x5a] {
            outb(&mut u, UART_SCR, v);
            assert_eq!(inb(&mut u, UART_SCR), v);
        }
    }

    #[test]
    fn odd_sizes_and_ports_never_panic() {
        let mut u = Uart16550::com1();
        // A word access splits into bytes: LCR then MCR.
        u.port_write(UART_LCR, 2, 0x0b03);
        assert_eq!(inb(&mut u, UART_LCR), 0x03);
        assert_eq!(inb(&mut u, UART_MCR), 0x0b);
        // A dword read at SCR runs off the end: the missing ports read as all ones.
        outb(&mut u, UART_SCR, 0x42);
        assert_eq!(u.port_read(UART_SCR, 4), 0xffff_ff42);
        assert_eq!(u.port_read(UART_SCR, 2), 0xff42);
        for size in [0, 3, 5, 8, 255] {
            assert_eq!(u.port_read(COM1_BASE, size), u32::MAX);
            u.port_write(COM1_BASE, size, 0x41);
        }
        assert_eq!(u.port_read(0x2f8, 1), 0xff);
        u.port_write(0x2f8, 1, 0x41);
        u.port_write(u16::MAX, 4, u32::MAX);
        assert_eq!(u.port_read(u16::MAX, 4), u32::MAX);
        // LSR and MSR writes are ignored; MCR keeps only its five bits.
        outb(&mut u, UART_LSR, 0);
        assert_eq!(inb(&mut u, UART_LSR) & (lsr::THRE | lsr::TEMT), lsr::THRE | lsr::TEMT);
        outb(&mut u, UART_MCR, 0xff);
        assert_eq!(inb(&mut u, UART_MCR), mcr::WRITABLE);
        assert!(output(&mut u).is_empty());
        assert!(u.claims(COM1_BASE + 7) && !u.claims(COM1_BASE + 8) && !u.claims(COM1_BASE - 1));
    }

    #[test]
    fn every_byte_to_every_register_is_safe() {
        let mut u = Uart16550::com1();
        for lcr_value in [0, lcr::DLAB] {
            for offset in 0..PORT_COUNT {
                for value in 0..=u8::MAX {
                    outb(&mut u, UART_LCR, lcr_value);
                    outb(&mut u, COM1_BASE + offset, value);
                    u.port_read(COM1_BASE + offset, 1);
                    u.push_input(&[value]);
                    u.irq_level();
                }
            }
        }
    }

    #[test]
    fn output_is_bounded_and_counts_drops() {
        let mut u = Uart16550::com1();
        for i in 0..OUTPUT_CAPACITY + 10 {
            outb(&mut u, UART_TX, i as u8);
        }
        assert_eq!(u.output_dropped(), 10);
        // A partial drain leaves the rest.
        assert_eq!(u.take_output().take(4).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(u.take_output().count(), OUTPUT_CAPACITY - 4);
    }
}
