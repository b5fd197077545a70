//! Checkpoint and restore of a container with CRIU, as runc does it: `criu dump` of the init's
//! process tree, with the container's cgroup, its bind mounts (external to its mount namespace)
//! and the namespaces it joined (external to the tree) described to CRIU. The images land in the
//! caller's directory with `descriptors.json` (what the init's stdio were). `criu restore`
//! brings the tree back into a new container (its own cgroup, the bundle's rootfs), the
//! recorded stdio pipes replaced by the caller's, and a dumped terminal (a slave whose master
//! was outside the tree) by CRIU's stdin as a shell job's.
//!
//! CRIU is driven through its command line, not its `swrk` RPC: every option needed here is a
//! flag, the failure is in the log file quoted back, and the RPC would need CRIU's protobuf
//! schema compiled in for what a few argv strings do.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::rootfs::mountinfo;

/// What to dump and how (containerd's `CheckpointOptions`, runc's `checkpoint` flags).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Where the images go (created when missing).
    pub image_path: PathBuf,
    /// CRIU's work dir (its log); `None`: the image dir, as CRIU does.
    pub work_path: Option<PathBuf>,
    /// Keep the container running after the dump (else CRIU ends it: `--exit` unset).
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    /// Processes with a terminal (CRIU's `--shell-job`).
    pub shell_job: bool,
    /// `--manage-cgroups` mode: soft, full, strict, ignore; `None`: CRIU's default (soft).
    pub cgroups_mode: Option<String>,
    /// The CRIU binary; `None`: `criu` from PATH.
    pub criu: Option<PathBuf>,
    /// Dump only the memory, tracking what changes after (`criu pre-dump`); the container
    /// runs on.
    pub pre_dump: bool,
    /// A previous pre-dump's images, relative to `image_path` (CRIU's `--prev-images-dir`):
    /// only the memory changed since goes into this dump.
    pub parent_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint: criu not found ({0}); install CRIU (scripts/install-criu.sh builds 4.1.1)"
    )]
    NoCriu(String),
    #[error("checkpoint: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint: cgroups mode {0:?} is not one of soft, full, strict, ignore")]
    CgroupsMode(String),
    #[error("restore: {0}")]
    Restore(String),
    #[error(
        "checkpoint: {what} needs CRIU's {feature}, which CRIU or the kernel lacks here: {detail}"
    )]
    MissingFeature {
        what: &'static str,
        feature: &'static str,
        detail: String,
    },
    #[error("checkpoint: criu {op} failed ({status}); {log}: {tail}")]
    Criu {
        op: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
}

/// The log file CRIU writes in the work dir.
pub const DUMP_LOG: &str = "dump.log";
/// The log file of a pre-dump, in the work dir.
pub const PRE_DUMP_LOG: &str = "pre-dump.log";
/// The init's fds 0, 1, 2 as `/proc/<pid>/fd` names them (runc's file of the same name).
pub const DESCRIPTORS: &str = "descriptors.json";

/// What the dump needs to know of the container.
pub(crate) struct Target<'a> {
    pub pid: i32,
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The cgroup dir CRIU freezes the tree through (v2, or v1's freezer).
    pub freezer: Option<&'a Path>,
}

/// The CRIU binary to run.
pub fn find_criu(explicit: Option<&Path>) -> Result<PathBuf, CheckpointError> {
    if let Some(p) = explicit {
        return match p.is_file() {
            true => Ok(p.to_path_buf()),
            false => Err(CheckpointError::NoCriu(format!(
                "{} does not exist",
                p.display()
            ))),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CheckpointError::NoCriu(format!("no criu in PATH {}", path.to_string_lossy()))
        })
}

