//! Real fifos, pipes, ptys and child processes; no reaping loop runs here, so children are
//! waited for directly.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;

use super::*;

const DRAIN: Duration = Duration::from_secs(30);
/// Half the copy loop's stall limit: a drain this quick did not wait the stall out.
const LINGER_STALL_BOUND: Duration = Duration::from_millis(500);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("pelagos-io-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes an executable script through a child process: a file this test process had
    /// open for writing while another test thread forked would be busy (ETXTBSY at exec) until
    /// that fork's child exec'd.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path(name);
        let mut sh = std::process::Command::new("/bin/sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        assert!(sh.wait().unwrap().success(), "writing {}", path.display());
        path
    }

    fn fifo(&self, name: &str) -> String {
        let p = self.path(name);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ctx() -> LoggerContext {
    LoggerContext {
        namespace: "testns".into(),
        id: "c1".into(),
    }
}

fn fifo_cfg(stdin: &str, stdout: &str, stderr: &str) -> StdioConfig {
    StdioConfig {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal: false,
    }
}

/// A process whose only stdio is stdout, into the fifo `out` made in `dir`.
fn stdout_only(dir: &TempDir) -> (String, ProcessIo, pelagos::Stdio) {
    let out = dir.fifo("out");
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &out, ""), &ctx()).unwrap();
    (out, pio, stdio)
}

/// A client reader, opened once the shim holds the fifo (so blocking reads wait for data
/// instead of returning EOF at once for want of a writer).
fn open_reader(path: &str) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFL).unwrap());
    fcntl(&f, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).unwrap();
    f
}

fn read_to_end(mut f: File) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    })
}

/// Opening a fifo for writing without blocking fails with ENXIO exactly when it has no reader.
fn has_reader(path: &str) -> bool {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => false,
        Err(e) => panic!("open {path}: {e}"),
    }
}

/// Like `!has_reader`, tolerating a copy of the fd that lives for a moment in a child being
/// forked by a concurrent test (it closes at exec): a real leak never goes away.
fn no_reader(path: &str) -> bool {
    for _ in 0..100 {
        if !has_reader(path) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs `sh -c script` with the container side as its stdio; drops every copy of the
/// container side held here so EOF can reach the shim.
fn spawn(script: &str, stdio: pelagos::Stdio) -> Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    let null = std::process::Stdio::null;
    let to = |fd: Option<OwnedFd>| fd.map_or_else(null, std::process::Stdio::from);
    match stdio {
        pelagos::Stdio::Null => {
            cmd.stdin(null()).stdout(null()).stderr(null());
        }
        pelagos::Stdio::Fds {
            stdin,
            stdout,
            stderr,
        } => {
            cmd.stdin(to(stdin)).stdout(to(stdout)).stderr(to(stderr));
        }
        pelagos::Stdio::Terminal(slave) => {
            cmd.stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(slave);
        }
        pelagos::Stdio::Inherit => unreachable!(),
    }
    let child = cmd.spawn().unwrap();
    drop(cmd);
    child
}

/// Stands in for the container's setup: checks that the container side is a console socket,
/// drops it, and attaches the master of a host pty whose slave the test child gets.
fn attach_host_pty(pio: &mut ProcessIo, stdio: pelagos::Stdio) -> pelagos::Stdio {
    let pelagos::Stdio::Terminal(sock) = stdio else {
        panic!("a terminal process gets Stdio::Terminal, not {stdio:?}");
    };
    let st = fstat(&sock).unwrap();
    assert_eq!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFSOCK,
        "not a console socket"
    );
    drop(sock);
    let (master, slave) = pty::open().unwrap();
    pio.attach_console(master).unwrap();
    pelagos::Stdio::Terminal(slave)
}

/// Waits for our own test child, failing the test instead of hanging forever.
fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn fifo_stdout_is_byte_exact_with_output_written_just_before_exit() {
    let dir = TempDir::new("exact");
    let (out, err) = (dir.fifo("out"), dir.fifo("err"));
    let data_path = dir.path("data");
    let mut expected = random_file(&data_path, 10 << 20);
    expected.extend_from_slice(b"tail\n");
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &out, &err), &ctx()).unwrap();
    let out_reader = read_to_end(open_reader(&out));
    let err_reader = read_to_end(open_reader(&err));
    let script = format!("cat {}; echo tail; echo oops >&2", data_path.display());
    let mut child = spawn(&script, stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN), "output not drained");

    let got = out_reader.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "stdout bytes differ");
    assert_eq!(err_reader.join().unwrap(), b"oops\n");
    pio.shutdown();
    assert_eq!(io.job_count(), 0);
}

