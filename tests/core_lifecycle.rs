//! Core lifecycle tests against the real kernel (root): create/start/wait, stdio, exec, kill,
//! state transitions, namespaces, and bad input leaving nothing behind.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard};

use common::bundle::{exec_process, unique_id, Bundle, Pipes, TestRoot};
use pelagos::{reaper, Container, CreateOptions, Status, Stdio};
use serde_json::json;

/// Tests that check "no process was left" take this exclusively: every other test holds it
/// shared while it has containers alive.
static PROCS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    PROCS.read().unwrap_or_else(|e| e.into_inner())
}

fn readlink(p: impl AsRef<Path>) -> String {
    std::fs::read_link(p)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs `args` in `c` and returns (exit code, stdout, stderr).
fn exec(c: &Container, args: &[&str]) -> (i32, String, String) {
    let (stdio, pipes) = Pipes::new();
    let p = c.exec(&exec_process(args), stdio).expect("exec");
    let (out, err) = pipes.collect();
    let code = reaper::wait(p.pid, None)
        .expect("reap exec'd process")
        .status;
    (code, out, err)
}

fn start_sleeper(root: &TestRoot, b: &Bundle) -> Container {
    let mut c = root.create(b, Stdio::Null).expect("create");
    c.start().expect("start");
    c
}

fn kill_and_delete(c: Container) {
    c.kill(libc::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap().status, 128 + libc::SIGKILL);
    c.delete(false).unwrap();
}

#[test]
fn echo_hi() {
    let _g = shared();
    let root = TestRoot::new();
    let out = root.run(&Bundle::new().args(&["echo", "hi"]));
    assert_eq!(out.stdout, "hi\n", "stderr: {}", out.stderr);
    assert_eq!(out.code, 0);
}

#[test]
fn exit_code_and_separate_streams() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let out = root.run(&b);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
}

#[test]
fn env_cwd_and_missing_cwd_is_created() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new()
        .readonly_root(false)
        .env(&["GREETING=hello there"])
        .cwd("/work/dir")
        .args(&["sh", "-c", "echo \"$GREETING\"; pwd"]);
    let out = root.run(&b);
    assert_eq!(
        out.stdout, "hello there\n/work/dir\n",
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn hostname_is_set_in_the_uts_namespace() {
    let _g = shared();
    let root = TestRoot::new();
    let out = root.run(&Bundle::new().hostname("box-1").args(&["hostname"]));
    assert_eq!(out.stdout, "box-1\n", "stderr: {}", out.stderr);
    let host = nix::unistd::gethostname().unwrap();
    assert_ne!(host.to_str().unwrap(), "box-1");
}

#[test]
fn init_is_pid_1_and_a_direct_child() {
    let _g = shared();
    let root = TestRoot::new();
    let (stdio, pipes) = Pipes::new();
    let b = Bundle::new().args(&["sh", "-c", "echo $$"]);
    let mut c = root.create(&b, stdio).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let ppid = status.lines().find(|l| l.starts_with("PPid:")).unwrap();
    assert_eq!(
        ppid.split_whitespace().nth(1).unwrap(),
        std::process::id().to_string()
    );
    c.start().unwrap();
    let (out, _) = pipes.collect();
    assert_eq!(out, "1\n");
    assert_eq!(c.wait().unwrap().status, 0);
    c.delete(false).unwrap();
}

#[test]
fn no_fds_of_the_caller_leak_into_the_container() {
    let _g = shared();
    // An fd without close-on-exec, as a careless library in the shim could leave.
    // SAFETY: plain open of /dev/null; the fd is owned and closed below.
    let raw = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert!(raw > 2);
    // SAFETY: we just opened it.
    let leaky = unsafe { OwnedFd::from_raw_fd(raw) };
    let root = TestRoot::new();
    let out = root.run(&Bundle::new().args(&["ls", "/proc/self/fd"]));
    // 3 is ls's own handle on /proc/self/fd.
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    drop(leaky);
}

#[test]
fn preserved_fds_become_3_and_up() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sh", "-c", "echo via-fd3 >&3; ls /proc/self/fd"]);
    let (mut r, w) = std::io::pipe().unwrap();
    let (stdio, pipes) = Pipes::new();
    let mut c = Container::create(
        &root.config,
        CreateOptions {
            id: unique_id("preserve"),
            bundle: b.path().to_path_buf(),
            stdio,
            no_pivot: false,
            preserve_fds: vec![OwnedFd::from(w)],
        },
    )
    .unwrap();
    c.start().unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "via-fd3\n");
    let (out, _) = pipes.collect();
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"]
    );
    assert_eq!(c.wait().unwrap().status, 0);
    c.delete(false).unwrap();
}

