//! OOM-kill notification for one cgroup, as an fd for the caller's epoll.
//!
//! - v1 memory controller (legacy and hybrid hosts): an eventfd registered through
//!   `cgroup.event_control` on `memory.oom_control`. The kernel signals it on every OOM in the
//!   cgroup, and also once when the cgroup is removed: a count of one only counts while the
//!   cgroup still exists, two or more include an OOM (as conmon reads it; systemd removes a
//!   scope's cgroups as soon as its last process is gone, which may be before the read).
//! - v2: inotify IN_MODIFY on `memory.events`; a change counts when `oom_kill` grew.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode as FileMode;

use super::{fs, Cgroup, CgroupError, Route};

#[derive(Debug)]
enum Kind {
    V1 {
        efd: EventFd,
    },
    V2 {
        inotify: Inotify,
        last_oom_kill: u64,
    },
}

/// Watches one cgroup for OOM kills. Put [`OomWatch::fd`] in an epoll set (readable = maybe an
/// OOM) and call [`OomWatch::check`] when it fires.
#[derive(Debug)]
pub struct OomWatch {
    kind: Kind,
    /// The memory controller's directory of the cgroup.
    dir: PathBuf,
}

impl OomWatch {
    pub(crate) fn new(cg: &Cgroup) -> Result<OomWatch, CgroupError> {
        match cg.route("memory") {
            Some(Route::V1(dir)) => Self::new_v1(dir.to_path_buf()),
            Some(Route::V2(dir)) => Self::new_v2(dir.to_path_buf()),
            None => Err(CgroupError::Unsupported {
                resource: "oom watch".into(),
                reason: format!("no memory controller for cgroup {}", cg.path()),
            }),
        }
    }

    fn new_v1(dir: PathBuf) -> Result<OomWatch, CgroupError> {
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| CgroupError::Other(format!("eventfd for oom watch: {e}")))?;
        let control = dir.join("memory.oom_control");
        let cfd: OwnedFd = open(
            control.as_path(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .map_err(|source| CgroupError::Open {
            path: control.clone(),
            source,
        })?;
        // The kernel keeps its own references once registered; `cfd` can close afterwards.
        fs::write(
            &dir,
            "cgroup.event_control",
            &format!("{} {}", efd.as_fd().as_raw_fd(), cfd.as_raw_fd()),
        )?;
        Ok(OomWatch {
            kind: Kind::V1 { efd },
            dir,
        })
    }

    fn new_v2(dir: PathBuf) -> Result<OomWatch, CgroupError> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| CgroupError::Other(format!("inotify for oom watch: {e}")))?;
        let events = dir.join("memory.events");
        inotify
            .add_watch(events.as_path(), AddWatchFlags::IN_MODIFY)
            .map_err(|source| CgroupError::Open {
                path: events.clone(),
                source,
            })?;
        let last_oom_kill = oom_kills_v2(&dir);
        Ok(OomWatch {
            kind: Kind::V2 {
                inotify,
                last_oom_kill,
            },
            dir,
        })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::V1 { efd } => efd.as_fd(),
            Kind::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// Consumes the fd's readiness; true when an OOM kill happened since the last check.
    pub fn check(&mut self) -> Result<bool, CgroupError> {
        match &mut self.kind {
            Kind::V1 { efd } => match efd.read() {
                Ok(n) => Ok(n >= 2 || (n == 1 && self.dir.is_dir())),
                Err(Errno::EAGAIN) => Ok(false),
                Err(e) => Err(CgroupError::Other(format!(
                    "read oom eventfd of {}: {e}",
                    self.dir.display()
                ))),
            },
            Kind::V2 {
                inotify,
                last_oom_kill,
            } => {
                loop {
                    match inotify.read_events() {
                        Ok(ev) if !ev.is_empty() => continue,
                        Ok(_) | Err(Errno::EAGAIN) => break,
                        Err(e) => {
                            return Err(CgroupError::Other(format!(
                                "read oom inotify of {}: {e}",
                                self.dir.display()
                            )))
                        }
                    }
                }
                let now = oom_kills_v2(&self.dir);
                let fired = now > *last_oom_kill;
                *last_oom_kill = now.max(*last_oom_kill);
                Ok(fired)
            }
        }
    }

    /// Whether the watched cgroup still exists (a removed cgroup never reports again).
    pub fn alive(&self) -> bool {
        self.dir.is_dir()
    }
}

fn oom_kills_v2(dir: &std::path::Path) -> u64 {
    fs::read_opt(&dir.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 watch on a plain file standing in for memory.events: inotify reports its
    /// modifications the same way kernfs does.
    #[test]
    fn v2_watch_reports_new_oom_kills_once() {
        let dir = std::env::temp_dir().join(format!("pelagos-oomfix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("memory.events");
        let set = |oom_kill: u32| {
            std::fs::write(
                &events,
                format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kill}\n"),
            )
            .unwrap()
        };
        set(2);
        let mut w = OomWatch::new_v2(dir.clone()).unwrap();
        assert!(
            !w.check().unwrap(),
            "kills before the watch started do not count"
        );
        set(2);
        assert!(!w.check().unwrap(), "a change without a new kill");
        set(3);
        let mut fds = [nix::poll::PollFd::new(w.fd(), nix::poll::PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap(),
            1,
            "the fd is readable after a modification"
        );
        assert!(w.check().unwrap());
        assert!(!w.check().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The v1 eventfd's count: one signal is an OOM only while the cgroup exists (its removal
    /// signals once too); two or more include an OOM even when the cgroup is gone.
    #[test]
    fn v1_count_tells_an_oom_from_the_removal() {
        let dir = std::env::temp_dir().join(format!("pelagos-oomv1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .unwrap();
        let mut w = OomWatch {
            kind: Kind::V1 { efd },
            dir: dir.clone(),
        };
        let signal = |w: &OomWatch, n: u64| match &w.kind {
            Kind::V1 { efd } => efd.write(n).map(drop).unwrap(),
            Kind::V2 { .. } => unreachable!(),
        };
        assert!(!w.check().unwrap(), "nothing signalled");
        signal(&w, 1);
        assert!(w.check().unwrap(), "an OOM of a live cgroup");
        std::fs::remove_dir_all(&dir).unwrap();
        signal(&w, 1);
        assert!(!w.check().unwrap(), "the removal alone");
        signal(&w, 2);
        assert!(
            w.check().unwrap(),
            "an OOM, then the removal, read together"
        );
    }
}
