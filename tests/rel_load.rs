//! Load through one containerd (issue 6, "nothing lost, nothing leaked"): many containers created
//! at once, many execs in one container, many containers in one grouped shim, and the grouped
//! shim's fds, threads and memory across create/delete cycles.
//!
//! Sizes: `PELAGOS_LONG=1` runs the sizes (50 concurrent, 1000 execs, 200 grouped,
//! 1000 cycles). Without it (CI) the execs, grouped containers and cycles are scaled down so the
//! file stays within ~3 minutes on the 2-core machine; each CI size is still far above the
//! point where a per-operation leak shows (one leaked fd or thread per exec or cycle is dozens
//! after the run; see each test for its bound).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::containerd::{
    describe, stdout, testing_pelagos, wait_child_timeout, wait_pid_gone, Containerd, CTR_TIMEOUT,
};
use common::image::sha256_hex;

const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// How long counts measured on the shim may take to settle back after the last operation: output
/// copies and exit waiters of a finished process end shortly after the client saw the exit.
const SETTLE: Duration = Duration::from_secs(10);
/// Creating many containers on two shared cores is slow; this bounds waiting for all of them.
const MANY_TIMEOUT: Duration = Duration::from_secs(300);

fn long() -> bool {
    std::env::var("PELAGOS_LONG").is_ok_and(|v| v == "1")
}

/// Picks the size under `PELAGOS_LONG=1`, else the CI size.
fn size(full: usize, ci: usize) -> usize {
    if long() {
        full
    } else {
        ci
    }
}

/// What an operator reads about a process in /proc.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
    rss_anon_kib: u64,
    pss_kib: u64,
}

fn status_field(pid: i32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    kib_field(&text, name).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

/// The number after `<name>:` in a /proc key-value file (kB units are implied).
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn usage(pid: i32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Usage {
        fds,
        threads: status_field(pid, "Threads") as usize,
        rss_kib: status_field(pid, "VmRSS"),
        rss_anon_kib: status_field(pid, "RssAnon"),
        pss_kib: kib_field(&rollup, "Pss").unwrap_or(0),
    }
}

/// Samples `pid` until `settled` holds for the sample (the shim's per-operation threads and fds
/// go away after the client saw the operation end), at most [`SETTLE`]; returns the last sample.
fn settle(pid: i32, settled: impl Fn(&Usage) -> bool) -> Usage {
    let deadline = Instant::now() + SETTLE;
    loop {
        let u = usage(pid);
        if settled(&u) || Instant::now() >= deadline {
            return u;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fewest fds and threads `pid` shows over a second: its baseline once the threads and fds
/// of operations just finished are gone.
fn quiet(pid: i32) -> Usage {
    let mut low = usage(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let u = usage(pid);
        if (u.fds, u.threads) < (low.fds, low.threads) {
            low = u;
        }
    }
    low
}

/// How many threads of `pid` carry each name (for the report of what a shim holds).
fn thread_names(pid: i32) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().to_owned()).or_insert(0) += 1;
    }
    names
}

/// The shim's thread count is back to its baseline. Only for pelagos: the Go runtime of the
/// runc shim (the control runtime) keeps the OS threads it once needed.
fn assert_threads_back(before: &Usage, after: &Usage, what: &str) {
    if testing_pelagos() {
        assert!(
            after.threads <= before.threads,
            "shim threads {what} (before {before:?}, after {after:?})"
        );
    }
}

/// The shim's anonymous memory grew by at most [`MEMORY_BOUND_KIB`]. Only for pelagos: the runc
/// shim's Go heap grows until its collector runs.
fn assert_memory_bound(before: &Usage, after: &Usage, what: &str) {
    let grown = after.rss_anon_kib.saturating_sub(before.rss_anon_kib);
    if testing_pelagos() {
        assert!(
            grown <= MEMORY_BOUND_KIB,
            "shim anonymous memory grew {grown} KiB {what} (bound {MEMORY_BOUND_KIB} KiB; \
             before {before:?}, after {after:?})"
        );
    }
}

/// (pid, ppid, state) of every process.
fn process_table() -> Vec<(i32, i32, char)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid = f.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
        .collect()
}

fn children_of(pid: i32) -> Vec<(i32, char)> {
    process_table()
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == pid)
        .map(|(p, _, s)| (p, s))
        .collect()
}

