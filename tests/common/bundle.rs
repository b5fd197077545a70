//! Test fixture: an OCI bundle with a busybox-static rootfs and a `runc spec`-like config, plus
//! a private state root and helpers to run a container and collect its output.
//!
//! ```ignore
//! let root = TestRoot::new();
//! let b = Bundle::new().args(&["sh", "-c", "echo hi"]);
//! let out = root.run(&b);
//! assert_eq!((out.code, out.stdout.as_str()), (0, "hi\n"));
//! ```

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use pelagos::oci_spec::runtime::Process;
use pelagos::{Config, Container, CreateOptions, Stdio};
use serde_json::{json, Value};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A name unique to this test process and call: `<prefix>-<pid>-<n>`.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next())
}

/// Applets linked in the rootfs (all of busybox's would be ~270 symlinks; these cover tests).
pub const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "id",
    "hostname",
    "sleep",
    "ls",
    "grep",
    "mount",
    "umount",
    "true",
    "false",
    "touch",
    "mkdir",
    "rm",
    "readlink",
    "head",
    "tail",
    "wc",
    "env",
    "pwd",
    "ps",
    "kill",
    "stat",
    "ulimit",
    "dd",
    "yes",
    "sha256sum",
    "stty",
    "tty",
    "test",
    "[",
    "sed",
    "awk",
    "cut",
    "tr",
    "sort",
    "uniq",
    "printf",
    "ln",
    "cp",
    "mv",
    "chmod",
    "chown",
    "mknod",
    "find",
    "xargs",
    "nproc",
    "uname",
    "date",
    "dmesg",
    "sysctl",
    "nice",
    "unshare",
    "nsenter",
    "whoami",
    "groups",
    "basename",
    "dirname",
    "seq",
    "timeout",
    "ip",
    "ifconfig",
    "df",
    "od",
    "hexdump",
    "mountpoint",
    "setsid",
    "wget",
    "nc",
];

/// A bundle directory (removed on drop): `rootfs/` with busybox, and `config.json`.
pub struct Bundle {
    dir: PathBuf,
    config: Value,
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle::new()
    }
}

