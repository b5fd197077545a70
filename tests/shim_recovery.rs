//! Crashes around a running container: containerd SIGKILLed and restarted (the shim and the
//! container live on, and an exit that happened meanwhile is still seen), and the shim SIGKILLed
//! (containerd cleans up and the id can be used again).

mod common;

use std::time::{Duration, Instant};

use common::containerd::{describe, stdout, wait_pid_gone, Containerd};

#[test]
fn containerd_restart_keeps_the_task() {
    let cd = Containerd::start();
    cd.run_detached("live", &[], &["sleep", "1000"]);
    let pid = cd.task_pid("live");
    cd.kill9();
    cd.restart();
    assert_eq!(cd.task("live"), Some((pid, "RUNNING".to_owned())));
    let out = cd.exec("live", "after", &[], &["echo", "reconnected"]);
    assert_eq!(stdout(&out), "reconnected\n", "{}", describe(&out));
    let mut events = cd.events();
    cd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "live"]);
    let exit = events.wait_topic("/tasks/exit", "live", Some("live"));
    assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
    cd.remove("live");
    cd.assert_no_leaks();
}

#[test]
fn exit_while_containerd_is_down_is_seen_after_restart() {
    let cd = Containerd::start();
    cd.run_detached("gone", &[], &["sleep", "1000"]);
    let pid = cd.task_pid("gone") as i32;
    cd.kill9();
    // SAFETY: kill(2) of the container init this test started through containerd.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(wait_pid_gone(pid, Instant::now() + Duration::from_secs(30)));
    cd.restart();
    match cd.task_status("gone").as_deref() {
        // containerd 1.6 reloads the shim and shows the exit the shim kept.
        Some("STOPPED") => assert_eq!(cd.task_rm("gone"), 137),
        // 1.7 and 2.x find the init dead at reload ("cleaning leaked shim process") and delete
        // the task themselves, through the shim's `delete` action.
        None if cd.version != "1.6" => {}
        other => panic!("task after restart: {other:?}\n{}", cd.log_tail(40)),
    }
    cd.ctr_ok(&["containers", "rm", "gone"]);
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

#[test]
fn killed_shim_is_cleaned_up_and_the_id_reused() {
    let cd = Containerd::start();
    cd.run_detached("victim", &[], &["sleep", "1000"]);
    let init = cd.task_pid("victim") as i32;
    let shims = cd.shim_pids();
    assert!(!shims.is_empty(), "no shim process found");
    let mut events = cd.events();
    for pid in &shims {
        // SAFETY: kill(2) of a shim of this test's private containerd.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let exit = events.wait_topic("/tasks/exit", "victim", Some("victim"));
    assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
    events.wait_topic("/tasks/delete", "victim", None);
    // The shim's `delete` action ended the container's processes.
    assert!(
        wait_pid_gone(init, Instant::now() + Duration::from_secs(30)),
        "container init {init} survived its shim"
    );
    assert_eq!(cd.task("victim"), None);
    cd.ctr_ok(&["containers", "rm", "victim"]);
    // `ctr run -d` leaves its fifo dir for the client that deletes the task; here containerd
    // deleted it.
    cd.clear_fifo_dirs();
    let out = cd.run("victim", &[], &["echo", "again"]);
    assert_eq!(stdout(&out), "again\n", "{}", describe(&out));
    cd.assert_no_leaks();
}
