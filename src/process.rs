//! Runtime side of process creation: clones the child that becomes the setup helper.
//!
//! The caller may be multi-threaded (the shim), so everything that allocates happens before the
//! clone: the fd plan, argv/envp, the socketpair, the child's stack. The child only dup2s the
//! planned fds onto 0, 1, 2, 3, …, marks the rest close-on-exec and execs the helper binary by
//! fd. On any failure it writes a raw (step, errno) frame to fd 3 and exits 127.
//!
//! Usually the child shares the caller's memory on a small stack of its own and the caller's
//! thread is suspended until the exec (`CLONE_VM | CLONE_VFORK`, as `posix_spawn`): no copy of
//! the daemon's page tables, no copy-on-write faults after it. The helper then waits for its
//! plan on the socket. A child held before its exec ([`Spawn::hold`], and one that becomes root
//! of its new user namespace: the runtime writes the id maps first) is a fork that waits for
//! the go byte on fd 3 instead.
//!
//! Helper fd layout: 0-2 stdio, 3 the protocol socket, 4.. the preserved fds, then the extra
//! fds (namespaces to join, the init's pidfd for exec).

pub mod protocol;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::sys;
use protocol::Channel;

/// The container side of stdio.
#[derive(Debug)]
pub enum Stdio {
    /// /dev/null for all three.
    Null,
    /// Fds that become the process's 0, 1 and 2 (`None` → /dev/null).
    Fds {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// Either a pty slave that becomes 0, 1, 2 and the controlling terminal, or (like runc's
    /// --console-socket) a unix socket from [`crate::container::console_socket`]: the pty is then allocated in
    /// the container's own devpts, so `tty` names it, and its master is sent back there.
    Terminal(OwnedFd),
    /// Inherit the caller's 0, 1, 2.
    Inherit,
}

/// The protocol socket in the helper.
pub const SOCKET_FD: RawFd = 3;
/// The first preserved fd in the helper (it becomes 3 in the container process).
pub const FIRST_PRESERVED_FD: RawFd = 4;
/// `argv[0]` that marks a process as the setup helper.
pub const HELPER_ARGV0: &str = "pelagos-init";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("open /dev/null: {0}")]
    DevNull(io::Error),
    #[error("socketpair: {0}")]
    Socket(io::Error),
    #[error("prepare fd {target} of the helper: {source}")]
    Fd { target: usize, source: io::Error },
    #[error("clone: {0}")]
    Clone(io::Error),
}

/// What to clone.
pub struct Spawn<'a> {
    /// The helper executable (see `selfexe`).
    pub helper: BorrowedFd<'a>,
    pub stdio: Stdio,
    pub preserve_fds: Vec<OwnedFd>,
    /// Placed after the preserved fds, in order.
    pub extra_fds: Vec<OwnedFd>,
    /// CLONE_NEW* flags.
    pub clone_flags: libc::c_int,
    /// cgroup v2 directory for CLONE_INTO_CGROUP.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The child becomes uid/gid 0 of its new user namespace before exec (the runtime has
    /// written the maps by then), so the helper keeps its capabilities across execve. Implies
    /// `hold`.
    pub become_root: bool,
    /// The child waits before its exec for the go byte ([`Channel::send_byte`]).
    pub hold: bool,
}

/// A cloned child: the helper waiting for its plan, or (`held`) a child blocked before its
/// exec until the go byte.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub channel: Channel,
    /// Whether CLONE_INTO_CGROUP placed the child in the cgroup already.
    pub in_cgroup: bool,
    /// Helper fd number of the first extra fd.
    pub extra_fd_base: RawFd,
    /// The child waits for the go byte before its exec.
    pub held: bool,
}

/// Clone-child failure steps, as reported in the raw failure frame.
pub mod step {
    pub const DUP2: u32 = 1;
    pub const GO: u32 = 2;
    pub const SETRESGID: u32 = 3;
    pub const SETRESUID: u32 = 4;
    pub const EXEC: u32 = 5;

    pub fn name(step: u32) -> &'static str {
        match step {
            DUP2 => "dup2 stdio and fds",
            GO => "wait for the go byte",
            SETRESGID => "setresgid 0 in the user namespace",
            SETRESUID => "setresuid 0 in the user namespace",
            EXEC => "execveat of the setup helper",
            _ => "unknown step",
        }
    }
}