impl Bundle {
    pub fn new() -> Bundle {
        let dir = std::env::temp_dir().join(unique_id("pelagos-bundle"));
        let rootfs = dir.join("rootfs");
        for d in [
            "bin", "proc", "sys", "dev", "tmp", "etc", "root", "home", "var", "run",
        ] {
            std::fs::create_dir_all(rootfs.join(d)).expect("create rootfs dirs");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy /bin/busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet symlink");
        }
        std::fs::create_dir_all(rootfs.join("usr")).unwrap();
        std::os::unix::fs::symlink("../bin", rootfs.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("bin", rootfs.join("sbin")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        )
        .unwrap();
        let mut config = default_config();
        // A top-level cgroup of its own: nothing shared is left behind once it is deleted.
        config["linux"]["cgroupsPath"] = json!(format!("/{}", unique_id("pelagos-test")));
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The config as JSON, for arbitrary edits (saved by [`Bundle::edit`]).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Edits config.json as JSON and saves it.
    pub fn edit(mut self, f: impl FnOnce(&mut Value)) -> Bundle {
        f(&mut self.config);
        self.save();
        self
    }

    /// Replaces config.json with raw bytes (for invalid-input tests).
    pub fn write_raw_config(&self, bytes: &[u8]) {
        std::fs::write(self.dir.join("config.json"), bytes).unwrap();
    }

    fn save(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn args(self, args: &[&str]) -> Bundle {
        self.edit(|c| c["process"]["args"] = json!(args))
    }

    /// Appends `KEY=VALUE` entries to process.env.
    pub fn env(self, vars: &[&str]) -> Bundle {
        self.edit(|c| {
            let env = c["process"]["env"].as_array_mut().unwrap();
            env.extend(vars.iter().map(|v| json!(v)));
        })
    }

    pub fn cwd(self, cwd: &str) -> Bundle {
        self.edit(|c| c["process"]["cwd"] = json!(cwd))
    }

    pub fn hostname(self, name: &str) -> Bundle {
        self.edit(|c| c["hostname"] = json!(name))
    }

    pub fn user(self, uid: u32, gid: u32) -> Bundle {
        self.edit(|c| c["process"]["user"] = json!({"uid": uid, "gid": gid}))
    }

    pub fn terminal(self, on: bool) -> Bundle {
        self.edit(|c| c["process"]["terminal"] = json!(on))
    }

    pub fn readonly_root(self, ro: bool) -> Bundle {
        self.edit(|c| c["root"]["readonly"] = json!(ro))
    }

    /// Sets the namespace list: each entry is a type ("pid", "network", …), optionally with a
    /// path to join.
    pub fn namespaces(self, list: &[(&str, Option<&str>)]) -> Bundle {
        let ns: Vec<Value> = list
            .iter()
            .map(|(t, p)| match p {
                Some(p) => json!({"type": t, "path": p}),
                None => json!({"type": t}),
            })
            .collect();
        self.edit(|c| c["linux"]["namespaces"] = json!(ns))
    }

    /// Adds (or replaces) one namespace entry.
    pub fn namespace(self, typ: &str, path: Option<&str>) -> Bundle {
        self.edit(|c| {
            let list = c["linux"]["namespaces"].as_array_mut().unwrap();
            list.retain(|n| n["type"] != typ);
            list.push(match path {
                Some(p) => json!({"type": typ, "path": p}),
                None => json!({"type": typ}),
            });
        })
    }

    pub fn without_namespace(self, typ: &str) -> Bundle {
        self.edit(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != typ)
        })
    }

    /// A new user namespace mapping container ids 0..size to host ids host..host+size.
    pub fn userns(self, host: u32, size: u32) -> Bundle {
        self.namespace("user", None).edit(|c| {
            c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": host, "size": size}]);
            c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": host, "size": size}]);
        })
    }

    pub fn mount(self, mount: Value) -> Bundle {
        self.edit(|c| c["mounts"].as_array_mut().unwrap().push(mount))
    }

    /// Sets linux.resources (JSON as in config.json).
    pub fn resources(self, resources: Value) -> Bundle {
        self.edit(|c| c["linux"]["resources"] = resources)
    }

    /// The cgroupsPath of the config (each bundle gets a unique top-level one).
    pub fn cgroup_path(&self) -> Option<String> {
        self.config["linux"]["cgroupsPath"]
            .as_str()
            .map(str::to_string)
    }

    pub fn cgroups_path(self, path: &str) -> Bundle {
        self.edit(|c| c["linux"]["cgroupsPath"] = json!(path))
    }

    /// Sets a hook list ("prestart", "createRuntime", …) from JSON.
    pub fn hooks(self, kind: &str, hooks: Value) -> Bundle {
        self.edit(|c| c["hooks"][kind] = hooks)
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `runc spec`'s example (`pelagos::spec::example`) without a terminal or a cgroup namespace.
pub fn default_config() -> Value {
    let mut c = pelagos::spec::example();
    c["process"]["terminal"] = false.into();
    if let Some(ns) = c["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "cgroup");
    }
    c
}

/// A private state root under /run (removed on drop) and the helper binary of this package.
pub struct TestRoot {
    pub config: Config,
}

impl Default for TestRoot {
    fn default() -> Self {
        TestRoot::new()
    }
}

/// What a container printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Pipes for a container's stdout and stderr; read them after start.
pub struct Pipes {
    pub stdout: std::io::PipeReader,
    pub stderr: std::io::PipeReader,
}

impl Pipes {
    /// Container-side stdio (stdin /dev/null) and our read ends.
    pub fn new() -> (Stdio, Pipes) {
        let (out_r, out_w) = std::io::pipe().unwrap();
        let (err_r, err_w) = std::io::pipe().unwrap();
        let stdio = Stdio::Fds {
            stdin: None,
            stdout: Some(OwnedFd::from(out_w)),
            stderr: Some(OwnedFd::from(err_w)),
        };
        (
            stdio,
            Pipes {
                stdout: out_r,
                stderr: err_r,
            },
        )
    }

    /// Reads both to EOF (concurrently, so a chatty stderr cannot block stdout).
    pub fn collect(self) -> (String, String) {
        let Pipes { stdout, mut stderr } = self;
        let t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut out = String::new();
        let mut stdout = stdout;
        let _ = stdout.read_to_string(&mut out);
        (out, t.join().unwrap())
    }
}

impl TestRoot {
    pub fn new() -> TestRoot {
        let root = PathBuf::from(format!(
            "/run/pelagos-test-{}-{}",
            std::process::id(),
            next()
        ));
        TestRoot {
            config: Config {
                root,
                helper: Some(PathBuf::from(env!("CARGO_BIN_EXE_pelagos"))),
                systemd_cgroup: false,
            },
        }
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// Creates a container from `bundle` with a unique id.
    pub fn create(
        &self,
        bundle: &Bundle,
        stdio: Stdio,
    ) -> Result<Container, pelagos::container::Error> {
        self.create_id(&unique_id("c"), bundle, stdio)
    }

    pub fn create_id(
        &self,
        id: &str,
        bundle: &Bundle,
        stdio: Stdio,
    ) -> Result<Container, pelagos::container::Error> {
        Container::create(
            &self.config,
            CreateOptions {
                id: id.to_string(),
                bundle: bundle.path().to_path_buf(),
                stdio,
                no_pivot: false,
                preserve_fds: Vec::new(),
            },
        )
    }

    /// Nothing of container `id` (made from `bundle`) remains: no state dir, no cgroup at the
    /// bundle's cgroupsPath in any hierarchy, no mount under the bundle or the state root.
    pub fn assert_nothing_left(&self, id: &str, bundle: &Bundle) {
        assert!(
            !self.root().join(id).exists(),
            "state dir of {id} left behind"
        );
        if let Some(cg) = bundle.cgroup_path() {
            assert!(!cgroup_exists(&cg), "cgroup {cg} of {id} left behind");
        }
        for dir in [bundle.path(), self.root()] {
            assert_eq!(
                mounts_under(dir),
                Vec::<String>::new(),
                "mounts left by {id}"
            );
        }
    }

    /// Create, start, wait, delete; returns the output. Panics on any lifecycle error.
    pub fn run(&self, bundle: &Bundle) -> Output {
        let (stdio, pipes) = Pipes::new();
        let mut c = self.create(bundle, stdio).expect("create");
        c.start().expect("start");
        let (stdout, stderr) = pipes.collect();
        let code = c.wait().expect("wait for the init").status;
        c.delete(false).expect("delete");
        Output {
            code,
            stdout,
            stderr,
        }
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.root);
    }
}

/// `cgroup` (a cgroupsPath) exists in some cgroup hierarchy of the host.
pub fn cgroup_exists(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    super::containerd::cgroup_mounts()
        .iter()
        .any(|m| m.join(rel).is_dir())
}

/// Mount points of this process's mount namespace at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| Path::new(mp).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// An exec process spec: `args` as root in `/`, with a PATH.
pub fn exec_process(args: &[&str]) -> Process {
    serde_json::from_value(json!({
        "args": args,
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"]
    }))
    .unwrap()
}

/// Docker's default seccomp allowlist without the syscalls an application like `sh -c 'echo'`
/// never makes but a runtime finishing its setup would (socket messages, polls, close_range):
/// the shape of a profile recorded from the application's own syscalls.
pub fn recorded_allowlist() -> Value {
    let mut profile: Value =
        serde_json::from_str(include_str!("../../src/seccomp/moby_default.json")).unwrap();
    let unused = [
        "close_range",
        "sendmsg",
        "recvmsg",
        "sendto",
        "recvfrom",
        "poll",
        "ppoll",
    ];
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !unused.contains(&n.as_str().unwrap_or_default()));
        }
    }
    profile
}

/// Builds `tests/fixtures/<name>.c` as a static binary at `out` (containers run it without
/// the host's libraries).
pub fn build_static_fixture(name: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    let cc = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .expect("run gcc (apt-get install gcc libc6-dev)");
    assert!(
        cc.status.success(),
        "gcc -static {}: {}",
        src.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
}

/// Receives the one fd a runtime sends on an accepted console-socket connection.
pub fn receive_master(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            assert_eq!(fds.len(), 1);
            // SAFETY: the fd just arrived with the message; nothing else owns it.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

/// A terminal size of `rows` x `cols`.
pub fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A pty pair (master, slave) of `rows` x `cols`, both close-on-exec: a slave inherited by
/// another test's child would keep the master from reading EIO when the container ends.
pub fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let pty = nix::pty::openpty(Some(&winsize(rows, cols)), None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("set FD_CLOEXEC on the pty");
    }
    (pty.master, pty.slave)
}
