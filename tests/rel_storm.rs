//! Start storms (issue 21): many create→start→delete cycles at once, with the forked init of a
//! container that joins a pid namespace (every pod container through CRI) mixed with plain ones,
//! beside busy threads that take the cores away at random points. Every cycle must succeed with
//! the right pid and output; the failure rate is printed either way.
//!
//! Sizes: `PELAGOS_LONG=1` runs the full storm; CI runs a size at which the ordering race between
//! the helper's `Forked` report and its child's `Ready` failed several cycles on the code before
//! the fix.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::bundle::{Bundle, Pipes, TestRoot};
use common::containerd::{describe, stdout, testing_pelagos, Containerd};
use pelagos::Stdio;

/// The storms run one at a time: the core one reaps every child of this process it finds
/// exited (it would take the exit of the other storm's `ctr`, which then never ends), and the
/// other pauses every setup helper on the host, the core storm's too.
static ONE_STORM: Mutex<()> = Mutex::new(());

fn one_storm() -> MutexGuard<'static, ()> {
    ONE_STORM.lock().unwrap_or_else(|e| e.into_inner())
}

fn long() -> bool {
    std::env::var("PELAGOS_LONG").is_ok_and(|v| v == "1")
}

/// Pauses setup helpers between their steps, as a busy node's scheduler may: every helper of
/// this process seen after it entered the target pid namespace (its `pid_for_children` differs
/// from its own) and before it exited is stopped for a moment, once. That is where a helper
/// forks the init and reports it; a helper paused there must not let its init's later reports
/// overtake its own.
struct Stopper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Stopper {
    /// Watches the processes `candidates` lists.
    fn start(pause: Duration, candidates: fn() -> Vec<i32>) -> Stopper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut stopped: Vec<(i32, Instant)> = Vec::new();
            while !flag.load(Ordering::Relaxed) || !stopped.is_empty() {
                stopped.retain(|&(pid, at)| {
                    if at.elapsed() < pause {
                        return true;
                    }
                    // SAFETY: signals a child of ours (it is reaped only after it exits, and
                    // it cannot exit while stopped).
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                    false
                });
                if flag.load(Ordering::Relaxed) {
                    continue;
                }
                for pid in candidates() {
                    if seen.contains(&pid) || !between_setns_and_exit(pid) {
                        continue;
                    }
                    seen.insert(pid);
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    stopped.push((pid, Instant::now()));
                }
            }
            seen.len()
        });
        Stopper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many helpers it paused.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().expect("stopper"))
    }
}

/// Reaps children that have exited and that no container tracks; returns how many.
fn reap_strays() -> usize {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut n = 0;
    while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if ws == WaitStatus::StillAlive {
            break;
        }
        n += 1;
    }
    n
}

/// Every process of the host (helpers of a shim are the shim's children).
fn all_processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn children_of_this_process() -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    pids
}

/// A setup helper that joined a pid namespace: its children would be born there.
fn between_setns_and_exit(pid: i32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "pelagos-init" {
        return false;
    }
    let ns = |n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).ok();
    match (ns("pid"), ns("pid_for_children")) {
        (Some(own), Some(children)) => own != children,
        _ => false,
    }
}