/// Everything the child reads; built before clone so the child allocates nothing.
struct ChildArgs {
    /// Source fd for helper fd i (every source is >= the length, so no dup2 clobbers one).
    fds: Vec<RawFd>,
    helper: RawFd,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    become_root: bool,
    /// Wait for the go byte before the exec.
    hold: bool,
    /// The runtime's end of the protocol socket: closed first, so that a runtime that dies
    /// before the go byte gives the child EOF instead of leaving it blocked.
    runtime_end: RawFd,
}

/// Clones the child (see the module docs). A held child blocks until [`Channel::send_byte`] is
/// called on the returned channel.
pub fn spawn(req: Spawn<'_>) -> Result<Spawned, ProcessError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| ProcessError::Socket(e.into()))?;

    let mut devnull: Option<OwnedFd> = None;
    let mut null = || -> Result<RawFd, ProcessError> {
        if devnull.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(ProcessError::DevNull)?;
            devnull = Some(f.into());
        }
        Ok(devnull.as_ref().expect("opened").as_raw_fd())
    };
    let stdio_fds: [RawFd; 3] = match &req.stdio {
        Stdio::Null => [null()?, null()?, null()?],
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        } => {
            let mut pick = |f: &Option<OwnedFd>| match f {
                Some(f) => Ok(f.as_raw_fd()),
                None => null(),
            };
            [pick(stdin)?, pick(stdout)?, pick(stderr)?]
        }
        Stdio::Terminal(slave) => [slave.as_raw_fd(); 3],
        Stdio::Inherit => [0, 1, 2],
    };
    let mut sources: Vec<RawFd> = stdio_fds.to_vec();
    sources.push(theirs.as_raw_fd());
    sources.extend(req.preserve_fds.iter().map(AsRawFd::as_raw_fd));
    sources.extend(req.extra_fds.iter().map(AsRawFd::as_raw_fd));
    let count = sources.len();
    // Move every source above the target range, so dup2 onto target i never closes a source
    // still needed for a later target.
    let mut high: Vec<OwnedFd> = Vec::with_capacity(count);
    for (target, fd) in sources.iter().enumerate() {
        let dup = match sys::dup_at_least(*fd, count as RawFd) {
            Ok(d) => d,
            Err(e)
                if matches!(req.stdio, Stdio::Inherit)
                    && target < 3
                    && e.raw_os_error() == Some(libc::EBADF) =>
            {
                sys::dup_at_least(null()?, count as RawFd)
                    .map_err(|source| ProcessError::Fd { target, source })?
            }
            Err(source) => return Err(ProcessError::Fd { target, source }),
        };
        high.push(dup);
    }

    // The helper fd must survive the dup2s too.
    let helper = sys::dup_at_least(req.helper.as_raw_fd(), count as RawFd).map_err(|source| {
        ProcessError::Fd {
            target: count,
            source,
        }
    })?;
    let argv0 = CString::new(HELPER_ARGV0).expect("no NUL");
    let args = ChildArgs {
        fds: high.iter().map(AsRawFd::as_raw_fd).collect(),
        helper: helper.as_raw_fd(),
        argv: vec![argv0.as_ptr(), std::ptr::null()],
        envp: vec![std::ptr::null()],
        become_root: req.become_root,
        hold: req.hold || req.become_root,
        runtime_end: ours.as_raw_fd(),
    };

    let (pid, pidfd, in_cgroup) = clone_child(&args, req.clone_flags, req.cgroup)?;
    // A spawn-like child has exec'd (or exited) by now; a forked one has its own copies.
    drop((high, helper, theirs, argv0));
    Ok(Spawned {
        pid,
        pidfd,
        channel: Channel::new(ours),
        in_cgroup,
        extra_fd_base: FIRST_PRESERVED_FD + req.preserve_fds.len() as RawFd,
        held: args.hold,
    })
}

