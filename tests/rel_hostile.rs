//! Hostile input (issue 6): malformed and oversized config.json, garbage and lying ttrpc frames
//! sent raw to a running shim, unknown and duplicate ids, ids that are paths, a rootfs that is
//! a symlink, mount destinations that climb out of the rootfs, absurd resource values, invalid
//! seccomp profiles and stdio paths that are not fifos. Each must be refused by name (or, where
//! runc clamps, run bounded), create nothing outside the bundle and state root, leak nothing,
//! and leave the shim serving the next good request.
//!
//! Already covered elsewhere (not repeated here): bad JSON syntax, missing rootfs/args, bad
//! namespaces, `a/b`/`..`/empty ids and a duplicate id at core level
//! (core_lifecycle::bad_input_is_named_and_leaves_nothing); bad mount types/options/sources
//! (core_rootfs::bad_mounts_fail_cleanly); symlinked mount destinations to a host dir and
//! above `/` (core_rootfs::symlinked_destination_stays_inside_rootfs); unknown seccomp action,
//! op, arg index 9, SCMP_ACT_NOTIFY (core_security::bad_seccomp_profiles_are_refused);
//! duplicate container and exec ids at the shim (shim/tests/task_api.rs).
//!
//! Sizes: `PELAGOS_LONG=1` uses the issue's 50 MiB config and 100 MB string. CI uses 16 MiB
//! and 16 MB: parsing is linear, so a shim that keeps several copies, or that allocates what a
//! length claims, still shows on its peak RSS, while the debug-build parse stays a few seconds.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::bundle::{cgroup_exists, mounts_under, unique_id, Bundle, Pipes, TestRoot};
use common::containerd::{dir_entries, Containerd};
use common::ttrpc_raw::{
    header, request_body, shim_pid, socket_of_bundle, Pb, RawConn, Reply, INVALID_ARGUMENT,
    MAX_MESSAGE, MSG_REQUEST, NOT_FOUND, TASK_SERVICE,
};
use serde_json::json;

/// A Wait or Delete of containerd's runs on a thread of its own while it is pending
/// (shim/src/server.rs); how many are still finishing depends on how the RPCs of an exec
/// overlapped, so a thread count compared across execs may differ by this much without
/// anything leaking (a leak of the flooded connections would be hundreds).
const WORKER_SLACK: u64 = 2;

fn long() -> bool {
    std::env::var("PELAGOS_LONG").is_ok_and(|v| v == "1")
}

/// Where the pelagos shim keeps the state of namespace `ns`.
fn shim_state_root(ns: &str) -> PathBuf {
    Path::new("/run/pelagos").join(ns)
}

/// Nothing of a refused core create remains: no state entry, no cgroup, no mount in the
/// bundle or state root.
fn assert_core_clean(root: &TestRoot, bundle: &Bundle, what: &str) {
    assert_eq!(
        dir_entries(root.root()),
        Vec::<String>::new(),
        "{what}: state left in {}",
        root.root().display()
    );
    let cg = bundle.cgroup_path().unwrap();
    assert!(!cgroup_exists(&cg), "{what}: cgroup {cg} left behind");
    assert_eq!(mounts_under(bundle.path()), Vec::<String>::new(), "{what}");
    assert_eq!(mounts_under(root.root()), Vec::<String>::new(), "{what}");
}

