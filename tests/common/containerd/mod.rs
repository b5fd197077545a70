//! A private containerd for integration tests of the shim, driven with `ctr`.
//!
//! Each [`Containerd`] owns its root, state, sockets, config and log under unique paths, imports
//! the busybox test image, and uses a namespace unique on this host (the cgroups containerd asks
//! for are `/<namespace>/<id>`, shared by every containerd on the machine). The runtime under test
//! is `io.containerd.pelagos.v2` unless `PELAGOS_TEST_RUNTIME` names another (e.g.
//! `io.containerd.runc.v2` as a control); the containerd version is `PELAGOS_CONTAINERD`
//! (1.6, 1.7 or 2.1; 1.6 by default). [`Containerd::assert_no_leaks`] checks what a run must not
//! leave behind; `Drop` tears everything down even when a test failed half way.
//!
//! With `PELAGOS_TEST_SYSTEMD_CGROUP=1` (a host booted with systemd: the systemd VM) containers
//! use the systemd cgroup driver, as on a kubeadm node: the cgroups path is
//! `<slice>:<namespace>:<id>`, a scope `<namespace>-<id>.scope` in a slice of this containerd's
//! own ([`Containerd::slice`]), and the leak checks look for units and scopes in that slice.
//!
//! This file is the daemon (start, config, restart, teardown); `ctr.rs` the `ctr` verbs,
//! `inspect.rs` what a containerd leaves on the host and the leak checks, `events.rs` `ctr
//! events`, `pty.rs` a `ctr` on a pty, `host.rs` the process, /proc and cgroup helpers (their
//! public items are re-exported here, as the tests name them `containerd::X`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::image;

mod ctr;
mod events;
mod host;
mod inspect;
mod pty;

pub use events::*;
pub use host::*;
pub use pty::*;

pub const PELAGOS_RUNTIME: &str = "io.containerd.pelagos.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SHIM_NAME: &str = "containerd-shim-pelagos-v2";
/// Where every shim of every containerd puts its socket (`/run/containerd/s/<sha256>`).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The pelagos shim keeps container state under `<this>/<namespace>`.
const PELAGOS_STATE_ROOT: &str = "/run/pelagos";
/// Generous: the CI machine has two cores shared with the build.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// An exit event published this long after the process died was held back on purpose (the
/// pelagos shim's holds for unread output last 1 s and more); it normally takes milliseconds.
pub const EXIT_HELD: Duration = Duration::from_millis(500);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long processes of a deleted task may take to go away before they count as leaked.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Parents of each containerd's dirs, named `<test pid>-<n>`.
const BASE_PARENT: &str = "/run/pelagos-shim-test";
const ROOT_PARENT: &str = "/var/lib/pelagos-shim-test";
/// Namespaces are `<this><test pid>-<n>`: distinct from other test fixtures' cgroup names.
const NS_PREFIX: &str = "pshim-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The containerd version the tests use: `PELAGOS_CONTAINERD`, default 1.6.
pub fn containerd_version() -> String {
    std::env::var("PELAGOS_CONTAINERD")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.6".to_owned())
}

/// The runtime under test: `PELAGOS_TEST_RUNTIME`, default `io.containerd.pelagos.v2`.
pub fn runtime() -> String {
    std::env::var("PELAGOS_TEST_RUNTIME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| PELAGOS_RUNTIME.to_owned())
}

pub fn testing_pelagos() -> bool {
    runtime() == PELAGOS_RUNTIME
}

/// `PELAGOS_TEST_SYSTEMD_CGROUP=1`: the systemd cgroup driver (`SystemdCgroup = true`), on a host
/// booted with systemd.
pub fn systemd_driver() -> bool {
    std::env::var("PELAGOS_TEST_SYSTEMD_CGROUP").is_ok_and(|v| v == "1")
}

/// The runtime options line that turns the systemd driver on when [`systemd_driver`], for tests
/// that write their own `--runtime-config-path` file.
pub fn systemd_options() -> &'static str {
    if systemd_driver() {
        "SystemdCgroup = true\n"
    } else {
        ""
    }
}