fn ppid_of(pid: i32) -> Option<i32> {
    process_table()
        .into_iter()
        .find(|&(p, _, _)| p == pid)
        .map(|(_, ppid, _)| ppid)
}

/// The single shim process serving this containerd's containers.
fn the_shim(cd: &Containerd) -> i32 {
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "want exactly one shim process: {shims:?}");
    shims[0]
}

/// The socket a group's shim listens on: `/run/containerd/s/<sha256(address/ns/group)>`.
fn group_socket(cd: &Containerd, group: &str) -> PathBuf {
    let key = format!("{}/{}/{group}", cd.address(), cd.namespace);
    Path::new("/run/containerd/s").join(sha256_hex(key.as_bytes()))
}

/// `ctr task ls` as id -> (pid, status).
fn task_table(cd: &Containerd) -> BTreeMap<String, (i32, String)> {
    cd.ctr_ok(&["task", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| {
                (
                    f[0].to_owned(),
                    (f[1].parse().unwrap_or(0), f[2].to_owned()),
                )
            })
        })
        .collect()
}

fn assert_all_running(cd: &Containerd, ids: &[String]) -> BTreeMap<String, (i32, String)> {
    let tasks = task_table(cd);
    let not_running: Vec<String> = ids
        .iter()
        .filter(|id| tasks.get(*id).is_none_or(|(_, s)| s != "RUNNING"))
        .map(|id| format!("{id}: {:?}", tasks.get(id)))
        .collect();
    assert!(
        not_running.is_empty(),
        "{} of {} tasks not RUNNING: {not_running:?}",
        not_running.len(),
        ids.len()
    );
    tasks
}

/// Runs `work` on every item with `workers` threads at once.
fn parallel<T: Sync>(items: &[T], workers: usize, work: impl Fn(&T) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                work(item);
            });
        }
    });
}

/// One attached `ctr run --rm` of the concurrent test, with its output read as it comes.
struct Attached {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Attached {
    fn new(mut child: Child) -> Attached {
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Attached {
            child,
            stdout: rx,
            stderr: Some(stderr),
        }
    }

    /// What ctr wrote on stderr; only once it has exited.
    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// 50 `ctr run` at once against one containerd: every container comes up and is RUNNING at the
/// same time, each gets its own input and gives back its own output and exit code, and all are
/// removed at once (`--rm` after their exits) leaving nothing behind.
#[test]
fn fifty_containers_created_concurrently() {
    // 50 fits the CI budget, so it is the size in both modes.
    const N: usize = 50;
    let cd = Containerd::start();
    let ids: Vec<String> = (0..N).map(|i| format!("conc{i}")).collect();
    let started = Instant::now();
    let mut runs: Vec<Attached> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let script = format!("echo up-{i}; read word; echo {i}-$word; exit {}", i % 5);
            Attached::new(cd.spawn_run(id, &[], &["sh", "-c", &script]))
        })
        .collect();
    let deadline = started + MANY_TIMEOUT;
    for (i, run) in runs.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match run.stdout.recv_timeout(left) {
            Ok(line) => assert_eq!(line, format!("up-{i}"), "first line of {}", ids[i]),
            Err(e) => {
                let _ = run.child.kill();
                let _ = run.child.wait();
                panic!(
                    "{} never came up ({e}); ctr stderr: {}",
                    ids[i],
                    run.stderr()
                );
            }
        }
    }
    eprintln!("{N} concurrent runs all up in {:?}", started.elapsed());
    let tasks = assert_all_running(&cd, &ids);
    let pids: std::collections::BTreeSet<i32> = ids.iter().map(|id| tasks[id].0).collect();
    assert_eq!(pids.len(), N, "tasks share pids: {tasks:?}");

    // Release them all at once: each exits with its own code and ctr removes it.
    for run in runs.iter_mut() {
        let mut stdin = run.child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("write to ctr stdin");
    }
    for (i, mut run) in runs.into_iter().enumerate() {
        let status = wait_child_timeout(&mut run.child, MANY_TIMEOUT).unwrap_or_else(|| {
            let _ = run.child.kill();
            panic!("ctr run {} did not exit", ids[i]);
        });
        let rest: Vec<String> = run.stdout.iter().collect();
        let err = run.stderr();
        assert_eq!(
            rest,
            vec![format!("{i}-go")],
            "output of {} after its input; stderr: {err}",
            ids[i]
        );
        assert_eq!(
            status.code(),
            Some((i % 5) as i32),
            "exit code of {}; stderr: {err}",
            ids[i]
        );
    }
    eprintln!("{N} concurrent runs done in {:?}", started.elapsed());
    cd.assert_no_leaks();
}

