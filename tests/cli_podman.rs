//! podman (Debian's 4.3, with conmon) as a real client of the `pelagos` CLI (issue 15): the
//! verbs users type, the security options they pass, and nothing left after `podman rm`.
//! `PELAGOS_TEST_RUNTIME=io.containerd.runc.v2` runs the same tests with runc as the control.
//!
//! Each test has its own podman storage (vfs) and run root under /run; the network is `none`
//! (no CNI on the test machines). The VM withholds CAP_SYS_RESOURCE, so every container gets
//! `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024` (runc fails the same way without them).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::bundle::unique_id;
use common::containerd::{cgroup_mounts, describe, stdout};

const IMAGE: &str = common::image::IMAGE_REF;
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The runtime under test: the pelagos CLI, or runc as the control.
fn runtime() -> (PathBuf, PathBuf) {
    if common::containerd::testing_pelagos() {
        (
            PathBuf::from(env!("CARGO_BIN_EXE_pelagos")),
            PathBuf::from("/run/pelagos"),
        )
    } else {
        (PathBuf::from("/usr/sbin/runc"), PathBuf::from("/run/runc"))
    }
}

/// One private podman: its storage and run root, removed on drop with every container.
struct Podman {
    dir: PathBuf,
    runtime: PathBuf,
    state_root: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        // podman's first command creates its shared-memory locks (/dev/shm/libpod_lock) if
        // missing; two doing it at once fail with "file exists", so the first commands of the
        // test's podmans take turns.
        static FIRST_COMMAND: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = FIRST_COMMAND.lock().unwrap_or_else(|e| e.into_inner());
        let dir = PathBuf::from(format!("/run/{}", unique_id("pelagos-podman-test")));
        std::fs::create_dir_all(&dir).unwrap();
        let (runtime, state_root) = runtime();
        let p = Podman {
            dir,
            runtime,
            state_root,
        };
        let out = p.run(&["load", "-i", common::image::archive().to_str().unwrap()]);
        assert!(out.status.success(), "podman load: {}", describe(&out));
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .expect("run podman (apt-get install podman)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", describe(&out));
        stdout(&out)
    }

    /// `podman run` with the ulimits and no network, then `opts`, the image and `argv`.
    fn run_args<'a>(&self, opts: &[&'a str], argv: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--network", "none"];
        v.extend(ULIMITS);
        v.extend(opts);
        v.push(IMAGE);
        v.extend(argv);
        v
    }

    /// The full id of container `name`.
    fn id(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.Id}}", name])
            .trim()
            .to_owned()
    }

    /// Nothing of container `id` is left: no runtime state, no cgroup in any hierarchy, no
    /// mount naming it.
    fn assert_gone(&self, id: &str) {
        assert!(
            !self.state_root.join(id).exists(),
            "runtime state of {id} left in {}",
            self.state_root.display()
        );
        for m in cgroup_mounts() {
            let cg = m.join("libpod_parent").join(format!("libpod-{id}"));
            assert!(!cg.exists(), "cgroup {} left", cg.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(id)).collect();
        assert!(left.is_empty(), "mounts of {id} left: {left:#?}");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = Command::new("umount")
            .arg("--recursive")
            .arg("--lazy")
            .arg(self.dir.join("run"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The container's value of a cgroup file, found in v1's `v1_dir` or the v2 hierarchy.
fn cgroup_value(id: &str, v1_dir: &str, v1_file: &str, v2_file: &str) -> String {
    for m in cgroup_mounts() {
        let dir = m.join("libpod_parent").join(format!("libpod-{id}"));
        let is_v2 = m.join("cgroup.controllers").exists();
        let file = match (is_v2, m.ends_with(v1_dir)) {
            (true, _) => dir.join(v2_file),
            (false, true) => dir.join(v1_file),
            _ => continue,
        };
        if let Ok(v) = std::fs::read_to_string(&file) {
            return v.trim().to_owned();
        }
    }
    panic!("no {v1_dir}/{v1_file} or {v2_file} for libpod-{id}")
}

#[test]
fn run_attached_with_stdin_exit_code_and_memory_limit() {
    let p = Podman::new();
    let args = p.run_args(&["--rm", "-i", "-m", "64m"], &["sh", "-c", "cat; exit 3"]);
    let mut child = p
        .cmd(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(stdout(&out), "through stdin\n");

    let args = p.run_args(&["-d", "--name", "mem", "-m", "64m"], &["sleep", "1000"]);
    p.ok(&args);
    let id = p.id("mem");
    let limit = cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(limit, (64 << 20).to_string());
    p.ok(&["rm", "--force", "--time", "0", "mem"]);
    p.assert_gone(&id);
}

#[test]
fn detached_container_through_every_verb() {
    let p = Podman::new();
    let args = p.run_args(
        &["-d", "--name", "box"],
        &[
            "sh",
            "-c",
            "echo started; trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ],
    );
    p.ok(&args);
    let id = p.id("box");
    assert_eq!(p.ok(&["exec", "box", "echo", "exec-ok"]), "exec-ok\n");
    // exec -t gets a pty of the container's devpts.
    assert!(p.ok(&["exec", "-t", "box", "tty"]).starts_with("/dev/pts/"));
    let out = p.run(&["exec", "box", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(p.ok(&["logs", "box"]), "started\n");
    p.ok(&["pause", "box"]);
    let status = |p: &Podman| p.ok(&["inspect", "--format", "{{.State.Status}}", "box"]);
    assert_eq!(status(&p).trim(), "paused");
    p.ok(&["unpause", "box"]);
    assert_eq!(status(&p).trim(), "running");
    let top = p.ok(&["top", "box"]);
    assert!(top.contains("sleep") || top.contains("sh -c"), "{top}");
    p.ok(&["stop", "--time", "5", "box"]);
    assert_eq!(status(&p).trim(), "exited");
    let code = p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "box"]);
    assert_eq!(code.trim(), "0", "the TERM trap ran");
    p.ok(&["rm", "box"]);
    p.assert_gone(&id);
}

#[test]
fn security_and_resource_options() {
    let p = Podman::new();
    // --init: podman's catatonit is pid 1 and reaps.
    let args = p.run_args(&["--rm", "--init"], &["cat", "/proc/1/cmdline"]);
    let init = p.ok(&args);
    assert!(init.contains("init"), "{init:?}");
    // --read-only root.
    let args = p.run_args(
        &["--rm", "--read-only"],
        &["sh", "-c", "touch /x 2>/dev/null || echo read-only"],
    );
    assert_eq!(p.ok(&args), "read-only\n");
    // --cap-drop: CAP_NET_RAW (13) gone from the effective set, CAP_CHOWN (0) kept.
    let args = p.run_args(
        &["--rm", "--cap-drop", "NET_RAW"],
        &["sh", "-c", "grep CapEff /proc/self/status"],
    );
    let eff = p.ok(&args);
    let mask = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!((mask >> 13 & 1, mask & 1), (0, 1), "{eff}");
    // --pids-limit.
    let args = p.run_args(
        &["-d", "--name", "pids", "--pids-limit", "10"],
        &["sleep", "1000"],
    );
    p.ok(&args);
    let id = p.id("pids");
    assert_eq!(cgroup_value(&id, "pids", "pids.max", "pids.max"), "10");
    p.ok(&["rm", "--force", "--time", "0", "pids"]);
    p.assert_gone(&id);
}

/// A seccomp allowlist recorded from an application (`recorded_allowlist`), which podman
/// passes without no_new_privileges.
#[test]
fn seccomp_allowlist_file() {
    let p = Podman::new();
    let profile = common::bundle::recorded_allowlist();
    let file = p.dir.join("allowlist.json");
    std::fs::write(&file, profile.to_string()).unwrap();
    let opt = format!("seccomp={}", file.display());
    let args = p.run_args(
        &["--rm", "--security-opt", &opt],
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; mkdir /tmp/d && echo ok",
        ],
    );
    assert_eq!(p.ok(&args), "Seccomp:\t2\nok\n");
}

#[test]
fn healthcheck_runs_through_exec() {
    let p = Podman::new();
    let args = p.run_args(
        &[
            "-d",
            "--name",
            "hc",
            "--health-cmd",
            "test -e /tmp/healthy",
            "--health-interval",
            "disable",
        ],
        &["sleep", "1000"],
    );
    p.ok(&args);
    let id = p.id("hc");
    let out = p.run(&["healthcheck", "run", "hc"]);
    assert!(
        !out.status.success(),
        "unhealthy expected: {}",
        describe(&out)
    );
    p.ok(&["exec", "hc", "touch", "/tmp/healthy"]);
    let out = p.run(&["healthcheck", "run", "hc"]);
    assert!(out.status.success(), "{}", describe(&out));
    p.ok(&["rm", "--force", "--time", "0", "hc"]);
    p.assert_gone(&id);
}
