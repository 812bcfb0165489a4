//! The console: `print!`/`println!` through `CONSOLE_WRITE`, a line at a time
//! (one hypercall per line, so lines from different guests never interleave
//! mid-line in the hypervisor's log).

use core::fmt::{self, Write};

/// Bytes gathered before a hypercall; longer lines go out in pieces.
const LINE: usize = 256;

/// A stack buffer that writes itself to the console when full and when dropped.
pub struct LineWriter {
    buf: [u8; LINE],
    len: usize,
}

impl LineWriter {
    pub const fn new() -> Self {
        Self { buf: [0; LINE], len: 0 }
    }

    pub fn flush(&mut self) {
        crate::hypercall::console_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Default for LineWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.len > 0 {
            self.flush();
        }
    }
}

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments<'_>, newline: bool) {
    let mut w = LineWriter::new();
    let _ = w.write_fmt(args);
    if newline {
        let _ = w.write_str("\n");
    }
}

/// Prints to the domain's console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_args(format_args!($($arg)*), false) };
}

/// Prints a line to the domain's console (one `CONSOLE_WRITE` when it fits in
/// 256 bytes).
#[macro_export]
macro_rules! println {
    () => { $crate::console::print_args(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::console::print_args(format_args!($($arg)*), true) };
}
