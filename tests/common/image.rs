//! A small OCI image archive built locally from busybox-static, for tests that need containerd to
//! pull nothing: one uncompressed layer with /bin/busybox, its applet symlinks, /etc/passwd and
//! /etc/group. The archive is built once and cached under cargo's target tmp dir; it is
//! deterministic (fixed mtimes, owners, order), so concurrent test binaries that race to build it
//! produce identical bytes and the atomic rename keeps whichever lands last.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The name the archive's index gives the image; `ctr images import` keeps it.
pub const IMAGE_REF: &str = "localhost/pelagos-test/busybox:latest";

/// Where the busybox-static package installs the binary.
const BUSYBOX: &str = "/bin/busybox";

/// Applets the tests (and a person poking around) use.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "echo",
    "cat",
    "sleep",
    "true",
    "false",
    "id",
    "ls",
    "head",
    "dd",
    "stty",
    "wc",
    "hostname",
    "kill",
    "ps",
    "mount",
    "umount",
    "grep",
    "env",
    "pwd",
    "yes",
    "sha256sum",
    "tail",
    "tty",
    "readlink",
    "mkdir",
    "rm",
    "touch",
    "test",
    "[",
    "printf",
    "seq",
    "tr",
    "cut",
    "sed",
    "awk",
    "date",
    "uname",
    "whoami",
    "nproc",
    "stat",
    "find",
    "xargs",
    "timeout",
    "mkfifo",
    "ln",
    "cp",
    "mv",
    "chmod",
    "top",
    "free",
    "df",
    "du",
    "basename",
    "dirname",
    "sort",
    "uniq",
    "od",
    "hexdump",
    "tee",
    "usleep",
    "nsenter",
    "unshare",
    "setsid",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Returns the path of the image archive, building it on first use in this process.
pub fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pelagos-image");
        fs::create_dir_all(&dir).expect("create the image cache dir");
        // The name carries a digest of what goes in, so a changed applet list is rebuilt.
        let out = dir.join(format!("busybox-oci-{:016x}.tar", recipe_hash()));
        if !is_fresh(&out) {
            build(&dir, &out).unwrap_or_else(|e| panic!("build the busybox image archive: {e}"));
        }
        out
    })
}

fn recipe_hash() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (APPLETS, IMAGE_REF, PATH_ENV, RECIPE_VERSION).hash(&mut h);
    h.finish()
}

/// Bump when the layout changes in a way [`APPLETS`] does not show.
const RECIPE_VERSION: u32 = 1;

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
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

fn build(cache: &Path, out: &Path) -> Result<(), String> {
    if !Path::new(BUSYBOX).exists() {
        return Err(format!(
            "{BUSYBOX} is missing: install busybox-static (scripts/install-deps.sh)"
        ));
    }
    let work = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = build_in(&work, out);
    let _ = fs::remove_dir_all(&work);
    result
}

fn build_in(work: &Path, out: &Path) -> Result<(), String> {
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    for d in [
        "bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var", "home",
    ] {
        mkdir(&rootfs.join(d))?;
    }
    mkdir(&blobs)?;
    set_mode(&rootfs.join("tmp"), 0o1777)?;
    set_mode(&rootfs.join("root"), 0o700)?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| format!("copy {BUSYBOX}: {e}"))?;
    for applet in APPLETS {
        let link = rootfs.join("bin").join(applet);
        symlink("busybox", &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
    }
    write(
        &rootfs.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write(&rootfs.join("etc/group"), b"root:x:0:\nnogroup:x:65534:\n")?;

    let layer_tmp = work.join("layer.tar");
    tar(&rootfs, &layer_tmp)?;
    let (layer_digest, layer_size) = add_blob(&blobs, &layer_tmp)?;

    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "pelagos tests/common/image.rs", "created": "1970-01-01T00:00:00Z" }],
        "created": "1970-01-01T00:00:00Z",
    });
    let (config_digest, config_size) = add_json_blob(&blobs, work, "config.json", &config)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = add_json_blob(&blobs, work, "manifest.json", &manifest)?;

    let tag = IMAGE_REF
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": IMAGE_REF,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    write(&layout.join("index.json"), index.to_string().as_bytes())?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let tmp_out = out.with_extension(format!("tar.{}", std::process::id()));
    tar(&layout, &tmp_out)?;
    fs::rename(&tmp_out, out).map_err(|e| format!("rename to {}: {e}", out.display()))
}

fn mkdir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

fn write(p: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(p, data).map_err(|e| format!("write {}: {e}", p.display()))
}

/// A reproducible tar of `dir`'s contents.
fn tar(dir: &Path, out: &Path) -> Result<(), String> {
    let status = Command::new("tar")
        .args([
            "--create",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .args([
            "--mtime=@0",
            "--format=posix",
            "--pax-option=delete=atime,delete=ctime",
        ])
        .arg("--file")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .map_err(|e| format!("run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar of {} failed: {status}", dir.display()));
    }
    Ok(())
}

/// The hex sha256 of a file.
pub fn sha256_file(p: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .map_err(|e| format!("run sha256sum: {e}"))?;
    if !out.status.success() {
        return Err(format!("sha256sum {} failed", p.display()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_owned)
        .ok_or_else(|| format!("sha256sum printed {text:?}"))
}

/// Moves `file` into the blob store; returns its digest and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64), String> {
    let hex = sha256_file(file)?;
    let size = fs::metadata(file)
        .map_err(|e| format!("stat {}: {e}", file.display()))?
        .len();
    fs::rename(file, blobs.join(&hex)).map_err(|e| format!("move blob {hex}: {e}"))?;
    Ok((format!("sha256:{hex}"), size))
}

fn add_json_blob(
    blobs: &Path,
    work: &Path,
    name: &str,
    value: &serde_json::Value,
) -> Result<(String, u64), String> {
    let tmp = work.join(name);
    write(&tmp, value.to_string().as_bytes())?;
    add_blob(blobs, &tmp)
}

/// The hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut cmd = Command::new("sha256sum");
    let out = super::containerd::run_with_timeout(
        &mut cmd,
        Some(data),
        std::time::Duration::from_secs(60),
    )
    .expect("run sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("sha256sum printed {text:?}"))
}