pub fn systemctl(args: &[&str]) -> Option<Output> {
    let mut cmd = Command::new("systemctl");
    cmd.args(args);
    run_with_timeout(&mut cmd, None, CTR_TIMEOUT).ok()
}

fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The built shim: `PELAGOS_SHIM`, else the binary beside this test executable's profile dir.
pub fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PELAGOS_SHIM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<shim>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    profile.join(SHIM_NAME)
}

/// The directory holding `containerd` and `ctr` of `version`, fetched on first use.
pub fn bin_dir(version: &str) -> PathBuf {
    static DIRS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = dirs.iter().find(|(v, _)| v == version) {
        return d.clone();
    }
    let out = Command::new("bash")
        .arg(repo_dir().join("scripts/fetch-containerd.sh"))
        .arg(version)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/fetch-containerd.sh");
    assert!(
        out.status.success(),
        "scripts/fetch-containerd.sh {version} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("containerd").is_file() && dir.join("ctr").is_file(),
        "no containerd/ctr in {}",
        dir.display()
    );
    dirs.push((version.to_owned(), dir.clone()));
    dir
}

/// The snapshotter ctr asks for: overlayfs where this filesystem takes an overlay mount (probed
/// once), else native (slower copies, but works on any filesystem). `PELAGOS_TEST_SNAPSHOTTER`
/// overrides.
pub fn snapshotter() -> &'static str {
    static CHOICE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    CHOICE.get_or_init(|| {
        if let Ok(name) = std::env::var("PELAGOS_TEST_SNAPSHOTTER") {
            if !name.is_empty() {
                return Box::leak(name.into_boxed_str());
            }
        }
        let probe = Path::new(ROOT_PARENT).join(format!(".overlay-probe-{}", std::process::id()));
        let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
        let works = dirs.iter().all(|d| fs::create_dir_all(d).is_ok())
            && Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    dirs[0].display(),
                    dirs[1].display(),
                    dirs[2].display()
                ))
                .arg(&dirs[3])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if works {
            let _ = Command::new("umount").arg(&dirs[3]).status();
        }
        let _ = fs::remove_dir_all(&probe);
        if works {
            "overlayfs"
        } else {
            eprintln!("pelagos test harness: no overlay mounts here, using the native snapshotter");
            "native"
        }
    })
}

/// A private containerd daemon.
pub struct Containerd {
    pub version: String,
    pub runtime: String,
    pub namespace: String,
    bin_dir: PathBuf,
    /// Sockets, config, log, state, fifos and the shim link dir.
    base: PathBuf,
    /// containerd's persistent root (content, snapshots).
    root: PathBuf,
    address: String,
    child: Mutex<Option<Child>>,
    ids: Mutex<BTreeSet<String>>,
    /// Fifo dirs ctr made for detached execs and never removes.
    detached_fifos: Mutex<Vec<PathBuf>>,
    /// The CRI plugin's config section when the plugin is on (see [`Containerd::start_cri`]).
    cri: Option<String>,
    /// /usr/local/{sbin,bin} left out of the daemon's PATH (see
    /// [`Containerd::restart_without_usr_local`]).
    no_usr_local: std::sync::atomic::AtomicBool,
}

impl Containerd {
    /// Starts containerd of [`containerd_version`] with the image imported.
    pub fn start() -> Containerd {
        Containerd::start_version(&containerd_version())
    }

    pub fn start_version(version: &str) -> Containerd {
        Containerd::start_inner(version, None)
    }

    /// Starts containerd of [`containerd_version`] with the CRI plugin on, configured by
    /// `cri_section` (TOML appended to the config: the plugin's tables, in the syntax of the
    /// version's config). The namespace is CRI's `k8s.io`, which holds the imported image; the
    /// shim is on containerd's PATH whatever the runtime, as CRI picks it per pod.
    pub fn start_cri(cri_section: &str) -> Containerd {
        Containerd::start_cri_version(&containerd_version(), cri_section)
    }

