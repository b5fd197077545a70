//! The commands, each a thin layer over `pelagos::Container`: parse flags, call the library,
//! print what runc prints.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use pelagos::container::Error as ContainerError;
use pelagos::{Config, ConsoleSocket, Container, CreateOptions, Status, Stdio};
use serde_json::{json, Value};

use crate::args::{self, switch, value, ArgError, Flag, Parsed};
use crate::template;
use crate::Global;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, CliError>;

fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.into();
    move |source| CliError::Io { what, path, source }
}

/// Runs `command` with its arguments; returns the process exit code.
pub fn run(g: &Global, command: &str, rest: &[String]) -> Result<i32> {
    let config = Config {
        root: g.root.clone(),
        helper: None,
        systemd_cgroup: g.systemd_cgroup,
    };
    match command {
        "create" => create(&config, rest),
        "start" => start(&config, rest),
        "run" => run_container(&config, rest),
        "state" => state(&config, rest),
        "kill" => kill(&config, rest),
        "delete" => delete(&config, rest),
        "exec" => exec(&config, rest),
        "ps" => ps(&config, rest),
        "pause" => pause_resume(&config, rest, true),
        "resume" => pause_resume(&config, rest, false),
        "update" => update(&config, rest),
        "checkpoint" => checkpoint(&config, rest),
        "restore" => restore(&config, rest),
        "list" => list(&config, rest),
        "spec" => spec(rest),
        "features" => {
            args::parse(rest, &[], false)?;
            print_json(&pelagos::features::document());
            Ok(0)
        }
        other => Err(CliError::Invalid(format!(
            "unknown command {other:?}\n{}",
            crate::USAGE
        ))),
    }
}

const CREATE_FLAGS: &[Flag] = &[
    value(&["bundle", "b"]),
    value(&["console-socket"]),
    value(&["pid-file"]),
    switch(&["no-pivot"]),
    switch(&["no-new-keyring"]),
    value(&["preserve-fds"]),
];

/// `run` takes create's flags and these; `--root` after the command too, as the first
/// `pelagos run` did.
const RUN_FLAGS: &[Flag] = &[
    value(&["root"]),
    value(&["bundle", "b"]),
    value(&["console-socket"]),
    value(&["pid-file"]),
    switch(&["no-pivot"]),
    switch(&["no-new-keyring"]),
    value(&["preserve-fds"]),
    switch(&["detach", "d"]),
    switch(&["keep"]),
];

fn create(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, CREATE_FLAGS, false)?;
    let id = p.id("pelagos create [--bundle DIR] [--console-socket SOCK] [--pid-file FILE] ID")?;
    create_container(config, &p, id, true)?;
    Ok(0)
}

/// Creates the container from the flags of `create`/`run`; writes the pid file. `detached`:
/// nobody will proxy a terminal, so one needs `--console-socket`; otherwise the returned
/// console socket receives the pty master to proxy.
fn create_container(
    config: &Config,
    p: &Parsed,
    id: &str,
    detached: bool,
) -> Result<(Container, Option<ConsoleSocket>)> {
    let bundle = PathBuf::from(p.get("bundle").unwrap_or("."));
    // Absolute without resolving symlinks, as runc records it.
    let bundle = std::path::absolute(&bundle).unwrap_or(bundle);
    let terminal = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|c| c["process"]["terminal"] == true);
    let preserve_fds = take_preserved_fds(p.number::<u32>("preserve-fds")?.unwrap_or(0))?;
    let (stdio, console) = terminal_stdio(terminal, p.get("console-socket"), detached)?;
    let c = Container::create(
        config,
        CreateOptions {
            id: id.to_string(),
            bundle,
            stdio,
            no_pivot: p.on("no-pivot"),
            preserve_fds,
        },
    )?;
    if let Some(pid_file) = p.get("pid-file") {
        if let Err(e) = write_pid_file(Path::new(pid_file), c.pid()) {
            let _ = c.delete(true);
            return Err(e);
        }
    }
    Ok((c, console))
}

