//! The shim's stdio: opens what containerd asked for (fifos, a `binary://` logger, a
//! `file://` log, a terminal, or nothing), makes the container's side of it, and runs the copies
//! on the one [`IoLoop`] thread of the shim.
//!
//! Behaviour follows containerd-shim-runc-v2 (`pkg/process/io.go`): the shim always holds a
//! read side of the stdout/stderr fifos, so the container never gets EPIPE when the client's
//! reader goes away, and holds a write side of the stdin fifo until `CloseIO`, so a client
//! detach is not an EOF. The container writes into pipes (never into the client's fifos), which
//! the loop splices into the fifos.
//!
//! A terminal is made like runc's `--console-socket`: the container's setup allocates the pty
//! in the container's own devpts (so `tty` inside names a path that exists there) and sends
//! the master back over a socket; [`ProcessIo::receive_console`] takes it once create/exec
//! returned and starts the copies.
//!
//! Every fd made here is close-on-exec: another container's setup helper or logger must never
//! inherit one, or EOF would never come.

mod copy;
mod logger;
mod pty;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use copy::{Console, Drain, DrainToken, JobSpec, OnEof};
pub use copy::{IoLoop, Outputs};
use logger::{Logger, LoggerCommand};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("unknown stdio scheme {0}")]
    UnknownScheme(String),
    #[error("bad stdio uri {uri}: {reason}")]
    BadUri { uri: String, reason: &'static str },
    #[error("{stream} fifo {path} does not exist")]
    Missing { stream: &'static str, path: PathBuf },
    #[error("cannot open {stream} {path}: {source}")]
    Open {
        stream: &'static str,
        path: PathBuf,
        source: Errno,
    },
    #[error("{stream} path {path} is not a fifo, character device or regular file")]
    NotFifo { stream: &'static str, path: PathBuf },
    #[error("cannot create the log file {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the {stream} pipe: {source}")]
    Pipe { stream: &'static str, source: Errno },
    #[error("cannot make the console socket: {0}")]
    ConsoleSocket(pelagos::container::Error),
    #[error("no pty master from the container: {0}")]
    ConsoleReceive(pelagos::container::Error),
    #[error("no console to attach: not opened with a terminal, or already attached")]
    NoConsole,
    #[error("pty master: {0}")]
    Master(Errno),
    #[error("binary logger {path}: {reason}")]
    Logger { path: PathBuf, reason: String },
    #[error("io loop: {0}")]
    Epoll(Errno),
    #[error("cannot start the io thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot resize the terminal: {0}")]
    Resize(std::io::Error),
}

/// The stdio of a Create or Exec request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Identifies the container to a `binary://` logger (env CONTAINER_ID, CONTAINER_NAMESPACE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggerContext {
    pub namespace: String,
    pub id: String,
}

/// Where output goes, from the scheme of the stdout string.
#[derive(Debug)]
enum Target {
    /// Fifo paths (or nothing) in stdin/stdout/stderr.
    Fifo {
        stdout: Option<PathBuf>,
    },
    Binary(LoggerCommand),
    File(PathBuf),
}

impl Target {
    fn parse(stdout: &str) -> Result<Target, IoError> {
        if stdout.is_empty() {
            return Ok(Target::Fifo { stdout: None });
        }
        let Some((scheme, rest)) = split_scheme(stdout)? else {
            return Ok(Target::Fifo {
                stdout: Some(PathBuf::from(stdout)),
            });
        };
        match scheme.as_str() {
            "fifo" => Ok(Target::Fifo {
                stdout: Some(logger::uri_parts(stdout, rest)?.0),
            }),
            "binary" => Ok(Target::Binary(LoggerCommand::parse(stdout, rest)?)),
            "file" => Ok(Target::File(logger::uri_parts(stdout, rest)?.0)),
            _ => Err(IoError::UnknownScheme(scheme)),
        }
    }
}

/// Go's `url.getScheme`: `[A-Za-z][A-Za-z0-9+.-]*:` starts a scheme, anything else is a path.
/// Returns the lower-cased scheme and what follows the colon.
fn split_scheme(s: &str) -> Result<Option<(String, &str)>, IoError> {
    for (i, c) in s.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => {
                return Err(IoError::BadUri {
                    uri: s.to_string(),
                    reason: "missing protocol scheme",
                })
            }
            ':' => return Ok(Some((s[..i].to_ascii_lowercase(), &s[i + 1..]))),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// A fifo path as given for stdin/stderr: a plain path, or a `fifo://` URI.
fn fifo_path(s: &str) -> Result<PathBuf, IoError> {
    match split_scheme(s)? {
        Some((scheme, rest)) if scheme == "fifo" => Ok(logger::uri_parts(s, rest)?.0),
        _ => Ok(PathBuf::from(s)),
    }
}

/// Fuzzing entry point (fuzz/ compiles this module in): reads the stdout and stderr fields of
/// a Create or Exec request as [`ProcessIo::open`] does, opening nothing.
#[doc(hidden)]
#[allow(dead_code)]
pub fn parse_stdio(stdout: &str, stderr: &str) -> Result<(), IoError> {
    Target::parse(stdout)?;
    fifo_path(stderr)?;
    Ok(())
}

/// Waits for the output of one process to be read by the client (see [`ProcessIo::wait_drained`]).
#[derive(Debug, Clone)]
pub struct DrainWaiter {
    drain: Arc<Drain>,
    io_loop: Arc<IoLoop>,
    owner: u64,
}

impl DrainWaiter {
    pub fn is_done(&self) -> bool {
        self.drain.is_done()
    }

    /// See [`ProcessIo::outputs`].
    pub fn outputs(&self) -> Outputs {
        self.io_loop.outputs(self.owner)
    }

    /// Calls `f` once the output is read: at once if it already is, else from the thread
    /// that finishes the last copy (which holds locks of the copy loop or the service:
    /// `f` must only hand the news on, e.g. queue it and wake a loop).
    pub fn on_done(&self, f: impl FnOnce() + Send + 'static) {
        self.drain.on_done(Box::new(f))
    }
}

/// The shim's side of one process's stdio. Dropping it is [`ProcessIo::shutdown`].
#[derive(Debug)]
pub struct ProcessIo {
    io_loop: Arc<IoLoop>,
    owner: u64,
    /// The pty master (terminal only); `None` inside once the console was hung up.
    console: Option<Console>,
    /// A terminal whose master has not arrived yet (between open and create/exec).
    pending: Option<PendingConsole>,
    /// The shim's own write handle on the stdin fifo, released by `CloseIO`.
    stdin_writer: Mutex<Option<OwnedFd>>,
    /// Pipe ends kept open so the container never writes into a pipe without a reader.
    held: Vec<OwnedFd>,
    drain: Arc<Drain>,
    logger: Option<Logger>,
}

impl ProcessIo {
    /// Opens containerd's side (fifos / binary:// / file:// / nothing) and makes the container
    /// side. The caller must drop the returned [`pelagos::Stdio`] once the process has been
    /// spawned (the child has its own copies): a write end left open in the shim means the
    /// output never reaches EOF and `wait_drained` never returns true.
    pub fn open(
        io: &Arc<IoLoop>,
        cfg: &StdioConfig,
        ctx: &LoggerContext,
    ) -> Result<(ProcessIo, pelagos::Stdio), IoError> {
        let target = Target::parse(&cfg.stdout)?;
        let mut pio = ProcessIo {
            io_loop: Arc::clone(io),
            owner: io.new_owner(),
            console: None,
            pending: None,
            stdin_writer: Mutex::new(None),
            held: Vec::new(),
            drain: Arc::new(Drain::default()),
            logger: None,
        };
        let mut jobs = Vec::new();
        let stdio = if cfg.terminal {
            pio.open_terminal(cfg, ctx, target)?
        } else if cfg.stdin.is_empty() && cfg.stdout.is_empty() && cfg.stderr.is_empty() {
            pelagos::Stdio::Null
        } else {
            match target {
                Target::Fifo { stdout } => {
                    let stdin = pio.stdin_pipe(cfg, &mut jobs)?;
                    let stdout = match stdout {
                        Some(path) => Some(pio.output_to_fifo("stdout", path, &mut jobs)?),
                        None => None,
                    };
                    let stderr = match cfg.stderr.as_str() {
                        "" => None,
                        s => Some(pio.output_to_fifo("stderr", fifo_path(s)?, &mut jobs)?),
                    };
                    pelagos::Stdio::Fds {
                        stdin,
                        stdout,
                        stderr,
                    }
                }
                Target::File(path) => {
                    let file = open_log_file(&path)?;
                    let stdin = pio.stdin_pipe(cfg, &mut jobs)?;
                    // Like containerd: stderr goes to the file only if stderr was asked for.
                    let stderr = match cfg.stderr.is_empty() {
                        true => None,
                        false => Some(pio.output_pipe("stderr", dup(&file)?, false, &mut jobs)?),
                    };
                    let stdout = Some(pio.output_pipe("stdout", file, false, &mut jobs)?);
                    pelagos::Stdio::Fds {
                        stdin,
                        stdout,
                        stderr,
                    }
                }
                Target::Binary(cmd) => {
                    // The container writes straight into the logger's pipes: nothing to copy,
                    // and (like containerd) no stdin.
                    let (out_r, out_w) = pipe("stdout")?;
                    let (err_r, err_w) = pipe("stderr")?;
                    pio.logger = Some(Logger::spawn(&cmd, ctx, out_r.as_fd(), err_r.as_fd())?);
                    pio.held.extend([out_r, err_r]);
                    pelagos::Stdio::Fds {
                        stdin: None,
                        stdout: Some(out_w),
                        stderr: Some(err_w),
                    }
                }
            }
        };
        io.add(pio.owner, jobs)?;
        Ok((pio, stdio))
    }

    /// Terminal only, after create/exec returned: receives the pty master the container's
    /// setup sent over the console socket and attaches it ([`ProcessIo::attach_console`]).
    pub fn receive_console(&mut self) -> Result<(), IoError> {
        let socket = self
            .pending
            .as_mut()
            .and_then(|p| p.socket.take())
            .ok_or(IoError::NoConsole)?;
        let master = socket.receive().map_err(IoError::ConsoleReceive)?;
        self.attach_console(master)
    }

    /// Starts the copies of a terminal process on its pty master: stdin fifo → master,
    /// master → stdout; EIO on the master (every slave fd closed) is the output's EOF.
    pub fn attach_console(&mut self, master: OwnedFd) -> Result<(), IoError> {
        let Some(pending) = self.pending.take() else {
            return Err(IoError::NoConsole);
        };
        // Dropped unused, the console socket lets a container still holding it see EOF.
        let PendingConsole {
            socket: _,
            out,
            out_client,
            stdin,
            drain,
        } = pending;
        let fl = fcntl(&master, FcntlArg::F_GETFL).map_err(IoError::Master)?;
        let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
        fcntl(&master, FcntlArg::F_SETFL(fl)).map_err(IoError::Master)?;
        // Received fds come close-on-exec only if the sender asked; another container's
        // helper must never inherit a master, or its slave would never hang up.
        fcntl(&master, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(IoError::Master)?;
        let mut jobs = vec![JobSpec {
            name: "console",
            src: dup(&master)?,
            dst: out,
            on_eof: OnEof::Close,
            drain: Some(drain),
            reads_console: true,
            client_seen: out_client,
        }];
        let console: Console = Arc::new(Mutex::new(None));
        if let Some(src) = stdin {
            jobs.push(JobSpec {
                name: "stdin",
                src,
                dst: dup(&master)?,
                on_eof: OnEof::HangUp(Arc::clone(&console)),
                drain: None,
                reads_console: false,
                client_seen: false,
            });
        }
        *console.lock().unwrap_or_else(|e| e.into_inner()) = Some(master);
        self.console = Some(console);
        self.io_loop.add(self.owner, jobs)
    }

    /// Sets the terminal size (TIOCSWINSZ on the master); a no-op without a terminal.
    pub fn resize(&self, width: u16, height: u16) -> Result<(), IoError> {
        let Some(console) = &self.console else {
            return Ok(());
        };
        let master = console.lock().unwrap_or_else(|e| e.into_inner());
        match master.as_ref() {
            Some(fd) => pty::set_size(fd.as_fd(), width, height).map_err(IoError::Resize),
            None => Ok(()),
        }
    }

    /// CloseIO: releases the shim's own write handle of the stdin fifo. The container's stdin
    /// ends once the client has closed its side too.
    pub fn close_stdin(&self) {
        let writer = self
            .stdin_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(writer);
    }

    /// Blocks until every byte the process wrote has been copied out (EOF on all outputs) and,
    /// for fifos, read by the client (or given up on: see copy.rs), at most `timeout`. False
    /// when the timeout passed first.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        self.drain.wait(timeout)
    }

    /// A handle that waits for this process's output like [`ProcessIo::wait_drained`]
    /// without borrowing it.
    pub fn drain_waiter(&self) -> DrainWaiter {
        DrainWaiter {
            drain: Arc::clone(&self.drain),
            io_loop: Arc::clone(&self.io_loop),
            owner: self.owner,
        }
    }

    /// Whether some process still holds an output of this one open, so that its EOF may never
    /// come: a child left running in the background (in the same pid namespace as an exec, or
    /// with a shared or host pid namespace), or the setup helper for a moment after spawning.
    pub fn outputs(&self) -> Outputs {
        self.io_loop.outputs(self.owner)
    }

    /// Stops the copies, closes the fifos and stops a binary logger (SIGTERM, then SIGKILL
    /// after 12 s), waiting for it.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.io_loop.remove_owner(self.owner);
        self.close_stdin();
        if let Some(console) = self.console.take() {
            console.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        self.pending.take();
        // The logger's pipes first, so it sees EOF before SIGTERM where it can.
        self.held.clear();
        self.logger.take();
    }

    /// Opens the stdin fifo (if any) and returns the container's end of its pipe.
    fn stdin_pipe(
        &mut self,
        cfg: &StdioConfig,
        jobs: &mut Vec<JobSpec>,
    ) -> Result<Option<OwnedFd>, IoError> {
        let Some(src) = self.open_stdin(cfg)? else {
            return Ok(None);
        };
        let (r, w) = pipe("stdin")?;
        set_nonblocking(&w, "stdin")?;
        jobs.push(JobSpec {
            name: "stdin",
            src,
            dst: w,
            on_eof: OnEof::Close,
            drain: None,
            reads_console: false,
            client_seen: false,
        });
        Ok(Some(r))
    }

    /// Opens the stdin fifo for reading, plus the shim's write handle on it.
    fn open_stdin(&mut self, cfg: &StdioConfig) -> Result<Option<OwnedFd>, IoError> {
        if cfg.stdin.is_empty() {
            return Ok(None);
        }
        let path = fifo_path(&cfg.stdin)?;
        // The reader first: then opening the writer cannot block or fail with ENXIO.
        let (src, kind) = open_stream("stdin", &path, OFlag::O_RDONLY)?;
        if kind == SFlag::S_IFIFO {
            let (writer, _) = open_stream("stdin", &path, OFlag::O_WRONLY)?;
            *self
                .stdin_writer
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()) = Some(writer);
        }
        Ok(Some(src))
    }

    fn output_to_fifo(
        &mut self,
        stream: &'static str,
        path: PathBuf,
        jobs: &mut Vec<JobSpec>,
    ) -> Result<OwnedFd, IoError> {
        let (dst, client) = open_output_fifo(stream, path)?;
        self.output_pipe(stream, dst, client, jobs)
    }

    /// A pipe whose write end goes to the container and whose read end is copied into `dst`
    /// (`client`: see [`JobSpec::client_seen`]).
    fn output_pipe(
        &mut self,
        stream: &'static str,
        dst: OwnedFd,
        client: bool,
        jobs: &mut Vec<JobSpec>,
    ) -> Result<OwnedFd, IoError> {
        let (r, w) = pipe(stream)?;
        set_nonblocking(&r, stream)?;
        jobs.push(JobSpec {
            name: stream,
            src: r,
            dst,
            on_eof: OnEof::Close,
            drain: Some(self.drain.token()),
            reads_console: false,
            client_seen: client,
        });
        Ok(w)
    }

    /// Opens the output and stdin of a terminal process and makes the console socket whose
    /// other end is the container's side; the copies start at [`ProcessIo::attach_console`].
    fn open_terminal(
        &mut self,
        cfg: &StdioConfig,
        ctx: &LoggerContext,
        target: Target,
    ) -> Result<pelagos::Stdio, IoError> {
        // stderr is unused with a terminal: the slave is 0, 1 and 2.
        let (out, out_client) = match target {
            Target::Fifo { stdout: Some(path) } => open_output_fifo("stdout", path)?,
            // Nobody reads the output, but the tty must not fill up and block the process.
            Target::Fifo { stdout: None } => (
                open_stream("stdout", "/dev/null".as_ref(), OFlag::O_WRONLY)?.0,
                false,
            ),
            Target::File(path) => (open_log_file(&path)?, false),
            Target::Binary(cmd) => {
                let (out_r, out_w) = pipe("stdout")?;
                let (err_r, err_w) = pipe("stderr")?;
                set_nonblocking(&out_w, "stdout")?;
                self.logger = Some(Logger::spawn(&cmd, ctx, out_r.as_fd(), err_r.as_fd())?);
                self.held.extend([out_r, err_r, err_w]);
                (out_w, false)
            }
        };
        let stdin = self.open_stdin(cfg)?;
        let (socket, theirs) = pelagos::console_socket().map_err(IoError::ConsoleSocket)?;
        self.pending = Some(PendingConsole {
            socket: Some(socket),
            out,
            out_client,
            stdin,
            drain: self.drain.token(),
        });
        Ok(pelagos::Stdio::Terminal(theirs))
    }
}

/// What a terminal process's copies need once its pty master arrives.
#[derive(Debug)]
struct PendingConsole {
    socket: Option<pelagos::ConsoleSocket>,
    out: OwnedFd,
    /// See [`JobSpec::client_seen`].
    out_client: bool,
    stdin: Option<OwnedFd>,
    /// Held from open, so `wait_drained` also waits for output not attached yet.
    drain: DrainToken,
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens a stdio path nonblocking and close-on-exec; returns it with its file type.
fn open_stream(
    stream: &'static str,
    path: &std::path::Path,
    flags: OFlag,
) -> Result<(OwnedFd, SFlag), IoError> {
    let flags = flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(IoError::Missing {
                stream,
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(IoError::Open {
                stream,
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let st = fstat(&fd).map_err(|source| IoError::Open {
        stream,
        path: path.to_path_buf(),
        source,
    })?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    match kind {
        SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFREG => Ok((fd, kind)),
        _ => Err(IoError::NotFifo {
            stream,
            path: path.to_path_buf(),
        }),
    }
}

/// An output fifo, opened O_RDWR: the shim is a reader of the fifo for as long as it copies
/// into it, so the container never sees EPIPE and output waits in the fifo while no client
/// reads. (A character device such as /dev/null is accepted too.) Also whether a client had
/// it open for reading already, which only an open made before the shim's own can tell: a
/// write-only open without blocking fails (ENXIO) when the fifo has no reader. That writer is
/// closed only once the shim's own is open, or a client waiting in read would see EOF.
fn open_output_fifo(stream: &'static str, path: PathBuf) -> Result<(OwnedFd, bool), IoError> {
    let client = open_stream(stream, &path, OFlag::O_WRONLY).ok();
    let (fd, kind) = open_stream(stream, &path, OFlag::O_RDWR)?;
    if kind == SFlag::S_IFREG {
        return Err(IoError::NotFifo { stream, path });
    }
    Ok((fd, client.is_some()))
}

/// `file://` target: created (with its directory) if missing, appended to.
fn open_log_file(path: &std::path::Path) -> Result<OwnedFd, IoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| IoError::LogFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(err)?;
    Ok(file.into())
}

fn pipe(stream: &'static str) -> Result<(OwnedFd, OwnedFd), IoError> {
    // Default capacity: the copy loop grows the pipes of bulk streams (see copy.rs).
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| IoError::Pipe { stream, source })
}

fn set_nonblocking(fd: &OwnedFd, stream: &'static str) -> Result<(), IoError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|source| IoError::Pipe { stream, source })?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|source| IoError::Pipe { stream, source })?;
    Ok(())
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, IoError> {
    fd.try_clone().map_err(|e| IoError::Pipe {
        stream: "dup",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
    })
}

#[cfg(test)]
mod tests;
