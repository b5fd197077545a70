//! The `delete` action: containerd's cleanup of one container whose shim is gone or done
//! (run after every shim connection closes, so usually there is nothing left to do).
//!
//! It is quick and idempotent, and touches only `-id`: with grouping the shim daemon may still
//! serve other containers. The processes are not our children, so they are killed, not
//! reaped; the state and cgroup go with `Container::delete`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::DeleteResponse;

use crate::args::Flags;
use crate::events::timestamp;
use crate::mount;

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("delete: encode response: {0}")]
    Encode(#[from] containerd_shim_protos::protobuf::Error),
    #[error("delete: no bundle: {0}")]
    Bundle(std::io::Error),
}

/// Removes the shim socket named in `<bundle>/address` when no shim answers on it any more
/// (the shim was killed). A live socket is left alone: with grouping it serves others.
///
/// containerd runs this action as soon as the killed shim's connection breaks, which can be
/// before the dying process has closed its listener: a connection is then queued and reset
/// rather than refused. Such a socket is looked at again for up to a second. A live shim is
/// asked for a `Connect` and answers at once: containerd 1.6 runs this action every time it
/// closes a container's connection, also to a grouped shim that serves the pod on, and
/// CRI's StopContainer waits for it (waiting out a read timeout instead cost 100 ms there).
fn remove_dead_socket(bundle: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = Path::new(address.trim().trim_start_matches("unix://"));
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return;
    }
    for _ in 0..20 {
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                if let Err(e) = std::fs::remove_file(path) {
                    log::warn!("remove dead shim socket {}: {e}", path.display());
                }
                return;
            }
            Err(_) => return,
            Ok(mut conn) => {
                use std::io::{Read, Write};
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(100)));
                let _ = conn.write_all(&connect_frame());
                match conn.read(&mut [0u8; 1]) {
                    // Reset or closed unaccepted: the listener is going away with its process.
                    Ok(0) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
                    _ => return,
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A ttrpc `Connect` call with an empty request on stream 1: a shim answers it at once, and
/// it changes nothing.
fn connect_frame() -> Vec<u8> {
    use ttrpc::proto::{Codec, Request, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_REQUEST};
    let mut req = Request::new();
    req.service = "containerd.task.v2.Task".into();
    req.method = "Connect".into();
    let body = req.encode().unwrap_or_default();
    let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
    frame.extend_from_slice(&body);
    frame
}

/// The state root of a namespace's containers (shared by the daemon and `delete`).
pub fn state_root(namespace: &str) -> PathBuf {
    Path::new("/run/pelagos").join(namespace)
}

/// Cleans up `-id` and returns the DeleteResponse bytes to print.
pub fn run(flags: &Flags) -> Result<Vec<u8>, DeleteError> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(DeleteError::Bundle)?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let config = pelagos::Config {
        root: state_root(&flags.namespace),
        helper: None,
        systemd_cgroup: false,
    };
    let mut pid = 0;
    if config.root.join(&flags.id).exists() {
        match pelagos::Container::load(&config, &flags.id) {
            Ok(c) => {
                pid = c.pid();
                if let Err(e) = c.delete(true) {
                    log::warn!("delete {}: {e}", flags.id);
                }
            }
            Err(e) => log::warn!("delete {}: load: {e}", flags.id),
        }
    }
    if let Err(e) = mount::unmount_recursive(&bundle.join("rootfs")) {
        log::warn!("delete {}: {e}", flags.id);
    }
    remove_dead_socket(&bundle);
    let resp = DeleteResponse {
        pid: pid.max(0) as u32,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    Ok(resp.write_to_bytes()?)
}