/// Polls `pio.outputs()` until `want` (at most 30 s); the copy loop moves bytes on its own.
fn await_outputs(pio: &ProcessIo, want: Outputs) {
    let deadline = Instant::now() + DRAIN;
    while pio.outputs() != want {
        assert!(
            Instant::now() < deadline,
            "outputs {:?}, want {want:?}",
            pio.outputs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child left running in the background with the process's stdout holds the output open,
/// and the bytes the client has not read are counted; once the child dies the output ends.
#[test]
fn output_held_open_by_a_background_child() {
    let dir = TempDir::new("held");
    let pidfile = dir.path("pid");
    let (out, pio, stdio) = stdout_only(&dir);
    let mut reader = BufReader::new(open_reader(&out));
    let script = format!("sleep 1000 & echo $! > {}; echo started", pidfile.display());
    let mut child = spawn(&script, stdio);
    assert!(wait_child(&mut child).success());
    await_outputs(&pio, Outputs::HeldOpen { unread: 8 });

    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    await_outputs(&pio, Outputs::HeldOpen { unread: 0 });
    assert!(!pio.drain_waiter().is_done());

    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    await_outputs(&pio, Outputs::Ending);
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    drop(reader);
    assert!(pio.wait_drained(DRAIN));
    pio.shutdown();
}

/// Output left in a fifo nobody reads any more does not hold the drain: there is no client to
/// wait for (`ctr run -d` returned). The bound is far below the stall limit the drain used to
/// wait out.
#[test]
fn unread_output_without_a_reader_drains_at_eof() {
    let dir = TempDir::new("noreader");
    let out = dir.fifo("out");
    // The client opens its reader before the create, as ctr does, and goes before the end.
    let client = open_reader(&out);
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &out, ""), &ctx()).unwrap();
    drop(client);
    assert_gone_client_not_waited_for(&out, pio, stdio);
}

/// A client that opened its reader only after the shim opened the fifo (its open raced the
/// create or exec) and went before the end is not waited for either.
#[test]
fn a_client_that_came_after_the_open_and_went_is_not_waited_for() {
    let dir = TempDir::new("cameandwent");
    let (out, pio, stdio) = stdout_only(&dir);
    drop(open_reader(&out));
    assert_gone_client_not_waited_for(&out, pio, stdio);
}

/// Runs a process that writes to `out`, whose client has come and gone: its output drains at
/// once and the shim lets go of the fifo.
fn assert_gone_client_not_waited_for(out: &str, pio: ProcessIo, stdio: pelagos::Stdio) {
    let mut child = spawn("echo nobody reads this", stdio);
    assert!(wait_child(&mut child).success());
    assert!(
        pio.wait_drained(LINGER_STALL_BOUND),
        "drain waited for a reader that is gone"
    );
    pio.shutdown();
    assert!(no_reader(out), "the shim still holds the fifo");
}

/// A client opens its reader concurrently with the create or exec (ctr: in a goroutine), so a
/// quick process can write and exit before it has: the output waits in the fifo for it.
#[test]
fn output_written_before_the_client_arrives_is_kept_for_it() {
    let dir = TempDir::new("late");
    let (out, pio, stdio) = stdout_only(&dir);
    let mut child = spawn("echo written before the client came", stdio);
    assert!(wait_child(&mut child).success());
    std::thread::sleep(Duration::from_millis(100));
    let got = read_to_end(open_reader(&out));
    assert!(pio.wait_drained(DRAIN));
    assert_eq!(got.join().unwrap(), b"written before the client came\n");
    pio.shutdown();
}

#[test]
fn stdout_reader_can_leave_and_come_back_without_loss_or_sigpipe() {
    let dir = TempDir::new("reopen");
    let (inp, out, err) = (dir.fifo("in"), dir.fifo("out"), dir.fifo("err"));
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg(&inp, &out, &err), &ctx()).unwrap();
    let reader = open_reader(&out);
    let mut err_lines = BufReader::new(open_reader(&err)).lines();
    let mut input = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
    let script = "echo one; read a; echo two; echo wrote-two >&2; read b; echo three";
    let mut child = spawn(script, stdio);

    let mut first = BufReader::new(reader);
    let mut line = String::new();
    first.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    drop(first); // the client goes away

    input.write_all(b"go\n").unwrap();
    // "two" is written while nobody but the shim has the fifo open.
    assert_eq!(err_lines.next().unwrap().unwrap(), "wrote-two");
    // The shim's own read side keeps the fifo alive (and the writer free of EPIPE).
    assert!(has_reader(&out));

    let again = read_to_end(open_reader(&out));
    input.write_all(b"go\n").unwrap();
    let status = wait_child(&mut child);
    assert!(status.success(), "writer failed: {status:?}");
    assert!(pio.wait_drained(DRAIN));
    assert_eq!(again.join().unwrap(), b"two\nthree\n");
    pio.shutdown();
}

