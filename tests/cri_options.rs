//! Runtime options of a CRI runtime handler reach the pelagos shim as
//! `runtimeoptions.v1.Options` and are decoded; bad ones fail pod creation with an error naming
//! the problem, in the CRI response and in containerd's log, and leave nothing behind.

mod common;

use std::fs;
use std::path::Path;

use common::cri::{pelagos_handler, Cri};

fn handlers(major: u32, dir: &Path) -> String {
    [
        (
            "pelagos-opts",
            "LogLevel = \"debug\"\nNoPivotRoot = false\n",
        ),
        ("pelagos-typo", "Sytemdcgroup = true\n"),
        ("pelagos-systemd", "SystemdCgroup = true\n"),
        ("pelagos-badlevel", "LogLevel = \"loud\"\n"),
    ]
    .iter()
    .map(|(name, opts)| pelagos_handler(major, dir, name, opts))
    .collect()
}

/// The pod is refused with every piece of `want` in the CRI error and in one error line of
/// containerd's log (which escapes quotes).
fn refused(cri: &mut Cri, handler: &str, want: &[&str]) {
    cri.handler = handler.to_owned();
    let pod = cri.pod_config(handler);
    let err = cri
        .run_pod(&pod)
        .expect_err("RunPodSandbox with bad runtime options succeeded");
    assert!(
        want.iter().all(|w| err.message().contains(w)),
        "CRI error {:?} does not say {want:?}",
        err.message()
    );
    let log = fs::read_to_string(cri.cd.log_path()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("level=error") && want.iter().all(|w| l.contains(w))),
        "containerd log has no error saying {want:?}:\n{}",
        cri.cd.log_tail(30)
    );
    cri.assert_no_leaks();
}

#[test]
fn pelagos_runtime_options() {
    let mut cri = Cri::start_with("pelagos-opts", handlers);
    let pod = cri.pod_config("opts");
    let pod_id = cri.run_pod_ok(&pod);
    let id = cri.run_container(
        &pod_id,
        &pod,
        &Cri::container_config("app", &["sleep", "1000"]),
    );
    assert_eq!(cri.exec_ok(&id, &["echo", "ok"]), "ok\n");
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();

    let origin = if cri.major() >= 2 {
        "CRI config body"
    } else {
        "pelagos-typo.toml"
    };
    refused(
        &mut cri,
        "pelagos-typo",
        &[
            origin,
            "unknown key",
            "Sytemdcgroup",
            "known: SystemdCgroup",
        ],
    );
    refused(
        &mut cri,
        "pelagos-badlevel",
        &["LogLevel = ", "loud", "is not one of error, warn"],
    );
    if !Path::new("/run/systemd/system").is_dir() {
        refused(
            &mut cri,
            "pelagos-systemd",
            &["SystemdCgroup = true but systemd is not running"],
        );
    }
}

/// `LogLevel` and `ShimCgroup` from the handler's options are applied by the shim.
#[test]
fn pelagos_log_level_and_shim_cgroup_are_honoured() {
    if std::env::var_os("PELAGOS_TEST_DEBUG").is_some() {
        return; // containerd at debug level runs every shim with -debug.
    }
    let shim_cg = format!("/pelagos-cri-shim-{}", std::process::id());
    // As with runc's shim, ShimCgroup names a cgroup the operator made.
    common::containerd::make_cgroup(&shim_cg, &common::containerd::cgroup_mounts());
    let opts = format!("LogLevel = \"debug\"\nShimCgroup = \"{shim_cg}\"\n");
    let cri = Cri::start_with("pelagos-debug", |major, dir| {
        pelagos_handler(major, dir, "pelagos-debug", &opts)
    });
    let pod = cri.pod_config("dbg");
    let pod_id = cri.run_pod_ok(&pod);
    let log = fs::read_to_string(cri.cd.log_path()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("level=debug") && l.contains("runtime=io.containerd.pelagos.v2")),
        "no debug line from the shim:\n{}",
        cri.cd.log_tail(30)
    );
    let shims = cri.shims();
    assert_eq!(shims.len(), 1);
    let cg = fs::read_to_string(format!("/proc/{}/cgroup", shims[0])).unwrap();
    let in_cg = cg.lines().any(|l| l.ends_with(&shim_cg));
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
    for m in common::containerd::cgroup_mounts() {
        let _ = fs::remove_dir(m.join(shim_cg.trim_start_matches('/')));
    }
    assert!(in_cg, "shim not in {shim_cg}: {cg}");
}