#[test]
fn state_transitions_and_load_from_another_handle() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let id = unique_id("states");
    let mut c = root.create_id(&id, &b, Stdio::Null).unwrap();
    let dir = root.root().join(&id);
    assert!(dir.join("state.json").is_file());
    let st = c.state();
    assert_eq!((st.status, st.id.as_str()), (Status::Created, id.as_str()));
    assert_eq!(st.bundle, std::fs::canonicalize(b.path()).unwrap());
    let other = Container::load(&root.config, &id).unwrap();
    assert_eq!(
        (other.state().status, other.pid()),
        (Status::Created, c.pid())
    );

    c.start().unwrap();
    assert_eq!(c.state().status, Status::Running);
    assert_eq!(
        Container::load(&root.config, &id).unwrap().state().status,
        Status::Running
    );
    assert!(c.start().is_err(), "a running container cannot start again");

    c.pause().unwrap();
    assert_eq!(c.state().status, Status::Paused);
    assert_eq!(
        Container::load(&root.config, &id).unwrap().state().status,
        Status::Paused
    );
    c.resume().unwrap();
    assert_eq!(c.state().status, Status::Running);

    let err = Container::load(&root.config, &id)
        .unwrap()
        .delete(false)
        .unwrap_err();
    assert!(err.to_string().contains("is running"), "{err}");
    assert!(dir.exists());

    c.kill(libc::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap().status, 137);
    assert_eq!(c.state().status, Status::Stopped);
    assert_eq!(other.state().status, Status::Stopped);
    let err = c.kill(libc::SIGTERM, false).unwrap_err();
    assert!(err.to_string().contains("is not running"), "{err}");
    let cgroup_dirs: Vec<_> = c
        .cgroup()
        .unwrap()
        .dirs()
        .iter()
        .map(|d| d.to_path_buf())
        .collect();
    assert!(!cgroup_dirs.is_empty() && cgroup_dirs.iter().all(|d| d.is_dir()));
    c.delete(false).unwrap();
    assert!(!dir.exists());
    assert!(
        cgroup_dirs.iter().all(|d| !d.exists()),
        "cgroup left: {cgroup_dirs:?}"
    );
    let err = Container::load(&root.config, &id).unwrap_err();
    assert_eq!(err.to_string(), format!("container {id} does not exist"));
}

#[test]
fn force_delete_kills_a_running_container_loaded_elsewhere() {
    let _g = shared();
    let root = TestRoot::new();
    let id = unique_id("force");
    let b = Bundle::new().args(&["sleep", "100"]);
    let mut c = root.create_id(&id, &b, Stdio::Null).unwrap();
    c.start().unwrap();
    let pid = c.pid();
    Container::load(&root.config, &id)
        .unwrap()
        .delete(true)
        .unwrap();
    // The loaded handle is in this process too, so it reaped the init it killed.
    assert!(
        pelagos::test_support::proc_stat(pid).is_none(),
        "init {pid} still exists"
    );
    assert!(!root.root().join(&id).exists());
}

#[test]
fn delete_of_a_created_container_kills_its_init() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["true"]);
    let c = root.create(&b, Stdio::Null).unwrap();
    let pid = c.pid();
    c.delete(false).unwrap();
    assert!(
        pelagos::test_support::proc_stat(pid).is_none(),
        "init {pid} still exists"
    );
}

#[test]
fn an_init_that_ended_before_start_is_named_at_start() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["true"]);
    let mut c = root.create(&b, Stdio::Null).unwrap();
    c.kill(libc::SIGKILL, false).unwrap();
    let pidfd = pelagos::pidfd::open(c.pid()).unwrap();
    assert!(pelagos::pidfd::wait_exit(
        std::os::fd::AsFd::as_fd(&pidfd),
        5000
    ));
    let err = c.start().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "container init: wait for start: the init (pid {}) ended before start: killed by \
             SIGKILL",
            c.pid()
        )
    );
    assert_eq!(c.wait().unwrap().status, 128 + libc::SIGKILL);
    let id = c.id().to_string();
    c.delete(false).unwrap();
    root.assert_nothing_left(&id, &b);
}