#[test]
fn stdin_survives_client_detach_and_ends_after_close_stdin() {
    let dir = TempDir::new("stdin");
    let (inp, out) = (dir.fifo("in"), dir.fifo("out"));
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg(&inp, &out, ""), &ctx()).unwrap();
    let mut lines = BufReader::new(open_reader(&out));
    let mut child = spawn("cat; echo eof", stdio);

    let open_writer = || std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
    let mut w = open_writer();
    w.write_all(b"hello\n").unwrap();
    drop(w); // client detaches: no EOF, the shim still holds a writer
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "hello\n");

    let mut w = open_writer(); // and reattaches
    w.write_all(b"again\n").unwrap();
    line.clear();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "again\n", "cat saw EOF on the first detach");

    pio.close_stdin();
    drop(w);
    assert!(wait_child(&mut child).success());
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "eof\n");
    assert!(pio.wait_drained(DRAIN));
    pio.shutdown();
}

#[test]
fn terminal_size_input_and_output() {
    let dir = TempDir::new("tty");
    let (inp, out) = (dir.fifo("in"), dir.fifo("out"));
    let io = IoLoop::start().unwrap();
    let cfg = StdioConfig {
        stdin: inp.clone(),
        stdout: out.clone(),
        stderr: String::new(),
        terminal: true,
    };
    let (mut pio, stdio) = ProcessIo::open(&io, &cfg, &ctx()).unwrap();
    let stdio = attach_host_pty(&mut pio, stdio);
    let output = read_to_end(open_reader(&out));
    pio.resize(132, 43).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
    let mut child = spawn("stty size; read l; echo got:$l", stdio);
    w.write_all(b"hi\n").unwrap();
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN));
    let text = String::from_utf8(output.join().unwrap()).unwrap();
    assert!(text.contains("43 132\r\n"), "{text:?}");
    assert!(text.contains("got:hi\r\n"), "{text:?}");
    pio.shutdown();
    drop(w);
}

#[test]
fn terminal_stdin_eof_hangs_up_the_console() {
    let dir = TempDir::new("hangup");
    let (inp, out) = (dir.fifo("in"), dir.fifo("out"));
    let io = IoLoop::start().unwrap();
    let cfg = StdioConfig {
        stdin: inp.clone(),
        stdout: out.clone(),
        stderr: String::new(),
        terminal: true,
    };
    let (mut pio, stdio) = ProcessIo::open(&io, &cfg, &ctx()).unwrap();
    let stdio = attach_host_pty(&mut pio, stdio);
    let mut lines = BufReader::new(open_reader(&out));
    let w = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
    // Reads forever unless its terminal goes away.
    let mut child = spawn("echo ready; while read l; do :; done", stdio);
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\r\n");
    pio.close_stdin();
    drop(w);
    wait_child(&mut child);
    let mut rest = Vec::new();
    lines.read_to_end(&mut rest).unwrap(); // EOF: the console copy ended
    assert!(pio.wait_drained(DRAIN));
    pio.resize(10, 10).unwrap(); // no console any more: a no-op
    pio.shutdown();
}