/// Runs `criu dump` of `t`'s tree. On failure CRIU has let the tree run on.
pub(crate) fn dump(t: &Target<'_>, opts: &CheckpointOptions) -> Result<(), CheckpointError> {
    let criu = find_criu(opts.criu.as_deref())?;
    if let Some(mode) = &opts.cgroups_mode {
        if !["soft", "full", "strict", "ignore"].contains(&mode.as_str()) {
            return Err(CheckpointError::CgroupsMode(mode.clone()));
        }
    }
    let work = opts.work_path.as_deref().unwrap_or(&opts.image_path);
    for dir in [&opts.image_path, &work.to_path_buf()] {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
    }
    // Both track memory changes: a pre-dump from here on, a dump since its parent.
    let track_mem = opts.pre_dump || opts.parent_path.is_some();
    if track_mem {
        check_feature(
            &criu,
            "mem_dirty_track",
            match opts.pre_dump {
                true => "a pre-dump",
                false => "a dump on a parent pre-dump",
            },
        )?;
    }
    let descriptors = write_descriptors(t.pid, &opts.image_path)?;
    // A console's slave whose master the runtime's caller holds: CRIU dumps it only as a
    // shell job's (one external tty peer).
    let console = descriptors.iter().any(|d| d.starts_with("/dev/pts/"));

    let (op, log) = match opts.pre_dump {
        true => ("pre-dump", PRE_DUMP_LOG),
        false => ("dump", DUMP_LOG),
    };
    let mut cmd = Command::new(&criu);
    cmd.arg(op)
        .arg("--tree")
        .arg(t.pid.to_string())
        .arg("--images-dir")
        .arg(&opts.image_path)
        .arg("--work-dir")
        .arg(work)
        .args(["--log-file", log, "-v4"])
        .arg("--root")
        .arg(t.rootfs)
        .arg(match &opts.cgroups_mode {
            Some(m) => format!("--manage-cgroups={m}"),
            None => "--manage-cgroups".into(),
        });
    if let Some(dir) = t.freezer {
        cmd.arg("--freeze-cgroup").arg(dir);
    }
    if let Some(parent) = &opts.parent_path {
        cmd.arg("--prev-images-dir").arg(parent);
    }
    for (flag, on) in [
        ("--leave-running", opts.leave_running && !opts.pre_dump),
        ("--track-mem", track_mem),
        ("--tcp-established", opts.tcp_established),
        ("--ext-unix-sk", opts.ext_unix_sk),
        ("--file-locks", opts.file_locks),
        ("--shell-job", opts.shell_job || console),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    let mut externals = external_mounts(t.spec);
    for dest in cgroup_binds(t.pid) {
        if !externals.contains(&dest) {
            externals.push(dest);
        }
    }
    for dest in externals {
        cmd.arg("--external").arg(format!("mnt[{dest}]:{dest}"));
    }
    for ext in external_namespaces(t.spec)? {
        cmd.arg("--external").arg(ext);
    }
    log::debug!("checkpoint: {cmd:?}");
    let stderr = work.join("dump.stderr");
    let file = std::fs::File::create(&stderr).map_err(|source| CheckpointError::Io {
        what: "create",
        path: stderr.clone(),
        source,
    })?;
    let stdio = [
        std::process::Stdio::null(),
        std::process::Stdio::null(),
        file.into(),
    ];
    let result = run(cmd, stdio, op, &work.join(log), Some(&stderr));
    let _ = std::fs::remove_file(&stderr);
    result
}

/// `criu check --feature <feature>`: what `what` needs of CRIU and the kernel.
fn check_feature(
    criu: &Path,
    feature: &'static str,
    what: &'static str,
) -> Result<(), CheckpointError> {
    let out = Command::new(criu)
        .args(["check", "--feature", feature])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CheckpointError::Io {
            what: "run",
            path: criu.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let text = match text.is_empty() {
        true => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        false => text,
    };
    Err(CheckpointError::MissingFeature {
        what,
        feature,
        detail: format!("criu check --feature {feature}: {text} ({})", out.status),
    })
}

/// The log file of a restore, in the work dir.
pub const RESTORE_LOG: &str = "restore.log";

/// What to restore from where (runc's `restore` flags).
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The images of a dump.
    pub image_path: PathBuf,
    /// CRIU's work dir (its log); `None`: the image dir.
    pub work_path: Option<PathBuf>,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    pub shell_job: bool,
    pub cgroups_mode: Option<String>,
    pub criu: Option<PathBuf>,
}

/// Where the restored tree goes.
pub(crate) struct RestoreTarget<'a> {
    pub spec: &'a Spec,
    /// A mount point holding the rootfs (CRIU's --root).
    pub root: &'a Path,
    /// The new cgroup's path below each hierarchy's root.
    pub cgroup_path: &'a str,
    pub pidfile: &'a Path,
    pub tty: TtyStdin,
}

