//! The hypervisor's console: COM1 behind the `log` facade.
//!
//! Every line the hypervisor prints starts with `(oxen) `, so a reader (or a test)
//! can tell it from guest output. Lines are written whole under one lock, so lines
//! from different CPUs never interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use uart_16550::{backend::PioBackend, Config, Uart16550};

/// COM1's I/O base. The hypervisor owns this UART; guests never reach it.
pub const COM1_PORT: u16 = 0x3f8;

struct Serial(Option<Uart16550<PioBackend>>);

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.0.as_mut() {
            for b in s.bytes() {
                if b == b'\n' {
                    uart.send_bytes_exact(b"\r");
                }
                uart.send_bytes_exact(&[b]);
            }
        }
        Ok(())
    }
}

static SERIAL: Mutex<Serial> = Mutex::new(Serial(None));

/// The hypervisor's own lines, for `oxl dmesg` (domctl DMESG). Taken only
/// under `SERIAL`'s lock.
/// A static (it records from the first line, before the heap exists), of
/// Xen's default console-ring size times two.
static LOG: Mutex<crate::domain::ring::Ring<[u8; LOG_BYTES]>> = Mutex::new(crate::domain::ring::Ring::new_array());
const LOG_BYTES: usize = 32 * 1024;

/// Copies what is written to the log ring as well as to COM1.
struct Tee<'a>(&'a mut Serial);

impl Write for Tee<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        LOG.lock().write(s.as_bytes());
        self.0.write_str(s)
    }
}

/// Reads the hypervisor's log from `offset` (see `Ring::read`).
pub fn read_log(offset: u64, out: &mut [u8]) -> crate::domain::ring::ReadResult {
    let _serial = SERIAL.lock();
    LOG.lock().read(offset, out)
}
/// Whether a guest's console line is open (printed without its newline yet):
/// a hypervisor line then starts on a fresh line, and the guest's next byte
/// gets its tag again. Changed only under the `SERIAL` lock.
static GUEST_LINE_OPEN: AtomicBool = AtomicBool::new(false);

/// dom0's kernel writes its boot log to COM1 itself (`vm::platform`'s direct
/// path): where its line stands is unknown here, so hypervisor lines are held
/// (`PENDING`) while this is set; the path is closed at dom0's next look at its
/// devices (`lines_held`), and they are printed when dom0 ends its line
/// through the emulated UART, or `HOLD_NS` after they came.
static GUEST_DIRECT: AtomicBool = AtomicBool::new(false);

/// Opens the direct path for dom0: true unless a guest line is open or
/// hypervisor lines are held (then the emulated UART ends the line first).
pub fn direct_begin() -> bool {
    let _serial = SERIAL.lock();
    if HAS_PENDING.load(Ordering::Relaxed) || GUEST_LINE_OPEN.load(Ordering::Relaxed) {
        return false;
    }
    GUEST_DIRECT.store(true, Ordering::Relaxed);
    true
}

/// Closes it. dom0 may have stopped in the middle of a line: the line is
/// taken as open, so its next bytes continue it and a hypervisor line starts
/// on a fresh one.
pub fn direct_end() {
    let _serial = SERIAL.lock();
    GUEST_DIRECT.store(false, Ordering::Relaxed);
    GUEST_LINE_OPEN.store(true, Ordering::Relaxed);
    GUEST_LAST_NS.store(crate::arch::x86_64::time::now_ns(), Ordering::Relaxed);
}

/// Whether hypervisor lines wait to be printed (a direct path should close).
pub fn lines_held() -> bool {
    HAS_PENDING.load(Ordering::Relaxed)
}

/// Hypervisor lines held back while a guest is in the middle of a line, so a
/// guest's line (a dom0 command's output) is not cut in two. They are printed
/// when the guest ends its line, or once it has been quiet for
/// `HOLD_NS` (a prompt waiting for input), or when too many pile up.
static PENDING: Mutex<alloc::string::String> = Mutex::new(alloc::string::String::new());
static HAS_PENDING: AtomicBool = AtomicBool::new(false);
/// When the guest last wrote to its open line (TSC-derived ns).
static GUEST_LAST_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Longer than a few of the credit scheduler's 30 ms slices: dom0 preempted
/// in the middle of a line by a domU on its pCPU (or its emulator thread by
/// the host) finishes the line before a domU's echo cuts it. At 20 ms a
/// `(d0)` line of `dom0-linux-save-svm` was cut by its domU's counter, and
/// the test's pattern for it missed.
const HOLD_NS: u64 = 250_000_000;
const PENDING_MAX: usize = 16 * 1024;

/// Writes one hypervisor line now, or holds it back (see `PENDING`).
fn hypervisor_line(serial: &mut Serial, args: fmt::Arguments, may_hold: bool) {
    let now = crate::arch::x86_64::time::now_ns();
    let direct = GUEST_DIRECT.load(Ordering::Relaxed);
    let hold = may_hold
        && (direct
            || GUEST_LINE_OPEN.load(Ordering::Relaxed)
                && now.saturating_sub(GUEST_LAST_NS.load(Ordering::Relaxed)) < HOLD_NS);
    let mut pending = PENDING.lock();
    if hold && pending.len() < PENDING_MAX {
        if direct && pending.is_empty() {
            // `HOLD_NS` counts from now: dom0's writes are not seen here.
            GUEST_LAST_NS.store(now, Ordering::Relaxed);
        }
        let mut line = alloc::string::String::new();
        let _ = writeln!(line, "{args}");
        LOG.lock().write(line.as_bytes());
        pending.push_str(&line);
        HAS_PENDING.store(true, Ordering::Relaxed);
        return;
    }
    close_guest_line(serial);
    flush_held(serial, &mut pending);
    let _ = writeln!(Tee(serial), "{args}");
}