/// Clones the child with all signals blocked in the calling thread, so no handler of the
/// caller runs in it; the helper unblocks them. A child that is not held shares our memory
/// until its exec ([`clone_vm`]); where that is not available, and for a held child, it is a
/// fork: clone3, falling back to clone(2) on old kernels.
fn clone_child(
    args: &ChildArgs,
    ns_flags: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(i32, OwnedFd, bool), ProcessError> {
    let _mask = BlockSignals::new();
    let mut pidfd: libc::c_int = -1;
    let base = libc::CLONE_PIDFD as u64 | ns_flags as u64;
    let stack = if args.hold || !cfg!(target_arch = "x86_64") {
        None
    } else {
        Some(ChildStack::new().map_err(ProcessError::Clone)?)
    };
    let mut attempt = |into_cgroup: Option<RawFd>| -> Result<libc::c_long, i32> {
        let mut ca = sys::CloneArgs {
            flags: base,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        if let Some(fd) = into_cgroup {
            ca.flags |= sys::CLONE_INTO_CGROUP;
            ca.cgroup = fd as u64;
        }
        if let Some(stack) = &stack {
            // Any failure (no clone3, no spawn-like clone on this architecture, a flag the
            // kernel refuses with CLONE_VM) is tried again as a fork, whose error counts.
            let flags = ca.flags;
            match clone_vm(&mut ca, stack, args) {
                Ok(pid) => return Ok(pid),
                Err(e) if e != libc::ENOSYS => log::debug!(
                    "spawn-like clone failed ({}), forking",
                    io::Error::from_raw_os_error(e)
                ),
                Err(_) => {}
            }
            ca.flags = flags;
            ca.stack = 0;
            ca.stack_size = 0;
        }
        // SAFETY: fork-like clone3; the child runs only child_main (async-signal-safe).
        let ret = unsafe { sys::clone3(&mut ca) };
        if ret == 0 {
            child_main(args);
        }
        if ret < 0 {
            Err(errno())
        } else {
            Ok(ret)
        }
    };
    let mut in_cgroup = cgroup.is_some();
    let mut ret = attempt(cgroup.map(|c| c.as_raw_fd()));
    if let Err(e) = ret {
        if cgroup.is_some() && e != libc::ENOSYS {
            log::debug!(
                "clone3 into cgroup failed ({}), cloning then moving the child",
                io::Error::from_raw_os_error(e)
            );
            in_cgroup = false;
            ret = attempt(None);
        }
    }
    if ret == Err(libc::ENOSYS) {
        in_cgroup = false;
        // SAFETY: as above; the exit signal goes in the low byte of the flags.
        let r = unsafe { sys::clone_legacy(base | libc::SIGCHLD as u64, &mut pidfd) };
        if r == 0 {
            child_main(args);
        }
        ret = if r < 0 { Err(errno()) } else { Ok(r) };
    }
    let pid = ret.map_err(|e| ProcessError::Clone(io::Error::from_raw_os_error(e)))?;
    // SAFETY: CLONE_PIDFD stored a fresh fd that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as i32, pidfd, in_cgroup))
}

/// The spawn-like child's stack: mapped per spawn, with a guard page below it.
struct ChildStack {
    base: *mut libc::c_void,
}

impl ChildStack {
    /// child_main and the syscalls it makes need a few hundred bytes.
    const SIZE: usize = 64 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<ChildStack> {
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::GUARD + Self::SIZE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base };
        // SAFETY: the range lies inside the mapping made above.
        let usable = unsafe {
            libc::mprotect(
                (base as *mut u8).add(Self::GUARD) as *mut libc::c_void,
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if usable < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The lowest usable address (clone3 starts the stack pointer at `low + SIZE`).
    fn low(&self) -> u64 {
        self.base as u64 + Self::GUARD as u64
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); the child that ran on it has
        // exec'd or exited before clone_vm returned.
        unsafe { libc::munmap(self.base, Self::GUARD + Self::SIZE) };
    }
}

/// clone3 with `CLONE_VM | CLONE_VFORK` on `stack`: the child runs [`vm_child_entry`] there
/// while this thread waits in the kernel until the child has exec'd or exited, so `args` and
/// the stack outlive its use of them. Returns the pid or the errno.
#[cfg(target_arch = "x86_64")]
fn clone_vm(
    ca: &mut sys::CloneArgs,
    stack: &ChildStack,
    args: &ChildArgs,
) -> Result<libc::c_long, i32> {
    ca.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    ca.stack = stack.low();
    ca.stack_size = ChildStack::SIZE as u64;
    let entry: extern "C" fn(*const ChildArgs) -> ! = vm_child_entry;
    let ret: libc::c_long;
    // SAFETY: the raw clone3 syscall. In the parent only rax (the result), rcx and r11 (the
    // syscall instruction's) change. The child starts on the new stack (16-byte aligned top)
    // with the same registers but rax = 0, and at once calls the entry, which never returns;
    // `entry` and `arg` are in registers the syscall keeps (out, not lateout, rcx/r11). The
    // child shares our memory but only reads `args`, and this thread is suspended until it
    // execs or exits (CLONE_VFORK).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, {arg}",
            "call {entry}",
            "ud2",
            "2:",
            entry = in(reg) entry,
            arg = in(reg) args as *const ChildArgs,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") ca as *mut sys::CloneArgs,
            in("rsi") std::mem::size_of::<sys::CloneArgs>(),
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        Err(-ret as i32)
    } else {
        Ok(ret)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_vm(
    _ca: &mut sys::CloneArgs,
    _stack: &ChildStack,
    _args: &ChildArgs,
) -> Result<libc::c_long, i32> {
    Err(libc::ENOSYS)
}

/// Where the spawn-like child starts, on its own stack.
#[cfg(target_arch = "x86_64")]
extern "C" fn vm_child_entry(args: *const ChildArgs) -> ! {
    // SAFETY: the parent keeps `args` alive and unchanged until this child execs or exits.
    child_main(unsafe { &*args })
}

/// The clone child. Async-signal-safe only: raw syscalls on prepared data, no allocation. A
/// spawn-like child shares the parent's memory (and its thread's errno): it writes nothing
/// but its own stack.
fn child_main(args: &ChildArgs) -> ! {
    // SAFETY: closes this child's copy of an fd the parent keeps; no source of the plan.
    unsafe { libc::close(args.runtime_end) };
    for (target, src) in args.fds.iter().enumerate() {
        // SAFETY: dup2 on fds we own in this (single-threaded) child.
        if unsafe { libc::dup2(*src, target as libc::c_int) } < 0 {
            child_fail(step::DUP2, errno());
        }
    }
    // Failure here is not fatal: the helper checks again before it execs anything.
    let _ = sys::cloexec_from(args.fds.len() as u32);
    if args.hold {
        wait_for_go();
    }
    if args.become_root {
        // Raw syscalls: glibc's wrappers would try to synchronise threads that only exist in
        // the parent.
        // SAFETY: setresgid/setresuid take plain ids.
        if unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) } < 0 {
            child_fail(step::SETRESGID, errno());
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) } < 0 {
            child_fail(step::SETRESUID, errno());
        }
    }
    // SAFETY: argv/envp are NULL-terminated arrays of live C strings built before clone.
    let e = unsafe { sys::execveat_fd(args.helper, args.argv.as_ptr(), args.envp.as_ptr()) };
    child_fail(step::EXEC, e)
}

/// A held child's wait for the runtime's go byte on fd 3; EOF means the runtime gave up.
fn wait_for_go() {
    let mut go = 0u8;
    loop {
        // SAFETY: reads one byte into a stack buffer.
        let n = unsafe { libc::read(SOCKET_FD, &mut go as *mut u8 as *mut libc::c_void, 1) };
        if n == 1 {
            return;
        }
        if n == 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(127) };
        }
        if errno() != libc::EINTR {
            child_fail(step::GO, errno());
        }
    }
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn child_fail(step: u32, errno: i32) -> ! {
    let mut frame = [0u8; 12];
    frame[..4].copy_from_slice(&protocol::CHILD_FAILURE.to_le_bytes());
    frame[4..8].copy_from_slice(&step.to_le_bytes());
    frame[8..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: write and _exit are async-signal-safe; the frame is on the stack.
    unsafe {
        libc::write(
            SOCKET_FD,
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
        );
        libc::_exit(127)
    }
}

/// Blocks every signal in the calling thread until dropped.
struct BlockSignals {
    old: libc::sigset_t,
}

impl BlockSignals {
    fn new() -> BlockSignals {
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask fill valid buffers.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            BlockSignals { old }
        }
    }
}

