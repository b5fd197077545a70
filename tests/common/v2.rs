//! Helpers of the tests that only mean something on a pure cgroup v2 host.

use std::path::{Path, PathBuf};

use pelagos::cgroups::{self, Mode};

/// Whether this host has only the unified hierarchy; says so when it has not.
pub fn pure_v2(test: &str) -> bool {
    let mode = cgroups::mode();
    if mode == Mode::Unified {
        return true;
    }
    println!(
        "skipped {test}: needs a pure cgroup v2 host, this one is {} (run scripts/vm/run-tests.sh)",
        mode.name()
    );
    false
}

/// The cgroup2 mount point.
pub fn cgroup_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next() == Some("cgroup2"))
                .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup file's content, trimmed.
pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}
