//! `cargo xtask run`: boot the hypervisor interactively, serial on the terminal.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::emu::{
    connect, detect_accel, free_port, Accel, BochsCom1, Com1Server, Com1Stream, Emulator, Machine, Serial, HALT_MARKER,
};
use crate::util::{render, show, step, Emulator as Proc};

pub fn run(m: &mut Machine, accel: Option<Accel>, iso: &Path) -> Result<()> {
    match m.emulator {
        Emulator::Qemu => {
            m.accel = match accel {
                Some(a) => {
                    step(format!("accelerator {a} (from --accel)"));
                    a
                }
                None => {
                    let (a, why) = detect_accel();
                    step(format!("accelerator {a}: {why}"));
                    a
                }
            };
            let mut cmd = m.qemu(iso, Serial::Terminal);
            step(format!(
                "booting under QEMU (quit: Ctrl-\\ x; QEMU monitor: Ctrl-\\ c): {}",
                render(&cmd)
            ));
            // QEMU stays in our process group so it can read the terminal.
            let status = cmd.status()?;
            if !status.success() {
                bail!("QEMU exited with {status}");
            }
            Ok(())
        }
        Emulator::Bochs => {
            if accel == Some(Accel::Kvm) {
                bail!("--accel kvm is for QEMU; Bochs always emulates");
            }
            let dir = iso.parent().expect("ISO is in a directory");
            let port = free_port()?;
            let mut cmd = m.bochs(dir, "oxen.iso", BochsCom1::Socket(port))?;
            let serial = dir.join("serial.log");
            step(format!(
                "booting under Bochs in {} (`{}`); COM1 on this terminal (a copy in {}), Ctrl-\\ quits",
                show(dir),
                render(&cmd),
                show(&serial)
            ));
            let mut proc = Proc::spawn(&mut cmd, &dir.join("emulator.log"))?;
            let stream = connect(&Com1Server::Tcp(port), &mut proc)?;
            let result = relay_terminal(stream, &serial, &mut proc);
            proc.kill();
            result
        }
    }
}

/// COM1 on the terminal: what Bochs prints goes to stdout (and `log`), what
/// the user types goes to COM1 byte by byte (raw mode, so Ctrl-A and Ctrl-C
/// reach the guest), until Ctrl-\, the hypervisor's halt line or Bochs' exit.
fn relay_terminal(stream: Com1Stream, log: &Path, proc: &mut Proc) -> Result<()> {
    // Ctrl-\, as QEMU's escape under `cargo xtask run`; Ctrl-] is oxl console's.
    const QUIT: u8 = 0x1c;
    let done = Arc::new(AtomicBool::new(false));
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let mut file = std::fs::File::create(log)?;
    let out_done = done.clone();
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut tail = Vec::new();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = file.write_all(&buf[..n]);
            let mut out = std::io::stdout().lock();
            // Raw mode: a bare LF would not return the cursor.
            for &b in &buf[..n] {
                let _ = if b == b'\n' { out.write_all(b"\r\n") } else { out.write_all(&[b]) };
            }
            let _ = out.flush();
            tail.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&tail).contains(HALT_MARKER) {
                break;
            }
            let keep = tail.len().saturating_sub(256);
            tail.drain(..keep);
        }
        out_done.store(true, Ordering::SeqCst);
    });
    let _raw = RawTerminal::enter();
    // Standard input is read on its own thread; this one watches for the end.
    let in_done = done.clone();
    std::thread::spawn(move || {
        // End of input (not a terminal) only stops typing; Ctrl-\ stops the run.
        let mut byte = [0u8; 1];
        while std::io::stdin().read(&mut byte).map(|n| n == 1).unwrap_or(false) {
            if byte[0] == QUIT {
                in_done.store(true, Ordering::SeqCst);
                break;
            }
            if writer.write_all(&byte).is_err() {
                break;
            }
        }
    });
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if done.load(Ordering::SeqCst) {
            break;
        }
        if let Some(status) = proc.try_wait() {
            drop(_raw);
            bail!("Bochs exited ({status}); its log is {}", show(&log.with_file_name("emulator.log")));
        }
    }
    drop(_raw);
    if output.is_finished() {
        step("the hypervisor halted (or COM1 closed); stopped Bochs");
    } else {
        step("Ctrl-\\: stopped Bochs");
    }
    Ok(())
}

/// The terminal in raw mode (no echo, no line editing, no signals from keys)
/// while this lives, if standard input is one; restored on drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own; a failure
        // (not a terminal) leaves the mode alone.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 0 || libc::tcgetattr(0, &mut t) != 0 {
                return Self(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Self(None);
            }
            Self(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
