//! Escape attempts from inside a container (issue 6): an attacker program
//! (tests/fixtures/escape.c, built static at test time and bind-mounted at /x) tries to reach
//! the host through the runtime, and every attempt must fail:
//!
//! - CVE-2019-5736: while the host runs execs into the container, catch every new process
//!   (SIGSTOP it, as the attacker may: same uid), and write to the runtime's binary through
//!   /proc/<pid>/exe, an O_PATH reopen, /proc/<pid>/mem, ptrace; `#!/proc/self/exe` execs make
//!   the runtime's own binary run inside the container, and its exe is held until the processes
//!   are gone (the CVE's second step). The binaries must be unchanged afterwards.
//! - the shim's sockets (paths and abstract names from the host's /proc/net/unix), from the
//!   container's netns and from the host's;
//! - the shim's /proc files and ptrace, with a private and with the host's pid namespace;
//! - mount and mknod with the default capabilities.
//!
//! The binaries attacked are copies (a successful attack must not break the shared build), run
//! exactly as the originals: the shim through `PELAGOS_SHIM`, the core's helper through
//! `Config::helper`. The originals are hashed too.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::bundle::{exec_process, unique_id, Bundle, Pipes, TestRoot};
use common::containerd::{shim_binary, Containerd};
use common::image::sha256_hex;
use pelagos::{reaper, Config, Container, CreateOptions, Stdio};
use serde_json::{json, Value};

/// Execs raced against the attacker: the 100, also in CI (the whole file takes about
/// two minutes on the quiet 2-core machine). `PELAGOS_LONG=1` runs 500.
fn execs() -> usize {
    if std::env::var("PELAGOS_LONG").as_deref() == Ok("1") {
        500
    } else {
        100
    }
}

const WAIT: Duration = Duration::from_secs(60);

fn sha256_file(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

fn scratch_parent() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pelagos-escape")
}

/// The attacker, compiled once per source version (named after its digest, landed by rename).
fn attacker_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/escape.c");
        let digest = sha256_file(&src);
        let dir = scratch_parent();
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("escape-{}", &digest[..16]));
        if !out.is_file() {
            // Builds of older sources are not needed any more.
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("escape-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let tmp = dir.join(format!("escape.tmp.{}", std::process::id()));
            common::bundle::build_static_fixture("escape", &tmp);
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
}

/// A copy of `original` in a host-only dir of this test process (removed with the process's
/// other stale copies on the next run), so a successful attack damages only the copy.
fn protected_copy(original: &Path) -> PathBuf {
    // Tests of this process share the copies: one makes each.
    static COPYING: Mutex<()> = Mutex::new(());
    let _guard = COPYING.lock().unwrap_or_else(|e| e.into_inner());
    let parent = scratch_parent();
    std::fs::create_dir_all(&parent).unwrap();
    if let Ok(rd) = std::fs::read_dir(&parent) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("bin-")
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                });
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = parent.join(format!("bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(original.file_name().unwrap());
    if !copy.exists() {
        let tmp = dir.join(format!(
            "{}.tmp",
            original.file_name().unwrap().to_string_lossy()
        ));
        std::fs::copy(original, &tmp).unwrap();
        std::fs::rename(&tmp, &copy).unwrap();
    }
    copy
}

/// The shim copy every containerd of this process runs.
fn shim_copy() -> &'static Path {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let copy = protected_copy(&shim_binary());
        // Read by Containerd::start (under START below), before any containerd exists.
        std::env::set_var("PELAGOS_SHIM", &copy);
        copy
    })
}

fn containerd() -> Containerd {
    static START: Mutex<()> = Mutex::new(());
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    shim_copy();
    Containerd::start()
}

/// Hashes of a binary and its original, checked unchanged at the end of a test.
struct Hashes(Vec<(PathBuf, String)>);

impl Hashes {
    fn of(paths: &[&Path]) -> Hashes {
        Hashes(
            paths
                .iter()
                .map(|p| (p.to_path_buf(), sha256_file(p)))
                .collect(),
        )
    }

