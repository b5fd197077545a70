//! The long-lived shim daemon: serves the Task API on the listener `start` handed over as fd 3
//! and runs the exit monitor on its main thread.
//!
//! Order matters at startup: SIGCHLD is blocked before any thread exists (threads inherit the
//! mask), so it is only ever consumed through the signalfd; the process becomes a child
//! subreaper so orphans of its containers are re-parented here and reaped too.
//!
//! Threads: this main thread (signalfd + OOM fds + wake-ups in one epoll), the events queue,
//! the stdio loop, and the ttrpc server's accept thread plus one per connection (and one per
//! pending Wait or Delete: see shim/src/server.rs). Exits are routed from
//! this thread only, also those that waited for their output to be read.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use containerd_shim_protos::shim::shim_ttrpc::{create_task, Task};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use pelagos::reaper::{self, Exit};

use crate::args::Flags;
use crate::delete::state_root;
use crate::events::Publisher;
use crate::io::{DrainWaiter, IoLoop, Outputs};
use crate::server::Handler;
use crate::service::{ExitSignal, Shim, EXIT_DRAIN_TIMEOUT, HELD_OPEN_POLL};
use crate::start::LISTENER_FD;

const SIGNAL_KEY: u64 = 0;
/// Longest wait for containerd to hang up after Shutdown (it allows 3 s for the call).
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const WAKE_KEY: u64 = 1;
/// An exit that waited for its output to be read may be routed now.
const DRAINED_KEY: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("daemon: {what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("daemon: start a thread: {0}")]
    Thread(std::io::Error),
    #[error("daemon: stdio loop: {0}")]
    Io(#[from] crate::io::IoError),
    #[error("daemon: listener fd 3: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> DaemonError {
    move |errno| DaemonError::Sys { what, errno }
}

/// glibc's tunables; glibc reads them once, as a process starts (no call sets these later).
pub const TUNABLES_ENV: &str = "GLIBC_TUNABLES";
/// What the start action gives the daemon, unless the operator set tunables of their own: no
/// per-thread cache of freed heap chunks (tcache: up to 7 chunks of each size per thread,
/// which `malloc_trim` cannot give back) and no cache of ended threads' stacks (each kept its
/// top pages). A pod's shim idled with ~50 and ~25 KiB of them; its threads allocate little.
pub const TUNABLES: &str = "glibc.malloc.tcache_count=0:glibc.pthread.stack_cache_size=0";
/// Set beside [`TUNABLES`]: the daemon drops both from its environment as it starts, so that
/// what it runs (hooks without an `env`, CRIU) inherits containerd's environment, as before.
pub const TUNABLES_OURS_ENV: &str = "PELAGOS_SHIM_TUNABLES";

/// Serves until Shutdown with no containers left.
pub fn run(flags: &Flags) -> Result<(), DaemonError> {
    if std::env::var_os(TUNABLES_OURS_ENV).is_some() {
        // Still single-threaded: no thread reads the environment meanwhile.
        std::env::remove_var(TUNABLES_ENV);
        std::env::remove_var(TUNABLES_OURS_ENV);
    }
    // SAFETY: mallopt only tunes the allocator; one arena keeps the RSS of a mostly idle,
    // many-threaded process small.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(sys("block SIGCHLD"))?;
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe {
        nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn)
            .map_err(sys("ignore SIGPIPE"))?;
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("PR_SET_CHILD_SUBREAPER"))?;
    set_cloexec(LISTENER_FD)?;

    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    crate::logger::init(&cwd, flags.debug);
    // stderr is /dev/null: a panic would otherwise leave no trace.
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    reaper::enable_loop();
    // The sealed copy of this binary (the containers' setup helper) is made while containerd
    // prepares the first Create, not during it.
    pelagos::selfexe::warm_up();

    let sfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll"))?);
    epoll
        .add(
            sfd.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, SIGNAL_KEY),
        )
        .map_err(sys("epoll add signalfd"))?;
    let exit = Arc::new(ExitSignal::new().map_err(sys("eventfd"))?);
    epoll
        .add(exit.fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE_KEY))
        .map_err(sys("epoll add eventfd"))?;
    let drained = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(sys("eventfd"))?,
    );
    epoll
        .add(
            drained.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, DRAINED_KEY),
        )
        .map_err(sys("epoll add eventfd"))?;
    let mut deferred = Deferred::default();

    let publisher = Arc::new(
        Publisher::start(
            std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            flags.namespace.clone(),
        )
        .map_err(DaemonError::Thread)?,
    );
    let io = IoLoop::start()?;
    let shim = Arc::new(Shim::new(
        flags.namespace.clone(),
        pelagos::Config {
            root: state_root(&flags.namespace),
            helper: None,
            systemd_cgroup: false,
        },
        io,
        publisher.clone(),
        epoll.clone(),
        exit.clone(),
    ));

    // SAFETY: fd 3 is the listening socket `start` handed over; nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTENER_FD) };
    listener
        .set_nonblocking(false)
        .map_err(DaemonError::Listener)?;
    let park: Arc<dyn crate::server::Park> = shim.clone();
    crate::server::start(listener, task_services(shim.clone()), Some(park))?;
    log::info!(
        "shim serving {} (namespace {}, first container {})",
        flags.socket,
        flags.namespace,
        flags.id
    );

    let mut events = [EpollEvent::empty(); 16];
    'serve: loop {
        let orphan = shim.orphan_deadline();
        let next = [deferred.next_deadline(), orphan]
            .into_iter()
            .flatten()
            .min();
        let n = match epoll.wait(&mut events, timeout_until(next)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sys("epoll_wait")(e)),
        };
        for ev in &events[..n] {
            match ev.data() {
                SIGNAL_KEY => {
                    while let Ok(Some(_)) = sfd.read_signal() {}
                    let exits = reaper::reap_all();
                    if !exits.is_empty() {
                        for (e, waiter, outputs) in shim.handle_exits(&exits) {
                            deferred.add(e, waiter, outputs, &drained);
                        }
                    }
                }
                DRAINED_KEY => {
                    let _ = drained.read();
                }
                WAKE_KEY => {
                    if exit.requested() {
                        break 'serve;
                    }
                }
                key => shim.handle_oom(key),
            }
        }
        let ready = deferred.take_ready(Instant::now());
        if !ready.is_empty() {
            shim.route_now(&ready);
        }
        if shim.orphan_deadline().is_some_and(|d| d <= Instant::now()) {
            log::warn!(
                "no container left and no Shutdown from containerd for {:?}: exiting",
                crate::service::ORPHAN_AFTER
            );
            break 'serve;
        }
    }

    // No new connection may find a dying shim; containerd closes its own once it has the
    // Shutdown answer, which we must not cut off by exiting first.
    let path = flags.socket.trim_start_matches("unix://");
    if !path.is_empty() {
        let _ = std::fs::remove_file(path);
    }
    publisher.flush_and_stop();
    shim.await_delete_answers(SHUTDOWN_LINGER);
    exit.linger(SHUTDOWN_LINGER);
    log::info!("shim exiting");
    Ok(())
}

