//! Host helpers the harness and the tests share: running commands with a timeout, waiting
//! for processes, /proc, mountinfo and cgroup trees.

use super::*;

/// Human-readable exit status, stdout and stderr.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        exit_text(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status:?}"),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion with piped stdout/stderr, `input` (or nothing) on stdin, killing it
/// after `timeout`.
pub fn run_with_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let data = input.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let out_reader = reader_thread(child.stdout.take());
    let err_reader = reader_thread(child.stderr.take());
    let status = match wait_child_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {timeout:?}; stderr so far: {}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            ));
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

pub(super) fn reader_thread<R: Read + Send + 'static>(
    r: Option<R>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh fd we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Blocks until the pidfd says the process ended, at most `timeout`. True if it ended.
fn poll_pidfd(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Waits for our child with a timeout; `None` if it is still running.
pub fn wait_child_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let fd = pidfd_open(child.id() as i32)?;
    if poll_pidfd(&fd, timeout) {
        child.wait().ok()
    } else {
        None
    }
}

/// Waits until `pid` (any process, not only our children) is gone or `deadline` passes.
pub fn wait_pid_gone(pid: i32, deadline: Instant) -> bool {
    let Some(fd) = pidfd_open(pid) else {
        return true; // ESRCH: already gone.
    };
    poll_pidfd(&fd, deadline.saturating_duration_since(Instant::now()))
}

/// Where `/proc/<pid>/ns/<ns>` points (`mnt:[4026532250]`).
pub fn ns_link(pid: u32, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// Every pid in /proc.
pub fn procs() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn cmdline(pid: i32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn describe_pid(pid: i32) -> String {
    let argv: Vec<String> = cmdline(pid)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    argv.join(" ")
}

pub(super) struct MountEntry {
    pub(super) mount_point: String,
    pub(super) fstype: String,
    pub(super) super_options: String,
}

fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

pub(super) fn mountinfo() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            Some(MountEntry {
                mount_point: unescape_mount(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Mount points of every cgroup hierarchy (v1 controllers, named, v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

pub(super) fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// The names in `dir`, sorted; empty if it cannot be read.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A cgroup a test made, `/<top>` in every hierarchy, removed with all below it on drop, also
/// when the test fails half way.
pub struct CgroupTree(pub String);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for m in cgroup_mounts() {
            remove_cgroup_tree(&m.join(self.0.trim_start_matches('/')));
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroupfs only removes empty ones).
pub(super) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Makes cgroup `path` in the hierarchies mounted at `mounts`, as an operator would.
pub fn make_cgroup<P: AsRef<Path>>(path: &str, mounts: &[P]) {
    for m in mounts {
        let m = m.as_ref();
        let dir = m.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        // A new v1 cpuset is empty until it gets the parent's cpus and mems.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(m.join(f)) {
                fs::write(dir.join(f), v.trim()).unwrap();
            }
        }
    }
}
