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

    /// A `ctr` command bound to this containerd and namespace.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("ctr"));
        cmd.args(["--address", &self.address, "--namespace", &self.namespace])
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env("CONTAINERD_SNAPSHOTTER", snapshotter());
        cmd
    }

    /// Runs `ctr <args>` with no stdin.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_input(args, None)
    }

    /// Runs `ctr <args>`, feeding `input` on its stdin (then EOF), or no stdin.
    pub fn ctr_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        run_with_timeout(&mut cmd, input, CTR_TIMEOUT)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}\ncontainerd log:\n{}", self.log_tail(30)))
    }

    /// Runs `ctr <args>`, panics unless it succeeds, returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        self.expect_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn expect_ok(&self, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\ncontainerd log:\n{}",
            describe(out),
            self.log_tail(30)
        );
    }

    fn remember(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_owned());
    }

    /// `ctr run` arguments: `run <flags> --runtime R --fifo-dir F <opts> IMAGE <id> <args>`.
    pub fn run_args<'a>(
        &'a self,
        flags: &[&'a str],
        id: &'a str,
        opts: &[&'a str],
        args: &[&'a str],
    ) -> Vec<String> {
        self.remember(id);
        let mut v: Vec<String> = vec!["run".into()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.extend(["--runtime".into(), self.runtime.clone()]);
        v.extend([
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ]);
        if systemd_driver() && self.cri.is_none() {
            let path = format!("{}:{}:{id}", self.slice(), self.namespace);
            v.extend(["--cgroup".into(), path]);
            if self.runtime == PELAGOS_RUNTIME {
                // A test's own options file says SystemdCgroup itself (see systemd_options).
                if !opts.contains(&"--runtime-config-path") {
                    let config = self.base.join("systemd.toml");
                    v.extend([
                        "--runtime-config-path".into(),
                        config.to_string_lossy().into_owned(),
                    ]);
                }
            } else {
                v.push("--runc-systemd-cgroup".into());
            }
        }
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(image::IMAGE_REF.into());
        v.push(id.into());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run --rm ... <id> <args>` attached, with no stdin; the Output carries the exit code.
    pub fn run(&self, id: &str, opts: &[&str], args: &[&str]) -> Output {
        self.run_input(id, opts, args, None)
    }

    /// Like [`Containerd::run`] with `input` piped to the container's stdin, then EOF.
    ///
    /// ctr only turns its stdin's EOF into CloseIO once the task exists (its closer is set after
    /// the task is created), so a short input that ends earlier would leave the container waiting
    /// for EOF forever. The EOF is therefore held back until the /tasks/start event, which ctr
    /// sends after the closer is in place.
    pub fn run_input(
        &self,
        id: &str,
        opts: &[&str],
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Output {
        let argv = self.run_args(&["--rm"], id, opts, args);
        match input {
            None => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                self.ctr(&argv)
            }
            Some(input) => self.ctr_with_held_eof(&argv, input, "/tasks/start", id, None),
        }
    }

    /// `ctr task exec` with `input` on stdin, its EOF held back until /tasks/exec-started (the
    /// same ctr race as [`Containerd::run_input`]).
    pub fn exec_input(
        &self,
        id: &str,
        exec_id: &str,
        opts: &[&str],
        args: &[&str],
        input: &[u8],
    ) -> Output {
        let argv = self.exec_args(id, exec_id, opts, args);
        self.ctr_with_held_eof(&argv, input, "/tasks/exec-started", id, Some(exec_id))
    }

    fn ctr_with_held_eof(
        &self,
        argv: &[String],
        input: &[u8],
        topic: &str,
        id: &str,
        exec_id: Option<&str>,
    ) -> Output {
        let mut events = self.events();
        let mut cmd = self.ctr_command();
        cmd.args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ctr");
        let mut stdin = child.stdin.take().expect("ctr stdin");
        let (eof_tx, eof_rx) = mpsc::channel::<()>();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
            let _ = eof_rx.recv();
        });
        let out_reader = reader_thread(child.stdout.take());
        let err_reader = reader_thread(child.stderr.take());
        let deadline = Instant::now() + CTR_TIMEOUT;
        while Instant::now() < deadline {
            let started = events.wait_for(Duration::from_millis(200), |e| {
                e.topic == topic
                    && e.container_id() == Some(id)
                    && exec_id.is_none_or(|x| e.str_field("exec_id") == Some(x))
            });
            if started.is_some() || events.ended() || !matches!(child.try_wait(), Ok(None)) {
                break;
            }
        }
        drop(eof_tx);
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(status) = wait_child_timeout(&mut child, left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ctr {argv:?} timed out; stderr: {}\ncontainerd log:\n{}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default()),
                self.log_tail(30)
            );
        };
        let _ = writer.join();
        Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        }
    }

    /// `ctr run -d`: the task is running when this returns (under the systemd driver, in its
    /// active scope).
    pub fn run_detached(&self, id: &str, opts: &[&str], args: &[&str]) {
        let argv = self.run_args(&["-d"], id, opts, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_ok(&argv);
        if systemd_driver() && self.cri.is_none() {
            self.assert_in_scope(id);
        }
    }

    /// Task `id`, if still running, is in its scope, which systemd has active. A task that
    /// exits meanwhile (a short command) is not judged.
    fn assert_in_scope(&self, id: &str) {
        let Some((pid, _)) = self.task(id).filter(|(_, s)| s == "RUNNING") else {
            return;
        };
        let unit = format!("{}-{id}.scope", self.namespace);
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let state = systemctl(&["show", "-p", "ActiveState", "--value", &unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        assert_eq!(state.as_deref(), Some("active"), "systemd unit {unit}");
        let want = self.container_cgroup(id);
        assert!(
            cgroup.lines().any(|l| l.ends_with(&want)),
            "task {id} is not in {want}: {cgroup}"
        );
    }

    /// Starts an attached `ctr run --rm` in the background with piped stdio; the caller waits.
    pub fn spawn_run(&self, id: &str, opts: &[&str], args: &[&str]) -> Child {
        let argv = self.run_args(&["--rm"], id, opts, args);
        let mut cmd = self.ctr_command();
        cmd.args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn ctr run")
    }

    /// `ctr task exec --exec-id <exec_id> <opts> <id> <args>` (attached unless opts has -d).
    pub fn exec(&self, id: &str, exec_id: &str, opts: &[&str], args: &[&str]) -> Output {
        let argv = self.exec_args(id, exec_id, opts, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr(&argv)
    }

    /// `ctr task exec -d`: returns once the exec has started.
    ///
    /// ctr leaves a detached exec's fifo dir behind (the shim still writes into the fifos); it
    /// is noted here and not counted as a leak.
    pub fn exec_detached(&self, id: &str, exec_id: &str, args: &[&str]) {
        let before: BTreeSet<String> = dir_entries(&self.fifo_dir()).into_iter().collect();
        let argv = self.exec_args(id, exec_id, &["-d"], args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_ok(&argv);
        let mut detached = self.detached_fifos.lock().unwrap();
        for name in dir_entries(&self.fifo_dir()) {
            if !before.contains(&name) {
                detached.push(self.fifo_dir().join(name));
            }
        }
    }

    pub fn exec_args(&self, id: &str, exec_id: &str, opts: &[&str], args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "task".into(),
            "exec".into(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        v.extend([
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ]);
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(id.into());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Removes the fifo dirs ctr left behind. ctr (not the shim) creates and removes them, and
    /// it leaves them when a request fails, e.g. a refused exec.
    pub fn clear_fifo_dirs(&self) {
        for name in dir_entries(&self.fifo_dir()) {
            let _ = fs::remove_dir_all(self.fifo_dir().join(name));
        }
    }

    /// (pid, status) of task `id` from `ctr task ls`, if it has a task.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(0), f[2].to_owned()))
        })
    }

    pub fn task_pid(&self, id: &str) -> u32 {
        self.task(id).unwrap_or_else(|| panic!("no task {id}")).0
    }

    pub fn task_status(&self, id: &str) -> Option<String> {
        self.task(id).map(|(_, s)| s)
    }

    /// `ctr task rm <id>` of a stopped task; returns the exit status ctr reports (it logs a
    /// warning naming a non-zero one).
    pub fn task_rm(&self, id: &str) -> i32 {
        let out = self.ctr(&["task", "rm", id]);
        self.expect_ok(&["task", "rm", id], &out);
        let err = String::from_utf8_lossy(&out.stderr);
        err.split("exit code ")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills and deletes the task (if any) and deletes the container.
    pub fn remove(&self, id: &str) {
        if self.task(id).is_some() {
            self.ctr_ok(&["task", "rm", "-f", id]);
        }
        self.ctr_ok(&["containers", "rm", id]);
    }

    /// Starts `ctr events` and returns once it is subscribed.
    pub fn events(&self) -> Events {
        Events::start(self)
    }

    /// Calls containerd's Tasks.Update (ctr has no `task update`) with `resources`, a JSON
    /// runtime-spec LinuxResources.
    pub fn update_resources(&self, id: &str, resources: &serde_json::Value) -> Output {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(repo_dir().join("scripts/task-update.py"))
            .arg(&self.address)
            .arg(&self.namespace)
            .arg(id)
            .arg(resources.to_string());
        run_with_timeout(&mut cmd, None, CTR_TIMEOUT).expect("run scripts/task-update.py")
    }

    /// Shim processes of this containerd: a `containerd-shim*` whose `-address` is ours or whose
    /// cwd is one of our bundles.
    pub fn shim_pids(&self) -> Vec<i32> {
        let bundles = self.state_dir().join("io.containerd.runtime.v2.task");
        procs()
            .into_iter()
            .filter(|&pid| {
                let argv = cmdline(pid);
                let Some(argv0) = argv.first() else {
                    return false;
                };
                if !argv0.to_string_lossy().contains("containerd-shim") {
                    return false;
                }
                let ours = argv.windows(2).any(|w| {
                    (w[0] == "-address" || w[0] == "--address") && w[1] == self.address.as_str()
                });
                ours || fs::read_link(format!("/proc/{pid}/cwd"))
                    .map(|cwd| cwd.starts_with(&bundles))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Processes in a cgroup below `/<namespace>` (or this containerd's slice) in any
    /// hierarchy: this containerd's containers.
    pub fn container_pids(&self) -> Vec<i32> {
        let prefixes = [format!("/{}", self.namespace), format!("/{}", self.slice())];
        procs()
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|text| {
                        text.lines().any(|l| {
                            let path = l.splitn(3, ':').nth(2).unwrap_or("");
                            prefixes
                                .iter()
                                .any(|p| path == p || path.starts_with(&format!("{p}/")))
                        })
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// This containerd's container state dirs under the pelagos state root: every entry of its
    /// namespace, except in CRI's `k8s.io`, which every CRI containerd on the host shares (other
    /// test processes, the CRI bench): there only those whose state.json names a bundle of ours.
    fn pelagos_state_entries(&self) -> Vec<PathBuf> {
        let dir = Path::new(PELAGOS_STATE_ROOT).join(&self.namespace);
        let bundles = self.state_dir();
        dir_entries(&dir)
            .into_iter()
            .map(|name| dir.join(name))
            .filter(|entry| {
                self.cri.is_none()
                    || fs::read(entry.join("state.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v.get("bundle")?.as_str().map(PathBuf::from))
                        .is_some_and(|b| b.starts_with(&bundles))
            })
            .collect()
    }

    /// Mount points under this containerd's root or state.
    pub fn mounts(&self) -> Vec<String> {
        let base = self.base.to_string_lossy().into_owned();
        let root = self.root.to_string_lossy().into_owned();
        mountinfo()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| under(mp, &base) || under(mp, &root))
            .collect()
    }

    /// `/<namespace>` in every cgroup hierarchy that has it.
    pub fn namespace_cgroups(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(&self.namespace))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Shim sockets of the containers this harness ran (`/run/containerd/s/<sha256(addr/ns/id)>`).
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .map(|id| {
                let key = format!("{}/{}/{}", self.address, self.namespace, id);
                Path::new(SHIM_SOCKET_DIR).join(image::sha256_hex(key.as_bytes()))
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// Everything this containerd's containers must not leave behind once they are deleted.
    /// Waits (on pidfds, bounded) for processes that are already on their way out. Removes the
    /// empty `/<namespace>` cgroup parents, which runc leaves too.
    pub fn leaks(&self) -> Vec<String> {
        self.leaks_within(EXIT_GRACE)
    }

    /// [`Containerd::leaks`] with `grace` for processes to go away.
    pub fn leaks_within(&self, grace: Duration) -> Vec<String> {
        let mut leaks = Vec::new();
        let containers = self.ctr(&["containers", "ls", "-q"]);
        let containers = String::from_utf8_lossy(&containers.stdout);
        if !containers.trim().is_empty() {
            leaks.push(format!("containers not deleted: {}", containers.trim()));
        }
        let tasks = self.ctr(&["task", "ls", "-q"]);
        let tasks = String::from_utf8_lossy(&tasks.stdout);
        if !tasks.trim().is_empty() {
            leaks.push(format!("tasks not deleted: {}", tasks.trim()));
        }
        let deadline = Instant::now() + grace;
        for pid in self.shim_pids() {
            if !wait_pid_gone(pid, deadline) {
                leaks.push(format!(
                    "shim process {pid} still running: {}",
                    describe_pid(pid)
                ));
            }
        }
        for pid in self.container_pids() {
            if !wait_pid_gone(pid, deadline) {
                leaks.push(format!(
                    "container process {pid} still running: {}",
                    describe_pid(pid)
                ));
            }
        }
        for mp in self.mounts() {
            leaks.push(format!("mount left: {mp}"));
        }
        for cg in self.namespace_cgroups() {
            let children: Vec<String> = fs::read_dir(&cg)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if children.is_empty() {
                // NotFound: removed through another mount of the same hierarchy (CRIU's
                // transient cgroup yard of a restore running beside this test).
                if let Err(e) = fs::remove_dir(&cg).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }) {
                    leaks.push(format!("cannot remove empty cgroup {}: {e}", cg.display()));
                }
            } else {
                leaks.push(format!("cgroups left in {}: {children:?}", cg.display()));
            }
        }
        if systemd_driver() && self.cri.is_none() {
            let units = self.scope_units();
            if !units.is_empty() {
                leaks.push(format!("systemd units left: {units:?}"));
            }
            let mut scopes = Vec::new();
            for m in cgroup_mounts() {
                let slice = m.join(self.slice());
                scopes.extend(
                    dir_entries(&slice)
                        .into_iter()
                        .filter(|e| slice.join(e).is_dir())
                        .map(|e| format!("{}/{e}", slice.display())),
                );
            }
            if !scopes.is_empty() {
                leaks.push(format!("cgroups left in the slice: {scopes:?}"));
            }
            // runc leaves the slice, as a node's kubelet removes its pod slices: removed here
            // once empty.
            if units.is_empty() && scopes.is_empty() {
                self.stop_slice();
            }
        }
        for sock in self.shim_sockets() {
            leaks.push(format!("shim socket left: {}", sock.display()));
        }
        for dir in self.detached_fifos.lock().unwrap().drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
        let fifos = dir_entries(&self.fifo_dir());
        if !fifos.is_empty() {
            leaks.push(format!(
                "fifo dirs left in {}: {fifos:?}",
                self.fifo_dir().display()
            ));
        }
        let bundles = self
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let left = dir_entries(&bundles);
        if !left.is_empty() {
            leaks.push(format!("bundles left in {}: {left:?}", bundles.display()));
        }
        if self.runtime == PELAGOS_RUNTIME {
            let left = self.pelagos_state_entries();
            if !left.is_empty() {
                leaks.push(format!("pelagos state left: {left:?}"));
            }
        }
        leaks
    }

    /// Panics listing every leak (see [`Containerd::leaks`]).
    pub fn assert_no_leaks(&self) {
        let leaks = self.leaks();
        assert!(
            leaks.is_empty(),
            "leaks after the test:\n  {}\ncontainerd log:\n{}",
            leaks.join("\n  "),
            self.log_tail(30)
        );
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

    /// Processes that name this containerd's dirs on their command line: the daemon, ctr clients
    /// (a panicking test drops its `Child`ren without killing them), shims.
    fn client_pids(&self) -> Vec<i32> {
        let base = self.base.to_string_lossy().into_owned();
        procs()
            .into_iter()
            .filter(|&pid| {
                pid != std::process::id() as i32
                    && cmdline(pid).iter().any(|a| {
                        under(&a.to_string_lossy(), &base)
                            || a.to_string_lossy().contains(&format!("{base}/"))
                    })
            })
            .collect()
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

/// One event printed by `ctr events`.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the runtime published it (the envelope's timestamp), seconds since the epoch.
    pub published: Option<f64>,
    pub namespace: String,
    pub topic: String,
    pub body: serde_json::Value,
}

impl Event {
    /// Parses `<date> <time> <zone offset> <zone> <namespace> <topic> <json>`.
    fn parse(line: &str) -> Option<Event> {
        let fields: Vec<&str> = line.split(' ').collect();
        let t = fields.iter().position(|f| f.starts_with('/'))?;
        let namespace = fields.get(t.checked_sub(1)?)?.to_string();
        let topic = fields[t].to_string();
        let rest = fields[t + 1..].join(" ");
        let body = serde_json::from_str(rest.trim()).unwrap_or(serde_json::Value::Null);
        let published = match fields.as_slice() {
            [date, time, offset, ..] => epoch_seconds(date, time, offset),
            _ => None,
        };
        Some(Event {
            published,
            namespace,
            topic,
            body,
        })
    }

    /// `exited_at` of an exit event, seconds since the epoch. ctr 1.x prints an RFC 3339 string,
    /// 2.x the protobuf fields.
    pub fn exited_at(&self) -> Option<f64> {
        let at = self.body.get("exited_at")?;
        if let Some(s) = at.as_str() {
            let (date, time) = s.split_once('T')?;
            return epoch_seconds(date, time.strip_suffix('Z')?, "+0000");
        }
        let field = |name| at.get(name).and_then(|v| v.as_u64()).unwrap_or(0) as f64;
        Some(field("seconds") + field("nanos") / 1e9)
    }

    /// Panics if this exit event was published [`EXIT_HELD`] or more after the process died.
    pub fn assert_not_held(&self) {
        let (Some(published), Some(exited)) = (self.published, self.exited_at()) else {
            panic!("no publication or exit time in {self:?}");
        };
        let held = Duration::from_secs_f64((published - exited).max(0.0));
        assert!(
            held < EXIT_HELD,
            "exit published {held:?} after the process died: {self:?}"
        );
    }

    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(|v| v.as_str())
    }

    /// The container a task event is about.
    pub fn container_id(&self) -> Option<&str> {
        self.str_field("container_id")
    }

    /// The process id (exec id; the container id for init) of exit events.
    pub fn process_id(&self) -> Option<&str> {
        self.str_field("id")
    }

    pub fn exit_status(&self) -> Option<u64> {
        self.body.get("exit_status").and_then(|v| v.as_u64())
    }
}

/// `YYYY-MM-DD`, `HH:MM:SS[.fraction]` and a `+HHMM` offset as seconds since the epoch.
fn epoch_seconds(date: &str, time: &str, offset: &str) -> Option<f64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let mut d = date.splitn(3, '-').map(num);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (num(t.next()?)?, num(t.next()?)?);
    let sec: f64 = t.next()?.parse().ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let off = offset.get(1..5).and_then(num)?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let local = days * 86_400 + h * 3600 + min * 60;
    let utc = local - sign * ((off / 100) * 3600 + (off % 100) * 60);
    Some(utc as f64 + sec)
}

/// A running `ctr events` subscription.
pub struct Events {
    child: Child,
    rx: Receiver<String>,
    seen: Vec<Event>,
    ended: bool,
}

impl Events {
    fn start(cd: &Containerd) -> Events {
        let mut cmd = cd.ctr_command();
        cmd.arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn ctr events");
        let stdout = child.stdout.take().expect("ctr events stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut events = Events {
            child,
            rx,
            seen: Vec::new(),
            ended: false,
        };
        // The subscription has no readiness signal: publish namespace updates until one comes
        // back through it.
        let ns = cd.namespace.clone();
        for attempt in 0..100 {
            let label = format!("pelagos.test.sync={attempt}");
            cd.ctr_ok(&["namespaces", "label", &ns, &label]);
            let got = events.wait_for(Duration::from_millis(300), |e| {
                e.topic == "/namespaces/update"
            });
            if got.is_some() {
                events.seen.clear();
                return events;
            }
            assert!(!events.ended, "ctr events exited:\n{}", cd.log_tail(20));
        }
        panic!("ctr events never showed a /namespaces/update event");
    }

    /// Takes one line, waiting at most `timeout`; false on timeout or when `ctr events` ended.
    fn pump(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                if let Some(e) = Event::parse(&line) {
                    self.seen.push(e);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                false
            }
        }
    }

    /// Whether `ctr events` has exited (e.g. containerd went away): nothing more will come.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Waits for the first event (seen or to come) matching `pred`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(e) = self.seen[checked..].iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left) {
                return None;
            }
        }
    }

    /// Waits for `topic` about container `id` (and, for exits, process `process`).
    pub fn wait_topic(&mut self, topic: &str, id: &str, process: Option<&str>) -> Event {
        self.wait_for(CTR_TIMEOUT, |e| {
            e.topic == topic
                && e.container_id() == Some(id)
                && process.is_none_or(|p| e.process_id() == Some(p))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {topic} event for {id}/{process:?}; saw: {:#?}",
                self.topics()
            )
        })
    }

    /// Takes whatever has arrived so far without waiting.
    pub fn drain(&mut self) {
        while self.pump(Duration::ZERO) {}
    }

    /// All events so far.
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// `/tasks/*` topics about container `id`, in order, with the process id for exits.
    pub fn task_topics(&self, id: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.topic.starts_with("/tasks/") && e.container_id() == Some(id))
            .map(|e| match (e.topic.as_str(), e.process_id()) {
                ("/tasks/exit", Some(p)) => format!("/tasks/exit:{p}"),
                (t, _) => t.to_owned(),
            })
            .collect()
    }

    fn topics(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| format!("{} {}", e.topic, e.body))
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Human-readable exit status, stdout and stderr.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        exit_text(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status:?}"),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion with piped stdout/stderr, `input` (or nothing) on stdin, killing it
/// after `timeout`.
pub fn run_with_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let data = input.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let out_reader = reader_thread(child.stdout.take());
    let err_reader = reader_thread(child.stderr.take());
    let status = match wait_child_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {timeout:?}; stderr so far: {}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            ));
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn reader_thread<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh fd we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Blocks until the pidfd says the process ended, at most `timeout`. True if it ended.
fn poll_pidfd(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Waits for our child with a timeout; `None` if it is still running.
pub fn wait_child_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let fd = pidfd_open(child.id() as i32)?;
    if poll_pidfd(&fd, timeout) {
        child.wait().ok()
    } else {
        None
    }
}

/// Waits until `pid` (any process, not only our children) is gone or `deadline` passes.
pub fn wait_pid_gone(pid: i32, deadline: Instant) -> bool {
    let Some(fd) = pidfd_open(pid) else {
        return true; // ESRCH: already gone.
    };
    poll_pidfd(&fd, deadline.saturating_duration_since(Instant::now()))
}

/// Where `/proc/<pid>/ns/<ns>` points (`mnt:[4026532250]`).
pub fn ns_link(pid: u32, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// Every pid in /proc.
pub fn procs() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: i32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn describe_pid(pid: i32) -> String {
    let argv: Vec<String> = cmdline(pid)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    argv.join(" ")
}

struct MountEntry {
    mount_point: String,
    fstype: String,
}

fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn mountinfo() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            Some(MountEntry {
                mount_point: unescape_mount(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Mount points of every cgroup hierarchy (v1 controllers, named, v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// The names in `dir`, sorted; empty if it cannot be read.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A cgroup a test made, `/<top>` in every hierarchy, removed with all below it on drop, also
/// when the test fails half way.
pub struct CgroupTree(pub String);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for m in cgroup_mounts() {
            remove_cgroup_tree(&m.join(self.0.trim_start_matches('/')));
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroupfs only removes empty ones).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A process (ctr with `-t`) whose controlling terminal is a pty this test holds the master of.
pub struct PtyChild {
    pub child: Child,
    master: fs::File,
    rx: Receiver<Vec<u8>>,
    output: Vec<u8>,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtyChild {
    /// Runs `cmd` as a session leader on a new pty of `rows` x `cols`.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> PtyChild {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let ws = winsize(rows, cols);
        // SAFETY: openpty writes two fds into the out-params; name and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just returned by openpty and are owned here.
        let (master, slave) =
            unsafe { (fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        cmd.stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(dup(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; they make the pty (now fd 0) the
        // child's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on pty");
        // The master reads EIO once no slave fd is open: drop ours so that marks the child's end.
        drop(cmd);
        drop(slave);
        let mut reader = master.try_clone().expect("dup pty master");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        PtyChild {
            child,
            master,
            rx,
            output: Vec::new(),
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.master.write_all(data).expect("write to pty master");
    }

    /// Everything read from the terminal so far, lossily as text.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads until `pred` holds for the output so far or `timeout` passes.
    pub fn expect(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.output()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.output.extend_from_slice(&chunk),
                Err(_) => return pred(&self.output()),
            }
        }
    }

    /// Sets the terminal size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits for the child (killing it after `timeout`) and collects the rest of the output.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let status = wait_child_timeout(&mut self.child, timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        while let Ok(chunk) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.output.extend_from_slice(&chunk);
        }
        (status, self.output())
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Containerd {
    /// Runs `ctr <args>` on a new pty of `rows` x `cols` (for `run -t` / `exec -t`).
    pub fn spawn_ctr_on_pty(&self, args: &[String], rows: u16, cols: u16) -> PtyChild {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        PtyChild::spawn(cmd, rows, cols)
    }
}

impl Containerd {
    /// The memory limit of container `id` read on the host: `memory.limit_in_bytes` in a v1
    /// memory hierarchy, else `memory.max` in the v2 one (see [`Containerd::container_cgroup`]).
    pub fn host_memory_limit(&self, id: &str) -> Option<String> {
        let rel = self.container_cgroup(id);
        let rel = rel.trim_start_matches('/');
        let mounts = cgroup_mounts_typed();
        let v1 = mounts
            .iter()
            .filter(|(_, fstype, opts)| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "memory")
            })
            .map(|(mp, _, _)| mp.join(rel).join("memory.limit_in_bytes"));
        let v2 = mounts
            .iter()
            .filter(|(_, fstype, _)| fstype == "cgroup2")
            .map(|(mp, _, _)| mp.join(rel).join("memory.max"));
        v1.chain(v2)
            .find_map(|p| fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
    }
}

/// (mount point, fstype, super options) of every cgroup hierarchy.
fn cgroup_mounts_typed() -> Vec<(PathBuf, String, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            let fstype = f.get(sep + 1)?.to_string();
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    PathBuf::from(unescape_mount(f[4])),
                    fstype,
                    f.get(sep + 3).unwrap_or(&"").to_string(),
                )
            })
        })
        .collect()
}

/// Makes cgroup `path` in the hierarchies mounted at `mounts`, as an operator would.
pub fn make_cgroup<P: AsRef<Path>>(path: &str, mounts: &[P]) {
    for m in mounts {
        let m = m.as_ref();
        let dir = m.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        // A new v1 cpuset is empty until it gets the parent's cpus and mems.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(m.join(f)) {
                fs::write(dir.join(f), v.trim()).unwrap();
            }
        }
    }
}