/// The stdio of a process: with a terminal, the console socket's connection, or (in the
/// foreground) a socketpair whose other end receives the pty master for our proxy; else ours.
fn terminal_stdio(
    terminal: bool,
    console_socket: Option<&str>,
    detached: bool,
) -> Result<(Stdio, Option<ConsoleSocket>)> {
    match (terminal, console_socket) {
        (true, Some(path)) => {
            let sock = std::os::unix::net::UnixStream::connect(path)
                .map_err(io_err("connect to console socket", path))?;
            Ok((Stdio::Terminal(OwnedFd::from(sock)), None))
        }
        (false, Some(path)) => Err(CliError::Invalid(format!(
            "--console-socket {path}: the process has no terminal (process.terminal is false)"
        ))),
        (true, None) if detached => Err(CliError::Invalid(
            "the process wants a terminal (process.terminal is true) but no --console-socket \
             was given to receive it"
                .into(),
        )),
        (true, None) => {
            let (ours, theirs) = pelagos::console_socket()?;
            Ok((Stdio::Terminal(theirs), Some(ours)))
        }
        (false, None) => Ok((Stdio::Inherit, None)),
    }
}

/// Takes ownership of fds 3 .. 3+n, which the caller passed us to hand on (runc
/// --preserve-fds). Only fds open when `main` began count: one this process opened since
/// (the log file) is not the caller's to pass.
fn take_preserved_fds(n: u32) -> Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(n as usize);
    for fd in 3..3 + n as i32 {
        if !crate::inherited_fd(fd) {
            return Err(CliError::Invalid(format!(
                "--preserve-fds {n}: fd {fd} was not passed to pelagos"
            )));
        }
        // SAFETY: the fd was open when main began, so the caller handed it to us and nothing
        // in this process owns it; it is taken once.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}

/// Writes the pid atomically (temp file + rename), as runc: readers never see a partial pid.
fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        CliError::Invalid(format!("--pid-file {}: not a file path", path.display()))
    })?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string()).map_err(io_err("write pid file", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("write pid file", path))
}

fn start(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, &[], false)?;
    let mut c = Container::load(config, p.id("pelagos start ID")?)?;
    c.start()?;
    Ok(0)
}

fn run_container(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, RUN_FLAGS, false)?;
    let id = p.id("pelagos run [--detach] [--bundle DIR] [--pid-file FILE] ID")?;
    let root_override;
    let config = match p.get("root") {
        Some(root) => {
            root_override = Config {
                root: PathBuf::from(root),
                ..config.clone()
            };
            &root_override
        }
        None => config,
    };
    let detach = p.on("detach");
    // Blocked before any process or thread exists; the setup helper clears its mask.
    let forwarded = (!detach).then(block_forwarded_signals);
    let (mut c, console) = create_container(config, &p, id, detach)?;
    let master = match console.map(ConsoleSocket::receive).transpose() {
        Ok(m) => m,
        Err(e) => {
            let _ = c.delete(true);
            return Err(e.into());
        }
    };
    let _raw = master.as_ref().map(|_| crate::tty::RawMode::enter());
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    if let (Some(set), Some(pidfd)) = (forwarded, c.pidfd()) {
        forward_signals(set, pidfd.try_clone_to_owned().ok(), master.as_ref());
    }
    if let Some(m) = master {
        crate::tty::proxy(m);
    }
    let exit = c.wait();
    if !p.on("keep") {
        c.delete(true)?;
    }
    exit.map(|e| e.status).ok_or_else(|| {
        CliError::Invalid(format!(
            "run: container {id}: its exit status is unknown (its init is not our child)"
        ))
    })
}

/// Signals a foreground `run`/`exec` passes on to the container's process, as runc does.
const FORWARDED: &[nix::sys::signal::Signal] = {
    use nix::sys::signal::Signal::*;
    &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH]
};

fn block_forwarded_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    if let Err(e) = set.thread_block() {
        log::warn!("block signals for forwarding: {e}");
    }
    set
}

