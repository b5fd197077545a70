//! OCI hooks run for real: stdin, argv, env, exit status, timeout, and their place in a
//! container's lifecycle.

mod common;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, HookBuilder};
use pelagos::hooks::{run_all, HookError};

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("pelagos-hooks-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str, env: &[&str], timeout: Option<i64>) -> Hook {
    let mut b = HookBuilder::default()
        .path("/bin/busybox")
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
            "zero".to_string(),
            "one".to_string(),
        ])
        .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().unwrap()
}

/// Pids of our children whose command line is exactly `argv`.
fn children_running(argv: &[&str]) -> Vec<i32> {
    let me = std::process::id().to_string();
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid_ok = status
                .lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(me.as_str()));
            ppid_ok && std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() == want
        })
        .collect()
}

#[test]
fn hook_gets_state_args_and_exactly_its_env() {
    let dir = Dir::new("state");
    let out = dir.join("out");
    let script = "cat > \"$OUT\"; echo \"$0 $1\" > \"$OUT.args\"; env > \"$OUT.env\"";
    let hook = sh(
        script,
        &[&format!("OUT={}", out.display()), "FOO=bar baz"],
        None,
    );
    let state = br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#;
    run_all(&[hook], state).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), state);
    let args = std::fs::read_to_string(dir.join("out.args")).unwrap();
    assert_eq!(args.trim(), "zero one");
    let env = std::fs::read_to_string(dir.join("out.env")).unwrap();
    assert!(env.lines().any(|l| l == "FOO=bar baz"), "{env}");
    // cargo gives the test process CARGO_* variables; the hook must not inherit them.
    assert!(!env.lines().any(|l| l.starts_with("CARGO")), "{env}");
}

#[test]
fn argv0_is_the_path_when_args_are_empty() {
    let dir = Dir::new("argv0");
    // busybox picks its applet from argv[0]'s basename.
    for name in ["true", "false"] {
        std::os::unix::fs::symlink("/bin/busybox", dir.join(name)).unwrap();
    }
    let hook = |name: &str| HookBuilder::default().path(dir.join(name)).build().unwrap();
    run_all(&[hook("true")], b"{}").unwrap();
    let e = run_all(&[hook("false")], b"{}").unwrap_err();
    assert!(matches!(e, HookError::Failed { status: 1, .. }), "{e}");
}

#[test]
fn failure_reports_status_and_stderr_and_stops_the_rest() {
    let dir = Dir::new("fail");
    let marker = dir.join("second-ran");
    let first = sh("echo 'no network for you' >&2; exit 3", &[], None);
    let second = sh(&format!("touch {}", marker.display()), &[], None);
    let e = run_all(&[first, second], b"{}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/bin/busybox"), "{msg}");
    assert!(msg.contains("status 3"), "{msg}");
    assert!(msg.contains("no network for you"), "{msg}");
    assert!(
        !Path::new(&marker).exists(),
        "a hook after a failed one ran"
    );
}

#[test]
fn timeout_kills_the_hook() {
    let hook = HookBuilder::default()
        .path("/bin/busybox")
        .args(vec!["sleep".to_string(), "100".to_string()])
        .timeout(1)
        .build()
        .unwrap();
    let e = run_all(&[hook], b"{}").unwrap_err();
    assert_eq!(e.to_string(), "hook /bin/busybox timed out after 1s");
    assert!(
        children_running(&["sleep", "100"]).is_empty(),
        "the timed-out hook is still around"
    );
}

#[test]
fn big_state_and_output_do_not_deadlock() {
    // The first hook ignores stdin; the second echoes far more than a pipe buffer.
    let state = vec![b'x'; 1 << 20];
    let ignore = sh("exit 0", &[], Some(30));
    let chatty = sh(
        "cat; cat /dev/zero | head -c 300000 >&2; exit 0",
        &[],
        Some(30),
    );
    run_all(&[ignore, chatty], &state).unwrap();
}

#[test]
fn bad_hooks_rejected() {
    let rel = HookBuilder::default().path("bin/true").build().unwrap();
    assert!(matches!(
        run_all(&[rel], b"{}"),
        Err(HookError::RelativePath { .. })
    ));
    let zero = HookBuilder::default()
        .path("/bin/true")
        .timeout(0)
        .build()
        .unwrap();
    assert!(matches!(
        run_all(&[zero], b"{}"),
        Err(HookError::BadTimeout { .. })
    ));
    let missing = HookBuilder::default()
        .path("/nonexistent/hook")
        .build()
        .unwrap();
    let e = run_all(&[missing], b"{}").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/hook"), "{e}");
}

/// A host-side hook appending `name` to `dir/order` (and saving its stdin as `dir/state-<name>`).
fn logging_hook(dir: &Path, name: &str, extra: &str) -> serde_json::Value {
    let d = dir.display();
    serde_json::json!([{
        "path": "/bin/busybox",
        "args": ["sh", "-c", format!("cat > {d}/state-{name}; echo {name} >> {d}/order; {extra}")],
    }])
}

