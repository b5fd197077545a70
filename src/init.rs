//! The setup helper's side: entered in a re-executed copy of the binary (`argv[0]` =
//! "pelagos-init") that the runtime cloned. It is a fresh single-threaded process, so it may do
//! anything: it reads its [`Plan`] from fd 3, enters the namespaces, builds the container (runc's
//! order), reports `Ready`, waits for `Start` (on the socket, or on the start fifo when another
//! process starts the container) and execs the user process. Exec'd processes take
//! the same path without Ready/Start. Every failure is sent back as `Error { step, message }`
//! before the helper exits; the socket is close-on-exec, so the runtime reads EOF once the exec
//! happened.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use oci_spec::runtime::{Process, Spec};

use crate::namespaces::{self, Kind, Userns};
use crate::process::protocol::{
    decode_frame, Channel, Frame, FromHelper, InitPlan, Plan, ToHelper,
};
use crate::process::{FIRST_PRESERVED_FD, HELPER_ARGV0, SOCKET_FD};
use crate::{hooks, sys};

/// A failed setup step, as reported to the runtime.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct InitError {
    pub step: String,
    pub message: String,
}

fn fail(step: impl Into<String>, message: impl std::fmt::Display) -> InitError {
    InitError {
        step: step.into(),
        message: message.to_string(),
    }
}

/// An OS error as runc words it (Go's errno texts: "no such file or directory"), for the
/// failures users see most: the process's binary and cwd. Tools match these texts (Docker
/// maps "no such file or directory" and "executable file not found" to exit code 127).
fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    text.to_lowercase()
}

/// Attaches a step name to any error.
trait Step<T> {
    fn step(self, step: &str) -> Result<T, InitError>;
}

impl<T, E: std::fmt::Display> Step<T> for Result<T, E> {
    fn step(self, step: &str) -> Result<T, InitError> {
        self.map_err(|e| fail(step, e))
    }
}

/// The socket fd, for the panic hook.
static SOCKET: AtomicI32 = AtomicI32::new(SOCKET_FD);

/// Call first thing in `main` of any binary that creates containers with this library. When
/// this process is a setup helper it never returns; otherwise it returns at once.
pub fn run_if_helper() {
    if std::env::args_os().next().as_deref() != Some(OsStr::new(HELPER_ARGV0)) {
        return;
    }
    helper_main()
}

fn helper_main() -> ! {
    // Non-dumpable first: processes of a container being joined must not ptrace us or open
    // our /proc files while we still hold host resources.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"pelagos-init".as_ptr(), 0, 0, 0);
    }
    if let Some(mask) = ignored_signals() {
        IGNORED.store(mask, Ordering::Relaxed);
    }
    unblock_signals();
    std::panic::set_hook(Box::new(|info| {
        send_to_runtime(&FromHelper::Error {
            step: "setup helper".into(),
            message: format!("panic: {info}"),
        });
    }));
    // Off until the plan says the runtime's level.
    let _ = log::set_logger(&ToRuntime);
    log::set_max_level(log::LevelFilter::Off);

    // SAFETY: fd 3 is the protocol socket set up by the clone child; we take ownership.
    let mut chan = Channel::new(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) });
    let code = match run(&mut chan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&FromHelper::Error {
                step: e.step,
                message: e.message,
            });
            1
        }
    };
    // SAFETY: exit without running atexit handlers or unwinding; nothing is left to flush.
    unsafe { libc::_exit(code) }
}

/// Sends `msg` on the protocol socket wherever it is now, outside the borrow of `run`'s
/// Channel (for the panic hook and the logger).
fn send_to_runtime(msg: &FromHelper) {
    let fd = SOCKET.load(Ordering::SeqCst);
    // SAFETY: the socket fd stays open for the life of the helper; the Channel borrowed
    // here is forgotten so it does not close it.
    let chan = Channel::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let _ = chan.send(msg);
    std::mem::forget(chan);
}

/// The helper's logger: it has no log of its own, so its records go to the runtime, which
/// logs them (the shim's log, the CLI's `--log`).
struct ToRuntime;