/// A thread that passes each blocked signal in `set` to the process behind `pidfd`; with a
/// pty `master` we proxy, SIGWINCH resizes it instead (the kernel tells the container).
fn forward_signals(
    set: nix::sys::signal::SigSet,
    pidfd: Option<OwnedFd>,
    master: Option<&OwnedFd>,
) {
    let Some(pidfd) = pidfd else { return };
    let master = master.and_then(|m| m.try_clone().ok());
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if let (nix::sys::signal::Signal::SIGWINCH, Some(m)) = (sig, &master) {
                crate::tty::copy_window_size(m.as_fd());
                continue;
            }
            if let Err(e) = pelagos::pidfd::send_signal(pidfd.as_fd(), sig as i32) {
                log::debug!("forward {sig}: {e}");
                return;
            }
        }
    });
}

/// runc's state document: the runtime-spec state plus rootfs, created and owner; the pid of a
/// stopped container is 0.
fn describe(config: &Config, c: &Container) -> Value {
    let st = c.state();
    let dir = config.root.join(c.id());
    let record = pelagos::state::Record::load(&dir).ok();
    let created = record
        .as_ref()
        .map(|r| {
            crate::logger::rfc3339_from(
                (r.created / 1_000_000_000) as i64,
                (r.created % 1_000_000_000) as u32,
            )
        })
        .unwrap_or_default();
    let rootfs = record.map(|r| r.rootfs).unwrap_or_default();
    let owner = std::fs::metadata(&dir)
        .map(|m| user_name(std::os::unix::fs::MetadataExt::uid(&m)))
        .unwrap_or_default();
    let mut v = json!({
        "ociVersion": st.oci_version,
        "id": st.id,
        "pid": if st.status == Status::Stopped { 0 } else { st.pid },
        "status": st.status,
        "bundle": st.bundle,
        "rootfs": rootfs,
        "created": created,
        "owner": owner,
    });
    if !st.annotations.is_empty() {
        v["annotations"] = json!(st.annotations);
    }
    v
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

fn print_json(v: &Value) {
    crate::say(serde_json::to_string_pretty(v).expect("json serializes"));
}

fn state(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, &[], false)?;
    let c = Container::load(config, p.id("pelagos state ID")?)?;
    print_json(&describe(config, &c));
    Ok(0)
}

/// A signal by name (`KILL`, `SIGKILL`, any case) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(CliError::Invalid(format!(
            "invalid signal {s:?}: out of range"
        )));
    }
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| CliError::Invalid(format!("invalid signal {s:?}")))
}

fn kill(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, &[switch(&["all", "a"])], false)?;
    let usage = "pelagos kill [--all] ID [SIGNAL]";
    let (id, signal) = match p.positionals.as_slice() {
        [id] => (id, libc::SIGTERM),
        [id, sig] => (id, parse_signal(sig)?),
        _ => return Err(ArgError::Usage(format!("usage: {usage}")).into()),
    };
    let c = Container::load(config, id)?;
    c.kill(signal, p.on("all"))?;
    Ok(0)
}

