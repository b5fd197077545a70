//! The `start` action: find or launch the shim daemon for this container's group and print
//! its address.
//!
//! containerd reads stdout and stderr of `start` combined, so nothing but the address is
//! printed, and the daemon is given /dev/null for all three stdio fds: holding containerd's pipe
//! would make it wait for the daemon to exit. The socket is bound and listening here, before
//! the daemon exists, so the address can be printed at once; the daemon inherits it as fd 3.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::bootstrap_api::BootstrapResult;
use containerd_shim_protos::protobuf::Message;

use crate::args::Flags;
use crate::options::{self, StartInput};

/// containerd caps what it sends on stdin at this size; so do we.
const MAX_INPUT: u64 = 10 << 20;
/// Annotations that put containers into one shim, first match wins (as the runc shim).
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];
/// The fd the daemon finds its listener on.
pub const LISTENER_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("start: read stdin: {0}")]
    Stdin(std::io::Error),
    #[error("start: read {path}: {source}")]
    Config {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start: parse {path}: {source}")]
    ConfigJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("start: socket path {0} is too long for a unix socket")]
    SocketTooLong(String),
    #[error("start: socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("start: spawn the shim daemon {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("start: write {path}: {source}")]
    Address {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start: {0}")]
    Options(#[from] options::OptionsError),
    #[error("start: move the shim into ShimCgroup {path}: {source}")]
    ShimCgroup {
        path: String,
        source: pelagos::cgroups::CgroupError,
    },
}

/// What `start` answers containerd: the daemon's address, as a `BootstrapResult` when it was
/// asked with `BootstrapParams` (containerd ≥ 2.3), else as the plain address.
#[derive(Debug)]
pub struct Started {
    address: String,
    bootstrap: bool,
}

impl Started {
    /// The bytes for stdout.
    pub fn reply(&self) -> Vec<u8> {
        if !self.bootstrap {
            return self.address.clone().into_bytes();
        }
        let result = BootstrapResult {
            version: 2,
            address: self.address.clone(),
            protocol: "ttrpc".to_owned(),
            ..Default::default()
        };
        result
            .write_to_bytes()
            .expect("a BootstrapResult of strings always encodes")
    }
}

/// Runs `start` in the bundle (the cwd) and returns what to print.
pub fn run(flags: &Flags) -> Result<Started, StartError> {
    let input = read_stdin()?;
    let start_input = options::detect_start_input(&input, &flags.id, &flags.namespace);
    let bootstrap = matches!(start_input, StartInput::Bootstrap(_));
    let opts = options::decode(options::runtime_options(&start_input))?;
    let (mut ttrpc_address, mut grpc_address, mut socket_dir) = (
        std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        flags.address.clone(),
        None,
    );
    if let StartInput::Bootstrap(p) = &start_input {
        if !p.containerd_ttrpc_address.is_empty() {
            ttrpc_address = p.containerd_ttrpc_address.clone();
        }
        if grpc_address.is_empty() {
            grpc_address = p.containerd_grpc_address.clone();
        }
        socket_dir = p.socket_dir.clone().filter(|d| !d.is_empty());
    }

    let bundle = std::env::current_dir().map_err(|source| StartError::Config {
        path: ".".into(),
        source,
    })?;
    let group = grouping(&bundle, &flags.id)?;
    let address = socket_address(&grpc_address, &flags.namespace, &group, socket_dir);
    let path = address.trim_start_matches("unix://").to_owned();
    if path.len() >= 108 {
        return Err(StartError::SocketTooLong(path));
    }

    // Containers of one group created at once (a pod's) run `start` concurrently: finding a
    // live shim and binding a new socket happen under an exclusive lock on the socket
    // directory, so the loser of the race finds the winner listening instead of replacing its
    // socket with a second daemon's. The listener is bound before the lock is released.
    let _lock = lock_socket_dir(&path)?;
    if UnixStream::connect(&path).is_ok() {
        log::info!(
            "container {} joins the shim of group {group} at {address}",
            flags.id
        );
        write_address(&bundle, &address)?;
        return Ok(Started { address, bootstrap });
    }
    let listener = listen(&path)?;
    let spawned = spawn_daemon(
        flags,
        &opts,
        &address,
        &ttrpc_address,
        &grpc_address,
        &listener,
    );
    drop(listener);
    if let Err(e) = spawned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    write_address(&bundle, &address)?;
    Ok(Started { address, bootstrap })
}

fn read_stdin() -> Result<Vec<u8>, StartError> {
    let mut buf = Vec::new();
    // SAFETY: isatty only inspects fd 0.
    if unsafe { libc::isatty(0) } == 1 {
        return Ok(buf);
    }
    std::io::stdin()
        .lock()
        .take(MAX_INPUT)
        .read_to_end(&mut buf)
        .map_err(StartError::Stdin)?;
    Ok(buf)
}

#[derive(serde::Deserialize)]
struct Annotated {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// The shim group of the container in `bundle`: the first grouping annotation, else its id.
pub fn grouping(bundle: &Path, id: &str) -> Result<String, StartError> {
    let path = bundle.join("config.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        // containerd always writes it, but a missing spec only means "no annotations".
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(id.to_owned()),
        Err(source) => return Err(StartError::Config { path, source }),
    };
    let spec: Annotated =
        serde_json::from_slice(&data).map_err(|source| StartError::ConfigJson { path, source })?;
    let annotations = spec.annotations.unwrap_or_default();
    Ok(group_of(&annotations, id))
}

pub fn group_of(annotations: &HashMap<String, String>, id: &str) -> String {
    GROUP_LABELS
        .iter()
        .find_map(|k| annotations.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

/// Where shims put their sockets unless containerd (≥2.3) names another directory.
const DEFAULT_SOCKET_DIR: &str = "/run/containerd/s";

/// `unix://<dir>/<sha256("<address>/<ns>/<group>")>`, the socket containerd's shims use.
pub fn socket_address(
    containerd_address: &str,
    namespace: &str,
    group: &str,
    socket_dir: Option<String>,
) -> String {
    use sha2::Digest;
    use std::fmt::Write;

    let joined = Path::new(containerd_address).join(namespace).join(group);
    let digest = sha2::Sha256::digest(joined.as_os_str().as_encoded_bytes());
    let hex = digest.iter().fold(String::with_capacity(64), |mut h, b| {
        let _ = write!(h, "{b:02x}");
        h
    });
    let dir = socket_dir.unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_owned());
    format!("unix://{}/{hex}", dir.trim_end_matches('/'))
}

/// Makes the directory of the socket at `path` (0700) and holds an exclusive flock on it until
/// the returned file is dropped. The fd is close-on-exec, so the daemon does not inherit it.
fn lock_socket_dir(path: &str) -> Result<std::fs::File, StartError> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let err = |source| StartError::Socket {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let f = std::fs::File::open(dir).map_err(err)?;
    loop {
        // SAFETY: flock only takes an fd we own and a flag.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(e));
        }
    }
}

/// Binds the socket at `path` (0600, in a directory made if needed), replacing a stale one.
fn listen(path: &str) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = Path::new(path).parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Nobody answered on it: a dead shim's leftover.
            std::fs::remove_file(path).map_err(err)?;
            UnixListener::bind(path).map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn spawn_daemon(
    flags: &Flags,
    opts: &options::Options,
    address: &str,
    ttrpc_address: &str,
    grpc_address: &str,
    listener: &UnixListener,
) -> Result<(), StartError> {
    let exe = std::env::current_exe().map_err(|source| StartError::Spawn {
        exe: "/proc/self/exe".into(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", grpc_address])
        .args(["-publish-binary", &flags.publish_binary])
        .args(["-socket", address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    if !ttrpc_address.is_empty() {
        cmd.env("TTRPC_ADDRESS", ttrpc_address);
    }
    if let Some(level) = opts.log_level {
        cmd.env(crate::logger::LEVEL_ENV, level.as_str());
    }
    if std::env::var_os(crate::daemon::TUNABLES_ENV).is_none() {
        cmd.env(crate::daemon::TUNABLES_ENV, crate::daemon::TUNABLES)
            .env(crate::daemon::TUNABLES_OURS_ENV, "1");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let lfd = listener.as_raw_fd();
    // SAFETY: `start` is single-threaded (no thread was spawned), so the forked child may
    // run this; it only makes raw syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = if lfd == LISTENER_FD {
                libc::fcntl(lfd, libc::F_SETFD, 0)
            } else {
                libc::dup2(lfd, LISTENER_FD)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| StartError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    adjust_oom_score(child.id());
    if !opts.shim_cgroup.is_empty() {
        if let Err(e) = join_cgroup(&opts.shim_cgroup, child.id()) {
            // SAFETY: kill takes a pid and a signal; the daemon is our own unwaited child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let mut child = child;
            let _ = child.wait();
            return Err(e);
        }
    }
    log::info!(
        "started shim daemon pid {} for {} at {address}",
        child.id(),
        flags.id
    );
    // Not waited for: it outlives `start` and is re-parented.
    Ok(())
}

/// Moves the daemon into the `ShimCgroup` of the runtime options, which must exist (as with
/// runc's shim).
fn join_cgroup(path: &str, pid: u32) -> Result<(), StartError> {
    let err = |source| StartError::ShimCgroup {
        path: path.to_owned(),
        source,
    };
    let cg = pelagos::cgroups::Cgroup::open(path).map_err(err)?;
    cg.add_pid(pid as i32).map_err(err)
}

/// The daemon's oom_score_adj is ours + 1, so the OOM killer prefers it to containerd.
/// Failure (no CAP_SYS_RESOURCE to lower a score) is not fatal.
fn adjust_oom_score(pid: u32) {
    let Ok(s) = std::fs::read_to_string("/proc/self/oom_score_adj") else {
        return;
    };
    let Ok(v) = s.trim().parse::<i32>() else {
        return;
    };
    let v = (v + 1).min(1000);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/oom_score_adj"))
        .and_then(|mut f| f.write_all(v.to_string().as_bytes()));
    if let Err(e) = r {
        log::debug!("set oom_score_adj {v} for shim {pid}: {e}");
    }
}

/// Writes `<bundle>/address` atomically (containerd 1.6/1.7 read it to reconnect).
pub fn write_address(bundle: &Path, address: &str) -> Result<(), StartError> {
    let tmp = bundle.join(".address");
    let path = bundle.join("address");
    std::fs::write(&tmp, address)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| StartError::Address { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_is_the_form_containerd_asked_in() {
        let address = "unix:///run/containerd/s/abc".to_owned();
        let legacy = Started {
            address: address.clone(),
            bootstrap: false,
        };
        assert_eq!(legacy.reply(), address.as_bytes());
        let new = Started {
            address: address.clone(),
            bootstrap: true,
        };
        let got = BootstrapResult::parse_from_bytes(&new.reply()).expect("a BootstrapResult");
        assert_eq!(
            (got.version, got.address.as_str(), got.protocol.as_str()),
            (2, address.as_str(), "ttrpc")
        );
    }

    #[test]
    fn grouping_prefers_the_runc_group_then_the_sandbox() {
        let mut a = HashMap::new();
        assert_eq!(group_of(&a, "c1"), "c1");
        a.insert("io.kubernetes.cri.sandbox-id".to_string(), "sb".to_string());
        assert_eq!(group_of(&a, "c1"), "sb");
        a.insert("io.containerd.runc.v2.group".to_string(), "g".to_string());
        assert_eq!(group_of(&a, "c1"), "g");
    }

    #[test]
    fn grouping_reads_the_bundle_spec() {
        let dir = std::env::temp_dir().join(format!("pelagos-grp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(grouping(&dir, "x").unwrap(), "x");
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(&dir, "x").unwrap(), "pod1");
        std::fs::write(dir.join("config.json"), "{not json").unwrap();
        let e = grouping(&dir, "x").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn socket_address_is_containerds_formula() {
        let got = socket_address("/run/containerd/containerd.sock", "default", "c1", None);
        assert!(got.starts_with("unix:///run/containerd/s/"));
        let hex = got.trim_start_matches("unix:///run/containerd/s/");
        assert_eq!(
            hex,
            sha256_hex("/run/containerd/containerd.sock/default/c1")
        );
        let dir = socket_address("/a.sock", "ns", "g", Some("/tmp/s/".into()));
        assert_eq!(dir, format!("unix:///tmp/s/{}", sha256_hex("/a.sock/ns/g")));
    }

    /// The reference value comes from the system's sha256sum, not from our code.
    fn sha256_hex(s: &str) -> String {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }

    #[test]
    fn address_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("pelagos-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_address(&dir, "unix:///a").unwrap();
        write_address(&dir, "unix:///b").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("address")).unwrap(),
            "unix:///b"
        );
        assert!(!dir.join(".address").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_detected() {
        let dir = std::env::temp_dir().join(format!("pelagos-sock-{}", std::process::id()));
        let path = dir.join("s").join("x.sock");
        let p = path.to_str().unwrap();
        let l = listen(p).unwrap();
        assert!(UnixStream::connect(p).is_ok());
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(l);
        // A test running beside this one may fork (Command::spawn) while the listener is open: its
        // child holds the socket until it execs, so the socket goes stale only then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while UnixStream::connect(p).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still accepting 5 s after the listener closed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _l2 = listen(p).unwrap();
        assert!(UnixStream::connect(p).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