impl Drop for BlockSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn spawn_blocked(cgroup: Option<BorrowedFd<'_>>, flags: libc::c_int) -> Spawned {
        // Never exec'd: the child is dropped before the go byte.
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        spawn(Spawn {
            helper: exe.as_fd(),
            stdio: Stdio::Null,
            preserve_fds: Vec::new(),
            extra_fds: Vec::new(),
            clone_flags: flags,
            cgroup,
            become_root: false,
            hold: true,
        })
        .unwrap()
    }

    /// Kills the child still waiting for its go byte. (Not EOF: a child cloned concurrently by
    /// another test holds a copy of the socket until it execs, which these never do.)
    fn finish(s: Spawned) -> i32 {
        crate::sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL).unwrap();
        crate::reaper::wait(s.pid, None).unwrap().status
    }

    #[test]
    fn clone_into_a_cgroup2_directory() {
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && !p.join("tasks").exists());
        let Some(unified) = unified else {
            eprintln!("no cgroup2 mount: skipped");
            return;
        };
        let dir = unified.join(format!("pelagos-clone-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let s = spawn_blocked(Some(fd.as_fd()), 0);
        assert!(s.in_cgroup);
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid)).unwrap();
        let want = format!("0::/{}", dir.strip_prefix(unified).unwrap().display());
        assert!(cg.lines().any(|l| l == want), "{cg}");
        assert_eq!(finish(s), 137);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn clone_with_new_namespaces_and_pidfd() {
        let s = spawn_blocked(None, libc::CLONE_NEWPID | libc::CLONE_NEWNET);
        assert!(!s.in_cgroup);
        let theirs = std::fs::read_link(format!("/proc/{}/ns/net", s.pid)).unwrap();
        assert_ne!(theirs, std::fs::read_link("/proc/self/ns/net").unwrap());
        assert!(!crate::sys::pidfd_exited(s.pidfd.as_fd()));
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap();
        // Every signal stays blocked until the helper resets the mask.
        let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
        let mask = u64::from_str_radix(blocked.split_whitespace().nth(1).unwrap(), 16).unwrap();
        let term = 1u64 << (libc::SIGTERM - 1);
        assert_eq!(mask & term, term, "{blocked}");
        assert_eq!(finish(s), 137);
    }

    #[test]
    fn spawn_like_child_has_execd_when_spawn_returns() {
        // /bin/sh with no arguments reads commands from stdin: a pipe nobody writes to.
        let (stdin, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let sh = std::fs::File::open("/bin/sh").unwrap();
        let s = spawn(Spawn {
            helper: sh.as_fd(),
            stdio: Stdio::Fds {
                stdin: Some(stdin),
                stdout: None,
                stderr: None,
            },
            preserve_fds: Vec::new(),
            extra_fds: Vec::new(),
            clone_flags: libc::CLONE_NEWNET,
            cgroup: None,
            become_root: false,
            hold: false,
        })
        .unwrap();
        assert!(!s.held);
        // CLONE_VFORK: the exec is done, so the child runs the shell, not a copy of us.
        let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid)).unwrap();
        assert_eq!(exe, std::fs::canonicalize("/bin/sh").unwrap());
        let theirs = std::fs::read_link(format!("/proc/{}/ns/net", s.pid)).unwrap();
        assert_ne!(theirs, std::fs::read_link("/proc/self/ns/net").unwrap());
        drop(writer);
        assert_eq!(crate::reaper::wait(s.pid, None).unwrap().status, 0);
    }

    #[test]
    fn spawn_like_child_reports_a_failed_exec() {
        // A directory cannot be executed: EACCES, reported on the socket as a raw frame.
        let dir = std::fs::File::open("/").unwrap();
        let mut s = spawn(Spawn {
            helper: dir.as_fd(),
            stdio: Stdio::Null,
            preserve_fds: Vec::new(),
            extra_fds: Vec::new(),
            clone_flags: 0,
            cgroup: None,
            become_root: false,
            hold: false,
        })
        .unwrap();
        match s.channel.recv::<protocol::FromHelper>().unwrap() {
            Some(protocol::Frame::ChildFailure { step, errno }) => {
                assert_eq!((step, errno), (step::EXEC, libc::EACCES));
            }
            other => panic!("expected the exec failure, got {other:?}"),
        }
        assert_eq!(crate::reaper::wait(s.pid, None).unwrap().status, 127);
    }

    #[test]
    fn step_names() {
        assert_eq!(step::name(step::EXEC), "execveat of the setup helper");
        assert_eq!(step::name(99), "unknown step");
    }
}
