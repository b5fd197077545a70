//! OCI hooks: runs one hook with the state JSON on stdin, its args and env, and its timeout.
//!
//! A hook runs `path` with `args` (`args[0]` is argv[0]; with no args argv[0] is `path`) and
//! exactly the `env` it lists (an absent `env` means an empty environment). Its stdout and
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
use oci_spec::runtime::Hook;

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
    cmd.env_clear();
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
    // The pidfd pins the process: signalling through it can never hit a recycled pid.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t as u64));

    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|s| s.as_fd()),
        stdout.as_ref().map(|s| s.as_fd()),
        stderr.as_ref().map(|s| s.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd);
    }
    let (mut out, mut err) = (Tail::default(), Tail::default());
    let mut written = 0;
    if state_json.is_empty() {
        stdin = None;
    }

    let timed_out = match &pidfd {
        Some(pidfd) => pump(
            pidfd,
            deadline,
            state_json,
            &mut written,
            &mut stdin,
            &mut stdout,
            &mut stderr,
            &mut out,
            &mut err,
        )
        .map_err(|source| HookError::Io {
            path: path.clone(),
            what: "poll",
            source,
        })?,
        // No pidfd (the process is already gone): there is nothing left to feed or wait for.
        None => false,
    };
    drop(stdin);
    if timed_out {
        if let Some(fd) = &pidfd {
            let _ = crate::sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        }
        let _ = crate::reaper::wait(pid, None);
        log::warn!(
            "hook {path} killed after its {}s timeout",
            timeout.unwrap_or(0)
        );
        return Err(HookError::Timeout {
            path,
            secs: timeout.unwrap_or(0),
        });
    }
    // Whatever the hook wrote before exiting is in the pipe buffers now.
    if let Some(s) = stdout.as_mut() {
        drain(s, &mut out);
    }
    if let Some(s) = stderr.as_mut() {
        drain(s, &mut err);
    }
    drop((stdout, stderr));
    let exit = crate::reaper::wait(pid, None).ok_or_else(|| HookError::Lost {
        path: path.clone(),
        pid,
    })?;
    if exit.status != 0 {
        return Err(HookError::Failed {
            path,
            status: exit.status,
            stdout: out.text(),
            stderr: err.text(),
        });
    }
    log::debug!("hook {path} succeeded");
    Ok(())
}

/// Feeds stdin and drains the output pipes until the process exits (false) or the deadline
/// passes (true).
#[allow(clippy::too_many_arguments)]
fn pump(
    pidfd: &OwnedFd,
    deadline: Option<Instant>,
    input: &[u8],
    written: &mut usize,
    stdin: &mut Option<std::process::ChildStdin>,
    stdout: &mut Option<std::process::ChildStdout>,
    stderr: &mut Option<std::process::ChildStderr>,
    out: &mut Tail,
    err: &mut Tail,
) -> std::io::Result<bool> {
    loop {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(true);
                }
                PollTimeout::try_from(left.as_millis().max(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let (exited, in_ready, out_ready, err_ready) = {
            let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let in_idx = stdin.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
                fds.len() - 1
            });
            let out_idx = stdout.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let err_idx = stderr.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
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
                ready(Some(0)),
                ready(in_idx),
                ready(out_idx),
                ready(err_idx),
            )
        };
        if in_ready {
            if let Some(s) = stdin.as_mut() {
                match s.write(&input[*written..]) {
                    Ok(n) => *written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // EPIPE: the hook does not read its stdin; that is its business.
                    Err(_) => *written = input.len(),
                }
            }
            if *written >= input.len() {
                *stdin = None;
            }
        }
        if out_ready && !stdout.as_mut().is_some_and(|s| drain(s, out)) {
            *stdout = None;
        }
        if err_ready && !stderr.as_mut().is_some_and(|s| drain(s, err)) {
            *stderr = None;
        }
        if exited {
            return Ok(false);
        }
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
