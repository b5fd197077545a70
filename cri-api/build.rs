//! Generates the CRI v1 types and client from `proto/api.proto` with the protoc binary that
//! the protoc-bin-vendored-linux-* crates ship, so no protoc has to be installed (README.md,
//! "Try it"). On a platform without such a crate, prost-build's own lookup applies (`PROTOC`,
//! then `protoc` on PATH).
use std::path::PathBuf;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn vendored_protoc() -> Option<PathBuf> {
    Some(protoc_bin_vendored_linux_x86_64::protoc_bin_path())
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn vendored_protoc() -> Option<PathBuf> {
    Some(protoc_bin_vendored_linux_aarch_64::protoc_bin_path())
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn vendored_protoc() -> Option<PathBuf> {
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    if let Some(protoc) = vendored_protoc() {
        config.protoc_executable(protoc);
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(config, &["proto/api.proto"], &["proto"])?;
    Ok(())
}
