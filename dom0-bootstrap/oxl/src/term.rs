//! The terminal: raw mode for `console` and single keys for `top`, always
//! restored (on return, on a stop signal, on a panic), and the stop signals
//! that let `create` clean up instead of dying half way.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Waiting for keys between refreshes; tests script it.
pub trait Input {
    /// Waits up to `timeout` for key presses and returns them (empty: none, or
    /// the wait was interrupted by a signal).
    fn wait(&mut self, timeout: Duration) -> io::Result<Vec<u8>>;

    /// Waits up to `timeout` for keys (only if `read`) or for `event` to be
    /// readable (a descriptor poll(2) watches: `/dev/oxen` subscribed to
    /// console events), whichever comes first; returns the keys (empty: none,
    /// the event, the timeout or a signal). Without an event descriptor and
    /// not reading, it just sleeps.
    fn wait_event(&mut self, timeout: Duration, read: bool, event: Option<RawFd>) -> io::Result<Vec<u8>> {
        let _ = event;
        if read {
            self.wait(timeout)
        } else {
            std::thread::sleep(timeout);
            Ok(Vec::new())
        }
    }

    /// Whether the input has ended (end of file on a pipe, a hung-up
    /// terminal): `wait` then only sleeps.
    fn ended(&self) -> bool {
        false
    }

    /// Whether a person types (a terminal) rather than a script (a pipe or
    /// file, whose bytes `wait` returns as they come; see `Mode::Raw`).
    fn is_terminal(&self) -> bool {
        true
    }
}

/// How `Keyboard` sets up the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every byte as typed, nothing echoed, no signals from keys (Ctrl-C is a
    /// byte); output processing stays on so "\n" still returns the carriage.
    /// When standard input is not a terminal its bytes are read all the same
    /// (`console` sends them to the domain).
    Raw,
    /// Keys without Enter and without echo; Ctrl-C still interrupts.
    Keys,
}

/// The settings to put back, also for the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Standard input as keys. When it is not a terminal, in `Mode::Raw` its
/// bytes are read as they come; in `Mode::Keys` nothing is read and `wait`
/// only sleeps.
pub struct Keyboard {
    tty: bool,
    /// Read standard input even though it is not a terminal.
    pipe: bool,
    /// End of input seen.
    ended: bool,
}

impl Keyboard {
    pub fn new(mode: Mode) -> Self {
        // SAFETY: isatty(3) only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        if tty {
            // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: `t` is a valid termios to write to.
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0 {
                *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                let mut new = t;
                match mode {
                    Mode::Raw => {
                        // SAFETY: `new` is a valid termios.
                        unsafe { libc::cfmakeraw(&mut new) };
                        new.c_oflag |= libc::OPOST | libc::ONLCR;
                    }
                    Mode::Keys => new.c_lflag &= !(libc::ICANON | libc::ECHO),
                }
                new.c_cc[libc::VMIN] = 1;
                new.c_cc[libc::VTIME] = 0;
                // SAFETY: `new` is a valid termios.
                unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &new) };
            }
        }
        Self {
            tty,
            pipe: !tty && mode == Mode::Raw,
            ended: false,
        }
    }
}

impl Drop for Keyboard {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was before `Keyboard::new`, if it changed it.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: `t` came from tcgetattr.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

impl Input for Keyboard {
    fn ended(&self) -> bool {
        self.ended
    }

    fn is_terminal(&self) -> bool {
        self.tty
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        self.wait_event(timeout, true, None)
    }

    fn wait_event(&mut self, timeout: Duration, read: bool, event: Option<RawFd>) -> io::Result<Vec<u8>> {
        let keys = read && !self.ended && (self.tty || self.pipe);
        let mut fds = [
            libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: event.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
        ];
        // A negative descriptor is ignored by poll(2): one call for any mix.
        if !keys {
            fds[0].fd = -1;
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: two valid pollfds in an array we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        if !keys || fds[0].revents == 0 {
            // The timeout, or the event: the caller looks at the hypervisor.
            return Ok(Vec::new());
        }
        // A pipe may bring a script's worth at once; keys come a few at a time.
        let mut buf = [0u8; 4096];
        // SAFETY: reads at most buf.len() bytes into `buf`.
        let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            // A signal: nothing typed; the caller looks at the stop flag.
            return Ok(Vec::new());
        }
        if got <= 0 {
            // End of input (a pipe's end, a hung-up terminal, EIO): from now
            // on it is not polled, so a caller never spins on it. (Returning
            // at once: the caller's deadlines decide how long it waits next.)
            self.ended = true;
            return Ok(Vec::new());
        }
        Ok(buf[..got as usize].to_vec())
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP once `catch_stop_signals` ran.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag (`stop_requested`),
/// so the command can undo what it started and restore the terminal. Blocking
/// calls return early (no SA_RESTART) so the flag is seen promptly.
pub fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask;
        // the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Restores the terminal before the default panic message (the release build
/// aborts on panic, so `Keyboard`'s Drop would never run).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        default(info);
    }));
}