/// What CRIU's stdin is on a restore: a dumped terminal becomes it (`--shell-job`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyStdin {
    /// Not a terminal.
    None,
    /// The caller's own terminal (`pelagos restore` run on one).
    Inherited,
    /// A new pty made for a restore that asked for a terminal (a console socket).
    Requested,
}

/// Runs `criu restore` detached, the root task restored as this process's child; returns its
/// pid. `stdio` become the restored init's 0, 1, 2 where the dump recorded pipes.
pub(crate) fn restore(
    t: &RestoreTarget<'_>,
    opts: &RestoreOptions,
    stdio: [std::process::Stdio; 3],
) -> Result<i32, CheckpointError> {
    let criu = find_criu(opts.criu.as_deref())?;
    if let Some(mode) = &opts.cgroups_mode {
        if !["soft", "full", "strict", "ignore"].contains(&mode.as_str()) {
            return Err(CheckpointError::CgroupsMode(mode.clone()));
        }
    }
    let joined = joined_namespaces(t.spec)?;
    let work = opts.work_path.as_deref().unwrap_or(&opts.image_path);
    std::fs::create_dir_all(work).map_err(|source| CheckpointError::Io {
        what: "create",
        path: work.to_path_buf(),
        source,
    })?;
    let descriptors: Vec<String> = std::fs::read(opts.image_path.join(DESCRIPTORS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            CheckpointError::Restore(format!(
                "no readable {DESCRIPTORS} in {} (not a dump of pelagos or runc?)",
                opts.image_path.display()
            ))
        })?;
    let dumped_tty = descriptors.iter().find(|d| d.starts_with("/dev/pts/"));
    match (dumped_tty, t.tty) {
        (Some(tty), TtyStdin::None) => {
            return Err(CheckpointError::Restore(format!(
                "the checkpoint's init has a terminal ({tty}): restore it with one \
                 (a console socket)"
            )))
        }
        (None, TtyStdin::Requested) => {
            return Err(CheckpointError::Restore(format!(
                "a terminal was asked for, but the checkpoint's init had none (its stdio: {})",
                descriptors.join(", ")
            )))
        }
        _ => {}
    }
    let mut cmd = Command::new(&criu);
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(&opts.image_path)
        .arg("--work-dir")
        .arg(work)
        .args(["--log-file", RESTORE_LOG, "-v4"])
        .arg("--root")
        .arg(t.root)
        .args(["--restore-detached", "--restore-sibling"])
        .arg("--pidfile")
        .arg(t.pidfile)
        .arg(match &opts.cgroups_mode {
            Some(m) => format!("--manage-cgroups={m}"),
            None => "--manage-cgroups".into(),
        })
        .arg("--cgroup-root")
        .arg(t.cgroup_path);
    for (flag, on) in [
        ("--tcp-established", opts.tcp_established),
        ("--ext-unix-sk", opts.ext_unix_sk),
        ("--file-locks", opts.file_locks),
        ("--shell-job", opts.shell_job || dumped_tty.is_some()),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    if let Some(mounts) = t.spec.mounts() {
        let binds = external_mounts(t.spec);
        for m in mounts {
            let dest = m.destination().to_string_lossy().into_owned();
            if let (true, Some(src)) = (binds.contains(&dest), m.source()) {
                cmd.arg("--external")
                    .arg(format!("mnt[{dest}]:{}", src.display()));
            }
        }
    }
    // The dump's cgroup binds (see `cgroup_binds`) map to the new cgroup's dirs.
    for hierarchy in host_cgroup_mounts() {
        let dir = hierarchy.join(t.cgroup_path.trim_start_matches('/'));
        if dir.is_dir() {
            cmd.arg("--external")
                .arg(format!("mnt[{}]:{}", hierarchy.display(), dir.display()));
        }
    }
    for (i, d) in descriptors.iter().enumerate() {
        if d.contains("pipe:") {
            cmd.arg("--inherit-fd").arg(format!("fd[{i}]:{d}"));
        }
    }
    // The dump named a joined network or pid namespace by CRIU's key (see
    // `external_namespaces`): CRIU takes an open fd of the one to join under that key. Other
    // joined namespaces are joined by path.
    let mut extra = Vec::new();
    for ns in &joined {
        match ns.key {
            Some(key) => {
                let fd = 3 + extra.len();
                extra.push(ns.open()?);
                cmd.arg("--inherit-fd").arg(format!("fd[{fd}]:{key}"));
            }
            None => {
                cmd.arg("--join-ns")
                    .arg(format!("{}:{}", ns.name, ns.path.display()));
            }
        }
    }
    log::debug!("restore: {cmd:?}");
    run_with_fds(cmd, stdio, extra, "restore", &work.join(RESTORE_LOG), None)?;
    let text = std::fs::read_to_string(t.pidfile).map_err(|source| CheckpointError::Io {
        what: "read",
        path: t.pidfile.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| {
        CheckpointError::Restore(format!("{}: {text:?} is not a pid", t.pidfile.display()))
    })
}

/// The host's cgroup hierarchies mounted under /sys/fs/cgroup (v1 controllers, unified).
fn host_cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo::parse(&text)
        .into_iter()
        .filter(|m| {
            matches!(m.fstype.as_str(), "cgroup" | "cgroup2")
                && m.mount_point
                    .to_string_lossy()
                    .starts_with("/sys/fs/cgroup/")
        })
        .map(|m| m.mount_point)
        .collect()
}

/// A namespace the container joins by path.
struct Joined {
    /// CRIU's name of the type (`--join-ns`).
    name: &'static str,
    path: PathBuf,
    /// CRIU's external key when the dump names it so (network, pid).
    key: Option<&'static str>,
}

impl Joined {
    /// The namespace file, as a close-on-exec fd numbered above the low ones [`run_with_fds`]
    /// places its fds at.
    fn open(&self) -> Result<std::os::fd::OwnedFd, CheckpointError> {
        let io = |source| CheckpointError::Io {
            what: "open namespace",
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let fd = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))
            .map_err(|e| io(e.into()))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this fd, owned from here.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }
}