    fn assert_unchanged(&self) {
        for (path, before) in &self.0 {
            assert_eq!(
                &sha256_file(path),
                before,
                "{} was modified from inside the container",
                path.display()
            );
        }
    }
}

/// A host dir bind-mounted at /x: the attacker, a `#!/proc/self/exe` script, the marker the
/// attacker's destructive modes look for, and whatever the attacker writes back.
struct Arena {
    dir: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let dir = std::env::temp_dir().join(unique_id("pelagos-escape"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let escape = dir.join("escape");
        std::fs::copy(attacker_binary(), &escape).unwrap();
        std::fs::write(dir.join("evil"), "#!/proc/self/exe\n").unwrap();
        std::fs::set_permissions(dir.join("evil"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join(".escape-container"), "").unwrap();
        Arena { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    fn mount(&self) -> Value {
        json!({"destination": "/x", "type": "bind", "source": self.dir,
               "options": ["rbind", "rw"]})
    }

    fn ctr_mount(&self) -> String {
        format!(
            "type=bind,src={},dst=/x,options=rbind:rw",
            self.dir.display()
        )
    }

    /// Waits for the attacker to create `name` (it is in another process: no event to wait on).
    fn wait_for(&self, name: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.file(name).exists() {
            assert!(
                Instant::now() < deadline,
                "the attacker did not create /x/{name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// race.sum as (key, value) pairs.
    fn summary(&self) -> Vec<(String, i64)> {
        self.read("race.sum")
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(summary: &[(String, i64)], key: &str) -> i64 {
    summary
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("race.sum has no {key}: {summary:?}"))
}

/// Checks the race's outcome: no escape, and the attacker really caught setup helpers in the
/// container (so the protection held, not luck). `evil` is (refused, run) of the
/// `#!/proc/self/exe` execs: without an ELF loader in the container (the busybox-static image)
/// they fail with ENOENT (runc's too) and the attacker meets the runtime's binary only in the
/// helper, before its exec; with one (the shim race mounts the host's) the binary runs as the
/// script's interpreter, the exec'd process, which the attacker may trace but whose binary it
/// must not be able to write, then or after it exited.
///
/// Without SIGSTOP (`frozen` false: a pid namespace shared with the host) catching a helper is
/// luck, so only the processes of the container are required to have been seen.
fn assert_race_held(arena: &Arena, what: &str, evil: (usize, usize), frozen: bool) {
    let summary = arena.summary();
    let log = arena.read("race.log");
    // Each with the probe line it interrupted.
    let lines: Vec<&str> = log.lines().collect();
    let escapes: Vec<String> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("ESCAPE"))
        .map(|i| format!("{} (after: {})", lines[i], lines[i.saturating_sub(1)]))
        .collect();
    eprintln!(
        "{what}: attacker summary {summary:?}; #!/proc/self/exe execs refused {}, run {}",
        evil.0, evil.1
    );
    for line in log
        .lines()
        .filter(|l| l.contains("helper=1") || l.contains("foreign=1") || l.starts_with("late"))
        .take(4)
    {
        eprintln!("  {line}");
    }
    assert!(
        escapes.is_empty() && get(&summary, "escapes") == 0,
        "{what}: the attacker escaped:\n{}",
        escapes.join("\n")
    );
    let caught = if frozen {
        get(&summary, "helper")
    } else {
        get(&summary, "seen")
    };
    assert!(
        caught > 0,
        "{what}: the attacker never caught a setup helper in the container; log:\n{log}"
    );
    if evil.1 > 0 {
        assert!(
            get(&summary, "caught_foreign") > 0,
            "{what}: the runtime's binary ran in the container but the attacker never held it"
        );
    }
}

/// Runs `args` in `c`, returns (exit code, stdout).
fn core_exec(c: &Container, args: &[&str]) -> (i32, String) {
    let (stdio, pipes) = Pipes::new();
    let p = c.exec(&exec_process(args), stdio).expect("exec");
    let (out, _) = pipes.collect();
    let code = reaper::wait(p.pid, None).expect("reap").status;
    (code, out)
}

fn core_create(config: &Config, bundle: &Bundle) -> Container {
    Container::create(
        config,
        CreateOptions {
            id: unique_id("esc"),
            bundle: bundle.path().to_path_buf(),
            stdio: Stdio::Null,
            no_pivot: false,
            preserve_fds: Vec::new(),
        },
    )
    .expect("create")
}

/// No mounts, cgroups, state or processes of the container are left.
fn assert_core_clean(root: &TestRoot, bundle: &Bundle, pid: i32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "container init {pid} still running"
    );
    let left: Vec<_> = std::fs::read_dir(root.root())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    let cg = bundle.cgroup_path().unwrap();
    // v1 controllers, the hybrid's v2 mount, and a pure v2 root.
    for hier in ["memory", "pids", "devices", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(hier)
            .join(cg.trim_start_matches('/'));
        assert!(!p.exists(), "cgroup left: {}", p.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = bundle.rootfs();
    assert!(
        !mountinfo.contains(rootfs.to_str().unwrap()),
        "mounts left under {}",
        rootfs.display()
    );
}

/// Lines of the attacker's output that report a success (`<what> ok`).
fn successes<'a>(out: &'a str, skip: &[&str]) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            let what = f.next().unwrap_or("");
            f.next() == Some("ok") && !skip.contains(&what)
        })
        .collect()
}

fn result_of<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(what)).then(|| f.next().unwrap_or(""))
        })
        .unwrap_or_else(|| panic!("no {what} in the attacker's output:\n{out}"))
}

