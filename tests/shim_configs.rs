//! The runtime registration snippets in configs/ load in the containerd they are written for.

mod common;

use std::path::Path;
use std::process::Command;

use common::containerd::bin_dir;

fn dump(version: &str, file: &str) -> String {
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(file);
    let out = Command::new(bin_dir(version).join("containerd"))
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .expect("run containerd config dump");
    assert!(
        out.status.success(),
        "containerd {version} rejects {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `runtime_type` line inside the `runtimes.pelagos` table of a dumped config.
fn pelagos_runtime_type(dump: &str) -> Option<String> {
    let mut in_table = false;
    for line in dump.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line.ends_with("runtimes.pelagos]");
        } else if in_table && line.starts_with("runtime_type") {
            return line
                .split('=')
                .nth(1)
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    None
}

#[test]
fn containerd_1x_snippet_registers_pelagos() {
    let dump = dump("1.6", "containerd-1.x.toml");
    assert_eq!(
        pelagos_runtime_type(&dump).as_deref(),
        Some("io.containerd.pelagos.v2"),
        "{dump}"
    );
}

#[test]
fn containerd_2x_snippet_registers_pelagos() {
    let dump = dump("2.1", "containerd-2.x.toml");
    assert_eq!(
        pelagos_runtime_type(&dump).as_deref(),
        Some("io.containerd.pelagos.v2"),
        "{dump}"
    );
}
