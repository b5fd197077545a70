//! Faults in the middle of a Task call (issue 17, items 1-3): containerd or the shim SIGKILLed
//! while the shim is inside Create, Start, Exec or Delete, and an exec that exits while
//! containerd is down.
//!
//! How the fault lands inside the call: the pelagos shim has failpoints (shim/src/failpoint.rs),
//! off unless containerd's environment names a directory; the harness names one per containerd
//! and [`Containerd::failpoint`] drops a file there, on which the shim stops itself with SIGSTOP
//! on entering that call for that container. The test waits for the stop in /proc, kills its
//! victim, and lets the shim go on (SIGCONT) when containerd was the victim: the shim then
//! finishes the call for a client that is gone, the worst case for the state containerd finds
//! when it comes back. A stopped shim is what a preempted or swapped-out one looks like; no
//! timing is involved. runc's shim has no such points, so there is no control here.
//!
//! What must hold after each: the task is either there and usable or gone, and once the test
//! removes what is left, nothing leaks (no process, mount, cgroup, socket, state) and the id
//! runs again.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::bundle::unique_id;
use common::containerd::{describe, testing_pelagos, wait_child_timeout, Containerd, CTR_TIMEOUT};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Containerd,
    Shim,
}

/// The state letter of `pid` (field 3 of /proc/<pid>/stat).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The shim of `cd` that stopped at a failpoint.
fn stopped_shim(cd: &Containerd) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = cd.shim_pids().into_iter().find(|&p| state(p) == Some('T')) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no shim stopped at the failpoint; containerd log:\n{}",
            cd.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a shim this test's containerd started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// Kills `victim` while `shim` is stopped inside a call and waits for the call's client.
fn strike(cd: &Containerd, shim: i32, victim: Victim, mut client: Child) {
    match victim {
        Victim::Containerd => {
            cd.kill9();
            signal(shim, libc::SIGCONT);
        }
        Victim::Shim => signal(shim, libc::SIGKILL),
    }
    if wait_child_timeout(&mut client, CTR_TIMEOUT).is_none() {
        let _ = client.kill();
        let _ = client.wait();
        panic!("the ctr client of the interrupted call hung");
    }
    if victim == Victim::Containerd {
        cd.restart();
    }
}

fn spawn_ctr(cd: &Containerd, args: &[String]) -> Child {
    let mut cmd = cd.ctr_command();
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawn ctr")
}

