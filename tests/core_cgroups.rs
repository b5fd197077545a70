//! cgroups against the host's real hierarchies (root). Each test works below its own parent
//! `/pelagos-test-<pid>-<name>` and removes it, and every process it starts, at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use pelagos::cgroups::{self, Cgroup, Mode};

/// Removes the test's parent cgroup in every hierarchy and kills its children on drop.
struct Scope {
    parent: String,
    children: Vec<Child>,
}

impl Scope {
    fn new(name: &str) -> Scope {
        Scope {
            parent: format!("/pelagos-test-{}-{name}", std::process::id()),
            children: Vec::new(),
        }
    }

    fn path(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.parent)
    }

    fn spawn(&mut self, args: &[&str]) -> i32 {
        let child = Command::new("/bin/busybox")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn busybox");
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    fn wait(&mut self, pid: i32) -> std::process::ExitStatus {
        let i = self
            .children
            .iter()
            .position(|c| c.id() as i32 == pid)
            .unwrap();
        let mut c = self.children.remove(i);
        c.wait().unwrap()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(cg) = Cgroup::open(&self.parent) {
            let _ = cg.thaw();
            let _ = cg.destroy();
        }
        for d in all_dirs(&self.parent) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}

/// The directory `path` would have in every hierarchy of the host.
fn all_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| Path::new(pre.split(' ').nth(4).unwrap()).join(rel))
        })
        .collect()
}

