//! The container's filesystem view: mounts, devices, pivot_root, masked and read-only paths.
//! Runs inside the setup helper (single-threaded, already in the container's mount namespace).

use std::path::Path;

use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs: {0}")]
    Other(String),
}

/// Everything before pivot_root: root propagation private, rootfs bind, every `spec.mounts`
/// entry (destinations resolved inside `rootfs` without following symlinks out of it), default
/// and spec devices, /dev symlinks, /dev/ptmx. `in_userns`: bind devices instead of mknod.
pub fn prepare(spec: &Spec, rootfs: &Path, in_userns: bool) -> Result<(), RootfsError> {
    let _ = (spec, rootfs, in_userns);
    todo!()
}

/// pivot_root into `rootfs` (chroot when `no_pivot`) and detach the old root.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    let _ = (rootfs, no_pivot);
    todo!()
}

/// After pivot_root: readonly paths, masked paths (fd-verified /dev/null), readonly root,
/// final rootfsPropagation.
pub fn finalize(spec: &Spec) -> Result<(), RootfsError> {
    let _ = spec;
    todo!()
}

/// Checks the spec's mounts and devices without touching the system (types, options, paths).
pub fn validate(spec: &Spec) -> Result<(), RootfsError> {
    let _ = spec;
    Ok(())
}
