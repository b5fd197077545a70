//! The terminal proxy of a foreground `run`/`exec` whose process has a terminal and no
//! `--console-socket` was given: the pty master comes back to us, our stdin (raw while
//! proxying, when it is a terminal) is copied to it and its output to our stdout, and our
//! window size follows SIGWINCH.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Our stdin's terminal settings, restored on drop.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Puts stdin in raw mode when it is a terminal (keys go to the container unprocessed).
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw) {
                log::warn!("raw mode on stdin: {e}");
            }
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// Gives the pty `master` our stdin's window size, when stdin is a terminal.
pub fn copy_window_size(master: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we pass; a non-terminal stdin just fails.
    if unsafe { get_winsize(std::io::stdin().as_raw_fd(), &mut ws) }.is_ok() {
        // SAFETY: TIOCSWINSZ reads the winsize we pass.
        let _ = unsafe { set_winsize(master.as_raw_fd(), &ws) };
    }
}

/// Copies stdin to `master` (in a thread that ends with stdin) and `master` to stdout until
/// every holder of the slave has closed it (EIO on Linux).
pub fn proxy(master: OwnedFd) {
    copy_window_size(master.as_fd());
    if let Ok(input) = master.try_clone() {
        std::thread::spawn(move || {
            let mut to = std::fs::File::from(input);
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to);
        });
    }
    let mut from = std::fs::File::from(master);
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the slave side is closed for good.
            Err(_) => break,
        }
    }
}
