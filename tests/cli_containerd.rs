//! containerd's own runc shim (io.containerd.runc.v2) with `pelagos` as its runc binary
//! (`BinaryName`, set per container through ctr's `--runc-binary`): go-runc drives our CLI
//! end to end. Needs root and the containerd harness (tests/common/containerd.rs).

mod common;

use std::path::PathBuf;

use common::bundle::unique_id;
use common::containerd::{describe, stdout, Containerd, CTR_TIMEOUT};

const PELAGOS: &str = env!("CARGO_BIN_EXE_pelagos");

#[test]
fn containerd_runc_shim_runs_containers_through_the_pelagos_cli() {
    let mut cd = Containerd::start();
    cd.runtime = "io.containerd.runc.v2".into();
    let runc_root = PathBuf::from(format!("/run/{}", unique_id("pelagos-cli-ctr")));
    let root = runc_root.to_str().unwrap();
    let opts = ["--runc-binary", PELAGOS, "--runc-root", root];

    // Attached: create, start, the exit code back through the shim, delete.
    let out = cd.run(
        &unique_id("att"),
        &opts,
        &["sh", "-c", "echo hello; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(stdout(&out), "hello\n");

    // Detached: the container lives in pelagos's state under the shim's root.
    let id = unique_id("det");
    cd.run_detached(&id, &opts, &["sleep", "1000"]);
    let ns_root = runc_root.join(&cd.namespace);
    let state = std::process::Command::new(PELAGOS)
        .arg("--root")
        .arg(&ns_root)
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(state.status.success(), "{}", describe(&state));
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], cd.task_pid(&id));

    // exec --process FILE --detach --pid-file, then the exit code from the shim's reaper.
    let out = cd.exec(&id, "e1", &[], &["sh", "-c", "echo inside; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(stdout(&out), "inside\n");

    cd.remove(&id);
    cd.assert_no_leaks();
    let left: Vec<_> = std::fs::read_dir(&ns_root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left under {}: {left:?}",
        ns_root.display()
    );
    drop(cd);
    let _ = std::fs::remove_dir_all(&runc_root);
}

/// `ctr run -t` and `ctr task exec -t`: go-runc's console socket receives the pty master our
/// container setup sends.
#[test]
fn containerd_runc_shim_gets_pelagos_ttys_over_its_console_socket() {
    let mut cd = Containerd::start();
    cd.runtime = "io.containerd.runc.v2".into();
    let runc_root = PathBuf::from(format!("/run/{}", unique_id("pelagos-cli-ctr")));
    let root = runc_root.to_str().unwrap();
    let opts = ["--runc-binary", PELAGOS, "--runc-root", root];
    let script = ["sh", "-c", "tty; read x; echo got $x; exit 3"];

    let args = cd.run_args(&["--rm", "-t"], "tty", &opts, &script);
    let mut pty = cd.spawn_ctr_on_pty(&args, 30, 90);
    assert!(
        pty.expect(CTR_TIMEOUT, |t| t.contains("/dev/pts/")
            || t.contains("not a tty"))
            && pty.output().contains("/dev/pts/"),
        "no tty in the container: {}",
        pty.output()
    );
    pty.write(b"hi\n");
    let (status, out) = pty.wait(CTR_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "terminal output:\n{out}"
    );
    assert!(out.contains("got hi"), "{out}");

    cd.run_detached("box", &opts, &["sleep", "1000"]);
    let args = cd.exec_args("box", "t1", &["-t"], &script);
    let mut pty = cd.spawn_ctr_on_pty(&args, 25, 80);
    assert!(
        pty.expect(CTR_TIMEOUT, |t| t.contains("/dev/pts/")
            || t.contains("not a tty"))
            && pty.output().contains("/dev/pts/"),
        "no tty in the exec: {}",
        pty.output()
    );
    pty.write(b"there\n");
    let (status, out) = pty.wait(CTR_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "terminal output:\n{out}"
    );
    assert!(out.contains("got there"), "{out}");
    cd.remove("box");
    cd.assert_no_leaks();
    drop(cd);
    let _ = std::fs::remove_dir_all(&runc_root);
}