/// An epoll timeout that ends at `next` (none: wait for events only).
fn timeout_until(next: Option<Instant>) -> EpollTimeout {
    let Some(first) = next else {
        return EpollTimeout::NONE;
    };
    // Rounded up, so the wait does not end just before the deadline.
    let ms = first
        .saturating_duration_since(Instant::now())
        .as_millis()
        .saturating_add(1);
    EpollTimeout::from(ms.min(u128::from(u16::MAX)) as u16)
}

/// Exits held back until the client has read the process's output (see
/// [`Shim::handle_exits`]). The copy loop reports a drained output through the eventfd, so an
/// exit is routed from this loop as soon as its output is read, with no thread per exit.
#[derive(Default)]
struct Deferred {
    exits: Vec<HeldExit>,
}

struct HeldExit {
    exit: Exit,
    /// Reported at this instant at the latest.
    deadline: Instant,
    /// Set by the copy loop once the output is read.
    done: Arc<AtomicBool>,
    waiter: DrainWaiter,
    /// When to look again at an output another process held open (see [`HELD_OPEN_POLL`]),
    /// and how much of it was unread the last time; `None` once no process holds it open.
    recheck: Option<(Instant, usize)>,
}

impl Deferred {
    /// Holds `exit` back; `outputs` is where its output stood when the exit was handled.
    fn add(&mut self, exit: Exit, waiter: DrainWaiter, outputs: Outputs, wake: &Arc<EventFd>) {
        let now = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let (flag, wake) = (done.clone(), wake.clone());
        // May run at once, on this thread; else on the thread that finishes the copy.
        waiter.on_done(move || {
            flag.store(true, Ordering::SeqCst);
            let _ = wake.write(1);
        });
        let recheck = match outputs {
            Outputs::Ending => None,
            Outputs::HeldOpen { unread } => Some((now + HELD_OPEN_POLL, unread)),
        };
        self.exits.push(HeldExit {
            exit,
            deadline: now + EXIT_DRAIN_TIMEOUT,
            done,
            waiter,
            recheck,
        });
    }

