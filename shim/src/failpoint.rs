//! Pauses inside Task calls, for the tests of faults in the middle of an RPC
//! (tests/rel_midflight.rs). Off unless containerd's environment names a directory in
//! `PELAGOS_SHIM_FAILPOINTS`; then a call `<Call>` on container `<id>` (exec `<exec id>`) finds
//! a file `<Call>-<id>` (`<Call>-<id>-<exec id>`) there, removes it and stops the whole shim with
//! SIGSTOP, where the test kills containerd or the shim before letting it go on. A signal, not
//! a sleep: the test sees the stop in /proc and needs no timing. [`hold`] instead keeps one
//! thread (the event publisher) waiting for as long as such a file exists.

use std::path::PathBuf;
use std::sync::OnceLock;

pub const ENV: &str = "PELAGOS_SHIM_FAILPOINTS";

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os(ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .as_ref()
}

/// Stops the shim here if a test asked for it (see the module doc).
pub fn hit(call: &str, id: &str, exec_id: &str) {
    let Some(dir) = dir() else { return };
    let name = if exec_id.is_empty() {
        format!("{call}-{id}")
    } else {
        format!("{call}-{id}-{exec_id}")
    };
    if std::fs::remove_file(dir.join(&name)).is_ok() {
        log::warn!("failpoint {name}: stopping the shim");
        // SAFETY: raise(2) has no memory effects; SIGSTOP stops every thread of the shim.
        unsafe { libc::raise(libc::SIGSTOP) };
        log::warn!("failpoint {name}: continued");
    }
}

/// Waits while `<call>-<id>` exists (see the module doc): the caller's thread is held, the rest
/// of the shim goes on.
pub fn hold(call: &str, id: &str) {
    let Some(dir) = dir() else { return };
    let path = dir.join(format!("{call}-{id}"));
    if path.exists() {
        log::warn!("failpoint {call}-{id}: holding");
        while path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        log::warn!("failpoint {call}-{id}: released");
    }
}