#[test]
fn kill_delivers_the_signal() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&[
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ]);
    let c = start_sleeper(&root, &b);
    // The trap must be installed before we signal: wait until sh sleeps in its loop.
    let (code, out, _) = exec(
        &c,
        &[
            "sh",
            "-c",
            "until ps | grep -q 'sleep 0.1'; do :; done; echo up",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "up\n"));
    c.kill(libc::SIGTERM, false).unwrap();
    assert_eq!(c.wait().unwrap().status, 42);
    c.delete(false).unwrap();
}

#[test]
fn kill_all_reaches_every_process_in_the_cgroup() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sh", "-c", "sleep 100 & sleep 100 & wait"]);
    let c = start_sleeper(&root, &b);
    let pids = loop {
        let p = c.cgroup().unwrap().pids().unwrap();
        if p.len() >= 3 {
            break p;
        }
        std::thread::yield_now();
    };
    c.kill(libc::SIGKILL, true).unwrap();
    assert_eq!(c.wait().unwrap().status, 137);
    for pid in pids {
        // The kernel may still be tearing down the namespace: wait for each to vanish.
        while pelagos::test_support::proc_stat(pid).is_some_and(|s| s.state != 'Z') {
            std::thread::yield_now();
        }
    }
    c.delete(false).unwrap();
}

#[test]
fn exec_joins_the_namespaces_and_cgroup_of_the_init() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    let init = c.pid();
    let (code, out, err) = exec(
        &c,
        &["sh", "-c", "for n in pid net mnt; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup; echo $$"],
    );
    assert_eq!(code, 0, "stderr: {err}");
    let mut want = String::new();
    for ns in ["pid", "net", "mnt"] {
        want.push_str(&readlink(format!("/proc/{init}/ns/{ns}")));
        want.push('\n');
    }
    want.push_str(&std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap());
    let (head, pid_line) = out.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(format!("{head}\n"), want);
    assert_ne!(pid_line, "1", "the exec'd shell is not the init");
    assert_ne!(
        readlink(format!("/proc/{init}/ns/pid")),
        readlink("/proc/self/ns/pid")
    );

    let (code, out, _) = exec(&c, &["sh", "-c", "exit 7"]);
    assert_eq!((code, out.as_str()), (7, ""));
    let err = c
        .exec(&exec_process(&["no-such-binary"]), Stdio::Null)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("exec: \"no-such-binary\": executable file not found in $PATH"),
        "{err}"
    );
    // runc's words: tools match them.
    let mut in_missing_dir = exec_process(&["true"]);
    in_missing_dir.set_cwd("/no/such/dir".into());
    let err = c
        .exec(&in_missing_dir, Stdio::Null)
        .unwrap_err()
        .to_string();
    let want =
        "chdir to cwd (\"/no/such/dir\") set in config.json failed: no such file or directory";
    assert!(err.contains(want), "{err}");
    kill_and_delete(c);
}

#[test]
fn exec_into_a_stopped_container_is_refused() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["true"]);
    let mut c = root.create(&b, Stdio::Null).unwrap();
    c.start().unwrap();
    c.wait().unwrap();
    let err = c.exec(&exec_process(&["true"]), Stdio::Null).unwrap_err();
    assert!(err.to_string().contains("is stopped"), "{err}");
    c.delete(false).unwrap();
}

#[test]
fn joining_namespaces_by_path_including_pid() {
    let _g = shared();
    let root = TestRoot::new();
    let ab = Bundle::new().args(&["sleep", "100"]);
    let a = start_sleeper(&root, &ab);
    let (net, pid) = (
        format!("/proc/{}/ns/net", a.pid()),
        format!("/proc/{}/ns/pid", a.pid()),
    );
    let b = Bundle::new()
        .namespace("network", Some(&net))
        .namespace("pid", Some(&pid))
        .args(&[
            "sh",
            "-c",
            "readlink /proc/self/ns/net; readlink /proc/self/ns/pid; echo $$",
        ]);
    let (stdio, pipes) = Pipes::new();
    let mut c = root.create(&b, stdio).unwrap();
    // The init was forked into the joined pid namespace, yet it is our child.
    let ppid = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    assert!(
        ppid.contains(&format!("PPid:\t{}\n", std::process::id())),
        "{ppid}"
    );
    c.start().unwrap();
    let (out, err) = pipes.collect();
    assert_eq!(c.wait().unwrap().status, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], [readlink(&net), readlink(&pid)]);
    assert_ne!(lines[2], "1");
    c.delete(false).unwrap();
    kill_and_delete(a);
}

