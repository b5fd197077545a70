//! The shim on a pure cgroup v2 host, through a private containerd and `ctr`: v2 metrics in
//! `ctr task metrics`, io.stat reaching the metrics, pause through cgroup.freeze, and a nested
//! cgroupsPath, and the device filter (issue 14: runc's shim is the control for all of them
//! with PELAGOS_TEST_RUNTIME=io.containerd.runc.v2). They need a pure cgroup v2 host (scripts/vm/run-tests.sh boots one); anywhere
//! else each test prints why and returns.

mod common;

use std::path::Path;

use common::containerd::{describe, stdout, Containerd};
use common::v2::{
    block_device, block_probe, cgroup_root, probe_allowed, probe_refused, pure_v2, read,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn frozen(dir: &Path) -> Option<String> {
    read(dir, "cgroup.events")
        .lines()
        .find_map(|l| l.strip_prefix("frozen ").map(str::to_string))
}

/// `ctr task metrics --format json` of `id`, parsed.
fn metrics_json(cd: &Containerd, id: &str) -> Value {
    let text = cd.ctr_ok(&["task", "metrics", "--format", "json", id]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("metrics json: {e}\n{text}"))
}

/// The value of `name` in `ctr task metrics`' table.
fn table_value<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(name)).then(|| f.next()).flatten()
    })
}

#[test]
fn task_metrics_are_v2_metrics() {
    if !pure_v2("task_metrics_are_v2_metrics") {
        return;
    }
    let cd = Containerd::start();
    let limit = (64 * MIB).to_string();
    cd.run_detached("m", &["--memory-limit", &limit], &["sleep", "1000"]);
    let table = cd.ctr_ok(&["task", "metrics", "m"]);
    // ctr prints the v2 table only for io.containerd.cgroups.v2.Metrics.
    assert_eq!(
        table_value(&table, "memory.usage_limit"),
        Some(limit.as_str()),
        "{table}"
    );
    assert_eq!(table_value(&table, "pids.current"), Some("1"), "{table}");
    for name in ["cpu.usage_usec", "cpu.nr_throttled", "memory.swap_limit"] {
        assert!(table_value(&table, name).is_some(), "no {name}:\n{table}");
    }
    assert!(
        table_value(&table, "memory.usage_in_bytes").is_none(),
        "v1 metrics on a v2 host:\n{table}"
    );
    let json = metrics_json(&cd, "m");
    assert!(
        json["memory"]["usage"].as_u64().unwrap_or(0) > 0,
        "memory usage: {json:#}"
    );
    assert_eq!(json["pids"]["current"].as_u64(), Some(1), "{json:#}");
    cd.remove("m");
    cd.assert_no_leaks();
}

#[test]
fn io_stat_reaches_task_metrics() {
    if !pure_v2("io_stat_reaches_task_metrics") {
        return;
    }
    let Some((name, dev)) = block_device("io_stat_reaches_task_metrics") else {
        return;
    };
    let cd = Containerd::start();
    let node = format!("/dev/{name}");
    cd.run_detached("io", &["--device", &node], &["sleep", "1000"]);
    // O_DIRECT reads reach the disk, so the container's io.stat counts them.
    let out = cd.exec(
        "io",
        "dd",
        &[],
        &[
            "dd",
            &format!("if={node}"),
            "of=/dev/null",
            "bs=64k",
            "count=32",
            "iflag=direct",
        ],
    );
    assert!(
        out.status.success(),
        "dd in the container: {}",
        describe(&out)
    );
    let json = metrics_json(&cd, "io");
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (u64, u64) = (major.parse().unwrap(), minor.parse().unwrap());
    // ctr's JSON leaves out zero fields (minor 0 included).
    let field = |e: &Value, name: &str| e[name].as_u64().unwrap_or(0);
    let entry = json["io"]["usage"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| field(e, "major") == major && field(e, "minor") == minor)
        })
        .unwrap_or_else(|| panic!("no io entry for {dev}: {json:#}"));
    assert!(
        entry["rbytes"].as_u64().unwrap_or(0) >= 2 * MIB,
        "{entry:#}"
    );
    assert!(entry["rios"].as_u64().unwrap_or(0) >= 32, "{entry:#}");
    cd.remove("io");
    cd.assert_no_leaks();
}

