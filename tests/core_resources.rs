//! Resource limits seen and enforced from inside a container (the core's cgroup tests check
//! the cgroup files from the host; these check what a containerised process meets).

mod common;

use common::bundle::{Bundle, TestRoot};
use serde_json::json;

/// The container's own memory limit as it reads it through its /sys/fs/cgroup mount.
const READ_MEMORY_LIMIT: &str = "cat /sys/fs/cgroup/memory.max 2>/dev/null \
    || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";

#[test]
fn memory_limit_is_visible_inside() {
    let root = TestRoot::new();
    let b = Bundle::new()
        .resources(json!({"memory": {"limit": 64 * 1024 * 1024}}))
        .namespace("cgroup", None)
        .args(&["sh", "-c", READ_MEMORY_LIMIT]);
    let out = root.run(&b);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), (64 * 1024 * 1024).to_string());
}

/// Starts six background sleeps, then waits for them.
fn fork_six(pids_limit: i64) -> common::bundle::Output {
    let b = Bundle::new()
        .resources(json!({"pids": {"limit": pids_limit}}))
        .args(&[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do sleep 1 & done; wait; echo done",
        ]);
    TestRoot::new().run(&b)
}

#[test]
fn pids_limit_stops_forks() {
    let roomy = fork_six(100);
    assert_eq!(
        (roomy.code, roomy.stdout.as_str()),
        (0, "done\n"),
        "stderr: {}",
        roomy.stderr
    );
    let tight = fork_six(4);
    assert_ne!(tight.stdout, "done\n", "six forks ran under pids.max=4");
    assert!(
        tight.stderr.contains("fork"),
        "expected a fork failure, stderr: {}",
        tight.stderr
    );
}