/// Many sequential `ctr task exec` in one container: every exec's output and exit code are its
/// own, and afterwards the shim holds exactly the fds it held before (one leaked fd per exec
/// would be hundreds), no more threads than before, anonymous memory grown by less than
/// [`MEMORY_BOUND_KIB`] (measured: +180-220 KiB over 1000, most of it in the first half), and
/// no zombie: no unreaped child of the shim and no process left in the container but its init.
#[test]
fn many_sequential_execs_in_one_container() {
    // 1000 execs take ~45 s here (~43 ms each), within the CI budget: the size in CI too.
    let n: usize = 1000;
    let cd = Containerd::start();
    cd.run_detached("ex", &[], &["sleep", "1000000"]);
    let init = cd.task_pid("ex") as i32;
    let shim = the_shim(&cd);
    // Warm-up: the shim's first exec creates what it keeps for later ones (e.g. lazily opened
    // handles).
    for i in 0..5 {
        let out = cd.exec("ex", &format!("warm{i}"), &[], &["true"]);
        assert!(out.status.success(), "warm-up exec: {}", describe(&out));
    }
    let before = quiet(shim);

    let started = Instant::now();
    let mut half = None;
    for i in 0..n {
        if i == n / 2 {
            half = Some(usage(shim));
        }
        let script = format!("echo {i}; exit {}", i % 4);
        let out = cd.exec("ex", &format!("e{i}"), &[], &["sh", "-c", &script]);
        assert_eq!(
            stdout(&out),
            format!("{i}\n"),
            "exec {i}: {}",
            describe(&out)
        );
        assert_eq!(
            out.status.code(),
            Some((i % 4) as i32),
            "exec {i}: {}",
            describe(&out)
        );
    }
    let took = started.elapsed();
    eprintln!("{n} execs in {took:?} ({:?} each)", took / n as u32);

    let after = settle(shim, |u| u.fds <= before.fds && u.threads <= before.threads);
    eprintln!("shim before {before:?}\nhalf way    {half:?}\nshim after  {after:?}");
    assert_eq!(
        after.fds, before.fds,
        "shim fd count after {n} execs (before {before:?}, after {after:?})"
    );
    assert_threads_back(&before, &after, &format!("after {n} execs"));
    assert_memory_bound(&before, &after, &format!("over {n} execs"));
    let zombies: Vec<i32> = children_of(shim)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .map(|(p, _)| p)
        .collect();
    assert!(
        zombies.is_empty(),
        "unreaped children of the shim: {zombies:?}"
    );
    let left: Vec<i32> = cd
        .container_pids()
        .into_iter()
        .filter(|&p| p != init)
        .collect();
    assert!(
        left.is_empty(),
        "processes left in the container besides init {init}: {left:?}"
    );
    assert_eq!(cd.task_status("ex").as_deref(), Some("RUNNING"));
    cd.remove("ex");
    cd.assert_no_leaks();
}