fn controller_dir(cg: &Cgroup, controller: &str) -> PathBuf {
    match cgroups::mode() {
        Mode::Unified => cg.unified_dir().unwrap().to_path_buf(),
        _ => cg
            .v1_dir(controller)
            .unwrap_or_else(|| cg.unified_dir().unwrap())
            .to_path_buf(),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn limits(memory: i64, pids: i64, shares: u64, quota: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(memory).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(pids).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(shares)
                .quota(quota)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[test]
fn create_applies_limits_in_every_hierarchy() {
    let scope = Scope::new("limits");
    let cg = Cgroup::create(&scope.path("c1"), Some(&limits(64 << 20, 42, 512, 50_000))).unwrap();
    for d in cg.dirs() {
        assert!(d.is_dir(), "{} missing", d.display());
    }
    match cgroups::mode() {
        Mode::Unified => {
            let d = cg.unified_dir().unwrap();
            assert_eq!(read(d, "memory.max"), (64u64 << 20).to_string());
            assert_eq!(read(d, "pids.max"), "42");
            assert_eq!(read(d, "cpu.max"), "50000 100000");
            assert_eq!(read(d, "cpu.weight"), "20");
            assert!(cg.unified_dir_fd().is_some());
        }
        _ => {
            let mem = cg.v1_dir("memory").unwrap();
            assert_eq!(
                read(mem, "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(read(cg.v1_dir("pids").unwrap(), "pids.max"), "42");
            let cpu = cg.v1_dir("cpu").unwrap();
            assert_eq!(read(cpu, "cpu.shares"), "512");
            assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
            // Hybrid: the v2 directory is cloned into, the v1 ones are joined by the process.
            assert_eq!(
                cg.unified_dir_fd().is_some(),
                cgroups::mode() == Mode::Hybrid
            );
            if cgroups::mode() == Mode::Hybrid {
                assert!(cg.unified_dir().unwrap().is_dir());
            }
        }
    }
    cg.destroy().unwrap();
    for d in cg.dirs() {
        assert!(!d.exists(), "{} not removed", d.display());
    }
    cg.destroy().expect("destroy is idempotent");
}

#[test]
fn process_joins_freezes_and_thaws() {
    let mut scope = Scope::new("freeze");
    let cg = Cgroup::create(&scope.path("c1"), None).unwrap();
    let pid = scope.spawn(&["sleep", "100"]);
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(cg.path()), "{own}");
    if cgroups::mode() == Mode::Hybrid {
        assert!(own.contains(&format!("0::{}", cg.path())), "{own}");
    }

    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());

    // A frozen cgroup can still be killed.
    let second = scope.spawn(&["sleep", "100"]);
    cg.add_pid(second).unwrap();
    cg.freeze().unwrap();
    cg.kill_all(nix::sys::signal::Signal::SIGKILL).unwrap();
    for p in [pid, second] {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(scope.wait(p).signal(), Some(libc::SIGKILL));
    }
    assert!(cg.pids().unwrap().is_empty());
    assert!(!cg.is_frozen().unwrap(), "kill_all thaws so the kill lands");
    cg.destroy().unwrap();
    for d in cg.dirs() {
        assert!(!d.exists());
    }
}

#[test]
fn bad_values_are_named_and_leave_nothing() {
    let scope = Scope::new("bad");
    let path = scope.path("c1");
    let e = Cgroup::create(&path, Some(&limits(-5, 10, 512, 50_000))).unwrap_err();
    assert!(e.to_string().contains("memory.limit"), "{e}");
    let e = Cgroup::create(&path, Some(&limits(64 << 20, 10, 1, 50_000))).unwrap_err();
    assert!(e.to_string().contains("cpu.shares"), "{e}");
    // Passes validation, refused by the kernel after the directories exist.
    let cpus = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .cpus("1000-1001")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let e = Cgroup::create(&path, Some(&cpus)).unwrap_err();
    assert!(e.to_string().contains("cpuset.cpus"), "{e}");
    for d in all_dirs(&path).into_iter().chain(all_dirs(&scope.parent)) {
        assert!(
            !d.exists(),
            "{} left behind after a failed create",
            d.display()
        );
    }
    let e = Cgroup::create("/a/../b", None).unwrap_err();
    assert!(e.to_string().contains("/a/../b"), "{e}");
}

#[test]
fn update_changes_limits() {
    let scope = Scope::new("update");
    let cg = Cgroup::create(&scope.path("c1"), Some(&limits(64 << 20, 42, 512, 50_000))).unwrap();
    cg.update(&limits(128 << 20, 100, 1024, 20_000)).unwrap();
    let mem = controller_dir(&cg, "memory");
    let pids = controller_dir(&cg, "pids");
    match cgroups::mode() {
        Mode::Unified => {
            assert_eq!(read(&mem, "memory.max"), (128u64 << 20).to_string());
            assert_eq!(read(&mem, "cpu.max"), "20000 100000");
        }
        _ => {
            assert_eq!(
                read(&mem, "memory.limit_in_bytes"),
                (128u64 << 20).to_string()
            );
            assert_eq!(
                read(&controller_dir(&cg, "cpu"), "cpu.cfs_quota_us"),
                "20000"
            );
        }
    }
    assert_eq!(read(&pids, "pids.max"), "100");
    cg.destroy().unwrap();
}

/// Starts `sh -c script` held on stdin, moves it into `cg`, then lets it run: all its work
/// happens inside the cgroup. Returns its pid.
fn run_in(scope: &mut Scope, cg: &Cgroup, script: &str) -> i32 {
    use std::io::Write;
    let mut child = Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busybox sh");
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    scope.children.push(child);
    pid
}

#[test]
fn stats_count_the_work_done_inside() {
    let mut scope = Scope::new("stats");
    let cg = Cgroup::create(&scope.path("c1"), Some(&limits(256 << 20, 64, 1024, -1))).unwrap();
    let pid = run_in(
        &mut scope,
        &cg,
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; x=$(head -c 4000000 /dev/zero | tr '\\0' a)",
    );
    assert!(scope.wait(pid).success());
    match cg.stats() {
        cgroups::stats::Stats::V1(m) => {
            assert!(m.cpu.usage.total > 0, "{:?}", m.cpu);
            assert!(m.cpu.usage.user + m.cpu.usage.kernel > 0, "{:?}", m.cpu);
            assert!(!m.cpu.usage.per_cpu.is_empty());
            assert!(m.memory.usage.max > 0, "{:?}", m.memory.usage);
            assert_eq!(m.memory.usage.limit, 256 << 20);
            assert!(m.memory.total_pg_fault > 0);
            if cg.v1_dir("pids").is_some() {
                assert_eq!(m.pids.limit, 64);
                assert_eq!(m.pids.current, 0, "the worker has exited");
            }
        }
        cgroups::stats::Stats::V2(m) => {
            assert!(m.cpu.usage_usec > 0, "{:?}", m.cpu);
            assert_eq!(m.memory.usage_limit, 256 << 20);
            assert!(m.memory.pgfault > 0);
            assert_eq!(m.pids.limit, 64);
        }
    }
    cg.destroy().unwrap();
}

#[test]
fn oom_watch_fires_on_oom_kill() {
    let mut scope = Scope::new("oom");
    let mem = LinuxMemoryBuilder::default()
        .limit(16i64 << 20)
        .swap(16i64 << 20)
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .memory(mem)
        .build()
        .unwrap();
    let cg = Cgroup::create(&scope.path("c1"), Some(&r)).unwrap();
    let mut watch = cg.oom_watch().unwrap();
    assert!(!watch.check().unwrap(), "no oom yet");

    // tail keeps the whole newline-free input in memory.
    let pid = run_in(&mut scope, &cg, "head -c 256000000 /dev/zero | tail");
    let status = scope.wait(pid);
    assert!(!status.success(), "the allocation should have been killed");

    let mut fds = [nix::poll::PollFd::new(
        watch.fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).unwrap();
    assert!(watch.check().unwrap(), "oom kill not reported");
    assert!(!watch.check().unwrap(), "one oom reported once");
    match cg.stats() {
        cgroups::stats::Stats::V1(m) => assert!(m.memory_oom_control.oom_kill > 0),
        cgroups::stats::Stats::V2(m) => assert!(m.memory_events.oom_kill > 0),
    }
    cg.destroy().unwrap();
    drop(watch);
}

/// `PELAGOS_REQUIRE_V2=1` (the v2 VM): the host has every controller and file the v2 branches
/// check, so their absence fails the test (tests/common/v2.rs says the same for the v2 suites).
fn require_v2() -> bool {
    std::env::var("PELAGOS_REQUIRE_V2").is_ok_and(|v| v == "1")
}

fn host_has_controller(controller: &str) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = mountinfo.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(_, post)| {
            let f: Vec<&str> = post.split(' ').collect();
            f[0] == "cgroup" && f[2].split(',').any(|o| o == controller)
        })
    });
    let v2 = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).unwrap().to_string())
        })
        .any(|m| {
            std::fs::read_to_string(Path::new(&m).join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == controller)
        });
    v1 || v2
}

