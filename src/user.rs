//! Process identity and attributes: uid/gid/additional groups, rlimits, umask, oom_score_adj,
//! no_new_privileges, sysctls.

use oci_spec::runtime::{Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("process: {0}")]
    Other(String),
}

/// Sets rlimits and oom_score_adj (before entering the container, while privileged).
pub fn apply_limits(process: &Process, oom_score_adj: Option<i32>) -> Result<(), UserError> {
    let _ = (process, oom_score_adj);
    todo!()
}

/// Writes `spec.linux.sysctl` under /proc/sys (after pivot_root).
pub fn apply_sysctl(spec: &Spec) -> Result<(), UserError> {
    let _ = spec;
    todo!()
}

/// Bounding set, then setgroups/setgid/setuid keeping capabilities, then the capability sets
/// (runc's finalizeNamespace order), umask and no_new_privileges.
pub fn finalize_identity(process: &Process) -> Result<(), UserError> {
    let _ = process;
    todo!()
}