fn delete(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, &[switch(&["force", "f"])], false)?;
    let id = p.id("pelagos delete [--force] ID")?;
    let force = p.on("force");
    match Container::load(config, id) {
        Ok(c) => c.delete(force)?,
        // A state dir without state.json is an aborted create; --force also accepts a
        // container that is already gone (runc does both).
        Err(ContainerError::NotFound(_)) if force => {
            let dir = config.root.join(id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_err("remove state dir", &dir))?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}

const EXEC_FLAGS: &[Flag] = &[
    value(&["process", "p"]),
    switch(&["tty", "t"]),
    switch(&["detach", "d"]),
    value(&["pid-file"]),
    value(&["console-socket"]),
    value(&["env", "e"]),
    value(&["cwd"]),
    value(&["user", "u"]),
    value(&["additional-gids", "g"]),
    value(&["cap", "c"]),
    switch(&["no-new-privs"]),
    value(&["apparmor"]),
    value(&["process-label"]),
    value(&["preserve-fds"]),
    switch(&["ignore-paused"]),
];

fn exec(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, EXEC_FLAGS, true)?;
    let usage = "pelagos exec [OPTIONS] ID [--process FILE | COMMAND [ARG...]]";
    let Some((id, cmd)) = p.positionals.split_first() else {
        return Err(ArgError::Usage(format!("missing container id; usage: {usage}")).into());
    };
    if p.get("preserve-fds").is_some_and(|n| n != "0") {
        return Err(CliError::Invalid(
            "exec --preserve-fds: not supported by pelagos yet".into(),
        ));
    }
    let c = Container::load(config, id)?;
    let process = exec_process(&c, &p, cmd)?;
    let terminal = process.terminal().unwrap_or(false);
    let detach = p.on("detach");
    let (stdio, console) = terminal_stdio(terminal, p.get("console-socket"), detach)?;
    let forwarded = (!detach).then(block_forwarded_signals);
    let proc = c.exec(&process, stdio)?;
    let master = console
        .map(ConsoleSocket::receive)
        .transpose()
        .map_err(CliError::from)
        .and_then(|m| match p.get("pid-file") {
            Some(pid_file) => write_pid_file(Path::new(pid_file), proc.pid).map(|()| m),
            None => Ok(m),
        });
    let master = match master {
        Ok(m) => m,
        Err(e) => {
            // Nobody would know of the process: it goes.
            let _ = pelagos::pidfd::send_signal(proc.pidfd.as_fd(), libc::SIGKILL);
            return Err(e);
        }
    };
    if detach {
        return Ok(0);
    }
    if let Some(set) = forwarded {
        forward_signals(set, proc.pidfd.try_clone().ok(), master.as_ref());
    }
    if let Some(m) = master {
        let _raw = crate::tty::RawMode::enter();
        crate::tty::proxy(m);
    }
    if pelagos::pidfd::is_unreaped_child(proc.pidfd.as_fd()) {
        if let Some(exit) = pelagos::reaper::wait(proc.pid, None) {
            return Ok(exit.status);
        }
    }
    Err(CliError::Invalid(format!(
        "exec: lost track of process {}: its exit status is unknown",
        proc.pid
    )))
}

/// The process to exec: `--process` as is, or the container's own process with the command,
/// environment, cwd, user and capabilities from the flags (as runc exec).
fn exec_process(c: &Container, p: &Parsed, cmd: &[String]) -> Result<oci_spec::runtime::Process> {
    let json_err = |what: String| move |source| CliError::Json { what, source };
    let mut v = match p.get("process") {
        Some(path) => {
            if !cmd.is_empty() {
                return Err(CliError::Invalid(format!(
                    "exec: both --process {path} and a command {cmd:?} were given"
                )));
            }
            let bytes = read_input(path)?;
            serde_json::from_slice::<Value>(&bytes)
                .map_err(json_err(format!("--process {path}")))?
        }
        None => {
            if cmd.is_empty() {
                return Err(CliError::Invalid(
                    "exec: no command given (pass COMMAND or --process FILE)".into(),
                ));
            }
            let mut v = serde_json::to_value(c.spec().process().clone().unwrap_or_default())
                .map_err(json_err("container process".into()))?;
            v["args"] = json!(cmd);
            v["terminal"] = json!(false);
            if let Some(obj) = v.as_object_mut() {
                // Only the init prints to a console of a fixed size; rlimits stay.
                obj.remove("consoleSize");
            }
            v
        }
    };
    if p.on("tty") {
        v["terminal"] = json!(true);
    }
    if !p.all("env").is_empty() {
        let mut env: Vec<Value> = v["env"].as_array().cloned().unwrap_or_default();
        env.extend(p.all("env").iter().map(|e| json!(e)));
        v["env"] = Value::Array(env);
    }
    if let Some(cwd) = p.get("cwd") {
        v["cwd"] = json!(cwd);
    }
    if let Some(user) = p.get("user") {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let num = |s: &str| {
            s.parse::<u32>().map_err(|_| {
                CliError::Invalid(format!("--user {user:?}: expected UID[:GID] as numbers"))
            })
        };
        v["user"]["uid"] = json!(num(uid)?);
        v["user"]["gid"] = json!(match gid {
            Some(g) => num(g)?,
            None => 0,
        });
    }
    if !p.all("additional-gids").is_empty() {
        let gids: std::result::Result<Vec<u32>, _> = p
            .all("additional-gids")
            .iter()
            .map(|g| g.parse::<u32>())
            .collect();
        v["user"]["additionalGids"] = json!(gids.map_err(|_| CliError::Invalid(format!(
            "--additional-gids {:?}: expected numbers",
            p.all("additional-gids")
        )))?);
    }
    for cap in p.all("cap") {
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut v["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            list.as_array_mut().expect("array").push(json!(cap));
        }
    }
    if p.on("no-new-privs") {
        v["noNewPrivileges"] = json!(true);
    }
    if let Some(a) = p.get("apparmor") {
        v["apparmorProfile"] = json!(a);
    }
    if let Some(l) = p.get("process-label") {
        v["selinuxLabel"] = json!(l);
    }
    serde_json::from_value(v).map_err(json_err("exec process".into()))
}

