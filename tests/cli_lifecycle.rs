//! The `pelagos` CLI driven the way runc's users drive runc: separate processes for create,
//! start, state, kill and delete; pid files; console sockets and the foreground terminal
//! proxy; `run` exit codes; exec into a running container. Needs root.

mod common;

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::bundle::{unique_id, Bundle};
use serde_json::Value;

const PELAGOS: &str = env!("CARGO_BIN_EXE_pelagos");

/// A private `--root`; on drop every container left in it is force-deleted, then it is removed.
struct Cli {
    root: PathBuf,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            root: PathBuf::from(format!("/run/{}", unique_id("pelagos-cli-test"))),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(PELAGOS);
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs a command that leaves no process holding its stdout/stderr.
    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn pelagos")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "pelagos {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command expected to fail with exit code 1; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "pelagos {args:?} should fail; stdout {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `create` (or `run --detach`), whose container keeps our stdout/stderr: they go to files.
    fn detached(&self, args: &[&str], log: &Path) {
        let f = fs::File::create(log).unwrap();
        let status = self
            .cmd(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pelagos {args:?} failed: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    fn ids(&self) -> Vec<String> {
        self.ok(&["list", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.out(&["delete", "--force", &id]);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Waits until `pid` has exited (it is not our child: the CLI that started it has exited).
fn wait_exit(pidfd: &OwnedFd) {
    assert!(pelagos::pidfd::wait_exit(pidfd.as_fd(), -1));
}

fn pidfd(pid: i64) -> OwnedFd {
    pelagos::pidfd::open(pid as i32).expect("pidfd_open of the container's init")
}

fn cgroup_exists(b: &Bundle) -> bool {
    let path = b.cgroup_path().expect("fixture sets a cgroups path");
    let rel = path.trim_start_matches('/');
    ["pids", "memory", "unified", "freezer", ""]
        .iter()
        .any(|c| Path::new("/sys/fs/cgroup").join(c).join(rel).exists())
}

#[test]
fn create_start_kill_delete_in_separate_processes() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("life");
    let pid_file = b.path().join("init.pid");
    let log = b.path().join("out.log");
    let bundle = b.path().to_str().unwrap();
    cli.detached(
        &[
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
        &log,
    );

    let st = cli.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], bundle);
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // The init outlived the CLI that created it, blocked before exec of the user process.
    let init = pidfd(pid);
    assert!(!pelagos::pidfd::exited(init.as_fd()));
    assert_eq!(cli.ids(), vec![id.clone()]);

    cli.ok(&["start", &id]);
    assert_eq!(cli.state(&id)["status"], "running");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");
    assert!(cli.fails(&["start", &id]).contains("running"));
    assert!(cli.fails(&["delete", &id]).contains("running"));

    cli.ok(&["kill", &id, "KILL"]);
    wait_exit(&init);
    let st = cli.state(&id);
    assert_eq!(st["status"], "stopped");
    assert_eq!(st["pid"], 0);
    let err = cli.fails(&["kill", &id, "TERM"]);
    assert!(err.contains("not running"), "{err}");

    cli.ok(&["delete", &id]);
    assert!(cli.fails(&["state", &id]).contains("does not exist"));
    assert!(cli.ids().is_empty());
    assert!(!cgroup_exists(&b), "cgroup left behind");
}

/// A relative cgroupsPath below parents that do not exist (as the OCI generator writes,
/// `testdir/cgrouptest/container`): delete removes the parents the create made, in every
/// hierarchy, once nothing else lives in them; one still holding another container stays.
/// (runc 1.1.5 leaves them all behind.)
#[test]
fn delete_removes_the_cgroup_parents_the_create_made() {
    let cli = Cli::new();
    let top = unique_id("pelagos-parents");
    let first = Bundle::new()
        .args(&["sleep", "1000"])
        .cgroups_path(&format!("{top}/cgrouptest/first"));
    let second = Bundle::new()
        .args(&["sleep", "1000"])
        .cgroups_path(&format!("{top}/cgrouptest/second"));
    let ids = [unique_id("parents"), unique_id("parents")];
    for (b, id) in [&first, &second].into_iter().zip(&ids) {
        let log = b.path().join("out.log");
        let bundle = b.path().to_str().unwrap();
        cli.detached(&["create", "--bundle", bundle, id], &log);
    }
    let made: Vec<PathBuf> = common::containerd::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(&top))
        .filter(|d| d.is_dir())
        .collect();
    assert!(!made.is_empty(), "no hierarchy has {top}");

    // The second container found the parents there: its delete leaves them to the first.
    cli.ok(&["delete", "--force", &ids[1]]);
    assert!(!cgroup_exists(&second));
    assert!(cgroup_exists(&first));
    for d in &made {
        assert!(
            d.join("cgrouptest").is_dir(),
            "{} removed early",
            d.display()
        );
    }
    cli.ok(&["delete", "--force", &ids[0]]);
    let left: Vec<&PathBuf> = made.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroup parents left behind: {left:?}");
}

#[test]
fn delete_of_a_created_container_needs_no_force() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("created");
    cli.detached(
        &["create", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let init = pidfd(cli.state(&id)["pid"].as_i64().unwrap());
    cli.ok(&["delete", &id]);
    assert!(pelagos::pidfd::exited(init.as_fd()));
    assert!(cli.ids().is_empty());
    assert!(!cgroup_exists(&b));
}

#[test]
fn run_returns_the_exit_code_and_cleans_up() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let out = cli.out(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("run"),
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert!(cli.ids().is_empty());
    assert!(!cgroup_exists(&b));

    // A signal to the run process reaches the container's process (as runc forwards it).
    let b = Bundle::new().args(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready; sleep 1000 & wait",
    ]);
    let (code, _) = run_until_ready(&cli, &b, &unique_id("run"), |run, _| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(run.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    });
    assert_eq!(code, Some(42));
    // Killed by a signal: 128 + the signal.
    let b = Bundle::new().args(&["sh", "-c", "echo ready; sleep 1000"]);
    let (code, _) = run_until_ready(&cli, &b, &unique_id("run"), |_, id| {
        cli.ok(&["kill", id, "9"]);
    });
    assert_eq!(code, Some(128 + 9));
    assert!(cli.ids().is_empty());
}

/// Starts `pelagos run` of `b`, waits for the container to print "ready", calls `then`, and
/// returns run's exit code and the rest of the output.
fn run_until_ready(
    cli: &Cli,
    b: &Bundle,
    id: &str,
    then: impl FnOnce(&std::process::Child, &str),
) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let mut run = cli
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    then(&run, id);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    (run.wait().unwrap().code(), rest)
}

#[test]
fn delete_force_kills_a_running_container() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("force");
    cli.detached(
        &["run", "-d", "--bundle", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let st = cli.state(&id);
    assert_eq!(st["status"], "running");
    let init = pidfd(st["pid"].as_i64().unwrap());
    let err = cli.fails(&["delete", &id]);
    assert!(err.contains("running"), "{err}");
    assert!(!pelagos::pidfd::exited(init.as_fd()));
    cli.ok(&["delete", "--force", &id]);
    assert!(pelagos::pidfd::exited(init.as_fd()));
    assert!(cli.ids().is_empty());
    assert!(!cgroup_exists(&b));
    // runc: --force of a container that does not exist succeeds; without it, an error.
    cli.ok(&["delete", "--force", &id]);
    assert!(cli.fails(&["delete", &id]).contains("does not exist"));
}

#[test]
fn exec_into_a_running_container() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("exec");
    cli.detached(
        &[
            "run",
            "--detach",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ],
        &b.path().join("log"),
    );

    let out = cli.out(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $FOO $(pwd); exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar /tmp\n");
    assert_eq!(out.status.code(), Some(5));

    let out = cli.ok(&["exec", "--user", "65534:65534", &id, "id", "-u"]);
    assert_eq!(out, "65534\n");

    // What containerd's runc shim does: --process FILE --detach --pid-file.
    let process = serde_json::json!({
        "args": ["sleep", "999"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"]
    });
    let pfile = b.path().join("process.json");
    fs::write(&pfile, process.to_string()).unwrap();
    let pid_file = b.path().join("exec.pid");
    cli.detached(
        &[
            "exec",
            "--process",
            pfile.to_str().unwrap(),
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
        &b.path().join("exec.log"),
    );
    let pid: i32 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        b"sleep\x00999\x00"
    );
    let pids: Vec<i32> = serde_json::from_str(&cli.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    let table = cli.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(table.contains("sleep 999"), "{table}");

    assert!(cli.fails(&["exec", &id]).contains("no command"));
    cli.ok(&["delete", "--force", &id]);
    assert!(!cgroup_exists(&b));
}

#[test]
fn exec_into_a_stopped_container_fails() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["true"]);
    let id = unique_id("stopped");
    cli.detached(
        &["create", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let init = pidfd(cli.state(&id)["pid"].as_i64().unwrap());
    cli.ok(&["start", &id]);
    wait_exit(&init);
    let err = cli.fails(&["exec", &id, "true"]);
    assert!(err.contains("stopped"), "{err}");
    cli.ok(&["delete", &id]);
}

#[test]
fn console_socket_receives_the_pty_master() {
    let cli = Cli::new();
    let b = Bundle::new()
        .terminal(true)
        .args(&["sh", "-c", "tty; echo ok; sleep 1000"]);
    let id = unique_id("tty");
    let sock_path = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    cli.detached(
        &[
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            "--console-socket",
            sock_path.to_str().unwrap(),
            &id,
        ],
        &b.path().join("log"),
    );
    let master = common::bundle::receive_master(&listener);
    cli.ok(&["start", &id]);
    let mut out = String::new();
    let mut f = fs::File::from(master);
    let mut buf = [0u8; 256];
    while !out.contains("ok") {
        use std::io::Read;
        let n = f.read(&mut buf).expect("read the pty master");
        assert!(n > 0, "pty closed after {out:?}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    cli.ok(&["delete", "--force", &id]);
    assert!(!cgroup_exists(&b));
}

#[test]
fn terminal_and_console_socket_must_agree() {
    let cli = Cli::new();
    let b = Bundle::new().terminal(true);
    let err = cli.fails(&["create", "-b", b.path().to_str().unwrap(), &unique_id("t")]);
    assert!(err.contains("console-socket"), "{err}");
    let b = Bundle::new();
    let err = cli.fails(&[
        "create",
        "-b",
        b.path().to_str().unwrap(),
        "--console-socket",
        "/nonexistent.sock",
        &unique_id("t"),
    ]);
    assert!(err.contains("no terminal"), "{err}");
    assert!(cli.ids().is_empty());
    assert!(!cgroup_exists(&b));
}

#[test]
fn bad_input_is_named_and_leaves_nothing() {
    let cli = Cli::new();
    let missing = format!("/nonexistent/{}", unique_id("bundle"));
    let err = cli.fails(&["create", "--bundle", &missing, "x1"]);
    assert!(err.contains(&missing), "{err}");
    assert!(cli
        .fails(&["create", "a/b"])
        .contains("invalid container id"));
    assert!(cli.fails(&["create", "--nope", "x"]).contains("-nope"));
    assert!(cli.fails(&["frobnicate"]).contains("unknown command"));
    assert!(cli
        .fails(&["kill", "x1", "NOPE"])
        .contains("invalid signal"));
    assert!(cli.ids().is_empty());

    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("dup");
    cli.detached(
        &["create", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let err = cli.fails(&["create", "-b", b.path().to_str().unwrap(), &id]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(cli.state(&id)["status"], "created");
    cli.ok(&["delete", &id]);
}

#[test]
fn pause_resume_and_update() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("pause");
    cli.detached(
        &["run", "-d", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    cli.ok(&["pause", &id]);
    assert_eq!(cli.state(&id)["status"], "paused");
    assert!(cli.fails(&["pause", &id]).contains("paused"));
    cli.ok(&["resume", &id]);
    assert_eq!(cli.state(&id)["status"], "running");

    let rel = b.cgroup_path().unwrap();
    let rel = rel.trim_start_matches('/');
    let limit = || {
        let v1 = Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.limit_in_bytes");
        let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.max");
        fs::read_to_string(v1)
            .or_else(|_| fs::read_to_string(v2))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    cli.ok(&["update", "--memory", "64m", &id]);
    assert_eq!(limit(), (64u64 << 20).to_string());
    // go-runc's way: the resources JSON on stdin.
    let mut child = cli
        .cmd(&["update", "--resources", "-", &id])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"memory": {"limit": 33554432}}"#)
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(limit(), "33554432");
    cli.ok(&["delete", "--force", &id]);
}

#[test]
fn list_formats() {
    let cli = Cli::new();
    assert_eq!(cli.ok(&["list", "--format", "json"]).trim(), "[]");
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("list");
    cli.detached(
        &["create", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let table = cli.ok(&["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], id);
    assert_eq!(row[2], "created");
    let json: Value = serde_json::from_str(&cli.ok(&["list", "--format=json"])).unwrap();
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["status"], "created");
    cli.ok(&["delete", &id]);
}

#[test]
fn spec_and_features() {
    let dir = std::env::temp_dir().join(unique_id("pelagos-spec"));
    fs::create_dir_all(&dir).unwrap();
    let cli = Cli::new();
    cli.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let cfg: Value = serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["process"]["args"][0], "sh");
    assert_eq!(cfg["root"]["path"], "rootfs");
    let err = cli.fails(&["spec", "--bundle", dir.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
    fs::remove_file(dir.join("config.json")).unwrap();
    cli.ok(&["spec", "--rootless", "-b", dir.to_str().unwrap()]);
    let cfg: Value = serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["linux"]["uidMappings"][0]["containerID"], 0);
    fs::remove_dir_all(&dir).unwrap();

    let f: Value = serde_json::from_str(&cli.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&"pid".into()));
}

#[test]
fn global_flags_log_json_and_systemd() {
    let cli = Cli::new();
    let dir = std::env::temp_dir().join(unique_id("pelagos-log"));
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log.json");
    let out = Command::new(PELAGOS)
        .args([
            "--root",
            cli.root.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ])
        .args(["--log-format", "json", "state", "no-such-container"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"].as_str().unwrap().contains("no-such-container"),
        "{line}"
    );
    assert!(line["time"].is_string());
    fs::remove_dir_all(&dir).unwrap();

    // --debug: the core's debug records reach the log too.
    let b = Bundle::new().args(&["true"]);
    let id = unique_id("debug");
    let log = b.path().join("debug.json");
    cli.detached(
        &[
            "--log",
            log.to_str().unwrap(),
            "--log-format=json",
            "--debug",
            "create",
            "-b",
            b.path().to_str().unwrap(),
            &id,
        ],
        &b.path().join("out"),
    );
    let debug: Vec<Value> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        debug
            .iter()
            .any(|l| l["level"] == "debug" && l["msg"].as_str().unwrap().contains(&id)),
        "{debug:?}"
    );
    cli.ok(&["delete", &id]);

    if pelagos::cgroups::systemd_booted() {
        cli.ok(&["--systemd-cgroup", "list"]);
    } else {
        let err = cli.fails(&["--systemd-cgroup", "list"]);
        assert!(err.contains("systemd is not running"), "{err}");
    }
}

/// What the container's setup logs (it runs in a helper process with no log of its own)
/// reaches the runtime's `--log`: here that the fixture's ambient capabilities were not raised
/// (the kernel refuses without inheritable ones), a debug record as runc is silent about it.
#[test]
fn records_of_the_container_setup_reach_the_log() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["true"]);
    let run = |debug: bool| {
        let log = b.path().join(format!("run-{debug}.log"));
        let mut args = vec!["--log", log.to_str().unwrap()];
        if debug {
            args.push("--debug");
        }
        let id = unique_id("setup-log");
        args.extend(["run", "--bundle", b.path().to_str().unwrap(), &id]);
        let out = cli.out(&args);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        fs::read_to_string(&log).unwrap()
    };
    let not_raised = "ambient CAP_AUDIT_WRITE not raised";
    let log = run(true);
    assert!(
        log.lines()
            .any(|l| l.contains("debug") && l.contains(not_raised)),
        "{log}"
    );
    let log = run(false);
    assert!(!log.contains(not_raised), "{log}");
}

/// `--systemd-cgroup` (runc's flag): the container's cgroup is the transient scope its
/// `slice:prefix:name` path names, updated through systemd as well, gone with the container.
/// Without systemd the create fails saying so and leaves nothing.
#[test]
fn systemd_cgroup_makes_the_container_a_scope() {
    let cli = Cli::new();
    let id = unique_id("sd");
    let b = Bundle::new()
        .args(&["sleep", "1000"])
        .cgroups_path(&format!("system.slice:pelagos-test:{id}"));
    let bundle = b.path().to_str().unwrap();
    if !pelagos::cgroups::systemd_booted() {
        let err = cli.fails(&["--systemd-cgroup", "run", "-d", "-b", bundle, &id]);
        assert!(err.contains("systemd is not running"), "{err}");
        assert!(cli.ids().is_empty());
        return;
    }
    let unit = format!("pelagos-test-{id}.scope");
    let show = |p: &str| {
        let out = Command::new("systemctl")
            .args(["show", "-p", p, "--value", &unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli.detached(
        &["--systemd-cgroup", "run", "-d", "-b", bundle, &id],
        &b.path().join("log"),
    );
    assert_eq!(show("ActiveState"), "active");
    let pid = cli.state(&id)["pid"].as_i64().unwrap();
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = format!("/system.slice/{unit}");
    assert!(own.lines().all(|l| l.ends_with(&path)), "{own}");
    cli.ok(&["--systemd-cgroup", "update", "--memory", "64m", &id]);
    let v2 = pelagos::cgroups::mode() == pelagos::cgroups::Mode::Unified;
    let (property, dir, file) = match v2 {
        true => ("MemoryMax", "/sys/fs/cgroup", "memory.max"),
        false => (
            "MemoryLimit",
            "/sys/fs/cgroup/memory",
            "memory.limit_in_bytes",
        ),
    };
    assert_eq!(show(property), (64u64 << 20).to_string());
    let dir = Path::new(dir).join(path.trim_start_matches('/'));
    assert_eq!(
        fs::read_to_string(dir.join(file)).unwrap().trim(),
        (64u64 << 20).to_string()
    );
    cli.ok(&["delete", "--force", &id]);
    assert_eq!(show("LoadState"), "not-found");
    let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(path.trim_start_matches('/')))
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--systemd-cgroup` with slices: a scope in a nested slice none of whose levels exists
/// (systemd makes them, as the path says: `a-b.slice` in `a.slice`), and a container whose
/// cgroups path names a slice unit of its own (runc's `slice:prefix:<name>.slice`, the slice
/// made with `Wants=` its parent). Each holds the container, takes an update, and is gone with
/// it; the parents stay, as with runc (the test removes them).
#[test]
fn systemd_cgroup_nested_slices_and_a_slice_unit() {
    if !pelagos::cgroups::systemd_booted() {
        // systemd_cgroup_makes_the_container_a_scope checks the refusal without systemd.
        return;
    }
    let cli = Cli::new();
    let top = unique_id("pt").replace('-', "_");
    let show = |unit: &str, p: &str| {
        let out = Command::new("systemctl")
            .args(["show", "-p", p, "--value", unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let v2 = pelagos::cgroups::mode() == pelagos::cgroups::Mode::Unified;
    let cases = [
        (
            format!("{top}-a-b.slice:sc:c1"),
            "sc-c1.scope".to_string(),
            format!("/{top}.slice/{top}-a.slice/{top}-a-b.slice/sc-c1.scope"),
        ),
        (
            format!("{top}.slice:ignored:{top}-own.slice"),
            format!("{top}-own.slice"),
            format!("/{top}.slice/{top}-own.slice"),
        ),
    ];
    for (i, (cgroups_path, unit, path)) in cases.iter().enumerate() {
        let id = format!("{top}-{i}");
        let b = Bundle::new()
            .args(&["sleep", "1000"])
            .cgroups_path(cgroups_path);
        let bundle = b.path().to_str().unwrap();
        cli.detached(
            &["--systemd-cgroup", "run", "-d", "-b", bundle, &id],
            &b.path().join("log"),
        );
        assert_eq!(show(unit, "ActiveState"), "active", "{unit}");
        assert_eq!(show(unit, "ControlGroup"), *path, "{unit}");
        let pid = cli.state(&id)["pid"].as_i64().unwrap();
        let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.lines().any(|l| l.ends_with(path.as_str())), "{own}");
        cli.ok(&["--systemd-cgroup", "update", "--memory", "64m", &id]);
        let property = if v2 { "MemoryMax" } else { "MemoryLimit" };
        assert_eq!(show(unit, property), (64u64 << 20).to_string(), "{unit}");
        cli.ok(&["delete", "--force", &id]);
        // A stopped scope is gone from systemd; a stopped slice stays loaded, inactive, until
        // systemd collects it (runc's delete stops it the same way).
        assert_eq!(show(unit, "ActiveState"), "inactive", "{unit}");
        if i == 0 {
            assert_eq!(show(unit, "LoadState"), "not-found", "{unit}");
        }
        let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(path.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    assert!(cli.ids().is_empty());
    let status = Command::new("systemctl")
        .args(["stop", &format!("{top}.slice")])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn foreground_terminal_is_proxied_without_a_console_socket() {
    use std::io::Write;
    let cli = Cli::new();
    let b = Bundle::new()
        .terminal(true)
        .args(&["sh", "-c", "tty; read x; echo got $x; exit 3"]);
    let mut run = cli
        .cmd(&["run", "-b", b.path().to_str().unwrap(), &unique_id("fg")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = run.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    // The pty's echo of "hello" can land inside tty's line ("/dev/pts/0hello\r\n\r\n"): the
    // input is written at once. "got hello\r\n" shows the output went through the terminal.
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("got hello\r\n"), "{text:?}");
    assert!(cli.ids().is_empty());

    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("fgexec");
    cli.detached(
        &["run", "-d", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let out = cli.out(&["exec", "-t", &id, "sh", "-c", "tty; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/dev/pts/0\r\n");
    cli.ok(&["delete", "-f", &id]);
}

#[test]
fn preserved_fds_reach_the_container() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let cli = Cli::new();
    let b = Bundle::new().args(&["sh", "-c", "echo via-fd3 >&3"]);
    let (mut r, w) = std::io::pipe().unwrap();
    let w_fd = w.as_raw_fd();
    let mut cmd = cli.cmd(&[
        "run",
        "--preserve-fds",
        "1",
        "-b",
        b.path().to_str().unwrap(),
        &unique_id("fds"),
    ]);
    // SAFETY: dup2 is async-signal-safe; it only rearranges the child's fd table.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    drop(w);
    assert!(status.success());
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "via-fd3\n");
}

#[test]
fn kill_all_signals_every_process_of_the_container() {
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("killall");
    cli.detached(
        &["run", "-d", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let init = pidfd(cli.state(&id)["pid"].as_i64().unwrap());
    let pid_file = b.path().join("exec.pid");
    cli.detached(
        &[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sleep",
            "999",
        ],
        &b.path().join("exec.log"),
    );
    let exec = pidfd(fs::read_to_string(&pid_file).unwrap().parse().unwrap());
    // The init is its pid namespace's init: TERM from outside (no handler) leaves it running,
    // so only --all's reach to the rest of the cgroup ends the exec'd sleep.
    cli.ok(&["kill", "--all", &id, "SIGTERM"]);
    wait_exit(&exec);
    assert!(!pelagos::pidfd::exited(init.as_fd()));
    cli.ok(&["kill", "--all", &id, "KILL"]);
    wait_exit(&init);
    assert_eq!(cli.state(&id)["status"], "stopped");
    cli.ok(&["delete", &id]);
    assert!(!cgroup_exists(&b));
}

#[test]
fn exec_with_tty_sends_its_pty_master_to_the_console_socket() {
    use std::io::Read;
    let cli = Cli::new();
    let b = Bundle::new().args(&["sleep", "1000"]);
    let id = unique_id("exectty");
    cli.detached(
        &["run", "-d", "-b", b.path().to_str().unwrap(), &id],
        &b.path().join("log"),
    );
    let sock_path = b.path().join("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let pid_file = b.path().join("exec.pid");
    cli.detached(
        &[
            "exec",
            "--tty",
            "--detach",
            "--console-socket",
            sock_path.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            // It waits for a line, so it is still there when the test takes its pidfd.
            "tty; echo done; read x",
        ],
        &b.path().join("exec.log"),
    );
    let exec = pidfd(fs::read_to_string(&pid_file).unwrap().parse().unwrap());
    let mut master = fs::File::from(common::bundle::receive_master(&listener));
    let mut out = String::new();
    let mut buf = [0u8; 256];
    while !out.contains("done") {
        let n = master.read(&mut buf).expect("read the pty master");
        assert!(n > 0, "pty closed after {out:?}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    std::io::Write::write_all(&mut master, b"\n").unwrap();
    wait_exit(&exec);
    cli.ok(&["delete", "--force", &id]);
}

/// Issue 15: `pelagos state ID | grep -q running` must not panic when the reader has gone; the
/// CLI ends by SIGPIPE, quietly, as runc (a Go program) does.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let cli = Cli::new();
    for args in [&["features"][..], &["list"], &["--version"]] {
        // Close-on-exec: a read end inherited by another test's child would keep the pipe open.
        let (read, write) = std::io::pipe().unwrap();
        drop(read);
        let out = cli
            .cmd(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .expect("spawn pelagos");
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Issue 15: `kill` with TERM, USR1 and KILL reaches a container running under an allowlist
/// seccomp profile (`recorded_allowlist`), and `run` reports how it ended.
#[test]
fn kill_reaches_a_container_under_an_allowlist_profile() {
    let cli = Cli::new();
    let profile = common::bundle::recorded_allowlist();
    let script = "trap 'echo usr1' USR1; trap 'echo term; exit 15' TERM; echo ready; \
                  while :; do sleep 0.1; done";
    let b = Bundle::new()
        .edit(|c| c["linux"]["seccomp"] = profile.clone())
        .args(&["sh", "-c", script]);
    let (code, rest) = run_until_ready(&cli, &b, &unique_id("kill"), |_, id| {
        cli.ok(&["kill", id, "USR1"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        cli.ok(&["kill", id, "SIGTERM"]);
    });
    assert_eq!((code, rest.as_str()), (Some(15), "usr1\nterm\n"));
    let b = Bundle::new()
        .edit(|c| c["linux"]["seccomp"] = profile)
        .args(&["sh", "-c", "echo ready; sleep 1000"]);
    let (code, _) = run_until_ready(&cli, &b, &unique_id("kill"), |_, id| {
        cli.ok(&["kill", id, "KILL"]);
    });
    assert_eq!(code, Some(128 + libc::SIGKILL));
    assert!(cli.ids().is_empty());
}