    /// [`Containerd::start_cri`] with containerd `version` whatever `PELAGOS_CONTAINERD` says.
    pub fn start_cri_version(version: &str, cri_section: &str) -> Containerd {
        Containerd::start_inner(version, Some(cri_section.to_owned()))
    }

    fn start_inner(version: &str, cri: Option<String>) -> Containerd {
        let runtime = runtime();
        if runtime == PELAGOS_RUNTIME || cri.is_some() {
            let shim = shim_binary();
            assert!(
                shim.is_file(),
                "{} is missing: build it first (cargo build -p {SHIM_NAME}) or set PELAGOS_SHIM",
                shim.display()
            );
        }
        let bin_dir = bin_dir(version);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sweep_stale_once();
        let base = Path::new(BASE_PARENT).join(&tag);
        let root = Path::new(ROOT_PARENT).join(&tag);
        for d in [&base, &root] {
            let _ = fs::remove_dir_all(d);
        }
        for d in [
            base.join("state"),
            base.join("fifo"),
            base.join("bin"),
            base.join("failpoints"),
            root.clone(),
        ] {
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        if runtime == PELAGOS_RUNTIME || cri.is_some() {
            let link = base.join("bin").join(SHIM_NAME);
            std::os::unix::fs::symlink(shim_binary(), &link)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        }
        let cd = Containerd {
            version: version.to_owned(),
            runtime,
            namespace: if cri.is_some() {
                "k8s.io".to_owned()
            } else {
                format!("{NS_PREFIX}{tag}")
            },
            address: base.join("containerd.sock").to_string_lossy().into_owned(),
            bin_dir,
            base,
            root,
            child: Mutex::new(None),
            ids: Mutex::new(BTreeSet::new()),
            detached_fifos: Mutex::new(Vec::new()),
            cri,
            no_usr_local: Default::default(),
        };
        fs::write(cd.config_path(), cd.config_toml()).expect("write containerd config");
        fs::write(cd.base.join("systemd.toml"), systemd_options()).expect("write options");
        cd.spawn_daemon();
        cd.import_image();
        cd
    }

    /// A handle on the dirs of `tag` left by a test process that died without tearing down.
    fn stale(tag: &str) -> Containerd {
        let base = Path::new(BASE_PARENT).join(tag);
        Containerd {
            version: String::new(),
            runtime: String::new(),
            namespace: format!("{NS_PREFIX}{tag}"),
            address: base.join("containerd.sock").to_string_lossy().into_owned(),
            bin_dir: PathBuf::new(),
            root: Path::new(ROOT_PARENT).join(tag),
            base,
            child: Mutex::new(None),
            ids: Mutex::new(BTreeSet::new()),
            detached_fifos: Mutex::new(Vec::new()),
            cri: None,
            no_usr_local: Default::default(),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// containerd's state dir: bundles live in `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
    pub fn state_dir(&self) -> PathBuf {
        self.base.join("state")
    }

    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub fn fifo_dir(&self) -> PathBuf {
        self.base.join("fifo")
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.base.join("containerd.log")
    }

    /// The slice of this containerd's containers under the systemd driver: one of its own at
    /// the top of the tree (`_` for `-`, which would nest it).
    pub fn slice(&self) -> String {
        format!("{}.slice", self.namespace.replace('-', "_"))
    }

    /// Where container `id` has its cgroup, below the hierarchy roots: `/<namespace>/<id>`
    /// (ctr's default), or the scope in [`Containerd::slice`] under the systemd driver.
    pub fn container_cgroup(&self, id: &str) -> String {
        if systemd_driver() && self.cri.is_none() {
            format!("/{}/{}-{id}.scope", self.slice(), self.namespace)
        } else {
            format!("/{}/{id}", self.namespace)
        }
    }

    /// Units of this containerd's containers systemd still knows (any state).
    pub fn scope_units(&self) -> Vec<String> {
        let pattern = format!("{}-*.scope", self.namespace);
        systemctl(&[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--full",
            &pattern,
        ])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.base.join("config.toml")
    }

    /// The containerd major version (1 or 2).
    pub fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1)
    }

    fn config_toml(&self) -> String {
        let root = self.root.display();
        let state = self.state_dir();
        let state = state.display();
        let addr = &self.address;
        let cri = self.cri.as_deref().unwrap_or("");
        let text = if self.major() >= 2 {
            let disabled = if self.cri.is_some() {
                r#"disabled_plugins = ["io.containerd.nri.v1.nri"]"#
            } else {
                r#"disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]"#
            };
            format!(
                r#"version = 3
root = "{root}"
state = "{state}"
{disabled}

[grpc]
  address = "{addr}"

[ttrpc]
  address = "{addr}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "{root}/opt"
"#
            )
        } else {
            let disabled = if self.cri.is_some() {
                r#"disabled_plugins = ["io.containerd.nri.v1.nri"]"#
            } else {
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]"#
            };
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
{disabled}

[grpc]
  address = "{addr}"

[ttrpc]
  address = "{addr}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#
            )
        };
        format!("{text}{cri}")
    }

    /// Starts the daemon and waits until it says it booted (its log line, not a poll).
    fn spawn_daemon(&self) {
        let usr_local = match self.no_usr_local.load(Ordering::SeqCst) {
            true => "",
            false => "/usr/local/sbin:/usr/local/bin:",
        };
        let path = format!(
            "{}:{}:{usr_local}/usr/sbin:/usr/bin:/sbin:/bin",
            self.base.join("bin").display(),
            self.bin_dir.display()
        );
        let level = if std::env::var_os("PELAGOS_TEST_DEBUG").is_some() {
            "debug"
        } else {
            "info"
        };
        let mut cmd = Command::new(self.bin_dir.join("containerd"));
        cmd.arg("--config")
            .arg(self.config_path())
            .args(["--log-level", level])
            .env_clear()
            .env("PATH", path)
            // Inherited by the shims: see Containerd::failpoint.
            .env("PELAGOS_SHIM_FAILPOINTS", self.base.join("failpoints"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("RUST_") || k_str.starts_with("PELAGOS_") {
                cmd.env(&k, &v);
            }
        }
        let mut child = cmd.spawn().expect("spawn containerd");
        let stderr = child.stderr.take().expect("containerd stderr");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open containerd log");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains("successfully booted") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let pid = child.id();
        *self.child.lock().unwrap() = Some(child);
        match ready_rx.recv_timeout(BOOT_TIMEOUT) {
            Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let status = self
                    .child
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|c| c.wait().ok());
                panic!(
                    "containerd {} (pid {pid}) exited before booting ({status:?}):\n{}",
                    self.version,
                    self.log_tail(40)
                );
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "containerd {} (pid {pid}) did not boot within {BOOT_TIMEOUT:?}:\n{}",
                self.version,
                self.log_tail(40)
            ),
        }
    }

    /// Makes the pelagos shim stop itself (SIGSTOP) on entering Task call `call` ("Create",
    /// "Start", "Exec", "Delete") of container `id` (exec `exec_id`, "" for the init), once
    /// (shim/src/failpoint.rs). runc's shim ignores it.
    pub fn failpoint(&self, call: &str, id: &str, exec_id: &str) {
        let path = self.failpoint_path(call, id, exec_id);
        fs::write(&path, "").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Removes a failpoint file (for the `Publish` hold, which waits while it exists).
    pub fn release_failpoint(&self, call: &str, id: &str, exec_id: &str) {
        let _ = fs::remove_file(self.failpoint_path(call, id, exec_id));
    }

    fn failpoint_path(&self, call: &str, id: &str, exec_id: &str) -> PathBuf {
        let name = if exec_id.is_empty() {
            format!("{call}-{id}")
        } else {
            format!("{call}-{id}-{exec_id}")
        };
        self.base.join("failpoints").join(name)
    }

    /// The containerd daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// SIGKILLs containerd (its own pid only; shims and containers keep running).
    pub fn kill9(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again on the same root, state and sockets.
    pub fn restart(&self) {
        assert!(self.pid().is_none(), "restart: containerd is still running");
        self.spawn_daemon();
    }

    /// Restarts containerd with /usr/local/{sbin,bin} out of its PATH (and so of the PATH
    /// of shims it starts from now on): what /usr/local holds, CRIU, is then missing.
    pub fn restart_without_usr_local(&self) {
        self.no_usr_local.store(true, Ordering::SeqCst);
        self.stop_daemon();
        self.spawn_daemon();
    }

    fn stop_daemon(&self) {
        let child = self.child.lock().unwrap().take();
        let Some(mut child) = child else { return };
        // SAFETY: signals the containerd this struct spawned and has not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if wait_child_timeout(&mut child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn import_image(&self) {
        let archive = image::archive().to_string_lossy().into_owned();
        let platform = format!("linux/{}", image::oci_arch());
        let mut args = vec!["images", "import", "--platform", &platform];
        if self.major() >= 2 {
            // The transfer service import needs no extra flags, but the local path behaves
            // like 1.x and reports errors more plainly.
            args.push("--local");
        }
        args.push(&archive);
        self.ctr_ok(&args);
        let images = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(
            images.lines().any(|l| l.trim() == image::IMAGE_REF),
            "import did not create {}; images: {images}",
            image::IMAGE_REF
        );
    }

    /// The last `n` lines of containerd's log (which includes the shims' logs).
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops this containerd's slice (and whatever unit is left in it) and forgets its failed
    /// scopes.
    fn stop_slice(&self) {
        if Path::new("/run/systemd/system").is_dir() {
            systemctl(&["stop", &self.slice()]);
            systemctl(&["reset-failed", &format!("{}-*.scope", self.namespace)]);
        }
    }

    /// Best-effort removal of every task and container through containerd.
    fn remove_all(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            let mut cmd = self.ctr_command();
            cmd.args(args);
            run_with_timeout(&mut cmd, None, Duration::from_secs(30))
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let quiet = |args: &[&str]| {
            let mut cmd = self.ctr_command();
            cmd.args(args);
            let _ = run_with_timeout(&mut cmd, None, Duration::from_secs(30));
        };
        for id in list(&["task", "ls", "-q"]) {
            quiet(&["task", "rm", "-f", &id]);
        }
        for id in list(&["containers", "ls", "-q"]) {
            quiet(&["containers", "rm", &id]);
        }
    }

    /// Forcefully ends what is left: clients, shims and container processes (by pid), mounts,
    /// cgroups, sockets, state, dirs.
    fn teardown(&self) {
        if self.pid().is_some() {
            self.remove_all();
        }
        self.stop_daemon();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let pids = self
            .client_pids()
            .into_iter()
            .chain(self.shim_pids())
            .chain(self.container_pids());
        for pid in pids.collect::<BTreeSet<_>>() {
            // SAFETY: plain kill(2) of a process this test's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_pid_gone(pid, deadline);
        }
        let mut mounts = self.mounts();
        mounts.reverse();
        for mp in mounts {
            if let Ok(c) = std::ffi::CString::new(mp) {
                // SAFETY: c is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for cg in self.namespace_cgroups() {
            remove_cgroup_tree(&cg);
        }
        if systemd_driver() {
            self.stop_slice();
            for m in cgroup_mounts() {
                remove_cgroup_tree(&m.join(self.slice()));
            }
        }
        for sock in self.shim_sockets() {
            let _ = fs::remove_file(sock);
        }
        for dir in self.pelagos_state_entries() {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir(Path::new(PELAGOS_STATE_ROOT).join(&self.namespace));
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Tears down what earlier test processes (killed before their `Drop` ran, e.g. by a timeout)
/// left: dirs whose test pid is gone.
fn sweep_stale_once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        for tag in dir_entries(Path::new(BASE_PARENT))
            .into_iter()
            .chain(dir_entries(Path::new(ROOT_PARENT)))
            .collect::<BTreeSet<_>>()
        {
            let Some(pid) = tag.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!("pelagos test harness: cleaning up after dead test process {pid} ({tag})");
            Containerd::stale(&tag).teardown();
        }
    });
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- containerd {} log tail ({}) ---\n{}\n---",
                self.version,
                self.namespace,
                self.log_tail(60)
            );
        }
        self.teardown();
    }
}