/// The bytes of `path`, or of stdin for `-`.
fn read_input(path: &str) -> Result<Vec<u8>> {
    if path == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(io_err("read", "stdin"))?;
        return Ok(b);
    }
    std::fs::read(path).map_err(io_err("read", path))
}

fn ps(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, &[value(&["format", "f"])], true)?;
    let Some((id, ps_args)) = p.positionals.split_first() else {
        return Err(
            ArgError::Usage("usage: pelagos ps [--format table|json] ID [PS ARGS]".into()).into(),
        );
    };
    let c = Container::load(config, id)?;
    let cgroup = c
        .cgroup()
        .ok_or_else(|| CliError::Invalid(format!("container {id}: its cgroup is gone")))?;
    let mut pids = cgroup.pids().map_err(ContainerError::from)?;
    pids.sort_unstable();
    match p.get("format").unwrap_or("table") {
        "json" => {
            crate::say(json!(pids));
            Ok(0)
        }
        "table" => ps_table(&pids, ps_args),
        other => Err(CliError::Invalid(format!(
            "invalid --format {other:?}: expected table or json"
        ))),
    }
}

/// Runs the host's `ps` and keeps the header and the container's processes (as runc).
fn ps_table(pids: &[i32], ps_args: &[String]) -> Result<i32> {
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(io_err("run", "ps"))?;
    if !out.status.success() {
        return Err(CliError::Invalid(format!(
            "ps {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| CliError::Invalid(format!("ps {args:?}: no PID column in its output")))?;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            let _ = writeln!(stdout, "{line}");
        }
    }
    Ok(0)
}

fn pause_resume(config: &Config, rest: &[String], pause: bool) -> Result<i32> {
    let p = args::parse(rest, &[], false)?;
    let c = Container::load(
        config,
        p.id(if pause {
            "pelagos pause ID"
        } else {
            "pelagos resume ID"
        })?,
    )?;
    if pause {
        c.pause()?;
    } else {
        c.resume()?;
    }
    Ok(0)
}

/// runc's `checkpoint` flags (`--criu` names the binary, runc's global flag).
const CHECKPOINT_FLAGS: &[Flag] = &[
    value(&["image-path"]),
    value(&["work-path"]),
    switch(&["leave-running"]),
    switch(&["tcp-established"]),
    switch(&["ext-unix-sk"]),
    switch(&["shell-job"]),
    switch(&["file-locks"]),
    value(&["manage-cgroups-mode"]),
    value(&["criu"]),
    switch(&["pre-dump"]),
    value(&["parent-path"]),
];

/// Dumps the container with CRIU (see `pelagos::checkpoint`); the images go to --image-path
/// (runc's default: ./checkpoint). Unless --leave-running or --pre-dump (memory only, see
/// --parent-path for the dump after it), the container ends after the dump and is deleted, as
/// runc does.
fn checkpoint(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, CHECKPOINT_FLAGS, false)?;
    let id = p.id("pelagos checkpoint [--image-path DIR] [--work-path DIR] [--leave-running] [--tcp-established] [--ext-unix-sk] [--shell-job] [--file-locks] [--manage-cgroups-mode MODE] [--pre-dump] [--parent-path DIR] ID")?;
    let c = Container::load(config, id)?;
    let opts = pelagos::checkpoint::CheckpointOptions {
        image_path: PathBuf::from(p.get("image-path").unwrap_or("checkpoint")),
        work_path: p.get("work-path").map(PathBuf::from),
        leave_running: p.on("leave-running"),
        tcp_established: p.on("tcp-established"),
        ext_unix_sk: p.on("ext-unix-sk"),
        file_locks: p.on("file-locks"),
        shell_job: p.on("shell-job"),
        cgroups_mode: p.get("manage-cgroups-mode").map(str::to_owned),
        criu: p.get("criu").map(PathBuf::from),
        pre_dump: p.on("pre-dump"),
        parent_path: p.get("parent-path").map(PathBuf::from),
    };
    c.checkpoint(&opts)?;
    if !opts.leave_running && !opts.pre_dump {
        c.delete(true)?;
    }
    Ok(0)
}

/// runc's `restore` flags.
const RESTORE_FLAGS: &[Flag] = &[
    value(&["bundle", "b"]),
    value(&["image-path"]),
    value(&["work-path"]),
    value(&["pid-file"]),
    switch(&["detach", "d"]),
    switch(&["tcp-established"]),
    switch(&["ext-unix-sk"]),
    switch(&["shell-job"]),
    switch(&["file-locks"]),
    value(&["manage-cgroups-mode"]),
    value(&["criu"]),
    value(&["console-socket"]),
];

/// Restores a dump as a new container ID, with this process's stdio in place of the dumped
/// stdio pipes. With `--detach` the restored init is left to run on its own; else, as runc, we
/// wait for it (signals passed on), delete the container and exit with its status. A dumped
/// terminal is restored on a new pty whose master goes to `--console-socket`, else on our own
/// terminal.
fn restore(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, RESTORE_FLAGS, false)?;
    let id = p.id("pelagos restore [--detach] [--bundle DIR] [--image-path DIR] [--work-path DIR] [--pid-file FILE] [--console-socket SOCK] [--tcp-established] [--ext-unix-sk] [--shell-job] [--file-locks] [--manage-cgroups-mode MODE] ID")?;
    let detach = p.on("detach");
    let opts = pelagos::checkpoint::RestoreOptions {
        image_path: PathBuf::from(p.get("image-path").unwrap_or("checkpoint")),
        work_path: p.get("work-path").map(PathBuf::from),
        tcp_established: p.on("tcp-established"),
        ext_unix_sk: p.on("ext-unix-sk"),
        file_locks: p.on("file-locks"),
        shell_job: p.on("shell-job"),
        cgroups_mode: p.get("manage-cgroups-mode").map(str::to_owned),
        criu: p.get("criu").map(PathBuf::from),
    };
    let forwarded = (!detach).then(block_forwarded_signals);
    let stdio = match p.get("console-socket") {
        Some(path) => Stdio::Terminal(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(path)
                .map_err(io_err("connect to console socket", path))?,
        )),
        None => Stdio::Inherit,
    };
    let c = Container::restore(
        config,
        CreateOptions {
            id: id.to_string(),
            bundle: PathBuf::from(p.get("bundle").unwrap_or(".")),
            stdio,
            no_pivot: false,
            preserve_fds: Vec::new(),
        },
        &opts,
    )?;
    if let Some(path) = p.get("pid-file") {
        std::fs::write(path, c.pid().to_string()).map_err(io_err("write", path))?;
    }
    if detach {
        return Ok(0);
    }
    if let (Some(set), Some(pidfd)) = (forwarded, c.pidfd()) {
        forward_signals(set, pidfd.try_clone_to_owned().ok(), None);
    }
    let exit = c.wait();
    c.delete(true)?;
    exit.map(|e| e.status).ok_or_else(|| {
        CliError::Invalid(format!(
            "restore: container {id}: its exit status is unknown (its init is not our child)"
        ))
    })
}

