//! Pelagos container core: takes an OCI runtime bundle (config.json and a rootfs) and runs it as a
//! Linux container in-process, with no external runtime binary. It knows nothing of containerd.
//!
//! Embedding binaries must call [`init::run_if_helper`] first thing in `main`: containers are
//! set up by a re-executed copy of the binary (see [`process`]), which enters there.

pub use oci_spec;

pub mod caps;
pub mod cgroups;
pub mod checkpoint;
pub mod container;
pub mod dbus;
pub mod features;
pub mod gvariant;
pub mod hooks;
pub mod init;
pub mod lsm;
pub mod namespaces;
pub mod process;
pub mod reaper;
pub mod rootfs;
pub mod seccomp;
pub mod selfexe;
pub mod spec;
pub mod state;
pub mod sys;
pub mod user;

pub use container::{
    console_socket, Config, ConsoleSocket, Container, CreateOptions, ExecProcess, Stdio,
};
pub use state::{State, Status};
