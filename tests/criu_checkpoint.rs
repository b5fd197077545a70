//! Checkpoint (and restore) with CRIU through containerd: `ctr task checkpoint` with and without
//! `--exit`, the failures, with runc's shim as the control in every test. Not in the VM's suite
//! globs: CRIU is installed on the host by scripts/install-criu.sh (make test's set-up); a host
//! without it fails here with that named, rather than skipping. Each test runs both shims
//! itself: leave PELAGOS_TEST_RUNTIME unset (set to runc's, the harness links no pelagos shim).
//! In the systemd VM (`PELAGOS_TEST_SYSTEMD_CGROUP=1 PELAGOS_VM_INIT=systemd
//! scripts/vm/run-tests.sh criu_checkpoint`) the host's /usr/local CRIU runs as well.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bundle::{unique_id, Bundle};

use common::containerd::{describe, Containerd, PELAGOS_RUNTIME, RUNC_RUNTIME};
use common::ttrpc_raw::{request_body, Pb, RawConn, Reply};

const RUNTIMES: [&str; 2] = [PELAGOS_RUNTIME, RUNC_RUNTIME];

/// A shell loop that writes an ever-growing count to /tmp/count every 50 ms.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done";

fn require_criu() {
    let ok = std::process::Command::new("criu")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "criu is not installed: run scripts/install-criu.sh (make setup does) before these tests"
    );
}

/// A containerd whose runs use `runtime`.
fn containerd(runtime: &str) -> Containerd {
    require_criu();
    let mut cd = Containerd::start();
    cd.runtime = runtime.to_owned();
    cd
}

fn count_file(cd: &Containerd, id: &str) -> PathBuf {
    cd.bundle_dir(id).join("rootfs/tmp/count")
}