#[test]
fn binary_logger_reads_fd3_and_fd4() {
    let dir = TempDir::new("logger");
    let d = dir.0.display();
    let script = dir.script(
        "logger.sh",
        &format!(
            "#!/bin/sh\ntrap '' TERM\n\
             echo \"$@\" > {d}/args\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $FOO\" > {d}/env\n\
             printf x >&5\nexec 5>&-\n/bin/cat <&3 > {d}/out\n/bin/cat <&4 > {d}/err\n"
        ),
    );
    let uri = format!("binary://{}?b=2&a=1&env.FOO=bar", script.display());
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &uri, &uri), &ctx()).unwrap();
    // open returned only once the logger said it was ready, after writing these.
    assert_eq!(
        std::fs::read_to_string(dir.path("args")).unwrap(),
        "a 1 b 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("env")).unwrap(),
        "c1 testns bar\n"
    );
    let mut child = spawn("echo to-stdout; echo to-stderr >&2", stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN));
    let pid = pio.logger.as_ref().unwrap().pid();
    pio.shutdown(); // waits for the logger to exit
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "logger left running"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("out")).unwrap(),
        "to-stdout\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("err")).unwrap(),
        "to-stderr\n"
    );
}

#[test]
fn binary_logger_is_stopped_with_sigterm() {
    let dir = TempDir::new("logterm");
    // Ready at once, then waits for a stdin that never ends, until SIGTERM.
    let script = dir.script("logger.sh", "#!/bin/sh\nexec 5>&-\nexec /bin/sleep 1000\n");
    let uri = format!("binary://{}", script.display());
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &uri, ""), &ctx()).unwrap();
    drop(stdio);
    let pid = pio.logger.as_ref().unwrap().pid();
    pio.shutdown();
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "logger left running"
    );
}

#[test]
fn file_uri_appends_stdout_and_stderr() {
    let dir = TempDir::new("file");
    let log = dir.path("sub/dir/log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "old\n").unwrap();
    std::fs::remove_dir_all(dir.path("sub")).unwrap(); // the directory is created again
    let uri = format!("file://{}", log.display());
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &uri, &uri), &ctx()).unwrap();
    let mut child = spawn("echo out; echo err >&2", stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN));
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["err", "out"]);

    // A second process appends.
    let (pio2, stdio) = ProcessIo::open(&io, &fifo_cfg("", &uri, ""), &ctx()).unwrap();
    let mut child = spawn("echo more; echo lost >&2", stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio2.wait_drained(DRAIN));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with("more\n"), "{text:?}");
    assert_eq!(text.lines().count(), 3);
    pio.shutdown();
    pio2.shutdown();
}

#[test]
fn terminal_output_into_a_file() {
    let dir = TempDir::new("ttyfile");
    let log = dir.path("log");
    let cfg = StdioConfig {
        stdin: String::new(),
        stdout: format!("file://{}", log.display()),
        stderr: String::new(),
        terminal: true,
    };
    let io = IoLoop::start().unwrap();
    let (mut pio, stdio) = ProcessIo::open(&io, &cfg, &ctx()).unwrap();
    let stdio = attach_host_pty(&mut pio, stdio);
    let mut child = spawn("echo out; echo err >&2", stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\r\nerr\r\n");
    pio.shutdown();
}

#[test]
fn terminal_without_a_master_fails_and_leaves_nothing_open() {
    let dir = TempDir::new("nomaster");
    let (inp, out) = (dir.fifo("in"), dir.fifo("out"));
    let io = IoLoop::start().unwrap();
    let cfg = StdioConfig {
        stdin: inp.clone(),
        stdout: out.clone(),
        stderr: String::new(),
        terminal: true,
    };
    let (mut pio, stdio) = ProcessIo::open(&io, &cfg, &ctx()).unwrap();
    assert!(has_reader(&inp) && has_reader(&out));
    // Output not attached yet is output not drained yet.
    assert!(!pio.wait_drained(Duration::ZERO));
    // The container side went away without sending a master (its setup failed).
    drop(stdio);
    let e = pio.receive_console().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("no pty master from the container"),
        "{e}"
    );
    let e = pio.receive_console().unwrap_err();
    assert!(matches!(e, IoError::NoConsole), "{e}");
    assert_eq!(io.job_count(), 0);
    pio.shutdown();
    assert!(no_reader(&inp), "stdin fifo left open");
    assert!(no_reader(&out), "stdout fifo left open");
}

#[test]
fn attach_console_needs_a_pending_terminal() {
    let io = IoLoop::start().unwrap();
    let (mut pio, _stdio) = ProcessIo::open(&io, &fifo_cfg("", "", ""), &ctx()).unwrap();
    let (master, _slave) = pty::open().unwrap();
    let e = pio.attach_console(master).unwrap_err();
    assert!(matches!(e, IoError::NoConsole), "{e}");
    pio.shutdown();
}

