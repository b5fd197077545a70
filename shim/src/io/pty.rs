//! Pseudo-terminals for `terminal: true` processes: the window size on the master (the pty
//! itself is allocated inside the container, see `ProcessIo::receive_console`), and host ptys
//! for the tests.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Allocates a host pty (tests stand in for the container with it). Both fds are close-on-exec and the slave is opened without becoming
/// anyone's controlling terminal; the container's setup makes it so.
#[cfg(test)]
pub(crate) fn open() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::{FromRawFd, OwnedFd};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // TIOCGPTPEER (Linux 4.13) opens the slave from the master itself, with no path lookup
    // in /dev/pts that a different devpts instance or a racing rename could redirect.
    // SAFETY: the ioctl takes open flags by value and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let slave = if fd >= 0 {
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    } else {
        let path = ptsname_r(&master)?;
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::from_bits_truncate(flags),
            nix::sys::stat::Mode::empty(),
        )?;
        fd
    };
    Ok((master.into(), slave))
}

/// Sets the window size (TIOCSWINSZ): the kernel sends SIGWINCH to the foreground group.
pub(crate) fn set_size(master: BorrowedFd<'_>, width: u16, height: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