/// The spec's namespaces with a path, for a restore to join; a joined mount, user or cgroup
/// namespace is refused (CRIU restores those of the dump).
fn joined_namespaces(spec: &Spec) -> Result<Vec<Joined>, CheckpointError> {
    let Some(nss) = spec.linux().as_ref().and_then(|l| l.namespaces().clone()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ns in nss {
        let Some(path) = ns.path().clone() else {
            continue;
        };
        let (name, key) = match ns.typ() {
            LinuxNamespaceType::Network => ("net", Some("extRootNetNS")),
            LinuxNamespaceType::Pid => ("pid", Some("extRootPidNS")),
            LinuxNamespaceType::Ipc => ("ipc", None),
            LinuxNamespaceType::Uts => ("uts", None),
            other => {
                return Err(CheckpointError::Restore(format!(
                    "restoring into the joined {other:?} namespace {} is not supported",
                    path.display()
                )))
            }
        };
        out.push(Joined { name, path, key });
    }
    Ok(out)
}

/// Runs CRIU to its end with `stdio`. Its exit is taken through [`crate::reaper`], which a
/// shim's reaping loop shares.
fn run(
    cmd: Command,
    stdio: [std::process::Stdio; 3],
    op: &'static str,
    log: &Path,
    stderr: Option<&Path>,
) -> Result<(), CheckpointError> {
    run_with_fds(cmd, stdio, Vec::new(), op, log, stderr)
}

/// [`run`] with `extra` as CRIU's fds 3, 4, ... (each must be numbered above them).
fn run_with_fds(
    mut cmd: Command,
    stdio: [std::process::Stdio; 3],
    extra: Vec<std::os::fd::OwnedFd>,
    op: &'static str,
    log: &Path,
    stderr: Option<&Path>,
) -> Result<(), CheckpointError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw: Vec<i32> = extra.iter().map(|f| f.as_raw_fd()).collect();
    if !raw.is_empty() {
        // SAFETY: only dup2, async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in raw.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let program = PathBuf::from(cmd.get_program());
    let [stdin, stdout, err] = stdio;
    let child = cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(err)
        .spawn()
        .map_err(|source| CheckpointError::Io {
            what: "run",
            path: program,
            source,
        })?;
    drop(extra);
    let exit = crate::reaper::wait(child.id() as i32, None);
    if exit.is_some_and(|e| e.status == 0) {
        return Ok(());
    }
    let text = stderr
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    Err(CheckpointError::Criu {
        op,
        status: match exit {
            Some(e) if e.status > 128 => format!("killed by signal {}", e.status - 128),
            Some(e) => format!("exit status {}", e.status),
            None => "exit lost".into(),
        },
        log: log.to_path_buf(),
        tail: failure_lines(log, &text),
    })
}

/// The error lines of CRIU's log (else its stderr), the last few.
pub(crate) fn failure_lines(log: &Path, stderr: &[u8]) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("Warn"))
        .collect();
    let lines: Vec<String> = if errors.is_empty() {
        String::from_utf8_lossy(stderr)
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        errors.iter().map(|s| s.to_string()).collect()
    };
    let keep = lines.len().saturating_sub(4);
    lines[keep..].join(" | ")
}

