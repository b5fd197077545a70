//! The container lifecycle as a library: create, start, kill, exec, state, pause/resume,
//! update, delete. Each container's processes are direct children of the caller.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxResources, Process};

use crate::cgroups::Cgroup;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container: {0}")]
    Other(String),
}

/// Where state lives and how the setup helper is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// State root: `<root>/<id>/state.json` per container (e.g. /run/pelagos/<namespace>).
    pub root: PathBuf,
    /// The binary re-executed as the setup helper; it must call `init::run_if_helper()` first
    /// thing. `None`: this process's own executable, sealed (see `selfexe`).
    pub helper: Option<PathBuf>,
}

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
    /// A pty slave that becomes 0, 1, 2 and the controlling terminal.
    Terminal(OwnedFd),
    /// Inherit the caller's 0, 1, 2.
    Inherit,
}

#[derive(Debug)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: Stdio,
    pub no_pivot: bool,
    /// Extra fds passed as 3, 4, … (runc --preserve-fds).
    pub preserve_fds: Vec<OwnedFd>,
}

/// A process exec'd into a running container.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

#[derive(Debug)]
pub struct Container {
    state: State,
}

impl Container {
    /// Creates the container: the init is left blocked just before execve of the user process.
    pub fn create(config: &Config, opts: CreateOptions) -> Result<Container, Error> {
        let _ = (config, opts);
        todo!()
    }

    /// Loads a container created earlier (possibly by another process) from the state root.
    pub fn load(config: &Config, id: &str) -> Result<Container, Error> {
        let _ = (config, id);
        todo!()
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Host pid of the container's init.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// pidfd of the init (signals never reach a recycled pid).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        todo!()
    }

    /// Releases the init to execve the user process; returns once the exec happened, or the
    /// exec error. Runs poststart hooks.
    pub fn start(&mut self) -> Result<(), Error> {
        todo!()
    }

    /// Sends `signal` to the init, or to every process in the cgroup when `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), Error> {
        let _ = (signal, all);
        todo!()
    }

    /// Runs `process` inside the running container (all its namespaces, its cgroup) and
    /// returns once it has exec'd.
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess, Error> {
        let _ = (process, stdio);
        todo!()
    }

    /// Runtime-spec state, with the status read from the kernel.
    pub fn state(&self) -> State {
        self.state.clone()
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        todo!()
    }

    pub fn pause(&self) -> Result<(), Error> {
        todo!()
    }

    pub fn resume(&self) -> Result<(), Error> {
        todo!()
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        let _ = resources;
        todo!()
    }

    /// Removes the container: with `force` kills what runs first; runs poststop hooks, removes
    /// the cgroup, the mounts it made and the state dir. The bundle's rootfs mount is the
    /// caller's.
    pub fn delete(self, force: bool) -> Result<(), Error> {
        let _ = force;
        todo!()
    }
}