#[test]
fn many_processes_share_one_loop() {
    let dir = TempDir::new("many");
    let io = IoLoop::start().unwrap();
    let mut runs = Vec::new();
    for i in 0..8 {
        let data = dir.path(&format!("data{i}"));
        let expected = random_file(&data, (1 << 20) + i * 4099);
        let (out, err) = (dir.fifo(&format!("out{i}")), dir.fifo(&format!("err{i}")));
        let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg("", &out, &err), &ctx()).unwrap();
        let readers = (
            read_to_end(open_reader(&out)),
            read_to_end(open_reader(&err)),
        );
        let script = format!("cat {0} & cat {0} >&2; wait", data.display());
        runs.push((spawn(&script, stdio), pio, readers, expected));
    }
    for (mut child, pio, (out, err), expected) in runs {
        assert!(wait_child(&mut child).success());
        assert!(pio.wait_drained(DRAIN));
        assert!(out.join().unwrap() == expected, "stdout mixed up");
        assert!(err.join().unwrap() == expected, "stderr mixed up");
        pio.shutdown();
    }
    assert_eq!(io.job_count(), 0);
}

#[test]
fn all_empty_is_null() {
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &StdioConfig::default(), &ctx()).unwrap();
    assert!(matches!(stdio, pelagos::Stdio::Null));
    assert!(pio.wait_drained(Duration::ZERO));
    pio.close_stdin();
    pio.resize(80, 24).unwrap();
    pio.shutdown();
    assert_eq!(io.job_count(), 0);
}

#[test]
fn empty_streams_are_none() {
    let dir = TempDir::new("partial");
    let (out, pio, stdio) = stdout_only(&dir);
    let reader = read_to_end(open_reader(&out));
    let pelagos::Stdio::Fds {
        stdin,
        stdout,
        stderr,
    } = stdio
    else {
        panic!("expected fds");
    };
    assert!(stdin.is_none() && stderr.is_none() && stdout.is_some());
    drop(stdout);
    assert!(pio.wait_drained(DRAIN));
    assert_eq!(reader.join().unwrap(), b"");
    pio.shutdown();
}

#[test]
fn errors_name_the_problem_and_leave_nothing_open() {
    let dir = TempDir::new("errors");
    let (inp, out) = (dir.fifo("in"), dir.fifo("out"));
    let missing = dir.path("nope").to_str().unwrap().to_string();
    let io = IoLoop::start().unwrap();

    let e = ProcessIo::open(&io, &fifo_cfg(&inp, &out, &missing), &ctx()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("stderr fifo {missing} does not exist")
    );
    // The stdin and stdout fifos opened before the failure were closed again.
    assert!(no_reader(&inp), "stdin fifo left open");
    assert!(no_reader(&out), "stdout fifo left open");
    assert_eq!(io.job_count(), 0);

    let e = ProcessIo::open(&io, &fifo_cfg("", "foo://x", ""), &ctx()).unwrap_err();
    assert_eq!(e.to_string(), "unknown stdio scheme foo");
    let e = ProcessIo::open(&io, &fifo_cfg(&missing, &out, ""), &ctx()).unwrap_err();
    assert!(e.to_string().contains(&missing), "{e}");
    let e =
        ProcessIo::open(&io, &fifo_cfg("", &dir.0.display().to_string(), ""), &ctx()).unwrap_err();
    assert!(e.to_string().contains("EISDIR"), "{e}");
    let e =
        ProcessIo::open(&io, &fifo_cfg("", "binary:///no/such/logger", ""), &ctx()).unwrap_err();
    assert!(e.to_string().contains("/no/such/logger"), "{e}");
    assert!(no_reader(&out));
}

#[test]
fn shutdown_closes_the_fifos() {
    let dir = TempDir::new("shutdown");
    let (inp, out, err) = (dir.fifo("in"), dir.fifo("out"), dir.fifo("err"));
    let io = IoLoop::start().unwrap();
    let (pio, stdio) = ProcessIo::open(&io, &fifo_cfg(&inp, &out, &err), &ctx()).unwrap();
    assert!(has_reader(&inp) && has_reader(&out) && has_reader(&err));
    assert_eq!(io.job_count(), 3);
    pio.shutdown();
    assert_eq!(io.job_count(), 0);
    assert!(no_reader(&inp), "stdin fifo left open");
    assert!(no_reader(&out), "stdout fifo left open");
    assert!(no_reader(&err), "stderr fifo left open");
    drop(stdio);
}