/// The destinations of the spec's bind mounts: their sources are outside the container's mount
/// namespace, so CRIU records them by name (restore maps each name to a source again).
pub fn external_mounts(spec: &Spec) -> Vec<String> {
    let Some(mounts) = spec.mounts() else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
        })
        .map(|m| m.destination().to_string_lossy().into_owned())
        .collect()
}

/// The container's binds of a sub-directory of a host cgroup hierarchy (its own cgroup, as
/// /sys/fs/cgroup/<controller> without a cgroup namespace): no mount of the container holds
/// their root, so CRIU needs them named as external like the spec's binds.
fn cgroup_binds(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    mountinfo::parse(&text)
        .into_iter()
        .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2") && m.root != "/")
        .map(|m| m.mount_point.to_string_lossy().into_owned())
        .collect()
}

/// Namespaces the container joined by path (a pod's network namespace): not the tree's own, so
/// CRIU records them by inode as runc names them, and a restore joins them again.
fn external_namespaces(spec: &Spec) -> Result<Vec<String>, CheckpointError> {
    let mut out = Vec::new();
    let Some(nss) = spec.linux().as_ref().and_then(|l| l.namespaces().clone()) else {
        return Ok(out);
    };
    for ns in nss {
        let (Some(path), name, key) = (
            ns.path(),
            match ns.typ() {
                LinuxNamespaceType::Network => "net",
                LinuxNamespaceType::Pid => "pid",
                _ => continue,
            },
            match ns.typ() {
                LinuxNamespaceType::Network => "extRootNetNS",
                _ => "extRootPidNS",
            },
        ) else {
            continue;
        };
        let ino = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .map_err(|source| CheckpointError::Io {
                what: "stat namespace",
                path: path.clone(),
                source,
            })?;
        out.push(format!("{name}[{ino}]:{key}"));
    }
    Ok(out)
}

fn write_descriptors(pid: i32, images: &Path) -> Result<Vec<String>, CheckpointError> {
    let fds: Vec<String> = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/dev/null".into())
        })
        .collect();
    let path = images.join(DESCRIPTORS);
    std::fs::write(&path, serde_json::to_vec(&fds).expect("strings serialize")).map_err(
        |source| CheckpointError::Io {
            what: "write",
            path,
            source,
        },
    )?;
    Ok(fds)
}
