//! Faults around running containers (issue 6, "nothing lost, nothing leaked"): containerd
//! SIGKILLed with several containers (an exec, a grouped shim, exits during the outage), a grouped
//! shim SIGKILLed with execs running, the init OOM-killed under a running exec, an init with a
//! thousand children, a stdout reader that dies and re-attaches, and log files that cannot be
//! written. tests/shim_recovery.rs and the OOM test of tests/shim_lifecycle.rs cover the
//! single-container cases; these add what they do not check.
//!
//! `PELAGOS_LONG=1` uses bigger counts; the CI sizes are the issue's own where they fit.

mod common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::containerd::{
    describe, procs, stdout, testing_pelagos, wait_child_timeout, wait_pid_gone, CgroupTree,
    Containerd, CTR_TIMEOUT,
};
use common::image::sha256_hex;

const GROUP_KEY: &str = "io.containerd.runc.v2.group";
/// Makes every numbered line 110+ bytes, so a torn read would show.
const PAD: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";

fn long() -> bool {
    std::env::var("PELAGOS_LONG").is_ok_and(|v| v == "1")
}

/// How many children the fork tests start. 1000 is the size and takes a few seconds of
/// busybox forks on the 2-core CI machine, so CI uses it too; the long run uses 5000.
fn children() -> usize {
    if long() {
        5000
    } else {
        1000
    }
}

/// A shell loop printing `line <n> <PAD>` forever, `per_nap` lines between 10 ms naps (so it
/// does not take a core), and writing the last number to /tmp/n (by rename: a reader never sees
/// it empty).
fn talker_script(per_nap: usize) -> String {
    format!(
        "i=0; while :; do i=$((i+1)); echo \"line $i {PAD}\"; \
         if [ $((i % {per_nap})) -eq 0 ]; then \
         echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; usleep 10000; fi; done"
    )
}

/// The number of a whole `line <n> <PAD>\n`, or None for anything else (torn, corrupted).
fn line_number(line: &str) -> Option<u64> {
    let body = line.strip_suffix('\n')?;
    let mut f = body.split(' ');
    match (f.next(), f.next(), f.next(), f.next()) {
        (Some("line"), Some(n), Some(pad), None) if pad == PAD => n.parse().ok(),
        _ => None,
    }
}

/// Lines of a child's stdout, read on a thread so the test waits on them with a timeout.
struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    fn new(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(r);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines { rx }
    }

    /// The next line (with its newline, unless the stream ended mid-line).
    fn next(&self) -> String {
        self.rx
            .recv_timeout(CTR_TIMEOUT)
            .expect("no line from the container within the timeout")
    }

    /// Reads numbered lines until one is past `n`; each must be whole and one more than the
    /// last. The first line may be the tail of one a killed reader took half of, so
    /// `skip_torn_first` lets it go.
    fn read_past(&self, n: u64, skip_torn_first: bool) -> u64 {
        let mut last: Option<u64> = None;
        let mut first = true;
        loop {
            let line = self.next();
            let num = match line_number(&line) {
                Some(v) => v,
                None if first && skip_torn_first => {
                    first = false;
                    continue;
                }
                None => panic!("torn or corrupted line {line:?} after line {last:?}"),
            };
            first = false;
            if let Some(prev) = last {
                assert_eq!(num, prev + 1, "line {num} came right after line {prev}");
            }
            last = Some(num);
            if num > n {
                return num;
            }
        }
    }
}

/// (state, ppid) of `pid` from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Zombies whose parent is one of `parents`.
fn zombies_of(parents: &BTreeSet<i32>) -> Vec<i32> {
    procs()
        .into_iter()
        .filter(|&p| matches!(stat(p), Some(('Z', ppid)) if parents.contains(&ppid)))
        .collect()
}

/// The shim serving the container whose init is `init`: its nearest ancestor among the shims.
fn shim_of(cd: &Containerd, init: i32) -> i32 {
    let shims: BTreeSet<i32> = cd.shim_pids().into_iter().collect();
    let mut pid = init;
    while let Some((_, ppid)) = stat(pid) {
        if shims.contains(&ppid) {
            return ppid;
        }
        if ppid <= 1 {
            break;
        }
        pid = ppid;
    }
    panic!("no shim among the ancestors of {init} (shims: {shims:?})")
}

