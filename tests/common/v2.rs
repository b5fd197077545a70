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

/// A block device with a size, for io.* (the VM has a virtio disk; loop and ram devices do
/// not count I/O the same way).
pub fn real_block_device() -> Option<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd", "dm-", "md"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let sys = Path::new("/sys/block").join(&n);
        let size: u64 = read(&sys, "size").parse().ok()?;
        (size > 0 && Path::new("/dev").join(&n).exists()).then(|| (n.clone(), read(&sys, "dev")))
    })
}