#[test]
fn lifecycle_hooks_run_in_order_and_in_the_right_namespace() {
    use common::bundle::{Bundle, Pipes, TestRoot};
    let dir = Dir::new("lifecycle");
    let d = dir.0.display().to_string();
    let root = TestRoot::new();
    let b = Bundle::new()
        .args(&["true"])
        // Ambient capabilities are not what this test is about (see core_lifecycle echo_hi).
        .edit(|c| {
            c["process"]["capabilities"]
                .as_object_mut()
                .unwrap()
                .remove("ambient");
        })
        .mount(serde_json::json!({
            "destination": "/hooklog", "type": "bind", "source": d, "options": ["rbind", "rw"]
        }))
        .hooks("prestart", logging_hook(&dir.0, "prestart", ""))
        .hooks("createRuntime", logging_hook(&dir.0, "createRuntime", ""))
        .hooks(
            "createContainer",
            logging_hook(
                &dir.0,
                "createContainer",
                &format!("readlink /proc/self/ns/mnt > {d}/createContainer-mnt"),
            ),
        )
        // startContainer runs after pivot_root: its path and files are the container's.
        .hooks(
            "startContainer",
            serde_json::json!([{
                "path": "/bin/sh",
                "args": ["sh", "-c", "echo startContainer >> /hooklog/order"],
            }]),
        )
        .hooks("poststart", logging_hook(&dir.0, "poststart", ""))
        .hooks("poststop", logging_hook(&dir.0, "poststop", ""));
    let id = common::bundle::unique_id("hooks");
    let (stdio, pipes) = Pipes::new();
    let mut c = root.create_id(&id, &b, stdio).expect("create");
    let container_mnt = std::fs::read_link(format!("/proc/{}/ns/mnt", c.pid())).unwrap();
    c.start().expect("start");
    let (_, stderr) = pipes.collect();
    assert_eq!(c.wait().expect("wait").status, 0, "stderr: {stderr}");
    c.delete(false).expect("delete");

    let order = std::fs::read_to_string(dir.join("order")).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    let cc_mnt = std::fs::read_to_string(dir.join("createContainer-mnt")).unwrap();
    assert_eq!(cc_mnt.trim(), container_mnt.to_str().unwrap());
    let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        container_mnt, own_mnt,
        "the container has its own mount namespace"
    );
    for name in [
        "prestart",
        "createRuntime",
        "createContainer",
        "poststart",
        "poststop",
    ] {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(&format!("state-{name}"))).unwrap())
                .unwrap_or_else(|e| panic!("{name} got no state JSON: {e}"));
        assert_eq!(state["id"], id.as_str(), "{name}: {state}");
        assert!(
            state["pid"].as_i64().unwrap_or(0) > 0 || name == "poststop",
            "{name}: {state}"
        );
    }
}

/// Issue 15 (runtime-spec 1.3): poststop hooks run after the container is deleted (no state
/// dir, no cgroup), before delete returns; a failing one is a warning, the rest still run and
/// delete succeeds. Poststart hooks likewise all run.
#[test]
fn poststop_hooks_run_after_the_delete_and_a_failure_is_only_a_warning() {
    use common::bundle::{cgroup_exists, Bundle, TestRoot};
    use pelagos::Stdio;
    let dir = Dir::new("poststop");
    let root = TestRoot::new();
    let id = common::bundle::unique_id("poststop");
    let state_dir = root.root().join(&id);
    let b = Bundle::new().args(&["true"]);
    let cgroup = b.cgroup_path().expect("the fixture sets a cgroupsPath");
    let cgroup_dirs: Vec<String> = common::containerd::cgroup_mounts()
        .iter()
        .map(|m| m.join(cgroup.trim_start_matches('/')).display().to_string())
        .collect();
    let check = format!(
        "for d in {} {}; do test -e \"$d\" && echo \"$d left\"; done; echo checked",
        state_dir.display(),
        cgroup_dirs.join(" ")
    );
    let d = dir.0.display();
    let hooks = |kind: &str| {
        serde_json::json!([
            {"path": "/bin/busybox", "args": ["sh", "-c", "exit 3"]},
            {"path": "/bin/busybox",
             "args": ["sh", "-c", format!("({check}) > {d}/{kind}")]},
        ])
    };
    let b = b
        .hooks("poststart", hooks("poststart"))
        .hooks("poststop", hooks("poststop"));
    let mut c = root.create_id(&id, &b, Stdio::Null).expect("create");
    c.start()
        .expect("a failing poststart hook does not fail start");
    assert_eq!(c.wait().expect("wait").status, 0);
    c.delete(false)
        .expect("a failing poststop hook does not fail delete");
    let poststop = std::fs::read_to_string(dir.join("poststop")).expect("second poststop ran");
    assert_eq!(poststop, "checked\n", "poststop ran before the delete");
    assert!(
        dir.join("poststart").exists(),
        "second poststart hook not run"
    );
    assert!(!cgroup_exists(&cgroup));
}