#[test]
fn user_namespace_gets_the_mappings() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().userns(100000, 65536).args(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u",
    ]);
    let out = root.run(&b);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words, ["0", "100000", "65536", "0", "100000", "65536", "0"]);
}

#[test]
fn time_namespace_offsets_apply() {
    let _g = shared();
    let root = TestRoot::new();
    let year = 365 * 24 * 3600u64;
    let b = Bundle::new()
        .namespace("time", None)
        .edit(|c| c["linux"]["timeOffsets"] = json!({"boottime": {"secs": year, "nanosecs": 0}}))
        .args(&["sh", "-c", "cut -d. -f1 /proc/uptime; echo $$"]);
    let out = root.run(&b);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let mut lines = out.stdout.lines();
    let uptime: u64 = lines.next().unwrap().parse().unwrap();
    assert!(uptime >= year, "uptime {uptime}");
    assert_eq!(lines.next(), Some("1"));
}

#[test]
fn terminal_becomes_the_controlling_tty() {
    let _g = shared();
    let root = TestRoot::new();
    let (pty_master, pty_slave) = common::bundle::openpty(24, 80);
    let b = Bundle::new().terminal(true).args(&[
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo is-a-tty; cut -d' ' -f7 /proc/self/stat",
    ]);
    let mut c = root.create(&b, Stdio::Terminal(pty_slave)).unwrap();
    c.start().unwrap();
    let mut out = Vec::new();
    let mut master = std::fs::File::from(pty_master);
    let mut buf = [0u8; 1024];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break, // EIO: the slave side closed
        }
    }
    assert_eq!(c.wait().unwrap().status, 0);
    let text = String::from_utf8_lossy(&out).replace('\r', "");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("is-a-tty"), "{text}");
    let tty_nr: i64 = lines.next().unwrap().trim().parse().unwrap();
    assert_ne!(tty_nr, 0, "no controlling terminal");
    c.delete(false).unwrap();
}

/// What must be identical before and after a failed create.
#[derive(Debug, PartialEq)]
struct Leftovers {
    children: BTreeSet<i32>,
    mounts: Vec<String>,
    state_entries: Vec<String>,
    cgroups: Vec<String>,
}

fn leftovers(root: &TestRoot) -> Leftovers {
    let me = std::process::id().to_string();
    let mut children = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if s.lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(me.as_str()))
            {
                children.insert(pid);
            }
        }
    }
    // Only mounts of this test process's bundles and state roots: other test binaries on the
    // host may mount and unmount meanwhile.
    let ours = [
        format!("pelagos-bundle-{me}-"),
        format!("pelagos-test-{me}-"),
    ];
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| ours.iter().any(|o| l.contains(o.as_str())))
        .map(str::to_string)
        .collect();
    let mut state_entries: Vec<String> = std::fs::read_dir(root.root())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    state_entries.sort();
    let mut cgroups = Vec::new();
    let prefix = format!("pelagos-test-{}-", std::process::id());
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for e in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && e.path().is_dir() {
                cgroups.push(e.path().display().to_string());
            }
        }
    }
    cgroups.sort();
    Leftovers {
        children,
        mounts,
        state_entries,
        cgroups,
    }
}