// ---- CVE-2019-5736 ------------------------------------------------------------------------

/// A core-level race: the attacker runs as the init of a container whose setup helper is a
/// protected copy of the CLI binary.
struct CoreRace {
    arena: Arena,
    hashes: Hashes,
    root: TestRoot,
    bundle: Bundle,
    c: Container,
    pid: i32,
}

impl CoreRace {
    /// Starts `/x/escape <mode> /x` in a container from `bundle` (edited by the test).
    fn start(mode: &str, bundle: impl FnOnce(Bundle) -> Bundle) -> CoreRace {
        let arena = Arena::new();
        let original = Path::new(env!("CARGO_BIN_EXE_pelagos"));
        let helper = protected_copy(original);
        let hashes = Hashes::of(&[&helper, original]);
        let root = TestRoot::new();
        let config = Config {
            root: root.root().to_path_buf(),
            helper: Some(helper.clone()),
            systemd_cgroup: false,
        };
        let bundle = bundle(Bundle::new())
            .args(&["/x/escape", mode, "/x"])
            .mount(arena.mount());
        let mut c = core_create(&config, &bundle);
        c.start().expect("start");
        let pid = c.pid();
        arena.wait_for("ready");
        CoreRace {
            arena,
            hashes,
            root,
            bundle,
            c,
            pid,
        }
    }

    fn exec_true(&self) {
        let p = self
            .c
            .exec(&exec_process(&["true"]), Stdio::Null)
            .expect("exec");
        assert_eq!(reaper::wait(p.pid, None).expect("reap exec").status, 0);
    }

    /// Stops the attacker, then checks the race held (see [`assert_race_held`]), the binaries
    /// are unchanged and nothing is left.
    fn finish(self, what: &str, evil: (usize, usize), frozen: bool) {
        std::fs::write(self.arena.file("stop"), "").unwrap();
        let status = self.c.wait().expect("wait for the attacker").status;
        self.c.delete(false).expect("delete");
        assert_eq!(
            status,
            0,
            "attacker failed; log:\n{}",
            self.arena.read("race.log")
        );
        assert_race_held(&self.arena, what, evil, frozen);
        self.hashes.assert_unchanged();
        assert_core_clean(&self.root, &self.bundle, self.pid);
    }
}

#[test]
fn core_exec_race_cannot_write_the_helper_binary() {
    let race = CoreRace::start("race", |b| b);
    let mut evil = (0, 0);
    for i in 0..execs() {
        // Half the execs try to run the helper's own binary in the container, as the CVE's
        // image does.
        if i % 2 == 0 {
            race.exec_true();
            continue;
        }
        match race.c.exec(&exec_process(&["/x/evil"]), Stdio::Null) {
            Ok(p) => {
                reaper::wait(p.pid, None).expect("reap exec");
                evil.1 += 1;
            }
            Err(e) if e.to_string().contains("no such file or directory") => evil.0 += 1,
            Err(e) => panic!("exec /x/evil: {e}"),
        }
    }
    race.finish("core exec race", evil, true);
}