fn read_count(cd: &Containerd, id: &str) -> Option<u64> {
    std::fs::read_to_string(count_file(cd, id))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Waits until the counter of `id` passes `above`; returns the count seen.
fn count_passes(cd: &Containerd, id: &str, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = read_count(cd, id).filter(|&n| n > above) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: the counter did not pass {above} (last {:?})",
            read_count(cd, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_status(cd: &Containerd, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cd.task_status(id).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{id}: task status {:?}, want {want}",
            cd.task_status(id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The checkpoint images of the namespace (ctr names them `containerd.io/checkpoint/<id>:<time>`).
fn checkpoint_images(cd: &Containerd) -> Vec<String> {
    cd.ctr_ok(&["image", "ls", "-q"])
        .lines()
        .filter(|l| l.starts_with("containerd.io/checkpoint/"))
        .map(str::to_owned)
        .collect()
}

fn remove_images(cd: &Containerd) {
    for name in checkpoint_images(cd) {
        cd.ctr_ok(&["image", "rm", &name]);
    }
}

#[test]
fn checkpoint_leaves_the_counter_running() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let id = "ckpt-run";
        cd.run_detached(id, &[], &["sh", "-c", COUNTER]);
        let before = count_passes(&cd, id, 2);
        let out = cd.ctr(&["task", "checkpoint", id]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        let images = checkpoint_images(&cd);
        assert_eq!(
            images,
            [common::containerd::stdout(&out).trim()],
            "{rt}: checkpoint images; ctr image ls: {}",
            cd.ctr_ok(&["image", "ls"])
        );
        assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"), "{rt}");
        count_passes(&cd, id, before + 3);

        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        wait_status(&cd, id, "STOPPED");
        cd.task_rm(id);
        cd.remove(id);
        remove_images(&cd);
        cd.assert_no_leaks();
    }
}

/// Task.Checkpoint sent to the shim itself with `containerd.runc.v1.CheckpointOptions`: ctr
/// sends options (`--exit`) only to runtimes named io.containerd.runc.*, and CRI's image path
/// likewise, so the options are exercised here as containerd's runc client would send them.
fn shim_checkpoint(cd: &Containerd, id: &str, image: &std::path::Path, exit: bool) -> Reply {
    let options = Pb::new().uint(1, exit as u64);
    let any = Pb::new()
        .str(1, "containerd.runc.v1.CheckpointOptions")
        .bytes(2, &options.0);
    let req = Pb::new()
        .str(1, id)
        .str(2, &image.to_string_lossy())
        .bytes(3, &any.0);
    // The only container of `cd`, so its only shim socket (2.x bundles have no address file).
    let socket = cd.shim_sockets().pop().expect("the shim's socket");
    let mut conn = RawConn::connect(&socket).expect("shim socket");
    // containerd 2's shims (runc's) serve the same Task API as containerd.task.v3.
    let service = match cd.major() {
        1 => "containerd.task.v2.Task",
        _ => "containerd.task.v3.Task",
    };
    conn.call_body(&request_body(service, "Checkpoint", &req.0))
        .expect("the shim answers Checkpoint")
}

fn image_dir(cd: &Containerd, name: &str) -> PathBuf {
    let dir = cd.root_dir().join(format!("criu-images-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn checkpoint_with_exit_ends_the_container_after_the_dump() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let id = "ckpt-exit";
        cd.run_detached(id, &[], &["sh", "-c", COUNTER]);
        count_passes(&cd, id, 2);
        let images = image_dir(&cd, id);
        let reply = shim_checkpoint(&cd, id, &images, true);
        assert_eq!(reply.code(), 0, "{rt}: {}", reply.message());
        assert!(
            images.join("inventory.img").is_file(),
            "{rt}: no inventory.img in {}",
            images.display()
        );
        wait_status(&cd, id, "STOPPED");
        let last = read_count(&cd, id);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read_count(&cd, id), last, "{rt}: the counter went on");
        std::fs::remove_dir_all(&images).unwrap();
        cd.task_rm(id);
        cd.remove(id);
        cd.assert_no_leaks();
    }
}

#[test]
fn a_process_criu_cannot_dump_fails_the_checkpoint_and_runs_on() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let id = "ckpt-undumpable";
        // An open misc device (loop-control): CRIU dumps no such fd.
        let script = format!("exec 3</dev/loop-control; {COUNTER}");
        cd.run_detached(
            id,
            &["--device", "/dev/loop-control"],
            &["sh", "-c", &script],
        );
        let before = count_passes(&cd, id, 2);
        let out = cd.ctr(&["task", "checkpoint", id]);
        assert!(!out.status.success(), "{rt}: the checkpoint passed");
        if rt == PELAGOS_RUNTIME {
            // runc's shim says only "criu failed: type NOTIFY errno 0"; CRIU's own reason here.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("criu dump failed") && err.contains("Can't dump file"),
                "{rt}: {}",
                describe(&out)
            );
        }
        assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"), "{rt}");
        count_passes(&cd, id, before + 3);
        assert!(checkpoint_images(&cd).is_empty(), "{rt}");
        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        wait_status(&cd, id, "STOPPED");
        cd.task_rm(id);
        cd.remove(id);
        cd.assert_no_leaks();
    }
}

/// `pelagos checkpoint` beside `runc checkpoint`: the same flags, the same outcome.
#[test]
fn cli_checkpoint_leaves_running_or_ends_like_runc() {
    require_criu();
    for bin in [env!("CARGO_BIN_EXE_pelagos"), "runc"] {
        let root = PathBuf::from(format!("/run/{}", unique_id("criu-cli")));
        let b = Bundle::new()
            .readonly_root(false)
            .args(&["sh", "-c", COUNTER]);
        let id = unique_id("ckpt-cli");
        let run = |args: &[&str]| {
            let log = std::fs::File::create(b.path().join("out.log")).unwrap();
            let out = Command::new(bin)
                .arg("--root")
                .arg(&root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .status()
                .expect("spawn the runtime");
            let log = std::fs::read_to_string(b.path().join("out.log")).unwrap_or_default();
            (out.success(), log)
        };
        let ok = |args: &[&str]| {
            let (ok, log) = run(args);
            assert!(ok, "{bin} {args:?}: {log}");
        };
        let status = || {
            let out = Command::new(bin)
                .arg("--root")
                .arg(&root)
                .args(["state", &id])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["status"].as_str().unwrap_or_default().to_owned()
        };
        let count = || {
            std::fs::read_to_string(b.rootfs().join("tmp/count"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let passes = |above: u64| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(n) = count().filter(|&n| n > above) {
                    return n;
                }
                assert!(
                    Instant::now() < deadline,
                    "{bin}: counter stuck at {:?}",
                    count()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        cli_create_with_pipes(bin, &root, b.path(), &id);
        ok(&["start", &id]);
        let before = passes(2);

        let leave = b.path().join("images-leave");
        let leave_s = leave.to_str().unwrap();
        ok(&[
            "checkpoint",
            "--leave-running",
            "--image-path",
            leave_s,
            &id,
        ]);
        assert!(leave.join("inventory.img").is_file(), "{bin}: no images");
        assert_eq!(status(), "running", "{bin}");
        passes(before + 3);

        let exit = b.path().join("images-exit");
        ok(&["checkpoint", "--image-path", exit.to_str().unwrap(), &id]);
        assert!(exit.join("inventory.img").is_file(), "{bin}: no images");
        // runc deletes a container it checkpointed without --leave-running.
        let (found, log) = run(&["state", &id]);
        assert!(!found, "{bin}: the container is still there: {log}");
        let last = count();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(), last, "{bin}: the counter went on");

        // Restore into a new id: the counter goes on from where it was, never from 1 again.
        let restored = unique_id("ckpt-restored");
        let last = last.expect("a count before the dump");
        let mut child = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args([
                "restore",
                "--detach",
                "--bundle",
                b.path().to_str().unwrap(),
            ])
            .args(["--image-path", exit.to_str().unwrap(), &restored])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the runtime");
        let out = child.wait().unwrap();
        let restore_log = std::fs::read_to_string(exit.join("restore.log")).unwrap_or_default();
        let tail: Vec<&str> = restore_log
            .lines()
            .filter(|l| l.contains("Error"))
            .collect();
        assert!(out.success(), "{bin} restore: {out}: {tail:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = count().expect("the count file");
            assert!(
                n >= last,
                "{bin}: the restored counter started over ({n} < {last})"
            );
            if n > last + 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{bin}: restored counter stuck at {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dumped once more and restored in the foreground: the runtime waits for the
        // container, deletes it and exits with its status.
        let again = b.path().join("images-again");
        let again_s = again.to_str().unwrap();
        ok(&["checkpoint", "--image-path", again_s, &restored]);
        let dumped = count().expect("the count file");
        let mut child = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args(["restore", "--bundle", b.path().to_str().unwrap()])
            .args(["--image-path", again_s, &restored])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the runtime");
        passes(dumped + 3);
        ok(&["kill", &restored, "KILL"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{bin}: the foreground restore did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(137), "{bin}: foreground restore");
        let (exists, log) = run(&["state", &restored]);
        assert!(!exists, "{bin}: the container is still there: {log}");
        let cgroup = b.cgroup_path().expect("the bundle names its cgroup");
        let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(cgroup.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect();
        assert!(left.is_empty(), "{bin}: cgroups left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// `pelagos checkpoint --pre-dump` beside `runc checkpoint --pre-dump`: memory only, the
/// container runs on; `--parent-path` bases the next dump on it. Both need CRIU's memory
/// dirty tracking: where the kernel lacks it (this project's machines), both runtimes fail the
/// pre-dump and leave the container running.
#[test]
fn cli_pre_dump_like_runc() {
    require_criu();
    let tracking = Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .is_ok_and(|o| o.status.success());
    for bin in [env!("CARGO_BIN_EXE_pelagos"), "runc"] {
        let root = PathBuf::from(format!("/run/{}", unique_id("criu-pre")));
        let b = Bundle::new()
            .readonly_root(false)
            .args(&["sh", "-c", COUNTER]);
        let id = unique_id("ckpt-pre");
        let run = |args: &[&str]| {
            let out = Command::new(bin)
                .arg("--root")
                .arg(&root)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("spawn the runtime");
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            (out.status.success(), text)
        };
        let status = || {
            let (_, text) = run(&["state", &id]);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            v["status"].as_str().unwrap_or_default().to_owned()
        };
        let count = || {
            std::fs::read_to_string(b.rootfs().join("tmp/count"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let passes = |above: u64| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(n) = count().filter(|&n| n > above) {
                    return n;
                }
                assert!(Instant::now() < deadline, "{bin}: counter at {:?}", count());
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        cli_create_with_pipes(bin, &root, b.path(), &id);
        let (ok, text) = run(&["start", &id]);
        assert!(ok, "{bin} start: {text}");
        let before = passes(2);

        let pre = b.path().join("images-pre");
        let final_dir = b.path().join("images-final");
        let (ok, text) = run(&[
            "checkpoint",
            "--pre-dump",
            "--image-path",
            pre.to_str().unwrap(),
            &id,
        ]);
        if tracking {
            assert!(ok, "{bin} checkpoint --pre-dump: {text}");
            let (ok, text) = run(&[
                "checkpoint",
                "--parent-path",
                "../images-pre",
                "--image-path",
                final_dir.to_str().unwrap(),
                &id,
            ]);
            assert!(ok, "{bin} checkpoint --parent-path: {text}");
            let (found, _) = run(&["state", &id]);
            assert!(!found, "{bin}: the container outlived its dump");
        } else {
            assert!(
                !ok,
                "{bin}: a pre-dump passed without memory dirty tracking"
            );
            if bin != "runc" {
                assert!(
                    text.contains("pre-dump") && text.contains("mem_dirty_track"),
                    "{bin}: the error does not name what is missing: {text}"
                );
            }
        }
        if !tracking {
            // The failed pre-dump left the container running, counting on.
            assert_eq!(status(), "running", "{bin}: after the failed pre-dump");
            passes(before + 3);
            let (ok, text) = run(&["delete", "--force", &id]);
            assert!(ok, "{bin} delete: {text}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// `--systemd-cgroup restore` beside runc's: the dump is restored into a transient scope (the
/// one the bundle's `slice:prefix:name` names), active while the container runs, stopped by
/// delete. Only where systemd is PID 1 (the systemd VM).
#[test]
fn cli_restore_with_the_systemd_driver_like_runc() {
    if !pelagos::cgroups::systemd_booted() {
        return;
    }
    require_criu();
    let top = unique_id("pc").replace('-', "_");
    let show = |unit: &str| {
        common::containerd::systemctl(&["show", "-p", "ActiveState", "--value", unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    for (i, bin) in [env!("CARGO_BIN_EXE_pelagos"), "runc"]
        .into_iter()
        .enumerate()
    {
        let root = PathBuf::from(format!("/run/{}", unique_id("criu-sd")));
        let id = format!("{top}-{i}");
        let unit = format!("sd-{id}.scope");
        let path = format!("/{top}.slice/{unit}");
        let b = Bundle::new()
            .readonly_root(false)
            .cgroups_path(&format!("{top}.slice:sd:{id}"))
            .args(&["sh", "-c", COUNTER]);
        let bundle = b.path().to_str().unwrap().to_owned();
        // Pipes for stdio (see cli_checkpoint_leaves_running_or_ends_like_runc), never read:
        // create's and restore's are the container's, held open past the runtime's exit.
        let log = b.path().join("runtime.log");
        let try_run = |args: &[&str]| {
            Command::new(bin)
                .arg("--root")
                .arg(&root)
                .arg("--log")
                .arg(&log)
                .arg("--systemd-cgroup")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the runtime")
                .wait()
                .unwrap()
                .success()
        };
        let run = |args: &[&str]| {
            let status = Command::new(bin)
                .arg("--root")
                .arg(&root)
                .arg("--log")
                .arg(&log)
                .arg("--systemd-cgroup")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the runtime")
                .wait()
                .unwrap();
            assert!(
                status.success(),
                "{bin} {args:?}: {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let count = || {
            std::fs::read_to_string(b.rootfs().join("tmp/count"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let passes = |above: u64| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(n) = count().filter(|&n| n > above) {
                    return n;
                }
                assert!(Instant::now() < deadline, "{bin}: counter at {:?}", count());
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        run(&["create", "--bundle", &bundle, &id]);
        run(&["start", &id]);
        passes(2);
        let images = b.path().join("images");
        run(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
        let dumped = count().expect("a count before the dump");
        let restored = format!("{id}-r");
        // A failed restore leaves no scope behind.
        let empty = b.path().join("no-images");
        std::fs::create_dir(&empty).unwrap();
        let args = ["restore", "--detach", "--bundle", &bundle, "--image-path"];
        assert!(
            !try_run(&[&args[..], &[empty.to_str().unwrap(), &restored]].concat()),
            "{bin}: restored from an empty dir"
        );
        assert_eq!(
            show(&unit),
            "inactive",
            "{bin}: {unit} after a failed restore"
        );
        run(&[
            "restore",
            "--detach",
            "--bundle",
            &bundle,
            "--image-path",
            images.to_str().unwrap(),
            &restored,
        ]);
        passes(dumped + 3);
        assert_eq!(show(&unit), "active", "{bin}: {unit}");
        let state = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args(["state", &restored])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap_or_default();
        let pid = v["pid"].as_i64().expect("the restored pid");
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            own.lines().any(|l| l.ends_with(&path)),
            "{bin}: the restored init is not in {path}: {own}"
        );
        run(&["delete", "--force", &restored]);
        assert_eq!(show(&unit), "inactive", "{bin}: {unit} after delete");
        let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(path.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect();
        assert!(left.is_empty(), "{bin}: left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
    let _ = common::containerd::systemctl(&["stop", &format!("{top}.slice")]);
}

/// `ctr containers restore --live`: the checkpoint image becomes a new container whose task is
/// restored at Start; the counter goes on from where the dump left it. The restored container
/// keeps its memory limit and its OOM kills are reported like any container's (`/tasks/oom`).
#[test]
fn restore_into_a_new_container_goes_on_counting() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let mut events = cd.events();
        let id = "ckpt-src";
        // fd 3 stays open on /tmp/log across the dump: the restored shell writes on through it.
        let script =
            format!("exec 3>>/tmp/log; while true; do echo x >&3; sleep 0.05; done & {COUNTER}");
        let limit = (48u64 << 20).to_string();
        let mut opts = vec!["--memory-limit", &limit];
        // The runtime options (kept in the checkpoint, so the restore's too) name CRIU's work
        // dir; ctr can only send them to a runtime not named runc.
        let work = cd.root_dir().join("criu-work");
        let config = cd.root_dir().join("criu-work.toml");
        std::fs::write(
            &config,
            format!(
                "{}CriuWorkPath = {:?}\n",
                common::containerd::systemd_options(),
                work.display()
            ),
        )
        .unwrap();
        if rt == PELAGOS_RUNTIME {
            opts.extend(["--runtime-config-path", config.to_str().unwrap()]);
        }
        cd.run_detached(id, &opts, &["sh", "-c", &script]);
        // The dump holds a count of at least this; the source counts on until it is killed.
        let before = count_passes(&cd, id, 2);
        // ctr's pair: `containers checkpoint` records the image and the rw layer that
        // `containers restore` needs (a `task checkpoint` image lacks the image's name).
        let image = "localhost/pelagos-test/ckpt-src:1";
        let out = cd.ctr(&[
            "containers",
            "checkpoint",
            "--task",
            "--rw",
            "--image",
            id,
            image,
        ]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        wait_status(&cd, id, "STOPPED");
        cd.task_rm(id);
        cd.remove(id);

        let restored = "ckpt-restored";
        let out = cd.ctr(&["containers", "restore", "--live", "--rw", restored, image]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        wait_status(&cd, restored, "RUNNING");
        if common::containerd::systemd_driver() {
            // Restored into an active scope in the test's slice, as created tasks are; delete
            // stops it (the harness's leak check looks for units). The scope is named after the
            // checkpoint's spec (its cgroupsPath names the source container), for both shims.
            let (pid, _) = cd.task(restored).expect("the restored task");
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let path = cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or_default()
                .to_owned();
            let unit = path.rsplit('/').next().unwrap_or_default();
            assert!(
                path.starts_with(&format!("/{}/", cd.slice())) && unit.ends_with(".scope"),
                "{rt}: the restored task is in {path}, not a scope of {}",
                cd.slice()
            );
            let state =
                common::containerd::systemctl(&["show", "-p", "ActiveState", "--value", unit])
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
            assert_eq!(state.as_deref(), Some("active"), "{rt}: {unit}");
        }
        if rt == PELAGOS_RUNTIME {
            assert!(
                work.join("restore.log").is_file(),
                "{rt}: no restore.log in the options' CriuWorkPath {}",
                work.display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(n) = read_count(&cd, restored) {
                assert!(
                    n >= before,
                    "{rt}: the restored counter started over ({n} < {before})"
                );
                if n > before + 3 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{rt}: restored counter: {:?}",
                read_count(&cd, restored)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = cd.bundle_dir(restored).join("rootfs/tmp/log");
        let lines = || {
            std::fs::read_to_string(&log)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        let seen = lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines() <= seen + 3 {
            assert!(
                Instant::now() < deadline,
                "{rt}: nothing written through the restored fd 3"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // dd's 256 MiB buffer is filled by read(2), far past the limit.
        let out = cd.exec(
            restored,
            "hog",
            &[],
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        );
        assert_eq!(out.status.code(), Some(137), "{rt}: {}", describe(&out));
        let oom = events.wait_for(common::containerd::CTR_TIMEOUT, |e| {
            e.topic == "/tasks/oom" && e.container_id() == Some(restored)
        });
        assert!(
            oom.is_some(),
            "{rt}: no /tasks/oom for the restored container: {:?}",
            events.task_topics(restored)
        );
        cd.ctr_ok(&["task", "kill", "-s", "KILL", "--all", restored]);
        wait_status(&cd, restored, "STOPPED");
        cd.task_rm(restored);
        cd.remove(restored);
        cd.ctr_ok(&["image", "rm", image]);
        cd.assert_no_leaks();
    }
}

/// A container that joins another's network, IPC, UTS and pid namespaces (as a pod's
/// containers join its sandbox's) is restored into those same namespaces and counts on.
#[test]
fn restore_into_joined_namespaces() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let holder = "ckpt-ns-holder";
        // The holder reaps what is orphaned into its pid namespace, as a pod's pause does: the
        // restore takes back the dumped pids, which zombies would still hold.
        cd.run_detached(
            holder,
            &[],
            &["sh", "-c", "while :; do sleep 1 & wait; done"],
        );
        let hpid = cd.task_pid(holder);
        let ns = |pid: u32, kind: &str| {
            std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                .unwrap_or_else(|e| panic!("{rt}: /proc/{pid}/ns/{kind}: {e}"))
        };
        let kinds = [
            ("network", "net"),
            ("ipc", "ipc"),
            ("uts", "uts"),
            ("pid", "pid"),
        ];
        let with_ns: Vec<String> = kinds
            .iter()
            .map(|(opt, kind)| format!("{opt}:/proc/{hpid}/ns/{kind}"))
            .collect();
        let mut opts: Vec<&str> = Vec::new();
        for w in &with_ns {
            opts.extend(["--with-ns", w]);
        }
        let id = "ckpt-ns-src";
        cd.run_detached(id, &opts, &["sh", "-c", COUNTER]);
        for (_, kind) in kinds {
            assert_eq!(ns(cd.task_pid(id), kind), ns(hpid, kind), "{rt}: {kind}");
        }
        let before = count_passes(&cd, id, 2);
        let image = "localhost/pelagos-test/ckpt-ns:1";
        let out = cd.ctr(&[
            "containers",
            "checkpoint",
            "--task",
            "--rw",
            "--image",
            id,
            image,
        ]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        wait_status(&cd, id, "STOPPED");
        cd.task_rm(id);
        cd.remove(id);
        let children = || {
            std::fs::read_to_string(format!("/proc/{hpid}/task/{hpid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while children() > 1 {
            assert!(Instant::now() < deadline, "{rt}: the holder reaps nothing");
            std::thread::sleep(Duration::from_millis(50));
        }

        let restored = "ckpt-ns-restored";
        let out = cd.ctr(&["containers", "restore", "--live", "--rw", restored, image]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        wait_status(&cd, restored, "RUNNING");
        let rpid = cd.task_pid(restored);
        for (_, kind) in kinds {
            assert_eq!(ns(rpid, kind), ns(hpid, kind), "{rt}: restored {kind}");
        }
        let n = count_passes(&cd, restored, 0);
        assert!(
            n >= before,
            "{rt}: the restored counter started over ({n} < {before})"
        );
        count_passes(&cd, restored, n + 3);
        for c in [restored, holder] {
            cd.ctr_ok(&["task", "kill", "-s", "KILL", "--all", c]);
            wait_status(&cd, c, "STOPPED");
            cd.task_rm(c);
            cd.remove(c);
        }
        cd.ctr_ok(&["image", "rm", image]);
        cd.assert_no_leaks();
    }
}

/// A shim that finds no CRIU fails Task.Checkpoint naming it; the container runs on and the
/// dump leaves nothing (no image, no work dir in the bundle).
#[test]
fn shim_checkpoint_without_criu_fails_clearly_and_runs_on() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        cd.restart_without_usr_local();
        let id = "ckpt-nocriu";
        cd.run_detached(id, &[], &["sh", "-c", COUNTER]);
        let before = count_passes(&cd, id, 2);
        let out = cd.ctr(&["task", "checkpoint", id]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{rt}: the checkpoint passed");
        assert!(err.contains("criu"), "{rt}: {err}");
        if rt == PELAGOS_RUNTIME {
            assert!(
                err.contains("criu not found") && err.contains("install-criu"),
                "{err}"
            );
        }
        assert!(checkpoint_images(&cd).is_empty(), "{rt}");
        assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"), "{rt}");
        count_passes(&cd, id, before + 3);
        let bundle = cd.bundle_dir(id);
        for left in ["criu-work", "work/criu-work", "criu-dump.log"] {
            assert!(
                !bundle.join(left).exists(),
                "{rt}: {left} left in the bundle"
            );
        }
        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        wait_status(&cd, id, "STOPPED");
        cd.task_rm(id);
        cd.remove(id);
        cd.assert_no_leaks();
    }
}

/// Reads `master` until `pred` holds for all read so far; panics naming `what` after 30 s.
fn read_pty_until(master: &std::fs::File, what: &str, pred: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    use std::os::fd::AsFd;
    let fl = nix::fcntl::fcntl(master.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(master.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while !pred(&out) {
        match (&*master).read(&mut buf) {
            Ok(n) if n > 0 => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("{what}: pty read {other:?} after {out:?}"),
        }
        assert!(Instant::now() < deadline, "{what}: {out:?}");
    }
    out
}

/// `pelagos restore --console-socket` of a container dumped with a terminal, beside runc's:
/// the new pty's master comes to the socket, the counter goes on there and input reaches it.
#[test]
fn cli_restore_with_a_console_socket_like_runc() {
    require_criu();
    let script = "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; echo tick-$i; \
                  sleep 0.05; done) & while read l; do echo got-$l; done";
    for bin in [env!("CARGO_BIN_EXE_pelagos"), "runc"] {
        let root = PathBuf::from(format!("/run/{}", unique_id("criu-tty")));
        let b = Bundle::new()
            .readonly_root(false)
            .terminal(true)
            .args(&["sh", "-c", script]);
        let id = unique_id("ckpt-tty-cli");
        let sock = b.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let sock = sock.to_str().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(bin)
                .arg("--root")
                .arg(&root)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("spawn the runtime");
            assert!(
                out.status.success(),
                "{bin} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let bundle = b.path().to_str().unwrap();
        run(&["create", "--bundle", bundle, "--console-socket", sock, &id]);
        let master = std::fs::File::from(common::bundle::receive_master(&listener));
        run(&["start", &id]);
        read_pty_until(&master, bin, |o| o.contains("tick-3"));
        let before: u64 = std::fs::read_to_string(b.rootfs().join("tmp/count"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let images = b.path().join("images");
        run(&[
            "checkpoint",
            "--shell-job",
            "--image-path",
            images.to_str().unwrap(),
            &id,
        ]);
        drop(master);
        run(&[
            "restore",
            "--detach",
            "--bundle",
            bundle,
            "--console-socket",
            sock,
            "--image-path",
            images.to_str().unwrap(),
            &id,
        ]);
        let mut master = std::fs::File::from(common::bundle::receive_master(&listener));
        let ticks = |o: &str| -> Vec<u64> {
            o.lines()
                .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
                .collect()
        };
        let out = read_pty_until(&master, bin, |o| ticks(o).len() > 3);
        assert!(
            ticks(&out)[0] >= before,
            "{bin}: the restored counter started over: {out:?} (dumped at {before} or later)"
        );
        std::io::Write::write_all(&mut master, b"two\n").unwrap();
        read_pty_until(&master, bin, |o| o.contains("got-two"));
        run(&["delete", "--force", &id]);
        let cgroup = b.cgroup_path().expect("the bundle names its cgroup");
        let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(cgroup.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect();
        assert!(left.is_empty(), "{bin}: cgroups left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Without CRIU a checkpoint fails naming it, and the container runs on (runc's `--criu` is
/// a global flag, pelagos' a flag of the command).
#[test]
fn cli_checkpoint_without_criu_fails_clearly_and_runs_on() {
    require_criu();
    for bin in [env!("CARGO_BIN_EXE_pelagos"), "runc"] {
        let root = PathBuf::from(format!("/run/{}", unique_id("criu-cli")));
        let b = Bundle::new()
            .readonly_root(false)
            .args(&["sh", "-c", COUNTER]);
        let id = unique_id("ckpt-nocriu");
        let cmd = || {
            let mut c = Command::new(bin);
            c.arg("--root").arg(&root);
            c
        };
        let created = cmd()
            .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the runtime")
            .wait()
            .unwrap();
        assert!(created.success(), "{bin} create: {created}");
        assert!(cmd().args(["start", &id]).status().unwrap().success());
        let images = b.path().join("images");
        let missing = "/nonexistent/criu";
        let mut c = cmd();
        if bin == "runc" {
            c.args(["--criu", missing, "checkpoint"]);
        } else {
            c.args(["checkpoint", "--criu", missing]);
        }
        let out = c
            .args(["--image-path", images.to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}: the checkpoint passed");
        assert!(err.contains("criu"), "{bin}: {err}");
        if bin != "runc" {
            assert!(
                err.contains(missing) && err.contains("install-criu"),
                "{err}"
            );
        }
        let state = cmd().args(["state", &id]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap_or_default();
        assert_eq!(v["status"], "running", "{bin}: after the failed checkpoint");
        assert!(cmd()
            .args(["delete", "--force", &id])
            .status()
            .unwrap()
            .success());
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// The console's slave is in the container, its master with the shim: dumped as CRIU's one
/// external tty peer (runc's shim checkpoints it too).
#[test]
fn checkpoint_of_a_container_with_a_pty() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let id = "ckpt-pty";
        let args = cd.run_args(&["--rm", "-t"], id, &[], &["sh", "-c", COUNTER]);
        let pty = cd.spawn_ctr_on_pty(&args, 24, 80);
        let before = count_passes(&cd, id, 2);
        let out = cd.ctr(&["task", "checkpoint", id]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        assert_eq!(checkpoint_images(&cd).len(), 1, "{rt}");
        assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"), "{rt}");
        count_passes(&cd, id, before + 3);
        cd.ctr_ok(&["task", "kill", "-s", "KILL", id]);
        let (status, out) = pty.wait(common::containerd::CTR_TIMEOUT);
        assert!(status.is_some(), "{rt}: ctr run did not end: {out}");
        remove_images(&cd);
        cd.assert_no_leaks();
    }
}

/// A container on a terminal checkpointed and restored into a new container on a new terminal
/// (`ctr containers restore --live` on a pty): the restored shell goes on counting where the
/// dump left it, its output reaches the new terminal and what is typed there reaches it.
/// containerd 1.6's ctr asks for no terminal on restore, and both refuse.
#[test]
fn restore_with_a_terminal_goes_on_on_the_new_pty() {
    for rt in RUNTIMES {
        let cd = containerd(rt);
        let id = "ckpt-tty-src";
        let script = format!(
            "({COUNTER}) & while read l; do echo got-$l; done",
            COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; \
                mv /tmp/count.new /tmp/count; echo tick-$i; sleep 0.05; done"
        );
        let args = cd.run_args(&["-t"], id, &[], &["sh", "-c", &script]);
        let mut pty = cd.spawn_ctr_on_pty(&args, 24, 80);
        let before = count_passes(&cd, id, 2);
        pty.write(b"one\n");
        assert!(
            pty.expect(Duration::from_secs(30), |o| o.contains("got-one")),
            "{rt}: the source's terminal: {}",
            pty.output()
        );
        let image = "localhost/pelagos-test/ckpt-tty:1";
        let out = cd.ctr(&[
            "containers",
            "checkpoint",
            "--task",
            "--rw",
            "--image",
            id,
            image,
        ]);
        assert!(out.status.success(), "{rt}: {}", describe(&out));
        cd.ctr_ok(&["task", "kill", "-s", "KILL", "--all", id]);
        let (status, out) = pty.wait(common::containerd::CTR_TIMEOUT);
        assert!(status.is_some(), "{rt}: ctr run did not end: {out}");
        cd.remove(id);

        let restored = "ckpt-tty-restored";
        let mut cmd = cd.ctr_command();
        cmd.args(["containers", "restore", "--live", "--rw", restored, image]);
        let mut pty = common::containerd::PtyChild::spawn(cmd, 24, 80);
        if cd.major() < 2 {
            // containerd 1.6's ctr restores with plain stdio (no terminal asked for): both
            // refuse a dump whose init had one.
            let want = match rt {
                RUNC_RUNTIME => "cannot allocate tty if runc will detach",
                _ => "the checkpoint's init has a terminal (/dev/pts/0): restore it with one",
            };
            let (status, out) = pty.wait(common::containerd::CTR_TIMEOUT);
            assert!(
                status.is_some_and(|s| !s.success()) && out.contains(want),
                "{rt} on 1.6: {status:?} {out}"
            );
            let out = cd.ctr(&["task", "rm", restored]);
            assert!(out.status.success(), "{rt}: {}", describe(&out));
            cd.remove(restored);
            cd.ctr_ok(&["image", "rm", image]);
            cd.assert_no_leaks();
            continue;
        }
        let ticks_from = |o: &str| -> Vec<u64> {
            o.lines()
                .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
                .collect()
        };
        assert!(
            pty.expect(Duration::from_secs(30), |o| ticks_from(o).len() > 3),
            "{rt}: no ticks on the restored terminal: {:?} (task {:?})",
            pty.output(),
            cd.task_status(restored)
        );
        let first = ticks_from(&pty.output())[0];
        assert!(
            first >= before,
            "{rt}: the restored counter started over ({first} < {before})"
        );
        pty.write(b"two\n");
        assert!(
            pty.expect(Duration::from_secs(30), |o| o.contains("got-two")),
            "{rt}: input on the restored terminal: {}",
            pty.output()
        );
        cd.ctr_ok(&["task", "kill", "-s", "KILL", "--all", restored]);
        let (status, out) = pty.wait(common::containerd::CTR_TIMEOUT);
        assert!(status.is_some(), "{rt}: ctr restore did not end: {out}");
        cd.remove(restored);
        cd.ctr_ok(&["image", "rm", image]);
        cd.assert_no_leaks();
    }
}

/// CRI's CheckpointContainer on containerd 2.1 (what kubelet's checkpoint API calls): the
/// archive kubelet expects, the container running on. CRI's restore (CreateContainer from that
/// archive) is not driven, for either shim: containerd pulls the checkpoint's base image from a
/// registry, which these machines cannot reach; the restore itself is the one
/// `restore_into_joined_namespaces` makes of a pod's container through ctr.
fn cri_checkpoint_container(handler: &str) {
    use common::cri::Cri;
    use k8s_cri::v1::CheckpointContainerRequest;
    require_criu();
    let cri = Cri::start_on("2.1", handler, true, |_, _| String::new());
    let pod = cri.pod_config("ckpt");
    let pod_id = cri.run_pod_ok(&pod);
    let app = Cri::container_config("counter", &["sh", "-c", COUNTER]);
    let id = cri.run_container(&pod_id, &pod, &app);
    let count = || {
        cri.exec_ok(&id, &["sh", "-c", "cat /tmp/count 2>/dev/null || echo 0"])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < 3 {
        assert!(
            Instant::now() < deadline,
            "{handler}: the counter did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let archive = std::env::temp_dir()
        .join(unique_id("cri-checkpoint"))
        .with_extension("tar");
    cri.block(cri.rs().checkpoint_container(CheckpointContainerRequest {
        container_id: id.clone(),
        location: archive.to_string_lossy().into_owned(),
        timeout: 0,
    }))
    .unwrap_or_else(|e| panic!("{handler}: CheckpointContainer: {e}"));
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout).into_owned();
    for want in ["checkpoint/inventory.img", "config.dump", "spec.dump"] {
        assert!(
            names.lines().any(|l| l.trim_start_matches("./") == want),
            "{handler}: {want} not in the archive: {names}"
        );
    }
    let before = count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() <= before + 3 {
        assert!(Instant::now() < deadline, "{handler}: the counter stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&archive);
    cri.stop_container(&id, 0);
    cri.remove_container(&id);
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

pelagos_and_runc!(cri_checkpoint_container);

/// `<bin> create` of `bundle` as `id` with pipes for stdio: a host file (/dev/null, a log) is
/// on a mount outside the container, which CRIU refuses to dump (runc's too).
fn cli_create_with_pipes(bin: &str, root: &std::path::Path, bundle: &std::path::Path, id: &str) {
    let created = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["create", "--bundle", bundle.to_str().unwrap(), id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the runtime")
        .wait()
        .unwrap();
    assert!(created.success(), "{bin} create: {created}");
}