/// Many containers in one grouped shim (the runc shim's group annotation): all run under one shim
/// process, which stays while any is left and exits after the last is deleted, leaving nothing.
#[test]
fn many_containers_in_one_grouped_shim() {
    // 50 grouped containers come up in ~2 s here, so the 200 fits the CI budget.
    let n: usize = 200;
    let group = "load-group";
    let annotation = format!("{GROUP_ANNOTATION}={group}");
    let opts = ["--annotation", annotation.as_str()];
    let cd = Containerd::start();
    let ids: Vec<String> = (0..n).map(|i| format!("grp{i}")).collect();
    let started = Instant::now();
    // Four clients at once: containers of one group also arrive concurrently (e.g. a pod).
    parallel(&ids, 4, |id| {
        cd.run_detached(id, &opts, &["sleep", "1000000"]);
    });
    eprintln!("{n} grouped containers up in {:?}", started.elapsed());
    let tasks = assert_all_running(&cd, &ids);
    let shim = the_shim(&cd);
    let foreign: Vec<String> = ids
        .iter()
        .filter(|id| ppid_of(tasks[*id].0) != Some(shim))
        .map(|id| {
            format!(
                "{id} (pid {}, ppid {:?})",
                tasks[id].0,
                ppid_of(tasks[id].0)
            )
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "containers not children of the group's shim {shim}: {foreign:?}"
    );
    eprintln!(
        "shim with {n} containers: {:?}, threads by name {:?}",
        usage(shim),
        thread_names(shim)
    );
    let socket = group_socket(&cd, group);
    assert!(socket.exists(), "no group socket {}", socket.display());

    let (last, rest) = ids.split_last().expect("at least one container");
    parallel(rest, 4, |id| cd.remove(id));
    assert!(
        Path::new(&format!("/proc/{shim}")).exists(),
        "the group's shim exited while {last} was still running"
    );
    assert_eq!(cd.task_status(last).as_deref(), Some("RUNNING"));
    let out = cd.exec(last, "still", &[], &["echo", "alive"]);
    assert_eq!(stdout(&out), "alive\n", "{}", describe(&out));
    // The shim runs in the first container's bundle, deleted by now: a newcomer still joins it
    // and works.
    cd.run_detached("late", &opts, &["sleep", "1000000"]);
    let late = cd.task_pid("late") as i32;
    assert_eq!(
        ppid_of(late),
        Some(shim),
        "the newcomer is not a child of the group's shim"
    );
    let out = cd.exec("late", "hello", &[], &["echo", "late"]);
    assert_eq!(stdout(&out), "late\n", "{}", describe(&out));
    cd.remove("late");
    cd.remove(last);
    assert!(
        wait_pid_gone(shim, Instant::now() + CTR_TIMEOUT),
        "the group's shim {shim} still runs after its last container was deleted"
    );
    assert!(
        !socket.exists(),
        "group socket {} left after the shim exited",
        socket.display()
    );
    cd.assert_no_leaks();
}

/// A grouped shim that lives on while containers come and go in it: across many create/delete
/// cycles its fd count stays exactly the same, its thread count returns to baseline, and its
/// anonymous memory grows by less than [`MEMORY_BOUND_KIB`].
#[test]
fn grouped_shim_flat_across_create_delete_cycles() {
    // 1000 cycles of `ctr run --rm` take ~3 minutes here (~170 ms each); CI runs 300 (~40 s),
    // where a leak of one fd or thread per cycle is 300 of them and a 2 KiB-per-cycle heap leak
    // (e.g. one unremoved per-container record holding its spec) exceeds the memory bound.
    // Measured: RssAnon +88 KiB over 150 cycles, +168 KiB over 1000 (allocator high-water, not
    // linear).
    let n = size(1000, 300);
    let group = "cycle-group";
    let annotation = format!("{GROUP_ANNOTATION}={group}");
    let opts = ["--annotation", annotation.as_str()];
    let cd = Containerd::start();
    cd.run_detached("keeper", &opts, &["sleep", "1000000"]);
    let shim = the_shim(&cd);
    let cycle = |name: &str| {
        let out = cd.run(name, &opts, &["sh", "-c", &format!("echo {name}")]);
        assert!(out.status.success(), "cycle {name}: {}", describe(&out));
        assert_eq!(stdout(&out), format!("{name}\n"), "cycle {name}");
    };
    // Warm-up: allocator arenas, lazily made handles and caches reach their steady size.
    for i in 0..20 {
        cycle(&format!("warm{i}"));
    }
    let before = quiet(shim);
    let started = Instant::now();
    let mut half = None;
    for i in 0..n {
        if i == n / 2 {
            half = Some(usage(shim));
        }
        cycle(&format!("cyc{i}"));
    }
    let took = started.elapsed();
    eprintln!("{n} cycles in {took:?} ({:?} each)", took / n as u32);
    let after = settle(shim, |u| u.fds <= before.fds && u.threads <= before.threads);
    eprintln!("shim before {before:?}\nhalf way    {half:?}\nshim after  {after:?}");
    assert!(
        Path::new(&format!("/proc/{shim}")).exists(),
        "the group's shim exited while keeper was still running"
    );
    assert_eq!(
        after.fds, before.fds,
        "shim fd count after {n} cycles (before {before:?}, after {after:?})"
    );
    assert_threads_back(&before, &after, &format!("after {n} cycles"));
    assert_memory_bound(&before, &after, &format!("over {n} cycles"));
    let zombies: Vec<i32> = children_of(shim)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .map(|(p, _)| p)
        .collect();
    assert!(
        zombies.is_empty(),
        "unreaped children of the shim: {zombies:?}"
    );
    cd.remove("keeper");
    assert!(
        wait_pid_gone(shim, Instant::now() + CTR_TIMEOUT),
        "the group's shim {shim} still runs after its last container was deleted"
    );
    cd.assert_no_leaks();
}

/// The most a live shim's anonymous memory (RssAnon) may grow across the execs or cycles:
/// 512 KiB, room for allocator high-water, while a leak of 0.5 KiB per exec or cycle over 1000
/// (or ~1.7 KiB per cycle over the CI 300 cycles) is above it.
const MEMORY_BOUND_KIB: u64 = 512;

/// The first containers of a group arriving all at once (a pod's containers started together)
/// still share one shim: concurrent `start`s of one group must not each launch a daemon. All
/// deleted at once, every Delete is answered (the shim must not exit on one container's
/// Shutdown while another's Delete answer is on its way) and nothing is left.
#[test]
fn a_group_started_and_deleted_all_at_once_gets_one_shim() {
    const ROUNDS: usize = 5;
    const AT_ONCE: usize = 12;
    let cd = Containerd::start();
    for round in 0..ROUNDS {
        let group = format!("burst{round}");
        let annotation = format!("{GROUP_ANNOTATION}={group}");
        let opts = ["--annotation", annotation.as_str()];
        let ids: Vec<String> = (0..AT_ONCE).map(|i| format!("b{round}-{i}")).collect();
        let barrier = std::sync::Barrier::new(AT_ONCE);
        parallel(&ids, AT_ONCE, |id| {
            barrier.wait();
            cd.run_detached(id, &opts, &["sleep", "1000000"]);
        });
        let tasks = assert_all_running(&cd, &ids);
        let shims: std::collections::BTreeSet<Option<i32>> =
            ids.iter().map(|id| ppid_of(tasks[id].0)).collect();
        assert_eq!(
            shims.len(),
            1,
            "round {round}: the {AT_ONCE} containers of group {group} have parents {shims:?}"
        );
        let barrier = std::sync::Barrier::new(AT_ONCE);
        parallel(&ids, AT_ONCE, |id| {
            barrier.wait();
            cd.remove(id);
        });
    }
    cd.assert_no_leaks();
}

/// 50 `ctr task exec` into one container at the same instant: each gets its own output and exit
/// code, and the shim's fds and threads come back to what they were.
#[test]
fn fifty_concurrent_execs_in_one_container() {
    const N: usize = 50;
    let cd = Containerd::start();
    cd.run_detached("cx", &[], &["sleep", "1000000"]);
    let shim = the_shim(&cd);
    let out = cd.exec("cx", "warm", &[], &["true"]);
    assert!(out.status.success(), "warm-up exec: {}", describe(&out));
    let before = quiet(shim);
    let ids: Vec<usize> = (0..N).collect();
    let barrier = std::sync::Barrier::new(N);
    let results = std::sync::Mutex::new(Vec::new());
    parallel(&ids, N, |&i| {
        barrier.wait();
        let script = format!("echo out-{i}; echo err-{i} >&2; exit {}", i % 7);
        let out = cd.exec("cx", &format!("x{i}"), &[], &["sh", "-c", &script]);
        results.lock().unwrap().push((i, out));
    });
    for (i, out) in results.into_inner().unwrap() {
        assert_eq!(
            stdout(&out),
            format!("out-{i}\n"),
            "exec {i}: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("err-{i}\n")),
            "exec {i} stderr: {}",
            describe(&out)
        );
        assert_eq!(out.status.code(), Some((i % 7) as i32), "exec {i}");
    }
    let after = settle(shim, |u| u.fds <= before.fds && u.threads <= before.threads);
    assert_eq!(
        after.fds, before.fds,
        "shim fds (before {before:?}, after {after:?})"
    );
    assert_threads_back(&before, &after, "after the execs");
    cd.remove("cx");
    cd.assert_no_leaks();
}