/// Each bad input fails create with an error naming the problem and leaves nothing behind.
#[test]
fn bad_input_is_named_and_leaves_nothing() {
    let _g = PROCS.write().unwrap_or_else(|e| e.into_inner());
    let root = TestRoot::new();
    std::fs::create_dir_all(root.root()).unwrap();
    let keeper_id = unique_id("bad-keeper");
    let kb = Bundle::new().args(&["true"]);
    let keeper = root.create_id(&keeper_id, &kb, Stdio::Null).unwrap();
    let before = leftovers(&root);

    let cases: Vec<(&str, Bundle, String)> = vec![
        ("bad json", {
            let b = Bundle::new();
            b.write_raw_config(b"{\n  \"ociVersion\": \"1.0.2\",\n  oops\n}");
            b
        }, "config.json: invalid config at line 3 column".into()),
        ("missing rootfs", Bundle::new().edit(|c| c["root"]["path"] = json!("no-such-dir")),
         "root.path no-such-dir: No such file or directory".into()),
        ("missing args", Bundle::new().edit(|c| c["process"]["args"] = json!([])),
         "process: args is missing or empty".into()),
        ("unknown namespace", Bundle::new().namespace("bogus", None), "bogus".into()),
        ("namespace of the wrong type", Bundle::new().namespace("network", Some("/proc/self/ns/pid")),
         "/proc/self/ns/pid is a pid namespace, not net".into()),
        ("namespace path missing", Bundle::new().namespace("ipc", Some("/no/such/ns")),
         "ipc namespace path /no/such/ns".into()),
        ("unsupported version", Bundle::new().edit(|c| c["ociVersion"] = json!("2.0.0")),
         "unsupported ociVersion \"2.0.0\"".into()),
        ("no mount namespace", Bundle::new().without_namespace("mount"),
         "must include a mount namespace".into()),
        ("executable not found", Bundle::new().args(&["no-such-cmd"]),
         "container init: exec: \"no-such-cmd\": executable file not found in $PATH".into()),
        ("binary missing", Bundle::new().args(&["/no/such/cmd"]),
         "exec: \"/no/such/cmd\": stat /no/such/cmd: no such file or directory".into()),
        ("mount label", Bundle::new().edit(|c| c["linux"]["mountLabel"] = json!("system_u:object_r:x:s0")),
         "linux.mountLabel".into()),
        ("bind source missing", Bundle::new().mount(json!({
            "destination": "/mnt", "type": "bind", "source": "/no/such/source", "options": ["rbind"]})),
         "/no/such/source".into()),
    ];
    for (what, bundle, want) in cases {
        let id = unique_id("bad");
        let err = root
            .create_id(&id, &bundle, Stdio::Null)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&want),
            "{what}: got {err:?}, want it to contain {want:?}"
        );
        assert_eq!(leftovers(&root), before, "{what} left something behind");
    }

    let b = Bundle::new();
    for bad_id in ["a/b", "..", ""] {
        let err = root
            .create_id(bad_id, &b, Stdio::Null)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("invalid container id {bad_id:?}")),
            "{err}"
        );
    }
    let err = root
        .create_id(&keeper_id, &b, Stdio::Null)
        .unwrap_err()
        .to_string();
    assert_eq!(err, format!("container {keeper_id} already exists"));
    assert_eq!(
        leftovers(&root),
        before,
        "a refused id left something behind"
    );
    assert_eq!(
        keeper.state().status,
        Status::Created,
        "the existing container was disturbed"
    );
    keeper.delete(false).unwrap();
}

