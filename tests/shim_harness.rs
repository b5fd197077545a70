//! The test harness checks itself: the leak checker must see what a broken shim would leave.

mod common;

use common::containerd::Containerd;

#[test]
fn leak_checker_reports_what_is_left_running() {
    let cd = Containerd::start();
    cd.run_detached("left", &[], &["sleep", "1000"]);
    // No grace: these processes are meant to be running.
    let leaks = cd.leaks_within(std::time::Duration::ZERO).join("\n");
    for want in [
        "containers not deleted",
        "tasks not deleted",
        "cgroups left in",
    ] {
        assert!(leaks.contains(want), "leak check missed {want:?}:\n{leaks}");
    }
    if common::containerd::systemd_driver() {
        assert!(leaks.contains("systemd units left"), "{leaks}");
    }
    // The container's processes and its shim are reported too (each after a bounded wait).
    assert!(leaks.contains("container process"), "{leaks}");
    assert!(leaks.contains("shim process"), "{leaks}");
    // Drop tears it all down; a fresh check on a clean daemon finds nothing.
    drop(cd);
    let cd = Containerd::start();
    cd.assert_no_leaks();
}

#[test]
fn leak_checker_reports_a_mount_under_the_state_dir() {
    let cd = Containerd::start();
    let target = cd.state_dir().join("stray-mount");
    std::fs::create_dir_all(&target).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "stray", target.to_str().unwrap()])
        .status()
        .expect("run mount");
    assert!(status.success());
    let leaks = cd.leaks().join("\n");
    assert!(
        leaks.contains(&format!("mount left: {}", target.display())),
        "{leaks}"
    );
}
