//! OCI hooks: runs one hook with the state JSON on stdin, its args and env, and its timeout.
//!
//! A hook runs `path` with `args` (`args[0]` is `argv[0]`; with no args `argv[0]` is `path`) and
//! exactly the `env` it lists; with no `env` it inherits the runtime's environment, as runc's
//! hooks do (Go's `exec.Cmd` with a nil `Env`). Its stdout and
//! stderr are captured (the last [`OUTPUT_CAP`] bytes each) for the error message.
//!
//! No threads: hooks also run inside the single-threaded setup helper, where an extra thread
//! would make later `unshare`/`setns` calls fail. One poll(2) loop feeds stdin, drains the
//! output pipes and watches a pidfd for the exit; the exit status itself is collected through
//! [`crate::reaper::wait`], which cooperates with the shim's global reaping loop.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use oci_spec::runtime::{Hook, Hooks, Spec};

/// How much of a hook's stdout and stderr is kept for error messages.
pub const OUTPUT_CAP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path}: path must be absolute")]
    RelativePath { path: String },
    #[error("hook {path}: timeout must be greater than zero, got {timeout}")]
    BadTimeout { path: String, timeout: i64 },
    #[error("hook {path}: env entry {entry:?} is not KEY=VALUE")]
    BadEnv { path: String, entry: String },
    #[error("hook {path}: cannot run: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("hook {path} timed out after {secs}s")]
    Timeout { path: String, secs: i64 },
    #[error(
        "hook {path} exited with status {status}{}",
        output_suffix(stderr, stdout)
    )]
    Failed {
        path: String,
        status: i32,
        stdout: String,
        stderr: String,
    },
    #[error("hook {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("hook {path}: exit status lost (process {pid} was reaped elsewhere)")]
    Lost { path: String, pid: i32 },
    #[error("hook: {0}")]
    Other(String),
}

fn output_suffix(stderr: &str, stdout: &str) -> String {
    let mut s = String::new();
    if !stderr.is_empty() {
        s.push_str(": stderr: ");
        s.push_str(stderr);
    }
    if !stdout.is_empty() {
        s.push_str(if s.is_empty() {
            ": stdout: "
        } else {
            "; stdout: "
        });
        s.push_str(stdout);
    }
    s
}

/// Runs each hook in order with `state_json` on stdin; the first failure stops the rest.
pub fn run_all(hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    for h in hooks {
        run(h, state_json)?;
    }
    Ok(())
}

/// The spec's hooks of one kind (`pick`), empty when absent.
pub fn of(spec: &Spec, pick: impl Fn(&Hooks) -> Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks().as_ref().and_then(pick).unwrap_or_default()
}

/// Runs every hook in order whatever the others do; returns the failures (poststart and
/// poststop hooks: a failing one is a warning and the rest still run, runtime-spec 1.3).
pub fn run_each(hooks: &[Hook], state_json: &[u8]) -> Vec<HookError> {
    hooks
        .iter()
        .filter_map(|h| run(h, state_json).err())
        .collect()
}

/// Keeps the last `OUTPUT_CAP` bytes written to it (errors are usually at the end).
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > 2 * OUTPUT_CAP {
            let cut = self.0.len() - OUTPUT_CAP;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.0.len().saturating_sub(OUTPUT_CAP);
        String::from_utf8_lossy(&self.0[start..]).trim().to_string()
    }
}

/// Reads what is available without blocking; returns false at EOF or on error.
fn drain(r: &mut impl Read, into: &mut Tail) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => into.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn set_nonblocking(fd: impl AsFd) {
    if let Ok(flags) = fcntl(fd.as_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags));
    }
}

