//! Thin wrappers over the Linux syscalls the core needs that `nix` does not cover (clone3,
//! pidfds, close_range, execveat, namespace type queries) and small /proc readers.
//!
//! Functions marked async-signal-safe make one raw syscall and touch no allocator or lock: they
//! are the only ones the clone child may call.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// clone3 flag: start the child in the cgroup whose directory fd is `CloneArgs::cgroup` (5.7).
/// Defined here because libc's constant is a 32-bit int that cannot hold it.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`): the layout is fixed by the
/// kernel ABI, all fields 64-bit.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone3 without a new stack: returns twice like fork (0 in the child). Async-signal-safe.
///
/// # Safety
/// In a multi-threaded caller the child may only run async-signal-safe code until it execs or
/// exits.
pub unsafe fn clone3(args: &mut CloneArgs) -> libc::c_long {
    // SAFETY: the kernel reads `size_of::<CloneArgs>()` bytes from a valid, live struct.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

/// clone(2) with fork semantics (no new stack), for kernels without clone3. With CLONE_PIDFD
/// the pidfd is stored in `*pidfd`. Async-signal-safe.
///
/// # Safety
/// As for [`clone3`].
pub unsafe fn clone_legacy(flags: u64, pidfd: *mut libc::c_int) -> libc::c_long {
    // SAFETY: no stack switch (0 = share the caller's stack copy, as fork does); the parent tid
    // slot (third argument on every architecture) receives the pidfd with CLONE_PIDFD.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            pidfd,
            0usize,
            0usize,
        )
    }
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH): runs the file behind `fd`. Async-signal-safe;
/// returns only on failure, with the raw errno.
///
/// # Safety
/// `argv` and `envp` must be NULL-terminated arrays of valid C strings.
pub unsafe fn execveat_fd(
    fd: RawFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> libc::c_int {
    // SAFETY: the caller guarantees argv/envp; the empty path is a static C string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv,
            envp,
            libc::AT_EMPTY_PATH,
        );
        *libc::__errno_location()
    }
}

/// close_range(first, u32::MAX, CLOSE_RANGE_CLOEXEC): marks every fd from `first` on
/// close-on-exec. Async-signal-safe; returns the raw result.
pub fn cloexec_from(first: u32) -> libc::c_int {
    // SAFETY: close_range only changes fd flags of this process.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) as libc::c_int
    }
}

/// Marks every fd from `first` on close-on-exec; falls back to walking /proc/self/fd on
/// kernels without close_range (only for single-threaded callers: it allocates).
pub fn set_cloexec_from(first: RawFd) -> io::Result<()> {
    if cloexec_from(first as u32) == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(err);
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on an fd number only changes its flags (EBADF for the dir fd that is
        // already closed is harmless).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a NULL siginfo makes the kernel fill in a kill(2)-like one.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind `pidfd` has exited (it may still be an unreaped zombie).
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without blocking.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Blocks until the process behind `pidfd` has exited, at most `timeout_ms` (-1: no limit).
/// Returns whether it exited.
pub fn pidfd_wait_exit(pidfd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polls one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return rc > 0;
    }
}

/// How the process behind `pidfd` ended, as a wait status, if it is a child of ours that has
/// ended and not been reaped yet. Does not reap.
pub fn pidfd_peek_exit(pidfd: BorrowedFd<'_>) -> Option<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::PIDFd(pidfd), flags) {
        Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Some(ws),
        _ => None,
    }
}

/// Whether the process behind `pidfd` is a child of ours that has not been reaped yet (alive or
/// zombie). Does not reap.
pub fn pidfd_is_unreaped_child(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: zeroed siginfo is a valid out buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT|WNOHANG only inspects; P_PIDFD takes the fd as id.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns only reads the fd and flags.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CLONE_NEW* type of a namespace fd (ioctl NS_GET_NSTYPE).
pub fn ns_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type or -1.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Duplicates `fd` to the lowest free number >= `min`, close-on-exec.
pub fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd or fails.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own the fresh duplicate.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Creates an executable memfd (close-on-exec, sealable).
pub fn memfd_create_exec(name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: the name is a valid C string; flags are plain bits.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 6.3 do not know MFD_EXEC; their memfds are executable anyway.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Fields of `/proc/<pid>/stat` the core needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (R, S, D, Z, T, t, X, I …).
    pub state: char,
    /// Field 22: start time in clock ticks since boot; with the pid it names one process.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// The comm field may contain spaces and parentheses: everything after the last ')' is
/// space-separated, starting with field 3 (state).
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // state is field 3; start time is field 22, i.e. 18 more fields on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// "ENOENT: No such file or directory"-style rendering of a raw errno.
pub fn errno_text(errno: i32) -> String {
    let name = nix::errno::Errno::from_raw(errno);
    format!("{name:?}: {}", name.desc())
}

/// A new pty pair on the devpts behind `/dev/ptmx`: (master, slave), both close-on-exec. The
/// slave is opened through the master (TIOCGPTPEER), with no path lookup to race with.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .map_err(|e| step("open /dev/ptmx", e))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a live stack value.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(step("unlock pty", io::Error::last_os_error()));
    }
    // SAFETY: TIOCGPTPEER returns a new fd or -1.
    let raw = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(step("open pty slave", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd, owned from here.
    Ok((master, unsafe { OwnedFd::from_raw_fd(raw) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parses_comm_with_spaces_and_parens() {
        let line = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_proc_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.start_time, 987654);
    }

    #[test]
    fn proc_stat_of_self_is_running_and_stable() {
        let me = std::process::id() as i32;
        let a = proc_stat(me).unwrap();
        let b = proc_stat(me).unwrap();
        assert_eq!(a.start_time, b.start_time);
        assert!(proc_stat(-5).is_none());
    }

    #[test]
    fn ns_type_of_own_namespaces() {
        use std::os::fd::AsFd;
        let f = std::fs::File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_type(f.as_fd()).unwrap(), libc::CLONE_NEWNET);
        let f = std::fs::File::open("/proc/self/ns/pid").unwrap();
        assert_eq!(ns_type(f.as_fd()).unwrap(), libc::CLONE_NEWPID);
    }

    #[test]
    fn errno_text_names_the_errno() {
        assert!(errno_text(libc::ENOENT).starts_with("ENOENT"));
    }
}