#[test]
fn many_containers_in_parallel() {
    let _g = shared();
    let root = TestRoot::new();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let config = root.config.clone();
            std::thread::spawn(move || {
                let b = Bundle::new().args(&["sh", "-c", &format!("echo {i}")]);
                let (stdio, pipes) = Pipes::new();
                let mut c = Container::create(
                    &config,
                    CreateOptions {
                        id: unique_id("par"),
                        bundle: b.path().to_path_buf(),
                        stdio,
                        no_pivot: false,
                        preserve_fds: Vec::new(),
                    },
                )
                .unwrap();
                c.start().unwrap();
                let (out, _) = pipes.collect();
                assert_eq!(out, format!("{i}\n"));
                assert_eq!(c.wait().unwrap().status, 0);
                c.delete(false).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sealed_self_copy_runs_as_helper_only_when_configured() {
    // The test binary is not a helper: a container created with `helper: None` would exec a
    // copy of this test binary, which would not enter run_if_helper. Here we only check that
    // the helper path is honoured and that a missing one is named.
    let root = TestRoot::new();
    let mut config = root.config.clone();
    config.helper = Some("/no/such/helper".into());
    let b = Bundle::new();
    let err = Container::create(
        &config,
        CreateOptions {
            id: unique_id("helper"),
            bundle: b.path().to_path_buf(),
            stdio: Stdio::Null,
            no_pivot: false,
            preserve_fds: Vec::new(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("/no/such/helper"), "{err}");
    assert!(!root.root().exists() || std::fs::read_dir(root.root()).unwrap().next().is_none());
}

#[test]
fn container_handles_can_move_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<Container>();
    check::<pelagos::ExecProcess>();
}

#[test]
fn cli_run_uses_the_sealed_self_copy_as_helper() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sh", "-c", "echo from-cli; exit 5"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pelagos"))
        .arg("run")
        .arg("--root")
        .arg(root.root())
        .arg("--bundle")
        .arg(b.path())
        .arg(unique_id("cli"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-cli\n",
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(std::fs::read_dir(root.root()).unwrap().next().is_none());
}

/// Every hierarchy lists the container's cgroup for its init and for an exec'd process, with
/// and without a user namespace (the helper moves itself into the v1 hierarchies, unless a
/// new user namespace took its rights on the host's cgroupfs: the runtime moves it then).
#[test]
fn init_and_exec_are_in_the_container_cgroup_in_every_hierarchy() {
    let _g = shared();
    let root = TestRoot::new();
    for b in [Bundle::new(), Bundle::new().userns(200000, 65536)] {
        let b = b.args(&["sleep", "100"]);
        let want = b.cgroup_path().expect("the bundle has a cgroupsPath");
        let c = start_sleeper(&root, &b);
        let e = c
            .exec(&exec_process(&["sleep", "100"]), Stdio::Null)
            .expect("exec");
        for (who, pid) in [("init", c.pid()), ("exec", e.pid)] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(text.lines().count() > 0);
            for line in text.lines() {
                assert!(line.ends_with(&format!(":{want}")), "{who}: {line}\n{text}");
            }
        }
        let sigkill = nix::sys::signal::Signal::SIGKILL;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(e.pid), sigkill).unwrap();
        reaper::wait(e.pid, None).unwrap();
        kill_and_delete(c);
    }
}

#[test]
fn exec_into_a_user_namespace_container() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().userns(200000, 65536).args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    let (code, out, err) = exec(&c, &["sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert_eq!(code, 0, "stderr: {err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "200000", "65536"]);
    kill_and_delete(c);
}

#[test]
fn exec_with_a_terminal() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    let (pty_master, pty_slave) = common::bundle::openpty(24, 80);
    let mut p = exec_process(&["sh", "-c", "test -t 0 && echo exec-tty"]);
    p.set_terminal(Some(true));
    let e = c.exec(&p, Stdio::Terminal(pty_slave)).unwrap();
    let mut master = std::fs::File::from(pty_master);
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reaper::wait(e.pid, None).unwrap().status, 0);
    assert_eq!(String::from_utf8_lossy(&out).trim_end(), "exec-tty");
    kill_and_delete(c);
}

/// Not a timing assert: prints the mean create+start+wait+delete time. Run by hand with
/// `cargo test --test core_lifecycle bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_create_start_delete() {
    let root = TestRoot::new();
    let mut b = Bundle::new().args(&["true"]);
    if let Ok(drop) = std::env::var("PELAGOS_BENCH_DROP_NS") {
        for ns in drop.split(',') {
            b = b.without_namespace(ns);
        }
    }
    let n = 50;
    let mut phases = [std::time::Duration::ZERO; 4];
    for _ in 0..n {
        let t0 = std::time::Instant::now();
        let mut c = root.create(&b, Stdio::Null).unwrap();
        let t1 = std::time::Instant::now();
        c.start().unwrap();
        let t2 = std::time::Instant::now();
        c.wait().unwrap();
        let t3 = std::time::Instant::now();
        c.delete(false).unwrap();
        let t4 = std::time::Instant::now();
        for (p, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
            *p += d;
        }
    }
    let names = ["create", "start", "wait", "delete"];
    for (name, p) in names.iter().zip(phases) {
        println!("{name:>7}: {:?}", p / n);
    }
    println!(
        "  total: {:?}",
        phases.iter().sum::<std::time::Duration>() / n
    );
}

#[test]
fn sigkill_reaches_a_paused_container() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    c.pause().unwrap();
    assert_eq!(c.state().status, Status::Paused);
    c.kill(libc::SIGKILL, false).unwrap();
    assert_eq!(c.wait().unwrap().status, 137);
    c.delete(false).unwrap();
}

