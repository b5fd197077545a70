//! Kubelet-like churn through CRI (issue 17, item 7): `make soak SOAK_MINUTES=60` (CI runs a few
//! minutes). Ignored by plain `cargo test`: it runs for as long as `PELAGOS_SOAK_SECS` says.
//!
//! Workers run pods in parallel, each round: a pod, an app container logging every 50 ms, exec
//! probes (ExecSync of `true`, as kubelet's exec probes), a container that exits 3, one that is
//! OOM-killed (137, `OOMKilled`), then stop and remove. A resident pod lives through the whole
//! run and takes the workers' probes too; containerd is SIGKILLed and restarted every 40 s
//! between rounds. At the end: every status as expected, no leak of any kind, and the resident
//! pod's shim flat in fds, threads and RSS (printed as a table: start, mid, end).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::cri::{Cri, PELAGOS};
use k8s_cri::v1::*;

const WORKERS: usize = 3;

fn workers() -> usize {
    std::env::var("PELAGOS_SOAK_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WORKERS)
}
const PROBES: usize = 10;
const RESTART_EVERY: Duration = Duration::from_secs(40);

fn soak_secs() -> u64 {
    std::env::var("PELAGOS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// fds, threads and RSS (KiB) of `pid`.
fn footprint(pid: i32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

fn shim_of(cri: &Cri, pod_id: &str) -> i32 {
    let socket = cri.pod_shim_socket(pod_id);
    let name = socket.to_string_lossy().into_owned();
    cri.shims()
        .into_iter()
        .find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&name))
        })
        .expect("the resident pod's shim")
}

/// containerd says it booted before its CRI plugin has loaded its state: until then calls are
/// answered "server is not initialized yet", as kubelet sees after a restart and retries.
fn wait_cri_ready(cri: &Cri) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = cri
            .block(cri.rs().status(StatusRequest { verbose: false }))
            .is_ok();
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "CRI not ready after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_memory_limit(mut c: ContainerConfig, bytes: i64) -> ContainerConfig {
    c.linux
        .as_mut()
        .and_then(|l| l.resources.as_mut())
        .expect("resources")
        .memory_limit_in_bytes = bytes;
    c
}

/// One worker round; panics on anything unexpected.
fn round(cri: &Cri, resident: &str, worker: usize, n: u64) {
    let pod = cri.pod_config(&format!("soak-{worker}-{n}"));
    let pod_id = cri.run_pod_ok(&pod);
    let app = Cri::container_config(
        "app",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo log $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    let app_id = cri.run_container(&pod_id, &pod, &app);
    for _ in 0..PROBES {
        for id in [&app_id, &resident.to_owned()] {
            let (code, _, err) = cri.exec_sync(id, &["true"]).expect("ExecSync");
            assert_eq!(code, 0, "probe of {id}: {err}");
        }
    }
    let exits = cri.run_container(
        &pod_id,
        &pod,
        &Cri::container_config("exits", &["sh", "-c", "exit 3"]),
    );
    let st = cri.wait_exited(&exits);
    assert_eq!(st.exit_code, 3, "{st:?}");
    let hog = with_memory_limit(
        Cri::container_config("hog", &["tail", "/dev/zero"]),
        16 << 20,
    );
    let hog_id = cri.run_container(&pod_id, &pod, &hog);
    let st = cri.wait_exited(&hog_id);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    let logged = Cri::log_lines(&Cri::log_path(&pod, &app));
    assert!(!logged.is_empty(), "the app logged nothing");
    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
}

#[test]
#[ignore = "a soak: make soak (PELAGOS_SOAK_SECS)"]
fn kubelet_like_churn() {
    let secs = soak_secs();
    let cri = Cri::start(PELAGOS);
    let resident_pod = cri.pod_config("resident");
    let resident_pod_id = cri.run_pod_ok(&resident_pod);
    let resident = cri.run_container(
        &resident_pod_id,
        &resident_pod,
        &Cri::container_config("resident", &["sleep", "100000"]),
    );
    let shim = shim_of(&cri, &resident_pod_id);
    // Warm: one round before the first measurement.
    round(&cri, &resident, 0, 0);
    let start = footprint(shim);
    let gate = RwLock::new(());
    let rounds = AtomicU64::new(0);
    let restarts = AtomicU64::new(0);
    let began = Instant::now();
    let end = began + Duration::from_secs(secs);
    let mut mid = None;
    std::thread::scope(|s| {
        for w in 0..workers() {
            let (cri, gate, rounds, resident) = (&cri, &gate, &rounds, &resident);
            s.spawn(move || {
                let mut n = 1;
                while Instant::now() < end {
                    let _round = gate.read().unwrap_or_else(|e| e.into_inner());
                    round(cri, resident, w, n);
                    rounds.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
            });
        }
        let mut next_restart = began + RESTART_EVERY;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            if mid.is_none() && began.elapsed() >= Duration::from_secs(secs / 2) {
                mid = Some(footprint(shim));
            }
            if Instant::now() >= next_restart && Instant::now() + Duration::from_secs(5) < end {
                let _all = gate.write().unwrap_or_else(|e| e.into_inner());
                cri.cd.kill9();
                cri.cd.restart();
                wait_cri_ready(&cri);
                restarts.fetch_add(1, Ordering::SeqCst);
                next_restart = Instant::now() + RESTART_EVERY;
            }
        }
    });
    // The resident pod outlived every restart and still answers.
    let (code, _, _) = cri.exec_sync(&resident, &["true"]).expect("ExecSync");
    assert_eq!(code, 0);
    let end_fp = footprint(shim);
    let mid = mid.unwrap_or(end_fp);
    println!(
        "soak: {secs} s, {} rounds by {} workers, {} containerd restarts",
        rounds.load(Ordering::SeqCst),
        workers(),
        restarts.load(Ordering::SeqCst)
    );
    println!("| resident shim | start | mid | end |\n|---|---:|---:|---:|");
    println!("| fds | {} | {} | {} |", start.0, mid.0, end_fp.0);
    println!("| threads | {} | {} | {} |", start.1, mid.1, end_fp.1);
    println!("| RSS (KiB) | {} | {} | {} |", start.2, mid.2, end_fp.2);
    assert!(
        end_fp.0 <= start.0 + 2,
        "the shim's fds grew: {start:?} -> {end_fp:?}"
    );
    assert!(
        end_fp.1 <= start.1 + 2,
        "the shim's threads grew: {start:?} -> {end_fp:?}"
    );
    assert!(
        end_fp.2 <= start.2 * 3 / 2 + 1024,
        "the shim's RSS grew: {start:?} -> {end_fp:?}"
    );
    cri.stop_pod(&resident_pod_id);
    cri.remove_pod(&resident_pod_id);
    cri.assert_no_leaks();
}