#[test]
fn pause_and_resume_use_cgroup_freeze() {
    if !pure_v2("pause_and_resume_use_cgroup_freeze") {
        return;
    }
    let cd = Containerd::start();
    cd.run_detached("p", &[], &["sleep", "1000"]);
    let dir = cgroup_root().join(&cd.namespace).join("p");
    cd.ctr_ok(&["task", "pause", "p"]);
    assert_eq!(read(&dir, "cgroup.freeze"), "1");
    assert_eq!(frozen(&dir).as_deref(), Some("1"));
    assert_eq!(cd.task_status("p").as_deref(), Some("PAUSED"));
    cd.ctr_ok(&["task", "resume", "p"]);
    assert_eq!(read(&dir, "cgroup.freeze"), "0");
    assert_eq!(frozen(&dir).as_deref(), Some("0"));
    assert_eq!(cd.task_status("p").as_deref(), Some("RUNNING"));
    cd.remove("p");
    cd.assert_no_leaks();
}

#[test]
fn nested_cgroups_path_from_ctr() {
    if !pure_v2("nested_cgroups_path_from_ctr") {
        return;
    }
    let cd = Containerd::start();
    let pod = format!("/{}/pod", cd.namespace);
    let path = format!("{pod}/n");
    let limit = (48 * MIB).to_string();
    cd.run_detached(
        "n",
        &["--cgroup", &path, "--memory-limit", &limit],
        &["sleep", "1000"],
    );
    let dir = cgroup_root().join(path.trim_start_matches('/'));
    assert_eq!(read(&dir, "memory.max"), limit);
    let init = cd.task_pid("n");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap(),
        format!("0::{path}\n")
    );
    let out = cd.exec("n", "cg", &[], &["cat", "/proc/self/cgroup"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("0::{path}\n"));
    cd.remove("n");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The shim made the parents too, and removes them once empty (runc 1.1.5 leaves them).
    let pod_dir = cgroup_root().join(pod.trim_start_matches('/'));
    assert!(!pod_dir.exists(), "{} left behind", pod_dir.display());
    cd.assert_no_leaks();
}

/// The VM's disk as `(node, "major:minor")`, or `None` (and why) without one.
fn disk(test: &str) -> Option<(String, String)> {
    if !pure_v2(test) {
        return None;
    }
    block_device(test).map(|(name, dev)| (format!("/dev/{name}"), dev))
}