/// What is left of `id` after the fault is either a task that works or nothing; then it goes,
/// nothing leaks, and the id runs again.
fn settle(cd: &Containerd, id: &str, what: &str) {
    let found = cd.task(id);
    println!("{what}: after the fault the task is {found:?}");
    match found {
        Some((pid, status)) if status == "RUNNING" => {
            assert!(pid > 0, "{what}: running task without a pid");
            let out = cd.exec(id, "after", &[], &["true"]);
            assert!(
                out.status.success(),
                "{what}: exec into the survivor: {}",
                describe(&out)
            );
        }
        Some((_, status)) => {
            assert!(
                status == "CREATED" || status == "STOPPED",
                "{what}: task left {status}"
            );
        }
        None => {}
    }
    if cd.task(id).is_some() {
        cd.ctr_ok(&["task", "rm", "-f", id]);
    }
    // ctr leaves the fifo dir of a call that failed under it; that is ctr's, not a leak here.
    cd.clear_fifo_dirs();
    let out = cd.ctr(&["containers", "rm", id]);
    assert!(
        out.status.success(),
        "{what}: containers rm: {}",
        describe(&out)
    );
    no_leaks_soon(cd, what);
    let out = cd.run(id, &[], &["sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{what}: the id again: {}",
        describe(&out)
    );
    cd.assert_no_leaks();
}

/// No leak, allowing for a shim left empty whose next call died with containerd (the Shutdown
/// after a Delete or a failed Create): it exits on its own after `ORPHAN_AFTER` (10 s,
/// shim/src/service.rs) and containerd then cleans its bundle up.
fn no_leaks_soon(cd: &Containerd, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaks = cd.leaks();
        if leaks.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: leaks:\n  {}",
            leaks.join("\n  ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fault while the shim is inside Create of a new container (its own shim).
fn during_create(victim: Victim) {
    let cd = Containerd::start();
    let id = unique_id("mid-create");
    cd.failpoint("Create", &id, "");
    let client = spawn_ctr(&cd, &cd.run_args(&["-d"], &id, &[], &["sleep", "1000"]));
    let shim = stopped_shim(&cd);
    strike(&cd, shim, victim, client);
    settle(&cd, &id, &format!("{victim:?} killed during Create"));
}

/// The fault inside Start of the init, after a Create that went through.
fn during_start(victim: Victim) {
    let cd = Containerd::start();
    let id = unique_id("mid-start");
    cd.failpoint("Start", &id, "");
    let client = spawn_ctr(&cd, &cd.run_args(&["-d"], &id, &[], &["sleep", "1000"]));
    let shim = stopped_shim(&cd);
    strike(&cd, shim, victim, client);
    settle(&cd, &id, &format!("{victim:?} killed during Start"));
}

/// The fault inside Exec (the call that registers an exec) of a running container.
fn during_exec(victim: Victim) {
    let cd = Containerd::start();
    let id = unique_id("mid-exec");
    cd.run_detached(&id, &[], &["sleep", "1000"]);
    cd.failpoint("Exec", &id, "e1");
    let client = spawn_ctr(&cd, &cd.exec_args(&id, "e1", &[], &["sh", "-c", "exit 4"]));
    let shim = stopped_shim(&cd);
    strike(&cd, shim, victim, client);
    if victim == Victim::Containerd {
        // The container is untouched: still running, with no process of the half-made exec.
        assert_eq!(cd.task_status(&id).as_deref(), Some("RUNNING"));
        let ps = cd.ctr_ok(&["task", "ps", &id]);
        assert_eq!(ps.lines().count(), 2, "processes besides the init: {ps}");
    }
    settle(&cd, &id, &format!("{victim:?} killed during Exec"));
}

/// The fault inside Delete of a stopped init.
fn during_delete(victim: Victim) {
    let cd = Containerd::start();
    let id = unique_id("mid-delete");
    cd.run_detached(&id, &[], &["sh", "-c", "exit 5"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cd.task_status(&id).as_deref() != Some("STOPPED") {
        assert!(Instant::now() < deadline, "the init did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    cd.failpoint("Delete", &id, "");
    let client = spawn_ctr(&cd, &["task".into(), "rm".into(), id.clone()]);
    let shim = stopped_shim(&cd);
    strike(&cd, shim, victim, client);
    settle(&cd, &id, &format!("{victim:?} killed during Delete"));
}

macro_rules! midflight {
    ($($name:ident: $f:ident($victim:ident);)*) => {$(
        #[test]
        fn $name() {
            if !testing_pelagos() {
                println!("skipped: the failpoints are the pelagos shim's");
                return;
            }
            $f(Victim::$victim);
        }
    )*};
}

midflight! {
    containerd_killed_during_create: during_create(Containerd);
    shim_killed_during_create: during_create(Shim);
    containerd_killed_during_start: during_start(Containerd);
    shim_killed_during_start: during_start(Shim);
    containerd_killed_during_exec: during_exec(Containerd);
    shim_killed_during_exec: during_exec(Shim);
    containerd_killed_during_delete: during_delete(Containerd);
    shim_killed_during_delete: during_delete(Shim);
}

/// An exec that exits while containerd is down is reported after the restart: its /tasks/exit
/// with its status reaches containerd's subscribers (the shim keeps the event and retries).
/// The exec ends on a flag the test writes into the rootfs once containerd is dead; once it is
/// reaped, the shim's publisher is held (failpoint `Publish`) between its tries until a
/// subscriber is back, so the event cannot slip past it. The shim keeps answering meanwhile:
/// containerd's reload must find it responsive.
#[test]
fn exec_exit_while_containerd_is_down_is_reported() {
    let cd = Containerd::start();
    let id = unique_id("exec-down");
    cd.run_detached(&id, &[], &["sleep", "1000"]);
    let init = cd.task_pid(&id) as i32;
    cd.exec_detached(
        &id,
        "e1",
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7",
        ],
    );
    let exec_pid = cd
        .ctr_ok(&["task", "ps", &id])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse::<i32>().ok())
        .find(|&p| p != init)
        .expect("the exec's pid");
    cd.kill9();
    std::fs::write(cd.bundle_dir(&id).join("rootfs/tmp/go"), "").unwrap();
    // Gone from /proc once the shim has reaped it and queued its exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    assert!(
        common::containerd::wait_pid_gone(exec_pid, deadline),
        "the exec did not end"
    );
    cd.failpoint("Publish", &id, "");
    cd.restart();
    let mut events = cd.events();
    cd.release_failpoint("Publish", &id, "");
    let exit = events.wait_topic("/tasks/exit", &id, Some("e1"));
    assert_eq!(exit.exit_status(), Some(7), "{exit:?}");
    assert_eq!(cd.task_status(&id).as_deref(), Some("RUNNING"));
    cd.remove(&id);
    cd.assert_no_leaks();
}

/// The bundle turned read-only while the shim is inside Create (a bind mount over it, as a
/// filesystem remounted read-only would be): the container runs, or the run fails with a clear
/// error; either way nothing is left once the bundle is writable again (containerd's own
/// removal of the bundle needs that).
#[test]
fn bundle_read_only_during_create() {
    if !testing_pelagos() {
        println!("skipped: the failpoints are the pelagos shim's");
        return;
    }
    let cd = Containerd::start();
    let id = unique_id("mid-robundle");
    cd.failpoint("Create", &id, "");
    let argv = cd.run_args(&["-d"], &id, &[], &["sleep", "1000"]);
    let mut cmd = cd.ctr_command();
    cmd.args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let client = cmd.spawn().expect("spawn ctr run");
    let shim = stopped_shim(&cd);
    let bundle = cd.bundle_dir(&id);
    let b = bundle.to_str().unwrap();
    let mount = |args: &[&str]| {
        let ok = std::process::Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount {args:?}");
    };
    mount(&["--bind", b, b]);
    mount(&["-o", "remount,bind,ro", b]);
    signal(shim, libc::SIGCONT);
    let out = client.wait_with_output().expect("ctr run");
    let _ = std::process::Command::new("umount")
        .args(["-l", b])
        .status();
    if out.status.success() {
        assert_eq!(cd.task_status(&id).as_deref(), Some("RUNNING"));
        let out = cd.exec(&id, "e1", &[], &["true"]);
        assert!(out.status.success(), "{}", describe(&out));
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(b) || err.contains("read-only"),
            "unclear error: {err}"
        );
    }
    if cd.task(&id).is_some() {
        cd.ctr_ok(&["task", "rm", "-f", &id]);
    }
    let _ = cd.ctr(&["containers", "rm", &id]);
    cd.clear_fifo_dirs();
    no_leaks_soon(&cd, "read-only bundle during Create");
}