impl log::Log for ToRuntime {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            send_to_runtime(&FromHelper::Log {
                level: record.level() as usize,
                message: record.args().to_string(),
            });
        }
    }

    fn flush(&self) {}
}

fn unblock_signals() {
    // SAFETY: an empty mask unblocks everything the runtime blocked around clone.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Returns only on failure, or Ok in the helper parent after a fork.
fn run(chan: &mut Channel) -> Result<(), InitError> {
    let plan = match chan.recv::<ToHelper>().step("read plan")? {
        Some(Frame::Msg(ToHelper::Plan(p))) => p,
        Some(other) => return Err(fail("read plan", format!("unexpected {other:?}"))),
        None => return Ok(()), // the runtime gave up before sending it
    };
    log::set_max_level(
        log::LevelFilter::iter()
            .nth(plan.log_level)
            .unwrap_or(log::LevelFilter::Off),
    );
    relocate_socket(chan, &plan)?;
    for tasks in &plan.join_cgroup {
        let step = format!("join cgroup {}", tasks.display());
        let fd = chan.take_fd().step(&step)?;
        std::io::Write::write_all(&mut std::fs::File::from(fd), b"0").step(&step)?;
    }
    if plan.await_cgroup {
        match chan.recv::<ToHelper>().step("wait for the cgroup")? {
            Some(Frame::Msg(ToHelper::CgroupJoined)) => {}
            None => return Ok(()),
            Some(other) => {
                return Err(fail("wait for the cgroup", format!("unexpected {other:?}")))
            }
        }
    }

    let forked = enter_namespaces(chan, &plan)?;
    if !forked {
        return Ok(()); // we are the helper parent; the forked child carries on
    }

    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(fail("setsid", std::io::Error::last_os_error()));
    }
    if plan.terminal {
        // SAFETY: fd 0 is the pty slave; TIOCSCTTY with 0 does not steal another session's tty.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(fail(
                "set controlling terminal",
                std::io::Error::last_os_error(),
            ));
        }
    }
    let process = &plan.process;
    crate::user::apply_limits(process, process.oom_score_adj())
        .step("rlimits and oom_score_adj")?;

    match &plan.init {
        Some(init) => setup_container(chan, &plan, init)?,
        None => {
            if let Some(sock) = plan.console {
                make_console(sock, process)?;
            }
        }
    }

    let cwd = process.cwd();
    if plan.init.is_some() {
        // runc creates a missing cwd inside the container too.
        std::fs::create_dir_all(cwd).step(&format!("create cwd {}", cwd.display()))?;
    }
    std::env::set_current_dir(cwd).map_err(|e| {
        fail(
            format!(
                "chdir to cwd ({:?}) set in config.json failed",
                cwd.display()
            ),
            os_text(&e),
        )
    })?;
    // The seccomp filter is installed right before execve (`Exec::exec`), so that the profile
    // need not allow the setup's syscalls: an allowlist made from the application's own
    // syscalls must work. Without no_new_privileges loading it needs CAP_SYS_ADMIN, which the
    // process keeps until then (runc loads it before setting the identity instead); its final
    // capabilities follow the filter, so the profile must allow capset and prctl, as runc's.
    // Before no_new_privileges, which would restrict the profile transition (runc's order).
    crate::lsm::apply(process).step("security module label")?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    let seccomp = match &plan.seccomp {
        Some(filter) => Some(crate::seccomp::Program::new(filter).step("load seccomp filter")?),
        None => None,
    };
    let hold = (seccomp.is_some() && !nnp).then_some(CAP_SYS_ADMIN);
    // Read while still privileged: the passwd file need not be readable by the user.
    let env = crate::user::exec_env(process.env().as_deref().unwrap_or_default(), || {
        crate::user::home_of(process.user().uid())
    });
    let final_caps =
        crate::user::finalize_identity(process, hold).step("user, groups and capabilities")?;
    let mut exe = prepare_exec(process, &env)?;
    exe.seccomp = seccomp;
    exe.final_caps = final_caps;

    if let Some(init) = &plan.init {
        chan.send(&FromHelper::Ready).step("send ready")?;
        let Some(start_state) = wait_for_start(chan, plan.start_fifo)? else {
            return Ok(()); // the runtime went away and there is no start fifo
        };
        let hooks = hooks::of(&init.spec, |h| h.start_container().clone());
        hooks::run_all(&hooks, start_state.as_bytes()).step("startContainer hooks")?;
    }
    let err = exe.exec(plan.preserve_fds)?;
    Err(fail(
        "exec",
        format!(
            "{:?}: {}",
            process
                .args()
                .as_ref()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or_default(),
            os_text(&err)
        ),
    ))
}

