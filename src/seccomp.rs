//! seccomp: compiles an OCI `LinuxSeccomp` profile to BPF with libseccomp (in the runtime,
//! cached per profile) and loads the BPF in the container (no libseccomp work after fork).

use oci_spec::runtime::LinuxSeccomp;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: {0}")]
    Other(String),
}

/// A compiled filter, ready to load with seccomp(SECCOMP_SET_MODE_FILTER).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CompiledFilter {
    /// Raw `struct sock_filter` array, 8 bytes each, native endian.
    pub bpf: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* bits from the profile's `flags`.
    pub flags: u32,
}

/// Compiles (or returns from the process-wide cache) the filter for `profile`. Errors name the
/// bad syscall, action, architecture, operator or flag.
pub fn compile(profile: &LinuxSeccomp) -> Result<std::sync::Arc<CompiledFilter>, SeccompError> {
    let _ = profile;
    todo!()
}

/// Loads a compiled filter into the calling thread (NNP or CAP_SYS_ADMIN must hold).
pub fn load(filter: &CompiledFilter) -> Result<(), SeccompError> {
    let _ = filter;
    todo!()
}
