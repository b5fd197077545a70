//! `binary://` loggers: a child of the shim that reads the container's stdout on fd 3 and
//! stderr on fd 4 and says it is ready by writing a byte to (or closing) fd 5.
//!
//! The container writes straight into the logger's pipes, as with containerd's shim; a watcher
//! thread per logger keeps a logger's failure from reaching the container (see [`watch`]).
//!
//! Arguments and environment follow containerd's `NewBinaryCmd`: every query key becomes an
//! argument followed by its first value; keys prefixed `env.` become environment variables
//! instead; the environment holds only those and `CONTAINER_ID`, `CONTAINER_NAMESPACE`.
//! Go iterates a map, so its argument order is random; ours is sorted by key.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{IoError, LoggerContext};

/// How long a logger has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a logger has to exit after SIGTERM before it is killed (containerd: 12 s).
const TERM_GRACE: Duration = Duration::from_secs(12);
const ENV_PREFIX: &str = "env.";
/// How long a logger may leave its stdout pipe full before it is taken for hung and killed.
const STALL: Duration = Duration::from_secs(10);
/// How often the watcher looks at the logger's pipes.
const WATCH_TICK: Duration = Duration::from_millis(500);

/// A parsed `binary://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggerCommand {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl LoggerCommand {
    /// `rest` is what follows `binary:` in the URI.
    pub(crate) fn parse(uri: &str, rest: &str) -> Result<LoggerCommand, IoError> {
        let (path, query) = uri_parts(uri, rest)?;
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else {
                return Err(IoError::BadUri {
                    uri: uri.to_string(),
                    reason: "bad percent-encoding in query",
                });
            };
            params.entry(k).or_default().push(v);
        }
        let mut args = Vec::new();
        let mut env = Vec::new();
        for (k, mut vs) in params {
            let first = vs.swap_remove(0);
            match k.strip_prefix(ENV_PREFIX) {
                Some(name) => {
                    if name != "CONTAINER_ID" && name != "CONTAINER_NAMESPACE" {
                        env.push((name.to_string(), first));
                    }
                }
                None => {
                    args.push(k);
                    args.push(first);
                }
            }
        }
        Ok(LoggerCommand { path, args, env })
    }
}

/// Splits what follows `scheme:` into the decoded, cleaned path and the raw query. Like Go's
/// `url.Parse`, an authority (`//host`) is skipped and a fragment dropped.
pub(crate) fn uri_parts<'a>(uri: &str, rest: &'a str) -> Result<(PathBuf, &'a str), IoError> {
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (hier, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = match hier.strip_prefix("//") {
        Some(after) => after.find('/').map_or("", |i| &after[i..]),
        None => hier,
    };
    let path = percent_decode(path, false).ok_or_else(|| IoError::BadUri {
        uri: uri.to_string(),
        reason: "bad percent-encoding in path",
    })?;
    if path.is_empty() {
        return Err(IoError::BadUri {
            uri: uri.to_string(),
            reason: "no path",
        });
    }
    Ok((clean_path(&path), query))
}

/// Go's `filepath.Clean` for absolute and relative paths: drops `.`, empty segments and
/// resolves `..` lexically.
fn clean_path(path: &str) -> PathBuf {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => PathBuf::from(format!("/{joined}")),
        (false, true) => PathBuf::from("."),
        (false, false) => PathBuf::from(joined),
    }
}

/// Decodes `%XX` escapes (and `+` as a space in query components, like Go's `QueryUnescape`).
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A running logger. Dropping it stops it (SIGTERM, then SIGKILL after 12 s).
#[derive(Debug)]
pub(crate) struct Logger {
    pid: i32,
    pidfd: Option<OwnedFd>,
    path: PathBuf,
    /// Set before the shim stops the logger itself: its exit is then no failure.
    stopping: Arc<AtomicBool>,
}

