//! Linux capabilities: name parsing and validation, bounding/effective/permitted/inheritable/
//! ambient sets.

use oci_spec::runtime::LinuxCapabilities;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("capabilities: {0}")]
    Other(String),
}

/// Fails with the offending name for an unknown capability in any set.
pub fn validate(caps: &LinuxCapabilities) -> Result<(), CapsError> {
    let _ = caps;
    Ok(())
}

/// Drops the bounding set to `caps.bounding`. Called before changing uid.
pub fn apply_bounding(caps: &LinuxCapabilities) -> Result<(), CapsError> {
    let _ = caps;
    todo!()
}

/// Sets effective, permitted, inheritable and ambient sets. Called after changing uid.
pub fn apply(caps: &LinuxCapabilities) -> Result<(), CapsError> {
    let _ = caps;
    todo!()
}
