//! CRI container features through containerd with the `pelagos` handler, each scenario also
//! run with `runc` as a control: stats, resource updates, read-only rootfs, users, privileged
//! pods, capabilities, seccomp profiles, sysctls, host namespaces, OOMKilled.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::containerd::ns_link;
use common::cri::{map, Cri};
use k8s_cri::v1::*;

/// A field of /proc/<pid>/status as the container sees it (`cat /proc/1/status` in its own
/// pid namespace).
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

fn cap_mask(status: &str, name: &str) -> u64 {
    u64::from_str_radix(&status_field(status, name), 16).expect("hex capability mask")
}

const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// ContainerStats and PodSandboxStats report CPU and memory use; UpdateContainerResources
/// changes the container's cgroup.
fn stats_and_update(handler: &str) {
    let cri = Cri::start(handler);
    let pod = cri.pod_config("stats");
    let pod_id = cri.run_pod_ok(&pod);
    let app = Cri::container_config(
        "busy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo done; exec sleep 1000",
        ],
    );
    let id = cri.run_container(&pod_id, &pod, &app);
    // The loop has run once its output is logged.
    let log = Cri::log_path(&pod, &app);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(log.exists() && Cri::log_lines(&log).iter().any(|(_, l)| l == "done")) {
        assert!(Instant::now() < deadline, "busy container never finished");
        std::thread::sleep(Duration::from_millis(50));
    }

    let stats = cri
        .block(cri.rs().container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        }))
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("container stats");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(cpu > 0, "container cpu usage {cpu}");
    assert!(mem > 0, "container working set {mem}");

    let pstats = cri.block(cri.rs().pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: pod_id.clone(),
    }));
    match pstats {
        // containerd 1.6 loads a pod's cgroup from its parent as a path and cannot take a slice
        // name (the systemd driver's parent), whatever the runtime.
        Err(e) if common::cri::systemd_driver() && e.message().contains("invalid group path") => {}
        pstats => {
            let pstats = pstats
                .expect("PodSandboxStats")
                .into_inner()
                .stats
                .expect("pod stats");
            let linux = pstats.linux.expect("linux pod stats");
            let pcpu = linux
                .cpu
                .and_then(|c| c.usage_core_nano_seconds)
                .map(|v| v.value)
                .unwrap_or(0);
            let pmem = linux
                .memory
                .and_then(|m| m.working_set_bytes)
                .map(|v| v.value)
                .unwrap_or(0);
            assert!(pcpu > 0, "pod cpu usage {pcpu}");
            assert!(pmem > 0, "pod working set {pmem}");
            assert!(
                linux
                    .containers
                    .iter()
                    .any(|c| c.attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str())),
                "pod stats list no container {id}"
            );
        }
    }

    let limit: i64 = 96 << 20;
    cri.block(
        cri.rs()
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: limit,
                    cpu_shares: 512,
                    ..Default::default()
                }),
                ..Default::default()
            }),
    )
    .expect("UpdateContainerResources");
    let rel = Cri::container_cgroup(&pod, &id);
    let mem_file = cri
        .cgroup_file(&rel, "memory.limit_in_bytes")
        .or_else(|| cri.cgroup_file(&rel, "memory.max"))
        .expect("container memory cgroup");
    assert_eq!(
        fs::read_to_string(&mem_file).unwrap().trim(),
        limit.to_string(),
        "{}",
        mem_file.display()
    );
    // cpu.shares 512 on v1, its cpu.weight on v2 (runc's conversion: 1 + (512 - 2) * 9999 /
    // 262142).
    let (file, want) = match cri.cgroup_file(&rel, "cpu.shares") {
        Some(f) => (f, "512"),
        None => (
            cri.cgroup_file(&rel, "cpu.weight")
                .expect("container cpu cgroup (cpu.shares or cpu.weight)"),
            "20",
        ),
    };
    assert_eq!(
        fs::read_to_string(&file).unwrap().trim(),
        want,
        "{}",
        file.display()
    );
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