impl Logger {
    /// Starts the logger with `stdout` as fd 3 and `stderr` as fd 4, and blocks until it is
    /// ready (a byte or EOF on fd 5), at most 10 s.
    pub(crate) fn spawn(
        cmd: &LoggerCommand,
        ctx: &LoggerContext,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> Result<Logger, IoError> {
        let err = |reason: String| IoError::Logger {
            path: cmd.path.clone(),
            reason,
        };
        let (ready_r, ready_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err(format!("ready pipe: {e}")))?;
        let pid = spawn(cmd, ctx, [stdout, stderr, ready_w.as_fd()]).map_err(&err)?;
        drop(ready_w);
        let logger = Logger {
            pid,
            pidfd: pidfd_open(pid),
            path: cmd.path.clone(),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        match wait_ready(ready_r.as_fd()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(err(format!(
                    "not ready within {} s",
                    READY_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(err(format!("waiting for readiness: {e}"))),
        }
        log::debug!("binary logger {} started as pid {pid}", cmd.path.display());
        logger.start_watch(ctx, stdout, stderr);
        Ok(logger)
    }

    /// Starts the watcher thread (see [`watch`]); without a pidfd or a thread, the logger runs
    /// unwatched, as containerd's do.
    fn start_watch(&self, ctx: &LoggerContext, stdout: BorrowedFd<'_>, stderr: BorrowedFd<'_>) {
        let fds = (|| {
            let pidfd = self.pidfd.as_ref()?.try_clone().ok()?;
            Some((
                pidfd,
                stdout.try_clone_to_owned().ok()?,
                stderr.try_clone_to_owned().ok()?,
            ))
        })();
        let Some((pidfd, out, err)) = fds else {
            log::warn!("binary logger {}: not watched", self.path.display());
            return;
        };
        let watched = Watched {
            label: format!("{} of container {}", self.path.display(), ctx.id),
            pidfd,
            pipes: [out, err],
            stopping: Arc::clone(&self.stopping),
        };
        let spawned = std::thread::Builder::new()
            .name("logger-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(watched));
        if let Err(e) = spawned {
            log::warn!("binary logger {}: not watched: {e}", self.path.display());
        }
    }

    #[cfg(test)]
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    fn signal(&self, sig: i32) -> Result<(), Errno> {
        let rc = match &self.pidfd {
            // SAFETY: pidfd_send_signal reads only its scalar arguments (no siginfo given).
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: plain kill(2) of our own child.
            None => unsafe { libc::kill(self.pid, sig) as libc::c_long },
        };
        Errno::result(rc).map(drop)
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.signal(libc::SIGTERM).is_err() {
            // Already exited: collect it if the reaping loop has not.
            let _ = pelagos::reaper::wait(self.pid, Some(Duration::ZERO));
            return;
        }
        if pelagos::reaper::wait(self.pid, Some(TERM_GRACE)).is_some() {
            return;
        }
        log::warn!(
            "binary logger {} (pid {}) ignored SIGTERM for {} s, killing it",
            self.path.display(),
            self.pid,
            TERM_GRACE.as_secs()
        );
        let _ = self.signal(libc::SIGKILL);
        let _ = pelagos::reaper::wait(self.pid, Some(Duration::from_secs(5)));
    }
}

/// What the watcher of one logger holds: the logger's pidfd and read ends of the container's
/// stdout and stderr pipes (the logger has its own).
struct Watched {
    label: String,
    pidfd: OwnedFd,
    pipes: [OwnedFd; 2],
    stopping: Arc<AtomicBool>,
}

/// Keeps a logger's failure from reaching the container: when the logger exits or is killed,
/// or reads nothing of a non-empty stdout pipe for [`STALL`] (it is then killed), the container's output is
/// read here and dropped, so that the container's writes neither block for ever nor fail, and
/// the shim's log says so once. Ends when the shim stops the logger, or at the pipes' EOF.
fn watch(w: Watched) {
    // Since when the logger has read nothing of a non-empty stdout pipe, and how much it held.
    let mut stalled: Option<(Instant, usize)> = None;
    loop {
        if w.stopping.load(Ordering::SeqCst) {
            return;
        }
        if poll_in(&[w.pidfd.as_fd()], WATCH_TICK).first() == Some(&true) {
            break;
        }
        let queued = pending(w.pipes[0].as_fd());
        match stalled {
            _ if queued == 0 => stalled = None,
            // It read something since the last look.
            Some((_, before)) if queued < before => stalled = Some((Instant::now(), queued)),
            None => stalled = Some((Instant::now(), queued)),
            Some((t, _)) if t.elapsed() >= STALL => {
                log::warn!(
                    "binary logger {} read nothing of its pipe for {} s: killing it",
                    w.label,
                    STALL.as_secs()
                );
                // SAFETY: pidfd_send_signal reads only its scalar arguments.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        w.pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                stalled = None;
            }
            Some((t, _)) => stalled = Some((t, queued)),
        }
    }
    if w.stopping.load(Ordering::SeqCst) {
        return;
    }
    log::warn!(
        "binary logger {} has exited: the container's output is dropped from now on",
        w.label
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = [true, true];
    while open.iter().any(|o| *o) && !w.stopping.load(Ordering::SeqCst) {
        let fds: Vec<BorrowedFd<'_>> = w.pipes.iter().map(AsFd::as_fd).collect();
        let ready = poll_in(&fds, WATCH_TICK);
        for (i, r) in ready.into_iter().enumerate() {
            if r && open[i] {
                match nix::unistd::read(&w.pipes[i], &mut buf) {
                    Ok(0) => open[i] = false,
                    Ok(_) | Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(_) => open[i] = false,
                }
            }
        }
    }
}

/// Which of `fds` are readable (or hung up) within `timeout`.
fn poll_in(fds: &[BorrowedFd<'_>], timeout: Duration) -> Vec<bool> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    match poll(&mut pfds, ms) {
        Ok(n) if n > 0 => pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect(),
        _ => vec![false; fds.len()],
    }
}

/// How many bytes wait in the pipe behind `fd`.
fn pending(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes scalars and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `Ok(true)` once a byte or EOF arrived, `Ok(false)` on timeout.
fn wait_ready(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let timeout = PollTimeout::try_from(READY_TIMEOUT).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut byte) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// posix_spawn(3) with fds 3, 4, 5 placed by file actions: it runs no Rust code in the child,
/// so it is safe from a multi-threaded shim (glibc uses CLONE_VFORK). Signal mask and
/// dispositions are reset: the shim may block or ignore signals the logger needs.
fn spawn(
    cmd: &LoggerCommand,
    ctx: &LoggerContext,
    fds: [BorrowedFd<'_>; 3],
) -> Result<i32, String> {
    let cstr =
        |s: &[u8], what: &str| CString::new(s).map_err(|_| format!("{what} contains a NUL byte"));
    let path = cstr(cmd.path.as_os_str().as_encoded_bytes(), "path")?;
    let mut argv = vec![path.clone()];
    for a in &cmd.args {
        argv.push(cstr(a.as_bytes(), "argument")?);
    }
    let mut envp = vec![
        cstr(
            format!("CONTAINER_ID={}", ctx.id).as_bytes(),
            "container id",
        )?,
        cstr(
            format!("CONTAINER_NAMESPACE={}", ctx.namespace).as_bytes(),
            "namespace",
        )?,
    ];
    for (k, v) in &cmd.env {
        envp.push(cstr(format!("{k}={v}").as_bytes(), "environment")?);
    }
    let argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|s| s.as_ptr() as *mut _)
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();
    let envp_ptrs: Vec<*mut libc::c_char> = envp
        .iter()
        .map(|s| s.as_ptr() as *mut _)
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();

    // Sources above the targets, so no dup2 overwrites a source another one still needs
    // (and dup2 to itself would keep close-on-exec set).
    let mut high = Vec::with_capacity(3);
    for fd in fds {
        let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| format!("dup: {e}"))?;
        // SAFETY: fcntl just returned this new fd.
        high.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }

    let dev_null = c"/dev/null";
    let mut actions = SpawnActions::new()?;
    actions.open(0, dev_null, libc::O_RDONLY)?;
    actions.open(1, dev_null, libc::O_WRONLY)?;
    actions.open(2, dev_null, libc::O_WRONLY)?;
    for (target, fd) in (3..).zip(&high) {
        actions.dup2(fd.as_raw_fd(), target)?;
    }
    let attr = SpawnAttr::new()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the C strings and their arrays live until
    // the end of this function, the actions and attributes were initialised above.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!("cannot start: {}", Errno::from_raw(rc)));
    }
    Ok(pid)
}

struct SpawnActions(libc::posix_spawn_file_actions_t);

impl SpawnActions {
    fn new() -> Result<SpawnActions, String> {
        // SAFETY: an all-zero value is a valid destination for the init call below.
        let mut a: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: initialises the struct we own.
        let rc = unsafe { libc::posix_spawn_file_actions_init(&mut a) };
        check(rc, "file actions")?;
        Ok(SpawnActions(a))
    }

    fn open(&mut self, fd: i32, path: &std::ffi::CStr, flags: i32) -> Result<(), String> {
        // SAFETY: glibc copies the path; the actions struct is initialised.
        check(
            unsafe {
                libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
            },
            "file actions",
        )
    }

    fn dup2(&mut self, from: i32, to: i32) -> Result<(), String> {
        // SAFETY: the actions struct is initialised; the fds are only recorded.
        check(
            unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, from, to) },
            "file actions",
        )
    }
}

impl Drop for SpawnActions {
    fn drop(&mut self) {
        // SAFETY: destroys the struct initialised in `new`.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    fn new() -> Result<SpawnAttr, String> {
        // SAFETY: an all-zero value is a valid destination for the init call below.
        let mut a: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
        // SAFETY: initialises the struct we own.
        let rc = unsafe { libc::posix_spawnattr_init(&mut a) };
        check(rc, "spawn attributes")?;
        let mut attr = SpawnAttr(a);
        // SAFETY: sigset_t is plain data; sigemptyset/sigfillset initialise it.
        let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid, writable sigset_t values.
        unsafe {
            libc::sigemptyset(&mut empty);
            libc::sigfillset(&mut all);
        }
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        // SAFETY: the attribute struct is initialised and the sets outlive the calls (copied).
        unsafe {
            check(
                libc::posix_spawnattr_setsigmask(&mut attr.0, &empty),
                "spawn attributes",
            )?;
            check(
                libc::posix_spawnattr_setsigdefault(&mut attr.0, &all),
                "spawn attributes",
            )?;
            check(
                libc::posix_spawnattr_setflags(&mut attr.0, flags),
                "spawn attributes",
            )?;
        }
        Ok(attr)
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: destroys the struct initialised in `new`.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(rc: i32, what: &str) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", Errno::from_raw(rc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_query_becomes_sorted_args_and_env() {
        let c = LoggerCommand::parse(
            "binary:///usr/bin/log?z=1&a=x%20y&flag&env.FOO=bar+baz&a=ignored&env.CONTAINER_ID=no",
            "///usr/bin/log?z=1&a=x%20y&flag&env.FOO=bar+baz&a=ignored&env.CONTAINER_ID=no",
        )
        .unwrap();
        assert_eq!(c.path, PathBuf::from("/usr/bin/log"));
        assert_eq!(c.args, ["a", "x y", "flag", "", "z", "1"]);
        assert_eq!(c.env, [("FOO".to_string(), "bar baz".to_string())]);
    }

    #[test]
    fn uri_path_is_cleaned_and_host_ignored() {
        let c = LoggerCommand::parse("u", "//host/a/./b/../log").unwrap();
        assert_eq!(c.path, PathBuf::from("/a/log"));
        assert!(c.args.is_empty());
    }

    #[test]
    fn uri_without_path_is_rejected() {
        let e = LoggerCommand::parse("binary://", "//").unwrap_err();
        assert!(e.to_string().contains("no path"), "{e}");
        let e = LoggerCommand::parse("binary:///x%zz", "///x%zz").unwrap_err();
        assert!(e.to_string().contains("percent"), "{e}");
    }

    #[test]
    fn clean_path_like_go() {
        assert_eq!(clean_path("/../a//b/"), PathBuf::from("/a/b"));
        assert_eq!(clean_path("a/../../b"), PathBuf::from("../b"));
        assert_eq!(clean_path("./"), PathBuf::from("."));
    }
}