fn command(h: &Hook, path: &str) -> Result<Command, HookError> {
    let mut cmd = Command::new(h.path());
    match h.args().as_deref() {
        Some([argv0, rest @ ..]) => {
            cmd.arg0(argv0).args(rest);
        }
        _ => {
            cmd.arg0(path);
        }
    }
    if h.env().is_some() {
        cmd.env_clear();
    }
    for entry in h.env().iter().flatten() {
        let Some((k, v)) = entry.split_once('=') else {
            return Err(HookError::BadEnv {
                path: path.to_string(),
                entry: entry.clone(),
            });
        };
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

fn run(h: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = h.path().display().to_string();
    if !h.path().is_absolute() {
        return Err(HookError::RelativePath { path });
    }
    let timeout = match h.timeout() {
        Some(t) if t <= 0 => return Err(HookError::BadTimeout { path, timeout: t }),
        Some(t) => Some(t),
        None => None,
    };
    let mut child = command(h, &path)?
        .spawn()
        .map_err(|source| HookError::Spawn {
            path: path.clone(),
            source,
        })?;
    let pid = child.id() as i32;
    log::debug!("hook {path} started as {pid}");
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t as u64));
    // The pidfd pins the process: signalling through it can never hit a recycled pid. It can
    // be missing (a seccomp profile without pidfd_open); then the end of the output pipes
    // stands in for the exit.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    let mut io = Pipes {
        input: state_json,
        written: 0,
        stdin: child.stdin.take().filter(|_| !state_json.is_empty()),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        out: Tail::default(),
        err: Tail::default(),
    };
    io.set_nonblocking();
    let mut timed_out = io
        .pump(pidfd.as_ref(), deadline)
        .map_err(|source| HookError::Io {
            path: path.clone(),
            what: "poll",
            source,
        })?;
    io.finish();
    let mut exit = None;
    if !timed_out {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        exit = crate::reaper::wait(pid, left);
        // Without a pidfd the pipes may have closed before the exit: a missing exit within the
        // deadline is a timeout then.
        timed_out = exit.is_none() && pidfd.is_none() && deadline.is_some();
    }
    if timed_out {
        match &pidfd {
            Some(fd) => {
                let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
            None => {
                // SAFETY: kill(2) with a pid we spawned and have not reaped (wait just timed out).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = crate::reaper::wait(pid, None);
        let secs = timeout.unwrap_or(0);
        log::warn!("hook {path} killed after its {secs}s timeout");
        return Err(HookError::Timeout { path, secs });
    }
    let exit = exit.ok_or_else(|| HookError::Lost {
        path: path.clone(),
        pid,
    })?;
    if exit.status != 0 {
        return Err(HookError::Failed {
            path,
            status: exit.status,
            stdout: io.out.text(),
            stderr: io.err.text(),
        });
    }
    log::debug!("hook {path} succeeded");
    Ok(())
}

/// Adds `fd` (if any) to a poll set, giving its index.
fn add<'a>(
    fds: &mut Vec<PollFd<'a>>,
    fd: Option<std::os::fd::BorrowedFd<'a>>,
    ev: PollFlags,
) -> Option<usize> {
    fd.map(|fd| {
        fds.push(PollFd::new(fd, ev));
        fds.len() - 1
    })
}

/// The hook's stdio: the state to feed and what it printed.
struct Pipes<'a> {
    input: &'a [u8],
    written: usize,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    out: Tail,
    err: Tail,
}

impl Pipes<'_> {
    fn set_nonblocking(&self) {
        if let Some(s) = &self.stdin {
            set_nonblocking(s);
        }
        if let Some(s) = &self.stdout {
            set_nonblocking(s);
        }
        if let Some(s) = &self.stderr {
            set_nonblocking(s);
        }
    }

    /// Feeds stdin and drains the output pipes until the process exits (or, without a pidfd,
    /// until both output pipes are closed): false, or the deadline passes: true.
    fn pump(
        &mut self,
        pidfd: Option<&OwnedFd>,
        deadline: Option<Instant>,
    ) -> std::io::Result<bool> {
        loop {
            if pidfd.is_none() && self.stdout.is_none() && self.stderr.is_none() {
                return Ok(false);
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(true);
                    }
                    PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let (exited, in_ready, out_ready, err_ready) = {
                let mut fds = Vec::with_capacity(4);
                let pid_idx = add(&mut fds, pidfd.map(|p| p.as_fd()), PollFlags::POLLIN);
                let in_idx = add(
                    &mut fds,
                    self.stdin.as_ref().map(|s| s.as_fd()),
                    PollFlags::POLLOUT,
                );
                let out_idx = add(
                    &mut fds,
                    self.stdout.as_ref().map(|s| s.as_fd()),
                    PollFlags::POLLIN,
                );
                let err_idx = add(
                    &mut fds,
                    self.stderr.as_ref().map(|s| s.as_fd()),
                    PollFlags::POLLIN,
                );
                match poll(&mut fds, timeout) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (
                    ready(pid_idx),
                    ready(in_idx),
                    ready(out_idx),
                    ready(err_idx),
                )
            };
            if in_ready {
                self.feed();
            }
            if out_ready
                && !self
                    .stdout
                    .as_mut()
                    .is_some_and(|s| drain(s, &mut self.out))
            {
                self.stdout = None;
            }
            if err_ready
                && !self
                    .stderr
                    .as_mut()
                    .is_some_and(|s| drain(s, &mut self.err))
            {
                self.stderr = None;
            }
            if exited {
                return Ok(false);
            }
        }
    }

    fn feed(&mut self) {
        if let Some(s) = self.stdin.as_mut() {
            match s.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                // EPIPE: the hook does not read its stdin; that is its business.
                Err(_) => self.written = self.input.len(),
            }
        }
        if self.written >= self.input.len() {
            self.stdin = None;
        }
    }

    /// Closes stdin and collects what the hook wrote before exiting (it is in the pipe
    /// buffers by now); a grandchild holding the pipes open cannot make this block.
    fn finish(&mut self) {
        self.stdin = None;
        if let Some(s) = self.stdout.as_mut() {
            drain(s, &mut self.out);
        }
        if let Some(s) = self.stderr.as_mut() {
            drain(s, &mut self.err);
        }
        self.stdout = None;
        self.stderr = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::default();
        for _ in 0..10 {
            t.push(&[b'a'; 1000]);
        }
        t.push(b"the error");
        let s = t.text();
        assert!(s.len() <= OUTPUT_CAP);
        assert!(s.ends_with("the error"));
    }

    #[test]
    fn error_message_names_hook_and_output() {
        let e = HookError::Failed {
            path: "/bin/h".into(),
            status: 3,
            stdout: String::new(),
            stderr: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "hook /bin/h exited with status 3: stderr: boom"
        );
        let e = HookError::Timeout {
            path: "/bin/h".into(),
            secs: 2,
        };
        assert_eq!(e.to_string(), "hook /bin/h timed out after 2s");
    }
}
