//! `cargo xtask run`: boot the hypervisor interactively, serial on the terminal.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::emu::{detect_accel, Accel, Emulator, Machine, Serial, HALT_MARKER};
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
                "booting under QEMU (quit: Ctrl-A X; monitor: Ctrl-A C): {}",
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
            let mut cmd = m.bochs(dir, "oxen.iso", "serial.log")?;
            let serial = dir.join("serial.log");
            std::fs::write(&serial, "")?;
            step(format!(
                "booting under Bochs in {} (`{}`); serial follows, Ctrl-C stops",
                show(dir),
                render(&cmd)
            ));
            let mut proc = Proc::spawn(&mut cmd, &dir.join("emulator.log"))?;
            let mut shown = 0;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let bytes = std::fs::read(&serial).unwrap_or_default();
                if bytes.len() > shown {
                    let _ = std::io::stdout().write_all(&bytes[shown..]);
                    let _ = std::io::stdout().flush();
                    shown = bytes.len();
                }
                if String::from_utf8_lossy(&bytes)
                    .lines()
                    .any(|l| l.contains(HALT_MARKER))
                {
                    proc.kill();
                    step("the hypervisor halted; stopped Bochs");
                    return Ok(());
                }
                if let Some(status) = proc.try_wait() {
                    bail!(
                        "Bochs exited ({status}); its log is {}",
                        show(&dir.join("emulator.log"))
                    );
                }
            }
        }
    }
}
