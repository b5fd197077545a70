//! cgroup v2 specifics of the core against the real kernel: CLONE_INTO_CGROUP, nested
//! cgroupsPath, memory.oom.group, cgroup.freeze, the unified map, io.max and io.stat, cgroup
//! namespaces and device rules (the eBPF device filter, through the core and the CLI). They need a pure cgroup v2 host (scripts/vm/run-tests.sh boots
//! one); anywhere else each test prints why and returns.
//!
//! Every test works below its own top-level cgroup `/pelagos-v2-<pid>-<name>`, removed on drop
//! with every process the test started.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio as ProcStdio};

use common::bundle::{Bundle, Output, Pipes, TestRoot};
use common::v2::block_device;
use common::v2::{block_probe, cgroup_root, probe_refused, pure_v2, read};
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxResources, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
};
use pelagos::cgroups::{self, Cgroup};
use pelagos::test_support::{spawn, Spawn};
use pelagos::Stdio;
use serde_json::json;

const MIB: i64 = 1 << 20;

fn words(dir: &Path, file: &str) -> Vec<String> {
    read(dir, file)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// One `key value` line of a flat-keyed file such as memory.events or cgroup.events.
fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    read(dir, file)
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A test's top-level cgroup: removed with everything below it, and its processes killed, on
/// drop.
struct Tree {
    top: String,
    children: Vec<Child>,
}

impl Tree {
    fn new(name: &str) -> Tree {
        Tree {
            top: format!("/pelagos-v2-{}-{name}", std::process::id()),
            children: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.top)
    }

    /// Starts `sh -c script` held on stdin, moves it into `cg`, then lets it run, so all its
    /// work happens inside the cgroup. Returns its pid.
    fn run_in(&mut self, cg: &Cgroup, script: &str) -> i32 {
        let mut child = Command::new("/bin/busybox")
            .args(["sh", "-c", &format!("read go; {script}")])
            .stdin(ProcStdio::piped())
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::null())
            .spawn()
            .expect("spawn busybox sh");
        let pid = child.id() as i32;
        cg.add_pid(pid).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        self.children.push(child);
        pid
    }

    fn wait(&mut self, pid: i32) -> ExitStatus {
        let i = self
            .children
            .iter()
            .position(|c| c.id() as i32 == pid)
            .expect("a child of this test");
        self.children.remove(i).wait().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(cg) = Cgroup::open(&self.top) {
            let _ = cg.thaw();
            let _ = cg.destroy();
        }
        let dir = cgroup_root().join(self.top.trim_start_matches('/'));
        if !std::thread::panicking() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}

fn memory(limit: i64, swap: i64) -> LinuxResourcesBuilder {
    LinuxResourcesBuilder::default().memory(
        LinuxMemoryBuilder::default()
            .limit(limit)
            .swap(swap)
            .build()
            .unwrap(),
    )
}

fn unified(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_controller_reaches_a_nested_cgroup() {
    if !pure_v2("every_controller_reaches_a_nested_cgroup") {
        return;
    }
    let tree = Tree::new("nested");
    let root = cgroup_root();
    let offered = words(&root, "cgroup.controllers");
    for c in ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"] {
        assert!(
            offered.iter().any(|o| o == c),
            "the host's cgroup2 root does not offer {c}: {offered:?}"
        );
    }
    let r = memory(64 * MIB, 64 * MIB).build().unwrap();
    let cg = Cgroup::create(&tree.path("pod/a/b"), Some(&r)).unwrap();
    let leaf = cg.unified_dir().unwrap().to_path_buf();
    assert_eq!(
        leaf,
        root.join(tree.path("pod/a/b").trim_start_matches('/'))
    );
    // Each ancestor hands every controller it has down to its children.
    let mut got = words(&leaf, "cgroup.controllers");
    got.sort();
    let mut want = offered.clone();
    want.sort();
    assert_eq!(got, want, "controllers of {}", leaf.display());
    assert_eq!(read(&leaf, "memory.max"), (64 * MIB).to_string());
    cg.destroy().unwrap();
    assert!(!leaf.exists());
}

#[test]
fn swap_equal_to_the_limit_disables_swap() {
    if !pure_v2("swap_equal_to_the_limit_disables_swap") {
        return;
    }
    let tree = Tree::new("swap");
    // The spec's swap is memory+swap: equal to the limit means no swap at all, which runc
    // writes as memory.swap.max 0 (fs2 setMemory), not as "leave it".
    let r = memory(64 * MIB, 64 * MIB).build().unwrap();
    let cg = Cgroup::create(&tree.path("none"), Some(&r)).unwrap();
    let dir = cg.unified_dir().unwrap();
    assert_eq!(read(dir, "memory.max"), (64 * MIB).to_string());
    assert_eq!(read(dir, "memory.swap.max"), "0");
    cg.destroy().unwrap();
    let r = memory(64 * MIB, 96 * MIB).build().unwrap();
    let cg = Cgroup::create(&tree.path("some"), Some(&r)).unwrap();
    assert_eq!(
        read(cg.unified_dir().unwrap(), "memory.swap.max"),
        (32 * MIB).to_string()
    );
    cg.destroy().unwrap();
}

#[test]
fn clone_into_cgroup_places_the_child_before_it_runs() {
    if !pure_v2("clone_into_cgroup_places_the_child_before_it_runs") {
        return;
    }
    let tree = Tree::new("clone3");
    let cg = Cgroup::create(&tree.path("c"), None).unwrap();
    assert!(cg.unified_dir_fd().is_some(), "no cgroup fd on a v2 host");
    // The child blocks before exec until it gets the go byte, which it never does here: it can
    // only be in the cgroup because clone3 put it there.
    let helper = std::fs::File::open("/bin/busybox").unwrap();
    let spawned = spawn(Spawn {
        helper: helper.as_fd(),
        stdio: Stdio::Null,
        preserve_fds: Vec::new(),
        extra_fds: Vec::new(),
        clone_flags: 0,
        cgroup: cg.unified_dir_fd(),
        become_root: false,
        hold: true,
    })
    .expect("spawn");
    let pid = spawned.pid;
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let procs = words(cg.unified_dir().unwrap(), "cgroup.procs");
    let in_cgroup = spawned.in_cgroup;
    // SAFETY: plain kill(2) of the child this test just cloned and has not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let exit = pelagos::reaper::wait(pid, None).expect("the child's exit");
    drop(spawned);
    assert!(in_cgroup, "clone3 did not use CLONE_INTO_CGROUP");
    assert_eq!(proc_cgroup, format!("0::{}\n", cg.path()));
    assert_eq!(procs, vec![pid.to_string()]);
    assert_eq!(exit.status, 128 + libc::SIGKILL);
    cg.destroy().unwrap();
}

#[test]
fn oom_group_kills_every_process_of_the_cgroup() {
    if !pure_v2("oom_group_kills_every_process_of_the_cgroup") {
        return;
    }
    let mut tree = Tree::new("oomgroup");
    let r = memory(32 * MIB, 32 * MIB)
        .unified(unified(&[("memory.oom.group", "1")]))
        .build()
        .unwrap();
    let cg = Cgroup::create(&tree.path("c"), Some(&r)).unwrap();
    let dir = cg.unified_dir().unwrap().to_path_buf();
    assert_eq!(read(&dir, "memory.oom.group"), "1");
    // A bystander that would outlive the test by far if the OOM left it alone.
    let bystander = tree.run_in(&cg, "sleep 600");
    // tail keeps the whole newline-free input in memory.
    let hog = tree.run_in(&cg, "head -c 256000000 /dev/zero | tail");
    let hog_status = tree.wait(hog);
    let bystander_status = tree.wait(bystander);
    assert_eq!(hog_status.signal(), Some(libc::SIGKILL), "{hog_status:?}");
    assert_eq!(
        bystander_status.signal(),
        Some(libc::SIGKILL),
        "memory.oom.group must kill the whole cgroup: {bystander_status:?}"
    );
    assert!(keyed(&dir, "memory.events", "oom_kill").unwrap_or(0) >= 2);
    if let Some(group_kills) = keyed(&dir, "memory.events", "oom_group_kill") {
        assert!(
            group_kills >= 1,
            "memory.events: {}",
            read(&dir, "memory.events")
        );
    }
    match cg.stats() {
        cgroups::Stats::V2(m) => assert!(m.memory_events.oom_kill >= 2, "{:?}", m.memory_events),
        other => panic!("v1 stats on a v2 host: {other:?}"),
    }
    cg.destroy().unwrap();
}

#[test]
fn freeze_goes_through_cgroup_freeze() {
    if !pure_v2("freeze_goes_through_cgroup_freeze") {
        return;
    }
    let mut tree = Tree::new("freeze");
    let cg = Cgroup::create(&tree.path("c"), None).unwrap();
    let dir = cg.unified_dir().unwrap().to_path_buf();
    let pid = tree.run_in(&cg, "sleep 600");
    cg.freeze().unwrap();
    assert_eq!(read(&dir, "cgroup.freeze"), "1");
    assert_eq!(keyed(&dir, "cgroup.events", "frozen"), Some(1));
    assert!(cg.is_frozen().unwrap());
    cg.thaw().unwrap();
    assert_eq!(read(&dir, "cgroup.freeze"), "0");
    assert!(!cg.is_frozen().unwrap());
    // SIGKILL through cgroup.kill ends it even when frozen again.
    cg.freeze().unwrap();
    cg.kill_all(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(tree.wait(pid).signal(), Some(libc::SIGKILL));
    cg.destroy().unwrap();
}

#[test]
fn unified_map_writes_files_and_names_bad_keys() {
    if !pure_v2("unified_map_writes_files_and_names_bad_keys") {
        return;
    }
    let tree = Tree::new("unified");
    let r = LinuxResourcesBuilder::default()
        .unified(unified(&[
            ("memory.high", "41943040"),
            ("pids.max", "9"),
            ("cpu.weight", "250"),
        ]))
        .build()
        .unwrap();
    let cg = Cgroup::create(&tree.path("ok"), Some(&r)).unwrap();
    let dir = cg.unified_dir().unwrap();
    assert_eq!(read(dir, "memory.high"), "41943040");
    assert_eq!(read(dir, "pids.max"), "9");
    assert_eq!(read(dir, "cpu.weight"), "250");
    cg.destroy().unwrap();

    let bad: [(&str, &str); 3] = [
        ("memory.nonexistent", "no such cgroup file"),
        ("../cgroup.procs", "not a cgroup file name"),
        ("pids.max", "write"),
    ];
    for (key, why) in bad {
        let value = if key == "pids.max" { "lots" } else { "1" };
        let r = LinuxResourcesBuilder::default()
            .unified(unified(&[(key, value)]))
            .build()
            .unwrap();
        let path = tree.path("bad");
        let err = Cgroup::create(&path, Some(&r)).expect_err(key).to_string();
        assert!(err.contains(key) && err.contains(why), "{key}: {err}");
        let dir = cgroup_root().join(path.trim_start_matches('/'));
        assert!(!dir.exists(), "{key}: {} left behind", dir.display());
    }
}

#[test]
fn io_max_is_written_and_io_stat_counts_reads() {
    if !pure_v2("io_max_is_written_and_io_stat_counts_reads") {
        return;
    }
    let Some((name, dev)) = block_device("io_max_is_written_and_io_stat_counts_reads") else {
        return;
    };
    let mut tree = Tree::new("io");
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    let throttle = LinuxThrottleDeviceBuilder::default()
        .major(major)
        .minor(minor)
        .rate(64u64 * MIB as u64)
        .build()
        .unwrap();
    // The device rules allow the disk, as a container given it with --device has them.
    let allow_disk = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::B)
        .major(major)
        .minor(minor)
        .access("r")
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .block_io(
            LinuxBlockIoBuilder::default()
                .throttle_read_bps_device(vec![throttle])
                .build()
                .unwrap(),
        )
        .devices(vec![allow_disk])
        .build()
        .unwrap();
    let cg = Cgroup::create(&tree.path("c"), Some(&r)).unwrap();
    let dir = cg.unified_dir().unwrap().to_path_buf();
    let io_max = read(&dir, "io.max");
    assert!(
        io_max
            .lines()
            .any(|l| l.starts_with(&format!("{dev} rbps={}", 64 * MIB))),
        "io.max: {io_max}"
    );
    // O_DIRECT reads reach the device, so io.stat must count them.
    let pid = tree.run_in(
        &cg,
        &format!("dd if=/dev/{name} of=/dev/null bs=64k count=32 iflag=direct"),
    );
    assert!(tree.wait(pid).success(), "dd from /dev/{name}");
    let stats = match cg.stats() {
        cgroups::Stats::V2(m) => m,
        other => panic!("v1 stats on a v2 host: {other:?}"),
    };
    let entry = stats
        .io
        .usage
        .iter()
        .find(|e| e.major == major as u64 && e.minor == minor as u64)
        .unwrap_or_else(|| panic!("no io.stat entry for {dev}: {:?}", stats.io));
    assert!(entry.rbytes >= 2 * MIB as u64, "{entry:?}");
    assert!(entry.rios >= 32, "{entry:?}");
    cg.destroy().unwrap();
}

fn run(bundle: &Bundle) -> Output {
    TestRoot::new().run(bundle)
}

#[test]
fn container_in_a_nested_cgroups_path() {
    if !pure_v2("container_in_a_nested_cgroups_path") {
        return;
    }
    let tree = Tree::new("ctr");
    let path = tree.path("pod/ctr");
    let b = Bundle::new()
        .cgroups_path(&path)
        .resources(json!({"memory": {"limit": 48 * MIB}, "pids": {"limit": 16}}))
        .args(&[
            "sh",
            "-c",
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max 2>/dev/null || echo no-cgroupfs",
        ]);
    let root = TestRoot::new();
    let (stdio, pipes) = Pipes::new();
    let mut c = root.create(&b, stdio).expect("create");
    // Before start the init is already in its cgroup, with the limits in place.
    let dir = cgroup_root().join(path.trim_start_matches('/'));
    let init = c.pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap(),
        format!("0::{path}\n")
    );
    assert_eq!(read(&dir, "memory.max"), (48 * MIB).to_string());
    assert_eq!(read(&dir, "pids.max"), "16");
    c.start().expect("start");
    let (stdout, stderr) = pipes.collect();
    let code = c.wait().expect("exit").status;
    c.delete(false).expect("delete");
    assert_eq!(code, 0, "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    // Without a cgroup namespace the container sees its full path.
    assert_eq!(first, format!("0::{path}"), "{stdout}");
    assert!(!dir.exists(), "delete left {}", dir.display());
}

#[test]
fn cgroup_namespace_roots_the_container_at_its_cgroup() {
    if !pure_v2("cgroup_namespace_roots_the_container_at_its_cgroup") {
        return;
    }
    let b = Bundle::new().namespace("cgroup", None).args(&[
        "sh",
        "-c",
        "cat /proc/self/cgroup; grep ' /sys/fs/cgroup ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1; \
         grep -x 1 /sys/fs/cgroup/cgroup.procs; grep -q memory /sys/fs/cgroup/cgroup.controllers && echo memory",
    ]);
    let out = run(&b);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The container is the root of its own view, cgroupfs is cgroup2 mounted at its cgroup,
    // and its init is pid 1 there.
    assert_eq!(out.stdout, "0::/\ncgroup2\n1\nmemory\n", "{}", out.stderr);
}

#[test]
fn pause_freezes_through_cgroup_freeze() {
    if !pure_v2("pause_freezes_through_cgroup_freeze") {
        return;
    }
    let b = Bundle::new().args(&["sleep", "600"]);
    let root = TestRoot::new();
    let mut c = root.create(&b, Stdio::Null).expect("create");
    c.start().expect("start");
    let dir = cgroup_root().join(b.cgroup_path().unwrap().trim_start_matches('/'));
    c.pause().expect("pause");
    assert_eq!(read(&dir, "cgroup.freeze"), "1");
    assert_eq!(keyed(&dir, "cgroup.events", "frozen"), Some(1));
    assert_eq!(c.status(), pelagos::Status::Paused);
    c.resume().expect("resume");
    assert_eq!(read(&dir, "cgroup.freeze"), "0");
    assert_eq!(keyed(&dir, "cgroup.events", "frozen"), Some(0));
    assert_eq!(c.status(), pelagos::Status::Running);
    c.kill(libc::SIGKILL, false).expect("kill");
    assert_eq!(c.wait().expect("exit").status, 128 + libc::SIGKILL);
    c.delete(false).expect("delete");
    assert!(!dir.exists());
}

/// `b` with CAP_MKNOD in every set, as containerd's default spec has it.
fn with_mknod(b: Bundle) -> Bundle {
    b.edit(|c| {
        for set in ["bounding", "effective", "permitted", "ambient"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
        }
    })
}

#[test]
fn device_rules_are_enforced_on_v2() {
    if !pure_v2("device_rules_are_enforced_on_v2") {
        return;
    }
    // /dev/kmsg (1:11) bound in without a linux.devices entry or an allow rule: runc's eBPF
    // filter refuses the open, as the v1 devices controller does. (Opened for writing: reading
    // it needs CAP_SYSLOG under kernel.dmesg_restrict, which would hide the device rule.)
    let b = Bundle::new()
        .mount(json!({"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["bind"]}))
        .args(&["sh", "-c", "exec 3</dev/zero && echo zero-ok; exec 4>/dev/kmsg && echo kmsg-open"]);
    let out = run(&b);
    assert_eq!(out.stdout, "zero-ok\n", "{}", out.stderr);
}

#[test]
fn a_disk_the_container_mknods_cannot_be_read_or_written() {
    if !pure_v2("a_disk_the_container_mknods_cannot_be_read_or_written") {
        return;
    }
    let Some((_, dev)) = block_device("a_disk_the_container_mknods_cannot_be_read_or_written")
    else {
        return;
    };
    let b = with_mknod(Bundle::new()).args(&["sh", "-c", &block_probe("/dev/blk", &dev)]);
    let out = run(&b);
    assert!(probe_refused(&out.stdout), "{}{}", out.stdout, out.stderr);
}

#[test]
fn spec_devices_and_the_default_ones_stay_usable() {
    if !pure_v2("spec_devices_and_the_default_ones_stay_usable") {
        return;
    }
    let Some((name, dev)) = block_device("spec_devices_and_the_default_ones_stay_usable") else {
        return;
    };
    let (major, minor) = dev.split_once(':').unwrap();
    let b = with_mknod(Bundle::new())
        .edit(|c| {
            c["linux"]["devices"] = json!([{"path": "/dev/disk0", "type": "b",
                "major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap()}]);
        })
        .args(&[
            "sh",
            "-c",
            "head -c 64 /dev/disk0 | wc -c; head -c 3 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; \
             echo x > /dev/null && echo null-ok; echo x > /dev/full 2>/dev/null || echo full-ok; \
             exec 3<>/dev/ptmx && echo ptmx-ok; \
             mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && (exec 4<>/dev/net/tun) 2>&1 | grep -c 'not permitted'",
        ]);
    let out = run(&b);
    assert_eq!(
        out.stdout, "64\n3\n5\nnull-ok\nfull-ok\nptmx-ok\n0\n",
        "/dev/{name} as /dev/disk0: {}",
        out.stderr
    );
}

#[test]
fn the_cli_enforces_device_rules() {
    if !pure_v2("the_cli_enforces_device_rules") {
        return;
    }
    let Some((_, dev)) = block_device("the_cli_enforces_device_rules") else {
        return;
    };
    let b = with_mknod(Bundle::new()).args(&["sh", "-c", &block_probe("/dev/blk", &dev)]);
    let root = TestRoot::new();
    let out = Command::new(env!("CARGO_BIN_EXE_pelagos"))
        .arg("--root")
        .arg(root.root())
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(common::bundle::unique_id("cli-dev"))
        .stdin(ProcStdio::null())
        .output()
        .expect("pelagos run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && probe_refused(&stdout),
        "{:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cgroups_left(&b),
        "cgroup of the CLI's container left behind"
    );
}

fn cgroups_left(b: &Bundle) -> bool {
    common::bundle::cgroup_exists(&b.cgroup_path().unwrap())
}

fn deny_all() -> LinuxResources {
    serde_json::from_value(json!({"devices": [{"allow": false, "access": "rwm"}]})).unwrap()
}

/// A script for [`Tree::run_in`] that exits 0 only when reading the block device `dev`, made
/// with mknod in `scratch`, is refused with EPERM.
fn read_refused(scratch: &Path, dev: &str) -> String {
    let (major, minor) = dev.split_once(':').unwrap();
    let node = scratch.join(format!("blk-{major}-{minor}"));
    format!(
        "rm -f {0}; mknod {0} b {major} {minor} || exit 2; dd if={0} of=/dev/null bs=64 count=1 2>&1 | grep -q 'not permitted'",
        node.display()
    )
}

#[test]
fn an_update_keeps_the_device_filter() {
    if !pure_v2("an_update_keeps_the_device_filter") {
        return;
    }
    let Some((_, dev)) = block_device("an_update_keeps_the_device_filter") else {
        return;
    };
    let mut tree = Tree::new("devupdate");
    let scratch = tempdir("devupdate");
    let cg = Cgroup::create(&tree.path("c"), Some(&deny_all())).unwrap();
    let dir = cg.unified_dir().unwrap().to_path_buf();
    let before = cgroups::attached_device_programs(&dir).unwrap();
    let r = memory(64 * MIB, -1).build().unwrap();
    cg.update(&r).unwrap();
    let after = cgroups::attached_device_programs(&dir).unwrap();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(before, after, "runc update attaches the program again");
    assert_eq!(read(&dir, "memory.max"), (64 * MIB).to_string());
    let pid = tree.run_in(&cg, &read_refused(&scratch, &dev));
    assert_eq!(tree.wait(pid).code(), Some(0), "the read was not refused");
    let _ = std::fs::remove_dir_all(&scratch);
    cg.destroy().unwrap();
}

#[test]
fn a_cgroup_that_has_a_filter_gets_it_replaced() {
    if !pure_v2("a_cgroup_that_has_a_filter_gets_it_replaced") {
        return;
    }
    let Some((_, dev)) = block_device("a_cgroup_that_has_a_filter_gets_it_replaced") else {
        return;
    };
    let mut tree = Tree::new("devjoin");
    let scratch = tempdir("devjoin");
    let (major, minor) = dev.split_once(':').unwrap();
    let allow_disk: LinuxResources = serde_json::from_value(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "b", "major": major.parse::<i64>().unwrap(),
         "minor": minor.parse::<i64>().unwrap(), "access": "rwm"}
    ]}))
    .unwrap();
    let path = tree.path("shared");
    let first = Cgroup::create(&path, Some(&allow_disk)).unwrap();
    let dir = first.unified_dir().unwrap().to_path_buf();
    let old = cgroups::attached_device_programs(&dir).unwrap();
    // A second container in the same cgroup, with the default rules: its program replaces the
    // first one rather than adding to it (which would still refuse, but grow without bound).
    let second = Cgroup::create(&path, Some(&deny_all())).unwrap();
    let new = cgroups::attached_device_programs(&dir).unwrap();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(old, new);
    let pid = tree.run_in(&second, &read_refused(&scratch, &dev));
    assert_eq!(tree.wait(pid).code(), Some(0), "the read was not refused");
    let _ = std::fs::remove_dir_all(&scratch);
    second.destroy().unwrap();
}

#[test]
fn bad_device_rules_leave_nothing_behind() {
    if !pure_v2("bad_device_rules_leave_nothing_behind") {
        return;
    }
    let tree = Tree::new("devbad");
    let hole: LinuxResources = serde_json::from_value(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "access": "rwm"},
        {"allow": false, "type": "c", "major": 10, "minor": 229, "access": "r"}
    ]}))
    .unwrap();
    let path = tree.path("hole");
    let err = Cgroup::create(&path, Some(&hole)).unwrap_err().to_string();
    assert!(err.contains("c 10:229 r") && err.contains("hole"), "{err}");
    assert!(!common::bundle::cgroup_exists(&path), "{path} left behind");
    // A failure after the program is attached: the cgroup goes, and its program with it.
    let mut late = deny_all();
    late.set_unified(Some(unified(&[("memory.nonexistent", "1")])));
    let err = Cgroup::create(&path, Some(&late)).unwrap_err().to_string();
    assert!(err.contains("memory.nonexistent"), "{err}");
    assert!(!common::bundle::cgroup_exists(&path), "{path} left behind");
}

/// A scratch directory for device nodes: under /dev, the one filesystem of the VM not mounted
/// nodev (a node on a nodev mount would be refused whatever the cgroup says).
fn tempdir(name: &str) -> std::path::PathBuf {
    let d = Path::new("/dev").join(format!("pelagos-v2-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