const UPDATE_FLAGS: &[Flag] = &[
    value(&["resources", "r"]),
    value(&["memory"]),
    value(&["memory-swap"]),
    value(&["memory-reservation"]),
    value(&["kernel-memory"]),
    value(&["kernel-memory-tcp"]),
    value(&["cpu-shares"]),
    value(&["cpu-period"]),
    value(&["cpu-quota"]),
    value(&["cpu-rt-period"]),
    value(&["cpu-rt-runtime"]),
    value(&["cpuset-cpus"]),
    value(&["cpuset-mems"]),
    value(&["pids-limit"]),
    value(&["blkio-weight"]),
];

fn update(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(rest, UPDATE_FLAGS, false)?;
    let id = p.id("pelagos update [--resources FILE|-] [--memory N] [--cpu-quota N] ... ID")?;
    let mut v = match p.get("resources") {
        Some(path) => serde_json::from_slice::<Value>(&read_input(path)?).map_err(|source| {
            CliError::Json {
                what: format!("--resources {path}"),
                source,
            }
        })?,
        None => json!({}),
    };
    apply_update_flags(&mut v, &p)?;
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_value(v).map_err(|source| CliError::Json {
            what: "resources".into(),
            source,
        })?;
    let c = Container::load(config, id)?;
    c.update(&resources)?;
    Ok(0)
}