/// Creates a container from `b` under id `id`; the error text (panics if it was accepted).
fn create_err(root: &TestRoot, id: &str, b: &Bundle, what: &str) -> String {
    let (stdio, _pipes) = Pipes::new();
    match root.create_id(id, b, stdio) {
        Ok(c) => {
            let _ = c.delete(true);
            panic!("{what}: create of {id:?} was accepted")
        }
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Core level
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_config_json_is_refused_by_name() {
    let root = TestRoot::new();
    let full = serde_json::to_vec_pretty(&Bundle::new().config().clone()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "empty file",
            Vec::new(),
            "config.json: invalid config at line 1",
        ),
        (
            "not json",
            b"\x00\xffELF binary".to_vec(),
            "config.json: invalid config",
        ),
        (
            "a json array",
            b"[1, 2, 3]".to_vec(),
            "config.json: invalid config",
        ),
        (
            "truncated",
            full[..full.len() / 2].to_vec(),
            "config.json: invalid config at line",
        ),
        (
            "args is a number",
            Bundle::new()
                .edit(|c| c["process"]["args"] = json!(42))
                .config()
                .to_string()
                .into_bytes(),
            "invalid type: integer `42`",
        ),
        (
            "uid is negative",
            Bundle::new()
                .edit(|c| c["process"]["user"]["uid"] = json!(-1))
                .config()
                .to_string()
                .into_bytes(),
            "invalid value: integer `-1`",
        ),
        (
            "mounts is an object",
            Bundle::new()
                .edit(|c| c["mounts"] = json!({"destination": "/x"}))
                .config()
                .to_string()
                .into_bytes(),
            "invalid type: map",
        ),
        (
            "process is null",
            Bundle::new()
                .edit(|c| c["process"] = json!(null))
                .config()
                .to_string()
                .into_bytes(),
            "process is missing",
        ),
        (
            "env entry is not a string",
            Bundle::new()
                .edit(|c| c["process"]["env"] = json!(["A=1", {"B": 2}]))
                .config()
                .to_string()
                .into_bytes(),
            "invalid type: map",
        ),
    ];
    for (what, bytes, want) in cases {
        let b = Bundle::new();
        b.write_raw_config(&bytes);
        let err = create_err(&root, &unique_id("badcfg"), &b, what);
        assert!(err.contains(want), "{what}: got {err:?}, want {want:?}");
        assert_core_clean(&root, &b, what);
    }
}

#[test]
fn ids_that_are_paths_or_odd_bytes_are_refused_at_core() {
    let root = TestRoot::new();
    let b = Bundle::new().args(&["true"]);
    let outside = std::env::temp_dir().join(unique_id("pelagos-id-escape"));
    let escape = format!("../../../..{}", outside.display());
    let long = "a".repeat(1024);
    let ids = [
        "/abs",
        "a/../b",
        escape.as_str(),
        "nul\0byte",
        "new\nline",
        "tab\tid",
        " ",
        "x y",
        "ümlaut",
        long.as_str(),
    ];
    for id in ids {
        let err = create_err(&root, id, &b, "bad id");
        assert!(
            err.starts_with(&format!("invalid container id {id:?}")),
            "{id:?}: {err}"
        );
        assert_core_clean(&root, &b, id);
    }
    assert!(!outside.exists(), "{} was created", outside.display());
    // The refusals did not disturb the next good create.
    assert_eq!(root.run(&b).code, 0);
}

#[test]
fn a_rootfs_symlink_out_of_the_bundle_is_refused_like_runc() {
    // runc 1.1 validate.rootfs: "invalid rootfs: not an absolute path, or a symlink". A
    // symlinked root.path would otherwise let a bundle name any host directory, even `/`, as
    // the container's root, and mount points would then be created on the host.
    let root = TestRoot::new();
    let target = std::env::temp_dir().join(unique_id("pelagos-rootfs-target"));
    std::fs::create_dir_all(target.join("bin")).unwrap();
    let cases: Vec<(&str, PathBuf)> =
        vec![("/", PathBuf::from("/")), ("a host dir", target.clone())];
    for (what, dest) in cases {
        let b = Bundle::new().args(&["true"]);
        std::fs::remove_dir_all(b.rootfs()).unwrap();
        std::os::unix::fs::symlink(&dest, b.rootfs()).unwrap();
        let before = dir_entries(&dest);
        let err = create_err(&root, &unique_id("symroot"), &b, what);
        assert!(
            err.contains("root.path rootfs") && err.contains("symlink"),
            "{what}: {err}"
        );
        assert_eq!(
            dir_entries(&dest),
            before,
            "{what}: created in {}",
            dest.display()
        );
        assert_core_clean(&root, &b, what);
    }
    let _ = std::fs::remove_dir_all(&target);
}

#[test]
fn mount_destinations_stay_in_the_rootfs() {
    // `..` in a destination, and /dev and /proc that are symlinks to host paths: the mounts
    // land inside the rootfs, as if the destination were resolved after chroot.
    let outside = std::env::temp_dir().join(unique_id("pelagos-hostdir"));
    std::fs::create_dir_all(&outside).unwrap();
    let b = Bundle::new()
        .mount(
            json!({"destination": "/../../../../tmp/dotdot", "type": "tmpfs",
                      "source": "tmpfs"}),
        )
        .mount(json!({"destination": "/a/../../b/./c", "type": "tmpfs", "source": "tmpfs"}));
    let rootfs = b.rootfs();
    std::fs::remove_dir(rootfs.join("dev")).unwrap();
    std::fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink(outside.join("dev"), rootfs.join("dev")).unwrap();
    std::os::unix::fs::symlink(outside.join("proc"), rootfs.join("proc")).unwrap();
    // The symlinks resolve inside the rootfs: /proc and /dev are mounted on
    // <rootfs>/<outside>/proc and /dev, reached through the links.
    let o = outside.display();
    let script = format!(
        "grep -E ' /tmp/dotdot | /b/c | {o}/proc | {o}/dev ' /proc/self/mountinfo \
         | cut -d' ' -f5; test -c /dev/null && test -r /proc/self/status && echo ok"
    );
    let b = b.args(&["sh", "-c", &script]);
    let root = TestRoot::new();
    let out = root.run(&b);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort();
    let (dev, proc) = (format!("{o}/dev"), format!("{o}/proc"));
    let mut want = vec!["/b/c", "/tmp/dotdot", &dev, &proc, "ok"];
    want.sort();
    assert_eq!(got, want, "{}", out.stderr);
    assert_eq!(
        dir_entries(&outside),
        Vec::<String>::new(),
        "a mount point was made in the host dir the rootfs links to"
    );
    assert!(
        !Path::new("/tmp/dotdot").exists(),
        "/tmp/dotdot made on the host"
    );
    assert!(rootfs.join("tmp/dotdot").is_dir() && rootfs.join("b/c").is_dir());
    assert_eq!(mounts_under(&outside), Vec::<String>::new());
    assert_eq!(mounts_under(b.path()), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&outside);
}

#[test]
fn absurd_resource_values_are_named_or_clamped() {
    let root = TestRoot::new();
    // (what, linux.resources, Err(needle) or Ok(()) when runc accepts it too).
    let refused: Vec<(&str, serde_json::Value, &str)> = vec![
        ("memory 1 byte", json!({"memory": {"limit": 1}}), "memory"),
        (
            "cpuset out of range",
            json!({"cpu": {"cpus": "999-1000"}}),
            "cpus",
        ),
        ("cpuset garbage", json!({"cpu": {"cpus": "0-"}}), "cpus"),
        (
            "blkio weight 5000",
            json!({"blockIO": {"weight": 5000}}),
            "weight",
        ),
        (
            "cpu quota without period",
            json!({"cpu": {"quota": -5, "period": 1}}),
            "cpu",
        ),
    ];
    for (what, res, needle) in refused {
        let b = Bundle::new().args(&["true"]).resources(res);
        let err = create_err(&root, &unique_id("res"), &b, what);
        assert!(
            err.to_lowercase().contains(needle),
            "{what}: error does not name {needle:?}: {err}"
        );
        assert_core_clean(&root, &b, what);
    }
    // What runc takes: -1 is "unlimited", a huge limit or share count is written as given (the
    // kernel clamps shares), pids -5 means no limit.
    let accepted: Vec<(&str, serde_json::Value)> = vec![
        ("memory -1", json!({"memory": {"limit": -1}})),
        ("memory i64::MAX", json!({"memory": {"limit": i64::MAX}})),
        ("cpu shares 0", json!({"cpu": {"shares": 0}})),
        ("cpu shares u64::MAX", json!({"cpu": {"shares": u64::MAX}})),
        ("pids -5", json!({"pids": {"limit": -5}})),
    ];
    for (what, res) in accepted {
        let b = Bundle::new().args(&["true"]).resources(res);
        let (stdio, pipes) = Pipes::new();
        let id = unique_id("res");
        match root.create_id(&id, &b, stdio) {
            Ok(mut c) => {
                c.start().unwrap();
                let (_, stderr) = pipes.collect();
                assert_eq!(c.wait().unwrap().status, 0, "{what}: {stderr}");
                c.delete(false).unwrap();
            }
            Err(e) => {
                let err = e.to_string();
                assert!(
                    ["memory", "shares", "cpu", "pids"]
                        .iter()
                        .any(|f| err.to_lowercase().contains(f)),
                    "{what}: refused without naming the field: {err}"
                );
            }
        }
        assert_core_clean(&root, &b, what);
    }
}

#[test]
fn more_bad_seccomp_profiles_are_refused_by_name() {
    let root = TestRoot::new();
    let rule = |r: serde_json::Value| json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [r]});
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}),
            "SCMP_ARCH_PDP11",
        ),
        (
            rule(json!({"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 4294967295u64, "value": 1, "op": "SCMP_CMP_EQ"}]})),
            "4294967295",
        ),
        (
            rule(json!({"names": ["read"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_BOGUS"}]})),
            "SCMP_CMP_BOGUS",
        ),
        (
            rule(json!({"names": ["read"], "action": "SCMP_ACT_TELEPATHY"})),
            "SCMP_ACT_TELEPATHY",
        ),
    ];
    for (profile, needle) in cases {
        let b = Bundle::new()
            .args(&["true"])
            .edit(|c| c["linux"]["seccomp"] = profile.clone());
        let err = create_err(&root, &unique_id("seccomp"), &b, needle);
        assert!(
            err.contains(needle),
            "{profile}: does not name {needle:?}: {err}"
        );
        assert_core_clean(&root, &b, needle);
    }
    // An unknown syscall name is skipped, as runc does (profiles list the syscalls of every
    // kernel and arch): the container runs with the rest of the profile.
    let b = Bundle::new().args(&["true"]).edit(|c| {
        c["linux"]["seccomp"] =
            rule(json!({"names": ["no_such_syscall_xyz", "mkdir"], "action": "SCMP_ACT_ERRNO"}))
    });
    assert_eq!(root.run(&b).code, 0);
    assert_core_clean(&root, &b, "unknown syscall");
}

// ---------------------------------------------------------------------------------------------
// The shim, over its ttrpc socket
// ---------------------------------------------------------------------------------------------

/// A containerd with one running container, the socket of its shim and the shim's pid.
struct Victim {
    cd: Containerd,
    sock: PathBuf,
    pid: u32,
}

const VICTIM: &str = "victim";

impl Victim {
    fn start() -> Victim {
        let cd = Containerd::start();
        cd.run_detached(VICTIM, &[], &["sleep", "1000"]);
        let sock = socket_of_bundle(&cd.bundle_dir(VICTIM));
        let pid = shim_pid(&sock).expect("the shim answers Connect");
        Victim { cd, sock, pid }
    }

    fn conn(&self) -> RawConn {
        RawConn::connect(&self.sock).expect("connect to the shim socket")
    }

    /// The shim is the same process, answers Connect on a new connection, logged no panic, and
    /// containerd can still exec into the victim.
    fn assert_serving(&self, after: &str) {
        assert_eq!(
            shim_pid(&self.sock),
            Some(self.pid),
            "the shim stopped serving after {after}\n{}",
            self.cd.log_tail(30)
        );
        let log = std::fs::read_to_string(self.cd.log_path()).unwrap_or_default();
        assert!(
            !log.contains("panic"),
            "the shim panicked after {after}:\n{}",
            self.cd.log_tail(30)
        );
    }

    fn assert_exec_works(&self) {
        let out = self
            .cd
            .exec(VICTIM, &unique_id("e"), &[], &["echo", "still here"]);
        assert_eq!(
            common::containerd::stdout(&out),
            "still here\n",
            "{}",
            common::containerd::describe(&out)
        );
    }

    /// The shim's soft RLIMIT_NOFILE.
    fn shim_nofile(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/limits", self.pid))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
            .expect("Max open files in /proc/<shim>/limits")
    }

    /// How many fds the shim has open.
    fn shim_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// The shim's fd count and thread count plus [`WORKER_SLACK`]: what it must come back
    /// under once a test's connections are closed.
    fn baseline(&self) -> (usize, u64) {
        (
            self.shim_fds(),
            self.shim_status_kib("Threads") + WORKER_SLACK,
        )
    }

    /// Waits (at most `within`: a closed connection's threads take a moment to see the
    /// hang-up) until the shim holds no more fds and threads than `baseline`.
    fn assert_back_to(&self, (fds, threads): (usize, u64), within: Duration, after: &str) {
        let deadline = std::time::Instant::now() + within;
        let (f, t) = loop {
            let (f, t) = (self.shim_fds(), self.shim_status_kib("Threads"));
            if (f <= fds && t <= threads) || std::time::Instant::now() >= deadline {
                break (f, t);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            f <= fds && t <= threads,
            "after {after} the shim holds {f} fds ({fds} before) and {t} threads (at most \
             {threads} allowed: before + slack)"
        );
    }

    /// Peak resident memory of the shim, in KiB.
    fn shim_hwm_kib(&self) -> u64 {
        self.shim_status_kib("VmHWM")
    }

    /// The number of a `<field>: N [kB]` line of the shim's /proc status.
    fn shim_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<shim>/status"))
    }

    fn finish(self) {
        self.cd.remove(VICTIM);
        self.cd.assert_no_leaks();
    }
}

#[test]
fn garbage_frames_leave_the_shim_serving() {
    let v = Victim::start();
    let before_hwm = v.shim_hwm_kib();
    let before = v.baseline();

    // A header, then the connection closes before the body.
    let mut c = v.conn();
    c.send(&header(100, 1, MSG_REQUEST, 0)).unwrap();
    drop(c);
    v.assert_serving("a header without its body");

    // Half a header.
    let mut c = v.conn();
    c.send(&[0, 0, 0]).unwrap();
    drop(c);
    v.assert_serving("half a header");

    // Lengths far beyond ttrpc's 4 MiB: the shim must not allocate what they claim. It
    // answers with an error (or drops the connection); either way it lives.
    for (what, len) in [
        ("length 0xFFFFFFFF", u32::MAX),
        ("length 4 MiB + 1", MAX_MESSAGE + 1),
    ] {
        let mut c = v.conn();
        c.send(&header(len, 1, MSG_REQUEST, 0)).unwrap();
        c.send(&[0xAB; 4096]).unwrap();
        drop(c);
        v.assert_serving(what);
    }
    // A 4 MiB + 1 body really sent: the server reads past it and answers.
    let mut c = v.conn();
    let mut frame = header(MAX_MESSAGE + 1, 1, MSG_REQUEST, 0);
    frame.resize(frame.len() + MAX_MESSAGE as usize + 1, 0);
    if c.send(&frame).is_ok() {
        if let Some(r) = c.read_reply(1) {
            assert_ne!(r.code(), 0, "an oversized request got OK");
        }
    }
    drop(c);
    v.assert_serving("a 4 MiB + 1 body");

    // Garbage where the protobuf Request goes; a request with an unknown type byte; unknown
    // services and methods; a valid Create whose payload is garbage.
    let mut c = v.conn();
    let replies = [
        ("garbage protobuf", c.call_body(&[0xFF; 64])),
        (
            "unknown service",
            c.call_body(&request_body("no.such.Service", "Create", &[])),
        ),
        (
            "unknown method",
            c.call_body(&request_body(TASK_SERVICE, "Frobnicate", &[])),
        ),
        (
            "Create with garbage",
            c.call("Create", &[0x0A, 0xFF, 0xFF, 0xFF]),
        ),
        ("State with garbage", c.call("State", &[0xFF; 32])),
    ];
    // Each gets an error answer (like Go's ttrpc), on the same connection, and the connection
    // still serves a good call after them.
    for (what, reply) in replies {
        let r = reply.unwrap_or_else(|| panic!("{what}: no answer, the connection was dropped"));
        assert_eq!(r.code(), INVALID_ARGUMENT, "{what}: {r:?}");
        v.assert_serving(what);
    }
    let r = c
        .call("Connect", &[])
        .expect("Connect after garbage on the same connection");
    assert_eq!(r.code(), 0, "{r:?}");
    drop(c);

    // A frame of an unknown type, and a request on stream 0, then a good call on the same
    // connection if it is still open.
    let mut c = v.conn();
    let body = request_body(TASK_SERVICE, "Connect", &[]);
    let mut frame = header(body.len() as u32, 1, 0x7F, 0xFF);
    frame.extend_from_slice(&body);
    let _ = c.send(&frame);
    let mut frame = header(body.len() as u32, 0, MSG_REQUEST, 0);
    frame.extend_from_slice(&body);
    let _ = c.send(&frame);
    drop(c);
    v.assert_serving("an unknown frame type and stream 0");

    // A client that sends half a request and stalls must not block others.
    let mut stalled = v.conn();
    stalled.send(&header(200, 1, MSG_REQUEST, 0)).unwrap();
    stalled.send(&[0x0A; 20]).unwrap();
    v.assert_serving("a stalled client (it is still connected)");
    v.assert_exec_works();
    drop(stalled);

    // Every connection is closed: the shim holds no more fds or threads than before.
    v.assert_back_to(before, Duration::from_secs(20), "the garbage");

    // Nothing claimed was allocated: the lying lengths add up to > 4 GiB.
    let grown = v.shim_hwm_kib().saturating_sub(before_hwm);
    assert!(
        grown < 64 * 1024,
        "the shim's peak RSS grew by {grown} KiB on garbage"
    );
    v.finish();
}

#[test]
fn an_idle_connection_flood_does_not_deafen_the_shim() {
    // CI: 300 connections (300 shim threads: one per connection, shim/src/server.rs);
    // PELAGOS_LONG: 1000. Either stays below the shim's fd
    // limit, so the shim must keep accepting meanwhile.
    let v = Victim::start();
    let limit = v.shim_nofile();
    let n = if long() { 1000 } else { 300 }.min(limit.saturating_sub(64));
    let before = v.baseline();
    let mut idle: Vec<RawConn> = (0..n).map(|_| v.conn()).collect();
    // Half of them also start a request and stall in the middle of it.
    for c in idle.iter_mut().step_by(2) {
        c.send(&header(64, 1, MSG_REQUEST, 0)).unwrap();
    }
    v.assert_serving(&format!("{n} idle connections"));
    v.assert_exec_works();
    drop(idle);
    v.assert_back_to(
        before,
        Duration::from_secs(30),
        &format!("{n} connections closed"),
    );
    v.assert_serving("the flood ended");
    v.finish();
}

/// The payload of a CreateTaskRequest.
fn create_req(id: &str, bundle: &Path, stdout: &str) -> Vec<u8> {
    Pb::new()
        .str(1, id)
        .str(2, &bundle.display().to_string())
        .str(6, stdout)
        .0
}

#[test]
fn raw_create_with_bad_ids_or_stdio_creates_nothing() {
    let v = Victim::start();
    let state = shim_state_root(&v.cd.namespace);
    let before = dir_entries(&state);
    let b = Bundle::new().args(&["echo", "hi"]);
    let outside = std::env::temp_dir().join(unique_id("pelagos-shim-escape"));
    let escape = format!("../../../..{}", outside.display());
    let long = "x".repeat(1024);
    let ids = [
        "",
        ".",
        "..",
        "a/b",
        "/abs",
        escape.as_str(),
        "nul\0id",
        "new\nline",
        long.as_str(),
    ];
    let mut c = v.conn();
    // Each request also asks for a rootfs mount and a file:// stdout: the id is checked before
    // either is touched.
    let probe = std::env::temp_dir().join(unique_id("pelagos-stdout-probe"));
    for id in ids {
        let mut req = create_req(id, b.path(), &format!("file://{}", probe.display()));
        req.extend(
            Pb::new()
                .bytes(3, &Pb::new().str(1, "tmpfs").str(2, "tmpfs").0)
                .0,
        );
        let r = c.call("Create", &req).expect("a reply");
        assert_eq!(r.code(), INVALID_ARGUMENT, "{id:?}: {r:?}");
        assert!(
            r.message().contains("container id"),
            "{id:?}: the error does not name the id: {}",
            r.message()
        );
        assert_eq!(dir_entries(&state), before, "{id:?} left state");
        assert!(!probe.exists(), "{id:?}: stdout was opened");
        assert_eq!(mounts_under(b.path()), Vec::<String>::new(), "{id:?}");
        v.assert_serving(&format!("Create of id {id:?}"));
    }
    assert!(!outside.exists(), "{} was created", outside.display());
    assert!(!Path::new("/run/pelagos/a").exists());

    // stdout that is missing, a regular file, a directory: named, and nothing left (the id is
    // free again for a good create afterwards).
    let file = std::env::temp_dir().join(unique_id("pelagos-stdout-file"));
    std::fs::write(&file, b"").unwrap();
    let dir = std::env::temp_dir().join(unique_id("pelagos-stdout-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = format!("/no/such/dir/{}", unique_id("stdout"));
    let id = unique_id("badio");
    for (what, path) in [
        ("missing", missing.clone()),
        ("regular file", file.display().to_string()),
        ("directory", dir.display().to_string()),
    ] {
        let r = c
            .call("Create", &create_req(&id, b.path(), &path))
            .expect("a reply");
        assert_ne!(r.code(), 0, "stdout {what} accepted");
        assert!(
            r.message().contains("stdout") && r.message().contains(&path),
            "stdout {what}: {}",
            r.message()
        );
        assert_eq!(dir_entries(&state), before, "stdout {what} left state");
        assert!(!cgroup_exists(&b.cgroup_path().unwrap()), "stdout {what}");
        assert_eq!(mounts_under(b.path()), Vec::<String>::new());
        v.assert_serving(&format!("stdout {what}"));
    }
    assert!(!Path::new(&missing).exists());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"",
        "the regular file was written"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&dir);

    // The same id with no stdio now works, and is deleted again through the raw API.
    let r = c
        .call("Create", &create_req(&id, b.path(), ""))
        .expect("a reply");
    r.ok();
    let r = c.call("Delete", &Pb::new().str(1, &id).0).expect("a reply");
    r.ok();
    assert_eq!(dir_entries(&state), before);
    assert!(!cgroup_exists(&b.cgroup_path().unwrap()));
    drop(c);
    v.assert_exec_works();
    v.finish();
}

#[test]
fn hostile_exec_specs_are_refused_by_name() {
    let v = Victim::start();
    let mut c = v.conn();
    let exec = |exec_id: &str, spec: Option<&[u8]>| {
        let mut p = Pb::new().str(1, VICTIM).str(2, exec_id);
        if let Some(spec) = spec {
            let any = Pb::new()
                .str(
                    1,
                    "types.containerd.io/opencontainers/runtime-spec/1/Process",
                )
                .bytes(2, spec);
            p = p.bytes(7, &any.0);
        }
        p.0
    };
    // Refused at Exec: no spec, a spec that is not JSON, wrong types.
    for (what, spec, needle) in [
        ("no spec", None, "no process spec"),
        ("not json", Some(&b"\x00garbage"[..]), "process spec"),
        (
            "args a string",
            Some(&br#"{"args": "sh", "cwd": "/", "user": {"uid": 0, "gid": 0}}"#[..]),
            "invalid type",
        ),
    ] {
        let r = c.call("Exec", &exec("bad", spec)).expect("a reply");
        assert_eq!(r.code(), INVALID_ARGUMENT, "{what}: {r:?}");
        assert!(r.message().contains(needle), "{what}: {r:?}");
    }
    // Well-formed but unusable: accepted at Exec, refused at Start naming the field, and
    // deleted cleanly.
    for (what, spec, needle) in [
        (
            "empty args",
            &br#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#[..],
            "args",
        ),
        (
            "relative cwd",
            &br#"{"args": ["true"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}"#[..],
            "cwd",
        ),
        (
            "missing executable",
            &br#"{"args": ["/no/such/binary"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#[..],
            "/no/such/binary",
        ),
    ] {
        let id = unique_id("x");
        let r = c.call("Exec", &exec(&id, Some(spec))).expect("a reply");
        if r.code() == 0 {
            let r = c.call("Start", &Pb::new().str(1, VICTIM).str(2, &id).0);
            let r = r.expect("a reply to Start");
            assert_ne!(r.code(), 0, "{what}: started");
            assert!(r.message().contains(needle), "{what}: {r:?}");
            let r = c.call("Delete", &Pb::new().str(1, VICTIM).str(2, &id).0);
            r.expect("a reply to Delete").ok();
        } else {
            assert!(r.message().contains(needle), "{what}: {r:?}");
        }
    }
    drop(c);
    // Only the victim's own process is left in its cgroup.
    let pids = v.cd.ctr_ok(&["task", "ps", VICTIM]);
    assert_eq!(pids.lines().count(), 2, "processes left:\n{pids}");
    v.assert_serving("hostile exec specs");
    v.assert_exec_works();
    v.finish();
}

#[test]
fn unknown_and_duplicate_ids_get_the_codes_containerd_expects() {
    let v = Victim::start();
    let mut c = v.conn();
    let nope = Pb::new().str(1, VICTIM).str(2, "nope");
    for method in [
        "State",
        "Kill",
        "ResizePty",
        "CloseIO",
        "Delete",
        "Start",
        "Wait",
    ] {
        let payload = match method {
            "Kill" => nope.clone().uint(3, 9).0,
            "ResizePty" => nope.clone().uint(3, 80).uint(4, 24).0,
            _ => nope.0.clone(),
        };
        let r = c.call(method, &payload).expect("a reply");
        assert_eq!(r.code(), NOT_FOUND, "{method} of exec nope: {r:?}");
    }
    // The same on a container that does not exist.
    let r = c
        .call("State", &Pb::new().str(1, "nope").0)
        .expect("a reply");
    assert_eq!(r.code(), NOT_FOUND, "{r:?}");

    // A Create of the running container's id, straight at its shim: refused, the victim is
    // untouched.
    let b = Bundle::new().args(&["true"]);
    let r = c
        .call("Create", &create_req(VICTIM, b.path(), ""))
        .expect("a reply");
    assert_ne!(r.code(), 0);
    assert!(r.message().contains("already exists"), "{r:?}");
    assert!(!cgroup_exists(&b.cgroup_path().unwrap()));
    drop(c);
    assert_eq!(v.cd.task_status(VICTIM).as_deref(), Some("RUNNING"));

    // Through ctr: a second container and a second exec under ids in use.
    let out = v.cd.ctr(
        &v.cd
            .run_args(&["-d"], VICTIM, &[], &["true"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(
        common::containerd::describe(&out).contains("already exists"),
        "{}",
        common::containerd::describe(&out)
    );
    v.cd.exec_detached(VICTIM, "dup", &["sleep", "1000"]);
    let out = v.cd.exec(VICTIM, "dup", &[], &["true"]);
    assert!(!out.status.success());
    assert!(
        common::containerd::describe(&out).contains("already exists"),
        "{}",
        common::containerd::describe(&out)
    );
    v.cd.clear_fifo_dirs();
    assert_eq!(v.cd.task_status(VICTIM).as_deref(), Some("RUNNING"));
    v.assert_serving("duplicate ids");
    v.assert_exec_works();
    v.finish();
}

#[test]
fn oversized_config_is_bounded_in_the_shim() {
    let (env_bytes, string_bytes) = if long() {
        (50 << 20, 100_000_000)
    } else {
        (16 << 20, 16_000_000)
    };
    let v = Victim::start();
    let state = shim_state_root(&v.cd.namespace);
    let before = dir_entries(&state);
    let rss_before = v.shim_status_kib("VmRSS");
    let mut c = v.conn();

    // A huge env list (each entry small), then one huge string.
    let n = env_bytes / 32;
    let env: Vec<String> = (0..n)
        .map(|i| format!("VAR_{i:08}=0123456789abcdefghi"))
        .collect();
    let big_env = Bundle::new()
        .args(&["true"])
        .edit(|c| c["process"]["env"] = json!(env));
    drop(env);
    let big_string = Bundle::new()
        .args(&["true"])
        .edit(|c| c["process"]["env"] = json!([format!("BIG={}", "x".repeat(string_bytes))]));
    for (what, b) in [("huge env list", &big_env), ("huge string", &big_string)] {
        let size = std::fs::metadata(b.path().join("config.json"))
            .unwrap()
            .len();
        assert!(
            size as usize >= string_bytes.min(env_bytes),
            "{what}: {size} bytes"
        );
        let id = unique_id("big");
        let hwm = v.shim_hwm_kib();
        let r = c
            .call("Create", &create_req(&id, b.path(), ""))
            .expect("a reply");
        // The init waits before execve, so Create may succeed; execve then refuses more than
        // ARG_MAX of environment at Start: a clear error, not a hang.
        let failure = match r {
            Reply::Status(_, m) => m,
            Reply::Ok(_) => {
                let id_only = Pb::new().str(1, &id).0;
                let started = c.call("Start", &id_only).expect("a reply to Start");
                let _ = c.call("Kill", &Pb::new().str(1, &id).uint(3, 9).0);
                c.call("Wait", &id_only).expect("a reply to Wait");
                c.call("Delete", &id_only).expect("a reply to Delete").ok();
                match started {
                    Reply::Status(_, m) => m,
                    Reply::Ok(_) => panic!("{what}: the container started"),
                }
            }
        };
        // Or, past the helper protocol's 64 MiB frame (the spec travels twice in the plan),
        // refused at Create by size.
        assert!(
            failure.contains("argument list too long") || failure.contains("config.json too large"),
            "{what}: {failure}"
        );
        assert_eq!(dir_entries(&state), before, "{what} left state");
        assert!(!cgroup_exists(&b.cgroup_path().unwrap()), "{what}");
        let grown = v.shim_hwm_kib().saturating_sub(hwm) * 1024;
        assert!(
            grown < 16 * size,
            "{what}: the shim's peak RSS grew by {grown} bytes for a {size} byte config"
        );
        v.assert_serving(what);
    }
    // The memory is given back: after a small container's Create and Delete the idle shim is
    // about as large as before the big configs.
    let small = Bundle::new().args(&["true"]);
    let id = unique_id("small");
    c.call("Create", &create_req(&id, small.path(), ""))
        .expect("a reply")
        .ok();
    c.call("Delete", &Pb::new().str(1, &id).0)
        .expect("a reply")
        .ok();
    let rss = v.shim_status_kib("VmRSS");
    assert!(
        rss < rss_before + 32 * 1024,
        "the idle shim keeps {rss} KiB after big configs, {rss_before} KiB before"
    );
    drop(c);
    v.assert_exec_works();
    v.finish();
}

/// The shim's `delete` action run against a live shim (containerd 1.6 runs it every time it
/// closes a container's connection, also to a grouped shim that serves the pod on): the live
/// shim's socket stays and the shim serves on. The action tells a live shim from a dying one by
/// asking it for a `Connect`. The bundle here is a scratch dir holding only the victim's
/// `address`, so the action has no container of its own to clean.
#[test]
fn delete_action_leaves_a_live_shim_serving() {
    let v = Victim::start();
    let scratch = std::env::temp_dir().join(unique_id("delete-action"));
    std::fs::create_dir_all(&scratch).unwrap();
    let address = std::fs::read_to_string(v.cd.bundle_dir(VICTIM).join("address")).unwrap();
    std::fs::write(scratch.join("address"), &address).unwrap();
    let out = std::process::Command::new(common::containerd::shim_binary())
        .args(["-namespace", &v.cd.namespace, "-id", "no-such-container"])
        .args(["-bundle", &scratch.to_string_lossy(), "delete"])
        .current_dir(&scratch)
        .output()
        .expect("run the shim's delete action");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        out.status.success(),
        "delete action: {}",
        common::containerd::describe(&out)
    );
    assert!(
        v.sock.exists(),
        "the delete action removed a live shim's socket"
    );
    v.assert_serving("the delete action");
    v.assert_exec_works();
    v.finish();
}

/// A client that opens an exec's output fifos only after the process has ended (containerd's
/// ExecSync opens them in a goroutine, which a loaded node can run late) still reads the output
/// and its EOF. The shim closing its end first left such a client's open blocked for ever with
/// no writer to come: ExecSync, so kubelet's exec probes, hung (tests/rel_soak.rs found it,
/// about one run in two).
#[test]
fn late_client_of_an_exec_still_gets_its_output_and_eof() {
    let v = Victim::start();
    let dir = std::env::temp_dir().join(unique_id("late-client"));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, err) = (dir.join("out"), dir.join("err"));
    for p in [&out, &err] {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let mut c = v.conn();
    let spec = br#"{"args": ["sh", "-c", "echo out; echo err >&2"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}"#;
    let any = Pb::new()
        .str(
            1,
            "types.containerd.io/opencontainers/runtime-spec/1/Process",
        )
        .bytes(2, spec);
    let exec = Pb::new()
        .str(1, VICTIM)
        .str(2, "late")
        .str(5, out.to_str().unwrap())
        .str(6, err.to_str().unwrap())
        .bytes(7, &any.0);
    c.call("Exec", &exec.0).expect("a reply to Exec").ok();
    c.call("Start", &Pb::new().str(1, VICTIM).str(2, "late").0)
        .expect("a reply to Start")
        .ok();
    // Well past the process's end and the shim's 1 s progress limit for lingering output.
    std::thread::sleep(Duration::from_secs(2));
    for (path, want) in [(&out, "out\n"), (&err, "err\n")] {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(&p));
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        if got.is_err() {
            // Unblock the reader thread before failing.
            let _ = std::fs::OpenOptions::new().write(true).open(path);
        }
        let text = got
            .unwrap_or_else(|_| panic!("{} never reached EOF", path.display()))
            .expect("read the fifo");
        assert_eq!(text, want, "{}", path.display());
    }
    c.call("Delete", &Pb::new().str(1, VICTIM).str(2, "late").0)
        .expect("a reply to Delete")
        .ok();
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    v.finish();
}
