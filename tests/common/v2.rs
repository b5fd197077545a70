//! Helpers of the tests that only mean something on a pure cgroup v2 host.

use std::path::{Path, PathBuf};

use pelagos::cgroups::{self, Mode};

/// `PELAGOS_REQUIRE_V2=1` (set by scripts/vm/run-tests.sh on its pure v2 hosts): what the v2
/// tests need is there, so a test that would be skipped for want of it fails instead.
pub fn required() -> bool {
    std::env::var("PELAGOS_REQUIRE_V2").is_ok_and(|v| v == "1")
}

/// Says `test` is skipped for `why`; fails it instead under [`required`].
pub fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test} cannot run: {why}, and PELAGOS_REQUIRE_V2=1 says this host has what it needs"
    );
    println!("skipped {test}: {why}");
}

/// Whether this host has only the unified hierarchy; says so when it has not.
pub fn pure_v2(test: &str) -> bool {
    let mode = cgroups::mode();
    if mode == Mode::Unified {
        return true;
    }
    skip(
        test,
        &format!(
            "needs a pure cgroup v2 host, this one is {} (run scripts/vm/run-tests.sh)",
            mode.name()
        ),
    );
    false
}

/// [`real_block_device`], or a [`skip`] of `test` when there is none.
pub fn block_device(test: &str) -> Option<(String, String)> {
    let found = real_block_device();
    if found.is_none() {
        skip(test, "no block device");
    }
    found
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

/// A shell script for busybox sh that makes `node` a block device `dev` ("major:minor") and
/// reports, one line each: `mknod ok|<error>`, `read <bytes>|<error>`, `write ok|<error>`. The
/// write opens the node for writing and writes nothing (dd count=0), so a missing filter
/// cannot damage the disk.
pub fn block_probe(node: &str, dev: &str) -> String {
    let (major, minor) = dev.split_once(':').expect("major:minor");
    format!(
        "rm -f {node}; \
         if e=$(mknod {node} b {major} {minor} 2>&1); then echo mknod ok; else echo \"mknod $e\"; fi; \
         if e=$(dd if={node} bs=64 count=1 2>&1 >/dev/null); then echo \"read $(dd if={node} bs=64 count=1 2>/dev/null | wc -c)\"; else echo \"read $e\"; fi; \
         if e=$(dd if=/dev/zero of={node} bs=1 count=0 2>&1); then echo write ok; else echo \"write $e\"; fi"
    )
}

/// The `read` and `write` lines of [`block_probe`]'s output both say EPERM.
pub fn probe_refused(out: &str) -> bool {
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(p))
            .is_some_and(|l| l.contains("Operation not permitted"))
    };
    out.lines().any(|l| l == "mknod ok") && line("read ") && line("write ")
}

/// [`block_probe`]'s output says 64 bytes were read and the write open succeeded.
pub fn probe_allowed(out: &str) -> bool {
    out.lines().any(|l| l == "read 64") && out.lines().any(|l| l == "write ok")
}