/// Sets the resources named by update's flags in the runtime-spec resources JSON `v`.
fn apply_update_flags(v: &mut Value, p: &Parsed) -> Result<()> {
    let bad = |flag: &str, val: &str, why: &str| {
        CliError::Invalid(format!("invalid value {val:?} for --{flag}: {why}"))
    };
    let bytes = |flag: &'static str| -> Result<Option<i64>> {
        p.get(flag)
            .map(|s| parse_bytes(s).ok_or_else(|| bad(flag, s, "expected bytes like 512m or -1")))
            .transpose()
    };
    let int = |flag: &'static str| -> Result<Option<i64>> {
        p.get(flag)
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| bad(flag, s, "expected an integer"))
            })
            .transpose()
    };
    let uint = |flag: &'static str| -> Result<Option<u64>> {
        p.get(flag)
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| bad(flag, s, "expected an unsigned integer"))
            })
            .transpose()
    };
    let mut set = |section: &str, key: &str, val: Value| {
        if !v[section].is_object() {
            v[section] = json!({});
        }
        v[section][key] = val;
    };
    for (flag, key) in [
        ("memory", "limit"),
        ("memory-swap", "swap"),
        ("memory-reservation", "reservation"),
        ("kernel-memory", "kernel"),
        ("kernel-memory-tcp", "kernelTCP"),
    ] {
        if let Some(n) = bytes(flag)? {
            set("memory", key, json!(n));
        }
    }
    for (flag, key) in [
        ("cpu-shares", "shares"),
        ("cpu-period", "period"),
        ("cpu-rt-period", "realtimePeriod"),
    ] {
        if let Some(n) = uint(flag)? {
            set("cpu", key, json!(n));
        }
    }
    for (flag, key) in [
        ("cpu-quota", "quota"),
        ("cpu-rt-runtime", "realtimeRuntime"),
    ] {
        if let Some(n) = int(flag)? {
            set("cpu", key, json!(n));
        }
    }
    for (flag, key) in [("cpuset-cpus", "cpus"), ("cpuset-mems", "mems")] {
        if let Some(s) = p.get(flag) {
            set("cpu", key, json!(s));
        }
    }
    if let Some(n) = int("pids-limit")? {
        set("pids", "limit", json!(n));
    }
    if let Some(n) = uint("blkio-weight")? {
        set("blockIO", "weight", json!(n));
    }
    Ok(())
}

