//! The small busybox OCI image the shim tests import, so containerd pulls nothing. It is built
//! by scripts/build-image.sh (also used by `make demo`) once and cached under cargo's target tmp
//! dir, named after a digest of the script so a changed recipe is rebuilt. The script's output
//! is reproducible and lands by rename, so concurrent test binaries racing to build it agree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The name the archive's index gives the image; `ctr images import` keeps it.
pub const IMAGE_REF: &str = "localhost/pelagos-test/busybox:latest";

const SCRIPT: &str = include_str!("../../scripts/build-image.sh");
const BUSYBOX: &str = "/bin/busybox";

/// Returns the path of the image archive, building it on first use in this process.
pub fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pelagos-image");
        let digest = sha256_hex(SCRIPT.as_bytes());
        let out = dir.join(format!("busybox-oci-{}.tar", &digest[..16]));
        if !is_fresh(&out) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh");
            let result = Command::new("bash")
                .arg(&script)
                .arg(&out)
                .arg(IMAGE_REF)
                .output()
                .expect("run scripts/build-image.sh");
            assert!(
                result.status.success(),
                "scripts/build-image.sh failed: {}",
                String::from_utf8_lossy(&result.stderr)
            );
        }
        out
    })
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An archive older than the busybox binary it copied is rebuilt (the package was upgraded).
fn is_fresh(out: &Path) -> bool {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(out), mtime(Path::new(BUSYBOX))) {
        (Some(archive), Some(busybox)) => archive >= busybox,
        _ => false,
    }
}

/// The hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut cmd = Command::new("sha256sum");
    let out = super::containerd::run_with_timeout(&mut cmd, Some(data), Duration::from_secs(60))
        .expect("run sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("sha256sum printed {text:?}"))
}
