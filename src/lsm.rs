//! Linux security modules named in the spec: the AppArmor profile and SELinux label of a
//! process, applied for its execve as runc does, and a clear error when the spec asks for a
//! module the host does not run (silently running unconfined would be worse).

use std::path::Path;

use oci_spec::runtime::{Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum LsmError {
    #[error("{what}: apparmorProfile {profile:?} is set but AppArmor is not enabled on this host")]
    NoAppArmor { what: &'static str, profile: String },
    #[error("{what}: selinuxLabel {label:?} is set but SELinux is not enabled on this host")]
    NoSelinux { what: &'static str, label: String },
    #[error("config.json: linux.mountLabel {0:?} is not supported")]
    MountLabel(String),
    #[error("set {what} for exec: {source}")]
    Apply {
        what: &'static str,
        source: std::io::Error,
    },
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Fails when `process` asks for a module the host lacks; `what` names the process.
pub fn validate_process(process: &Process, what: &'static str) -> Result<(), LsmError> {
    if let Some(profile) = set(process.apparmor_profile()) {
        if !apparmor_enabled() {
            return Err(LsmError::NoAppArmor {
                what,
                profile: profile.to_string(),
            });
        }
    }
    if let Some(label) = set(process.selinux_label()) {
        if !selinux_enabled() {
            return Err(LsmError::NoSelinux {
                what,
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

/// Mount labels would need `context=` on every mount: refused rather than ignored.
pub fn validate_spec(spec: &Spec) -> Result<(), LsmError> {
    match spec.linux().as_ref().and_then(|l| set(l.mount_label())) {
        Some(label) => Err(LsmError::MountLabel(label.to_string())),
        None => Ok(()),
    }
}

/// Arranges the process's profile and label for its next execve (in the setup helper, with the
/// container's /proc mounted).
pub fn apply(process: &Process) -> Result<(), LsmError> {
    if let Some(profile) = set(process.apparmor_profile()) {
        let attr = if Path::new("/proc/thread-self/attr/apparmor/exec").exists() {
            "/proc/thread-self/attr/apparmor/exec"
        } else {
            "/proc/thread-self/attr/exec"
        };
        std::fs::write(attr, format!("exec {profile}")).map_err(|source| LsmError::Apply {
            what: "the AppArmor profile",
            source,
        })?;
    }
    if let Some(label) = set(process.selinux_label()) {
        std::fs::write("/proc/thread-self/attr/exec", label).map_err(|source| LsmError::Apply {
            what: "the SELinux label",
            source,
        })?;
    }
    Ok(())
}