/// The race with the host's pid namespace shared (Bundle without a pid namespace): exec helpers
/// do not fork and are visible from their clone on, dumpable until their first prctl. The
/// attacker watches the processes of its own cgroup (it signals nothing: host processes are
/// visible); the capability check is what must hold (the helper has capabilities the container
/// lacks).
#[test]
fn core_exec_race_in_the_host_pid_namespace() {
    let race = CoreRace::start("watch", |b| b.without_namespace("pid"));
    for _ in 0..execs() {
        race.exec_true();
    }
    race.finish("core exec race, host pid namespace", (0, 0), false);
}

/// The control for the two races: a binary that is not protected (a busybox copy on a plain
/// bind mount, exec'd into the container) is caught, held, and overwritten once its process is
/// gone, so the races above would see a writable runtime binary.
#[test]
fn the_attacker_overwrites_an_unprotected_binary() {
    let arena = Arena::new();
    // Named so that busybox runs its sh applet.
    let victim = arena.file("sh");
    std::fs::copy("/bin/busybox", &victim).unwrap();
    let before = sha256_file(&victim);
    let root = TestRoot::new();
    let bundle = Bundle::new()
        .args(&["/x/escape", "race", "/x"])
        .mount(arena.mount());
    let mut c = root.create(&bundle, Stdio::Null).expect("create");
    c.start().expect("start");
    let pid = c.pid();
    arena.wait_for("ready");
    let script = "until [ -e /x/release ]; do sleep 0.01; done";
    let p = c
        .exec(&exec_process(&["/x/sh", "-c", script]), Stdio::Null)
        .expect("exec");
    // Released once the attacker holds it (it polls /proc: no event to wait on).
    let deadline = Instant::now() + WAIT;
    while !arena.read("race.log").contains("foreign=1") {
        assert!(Instant::now() < deadline, "{}", arena.read("race.log"));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(arena.file("release"), "").unwrap();
    assert_eq!(reaper::wait(p.pid, None).expect("reap").status, 0);
    std::fs::write(arena.file("stop"), "").unwrap();
    assert_eq!(c.wait().expect("wait").status, 0);
    c.delete(false).expect("delete");
    let summary = arena.summary();
    let log = arena.read("race.log");
    assert!(
        get(&summary, "held") > 0 && get(&summary, "escapes") > 0,
        "the attacker did not get through an unprotected binary: {summary:?}\n{log}"
    );
    assert_ne!(sha256_file(&victim), before, "{log}");
    assert_core_clean(&root, &bundle, pid);
}

#[test]
fn shim_exec_race_cannot_write_the_shim_binary() {
    let arena = Arena::new();
    let cd = containerd();
    let hashes = Hashes::of(&[shim_copy(), &shim_binary()]);
    let id = "race";
    let mut opts = vec!["--mount".to_string(), arena.ctr_mount()];
    // The host's ELF loader and libraries, read-only, as any glibc-based image has them: then
    // the `#!/proc/self/exe` execs run the (dynamically linked) shim binary in the container,
    // the CVE's first step, and the attacker gets to hold and trace it.
    for dir in ["/lib", "/lib64"] {
        if let Ok(src) = std::fs::canonicalize(dir) {
            opts.push("--mount".into());
            opts.push(format!(
                "type=bind,src={},dst={dir},options=rbind:ro",
                src.display()
            ));
        }
    }
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    cd.run_detached(id, &opts, &["/x/escape", "race", "/x"]);
    arena.wait_for("ready");
    let n = execs();
    // Two concurrent exec streams, as a busy host would run them.
    let evil = std::thread::scope(|s| {
        let streams: Vec<_> = (0..2)
            .map(|stream| {
                let cd = &cd;
                s.spawn(move || {
                    let mut evil = (0, 0);
                    for i in (stream..n).step_by(2) {
                        if (i / 2) % 2 == 0 {
                            let out = cd.exec(id, &format!("e{i}"), &[], &["true"]);
                            cd.expect_ok(&["exec true"], &out);
                            continue;
                        }
                        let out = cd.exec(id, &format!("e{i}"), &[], &["/x/evil"]);
                        if String::from_utf8_lossy(&out.stderr).contains("no such file") {
                            evil.0 += 1;
                        } else {
                            evil.1 += 1;
                        }
                    }
                    evil
                })
            })
            .collect();
        streams.into_iter().fold((0, 0), |acc, t| {
            let e = t.join().unwrap();
            (acc.0 + e.0, acc.1 + e.1)
        })
    });
    cd.clear_fifo_dirs();
    let mut events = cd.events();
    std::fs::write(arena.file("stop"), "").unwrap();
    events
        .wait_for(WAIT, |e| {
            e.topic == "/tasks/exit" && e.container_id() == Some(id) && e.process_id() == Some(id)
        })
        .expect("the attacker exits once told to stop");
    assert_eq!(cd.task_rm(id), 0, "log:\n{}", arena.read("race.log"));
    cd.ctr_ok(&["containers", "rm", id]);
    assert_race_held(&arena, "shim exec race", evil, true);
    hashes.assert_unchanged();
    cd.assert_no_leaks();
}

// ---- the shim's sockets -------------------------------------------------------------------

/// Unix socket names (paths, or `@abstract`) bound by the sockets among `pid`'s fds, read from
/// the host's /proc/net/unix.
fn socket_names_of(pid: i32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let mut names: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && inodes.iter().any(|i| i == f[6])).then(|| f[7].to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn shim_sockets_unreachable_from_the_container() {
    let arena = Arena::new();
    let cd = containerd();
    let mount = arena.ctr_mount();
    cd.run_detached("victim", &["--mount", &mount], &["sleep", "1000"]);
    let shims = cd.shim_pids();
    assert!(!shims.is_empty(), "no shim process found");
    let mut names: Vec<String> = shims.iter().flat_map(|&p| socket_names_of(p)).collect();
    names.extend(
        cd.shim_sockets()
            .iter()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    names.sort();
    names.dedup();
    assert!(
        names.iter().any(|n| n.starts_with('/')),
        "found no listening socket of the shim: {names:?}"
    );
    eprintln!("shim sockets: {names:?}");
    std::fs::write(arena.file("socks"), names.join("\n") + "\n").unwrap();

    let from_own_netns = cd.exec(
        "victim",
        "socks",
        &[],
        &["/x/escape", "sockets", "/x/socks"],
    );
    cd.expect_ok(&["exec sockets"], &from_own_netns);
    let own = String::from_utf8_lossy(&from_own_netns.stdout).into_owned();
    let from_host_netns = cd.run(
        "hostnet",
        &["--net-host", "--mount", &mount],
        &["/x/escape", "sockets", "/x/socks"],
    );
    cd.expect_ok(&["run --net-host sockets"], &from_host_netns);
    let host = String::from_utf8_lossy(&from_host_netns.stdout).into_owned();
    for (what, out) in [("container netns", &own), ("host netns", &host)] {
        eprintln!("{what}:\n{out}");
        assert_eq!(out.lines().count(), names.len(), "{what}: {out}");
        let reached = successes(out, &[]);
        assert!(
            reached.is_empty(),
            "{what}: the container reached the shim: {reached:?}"
        );
    }
    cd.remove("victim");
    cd.assert_no_leaks();
}

// ---- the shim's /proc files and ptrace ------------------------------------------------------

/// What the attacker's `peek` must find closed on a host process it can see.
const PEEK_DENIED: &[&str] = &[
    "mem_read",
    "mem_write",
    "environ",
    "fd_open",
    "exe_link",
    "exe_open",
    "root",
    "maps",
    "seize",
    "attach",
];

fn assert_peek_denied(out: &str, what: &str) {
    assert_eq!(result_of(out, "exists"), "ok", "{what}: {out}");
    for key in PEEK_DENIED {
        let r = result_of(out, key);
        assert!(
            r == "EACCES" || r == "EPERM",
            "{what}: {key} gave {r}, not EACCES/EPERM:\n{out}"
        );
    }
}

#[test]
fn shim_proc_files_closed_to_the_container() {
    let arena = Arena::new();
    let cd = containerd();
    let mount = arena.ctr_mount();
    cd.run_detached("private", &["--mount", &mount], &["sleep", "1000"]);
    let shim = *cd.shim_pids().first().expect("a shim process");

    // Own pid namespace: the shim is not there at all.
    let out = cd.exec("private", "vis", &[], &["/x/escape", "visible"]);
    cd.expect_ok(&["exec visible"], &out);
    let visible = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !visible.contains("containerd-shim") && visible.lines().count() <= 3,
        "the container sees processes outside it:\n{visible}"
    );
    let out = cd.exec(
        "private",
        "peek",
        &[],
        &["/x/escape", "peek", &shim.to_string()],
    );
    let peek = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        result_of(&peek, "exists"),
        "ENOENT",
        "shim pid {shim} is visible in the container's pid namespace:\n{peek}"
    );

    // The host's pid namespace: the shim is visible, but without CAP_SYS_PTRACE (not in the
    // default set) nothing of it opens. (Named through this process: this VM's pid 1 holds
    // capabilities we lack, so its /proc/1/ns is closed to us.)
    let host_pid_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    let out = cd.run(
        "hostpid",
        &["--with-ns", &host_pid_ns, "--mount", &mount],
        &["/x/escape", "peek", &shim.to_string()],
    );
    cd.expect_ok(&["run --with-ns pid peek"], &out);
    let peek = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("host pid namespace, peek at shim {shim}:\n{peek}");
    assert_peek_denied(&peek, "host pid namespace");
    cd.remove("private");
    cd.assert_no_leaks();
}

#[test]
fn core_runtime_proc_files_closed_with_the_host_pid_namespace() {
    let arena = Arena::new();
    let root = TestRoot::new();
    let me = std::process::id().to_string();
    let bundle = Bundle::new()
        .without_namespace("pid")
        .args(&["/x/escape", "peek", &me])
        .mount(arena.mount());
    let out = root.run(&bundle);
    assert_eq!(out.code, 0, "{out:?}");
    assert_peek_denied(&out.stdout, "core, host pid namespace");
    assert!(root.root().read_dir().is_ok_and(|mut d| d.next().is_none()));
}

// ---- mount and mknod ----------------------------------------------------------------------

/// major:minor of a host block device, from the host's /sys.
fn host_disk() -> (String, String) {
    let dev = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .unwrap_or_else(|| "8:0\n".into());
    let (maj, min) = dev.trim().split_once(':').unwrap();
    (maj.to_owned(), min.to_owned())
}

fn assert_mount_refused(out: &str, what: &str) {
    let done = successes(out, &[]);
    assert!(
        done.is_empty(),
        "{what}: mount calls succeeded: {done:?}\n{out}"
    );
    assert!(out.lines().count() >= 9, "{what}: {out}");
}

/// Each node is refused at mknod, or opens with EPERM (the devices cgroup).
fn assert_devices_unusable(out: &str, what: &str) {
    for name in ["hostdisk", "sda", "mem", "kmsg"] {
        let made = result_of(out, &format!("mknod_{name}"));
        if made == "ok" {
            let opened = result_of(out, &format!("open_{name}"));
            assert_eq!(opened, "EPERM", "{what}: /tmp/{name} opened:\n{out}");
        } else {
            assert_eq!(made, "EPERM", "{what}: mknod {name}: {out}");
        }
    }
}

#[test]
fn shim_mount_and_mknod_refused() {
    let arena = Arena::new();
    let cd = containerd();
    let mount = arena.ctr_mount();
    let out = cd.run("mount", &["--mount", &mount], &["/x/escape", "mount"]);
    cd.expect_ok(&["run mount"], &out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("mount:\n{text}");
    assert_mount_refused(&text, "ctr default capabilities");
    let (maj, min) = host_disk();
    let out = cd.run(
        "mknod",
        &["--mount", &mount],
        &["/x/escape", "mknod", &maj, &min],
    );
    cd.expect_ok(&["run mknod"], &out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("mknod:\n{text}");
    assert_devices_unusable(&text, "ctr default capabilities");
    // containerd's default set has CAP_MKNOD: the nodes are made, and the cgroup is what holds.
    assert_eq!(result_of(&text, "mknod_mem"), "ok", "{text}");
    cd.assert_no_leaks();
}

#[test]
fn core_mount_and_mknod_refused() {
    let arena = Arena::new();
    let root = TestRoot::new();
    let (maj, min) = host_disk();
    let out = root.run(
        &Bundle::new()
            .args(&["/x/escape", "mount"])
            .mount(arena.mount())
            .mount(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_mount_refused(&out.stdout, "core default capabilities");
    // Writable /tmp for the nodes; with and without CAP_MKNOD.
    for with_mknod in [false, true] {
        let bundle = Bundle::new()
            .args(&["/x/escape", "mknod", &maj, &min])
            .mount(arena.mount())
            .mount(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}))
            .edit(|c| {
                if with_mknod {
                    for set in ["bounding", "effective", "permitted"] {
                        c["process"]["capabilities"][set]
                            .as_array_mut()
                            .unwrap()
                            .push(json!("CAP_MKNOD"));
                    }
                }
            });
        let out = root.run(&bundle);
        assert_eq!(out.code, 0, "{out:?}");
        let what = format!("core, CAP_MKNOD {with_mknod}");
        assert_devices_unusable(&out.stdout, &what);
        let made = result_of(&out.stdout, "mknod_mem");
        assert_eq!(made == "ok", with_mknod, "{what}: {}", out.stdout);
    }
}

// ---- fds ----------------------------------------------------------------------------------

/// Only 0, 1 and 2 are open, and the cwd is the container's /.
fn assert_only_stdio(out: &str, what: &str) {
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["fd", n, ..] => assert!(
                ["0", "1", "2"].contains(n),
                "{what}: a runtime fd leaked into the container: {line}\n{out}"
            ),
            ["cwd", cwd] => assert_eq!(*cwd, "/", "{what}: {out}"),
            _ => panic!("{what}: unexpected line {line:?}"),
        }
    }
    assert!(out.contains("cwd "), "{what}: {out}");
}

#[test]
fn no_runtime_fds_in_container_processes() {
    let arena = Arena::new();
    let root = TestRoot::new();
    let bundle = Bundle::new()
        .args(&["/x/escape", "fds"])
        .mount(arena.mount());
    let out = root.run(&bundle);
    assert_eq!(out.code, 0, "{out:?}");
    assert_only_stdio(&out.stdout, "core init");
    let sleeper = Bundle::new().args(&["sleep", "1000"]).mount(arena.mount());
    let mut c = root.create(&sleeper, Stdio::Null).expect("create");
    c.start().expect("start");
    let (code, out) = core_exec(&c, &["/x/escape", "fds"]);
    c.kill(libc::SIGKILL, false).unwrap();
    c.wait();
    c.delete(false).unwrap();
    assert_eq!(code, 0, "{out}");
    assert_only_stdio(&out, "core exec");

    let cd = containerd();
    let mount = arena.ctr_mount();
    let out = cd.run("fds", &["--mount", &mount], &["/x/escape", "fds"]);
    cd.expect_ok(&["run fds"], &out);
    assert_only_stdio(&String::from_utf8_lossy(&out.stdout), "shim init");
    cd.run_detached("fdexec", &["--mount", &mount], &["sleep", "1000"]);
    let out = cd.exec("fdexec", "fds", &[], &["/x/escape", "fds"]);
    cd.expect_ok(&["exec fds"], &out);
    assert_only_stdio(&String::from_utf8_lossy(&out.stdout), "shim exec");
    cd.remove("fdexec");
    cd.assert_no_leaks();
    let _ = std::io::stderr().flush();
}
