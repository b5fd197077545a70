//! User-namespaced pods (Kubernetes `hostUsers: false`) through containerd 2.1's CRI with the
//! `pelagos` handler (issue 22): the pod's mapping, its sandbox and containers in one user
//! namespace, the image's files through containerd's idmapped overlay, volumes idmapped with the
//! mount's mappings, and the modes CRI refuses. runc 1.1.5 (Debian's) has no idmapped mounts:
//! containerd refuses it such pods (`runc_cannot_run_userns_pods`).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::containerd::ns_link;
use common::cri::{Cri, PELAGOS, RUNC};
use k8s_cri::v1::*;

/// User namespaces with idmapped overlays and volumes need containerd 2.x's CRI.
const CD: &str = "2.1";
/// The pod's ids: container 0..65536 are host 100000..165536, as kubelet hands out ranges.
const HOST_ID: u32 = 100000;
const LENGTH: u32 = 65536;

fn mapping(host_id: u32, container_id: u32, length: u32) -> IdMapping {
    IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn pod_mapping() -> Vec<IdMapping> {
    vec![mapping(HOST_ID, 0, LENGTH)]
}

/// A pod with its own network namespace (CRI pins a pod's user namespace there) and user
/// namespace mode `mode` with `maps` for uids and gids.
fn userns_pod(
    cri: &Cri,
    name: &str,
    mode: NamespaceMode,
    maps: Vec<IdMapping>,
) -> PodSandboxConfig {
    let mut pod = cri.pod_config(name);
    let ns = pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod namespace options");
    ns.network = NamespaceMode::Pod as i32;
    ns.userns_options = Some(UserNamespace {
        mode: mode as i32,
        uids: maps.clone(),
        gids: maps,
    });
    pod
}

fn host_uid(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn pelagos_userns_pod_with_idmapped_volumes() {
    let cri = Cri::start_on(CD, PELAGOS, true, |_, _| String::new());
    // Beside containerd's root: a disk filesystem (idmapped tmpfs needs Linux 6.3).
    let vol = cri.cd.root_dir().join("volume");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("root-file"), "r").unwrap();
    let pod = userns_pod(&cri, "userns", NamespaceMode::Pod, pod_mapping());
    let pod_id = cri.run_pod_ok(&pod);

    let mut c = Cri::container_config("app", &["sleep", "1000"]);
    c.mounts.push(Mount {
        container_path: "/idmapped".into(),
        host_path: vol.to_string_lossy().into_owned(),
        uid_mappings: pod_mapping(),
        gid_mappings: pod_mapping(),
        ..Default::default()
    });
    c.mounts.push(Mount {
        container_path: "/plain".into(),
        host_path: vol.to_string_lossy().into_owned(),
        ..Default::default()
    });
    let id = cri.run_container(&pod_id, &pod, &c);

    // The pod's mapping, root inside, uid 100000 on the host.
    let uid_map = cri.exec_ok(&id, &["cat", "/proc/self/uid_map"]);
    assert_eq!(words(&uid_map), "0 100000 65536");
    assert_eq!(
        words(&cri.exec_ok(&id, &["cat", "/proc/self/gid_map"])),
        "0 100000 65536"
    );
    assert_eq!(cri.exec_ok(&id, &["id", "-u"]).trim(), "0");
    let pid = cri.container_pid(&id);
    assert_eq!(host_uid(pid), HOST_ID.to_string());
    // Sandbox and container share the one user namespace.
    let sandbox_pid = cri.container_pid(&pod_id);
    assert_eq!(ns_link(sandbox_pid, "user"), ns_link(pid, "user"));
    assert_ne!(ns_link(pid, "user"), ns_link(std::process::id(), "user"));

    // The image's files (root-owned on the host) are root's through the idmapped overlay.
    assert_eq!(
        cri.exec_ok(&id, &["stat", "-c", "%u:%g", "/bin/busybox"])
            .trim(),
        "0:0"
    );
    cri.exec_ok(&id, &["touch", "/in-rootfs"]);
    // The volume with the pod's mapping: host root's file is root's inside, and what the
    // container's root writes is host root's on the host.
    assert_eq!(
        cri.exec_ok(&id, &["stat", "-c", "%u:%g", "/idmapped/root-file"])
            .trim(),
        "0:0"
    );
    cri.exec_ok(&id, &["sh", "-c", "echo w > /idmapped/written"]);
    let w = fs::metadata(vol.join("written")).unwrap();
    assert_eq!((w.uid(), w.gid()), (0, 0));
    // Without mappings the same directory shows host root as the overflow id, read-only for
    // the container's root.
    assert_eq!(
        cri.exec_ok(&id, &["stat", "-c", "%u:%g", "/plain/root-file"])
            .trim(),
        "65534:65534"
    );
    let (code, _, _) = cri
        .exec_sync(&id, &["sh", "-c", "echo x > /plain/root-file"])
        .expect("ExecSync");
    assert_ne!(
        code, 0,
        "the container's root wrote a host root file without idmap"
    );

    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

/// `NODE` runs in the host's user namespace; `CONTAINER`, `TARGET` and more than one mapping
/// are refused, as the CRI API says.
#[test]
fn pelagos_userns_modes() {
    let cri = Cri::start_on(CD, PELAGOS, true, |_, _| String::new());
    let pod = userns_pod(&cri, "node", NamespaceMode::Node, Vec::new());
    let pod_id = cri.run_pod_ok(&pod);
    let id = cri.run_container(
        &pod_id,
        &pod,
        &Cri::container_config("c", &["sleep", "1000"]),
    );
    assert_eq!(
        ns_link(cri.container_pid(&id), "user"),
        ns_link(std::process::id(), "user")
    );
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);

    let two = vec![
        mapping(HOST_ID, 0, 1000),
        mapping(HOST_ID + 2000, 1000, 1000),
    ];
    for (name, mode, maps, why) in [
        (
            "container",
            NamespaceMode::Container,
            pod_mapping(),
            "unsupported user namespace mode",
        ),
        (
            "target",
            NamespaceMode::Target,
            pod_mapping(),
            "unsupported user namespace mode",
        ),
        ("two", NamespaceMode::Pod, two, "only one uid mapping"),
    ] {
        let pod = userns_pod(&cri, name, mode, maps);
        let err = cri
            .run_pod(&pod)
            .expect_err(&format!("a {name} user namespace was accepted"));
        assert!(err.message().contains(why), "{name}: {}", err.message());
    }
    cri.assert_no_leaks();
}

/// The control: containerd 2.1 refuses the same pod's containers on runc 1.1.5, whose features
/// have no idmapped mounts (containerd asks for them to idmap the image's layers).
#[test]
fn runc_cannot_run_userns_pods() {
    let cri = Cri::start_on(CD, RUNC, true, |_, _| String::new());
    let pod = userns_pod(&cri, "userns", NamespaceMode::Pod, pod_mapping());
    let pod_id = cri.run_pod_ok(&pod);
    let err = cri
        .try_run_container(
            &pod_id,
            &pod,
            &Cri::container_config("app", &["sleep", "1000"]),
        )
        .expect_err("runc 1.1.5 ran a user-namespaced container");
    assert!(err.message().contains("idmap"), "{}", err.message());
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}