#[test]
fn hugetlb_limit_goes_where_the_controller_is() {
    let scope = Scope::new("hugetlb");
    let r = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![oci_spec::runtime::LinuxHugepageLimitBuilder::default(
        )
        .page_size("2MB")
        .limit(4i64 << 20)
        .build()
        .unwrap()])
        .build()
        .unwrap();
    let res = Cgroup::create(&scope.path("c1"), Some(&r));
    if !host_has_controller("hugetlb")
        || !Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists()
    {
        assert!(
            !require_v2(),
            "PELAGOS_REQUIRE_V2=1 but no hugetlb controller or 2 MiB pages"
        );
        let e = res.unwrap_err();
        assert!(e.to_string().contains("hugepageLimits"), "{e}");
        return;
    }
    let limit_file = |cg: &Cgroup| {
        let v1 = cg
            .v1_dir("hugetlb")
            .map(|d| d.join("hugetlb.2MB.limit_in_bytes"));
        let file = v1.unwrap_or_else(|| cg.unified_dir().unwrap().join("hugetlb.2MB.max"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string()
    };
    let cg = res.unwrap();
    assert_eq!(limit_file(&cg), (4u64 << 20).to_string());
    cg.destroy().unwrap();

    // Set later by an update, on a cgroup created without it (in a fresh parent, which has
    // not enabled any controller for its children yet).
    let fresh = Scope::new("hugetlb-update");
    let cg = Cgroup::create(&fresh.path("c2"), None).unwrap();
    cg.update(&r).unwrap();
    assert_eq!(limit_file(&cg), (4u64 << 20).to_string());
    cg.destroy().unwrap();
}

#[test]
fn device_rules_whitelist_on_v1() {
    let mut scope = Scope::new("devices");
    let deny_all = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .devices(vec![deny_all])
        .build()
        .unwrap();
    let cg = Cgroup::create(&scope.path("c1"), Some(&r)).unwrap();
    let Some(dev) = cg.v1_dir("devices") else {
        // cgroup v2: the rules are an eBPF program attached to the cgroup (tests/v2_cgroups.rs
        // checks what it lets through).
        assert_eq!(cgroups::mode(), Mode::Unified);
        let dir = cg.unified_dir().unwrap();
        let names = cgroups::attached_device_program_names(dir).unwrap();
        assert_eq!(names, ["pelagos_dev"], "{}", dir.display());
        cg.destroy().unwrap();
        return;
    };
    let list = read(dev, "devices.list");
    assert!(!list.contains("a *:* rwm"), "{list}");
    assert!(list.lines().any(|l| l == "c 1:3 rwm"), "{list}");
    assert!(list.lines().any(|l| l == "c 136:* rwm"), "{list}");

    // Enforced: /dev/zero is a default device, /dev/kmsg (1:11) is not.
    let ok = run_in(&mut scope, &cg, "exec 3</dev/zero");
    assert!(scope.wait(ok).success(), "/dev/zero must stay usable");
    let denied = run_in(&mut scope, &cg, "exec 3</dev/kmsg");
    assert!(!scope.wait(denied).success(), "/dev/kmsg must be denied");
    cg.destroy().unwrap();

    // linux.devices entries are allowed through spec_resources.
    let kmsg = oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/kmsg")
        .typ(oci_spec::runtime::LinuxDeviceType::C)
        .major(1)
        .minor(11)
        .build()
        .unwrap();
    let linux = oci_spec::runtime::LinuxBuilder::default()
        .resources(r)
        .devices(vec![kmsg])
        .build()
        .unwrap();
    let cg = Cgroup::create(&scope.path("c2"), Some(&cgroups::spec_resources(&linux))).unwrap();
    let allowed = run_in(&mut scope, &cg, "exec 3</dev/kmsg");
    assert!(
        scope.wait(allowed).success(),
        "/dev/kmsg was given in linux.devices"
    );
    cg.destroy().unwrap();
}

#[test]
fn systemd_style_path_is_laid_out_like_systemd() {
    let slice = format!("pelagostest{}sd.slice", std::process::id());
    let path = cgroups::resolve_path(Some(&format!("{slice}:cri-containerd:abc")), "abc").unwrap();
    assert_eq!(path, format!("/{slice}/cri-containerd-abc.scope"));
    let scope = Scope {
        parent: format!("/{slice}"),
        children: Vec::new(),
    };
    let cg = Cgroup::create(&path, None).unwrap();
    for d in cg.dirs() {
        assert!(
            d.ends_with(format!("{slice}/cri-containerd-abc.scope")),
            "{}",
            d.display()
        );
        assert!(d.is_dir());
    }
    cg.destroy().unwrap();
    drop(scope);
}

#[test]
fn cpuset_and_memory_details() {
    let scope = Scope::new("cpuset");
    let mem = LinuxMemoryBuilder::default()
        .limit(64i64 << 20)
        .swap(128i64 << 20)
        .disable_oom_killer(true)
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .memory(mem)
        .build()
        .unwrap();
    let cg = Cgroup::create(&scope.path("c1"), Some(&r)).unwrap();
    let cpuset = controller_dir(&cg, "cpuset");
    assert_eq!(read(&cpuset, "cpuset.cpus"), "0");
    assert_eq!(read(&cpuset, "cpuset.mems"), "0");
    let mem_dir = controller_dir(&cg, "memory");
    let shrink = |limit: i64, swap: i64| {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(swap)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    if cgroups::mode() == Mode::Unified {
        assert_eq!(read(&mem_dir, "memory.max"), (64u64 << 20).to_string());
        if mem_dir.join("memory.swap.max").exists() || require_v2() {
            assert_eq!(read(&mem_dir, "memory.swap.max"), (64u64 << 20).to_string());
        }
    } else if mem_dir.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read(&mem_dir, "memory.memsw.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        assert!(read(&mem_dir, "memory.oom_control").contains("oom_kill_disable 1"));
        // Both orders of the memory/memsw writes are needed: shrinking, then growing past
        // the old memsw limit.
        cg.update(&shrink(16 << 20, 32 << 20)).unwrap();
        assert_eq!(
            read(&mem_dir, "memory.limit_in_bytes"),
            (16u64 << 20).to_string()
        );
        cg.update(&shrink(256 << 20, 512 << 20)).unwrap();
        assert_eq!(
            read(&mem_dir, "memory.memsw.limit_in_bytes"),
            (512u64 << 20).to_string()
        );
        assert_eq!(
            read(&mem_dir, "memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
    }
    cg.destroy().unwrap();
}

#[test]
fn blkio_throttle_written_per_device() {
    let scope = Scope::new("blkio");
    // Any block device of the host will do; the limit is only written, not exercised.
    let dev = std::fs::read_dir("/sys/dev/block")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.contains(':'))
        .expect("a block device");
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    let throttle = oci_spec::runtime::LinuxThrottleDeviceBuilder::default()
        .major(major)
        .minor(minor)
        .rate(1_048_576u64)
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .block_io(
            oci_spec::runtime::LinuxBlockIoBuilder::default()
                .throttle_read_bps_device(vec![throttle])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let res = Cgroup::create(&scope.path("c1"), Some(&r));
    if !host_has_controller("blkio") && !host_has_controller("io") {
        assert!(!require_v2(), "PELAGOS_REQUIRE_V2=1 but no io controller");
        let e = res.unwrap_err();
        assert!(e.to_string().contains("blockIO"), "{e}");
        return;
    }
    let cg = res.unwrap();
    let (file, want) = match cg.v1_dir("blkio") {
        Some(d) => (
            d.join("blkio.throttle.read_bps_device"),
            format!("{dev} 1048576"),
        ),
        None => (
            cg.unified_dir().unwrap().join("io.max"),
            format!("{dev} rbps=1048576"),
        ),
    };
    let got = std::fs::read_to_string(&file).unwrap();
    assert!(
        got.lines().any(|l| l.starts_with(&want)),
        "{}: {got}",
        file.display()
    );
    cg.destroy().unwrap();
}