/// A byte count with an optional binary unit suffix (k, m, g, t; with or without `b`), or -1.
fn parse_bytes(s: &str) -> Option<i64> {
    if s == "-1" {
        return Some(-1);
    }
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let mult: i64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    digits
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)?
        .checked_mul(mult)
}

fn list(config: &Config, rest: &[String]) -> Result<i32> {
    let p = args::parse(
        rest,
        &[value(&["format", "f"]), switch(&["quiet", "q"])],
        false,
    )?;
    if !p.positionals.is_empty() {
        return Err(
            ArgError::Usage("usage: pelagos list [--format table|json] [--quiet]".into()).into(),
        );
    }
    let mut ids: Vec<String> = match std::fs::read_dir(&config.root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err("read state root", &config.root)(e)),
    };
    ids.sort();
    // A directory without a readable state is a create in progress or aborted: not listed.
    let states: Vec<Value> = ids
        .iter()
        .filter_map(|id| Container::load(config, id).ok())
        .map(|c| describe(config, &c))
        .collect();
    if p.on("quiet") {
        for s in &states {
            crate::say(s["id"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    match p.get("format").unwrap_or("table") {
        "json" => crate::say(Value::Array(states)),
        "table" => {
            let mut rows =
                vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
            for s in &states {
                let field = |k: &str| match &s[k] {
                    Value::String(x) => x.clone(),
                    other => other.to_string(),
                };
                rows.push(["id", "pid", "status", "bundle", "created", "owner"].map(field));
            }
            crate::say(table(&rows).trim_end_matches('\n'));
        }
        other => {
            return Err(CliError::Invalid(format!(
                "invalid --format {other:?}: expected table or json"
            )))
        }
    }
    Ok(0)
}

/// Left-aligned columns separated by at least three spaces (runc's tabwriter layout).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn spec(rest: &[String]) -> Result<i32> {
    let p = args::parse(
        rest,
        &[value(&["bundle", "b"]), switch(&["rootless"])],
        false,
    )?;
    if !p.positionals.is_empty() {
        return Err(
            ArgError::Usage("usage: pelagos spec [--bundle DIR] [--rootless]".into()).into(),
        );
    }
    let dir = PathBuf::from(p.get("bundle").unwrap_or("."));
    let path = dir.join("config.json");
    let mut spec = template::default_spec();
    if p.on("rootless") {
        template::make_rootless(
            &mut spec,
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
    }
    let text = serde_json::to_string_pretty(&spec).expect("json serializes");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                CliError::Invalid(format!("{} exists: remove it first", path.display()))
            }
            _ => io_err("create", &path)(e),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(io_err("write", &path))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("34").unwrap(), 34);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("1kb"), Some(1024));
        assert_eq!(parse_bytes("-1"), Some(-1));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-5"), None);
        assert_eq!(parse_bytes("3q"), None);
    }

    #[test]
    fn update_flags_become_resources() {
        let args: Vec<String> = [
            "--memory",
            "64m",
            "--cpu-quota=-1",
            "--pids-limit",
            "10",
            "c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = args::parse(&args, UPDATE_FLAGS, false).unwrap();
        let mut v = json!({"memory": {"swap": 1}});
        apply_update_flags(&mut v, &p).unwrap();
        assert_eq!(v["memory"], json!({"limit": 64 << 20, "swap": 1}));
        assert_eq!(v["cpu"]["quota"], -1);
        assert_eq!(v["pids"]["limit"], 10);
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(v).unwrap();
        assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            ["ID".to_string(), "PID".to_string()],
            ["long-id".to_string(), "1".to_string()],
        ];
        assert_eq!(table(&rows), "ID        PID\nlong-id   1\n");
    }
}
