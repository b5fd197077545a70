//! One owner of `waitpid` for the whole process.
//!
//! A shim is a child subreaper: orphans of its containers are re-parented to it, so it must reap
//! with `waitpid(-1)`. The library also waits for children of its own (setup helpers, hooks).
//! Both go through here: when a reaping loop is enabled, [`reap_all`] collects every exit into a
//! table and library code waits on that table; otherwise [`wait`] calls `waitpid(pid)` directly.
//! Exits stay in the table until taken, so a child that exits before anyone asks is never lost;
//! exits nobody takes (orphans) are dropped after [`UNCLAIMED_TTL`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long an exit nobody has taken is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + the signal that killed it (containerd's convention).
    pub status: i32,
    /// Wall-clock time of the reap.
    pub at: std::time::SystemTime,
}

impl Exit {
    /// Converts a `waitpid` result; `None` for stops and continues.
    pub fn from_wait_status(ws: WaitStatus) -> Option<Exit> {
        let (pid, status) = match ws {
            WaitStatus::Exited(pid, code) => (pid, code),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32),
            _ => return None,
        };
        Some(Exit {
            pid: pid.as_raw(),
            status,
            at: std::time::SystemTime::now(),
        })
    }
}

struct Table {
    exits: HashMap<i32, (Exit, Instant)>,
}

static LOOP_ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Option<Table>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

/// Declares that this process runs a reaping loop calling [`reap_all`] on every SIGCHLD.
/// From then on [`wait`] waits on the table instead of calling `waitpid` itself.
pub fn enable_loop() {
    LOOP_ENABLED.store(true, Ordering::SeqCst);
}

/// Whether a reaping loop owns `waitpid`.
pub fn loop_enabled() -> bool {
    LOOP_ENABLED.load(Ordering::SeqCst)
}

/// Reaps every exited child without blocking, records each exit for [`wait`] and
/// [`try_take`], and returns them.
pub fn reap_all() -> Vec<Exit> {
    // The table lock is held across the waitpid loop, so that a waiter holding it sees a child
    // either still waitable or recorded, never in between.
    let mut guard = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(ws) => {
                if let Some(exit) = Exit::from_wait_status(ws) {
                    reaped.push(exit);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: no children left
        }
    }
    let now = Instant::now();
    let table = guard.get_or_insert_with(|| Table {
        exits: HashMap::new(),
    });
    table
        .exits
        .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
    for exit in &reaped {
        table.exits.insert(exit.pid, (*exit, now));
    }
    drop(guard);
    if !reaped.is_empty() {
        CHANGED.notify_all();
    }
    reaped
}

/// Takes the recorded exit of `pid`, if the loop has reaped it.
pub fn try_take(pid: i32) -> Option<Exit> {
    let mut guard = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_mut()
        .and_then(|t| t.exits.remove(&pid))
        .map(|(e, _)| e)
}

/// Waits until child `pid` has exited and returns how. With a reaping loop this waits for the
/// loop to record it (at most `timeout`, when given); without one it calls `waitpid(pid)`.
/// `None` when the timeout passed or the pid is not a child of this process.
pub fn wait(pid: i32, timeout: Option<Duration>) -> Option<Exit> {
    if !loop_enabled() {
        return wait_direct(pid, timeout);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut guard = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some((exit, _)) = guard.as_mut().and_then(|t| t.exits.remove(&pid)) {
            return Some(exit);
        }
        // Under the lock the loop is not between reaping and recording, so a pid that is
        // neither recorded nor a waitable child was never ours or was taken by someone else.
        if !child_exists(pid) {
            return None;
        }
        // The timed wait also covers a SIGCHLD the loop has not handled yet.
        let slice = Duration::from_millis(500);
        let wait_for = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                (d - now).min(slice)
            }
            None => slice,
        };
        guard = CHANGED
            .wait_timeout(guard, wait_for)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Whether `pid` is still a (possibly zombie) child of this process.
fn child_exists(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only inspects the child and writes into `info`.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

fn wait_direct(pid: i32, timeout: Option<Duration>) -> Option<Exit> {
    if let Some(timeout) = timeout {
        if !exited_within(pid, timeout) {
            return None;
        }
    }
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(ws) => {
                if let Some(e) = Exit::from_wait_status(ws) {
                    return Some(e);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Waits on a pidfd until `pid` exits or `timeout` passes; true when it exited (or is gone).
fn exited_within(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return true;
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            1.. => return true,
            0 => return false,
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_containerd() {
        let e = Exit::from_wait_status(WaitStatus::Exited(Pid::from_raw(5), 3)).unwrap();
        assert_eq!((e.pid, e.status), (5, 3));
        let s = WaitStatus::Signaled(Pid::from_raw(6), nix::sys::signal::SIGKILL, false);
        assert_eq!(Exit::from_wait_status(s).unwrap().status, 137);
    }
}