/// Prints the held-back lines (already in the log ring).
fn flush_held(serial: &mut Serial, pending: &mut alloc::string::String) {
    if !pending.is_empty() {
        let _ = serial.write_str(pending);
        pending.clear();
    }
    HAS_PENDING.store(false, Ordering::Relaxed);
}

/// Prints held-back hypervisor lines once the guest's open line has been
/// quiet for a while. Called by every CPU's loop.
pub fn flush_pending() {
    if !HAS_PENDING.load(Ordering::Relaxed) {
        return;
    }
    let now = crate::arch::x86_64::time::now_ns();
    if now.saturating_sub(GUEST_LAST_NS.load(Ordering::Relaxed)) < HOLD_NS {
        return;
    }
    let mut serial = SERIAL.lock();
    close_guest_line(&mut serial);
    flush_held(&mut serial, &mut PENDING.lock());
}

/// Ends an open guest line before a hypervisor line (one written directly may
/// be open).
fn close_guest_line(serial: &mut Serial) {
    if GUEST_LINE_OPEN.swap(false, Ordering::Relaxed) | GUEST_DIRECT.load(Ordering::Relaxed) {
        let _ = serial.write_str("\n");
    }
}
static LOGGER: Logger = Logger;

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug | log::Level::Trace => "debug: ",
        };
        let mut serial = SERIAL.lock();
        let may_hold = record.level() != log::Level::Error;
        hypervisor_line(&mut serial, format_args!("(oxen) {prefix}{}", record.args()), may_hold);
    }

    fn flush(&self) {}
}

/// Brings up COM1 and installs the logger. Called first thing on the boot CPU.
pub fn init() {
    // SAFETY: COM1's eight registers at 0x3f8 are a standard PC UART, owned by the
    // hypervisor for its whole life.
    let uart = unsafe { Uart16550::new_port(COM1_PORT) }.ok().and_then(|mut u| {
        let config = Config { baud_rate: uart_16550::BaudRate::Baud115200, ..Config::DEFAULT };
        u.init(config).ok().map(|()| u)
    });
    SERIAL.lock().0 = uart;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Prints `(oxen) ` and `args` whatever the log level: for the lines that
/// always matter (fatal errors, the final `halt:` line).
pub fn always(args: fmt::Arguments) {
    let mut serial = SERIAL.lock();
    hypervisor_line(&mut serial, format_args!("(oxen) {args}"), false);
}

/// A line of a domU's console, tagged: held back like the log's lines while
/// another guest is in the middle of a line.
pub fn domain_line(args: fmt::Arguments) {
    let mut serial = SERIAL.lock();
    hypervisor_line(&mut serial, format_args!("(oxen) {args}"), true);
}

/// A guest's console output, passed through as it comes so prompts show at
/// once, with `tag` (e.g. `(oxen) (d0) `) at the start of every line. A
/// hypervisor line printed meanwhile ends the guest's open line first. One
/// guest console stream at a time (dom0's).
pub fn write_guest(tag: &str, bytes: impl Iterator<Item = u8>) {
    let mut serial = SERIAL.lock();
    for b in bytes {
        if b == b'\r' {
            continue;
        }
        if !GUEST_LINE_OPEN.load(Ordering::Relaxed) {
            let _ = serial.write_str(tag);
        }
        let _ = serial.write_char(char::from(b));
        GUEST_LINE_OPEN.store(b != b'\n', Ordering::Relaxed);
        if b == b'\n' && HAS_PENDING.load(Ordering::Relaxed) {
            flush_held(&mut serial, &mut PENDING.lock());
        }
    }
    GUEST_LAST_NS.store(crate::arch::x86_64::time::now_ns(), Ordering::Relaxed);
}

/// One byte of serial input, if COM1 has one.
pub fn try_read_byte() -> Option<u8> {
    SERIAL.lock().0.as_mut()?.try_receive_byte().ok()
}

/// Writes straight to COM1 even if another CPU (or the interrupted code on this
/// one) holds the console lock. Only for crash reports, after which we halt.
pub fn emergency_print(args: fmt::Arguments) {
    // SAFETY: we are about to halt this CPU; garbling a line another CPU is writing
    // is better than deadlocking on the lock the crashed code may hold.
    unsafe { SERIAL.force_unlock() };
    let _ = SERIAL.lock().write_fmt(args);
}

/// Prints `FATAL: ...` and stops this CPU: for what the hypervisor cannot go
/// on without (never for anything a guest did but dom0's own end).
pub fn fatal(args: fmt::Arguments) -> ! {
    always(format_args!("FATAL: {args}"));
    halt("fatal error")
}

/// Prints the final `(oxen) halt:` line and stops this CPU.
pub fn halt(reason: &str) -> ! {
    always(format_args!("halt: {reason}"));
    crate::arch::x86_64::halt_forever()
}