/// Waits for `Start` on the socket or, once the creating process has gone away (or from any
/// other process), on the start fifo. Returns the state JSON for startContainer hooks.
fn wait_for_start(chan: &mut Channel, fifo: Option<RawFd>) -> Result<Option<String>, InitError> {
    let step = "wait for start";
    let mut socket_open = true;
    let mut from_fifo: Vec<u8> = Vec::new();
    loop {
        let mut fds = Vec::with_capacity(2);
        if socket_open {
            fds.push(libc::pollfd {
                fd: chan.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(fd) = fifo {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            return Ok(None);
        }
        // SAFETY: polls live pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(fail(step, e));
        }
        if socket_open && fds[0].revents != 0 {
            match chan.recv::<ToHelper>().step(step)? {
                Some(Frame::Msg(ToHelper::Start { state })) => return Ok(Some(state)),
                Some(other) => return Err(fail(step, format!("unexpected {other:?}"))),
                None => socket_open = false,
            }
            continue;
        }
        if let Some(fd) = fifo {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a stack buffer from the fifo we own (non-blocking).
            let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got > 0 {
                from_fifo.extend_from_slice(&buf[..got as usize]);
            }
            if let Some((msg, _)) = decode_frame(&from_fifo).step(step)? {
                return match msg {
                    ToHelper::Start { state } => Ok(Some(state)),
                    other => Err(fail(
                        step,
                        format!("unexpected {other:?} on the start fifo"),
                    )),
                };
            }
        }
    }
}

/// Moves the socket above every planned fd so the preserved fds can slide down onto 3.., and
/// marks everything from 3 on close-on-exec (hooks we spawn must not inherit them).
fn relocate_socket(chan: &mut Channel, plan: &Plan) -> Result<(), InitError> {
    let mut top = FIRST_PRESERVED_FD + plan.preserve_fds as RawFd;
    for (_, fd) in &plan.join {
        top = top.max(fd + 1);
    }
    if let Some((fd, _)) = plan.join_pidfd {
        top = top.max(fd + 1);
    }
    for fd in plan.console.iter().chain(plan.start_fifo.iter()) {
        top = top.max(fd + 1);
    }
    let moved = sys::dup_at_least(SOCKET_FD, top).step("move protocol socket")?;
    SOCKET.store(moved.as_raw_fd(), Ordering::SeqCst);
    drop(chan.replace_fd(moved));
    sys::set_cloexec_from(3).step("mark fds close-on-exec")?;
    Ok(())
}

/// Joins and unshares namespaces, forking when the plan says so. Returns true in the process
/// that carries on (the forked child, or the helper itself when there is no fork).
fn enter_namespaces(chan: &mut Channel, plan: &Plan) -> Result<bool, InitError> {
    for (kind, fd) in &plan.join {
        // SAFETY: the runtime placed this namespace fd at this number for us.
        let ns = unsafe { BorrowedFd::borrow_raw(*fd) };
        namespaces::enter(*kind, ns).step(&format!("join {kind} namespace"))?;
        if *kind == Kind::User {
            if let Some(init) = &plan.init {
                namespaces::check_joined_maps(&init.spec).step("join user namespace")?;
            }
            become_root()?;
        }
    }
    if let Some((fd, flags)) = plan.join_pidfd {
        // SAFETY: the runtime placed the init's pidfd at this number for us.
        let pidfd = unsafe { BorrowedFd::borrow_raw(fd) };
        sys::setns(pidfd, flags).step(&format!(
            "join the container's namespaces ({})",
            namespaces::flag_names(flags)
        ))?;
        if flags & libc::CLONE_NEWUSER != 0 {
            become_root()?;
        }
    }
    if plan.userns == Userns::InHelper {
        namespaces::unshare(libc::CLONE_NEWUSER).step("create user namespace")?;
        chan.send(&FromHelper::MapRequest).step("request id maps")?;
        match chan.recv::<ToHelper>().step("wait for id maps")? {
            Some(Frame::Msg(ToHelper::MapsWritten)) => {}
            other => return Err(fail("wait for id maps", format!("unexpected {other:?}"))),
        }
        become_root()?;
    }
    namespaces::unshare(plan.unshare).step("create namespaces")?;
    if plan.unshare & libc::CLONE_NEWTIME != 0 {
        if let Some(init) = &plan.init {
            write_time_offsets(&init.spec)?;
        }
    }
    if !plan.fork {
        return Ok(true);
    }
    fork_sibling(chan)
}

/// uid/gid 0 of the user namespace just entered (capabilities there are full until then).
fn become_root() -> Result<(), InitError> {
    nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .step("setresgid 0 in the user namespace")?;
    nix::unistd::setresuid(0.into(), 0.into(), 0.into())
        .step("setresuid 0 in the user namespace")?;
    Ok(())
}

fn write_time_offsets(spec: &Spec) -> Result<(), InitError> {
    let offsets = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref());
    let Some(offsets) = offsets else {
        return Ok(());
    };
    let mut text = String::new();
    for (clock, off) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    std::fs::write("/proc/self/timens_offsets", text).step("write linux.timeOffsets")
}

/// Forks the process that carries on as a sibling (CLONE_PARENT: a direct child of the
/// runtime, which reaps it), sends its pidfd and host pid to the runtime, and returns false in
/// the helper, which then exits.
///
/// The socket has one writer at a time: the forked process waits for this helper to exit
/// (after its `Forked` report) before it goes on, so the runtime always reads `Forked` before
/// anything the forked process says. Without the wait, a helper preempted between the fork and
/// its report let the forked process's `Ready` arrive first: the runtime took the helper for
/// the init and the real init's report turned up at start.
fn fork_sibling(chan: &mut Channel) -> Result<bool, InitError> {
    let helper = sys::pidfd_open(std::process::id() as i32).step("open the helper's pidfd")?;
    let mut pidfd: libc::c_int = -1;
    let flags = (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64;
    let mut args = sys::CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // clone3 requires 0 with CLONE_PARENT: the child gets our own exit signal (SIGCHLD).
        exit_signal: 0,
        ..Default::default()
    };
    // SAFETY: we are single-threaded, so the child may run any code.
    let mut pid = unsafe { sys::clone3(&mut args) };
    if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // SAFETY: as above.
        pid = unsafe { sys::clone_legacy(flags, &mut pidfd) };
    }
    if pid < 0 {
        return Err(fail(
            "fork into the pid namespace",
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        sys::pidfd_wait_exit(helper.as_fd(), -1);
        return Ok(true);
    }
    // SAFETY: CLONE_PIDFD stored a fresh fd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    chan.send_with_fd(&FromHelper::Forked { pid: pid as i32 }, Some(pidfd.as_fd()))
        .step("report forked pid")?;
    Ok(false)
}

/// Hostname, rootfs, hooks, pivot_root, sysctls, masked/readonly paths.
fn setup_container(chan: &mut Channel, plan: &Plan, init: &InitPlan) -> Result<(), InitError> {
    let spec = &init.spec;
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).step(&format!("set hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: pointer and length of a live buffer.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } < 0 {
            return Err(fail(
                format!("set domainname {d:?}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    let in_userns = plan.userns != Userns::Host;
    crate::rootfs::prepare(spec, &init.rootfs, in_userns, &init.trees).step("prepare rootfs")?;
    if init.hooks_request {
        chan.send(&FromHelper::HooksRequest)
            .step("request runtime hooks")?;
        let state = match chan.recv::<ToHelper>().step("wait for runtime hooks")? {
            Some(Frame::Msg(ToHelper::HooksDone { state })) => state,
            other => {
                return Err(fail(
                    "wait for runtime hooks",
                    format!("unexpected {other:?}"),
                ))
            }
        };
        let hooks = hooks::of(spec, |h| h.create_container().clone());
        hooks::run_all(&hooks, state.as_bytes()).step("createContainer hooks")?;
    }
    crate::rootfs::pivot(&init.rootfs, init.no_pivot).step("pivot_root")?;
    // After pivot_root, so the pty comes from the container's devpts; before the read-only
    // remounts of finalize (runc's order).
    if let Some(sock) = plan.console {
        make_console(sock, &plan.process)?;
    }
    reopen_dev_null().step("reopen /dev/null stdio")?;
    crate::user::apply_sysctl(spec).step("sysctl")?;
    crate::rootfs::finalize(spec).step("finalize rootfs")
}

/// Stdio that is the host's /dev/null becomes the container's own (runc's reOpenDevNull): a
/// file on a mount outside the container is one CRIU cannot checkpoint.
fn reopen_dev_null() -> std::io::Result<()> {
    use nix::sys::stat::fstat;
    // A container without a /dev/null keeps the host's (runc fails its create there).
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return Ok(());
    };
    let ours = fstat(&null)?;
    for fd in 0..3 {
        // SAFETY: fds 0-2 are open for the whole of this call (stdio of the helper).
        let stdio = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let Ok(st) = fstat(stdio) else { continue };
        let same_node = (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino);
        if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == ours.st_rdev && !same_node {
            // SAFETY: dup2 of an fd we own onto stdio.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Allocates a pty in the container's devpts, sends the master over the console socket at
/// `sock`, and makes the slave fds 0-2 and our controlling terminal.
fn make_console(sock: RawFd, process: &Process) -> Result<(), InitError> {
    let (master, slave) = sys::open_pty().step("console")?;
    if let Some(size) = process.console_size() {
        let ws = libc::winsize {
            ws_row: size.height().min(u16::MAX as u64) as u16,
            ws_col: size.width().min(u16::MAX as u64) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a live stack value.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(fail("console: set size", std::io::Error::last_os_error()));
        }
    }
    let user = process.user();
    nix::unistd::fchown(&slave, Some(user.uid().into()), Some(user.gid().into()))
        .step("console: chown pty slave")?;
    // SAFETY: the runtime placed the console socket at this fd for us; we own it from here.
    let console = Channel::new(unsafe { OwnedFd::from_raw_fd(sock) });
    console
        .send_with_fd(&FromHelper::Console, Some(master.as_fd()))
        .step("console: send pty master")?;
    drop(console);
    for target in 0..3 {
        // SAFETY: dup2 of an fd we own onto stdio.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(fail(
                "console: dup2 pty slave",
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: fd 0 is now our pty slave and we lead a new session.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(fail(
            "console: set controlling terminal",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The resolved executable, argv and envp of the process, and the seccomp filter to install
/// last (with the capabilities that must wait for it).
struct Exec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    seccomp: Option<crate::seccomp::Program>,
    /// Capabilities to set after the filter (they held CAP_SYS_ADMIN to load it).
    final_caps: Option<crate::caps::Sets>,
}

/// Resolves args[0] like execvp, with the process's own PATH, so a missing binary is a create
/// error (as in runc) rather than a start error.
fn prepare_exec(process: &Process, env: &[String]) -> Result<Exec, InitError> {
    let args = process.args().as_deref().unwrap_or_default();
    let cstr = |s: &str, what: &str| {
        CString::new(s).map_err(|_| fail("exec", format!("{what} {s:?} contains a NUL byte")))
    };
    let argv = args
        .iter()
        .map(|a| cstr(a, "argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstr(e, "env entry"))
        .collect::<Result<Vec<_>, _>>()?;
    let name = args
        .first()
        .ok_or_else(|| fail("exec", "process.args is empty"))?;
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let resolved = resolve(name, path_var)?;
    Ok(Exec {
        path: CString::new(resolved.as_os_str().as_bytes())
            .map_err(|_| fail("exec", "path contains a NUL byte"))?,
        argv,
        envp,
        seccomp: None,
        final_caps: None,
    })
}

/// What loading a seccomp filter without no_new_privileges needs.
const CAP_SYS_ADMIN: u32 = 21;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// execvp's lookup: a name with a slash is used as is; otherwise the first executable regular
/// file named so in a PATH directory.
fn resolve(name: &str, path_var: &str) -> Result<PathBuf, InitError> {
    if name.contains('/') {
        // Checked now so that a missing binary is a create error, as for PATH lookups.
        let path = PathBuf::from(name);
        return match std::fs::metadata(&path) {
            Ok(_) if is_executable(&path) => Ok(path),
            Ok(_) => Err(fail("exec", format!("{name:?}: permission denied"))),
            Err(e) => Err(fail(
                "exec",
                format!("{name:?}: stat {name}: {}", os_text(&e)),
            )),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(fail(
        "exec",
        format!("{name:?}: executable file not found in $PATH"),
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Exec {
    /// Slides the preserved fds from 4.. down to 3.., restores default signal dispositions,
    /// installs the seccomp filter and execs. Returns only on failure: the exec's error, or an
    /// error of an earlier step.
    fn exec(&self, preserve_fds: u32) -> Result<std::io::Error, InitError> {
        for i in 0..preserve_fds as RawFd {
            // SAFETY: dup2 between fds we own; the socket lives above them (relocate_socket).
            if unsafe { libc::dup2(FIRST_PRESERVED_FD + i, 3 + i) } < 0 {
                return Err(fail("preserve fds", std::io::Error::last_os_error()));
            }
        }
        sys::set_cloexec_from(3 + preserve_fds as RawFd).step("mark fds close-on-exec")?;
        reset_signals();
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        if let Some(p) = &self.seccomp {
            p.install().step("load seccomp filter")?;
        }
        if let Some(caps) = &self.final_caps {
            caps.set().step("capabilities")?;
        }
        // SAFETY: NULL-terminated arrays of live C strings.
        unsafe { libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Ok(std::io::Error::last_os_error())
    }
}

/// The signals ignored as the helper starts (bit `n - 1` for signal `n`): those its runtime
/// left ignored, and SIGPIPE (Rust's runtime). The helper ignores none itself. All bits set
/// when they could not be read: every signal is then reset.
static IGNORED: AtomicU64 = AtomicU64::new(u64::MAX);

/// `SigIgn` of this thread's /proc status (the host's /proc: read before any namespace).
fn ignored_signals() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Default dispositions for the ignored signals (SIGPIPE, by the Rust runtime), which would
/// otherwise stay ignored in the container process; execve resets handled ones itself.
fn reset_signals() {
    let ignored = IGNORED.load(Ordering::Relaxed);
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || ignored & (1u64 << (sig - 1)) == 0 {
            continue;
        }
        // SAFETY: setting SIG_DFL is always valid; errors for reserved signals are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    unblock_signals();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_path_order_and_skips_non_executables() {
        let dir = std::env::temp_dir().join(format!("pelagos-resolve-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap(); // not executable
        std::fs::write(b.join("tool"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(resolve("tool", &path).unwrap(), b.join("tool"));
        let abs = b.join("tool");
        assert_eq!(resolve(abs.to_str().unwrap(), "").unwrap(), abs);
        let err = resolve(a.join("tool").to_str().unwrap(), "").unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
        assert!(resolve("/no/such/tool", "").is_err());
        let err = resolve("nope", &path).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"nope\": executable file not found in $PATH"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