/// Runs `cycle(worker, i)` for `per_worker` cycles in each of `workers` threads at once;
/// returns the failures, each named by its worker and cycle.
fn storm(
    workers: usize,
    per_worker: usize,
    cycle: impl Fn(usize, usize) -> Result<(), String> + Sync,
) -> Vec<String> {
    let cycle = &cycle;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    (0..per_worker)
                        .filter_map(|i| {
                            cycle(w, i)
                                .err()
                                .map(|e| format!("worker {w} cycle {i}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// One cycle; the error says which step failed and how.
fn cycle(root: &TestRoot, bundle: &Bundle, expect: &str) -> Result<(), String> {
    let (stdio, pipes) = Pipes::new();
    let mut c = root
        .create(bundle, stdio)
        .map_err(|e| format!("create: {e}"))?;
    // The pid the runtime reports is the container's init: our child, in the pid namespace.
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap_or_default();
    let ours = status.contains(&format!("PPid:\t{}\n", std::process::id()));
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(format!("start: {e}"));
    }
    let (out, err) = pipes.collect();
    let exit = c.wait().map(|e| e.status);
    c.delete(false).map_err(|e| format!("delete: {e}"))?;
    if !ours {
        return Err(format!("create reported pid whose status is {status:?}"));
    }
    if exit != Some(0) || out != expect {
        return Err(format!(
            "exit {exit:?}, stdout {out:?} (expected {expect:?}), stderr {err:?}"
        ));
    }
    Ok(())
}

#[test]
fn start_storm_with_forked_inits() {
    let _one = one_storm();
    let root = TestRoot::new();
    // The pid namespace the forked inits join, as pod containers join their sandbox's.
    let keeper_bundle = Bundle::new().args(&["sleep", "1000"]);
    let mut keeper = root.create(&keeper_bundle, Stdio::Null).expect("keeper");
    keeper.start().expect("start keeper");
    let pid_ns = format!("/proc/{}/ns/pid", keeper.pid());

    let workers = 4;
    let per_worker = if long() { 500 } else { 60 };
    let began = Instant::now();
    let stopper = Stopper::start(Duration::from_millis(20), children_of_this_process);
    // Each worker has its own bundles: three of four cycles join the keeper's pid namespace
    // (a forked init).
    let bundles: Vec<(Bundle, Bundle)> = (0..workers)
        .map(|_| {
            let joined =
                Bundle::new()
                    .namespace("pid", Some(&pid_ns))
                    .args(&["sh", "-c", "echo joined"]);
            (joined, Bundle::new().args(&["sh", "-c", "echo own"]))
        })
        .collect();
    let failures = storm(workers, per_worker, |w, i| {
        let (joined, own) = &bundles[w];
        match (i + w) % 4 {
            0 => cycle(&root, own, "own\n"),
            _ => cycle(&root, joined, "joined\n"),
        }
    });
    let paused = stopper.finish();
    let total = workers * per_worker;
    eprintln!(
        "start storm: {} of {total} cycles failed ({:.1} %), {paused} helpers paused, {:.1} s",
        failures.len(),
        100.0 * failures.len() as f64 / total as f64,
        began.elapsed().as_secs_f64()
    );
    // A failed cycle can leave an init the runtime lost track of: a zombie child of ours in the
    // keeper's pid namespace, which would keep the keeper's exit from completing.
    let strays = reap_strays();
    keeper.kill(libc::SIGKILL, false).unwrap();
    keeper.wait();
    keeper.delete(true).unwrap();
    assert!(paused > 0, "no helper was paused: the storm tested nothing");
    assert!(
        failures.is_empty(),
        "failed cycles:\n{}",
        failures.join("\n")
    );
    assert_eq!(strays, 0, "processes the runtime lost track of were left");
}

/// The same storm through containerd: `ctr run` of containers that join a keeper's pid
/// namespace, all in one grouped shim (as a pod's containers share one), several clients at
/// once. With runc's shim as the control (`PELAGOS_TEST_RUNTIME`) nothing is paused.
#[test]
fn start_storm_through_a_grouped_shim() {
    let _one = one_storm();
    let cd = Containerd::start();
    let annotation = "io.containerd.runc.v2.group=storm";
    cd.run_detached(
        "keeper",
        &["--annotation", annotation],
        &["sleep", "1000000"],
    );
    let pid_ns = format!("pid:/proc/{}/ns/pid", cd.task_pid("keeper"));
    let opts = ["--annotation", annotation, "--with-ns", pid_ns.as_str()];
    let workers = 4;
    let per_worker = if long() { 250 } else { 30 };
    let began = Instant::now();
    let stopper = Stopper::start(Duration::from_millis(20), all_processes);
    let failures = storm(workers, per_worker, |w, i| {
        let id = format!("s{w}-{i}");
        let out = cd.run(&id, &opts, &["sh", "-c", &format!("echo {id}")]);
        match out.status.success() && stdout(&out) == format!("{id}\n") {
            true => Ok(()),
            false => Err(describe(&out)),
        }
    });
    let paused = stopper.finish();
    let total = workers * per_worker;
    eprintln!(
        "start storm through ctr: {} of {total} runs failed, {paused} helpers paused, {:.1} s",
        failures.len(),
        began.elapsed().as_secs_f64()
    );
    cd.remove("keeper");
    assert!(
        failures.is_empty(),
        "failed runs:\n{}\n{}",
        failures.join("\n"),
        cd.log_tail(40)
    );
    if testing_pelagos() {
        assert!(paused > 0, "no helper was paused: the storm tested nothing");
    }
    cd.assert_no_leaks();
}
