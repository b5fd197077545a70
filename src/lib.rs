//! Pelagos container core: takes an OCI runtime bundle (config.json and a rootfs) and runs it as a
//! Linux container in-process, with no external runtime binary. It knows nothing of containerd.
//!
//! Embedding binaries must call [`run_if_helper`] first thing in `main`: containers are set up by
//! a re-executed copy of the binary, which enters there.
//!
//! The helper protocol, the raw syscalls and the helper's own code (`process`, `sys`, `init`)
//! are internal; [`pidfd`] has what embedders need to signal and wait on container processes,
//! and [`test_support`] what the integration tests and fuzz targets reach inside.

pub use oci_spec;

pub mod caps;
pub mod cgroups;
pub mod checkpoint;
pub mod container;
pub mod dbus;
pub mod features;
pub mod gvariant;
pub mod hooks;
pub(crate) mod init;
pub mod lsm;
pub mod namespaces;
pub(crate) mod process;
pub mod reaper;
pub mod rootfs;
pub mod seccomp;
pub mod selfexe;
pub mod spec;
pub mod state;
pub(crate) mod sys;
pub mod test_support;
pub mod user;

pub use container::{
    console_socket, Config, ConsoleSocket, Container, CreateOptions, ExecProcess, Stdio,
};
pub use init::run_if_helper;
pub use state::{State, Status};

/// Container processes by pidfd, for embedders that signal, poll and reap them.
pub mod pidfd {
    pub use crate::sys::{
        pidfd_exited as exited, pidfd_is_unreaped_child as is_unreaped_child, pidfd_open as open,
        pidfd_send_signal as send_signal, pidfd_wait_exit as wait_exit,
    };
}