/// Read-only rootfs, run-as user and group, capability add/drop, privileged, sysctls.
fn security(handler: &str) {
    let cri = Cri::start(handler);
    let mut pod = cri.pod_config("sec");
    {
        let linux = pod.linux.as_mut().unwrap();
        linux.sysctls = map(&[("kernel.shm_rmid_forced", "1")]);
        linux.security_context.as_mut().unwrap().privileged = true;
    }
    let pod_id = cri.run_pod_ok(&pod);

    let mut ro = Cri::container_config("ro", &["sleep", "1000"]);
    {
        let sc = Cri::security(&mut ro);
        sc.readonly_rootfs = true;
        sc.run_as_user = Some(Int64Value { value: 1000 });
        sc.run_as_group = Some(Int64Value { value: 2000 });
        sc.capabilities = Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        });
    }
    let ro_id = cri.run_container(&pod_id, &pod, &ro);
    assert_eq!(cri.exec_ok(&ro_id, &["id", "-u"]).trim(), "1000");
    assert_eq!(cri.exec_ok(&ro_id, &["id", "-g"]).trim(), "2000");
    let (code, _, err) = cri
        .exec_sync(&ro_id, &["touch", "/newfile"])
        .expect("ExecSync");
    assert_ne!(code, 0, "touch on a read-only rootfs succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    // The bounding set (a non-root user has no effective capabilities).
    let status = cri.exec_ok(&ro_id, &["cat", "/proc/1/status"]);
    let bnd = cap_mask(&status, "CapBnd");
    assert_ne!(bnd & CAP_NET_ADMIN, 0, "NET_ADMIN not added: {bnd:x}");
    assert_eq!(bnd & CAP_CHOWN, 0, "CHOWN not dropped: {bnd:x}");
    assert_eq!(
        bnd & CAP_SYS_ADMIN,
        0,
        "SYS_ADMIN in a default container: {bnd:x}"
    );
    assert_eq!(
        cri.exec_ok(&ro_id, &["cat", "/proc/sys/kernel/shm_rmid_forced"])
            .trim(),
        "1"
    );

    let mut privileged = Cri::container_config("priv", &["sleep", "1000"]);
    Cri::security(&mut privileged).privileged = true;
    let priv_id = cri.run_container(&pod_id, &pod, &privileged);
    let status = cri.exec_ok(&priv_id, &["cat", "/proc/1/status"]);
    let eff = cap_mask(&status, "CapEff");
    let host = fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(eff, cap_mask(&host, "CapBnd"), "privileged CapEff {eff:x}");
    assert_eq!(status_field(&status, "Seccomp"), "0");
    // Privileged containers may mount.
    cri.exec_ok(&priv_id, &["mount", "-t", "tmpfs", "t", "/tmp"]);
    cri.exec_ok(&priv_id, &["umount", "/tmp"]);

    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

/// Seccomp RuntimeDefault and a Localhost profile.
fn seccomp(handler: &str) {
    let cri = Cri::start(handler);
    let profile = cri.work.join("deny-mkdir.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let pod = cri.pod_config("seccomp");
    let pod_id = cri.run_pod_ok(&pod);

    let mut default = Cri::container_config("default", &["sleep", "1000"]);
    Cri::security(&mut default).seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let default_id = cri.run_container(&pod_id, &pod, &default);
    let status = cri.exec_ok(&default_id, &["cat", "/proc/1/status"]);
    assert_eq!(status_field(&status, "Seccomp"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs"), "0");
    // The default profile refuses unshare of a user namespace without CAP_SYS_ADMIN.
    let (code, _, _) = cri
        .exec_sync(&default_id, &["unshare", "-U", "true"])
        .expect("ExecSync");
    assert_ne!(code, 0, "unshare -U allowed under RuntimeDefault");
    cri.exec_ok(&default_id, &["mkdir", "/tmp/ok"]);

    let mut local = Cri::container_config("local", &["sleep", "1000"]);
    Cri::security(&mut local).seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.to_string_lossy().into_owned(),
    });
    let local_id = cri.run_container(&pod_id, &pod, &local);
    let (code, _, err) = cri
        .exec_sync(&local_id, &["mkdir", "/tmp/denied"])
        .expect("ExecSync");
    assert_ne!(code, 0, "mkdir allowed under the Localhost profile");
    assert!(err.contains("Operation not permitted"), "{err}");
    cri.exec_ok(&local_id, &["touch", "/tmp/allowed"]);

    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

/// A pod on the host's network, pid and ipc namespaces.
fn host_namespaces(handler: &str) {
    let cri = Cri::start(handler);
    let mut pod = cri.pod_config("hostns");
    Cri::set_namespaces(
        &mut pod,
        NamespaceMode::Node,
        NamespaceMode::Node,
        NamespaceMode::Node,
    );
    let pod_id = cri.run_pod_ok(&pod);
    let id = cri.run_container(
        &pod_id,
        &pod,
        &Cri::container_config("app", &["sleep", "1000"]),
    );
    let pid = cri.container_pid(&id);
    let me = std::process::id();
    for ns in ["net", "pid", "ipc", "uts"] {
        assert_eq!(ns_link(pid, ns), ns_link(me, ns), "{ns} is not the host's");
    }
    assert_ne!(ns_link(pid, "mnt"), ns_link(me, "mnt"));
    // The host's processes are visible, this test among them. (Not `ls /proc`: it fails
    // when a host process exits while it lists.)
    let probe = format!("/proc/{me}/status");
    let status = cri.exec_ok(&id, &["cat", &probe]);
    assert!(
        status.lines().any(|l| l == format!("Pid:\t{me}")),
        "pid {me} not visible: {status}"
    );
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

/// A container over its memory limit is OOM-killed and CRI reports the reason.
fn oom_killed(handler: &str) {
    let cri = Cri::start(handler);
    let pod = cri.pod_config("oom");
    let pod_id = cri.run_pod_ok(&pod);
    let mut hog = Cri::container_config("hog", &["tail", "/dev/zero"]);
    hog.linux
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .memory_limit_in_bytes = 32 << 20;
    let hog_id = cri.run_container(&pod_id, &pod, &hog);
    let st = cri.wait_exited(&hog_id);
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137, "{st:?}");
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

pelagos_and_runc!(
    stats_and_update,
    security,
    seccomp,
    host_namespaces,
    oom_killed
);