#[test]
fn scheme_parsing_follows_go() {
    assert!(split_scheme("/run/x:y").unwrap().is_none());
    assert!(split_scheme("1abc:x").unwrap().is_none());
    assert_eq!(
        split_scheme("Binary:///x").unwrap(),
        Some(("binary".to_string(), "///x"))
    );
    assert!(split_scheme(":x").is_err());
    assert!(matches!(
        Target::parse("fifo:///a/b").unwrap(),
        Target::Fifo { stdout: Some(p) } if p == Path::new("/a/b")
    ));
    assert!(matches!(
        Target::parse("file:///var/log/x%20y").unwrap(),
        Target::File(p) if p == Path::new("/var/log/x y")
    ));
}

/// By hand: `cargo test -p containerd-shim-pelagos-v2 throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_1_gib_through_fifos() {
    let dir = TempDir::new("speed");
    let (out, pio, stdio) = stdout_only(&dir);
    let mut reader = open_reader(&out);
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match reader.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    let start = Instant::now();
    let mut child = spawn("exec dd if=/dev/zero bs=1M count=1024 status=none", stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(Duration::from_secs(300)));
    let total = counter.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, 1 << 30);
    println!(
        "1 GiB through pipe+fifo in {secs:.2} s: {:.0} MiB/s",
        1024.0 / secs
    );
    let _ = std::io::stdout().flush();
    pio.shutdown();
}

/// The client stops as soon as it learns the output is drained (ctr 1.6 closes its fifos and
/// exits on the exit event): by then it must have read every byte, seen EOF and finished
/// with what it read (it closes its reader after that). The burst is far larger than the
/// pipes and the fifo, the writer exits at once and the reader is slow, so at the writer's
/// exit the pipe and the fifo are full and EAGAIN, EPOLLHUP and EOF interleave.
#[test]
fn drained_means_read_by_a_client_that_stops_at_once() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let dir = TempDir::new("slow");
    let data_path = dir.path("data");
    let expected = random_file(&data_path, 3 << 20);
    let (out, pio, stdio) = stdout_only(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut f = open_reader(&out);
        let (stop, finished) = (Arc::clone(&stop), Arc::clone(&finished));
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16 << 10];
            while !stop.load(Ordering::SeqCst) {
                match f.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // Writing out the last bytes read takes the client a while after EOF.
            std::thread::sleep(Duration::from_millis(50));
            finished.store(true, Ordering::SeqCst);
            drop(f);
            got
        })
    };
    let mut child = spawn(&format!("cat {}", data_path.display()), stdio);
    assert!(wait_child(&mut child).success());
    assert!(pio.wait_drained(DRAIN), "output not drained");
    let finished_first = finished.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let got = reader.join().unwrap();
    assert!(
        finished_first,
        "drained before the client was done with the output"
    );
    assert_eq!(got.len(), expected.len(), "bytes read before drained");
    assert!(got == expected, "output differs");
    pio.shutdown();
}

/// The daemon routes an exit from the callback of the process's drain waiter: the callback
/// runs once, after the client has read all of the output, and at once for a process whose
/// output is already read.
#[test]
fn drain_callback_runs_once_after_the_client_read_everything() {
    use std::sync::mpsc::channel;

    let dir = TempDir::new("ondone");
    let (out, pio, stdio) = stdout_only(&dir);
    let mut reader = open_reader(&out);
    let (tx, rx) = channel();
    let waiter = pio.drain_waiter();
    let first = tx.clone();
    waiter.on_done(move || first.send("first").unwrap());
    let mut child = spawn("echo hello", stdio);
    assert!(wait_child(&mut child).success());
    // The bytes sit in the fifo until read: no callback yet.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello\n");
    drop(reader);
    assert_eq!(rx.recv_timeout(DRAIN).unwrap(), "first");
    waiter.on_done(move || tx.send("again").unwrap());
    assert_eq!(
        rx.try_recv().unwrap(),
        "again",
        "not called at once when drained"
    );
    assert!(rx.try_recv().is_err(), "a callback ran twice");
    pio.shutdown();
}