    /// The earliest deadline of a held exit.
    fn next_deadline(&self) -> Option<Instant> {
        self.exits
            .iter()
            .flat_map(|h| [Some(h.deadline), h.recheck.map(|(at, _)| at)])
            .flatten()
            .min()
    }

    /// The exits whose output was read (to its end, or so far while another process holds it
    /// open: see [`HELD_OPEN_POLL`]), or that waited [`EXIT_DRAIN_TIMEOUT`] for it.
    fn take_ready(&mut self, now: Instant) -> Vec<Exit> {
        let mut ready = Vec::new();
        self.exits.retain_mut(|h| {
            if h.done.load(Ordering::SeqCst) {
                ready.push(h.exit);
                return false;
            }
            if let Some((_, before)) = h.recheck.filter(|(at, _)| now >= *at) {
                h.recheck = match h.waiter.outputs() {
                    Outputs::Ending => None,
                    // Read so far, or nobody read any of it since the last look.
                    Outputs::HeldOpen { unread } if unread == 0 || unread == before => {
                        log::debug!(
                            "pid {}: output held open by another process ({unread} bytes unread); reporting the exit",
                            h.exit.pid
                        );
                        ready.push(h.exit);
                        return false;
                    }
                    Outputs::HeldOpen { unread } => Some((now + HELD_OPEN_POLL, unread)),
                };
            }
            if now >= h.deadline {
                log::warn!(
                    "pid {}: output not read by the client after {EXIT_DRAIN_TIMEOUT:?}; reporting the exit",
                    h.exit.pid
                );
                ready.push(h.exit);
                return false;
            }
            true
        });
        ready
    }
}

/// The Task service under both names: `containerd.task.v2.Task` (what every containerd uses
/// with a plain-address answer) and `containerd.task.v3.Task` (byte-identical messages).
fn task_services(shim: Arc<dyn Task + Send + Sync>) -> HashMap<String, Handler> {
    let mut methods = HashMap::new();
    for (path, handler) in create_task(shim.clone()) {
        methods.insert(path.clone(), answering(&path, handler));
    }
    for (path, handler) in create_task(shim) {
        let v2 = path.replacen("containerd.task.v3.", "containerd.task.v2.", 1);
        methods.insert(v2.clone(), answering(&v2, handler));
    }
    methods
}

fn answering(path: &str, handler: Handler) -> Handler {
    let trim = path.ends_with("/Create") || path.ends_with("/Delete");
    Box::new(Answering { handler, trim })
}

/// Answers a request whose payload does not decode with an error status: the generated
/// handlers return such an error without answering (ttrpc-rust's own server then stopped
/// serving the connection without a word, so a client that sent garbage waited forever); Go's
/// ttrpc (what runc's shim uses) answers.
///
/// Create and Delete also hand freed heap back to the kernel once answered: a container's
/// spec is parsed and copied a few times, and a large config.json (tens of MiB through a
/// hostile or careless client) would otherwise stay in the idle shim's RSS as free but
/// fragmented heap.
struct Answering {
    handler: Handler,
    trim: bool,
}

impl ttrpc::MethodHandler for Answering {
    fn handler(&self, ctx: ttrpc::TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let (stream, tx, conn) = (ctx.mh.stream_id, ctx.res_tx.clone(), ctx.conn_ctx.clone());
        let r = self.handler.handler(ctx, req).or_else(|e| {
            let status = ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, e.to_string());
            ttrpc::send_response(stream, ttrpc::Error::RpcStatus(status).into(), tx, &conn)
        });
        if self.trim {
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
        r
    }
}

fn set_cloexec(fd: RawFd) -> Result<(), DaemonError> {
    // SAFETY: F_SETFD on an fd number; EBADF is reported, nothing else happens.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(sys("listener fd 3")(nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl Task for Nop {}

    #[test]
    fn both_task_api_names_are_served() {
        let names: Vec<String> = task_services(Arc::new(Nop)).into_keys().collect();
        assert_eq!(names.len(), 34);
        assert!(names.contains(&"/containerd.task.v2.Task/Create".to_string()));
        assert!(names.contains(&"/containerd.task.v2.Task/Shutdown".to_string()));
        assert!(names.contains(&"/containerd.task.v3.Task/Wait".to_string()));
    }
}