#[test]
fn no_new_privileges_off_still_loads_seccomp_as_a_user() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new()
        .user(65534, 65534)
        .edit(|c| {
            c["process"]["noNewPrivileges"] = json!(false);
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        })
        .args(&["sh", "-c", "id -u; grep NoNewPrivs /proc/self/status; mkdir /tmp/x"]);
    let out = root.run(&b);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["65534", "NoNewPrivs:\t0"], "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );
    assert_ne!(out.code, 0);
}

#[test]
fn host_pid_namespace_exec_needs_no_fork_and_delete_kills_the_rest() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new()
        .without_namespace("pid")
        .edit(|c| {
            // The host's /proc cannot be mounted afresh without a pid namespace of our own
            // being needed; a bind of it is what runc users do.
            let mounts = c["mounts"].as_array_mut().unwrap();
            mounts.retain(|m| m["destination"] != "/proc");
            mounts.insert(
                0,
                json!({"destination": "/proc", "type": "bind", "source": "/proc",
                                    "options": ["rbind", "nosuid", "nodev", "noexec"]}),
            );
            c["linux"]["maskedPaths"] = json!([]);
            c["linux"]["readonlyPaths"] = json!([]);
        })
        .args(&["sh", "-c", "sleep 100 & wait"]);
    let c = start_sleeper(&root, &b);
    let (code, out, err) = exec(&c, &["sh", "-c", "echo $$"]);
    assert_eq!(code, 0, "stderr: {err}");
    let pid: i32 = out.trim().parse().unwrap();
    assert!(pid > 1, "exec'd shell sees host pids: {pid}");
    let pids = c.cgroup().unwrap().pids().unwrap();
    assert!(pids.len() >= 2, "{pids:?}");
    let init = c.pid();
    c.delete(true).unwrap();
    for p in pids {
        assert!(
            pelagos::test_support::proc_stat(p).is_none_or(|s| s.state == 'Z'),
            "process {p} survived delete"
        );
    }
    assert!(pelagos::test_support::proc_stat(init).is_none());
}

#[test]
fn the_runtime_keeps_no_fds_after_delete() {
    let _g = PROCS.write().unwrap_or_else(|e| e.into_inner());
    let count = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    // Warm up lazily opened process-wide state first.
    kill_and_delete(start_sleeper(&root, &b));
    let before = count();
    let c = start_sleeper(&root, &b);
    let (code, _, _) = exec(&c, &["true"]);
    assert_eq!(code, 0);
    assert!(c
        .exec(&exec_process(&["no-such-binary"]), Stdio::Null)
        .is_err());
    kill_and_delete(c);
    let failed = root.create(&Bundle::new().args(&["no-such-binary"]), Stdio::Null);
    assert!(failed.is_err());
    assert_eq!(count(), before, "fds leaked by the runtime");
}

#[test]
fn new_user_namespace_while_joining_another_namespace() {
    let _g = shared();
    let root = TestRoot::new();
    let ab = Bundle::new().args(&["sleep", "100"]);
    let a = start_sleeper(&root, &ab);
    let uts = format!("/proc/{}/ns/uts", a.pid());
    // The uts namespace is joined with host privileges first, then the user namespace is
    // created by the helper, which asks us for its maps. (A hostname could not be set in a
    // uts namespace the new user namespace does not own.)
    let b = Bundle::new()
        .userns(300000, 65536)
        .namespace("uts", Some(&uts))
        .edit(|c| {
            c.as_object_mut()
                .unwrap()
                .remove("hostname")
                .map(drop)
                .unwrap_or(())
        })
        .args(&[
            "sh",
            "-c",
            "cat /proc/self/uid_map; readlink /proc/self/ns/uts; echo $$",
        ]);
    let out = root.run(&b);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let lines: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "0 300000 65536".to_string(),
            readlink(&uts),
            "1".to_string()
        ]
    );
    kill_and_delete(a);
}

