//! `pelagos`: runc's command line over the pelagos core, usable wherever a runc is expected
//! (containerd's runc shim with `BinaryName`, podman `--runtime`, conformance suites).
//!
//! Global flags come before the command (`pelagos --root R --log L --log-format json create
//! ...`), as go-runc passes them. State lives under `--root` and outlives this process: a
//! container's liveness is read from the kernel (pidfd and start time), so no process stays
//! behind per container. The binary is also the core's setup helper (see
//! `pelagos::run_if_helper`).

mod args;
mod commands;
mod logger;
mod template;
mod tty;

use std::path::PathBuf;
use std::process::exit;

use args::{switch, value, Flag};

const USAGE: &str = "usage: pelagos [--root DIR] [--log FILE] [--log-format text|json] [--debug] \
[--systemd-cgroup] COMMAND [OPTIONS] [ID]\n\ncommands: create, start, state, kill, delete, run, \
exec, ps, pause, resume, update, checkpoint, restore, list, spec, features";

/// What every command gets from the global flags.
pub struct Global {
    pub root: PathBuf,
    /// `--systemd-cgroup`: cgroups as systemd units (see `pelagos::cgroups`).
    pub systemd_cgroup: bool,
}

const GLOBAL_FLAGS: &[Flag] = &[
    value(&["root"]),
    value(&["log"]),
    value(&["log-format"]),
    switch(&["debug"]),
    switch(&["systemd-cgroup"]),
    value(&["criu"]),
    value(&["rootless"]),
    switch(&["help", "h"]),
    switch(&["version", "v"]),
];

/// The fds above 2 open when `main` began (before the log file), for `--preserve-fds`.
static INHERITED_FDS: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

pub fn inherited_fd(fd: i32) -> bool {
    INHERITED_FDS.get().is_some_and(|fds| fds.contains(&fd))
}

fn open_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    // The listing includes the directory's own fd, closed by now.
    listed
        .into_iter()
        // SAFETY: F_GETFD only inspects the fd table.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect()
}

fn main() {
    pelagos::run_if_helper();
    let _ = INHERITED_FDS.set(open_fds());
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Global flags end at the command name.
    let parsed = match args::parse(&argv, GLOBAL_FLAGS, true) {
        Ok(p) => p,
        Err(e) => fail_early(&e.to_string()),
    };
    if parsed.on("version") {
        say(format_args!(
            "pelagos version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            template::SPEC_VERSION
        ));
        return;
    }
    let json = match parsed.get("log-format").unwrap_or("text") {
        "json" => true,
        "text" => false,
        other => fail_early(&format!(
            "invalid --log-format {other:?}: expected text or json"
        )),
    };
    let log_path = parsed
        .get("log")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Err(e) = logger::init(log_path.as_deref(), json, parsed.on("debug")) {
        fail_early(&format!(
            "open log file {}: {e}",
            log_path.unwrap_or_default().display()
        ));
    }
    let Some((command, rest)) = parsed.positionals.split_first() else {
        if parsed.on("help") {
            say(USAGE);
            return;
        }
        fail(log_path.is_some(), &format!("no command given\n{USAGE}"));
    };
    let systemd_cgroup = parsed.on("systemd-cgroup");
    if systemd_cgroup && !pelagos::cgroups::systemd_booted() {
        fail(
            log_path.is_some(),
            "--systemd-cgroup: systemd is not running on this host (no /run/systemd/system)",
        );
    }
    let global = Global {
        root: parsed
            .get("root")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/pelagos")),
        systemd_cgroup,
    };
    match commands::run(&global, command, rest) {
        Ok(code) => exit(code),
        Err(e) => fail(log_path.is_some(), &e.to_string()),
    }
}

/// Writes `text` and a newline to stdout. When the reader has gone (`pelagos state | grep -q`)
/// the CLI ends as a Go CLI such as runc does, by SIGPIPE, quietly.
pub fn say(text: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // SAFETY: restores the default action of SIGPIPE and raises it on ourselves.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        fail_early(&format!("write to stdout: {e}"));
    }
}

/// Reports `msg` as runc does (the log file, and stderr) and exits 1.
fn fail(logged_to_file: bool, msg: &str) -> ! {
    if logged_to_file {
        log::error!("{msg}");
        log::logger().flush();
    }
    eprintln!("pelagos: {msg}");
    exit(1)
}

/// Before the logger exists.
fn fail_early(msg: &str) -> ! {
    eprintln!("pelagos: {msg}");
    exit(1)
}
