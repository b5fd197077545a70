//! Loading and checking an OCI bundle: config.json parsed with oci-spec, then every check that
//! can be made without touching the system, so bad input fails before anything is created.
//! Errors name the field (or JSON line and column) that is wrong.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::namespaces::{self, Kind, NsError, NsPlan};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid config at line {line} column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config.json: unsupported ociVersion {0:?} (supported: 1.x)")]
    Version(String),
    #[error("config.json: process is missing")]
    MissingProcess,
    #[error("{0}: args is missing or empty")]
    MissingArgs(&'static str),
    #[error("{what}: env entry {entry:?} {problem}")]
    Env {
        what: &'static str,
        entry: String,
        problem: &'static str,
    },
    #[error("{what}: cwd {cwd:?} is not an absolute path")]
    RelativeCwd { what: &'static str, cwd: PathBuf },
    #[error("config.json: root.path is missing")]
    MissingRoot,
    #[error("config.json: root.path {path}: {source}")]
    Rootfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config.json: root.path {0} is not a directory")]
    RootfsNotDir(PathBuf),
    #[error("config.json: root.path {0} is a symlink or passes through one (runc refuses it too)")]
    RootfsSymlink(PathBuf),
    #[error("config.json: {0} is set but the container has no uts namespace of its own")]
    NeedsUts(&'static str),
    #[error("config.json: linux.namespaces must include a mount namespace: pelagos sets up the rootfs (pivot_root, mounts, masked paths) in the container's own mount namespace and never in the host's")]
    NeedsMountNs,
    #[error("config.json: linux.timeOffsets is set but the container creates no time namespace")]
    TimeOffsetsWithoutTimens,
    #[error("config.json: {0}")]
    Namespaces(#[from] NsError),
    #[error("config.json: {0}")]
    Caps(#[from] crate::caps::CapsError),
    #[error("config.json: {0}")]
    Mounts(#[from] crate::rootfs::RootfsError),
    #[error("{0}")]
    Lsm(#[from] crate::lsm::LsmError),
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub path: PathBuf,
    pub spec: Spec,
    /// Absolute, symlink-free path of the root filesystem.
    pub rootfs: PathBuf,
    pub namespaces: NsPlan,
}

/// Reads `<bundle>/config.json` and checks it (see [`validate`]).
pub fn load(bundle: &Path) -> Result<Bundle, SpecError> {
    let path = std::fs::canonicalize(bundle).map_err(|source| SpecError::Bundle {
        path: bundle.to_path_buf(),
        source,
    })?;
    let config = path.join("config.json");
    let bytes = std::fs::read(&config).map_err(|source| SpecError::Read {
        path: config.clone(),
        source,
    })?;
    let spec = parse(&bytes, &config)?;
    let namespaces = validate(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path())
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or(SpecError::MissingRoot)?;
    let rootfs = std::fs::canonicalize(path.join(root)).map_err(|source| SpecError::Rootfs {
        path: root.clone(),
        source,
    })?;
    if !rootfs.is_dir() {
        return Err(SpecError::RootfsNotDir(root.clone()));
    }
    // As runc's validate.rootfs: a symlinked root.path would let a bundle name any host
    // directory, `/` included, as the container's root, and mount points would be made there.
    if rootfs != lexical_join(&path, root) {
        return Err(SpecError::RootfsSymlink(root.clone()));
    }
    Ok(Bundle {
        path,
        spec,
        rootfs,
        namespaces,
    })
}

/// `base` joined with `rel` (which may be absolute), `.` and `..` resolved without looking at
/// the filesystem (Go's filepath.Clean).
fn lexical_join(base: &Path, rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Parses config.json bytes; `path` only names the file in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Spec, SpecError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        // serde_json appends " at line L column C"; we report them as fields.
        let mut message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        // An unknown name (a capability, a namespace type…) is followed by every known one.
        if let Some(i) = message.find(", expected one of") {
            message.truncate(i);
        }
        SpecError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

/// Every check of a container's config that needs no system access; returns the namespace
/// layout.
pub fn validate(spec: &Spec) -> Result<NsPlan, SpecError> {
    check_version(spec.version())?;
    let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
    validate_process(process, "config.json: process")?;
    let ns = namespaces::plan(spec)?;
    if !ns.has(Kind::Mount) {
        return Err(SpecError::NeedsMountNs);
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !ns.has(Kind::Uts) {
        return Err(SpecError::NeedsUts("hostname"));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) && !ns.has(Kind::Uts) {
        return Err(SpecError::NeedsUts("domainname"));
    }
    let time_offsets = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
        .is_some_and(|t| !t.is_empty());
    if time_offsets && !ns.creates(Kind::Time) {
        return Err(SpecError::TimeOffsetsWithoutTimens);
    }
    crate::rootfs::validate(spec)?;
    crate::lsm::validate_spec(spec)?;
    Ok(ns)
}

/// Checks a process (the container's, or one to exec); `what` names it in errors.
pub fn validate_process(process: &Process, what: &'static str) -> Result<(), SpecError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::MissingArgs(what));
    }
    for entry in process.env().iter().flatten() {
        let problem = match entry.split_once('=') {
            None => "has no '='",
            Some(("", _)) => "has an empty name",
            Some(_) if entry.contains('\0') => "contains a NUL byte",
            Some(_) => continue,
        };
        return Err(SpecError::Env {
            what,
            entry: entry.clone(),
            problem,
        });
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::RelativeCwd {
            what,
            cwd: process.cwd().clone(),
        });
    }
    if let Some(caps) = process.capabilities() {
        crate::caps::validate(caps)?;
    }
    crate::lsm::validate_process(process, what)?;
    Ok(())
}

/// Accepts runtime-spec 1.x ("1.0.2", "1.1.0", "1.2.0-rc.1", …).
fn check_version(version: &str) -> Result<(), SpecError> {
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    let minor_digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    if major != "1" || minor_digits.is_empty() {
        return Err(SpecError::Version(version.to_string()));
    }
    Ok(())
}

/// The runtime-spec version written into new configs.
pub const SPEC_VERSION: &str = "1.0.2-dev";

/// The example config.json `runc spec` writes (runc 1.1; `pelagos spec` writes it too): `sh` on
/// a terminal in `rootfs`, the default mounts, masks and capabilities.
pub fn example() -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    serde_json::json!({
        "ociVersion": SPEC_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "pelagos",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: serde_json::Value) -> Result<NsPlan, SpecError> {
        let spec = parse(v.to_string().as_bytes(), Path::new("config.json"))?;
        validate(&spec)
    }

    #[test]
    fn env_entries_need_a_name_and_an_equals_sign() {
        for (entry, problem) in [
            ("FOO", "has no '='"),
            ("=bar", "has an empty name"),
            ("A=b\u{0}c", "contains a NUL byte"),
        ] {
            let mut v = base();
            v["process"]["env"] = serde_json::json!(["PATH=/bin", entry]);
            let err = check(v).unwrap_err().to_string();
            assert!(
                err.contains("env entry") && err.contains(problem),
                "{entry:?}: {err}"
            );
        }
        let mut v = base();
        v["process"]["env"] = serde_json::json!(["EMPTY=", "A==b"]);
        assert!(check(v).is_ok());
    }

    #[test]
    fn security_modules_the_host_lacks_are_refused() {
        // Neither module runs on the machines this is tested on; where one does, it is applied.
        if !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists() {
            let mut v = base();
            v["process"]["apparmorProfile"] = "docker-default".into();
            let err = check(v).unwrap_err().to_string();
            assert!(err.contains("apparmorProfile \"docker-default\""), "{err}");
        }
        if !std::path::Path::new("/sys/fs/selinux/enforce").exists() {
            let mut v = base();
            v["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
            let err = check(v).unwrap_err().to_string();
            assert!(err.contains("SELinux is not enabled"), "{err}");
        }
        let mut v = base();
        v["linux"]["mountLabel"] = "system_u:object_r:container_file_t:s0".into();
        assert!(check(v).unwrap_err().to_string().contains("mountLabel"));
        let mut v = base();
        v["process"]["apparmorProfile"] = "".into();
        check(v).unwrap();
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.1", "1.3.0"] {
            check_version(ok).unwrap();
        }
        for bad in ["0.9.0", "2.0.0", "", "1", "x.y"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn good_config_passes() {
        check(base()).unwrap();
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let err = parse(b"{\n  \"ociVersion\": ,\n}", Path::new("/b/config.json")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/b/config.json: invalid config at line 2 column"),
            "{text}"
        );
    }

    #[test]
    fn missing_process_and_args() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("process");
        assert!(matches!(check(v), Err(SpecError::MissingProcess)));
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert_eq!(
            check(v).unwrap_err().to_string(),
            "config.json: process: args is missing or empty"
        );
        let mut v = base();
        v["process"]["cwd"] = serde_json::json!("rel");
        assert!(check(v).unwrap_err().to_string().contains("cwd \"rel\""));
    }

    #[test]
    fn unknown_namespace_is_named() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
        let text = check(v).unwrap_err().to_string();
        assert!(text.contains("bogus"), "{text}");
    }

    #[test]
    fn hostname_needs_uts() {
        let mut v = base();
        v["hostname"] = serde_json::json!("box");
        assert!(matches!(
            check(v.clone()),
            Err(SpecError::NeedsUts("hostname"))
        ));
        v["linux"]["namespaces"] = serde_json::json!([{"type": "uts"}, {"type": "mount"}]);
        check(v).unwrap();
    }

    #[test]
    fn bad_version_is_named() {
        let mut v = base();
        v["ociVersion"] = serde_json::json!("0.5.0");
        assert_eq!(
            check(v).unwrap_err().to_string(),
            "config.json: unsupported ociVersion \"0.5.0\" (supported: 1.x)"
        );
    }

    #[test]
    fn lexical_join_resolves_dots_without_the_filesystem() {
        let b = Path::new("/run/b");
        assert_eq!(
            lexical_join(b, Path::new("rootfs")),
            Path::new("/run/b/rootfs")
        );
        assert_eq!(
            lexical_join(b, Path::new("./r/../rootfs/")),
            Path::new("/run/b/rootfs")
        );
        assert_eq!(lexical_join(b, Path::new("/abs/x")), Path::new("/abs/x"));
        assert_eq!(lexical_join(b, Path::new("../../../..")), Path::new("/"));
    }
}
