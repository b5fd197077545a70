//! The systemd cgroup driver as a Kubernetes node runs it: CRI handlers with `SystemdCgroup =
//! true` (pelagos, and runc's shim as the control) and pods whose cgroup parent is a slice.
//!
//! On a host booted with systemd (the VM of `PELAGOS_VM_INIT=systemd scripts/vm/run-tests.sh`):
//! each container is a transient `cri-containerd-<id>.scope` in the pod's slice, active, with the
//! container's processes, its limits in the unit's properties and in the cgroup files; a
//! `systemctl daemon-reload` and a `set-property` on the pod slice leave the limits and the
//! device filter as they were; an update reaches the unit too; removing the pod leaves no unit
//! and no cgroup; a cgroupfs-form parent is refused; `org.systemd.property.*` annotations
//! become unit properties, a malformed one fails the start naming it. Without systemd the
//! handler refuses the pod, saying why.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::cri::{pelagos_handler, runtimes_table, Cri};
use k8s_cri::v1::{LinuxContainerResources, UpdateContainerResourcesRequest};

const PELAGOS_SYSTEMD: &str = "pelagos-systemd";
const RUNC_SYSTEMD: &str = "runc-systemd";
const MEMORY: i64 = 64 << 20;
const UPDATED_MEMORY: i64 = 96 << 20;

/// Both handlers pass `org.systemd.property.*` container annotations on to the spec, as a node
/// that uses them must configure.
fn handlers(major: u32, dir: &Path) -> String {
    let t = runtimes_table(major);
    let passthrough = "      container_annotations = [\"org.systemd.property.*\"]\n";
    pelagos_handler(major, dir, PELAGOS_SYSTEMD, "SystemdCgroup = true\n").replacen(
        "runtime_type = \"io.containerd.pelagos.v2\"\n",
        &format!("runtime_type = \"io.containerd.pelagos.v2\"\n{passthrough}"),
        1,
    ) + &format!(
        "    [{t}.{RUNC_SYSTEMD}]\n      runtime_type = \"io.containerd.runc.v2\"\n{passthrough}    \
         [{t}.{RUNC_SYSTEMD}.options]\n      SystemdCgroup = true\n"
    )
}

fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("run systemctl");
    assert!(
        out.status.success(),
        "systemctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `systemctl show -p NAME unit` for each name, as `NAME=value` lines.
fn show(unit: &str, props: &[&str]) -> Vec<String> {
    let mut args = vec!["show", unit];
    for p in props {
        args.extend(["-p", p]);
    }
    let out = systemctl(&args);
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn prop(unit: &str, name: &str) -> String {
    show(unit, &[name])
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn unified() -> bool {
    pelagos::cgroups::mode() == pelagos::cgroups::Mode::Unified
}

/// What must hold of a running container whatever systemd was asked meanwhile. On cgroup v2
/// the unit has MemoryMax and TasksMax and the device filter is eBPF; on hybrid and v1 hosts
/// MemoryLimit (systemd's v1 name) and the v1 devices controller.
fn check_container(cri: &Cri, id: &str, slice: &str, memory: i64) {
    let unit = format!("cri-containerd-{id}.scope");
    assert_eq!(prop(&unit, "ActiveState"), "active", "{unit}");
    assert_eq!(prop(&unit, "Slice"), slice, "{unit}");
    assert_eq!(prop(&unit, "Delegate"), "yes", "{unit}");
    assert_eq!(prop(&unit, "CPUQuotaPerSecUSec"), "500ms", "{unit}");
    assert_eq!(prop(&unit, "DevicePolicy"), "strict", "{unit}");
    let path = format!("/{slice}/{unit}");
    assert_eq!(prop(&unit, "ControlGroup"), path, "{unit}");
    let pid = cri.container_pid(id);
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let rel = path.trim_start_matches('/');
    if unified() {
        assert_eq!(prop(&unit, "MemoryMax"), memory.to_string(), "{unit}");
        assert_eq!(prop(&unit, "TasksMax"), "77", "{unit}");
        assert_eq!(own, format!("0::{path}"), "container init {pid}");
        let dir = Path::new("/sys/fs/cgroup").join(rel);
        assert_eq!(read(&dir.join("memory.max")), memory.to_string());
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("pids.max")), "77");
        // pelagos keeps its program beside systemd's; runc replaces systemd's at create
        // (systemd attaches its own again at the next reload): only one is sure to be there.
        let names = pelagos::cgroups::attached_device_program_names(&dir).unwrap();
        if cri.handler == PELAGOS_SYSTEMD {
            assert_eq!(names, ["pelagos_dev", "sd_devices"], "{}", dir.display());
        } else {
            assert!(!names.is_empty(), "no device program on {}", dir.display());
        }
    } else {
        assert_eq!(prop(&unit, "MemoryLimit"), memory.to_string(), "{unit}");
        for c in ["memory", "cpu,cpuacct", "pids", "devices"] {
            assert!(
                own.lines()
                    .any(|l| l.split(':').nth(1) == Some(c) && l.ends_with(&path)),
                "container init {pid} not in {path} of {c}: {own}"
            );
        }
        let v1 = |c: &str, f: &str| read(&Path::new("/sys/fs/cgroup").join(c).join(rel).join(f));
        assert_eq!(v1("memory", "memory.limit_in_bytes"), memory.to_string());
        assert_eq!(v1("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        let devices = v1("devices", "devices.list");
        assert!(!devices.contains("a *:* rwm"), "{unit} allows every device");
    }
    // The device filter: a node it made itself (mknod is allowed) cannot be opened, /dev/null
    // can. systemd's program and the runtime's are both on the scope; either refuses.
    let (code, out, err) = cri
        .exec_sync(
            id,
            &[
                "sh",
                "-c",
                "rm -f /tmp/mem; mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem; echo rc=$?; \
                 echo x >/dev/null && echo null-ok",
            ],
        )
        .expect("ExecSync");
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        err.contains("Operation not permitted") && out.contains("rc=1") && out.contains("null-ok"),
        "device filter of {unit} does not hold: stdout {out:?} stderr {err:?}"
    );
}

fn systemd_driver(handler: &str) {
    let cri = Cri::start_with(handler, handlers);
    let mut pod = cri.pod_config("sd");
    let slice = cri.slice_parent();
    pod.linux.as_mut().unwrap().cgroup_parent = slice.clone();
    if !booted() {
        // Without systemd the driver cannot work; the pod is refused, not laid out by hand.
        let err = cri
            .run_pod(&pod)
            .expect_err("a systemd-driver pod without systemd");
        if handler == PELAGOS_SYSTEMD {
            assert!(
                err.message().contains("systemd is not running"),
                "{}",
                err.message()
            );
        }
        cri.assert_no_leaks();
        return;
    }
    let pod_id = cri.run_pod_ok(&pod);
    let pod_unit = format!("cri-containerd-{pod_id}.scope");
    assert_eq!(
        prop(&pod_unit, "ActiveState"),
        "active",
        "sandbox {pod_unit}"
    );
    let mut config = Cri::container_config("app", &["sleep", "1000"]);
    let resources = config
        .linux
        .as_mut()
        .unwrap()
        .resources
        .get_or_insert_with(Default::default);
    resources.memory_limit_in_bytes = MEMORY;
    resources.cpu_period = 100_000;
    resources.cpu_quota = 50_000;
    resources.cpu_shares = 512;
    if unified() {
        resources
            .unified
            .insert("pids.max".to_string(), "77".to_string());
    }
    // runc's org.systemd.property.<Name> annotations: more properties of the scope (GVariant
    // values; <name>Sec in seconds, set as <name>USec).
    for (k, v) in [
        ("CollectMode", "'inactive-or-failed'"),
        ("TimeoutStopSec", "123"),
        ("RuntimeMaxUSec", "uint64 3600000000"),
    ] {
        config
            .annotations
            .insert(format!("org.systemd.property.{k}"), v.to_string());
    }
    let id = cri.run_container(&pod_id, &pod, &config);
    check_container(&cri, &id, &slice, MEMORY);
    let unit = format!("cri-containerd-{id}.scope");
    assert_eq!(prop(&unit, "CollectMode"), "inactive-or-failed", "{unit}");
    assert_eq!(prop(&unit, "TimeoutStopUSec"), "2min 3s", "{unit}");
    assert_eq!(prop(&unit, "RuntimeMaxUSec"), "1h", "{unit}");

    systemctl(&["daemon-reload"]);
    check_container(&cri, &id, &slice, MEMORY);
    systemctl(&["set-property", "--runtime", &slice, "MemoryMax=1G"]);
    assert_eq!(prop(&slice, "MemoryMax"), (1u64 << 30).to_string());
    check_container(&cri, &id, &slice, MEMORY);

    cri.block(
        cri.rs()
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: UPDATED_MEMORY,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 512,
                    unified: match unified() {
                        true => [("pids.max".to_string(), "77".to_string())].into(),
                        false => Default::default(),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
    )
    .expect("UpdateContainerResources");
    check_container(&cri, &id, &slice, UPDATED_MEMORY);
    systemctl(&["daemon-reload"]);
    check_container(&cri, &id, &slice, UPDATED_MEMORY);

    // Input systemd takes but the kernel refuses (a cpu this host does not have): the start
    // fails, saying so, and leaves neither a unit nor a cgroup.
    let mut bad = Cri::container_config("bad", &["sleep", "1000"]);
    bad.linux
        .as_mut()
        .unwrap()
        .resources
        .get_or_insert_with(Default::default)
        .cpuset_cpus = "63".to_string();
    let bad_id = cri
        .create_container(&pod_id, &pod, &bad)
        .expect("CreateContainer");
    let err = cri
        .start_container(&bad_id)
        .expect_err("a container on cpu 63");
    assert!(err.message().contains("cpus"), "{}", err.message());
    let bad_unit = format!("cri-containerd-{bad_id}.scope");
    assert_eq!(
        prop(&bad_unit, "LoadState"),
        "not-found",
        "{bad_unit} left behind"
    );
    let left: Vec<_> = common::containerd::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(&slice).join(&bad_unit))
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    cri.remove_container(&bad_id);

    // A malformed property annotation fails the start, naming it, and leaves no unit.
    let mut bad = Cri::container_config("badprop", &["sleep", "1000"]);
    let key = "org.systemd.property.Bad-Name";
    bad.annotations.insert(key.to_string(), "1".to_string());
    let bad_id = cri
        .create_container(&pod_id, &pod, &bad)
        .expect("CreateContainer");
    let err = cri
        .start_container(&bad_id)
        .expect_err("a container with a malformed property annotation");
    assert!(err.message().contains(key), "{}", err.message());
    let bad_unit = format!("cri-containerd-{bad_id}.scope");
    assert_eq!(
        prop(&bad_unit, "LoadState"),
        "not-found",
        "{bad_unit} left behind"
    );
    cri.remove_container(&bad_id);

    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    for u in [&unit, &pod_unit] {
        assert_eq!(prop(u, "LoadState"), "not-found", "{u} left behind");
    }
    for u in [&id, &pod_id] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(&slice)
            .join(format!("cri-containerd-{u}.scope"));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    cri.assert_no_leaks();
    // The pod slice is the kubelet's to remove, as it does.
    systemctl(&["stop", &slice]);

    // A cgroupfs parent under the systemd driver: CRI writes a plain path, which names no unit.
    let mut plain = cri.pod_config("sd-plain");
    plain.linux.as_mut().unwrap().cgroup_parent = cri.cgroup_parent.clone();
    let err = cri
        .run_pod(&plain)
        .expect_err("a systemd-driver pod with a cgroupfs parent");
    assert!(
        err.message().contains("slice:prefix:name"),
        "{}",
        err.message()
    );
    cri.assert_no_leaks();
}

#[test]
fn pelagos_systemd_driver() {
    systemd_driver(PELAGOS_SYSTEMD);
}

#[test]
fn runc_systemd_driver() {
    systemd_driver(RUNC_SYSTEMD);
}
