//! Small helpers shared by every command: progress lines, running tools with errors
//! that say what to do, and emulator processes that never outlive xtask.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context as _, Result};

/// Prints one `==> ...` progress line.
pub fn step(msg: impl std::fmt::Display) {
    println!("==> {msg}");
}

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `path` relative to the repo root when it is inside it (for shorter messages).
pub fn show(path: &Path) -> String {
    let root = repo_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A command as a shell-like string, for messages and BENCHMARKS.md.
pub fn render(cmd: &Command) -> String {
    let mut s = String::new();
    for part in std::iter::once(cmd.get_program()).chain(cmd.get_args()) {
        let p = part.to_string_lossy();
        if !s.is_empty() {
            s.push(' ');
        }
        if p.is_empty() || p.contains(|c: char| c.is_whitespace() || "\"'$`\\;&|<>()*?".contains(c))
        {
            let _ = write!(s, "'{}'", p.replace('\'', r"'\''"));
        } else {
            s.push_str(&p);
        }
    }
    s
}

/// The `cargo` that runs us (so the pinned toolchain is used), or plain `cargo`.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(repo_root());
    c
}

fn spawn_error(cmd: &Command, e: std::io::Error) -> anyhow::Error {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("`{prog}` is not installed or not on PATH (run `cargo xtask setup` to install the host tools)")
    } else {
        anyhow::anyhow!("could not start `{prog}`: {e}")
    }
}

/// Runs `cmd` with inherited stdio; fails with `what` if it does not succeed.
pub fn run_inherit(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); the command was:\n    {}",
            render(cmd)
        );
    }
    Ok(())
}

/// Runs `cmd` capturing its output; on failure the output is part of the error.
pub fn run_captured(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_output(cmd, what)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like `run_captured`, but returns stderr too (compilers warn there).
pub fn run_output(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}); the command was:\n    {}\n{}{}",
            out.status,
            render(cmd),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// First line of `prog --version`-like output, or a note that it is missing.
pub fn tool_version(prog: &str, args: &[&str]) -> String {
    match Command::new(prog).args(args).stdin(Stdio::null()).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            let text = String::from_utf8_lossy(&text);
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("?")
                .to_string()
        }
        Err(_) => format!("{prog}: not installed"),
    }
}

/// Process groups of emulators that are running, killed on Ctrl-C.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Installs the Ctrl-C handler that stops every emulator we started.
pub fn install_ctrlc_handler() {
    let _ = ctrlc::set_handler(|| {
        for &pgid in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        eprintln!("\ninterrupted: stopped the emulators that were running");
        std::process::exit(130);
    });
}

/// An emulator running in its own process group, so that stopping it stops
/// everything it started; killed when dropped.
pub struct Emulator {
    child: Child,
    pgid: i32,
}

impl Emulator {
    /// Starts `cmd` with stdin from /dev/null and stdout+stderr into `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Die with xtask even if it is killed without a chance to clean up.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| spawn_error(cmd, e))?;
        let pgid = child.id() as i32;
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
        Ok(Self { child, pgid })
    }

    /// `Some(status)` once the emulator has exited by itself.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the whole process group and reaps the emulator.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&g| g != self.pgid);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a whole (possibly still growing) file as lossy UTF-8; empty if absent.
pub fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Lines of a serial log, without `\r` and other terminal noise at the ends.
pub fn log_lines(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|l| l.trim_end_matches(['\r', '\0']))
        .collect()
}

/// The last `n` lines of `text`, indented, for failure reports.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = log_lines(text.trim_end());
    let start = lines.len().saturating_sub(n);
    let mut s = String::new();
    for l in &lines[start..] {
        let _ = writeln!(s, "    | {l}");
    }
    s
}

/// Whether a file exists and is executable by someone.
pub fn on_path(prog: impl AsRef<OsStr>) -> bool {
    let prog = prog.as_ref();
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