/// Reads a pty master until the slave side is gone (EIO), without the \r the tty adds.
fn read_master(master: OwnedFd) -> String {
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

#[test]
fn console_socket_gives_a_pty_of_the_containers_own_devpts() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new()
        .terminal(true)
        .user(65534, 65534)
        .edit(|c| c["process"]["consoleSize"] = json!({"height": 33, "width": 111}))
        .args(&[
            "sh",
            "-c",
            "tty; stty size; stat -c %u /dev/pts/0; cut -d' ' -f7 /proc/self/stat",
        ]);
    let (sock, theirs) = pelagos::container::console_socket().unwrap();
    let mut c = root.create(&b, Stdio::Terminal(theirs)).unwrap();
    let master = sock.receive().unwrap();
    c.start().unwrap();
    let out = read_master(master);
    assert_eq!(c.wait().unwrap().status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["/dev/pts/0", "33 111", "65534"], "{out}");
    assert_ne!(lines[3], "0", "no controlling terminal");
    c.delete(false).unwrap();
}

#[test]
fn exec_with_a_console_socket() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    let (sock, theirs) = pelagos::container::console_socket().unwrap();
    let mut p = exec_process(&["sh", "-c", "tty; stty size"]);
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        serde_json::from_value(json!({"height": 20, "width": 70})).unwrap(),
    ));
    let e = c.exec(&p, Stdio::Terminal(theirs)).unwrap();
    let out = read_master(sock.receive().unwrap());
    assert_eq!(reaper::wait(e.pid, None).unwrap().status, 0, "{out}");
    assert_eq!(out, "/dev/pts/0\n20 70\n");
    kill_and_delete(c);
}

#[test]
fn exec_joins_the_time_namespace() {
    let _g = shared();
    let root = TestRoot::new();
    let year = 365 * 24 * 3600u64;
    let b = Bundle::new()
        .namespace("time", None)
        .edit(|c| c["linux"]["timeOffsets"] = json!({"boottime": {"secs": year, "nanosecs": 0}}))
        .args(&["sleep", "100"]);
    let c = start_sleeper(&root, &b);
    let (code, out, err) = exec(
        &c,
        &[
            "sh",
            "-c",
            "cut -d. -f1 /proc/uptime; readlink /proc/self/ns/time",
        ],
    );
    assert_eq!(code, 0, "stderr: {err}");
    let mut lines = out.lines();
    let uptime: u64 = lines.next().unwrap().parse().unwrap();
    assert!(uptime >= year, "uptime {uptime}");
    assert_eq!(
        lines.next().unwrap(),
        readlink(format!("/proc/{}/ns/time", c.pid()))
    );
    kill_and_delete(c);
}

#[test]
fn start_from_another_handle_after_the_creator_is_gone() {
    let _g = shared();
    let root = TestRoot::new();
    // It stays up until killed, so "running" is not a race with its exit.
    let b = Bundle::new().args(&["sh", "-c", "echo started-elsewhere; exec sleep 100"]);
    let id = unique_id("fifo");
    let (stdio, pipes) = Pipes::new();
    let creator = root.create_id(&id, &b, stdio).unwrap();
    let pid = creator.pid();
    // The creating handle goes away (as a `create` CLI process would exit): the init waits on.
    drop(creator);
    let mut other = Container::load(&root.config, &id).unwrap();
    assert_eq!(other.state().status, Status::Created);
    assert_eq!(other.pid(), pid);
    other.start().unwrap();
    assert_eq!(
        Container::load(&root.config, &id).unwrap().state().status,
        Status::Running
    );
    // A start from another handle has no exec acknowledgement: wait until the echo is done
    // (the shell has exec'd sleep) before killing.
    let comm = format!("/proc/{pid}/comm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(
            std::time::Instant::now() < deadline,
            "init never exec'd sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    other.kill(libc::SIGKILL, false).unwrap();
    let (out, _) = pipes.collect();
    assert_eq!(out, "started-elsewhere\n");
    assert_eq!(other.wait().unwrap().status, 128 + libc::SIGKILL);
    let err = other.start().unwrap_err();
    assert!(err.to_string().contains("cannot start"), "{err}");
    other.delete(false).unwrap();
}

#[test]
fn a_started_container_is_running_for_every_handle() {
    let _g = shared();
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sleep", "100"]);
    let id = unique_id("handles");
    let creator = root.create_id(&id, &b, Stdio::Null).unwrap();
    let mut other = Container::load(&root.config, &id).unwrap();
    other.start().unwrap();
    assert_eq!(creator.state().status, Status::Running);
    let mut again = Container::load(&root.config, &id).unwrap();
    assert!(again.start().is_err());
    kill_and_delete(creator);
}
