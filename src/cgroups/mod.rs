//! cgroups on v1, v2 and hybrid hosts: create and configure a container's cgroup from
//! `linux.resources`, add processes, update, freeze/thaw, list pids, stats, OOM notification,
//! destroy.

use std::os::fd::BorrowedFd;

use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: {0}")]
    Other(String),
}

/// Which hierarchies the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v1 controllers only.
    Legacy,
    /// v1 controllers plus a v2 mount (usually /sys/fs/cgroup/unified) without controllers.
    Hybrid,
    /// One v2 hierarchy at /sys/fs/cgroup.
    Unified,
}

/// Detects the host's cgroup mode (cached).
pub fn mode() -> Mode {
    todo!()
}

/// Turns `linux.cgroupsPath` into a path below the hierarchy roots: absolute as is, relative
/// below the root, `slice:prefix:name` mapped to `slice/prefix-name.scope`-style path when
/// systemd is absent; empty or absent gives `/pelagos/<id>`... the real default is decided by
/// the implementation and documented there.
pub fn resolve_path(cgroups_path: Option<&str>, id: &str) -> Result<String, CgroupError> {
    let _ = (cgroups_path, id);
    todo!()
}

/// A container's cgroup in every hierarchy of the host.
#[derive(Debug)]
pub struct Cgroup {
    path: String,
}

impl Cgroup {
    /// Creates the cgroup at `path` (see [`resolve_path`]) and applies `resources`. On error
    /// nothing is left behind.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup, CgroupError> {
        let _ = (path, resources);
        todo!()
    }

    /// Opens an existing cgroup (no creation).
    pub fn open(path: &str) -> Result<Cgroup, CgroupError> {
        let _ = path;
        todo!()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// A directory fd usable with clone3's CLONE_INTO_CGROUP: only on a Unified host.
    pub fn unified_dir_fd(&self) -> Option<BorrowedFd<'_>> {
        todo!()
    }

    /// Moves `pid` into this cgroup in every hierarchy (on hybrid hosts including the v2 mount).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let _ = pid;
        todo!()
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let _ = resources;
        todo!()
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        todo!()
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        todo!()
    }

    /// Every pid in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        todo!()
    }

    /// Removes the cgroup from every hierarchy (it must be empty).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        todo!()
    }
}