/// Runs [`block_probe`] in a new container with `opts`; returns its output.
fn probe_in_new_container(cd: &Containerd, id: &str, opts: &[&str], dev: &str) -> String {
    let out = cd.run(id, opts, &["sh", "-c", &block_probe("/tmp/blk", dev)]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn probe_in(cd: &Containerd, id: &str, exec_id: &str, dev: &str) -> String {
    let out = cd.exec(
        id,
        exec_id,
        &[],
        &["sh", "-c", &block_probe("/tmp/blk", dev)],
    );
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 14: containerd's default spec grants CAP_MKNOD and allows `mknod` of any node; the
/// device filter must refuse opening it (runc's shim: EPERM).
#[test]
fn a_default_container_cannot_use_a_disk_it_mknods() {
    let Some((_, dev)) = disk("a_default_container_cannot_use_a_disk_it_mknods") else {
        return;
    };
    let cd = Containerd::start();
    let out = probe_in_new_container(&cd, "d", &[], &dev);
    assert!(probe_refused(&out), "{out}");
    // The default devices stay usable.
    let out = cd.run(
        "ok",
        &[],
        &[
            "sh",
            "-c",
            "head -c 3 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok",
        ],
    );
    assert_eq!(stdout(&out), "3\n5\nnull-ok\n", "{}", describe(&out));
    cd.assert_no_leaks();
}

#[test]
fn a_device_flag_opens_exactly_that_node() {
    let Some((node, dev)) = disk("a_device_flag_opens_exactly_that_node") else {
        return;
    };
    let cd = Containerd::start();
    let mut opts = vec!["--device", node.as_str()];
    let fuse = std::path::Path::new("/dev/fuse").exists();
    if fuse {
        opts.extend(["--device", "/dev/fuse"]);
    }
    cd.run_detached("dev", &opts, &["sleep", "1000"]);
    let out = cd.exec(
        "dev",
        "read",
        &[],
        &["sh", "-c", &format!("head -c 64 {node} | wc -c")],
    );
    assert_eq!(stdout(&out), "64\n", "{}", describe(&out));
    assert!(probe_allowed(&probe_in(&cd, "dev", "probe", &dev)));
    // Another minor of the same major, and a character device with the same numbers: refused.
    let (major, minor) = dev.split_once(':').unwrap();
    let other = format!("{major}:{}", minor.parse::<u32>().unwrap() + 1);
    let out = probe_in(&cd, "dev", "other", &other);
    assert!(probe_refused(&out), "{other}: {out}");
    let out = cd.exec(
        "dev",
        "chr",
        &[],
        &[
            "sh",
            "-c",
            &format!(
                "mknod /tmp/c c {major} {minor} && (exec 3</tmp/c) 2>&1 | grep -c 'not permitted'"
            ),
        ],
    );
    assert_eq!(stdout(&out), "1\n", "{}", describe(&out));
    if fuse {
        let out = cd.exec(
            "dev",
            "fuse",
            &[],
            &["sh", "-c", "exec 3<>/dev/fuse && echo fuse-ok"],
        );
        assert_eq!(stdout(&out), "fuse-ok\n", "{}", describe(&out));
    }
    cd.remove("dev");
    cd.assert_no_leaks();
}

#[test]
fn a_privileged_container_uses_host_devices() {
    let Some((node, dev)) = disk("a_privileged_container_uses_host_devices") else {
        return;
    };
    let cd = Containerd::start();
    let out = cd.run(
        "priv",
        &["--privileged"],
        &["sh", "-c", &format!("head -c 64 {node} | wc -c")],
    );
    assert_eq!(stdout(&out), "64\n", "{}", describe(&out));
    let out = probe_in_new_container(&cd, "priv2", &["--privileged"], &dev);
    assert!(probe_allowed(&out), "{out}");
    cd.assert_no_leaks();
}

#[test]
fn an_update_keeps_the_device_filter() {
    let Some((_, dev)) = disk("an_update_keeps_the_device_filter") else {
        return;
    };
    let cd = Containerd::start();
    cd.run_detached("u", &[], &["sleep", "1000"]);
    let dir = cgroup_root().join(&cd.namespace).join("u");
    let out = cd.update_resources("u", &serde_json::json!({"memory": {"limit": 64 * MIB}}));
    assert!(out.status.success(), "update: {}", describe(&out));
    assert_eq!(read(&dir, "memory.max"), (64 * MIB).to_string());
    let out = probe_in(&cd, "u", "after", &dev);
    assert!(probe_refused(&out), "after the update: {out}");
    let programs = pelagos::cgroups::attached_device_programs(&dir).unwrap();
    assert_eq!(programs.len(), 1, "{programs:?}");
    cd.remove("u");
    cd.assert_no_leaks();
}

#[test]
fn each_container_of_a_group_gets_its_filter() {
    let Some((node, dev)) = disk("each_container_of_a_group_gets_its_filter") else {
        return;
    };
    let cd = Containerd::start();
    let group = "io.containerd.runc.v2.group=devpod";
    cd.run_detached(
        "first",
        &["--annotation", group, "--device", &node],
        &["sleep", "1000"],
    );
    cd.run_detached("second", &["--annotation", group], &["sleep", "1000"]);
    assert_eq!(cd.shim_pids().len(), 1, "one shim for the group");
    assert!(probe_allowed(&probe_in(&cd, "first", "p1", &dev)));
    let out = probe_in(&cd, "second", "p2", &dev);
    assert!(probe_refused(&out), "second container: {out}");
    for id in ["first", "second"] {
        let dir = cgroup_root().join(&cd.namespace).join(id);
        let programs = pelagos::cgroups::attached_device_programs(&dir).unwrap();
        assert_eq!(programs.len(), 1, "{id}: {programs:?}");
    }
    cd.remove("second");
    cd.remove("first");
    cd.assert_no_leaks();
}