/// The pids `ctr task ps` lists for `id`.
fn task_ps(cd: &Containerd, id: &str) -> BTreeSet<i32> {
    cd.ctr_ok(&["task", "ps", id])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a process this test started through its private containerd.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

/// Waits for every one of `pids` to be gone; returns those still there after `grace`.
fn survivors(pids: impl IntoIterator<Item = i32>, grace: Duration) -> Vec<i32> {
    let deadline = Instant::now() + grace;
    pids.into_iter()
        .filter(|&p| !wait_pid_gone(p, deadline))
        .collect()
}

/// The socket of the shim serving group (or lone container) `group` of this containerd.
fn shim_socket(cd: &Containerd, group: &str) -> PathBuf {
    let key = format!("{}/{}/{}", cd.address(), cd.namespace, group);
    Path::new("/run/containerd/s").join(sha256_hex(key.as_bytes()))
}

/// Spawns `ctr <args>` with stdout piped (and stdin null).
fn spawn_ctr(cd: &Containerd, args: &[String]) -> Child {
    let mut cmd = cd.ctr_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("spawn ctr")
}

/// `ctr task attach <id>` with its stdout as lines.
fn attach(cd: &Containerd, id: &str) -> (Child, Lines) {
    let mut child = spawn_ctr(cd, &["task".into(), "attach".into(), id.into()]);
    let lines = Lines::new(child.stdout.take().expect("attach stdout"));
    (child, lines)
}

fn end_client(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A scratch directory, with an optional mount on it, gone when dropped.
struct Scratch {
    path: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "pelagos-faults-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        Scratch::at(path)
    }

    /// `path` (made if missing) as the scratch directory.
    fn at(path: PathBuf) -> Scratch {
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Scratch {
            path,
            mounted: false,
        }
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let target = CString::new(self.path.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: target is a valid NUL-terminated path this struct mounted on.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            assert_eq!(rc, 0, "umount {}", self.path.display());
        }
    }

    fn mount(&mut self, fstype: &str, source: &str, flags: libc::c_ulong, data: &str) {
        let c = |s: &str| CString::new(s).unwrap();
        let target = c(&self.path.to_string_lossy());
        let (src, fs_, data) = (c(source), c(fstype), c(data));
        // SAFETY: every pointer is a valid NUL-terminated string for the call's duration.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fs_.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount {fstype} on {}: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
        self.mounted = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let target = CString::new(self.path.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: target is a valid NUL-terminated path this struct mounted on.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// containerd SIGKILLed while a talker (with a running exec), two containers of one grouped shim
/// and a lone container run; during the outage one grouped container and the lone one exit.
/// After the restart the survivors still run with their pids, the exec is still tracked, new
/// execs work, the talker's stdout flows to a re-attached client, and the exits are reported.
#[test]
fn containerd_killed_with_several_containers() {
    let cd = Containerd::start();
    let group = format!("{GROUP_KEY}=faults-g");
    let grouped = ["--annotation", group.as_str()];
    // No output: an exit with output nobody read is held back (see the test after this one).
    let trap = |code: u8| format!("trap 'exit {code}' TERM; sleep 1000 & wait");
    cd.run_detached("talker", &[], &["sh", "-c", &talker_script(1)]);
    cd.exec_detached("talker", "worker", &["sleep", "1000"]);
    cd.run_detached("g-stay", &grouped, &["sleep", "1000"]);
    cd.run_detached("g-exit", &grouped, &["sh", "-c", &trap(3)]);
    cd.run_detached("lone-exit", &[], &["sh", "-c", &trap(7)]);

    let pid = |id: &str| cd.task_pid(id) as i32;
    let (talker, g_stay, g_exit, lone) = (
        pid("talker"),
        pid("g-stay"),
        pid("g-exit"),
        pid("lone-exit"),
    );
    assert_eq!(
        shim_of(&cd, g_stay),
        shim_of(&cd, g_exit),
        "the grouped containers have different shims"
    );
    // The talker's naps come and go; the exec is the one `sleep 1000`.
    let talker_procs = task_ps(&cd, "talker");
    let worker: Vec<i32> = talker_procs
        .iter()
        .copied()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00")
        })
        .collect();
    assert_eq!(worker.len(), 1, "task ps talker: {talker_procs:?}");
    let worker = worker[0];

    cd.kill9();
    kill(g_exit, libc::SIGTERM);
    kill(lone, libc::SIGTERM);
    assert!(
        survivors([g_exit, lone], CTR_TIMEOUT).is_empty(),
        "the trapping inits did not exit"
    );
    cd.restart();

    assert_eq!(
        cd.task("talker"),
        Some((talker as u32, "RUNNING".to_owned()))
    );
    assert_eq!(
        cd.task("g-stay"),
        Some((g_stay as u32, "RUNNING".to_owned()))
    );
    let procs = task_ps(&cd, "talker");
    assert!(
        procs.contains(&talker) && procs.contains(&worker),
        "task ps talker after the restart: {procs:?}, want {talker} and {worker}"
    );
    let mut events = cd.events();
    for (id, code) in [("g-exit", 3), ("lone-exit", 7)] {
        if cd.task_status(id).as_deref() == Some("RUNNING") {
            // The pelagos shim records an exit once its output is read, or after its drain
            // timeout when nobody reads (here nobody does since `ctr run -d` returned).
            let exit = events.wait_topic("/tasks/exit", id, Some(id));
            assert_eq!(exit.exit_status(), Some(code as u64), "{exit:?}");
        }
        match cd.task_status(id).as_deref() {
            Some("STOPPED") => assert_eq!(cd.task_rm(id), code, "exit status of {id}"),
            // 1.7 and 2.x delete a task whose init died while they were down (see
            // tests/shim_recovery.rs).
            None if cd.version != "1.6" => {}
            other => panic!("task {id} after restart: {other:?}\n{}", cd.log_tail(40)),
        }
        cd.ctr_ok(&["containers", "rm", id]);
    }

    for id in ["talker", "g-stay"] {
        let out = cd.exec(id, "after", &[], &["echo", "reconnected"]);
        assert_eq!(
            stdout(&out),
            "reconnected\n",
            "exec in {id}: {}",
            describe(&out)
        );
    }
    let now: u64 = stdout(&cd.exec("talker", "count", &[], &["cat", "/tmp/n"]))
        .trim()
        .parse()
        .expect("talker's count");
    let (client, lines) = attach(&cd, "talker");
    // `ctr run -d` copied output until it exited, so the attach starts at an arbitrary line.
    lines.read_past(now, true);
    end_client(client);

    cd.ctr_ok(&[
        "task",
        "kill",
        "--exec-id",
        "worker",
        "-s",
        "SIGKILL",
        "talker",
    ]);
    let exit = events.wait_topic("/tasks/exit", "talker", Some("worker"));
    assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
    assert!(survivors([worker], CTR_TIMEOUT).is_empty());
    cd.remove("talker");
    cd.remove("g-stay");
    cd.clear_fifo_dirs();
    // After the leak check, which waits for the shim to exit.
    cd.assert_no_leaks();
    assert!(
        !shim_socket(&cd, "faults-g").exists(),
        "grouped shim socket left"
    );
}

/// A container whose init exits while containerd is down, leaving output nobody read (`ctr run
/// -d` returned long ago). The shim holds the exit back until the output is read or a drain
/// timeout passes; containerd 1.7 and 2.x, reloading within that window, see no pids and call
/// Delete to clean up, which must not be refused as "running" (it was, leaking the rootfs mount,
/// cgroups and shim). 1.6 reconnects and waits for the exit.
#[test]
fn exit_with_unread_output_while_containerd_is_down() {
    let cd = Containerd::start();
    cd.run_detached(
        "bye",
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; sleep 1000 & wait",
        ],
    );
    let init = cd.task_pid("bye") as i32;
    cd.kill9();
    kill(init, libc::SIGTERM);
    assert!(
        survivors([init], CTR_TIMEOUT).is_empty(),
        "the init did not exit"
    );
    cd.restart();
    let mut events = cd.events();
    if cd.task_status("bye").as_deref() == Some("RUNNING") {
        let exit = events.wait_topic("/tasks/exit", "bye", Some("bye"));
        assert_eq!(exit.exit_status(), Some(3), "{exit:?}");
    }
    match cd.task_status("bye").as_deref() {
        Some("STOPPED") => assert_eq!(cd.task_rm("bye"), 3),
        None if cd.version != "1.6" => {}
        other => panic!("task after restart: {other:?}\n{}", cd.log_tail(40)),
    }
    cd.ctr_ok(&["containers", "rm", "bye"]);
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

/// A grouped shim SIGKILLed while both its containers run an exec: containerd reports both
/// inits' exits, every process of both goes, nothing is left (mounts, cgroups, sockets, state),
/// and both ids can be used again in the same group.
#[test]
fn killed_grouped_shim_takes_every_container_and_exec() {
    let cd = Containerd::start();
    let group = format!("{GROUP_KEY}=faults-k");
    let grouped = ["--annotation", group.as_str()];
    let ids = ["k-one", "k-two"];
    for id in ids {
        cd.run_detached(id, &grouped, &["sleep", "1000"]);
        cd.exec_detached(id, "side", &["sleep", "1000"]);
    }
    let shim = shim_of(&cd, cd.task_pid(ids[0]) as i32);
    assert_eq!(shim, shim_of(&cd, cd.task_pid(ids[1]) as i32));
    let procs: Vec<i32> = ids.iter().flat_map(|id| task_ps(&cd, id)).collect();
    assert_eq!(procs.len(), 4, "two inits and two execs: {procs:?}");

    let mut events = cd.events();
    kill(shim, libc::SIGKILL);
    for id in ids {
        let exit = events.wait_topic("/tasks/exit", id, Some(id));
        assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
        events.wait_topic("/tasks/delete", id, None);
    }
    assert_eq!(
        survivors(procs, CTR_TIMEOUT),
        Vec::<i32>::new(),
        "container processes survived their shim"
    );
    for id in ids {
        assert_eq!(cd.task(id), None);
        cd.ctr_ok(&["containers", "rm", id]);
    }
    cd.clear_fifo_dirs();
    let socket = shim_socket(&cd, "faults-k");
    if testing_pelagos() {
        assert!(!socket.exists(), "killed shim's socket left");
    } else {
        // runc's shim `delete` leaves a killed shim's socket behind.
        let _ = fs::remove_file(&socket);
    }
    cd.assert_no_leaks();

    for id in ids {
        cd.run_detached(id, &grouped, &["sleep", "1000"]);
    }
    for id in ids {
        let out = cd.exec(id, "again", &[], &["echo", id]);
        assert_eq!(stdout(&out), format!("{id}\n"), "{}", describe(&out));
        cd.remove(id);
    }
    cd.assert_no_leaks();
    assert!(
        !shim_socket(&cd, "faults-k").exists(),
        "new shim's socket left"
    );
}

/// The shim SIGKILLed while containerd is down: at its restart containerd finds the shim dead
/// and runs its cleanup (the shim's `delete` action), which ends the container's init and exec;
/// nothing is left and the id can be used again.
#[test]
fn shim_killed_while_containerd_is_down() {
    let cd = Containerd::start();
    cd.run_detached("orphan", &[], &["sleep", "1000"]);
    cd.exec_detached("orphan", "side", &["sleep", "1000"]);
    let init = cd.task_pid("orphan") as i32;
    let procs = task_ps(&cd, "orphan");
    assert_eq!(procs.len(), 2, "init and exec: {procs:?}");
    let shim = shim_of(&cd, init);
    cd.kill9();
    kill(shim, libc::SIGKILL);
    assert!(
        survivors([shim], CTR_TIMEOUT).is_empty(),
        "shim {shim} survived SIGKILL"
    );
    cd.restart();
    assert_eq!(
        survivors(procs, CTR_TIMEOUT),
        Vec::<i32>::new(),
        "container processes survived the cleanup of their dead shim"
    );
    assert_eq!(cd.task("orphan"), None);
    cd.ctr_ok(&["containers", "rm", "orphan"]);
    cd.clear_fifo_dirs();
    if !testing_pelagos() {
        // runc's shim `delete` leaves a killed shim's socket behind.
        let _ = fs::remove_file(shim_socket(&cd, "orphan"));
    }
    cd.assert_no_leaks();
    let out = cd.run("orphan", &[], &["echo", "again"]);
    assert_eq!(stdout(&out), "again\n", "{}", describe(&out));
    cd.assert_no_leaks();
}

/// The attached client of `ctr run` (the container's stdin writer) is SIGKILLed: as with
/// runc's shim, the container does not get EOF (only CloseIO gives that) and keeps running, and
/// `ctr task attach` writes to its stdin and reads its stdout again.
#[test]
fn stdin_writer_killed_and_reattached() {
    use std::io::Write;
    let cd = Containerd::start();
    let script = "while read l; do echo got-$l; done; echo eof > /tmp/eof; sleep 1000";
    // ctr run (without -t) always copies its stdin to the container.
    let mut client = cd.spawn_run("reader", &[], &["sh", "-c", script]);
    let mut stdin = client.stdin.take().expect("ctr stdin");
    let lines = Lines::new(client.stdout.take().expect("ctr stdout"));
    stdin.write_all(b"hello\n").expect("write to ctr");
    assert_eq!(lines.next(), "got-hello\n");
    let init = cd.task_pid("reader") as i32;
    let shim = shim_of(&cd, init);
    end_client(client);
    drop(stdin);

    let out = cd.exec("reader", "check", &[], &["sh", "-c", "test ! -e /tmp/eof"]);
    assert!(out.status.success(), "the container got EOF on stdin");
    assert_eq!(cd.task("reader"), Some((init as u32, "RUNNING".to_owned())));
    assert!(
        Path::new(&format!("/proc/{shim}")).exists(),
        "shim {shim} died"
    );

    let mut cmd = cd.ctr_command();
    cmd.args(["task", "attach", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut attach = cmd.spawn().expect("spawn ctr task attach");
    let mut stdin = attach.stdin.take().expect("attach stdin");
    let lines = Lines::new(attach.stdout.take().expect("attach stdout"));
    stdin.write_all(b"again\n").expect("write to ctr attach");
    assert_eq!(lines.next(), "got-again\n");
    end_client(attach);
    drop(stdin);
    cd.remove("reader");
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

/// The attached client of an exec is SIGKILLed while the exec writes: the exec lives on with
/// nobody reading, and its exit is still reported (the shim stops waiting for a reader that is
/// gone).
#[test]
fn exec_client_killed_the_exec_lives_on() {
    let cd = Containerd::start();
    cd.run_detached("host", &[], &["sleep", "1000"]);
    let argv = cd.exec_args("host", "talk", &[], &["sh", "-c", &talker_script(20)]);
    let mut client = spawn_ctr(&cd, &argv);
    let lines = Lines::new(client.stdout.take().expect("exec stdout"));
    lines.read_past(200, false);
    end_client(client);
    let out = cd.exec("host", "probe", &[], &["cat", "/tmp/n"]);
    assert!(out.status.success(), "{}", describe(&out));
    // The exec's shell, not one of its short-lived forks (whose parent is the shell).
    let procs = task_ps(&cd, "host");
    let talkers: Vec<i32> = procs
        .iter()
        .copied()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sh\x00"))
                && stat(p).is_some_and(|(_, ppid)| !procs.contains(&ppid))
        })
        .collect();
    assert_eq!(talkers.len(), 1, "the exec's shell is not running");
    let mut events = cd.events();
    cd.ctr_ok(&["task", "kill", "--exec-id", "talk", "-s", "SIGKILL", "host"]);
    let exit = events.wait_topic("/tasks/exit", "host", Some("talk"));
    assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
    assert_eq!(cd.task_status("host").as_deref(), Some("RUNNING"));
    cd.remove("host");
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

/// The runtime's state directory for this namespace is read-only: the run fails naming it and
/// leaves nothing (no process, cgroup, mount, shim); once writable again, the same id runs.
#[test]
fn unwritable_state_dir_fails_cleanly() {
    let cd = Containerd::start();
    let root = match testing_pelagos() {
        true => "/run/pelagos",
        false => "/run/containerd/runc",
    };
    let mut state = Scratch::at(Path::new(root).join(&cd.namespace));
    state.mount("tmpfs", "tmpfs", libc::MS_RDONLY, "size=64k");
    let out = cd.run("nostate", &[], &["echo", "hi"]);
    assert!(
        !out.status.success(),
        "ran without a state dir: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let named = state.path.to_string_lossy().into_owned();
    assert!(err.contains(&named), "error does not name {named}: {err}");
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
    state.unmount();
    let out = cd.run("nostate", &[], &["echo", "hi"]);
    assert_eq!(stdout(&out), "hi\n", "{}", describe(&out));
    cd.assert_no_leaks();
}

/// The init (dd, pid 1) is OOM-killed while an attached exec runs: the exec's client sees 137,
/// containerd gets the OOM event, the exec's exit before the init's, and the task stops at 137.
#[test]
fn init_oom_killed_while_an_exec_runs() {
    let cd = Containerd::start();
    let limit = (32u64 << 20).to_string();
    // The init waits for /go, then becomes dd, whose 256 MiB buffer is far past the limit.
    let script = "while [ ! -e /go ]; do usleep 20000; done; \
                  exec dd if=/dev/zero of=/dev/null bs=256M count=1";
    cd.run_detached("oomx", &["--memory-limit", &limit], &["sh", "-c", script]);
    let mut events = cd.events();
    let argv = cd.exec_args(
        "oomx",
        "side",
        &[],
        &["sh", "-c", "echo ready; exec sleep 1000"],
    );
    let mut side = spawn_ctr(&cd, &argv);
    let lines = Lines::new(side.stdout.take().expect("exec stdout"));
    assert_eq!(lines.next(), "ready\n");

    let out = cd.exec("oomx", "go", &[], &["touch", "/go"]);
    assert!(out.status.success(), "{}", describe(&out));
    let exit = events.wait_topic("/tasks/exit", "oomx", Some("oomx"));
    assert_eq!(exit.exit_status(), Some(137), "{exit:?}");
    let status = wait_child_timeout(&mut side, CTR_TIMEOUT).expect("exec client did not end");
    assert_eq!(status.code(), Some(137), "exec client status");
    let topics = events.task_topics("oomx");
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let side_exit = topics.iter().position(|t| t == "/tasks/exit:side");
    let init_exit = topics.iter().position(|t| t == "/tasks/exit:oomx");
    assert!(
        side_exit.is_some(),
        "no exit event for the exec: {topics:?}"
    );
    // runc's shim races its cgroup v1 OOM eventfd with the exit; pelagos orders them.
    if testing_pelagos() {
        assert!(
            matches!((oom, side_exit, init_exit), (Some(a), Some(b), Some(c)) if a < c && b < c),
            "want the OOM and the exec's exit before the init's: {topics:?}"
        );
    }
    assert_eq!(cd.task_rm("oomx"), 137);
    cd.ctr_ok(&["containers", "rm", "oomx"]);
    cd.assert_no_leaks();
}

/// Runs `script` as a detached init, waits for its exit event, and checks that nothing of the
/// container is left running and no zombie hangs off the shim or the container; returns the
/// exit status containerd reported.
fn run_forker(cd: &Containerd, id: &str, script: &str) -> u64 {
    let mut events = cd.events();
    cd.run_detached(id, &[], &["sh", "-c", script]);
    let init = cd.task_pid(id) as i32;
    // The init may be gone already (it exits right after forking): its containerd's only shim.
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "shims: {shims:?}");
    let shim = shims[0];
    let exit = events.wait_topic("/tasks/exit", id, Some(id));
    let left = survivors(cd.container_pids(), Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "container processes left after the exit: {left:?}"
    );
    let parents: BTreeSet<i32> = [shim, init].into_iter().collect();
    let zombies = zombies_of(&parents);
    assert!(
        zombies.is_empty(),
        "zombies of the shim or init: {zombies:?}"
    );
    assert_eq!(cd.task_status(id).as_deref(), Some("STOPPED"));
    let code = exit.exit_status().expect("exit status");
    assert_eq!(cd.task_rm(id) as u64, code);
    cd.ctr_ok(&["containers", "rm", id]);
    assert!(
        survivors([shim], Duration::from_secs(10)).is_empty(),
        "shim left after delete"
    );
    code
}

/// An init forks a thousand short-lived children and exits without waiting for them.
#[test]
fn thousand_short_lived_children_are_all_reaped() {
    let cd = Containerd::start();
    let n = children();
    let script = format!("i=0; while [ $i -lt {n} ]; do /bin/true & i=$((i+1)); done; exit 3");
    assert_eq!(run_forker(&cd, "forker", &script), 3);
    cd.assert_no_leaks();
}

/// An init exits while a thousand children still run: the pid namespace takes them all down.
#[test]
fn init_exit_takes_a_thousand_running_children() {
    let cd = Containerd::start();
    let n = children();
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; \
         [ $(ls /proc | grep -c '^[0-9]') -gt {n} ] || exit 1; exit 4"
    );
    assert_eq!(run_forker(&cd, "herd", &script), 4);
    cd.assert_no_leaks();
}

/// The attached client of `ctr run` is SIGKILLed while the container writes numbered lines;
/// the shim and container live on, and `ctr task attach` reads whole lines, in order, from where
/// the output stands.
#[test]
fn stdout_reader_killed_and_reattached() {
    let cd = Containerd::start();
    let mut run = cd.spawn_run("chatty", &[], &["sh", "-c", &talker_script(20)]);
    let _stdin = run.stdin.take();
    let lines = Lines::new(run.stdout.take().expect("run stdout"));
    let before = lines.read_past(200, false);
    let init = cd.task_pid("chatty") as i32;
    let shim = shim_of(&cd, init);
    end_client(run);

    // The container keeps writing with no reader: the shim must neither die of SIGPIPE nor
    // lose its place. An exec round trip gives it the time to try.
    let out = cd.exec("chatty", "alive", &[], &["cat", "/tmp/n"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(cd.task("chatty"), Some((init as u32, "RUNNING".to_owned())));
    assert!(
        Path::new(&format!("/proc/{shim}")).exists(),
        "shim {shim} died"
    );

    let (client, lines) = attach(&cd, "chatty");
    let first = lines.read_past(0, true);
    assert!(
        first > before,
        "re-attached at line {first}, after line {before}"
    );
    lines.read_past(first + 500, false);
    end_client(client);

    cd.remove("chatty");
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

/// `--log-uri file://` into a directory that does not exist yet: made, like runc's shim does.
#[test]
fn log_file_in_a_missing_directory_is_created() {
    let cd = Containerd::start();
    let scratch = Scratch::new("missing");
    let log = scratch.path.join("not/yet/out.log");
    let uri = format!("file://{}", log.display());
    let out = cd.run("logmiss", &["--log-uri", &uri], &["echo", "logged"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&log).expect("read log"), "logged\n");
    cd.assert_no_leaks();
}

/// `--log-uri file://` on a read-only filesystem: the run fails naming the path, nothing left.
#[test]
fn log_file_on_a_read_only_mount_is_refused() {
    let cd = Containerd::start();
    let mut scratch = Scratch::new("ro");
    let path = scratch.path.to_string_lossy().into_owned();
    scratch.mount("tmpfs", "tmpfs", libc::MS_RDONLY, "size=64k");
    let log = scratch.path.join("out.log");
    let uri = format!("file://{}", log.display());
    let out = cd.run("logro", &["--log-uri", &uri], &["echo", "lost"]);
    eprintln!("read-only log: {}", describe(&out));
    assert!(
        !out.status.success(),
        "ran with a read-only log: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path), "error does not name {path}: {err}");
    assert!(!log.exists());
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}

/// Reads one line written into the fifo at `path` (opened read-write, so it never sees EOF and
/// needs no writer to open), waiting at most `timeout`.
fn fifo_line(path: &Path, timeout: Duration) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fifo = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo");
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    while !got.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "nothing written into {} in time",
            path.display()
        );
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fifo),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd for the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        let mut buf = [0u8; 256];
        match fifo.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// `--log-uri file://` on a full filesystem: the container is unaffected (its writes neither
/// block nor fail, so nothing dies of SIGPIPE) while the output is dropped, and the log resumes
/// once there is space again. runc's shim stops copying at ENOSPC instead, so its container
/// blocks on a full stdout pipe; this test is pelagos-only.
#[test]
fn log_file_on_a_full_filesystem_does_not_affect_the_container() {
    if !testing_pelagos() {
        eprintln!("skipped: runc's shim stalls the container when its log file is full");
        return;
    }
    let cd = Containerd::start();
    let mut full = Scratch::new("full");
    // Freeing the filler makes room for what is still in the pipes when the space comes back
    // (a few hundred KiB at most) and the line after it.
    full.mount("tmpfs", "tmpfs", 0, "size=4m");
    let filler = full.path.join("filler");
    let _ = fs::write(&filler, vec![0u8; 8 << 20]);
    let log = full.path.join("out.log");
    let uri = format!("file://{}", log.display());
    let ctl = Scratch::new("ctl");
    mkfifo(&ctl.path.join("ready"));
    let mount = format!(
        "type=bind,src={},dst=/ctl,options=rbind",
        ctl.path.display()
    );
    // ~1.3 MB of output, far past what the pipes between the container and the shim hold.
    let script = "seq 1 200000; echo \"seq=$?\" > /ctl/ready; \
                  while [ ! -e /ctl/go ]; do usleep 20000; done; echo resumed; exit 5";
    let mut run = cd.spawn_run(
        "logfull",
        &["--log-uri", &uri, "--mount", &mount],
        &["sh", "-c", script],
    );
    let _stdin = run.stdin.take();
    assert_eq!(
        fifo_line(&ctl.path.join("ready"), CTR_TIMEOUT),
        "seq=0\n",
        "seq's status"
    );
    fs::remove_file(&filler).expect("free the log filesystem");
    fs::write(ctl.path.join("go"), b"").expect("write /ctl/go");
    let status = wait_child_timeout(&mut run, CTR_TIMEOUT).expect("ctr run did not end");
    assert_eq!(status.code(), Some(5));
    let text = fs::read_to_string(&log).expect("read the log");
    assert!(
        text.ends_with("resumed\n"),
        "log after space came back: {:?}",
        &text[text.len().saturating_sub(100)..]
    );
    // What was still in the pipes when the space came back may land; the start cannot have.
    assert!(
        !text.starts_with("1\n"),
        "the start of the output was written into a full filesystem"
    );
    drop(full);
    cd.assert_no_leaks();
}

/// A cgroup creation refused half way: the container's cgroup parent allows no descendant in
/// the unified hierarchy (`cgroup.max.descendants` 0), so on a hybrid host the v1 hierarchies
/// take the new cgroup and the unified one refuses it, and on a pure v2 host the refusal comes
/// after the parents the create made. The run fails naming the refused directory; nothing is
/// left in any hierarchy, neither the container's cgroup nor the parents the create made.
#[test]
fn cgroup_creation_refused_half_way_fails_cleanly() {
    let top = format!("pelagos-halfway-{}", std::process::id());
    // Dropped after containerd (declared before it), once nothing runs in it any more.
    let _made = CgroupTree(top.clone());
    let cd = Containerd::start();
    let unified = common::containerd::cgroup_mounts()
        .into_iter()
        .find(|m| {
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mi| {
                mi.lines().any(|l| {
                    l.split(' ').nth(4) == Some(&*m.to_string_lossy()) && l.contains(" - cgroup2 ")
                })
            })
        })
        .expect("a cgroup2 mount");
    // The parent the test makes: full, in the unified hierarchy only.
    let parent = unified.join(&top).join("full");
    fs::create_dir_all(&parent).expect("make the parent");
    fs::write(parent.join("cgroup.max.descendants"), "0").expect("limit descendants");
    let cgroup = format!("/{top}/full/c");
    let id = "halfway";
    let out = cd.run(id, &["--cgroup", &cgroup], &["echo", "hi"]);
    if out.status.success() && !testing_pelagos() {
        // runc 1.1 on a hybrid host makes no cgroup in the unified hierarchy at all.
        println!("the control ran: runc leaves the unified hierarchy alone on this host");
        return;
    }
    assert!(!out.status.success(), "ran: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let refused = unified.join(&top).join("full/c");
    assert!(
        err.contains(&*refused.to_string_lossy()),
        "error does not name {}: {err}",
        refused.display()
    );
    let left: Vec<PathBuf> = common::containerd::cgroup_mounts()
        .into_iter()
        .filter(|m| *m != unified)
        .map(|m| m.join(&top))
        .chain([refused])
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    cd.clear_fifo_dirs();
    cd.ctr(&["containers", "rm", id]);
    cd.assert_no_leaks();
}

/// The fifo directory of a running container removed under it (a tmp cleaner, an operator): the
/// container keeps running, execs work, kill and delete work, and nothing is left.
#[test]
fn fifo_dir_removed_under_a_running_container() {
    let cd = Containerd::start();
    let id = "fifogone";
    cd.run_detached(
        id,
        &[],
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done",
        ],
    );
    let dirs = common::containerd::dir_entries(&cd.fifo_dir());
    assert!(!dirs.is_empty(), "no fifo dir for the container");
    cd.clear_fifo_dirs();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"));
    let out = cd.exec(id, "after", &[], &["echo", "still here"]);
    assert_eq!(stdout(&out), "still here\n", "{}", describe(&out));
    cd.clear_fifo_dirs();
    cd.remove(id);
    cd.assert_no_leaks();
}

/// `ctr task rm -f` of a `ctr run -d` container whose output nobody reads: the container has
/// filled the fifo and blocks writing. The shim must not wait for a client that is gone: it held
/// the exit 5 s for the output to be read and Delete waited 10 s more (15 s, against ~1 s with
/// runc's shim). Checked through the mechanism (the shim never gave up on an output by its
/// timeouts) and against a generous bound (runc's shim takes about 1 s here).
#[test]
fn rm_f_of_a_detached_container_whose_output_nobody_reads_returns_promptly() {
    let cd = Containerd::start();
    let id = "unread";
    cd.run_detached(
        id,
        &[],
        &["sh", "-c", &format!("while true; do echo {PAD}; done")],
    );
    // The fifo and the pipe behind it fill within milliseconds; give it time to block.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"));
    let started = Instant::now();
    let out = cd.ctr(&["task", "rm", "-f", id]);
    let took = started.elapsed();
    eprintln!("ctr task rm -f: {took:?}");
    cd.expect_ok(&["task", "rm", "-f", id], &out);
    assert_eq!(cd.task(id), None, "the task is still listed");
    let log = fs::read_to_string(cd.log_path()).unwrap_or_default();
    for timeout in [
        "output not read by the client after",
        "output not drained after",
    ] {
        assert!(
            !log.contains(timeout),
            "the shim waited for a client that is gone ({timeout:?}):\n{}",
            cd.log_tail(30)
        );
    }
    assert!(
        took < Duration::from_secs(10),
        "ctr task rm -f took {took:?} (runc's shim: ~1 s)"
    );
    cd.ctr_ok(&["containers", "rm", id]);
    cd.assert_no_leaks();
}

/// The other side of the test above: a client that is there but reads late gets every byte of
/// a process that exited with its output filling the fifo (and the pipe behind it).
#[test]
fn a_client_that_reads_late_gets_all_the_output_of_an_exited_process() {
    let cd = Containerd::start();
    let id = "lateread";
    const N: usize = 400_000;
    let script = format!("head -c {N} /dev/zero | tr '\\0' x; echo; echo end");
    let mut child = cd.spawn_run(id, &[], &["sh", "-c", &script]);
    // Nobody reads ctr's stdout until the container has exited: its last writes fit in the
    // pipes and the fifo (the pipes grow to 256 KiB), which then stay full. Should it not exit
    // (smaller pipes), reading now still checks that nothing is lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::sleep(Duration::from_millis(300));
    while !cd.container_pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)
        .unwrap();
    let status = wait_child_timeout(&mut child, CTR_TIMEOUT).expect("ctr run did not end");
    let mut expected = vec![b'x'; N];
    expected.extend_from_slice(b"\nend\n");
    assert!(
        out == expected,
        "got {} bytes (expected {}), ending {:?}; ctr exit {status}\n{}",
        out.len(),
        expected.len(),
        String::from_utf8_lossy(&out[out.len().saturating_sub(20)..]),
        cd.log_tail(30)
    );
    assert!(status.success(), "ctr run: {status}");
    cd.assert_no_leaks();
}

/// A `binary://` logger that exits, is killed, or stops reading: the container keeps running
/// and writing (its writes neither block for ever nor fail), the shim says so once, and the next
/// container's logger works. The container writes as fast as it can and counts its lines in
/// /tmp/n (by rename: never seen empty); a stalled logger is killed after 10 s of a full pipe (shim/src/io/logger.rs).
#[test]
fn binary_logger_that_dies_or_stalls_does_not_stop_the_container() {
    let cd = Containerd::start();
    let dir = Scratch::new("logger");
    let write_script = |name: &str, body: &str| {
        let path = dir.path.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    let out = dir.path.join("out");
    // Ready once fd 5 is closed; each keeps fd 3 (stdout) and 4 (stderr) as the shim gave them.
    let exits = write_script("exits", "exec 5>&-\nhead -n 3 <&3 >/dev/null\nexit 3");
    let killed = write_script(
        "killed",
        &format!(
            "exec 5>&-\necho $$ > {}/killed.pid\nexec cat <&3 >/dev/null",
            dir.path.display()
        ),
    );
    let stalls = write_script("stalls", "exec 5>&-\nexec sleep 1000");
    let works = write_script(
        "works",
        &format!("exec 5>&-\nexec cat <&3 >{}", out.display()),
    );
    let writer = [
        "sh",
        "-c",
        "i=0; while true; do echo line $i; i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; done",
    ];
    let count = |id: &str| -> u64 {
        let out = cd.exec(id, "count", &[], &["cat", "/tmp/n"]);
        stdout(&out)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{id}: count: {}\n{}", describe(&out), cd.log_tail(30)))
    };
    for (id, logger) in [
        ("lexits", &exits),
        ("lkilled", &killed),
        ("lstalls", &stalls),
    ] {
        if id == "lstalls" && !testing_pelagos() {
            // runc's shim, the control, leaves this container blocked once the pipe is full
            // (seen: 6656 lines, 64 KiB, then nothing).
            continue;
        }
        let uri = format!("binary://{}", logger.display());
        cd.run_detached(id, &["--log-uri", &uri], &writer);
        if id == "lkilled" {
            let pid_file = dir.path.join("killed.pid");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pid_file.exists() {
                assert!(Instant::now() < deadline, "the logger never started");
                std::thread::sleep(Duration::from_millis(20));
            }
            let pid: i32 = fs::read_to_string(&pid_file)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            kill(pid, libc::SIGKILL);
        }
        // Past the stall limit: by then a stalled logger is gone and the output drained.
        let wait = if id == "lstalls" { 12 } else { 2 };
        std::thread::sleep(Duration::from_secs(wait));
        let before = count(id);
        std::thread::sleep(Duration::from_millis(500));
        let after = count(id);
        assert_eq!(cd.task_status(id).as_deref(), Some("RUNNING"), "{id}");
        assert!(
            after > before,
            "{id}: the container stopped writing ({before} then {after})"
        );
        cd.remove(id);
    }
    // What the shim says is pelagos' own.
    let said = cd.log_tail(400);
    for id in ["lexits", "lkilled", "lstalls"]
        .into_iter()
        .filter(|_| testing_pelagos())
    {
        let n = said
            .lines()
            .filter(|l| l.contains("has exited") && l.contains(&format!("container {id}")))
            .count();
        assert_eq!(n, 1, "{id}: said {n} times that its logger exited:\n{said}");
    }
    let uri = format!("binary://{}", works.display());
    let out_run = cd.run("lworks", &["--log-uri", &uri], &["echo", "logged"]);
    assert!(out_run.status.success(), "{}", describe(&out_run));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(&out).unwrap_or_default() != "logged\n" {
        assert!(Instant::now() < deadline, "the next logger got nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    cd.assert_no_leaks();
}

/// The shim under memory pressure: its `ShimCgroup` has a 32 MiB memory limit while its
/// container writes 64 MiB to an attached `ctr run`. The shim copes (all the output arrives,
/// exit 0) or, were it OOM-killed, is handled like a killed shim; no ctr call wedges, nothing
/// is left. (Its copies splice: the output never passes through its memory.)
#[test]
fn shim_with_a_small_memory_limit_serves_heavy_output() {
    if !testing_pelagos() {
        println!("skipped: ctr passes runc's shim no ShimCgroup");
        return;
    }
    let shim_cg = format!("/pelagos-shim-mem-{}", std::process::id());
    // Dropped after containerd (declared before it), once the shim has left it.
    let _made = CgroupTree(shim_cg.clone());
    let cd = Containerd::start();
    let mounts = common::containerd::cgroup_mounts();
    let memory: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.join("memory.max").exists() || m.ends_with("memory"))
        .cloned()
        .collect();
    let root_v2 = mounts.iter().any(|m| {
        m.join("cgroup.subtree_control").exists()
            && fs::read_to_string(m.join("cgroup.controllers")).is_ok_and(|c| c.contains("memory"))
    });
    let made: Vec<&PathBuf> = if root_v2 {
        mounts
            .iter()
            .filter(|m| m.join("cgroup.controllers").exists())
            .collect()
    } else {
        mounts
            .iter()
            .filter(|m| !m.join("cgroup.controllers").exists())
            .collect()
    };
    common::containerd::make_cgroup(&shim_cg, &made);
    let rel = shim_cg.trim_start_matches('/');
    let limit = 32u64 << 20;
    for m in &memory {
        let dir = m.join(rel);
        let file = if dir.join("memory.max").exists() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        fs::write(dir.join(file), limit.to_string()).expect("set the shim's memory limit");
    }
    let config = cd.root_dir().join("shim-mem.toml");
    fs::write(&config, format!("ShimCgroup = \"{shim_cg}\"\n")).unwrap();
    let size: u64 = 64 << 20;
    let mut child = cd.spawn_run(
        "shimmem",
        &["--runtime-config-path", config.to_str().unwrap()],
        &["sh", "-c", &format!("head -c {size} /dev/zero")],
    );
    let mut stdout_pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k) = stdout_pipe.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    // The shim serving it is in the limited cgroup (its `start` joins it before serving).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let joined = cd.shim_pids().into_iter().any(|p| {
            fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| {
                c.lines().any(|l| {
                    (l.contains(":memory:") || l.starts_with("0::")) && l.ends_with(&shim_cg)
                })
            })
        });
        if joined {
            break;
        }
        assert!(Instant::now() < deadline, "no shim in {shim_cg}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = wait_child_timeout(&mut child, Duration::from_secs(120));
    let got = reader.join().unwrap();
    let status = status.expect("ctr run wedged under the shim's memory limit");
    if status.success() {
        assert_eq!(got, size, "output lost");
    } else {
        println!(
            "the shim did not cope (status {status:?}, {got} bytes): handled as a killed shim"
        );
        cd.ctr(&["task", "rm", "-f", "shimmem"]);
        cd.ctr(&["containers", "rm", "shimmem"]);
    }
    cd.clear_fifo_dirs();
    cd.assert_no_leaks();
}