/// On a hybrid host containerd makes a `ShimCgroup` in the v1 hierarchies only (its cgroup v1
/// library); the shim joins it where it exists, as runc's shim does, and its oom_score_adj is
/// containerd's + 1 (issue 20). runc's handler with the same options is the control.
#[test]
fn shim_cgroup_in_the_v1_hierarchies_only_is_joined_there() {
    let mounts = common::containerd::cgroup_mounts();
    let v1: Vec<_> = mounts
        .iter()
        .filter(|m| !m.join("cgroup.controllers").exists())
        .collect();
    if v1.is_empty() || v1.len() == mounts.len() {
        eprintln!("skipped: not a hybrid host (v1 and v2 hierarchies both mounted)");
        return;
    }
    let shim_cg = format!("/pelagos-cri-v1shim-{}", std::process::id());
    common::containerd::make_cgroup(&shim_cg, &v1);
    let opts = format!("ShimCgroup = \"{shim_cg}\"\n");
    let mut cri = Cri::start_with("pelagos-v1cg", |major, dir| {
        let t = common::cri::runtimes_table(major);
        pelagos_handler(major, dir, "pelagos-v1cg", &opts)
            + &format!(
                "    [{t}.runc-v1cg]\n      runtime_type = \"io.containerd.runc.v2\"\n    \
                 [{t}.runc-v1cg.options]\n      ShimCgroup = \"{shim_cg}\"\n"
            )
    });
    let containerd_score =
        fs::read_to_string(format!("/proc/{}/oom_score_adj", cri.cd.pid().unwrap()))
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap();
    let mut seen = Vec::new();
    for handler in ["pelagos-v1cg", "runc-v1cg"] {
        cri.handler = handler.to_owned();
        let pod = cri.pod_config(handler);
        let pod_id = cri.run_pod(&pod).map_err(|e| e.message().to_owned());
        let shims = cri.shims();
        let found = shims.first().map(|shim| {
            let cg = fs::read_to_string(format!("/proc/{shim}/cgroup")).unwrap();
            let score = fs::read_to_string(format!("/proc/{shim}/oom_score_adj")).unwrap();
            (cg, score.trim().parse::<i32>().unwrap())
        });
        if let Ok(id) = &pod_id {
            cri.stop_pod(id);
            cri.remove_pod(id);
        }
        seen.push((handler, pod_id, shims.len(), found));
    }
    cri.assert_no_leaks();
    for m in &v1 {
        let _ = fs::remove_dir(m.join(shim_cg.trim_start_matches('/')));
    }
    for (handler, pod_id, shims, found) in seen {
        pod_id.unwrap_or_else(|e| panic!("{handler}: RunPodSandbox failed: {e}"));
        assert_eq!(shims, 1, "{handler}");
        let (cg, score) = found.unwrap();
        let joined = cg
            .lines()
            .filter(|l| !l.starts_with("0::"))
            .filter(|l| l.ends_with(&shim_cg))
            .count();
        assert_eq!(
            joined,
            v1.len(),
            "{handler}: shim not in {shim_cg} in every v1 hierarchy:\n{cg}"
        );
        assert_eq!(
            score,
            (containerd_score + 1).min(1000),
            "{handler}: shim oom_score_adj"
        );
    }
}
