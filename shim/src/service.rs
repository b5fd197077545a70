//! The containerd Task service (`containerd.task.v2.Task`, also registered as v3): the 17 RPCs
//! on top of the pelagos core, with the behaviour and gRPC codes of containerd-shim-runc-v2.
//!
//! Locking: one service mutex guards the bookkeeping ([`Lifecycle`]) and the handles (IO,
//! OOM watches); it is held only for short, non-blocking work, and every event is queued while
//! holding it, so queue order is protocol order. Slow core calls (create, start, exec, freeze)
//! run outside it, on a per-container `RwLock`. The monitor (the daemon's main thread) also
//! takes the service mutex to route exits, and never a container lock: the core waits for its
//! setup helpers through the reaper, which only that thread drives.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::TaskIO;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::EnumOrUnknown;
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::shim::shim_ttrpc::Task;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ApiStatus};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::EventFd;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use pelagos::reaper::{self, Exit};
use ttrpc::{Code, TtrpcContext};

use crate::events::{timestamp, Event, Publisher};
use crate::io::{DrainWaiter, IoLoop, LoggerContext, Outputs, ProcessIo, StdioConfig};
use crate::lifecycle::{Action, Lifecycle, LifecycleError, Sink, Status, Which};
use crate::mount::{self, MountSpec};
use crate::server::{self, Reply};
use crate::{metrics, options};

mod checkpoint;
mod task;

/// How long Delete waits for a process's output to be copied out.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Delete waits for an output another process still holds open (a child left in the
/// background): runc's shim waits as long before it closes the stdio of a deleted process.
const HELD_OPEN_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an exit waits for the client to read the process's output before it is reported
/// anyway (a client that stopped reading).
pub const EXIT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// An exit whose output another process still holds open (a child left running in the
/// background) is reported once the client has read what was written so far, or has read
/// none of it since the last look, without waiting for the output to end, which it may never
/// do (runc's shim reports every exit at once). Such an output is looked at this often, the
/// first time this long after the exit: a hangup is not always visible the moment the exit is
/// (reporting "held open, all read" at once lost the tail of a tty once in CI).
pub const HELD_OPEN_POLL: Duration = Duration::from_millis(50);
/// How often a pending Wait looks whether its client is still there.
const WAIT_PEER_CHECK: Duration = Duration::from_secs(5);
/// How long an empty shim waits for containerd's next call (a Create right after `start`, the
/// Shutdown right after a Delete or a failed Create) before it takes containerd for gone (see
/// [`Shim::orphan_deadline`]).
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);
/// Epoll keys below this are the daemon's own (signalfd, wake-up eventfd).
pub const FIRST_OOM_KEY: u64 = 16;

type Res<T> = ttrpc::Result<T>;

/// Closes the held namespaces outside the lock: the teardown they start can take a while.
fn release_namespaces(held: &Mutex<Vec<OwnedFd>>) {
    let fds = std::mem::take(&mut *held.lock().unwrap_or_else(|e| e.into_inner()));
    drop(fds);
}

/// Waits for a deleted process's output to be copied out, for as long as it may take to end.
fn drain_before_delete(io: &ProcessIo, what: &str) {
    let timeout = match io.outputs() {
        Outputs::Ending => DRAIN_TIMEOUT,
        Outputs::HeldOpen { .. } => HELD_OPEN_DRAIN_TIMEOUT,
    };
    if !io.wait_drained(timeout) {
        log::warn!("{what}: output not drained after {timeout:?}");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("bundle config {path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error(transparent)]
    BadSpec(#[from] pelagos::spec::SpecError),
    #[error(transparent)]
    Core(#[from] pelagos::container::Error),
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// A Delete took the container while the call waited for it.
    #[error("container is gone")]
    Gone,
}

/// Runs `f` on the container in `cell` (see [`ServiceError::Gone`]).
fn with_container<T>(
    cell: &ContainerCell,
    f: impl FnOnce(&pelagos::Container) -> Result<T, pelagos::container::Error>,
) -> Result<T, ServiceError> {
    match cell.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(c) => Ok(f(c)?),
        None => Err(ServiceError::Gone),
    }
}

/// containerd's rootfs mounts (Create's `rootfs`) on the bundle's rootfs: unmounted when
/// dropped, unless kept for the container's Delete.
struct RootfsMounts {
    target: Option<PathBuf>,
    id: String,
}

impl RootfsMounts {
    fn mount(req: &CreateTaskRequest) -> Result<RootfsMounts, mount::MountError> {
        let target = PathBuf::from(&req.bundle).join("rootfs");
        let mounts = MountSpec::from_request(&req.rootfs);
        mount::mount_all(&mounts, &target)?;
        Ok(RootfsMounts {
            target: (!mounts.is_empty()).then_some(target),
            id: req.id.clone(),
        })
    }

    /// What Delete unmounts (nothing when containerd mounted the rootfs itself).
    fn keep(mut self) -> Option<PathBuf> {
        self.target.take()
    }
}

impl Drop for RootfsMounts {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            if let Err(e) = mount::unmount_recursive(&target) {
                log::warn!("container {}: {e}", self.id);
            }
        }
    }
}

/// What a Create sets up before the container, also for one restored from a checkpoint: its
/// options and spec, the core's config for it, the rootfs mounts and the stdio. Dropped, the
/// stdio is closed, then the rootfs unmounted.
struct Prepared {
    opts: options::Options,
    /// The cgroup driver is the container's choice (its runtime options), as with runc.
    config: pelagos::Config,
    spec: Spec,
    stdio_cfg: StdioConfig,
    pio: ProcessIo,
    stdio: pelagos::Stdio,
    mounts: RootfsMounts,
}

/// An error as containerd's Go shims send it: the message of one of containerd's error
/// classes (errdefs) ends with the class, "process already finished: not found". containerd
/// 1.x strips that suffix before showing the message, 2.x shows it.
fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    let mut msg = msg.to_string();
    if let Some(class) = errdefs_class(code) {
        if msg != class && !msg.ends_with(&format!(": {class}")) {
            msg = format!("{msg}: {class}");
        }
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn errdefs_class(code: Code) -> Option<&'static str> {
    Some(match code {
        Code::INVALID_ARGUMENT => "invalid argument",
        Code::NOT_FOUND => "not found",
        Code::ALREADY_EXISTS => "already exists",
        Code::FAILED_PRECONDITION => "failed precondition",
        Code::UNAVAILABLE => "unavailable",
        Code::UNIMPLEMENTED => "not implemented",
        _ => return None,
    })
}

impl From<LifecycleError> for ttrpc::Error {
    fn from(e: LifecycleError) -> Self {
        let code = match e {
            LifecycleError::NotFound(_) | LifecycleError::ExecNotFound { .. } => Code::NOT_FOUND,
            LifecycleError::AlreadyExists(_) | LifecycleError::ExecExists { .. } => {
                Code::ALREADY_EXISTS
            }
            LifecycleError::InitNotRunning(_) => Code::FAILED_PRECONDITION,
            LifecycleError::BadState { .. } | LifecycleError::EndedBeforeStart { .. } => {
                Code::UNKNOWN
            }
        };
        status(code, e)
    }
}

impl Sink for Publisher {
    fn publish(&self, event: Event) {
        Publisher::publish(self, event);
    }
}

pub fn api_status(s: Status) -> ApiStatus {
    match s {
        Status::Created => ApiStatus::CREATED,
        Status::Running => ApiStatus::RUNNING,
        Status::Pausing => ApiStatus::PAUSING,
        Status::Paused => ApiStatus::PAUSED,
        Status::Stopped => ApiStatus::STOPPED,
    }
}

/// Asks the daemon's main loop to finish.
pub struct ExitSignal {
    requested: AtomicBool,
    wake: EventFd,
    /// A duplicate of the connection that asked: the daemon lingers until its peer hangs up,
    /// which containerd does once it has the Shutdown answer (ttrpc has no graceful stop).
    conn: Mutex<Option<OwnedFd>>,
}

impl ExitSignal {
    pub fn new() -> nix::Result<ExitSignal> {
        Ok(ExitSignal {
            conn: Mutex::new(None),
            requested: AtomicBool::new(false),
            wake: EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?,
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub fn trigger(&self, conn: Option<OwnedFd>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Waits (at most `timeout`) until the peer of the connection that asked for the exit has
    /// closed it, so the answer is not cut off by our exit.
    pub fn linger(&self, timeout: Duration) {
        let Some(fd) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd; a duplicate we own keeps the socket open meanwhile.
        unsafe { libc::poll(&mut p, 1, ms) };
    }

    pub fn requested(&self) -> bool {
        let _ = self.wake.read();
        self.requested.load(Ordering::SeqCst)
    }

    /// Wakes the daemon's loop without asking it to finish (one of its deadlines changed).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }
}

/// Whether the peer of connection `fd` has closed it (hung up, or gone with its process).
fn peer_gone(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the connection's fd, which ttrpc keeps open during the call;
    // poll only reports its state.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

type ContainerCell = Arc<RwLock<Option<pelagos::Container>>>;

struct ExecHandles {
    spec: Process,
    stdio: StdioConfig,
    io: Option<ProcessIo>,
    pidfd: Option<OwnedFd>,
}

struct Handles {
    container: ContainerCell,
    init_io: Option<ProcessIo>,
    execs: HashMap<String, ExecHandles>,
    /// Set when Create mounted containerd's rootfs mounts here.
    rootfs: Option<PathBuf>,
    oom: Option<(u64, pelagos::cgroups::OomWatch)>,
    /// The namespaces the container created, held until containerd has its init's exit (or
    /// until Delete, whichever comes first): their teardown (the container's mount tree above
    /// all) is kernel work that would otherwise come between the init's death and the exit
    /// event.
    namespaces: Arc<Mutex<Vec<OwnedFd>>>,
    /// A Create from a checkpoint: restored at Start (see `checkpoint`).
    restore: Option<checkpoint::PendingRestore>,
}

impl Handles {
    /// The stdio of one of the task's processes, once it has one.
    fn io(&self, which: Which<'_>) -> Option<&ProcessIo> {
        match which {
            Which::Init => self.init_io.as_ref(),
            Which::Exec(exec_id) => self.execs.get(exec_id).and_then(|e| e.io.as_ref()),
        }
    }
}

#[derive(Default)]
struct Handled {
    handles: HashMap<String, Handles>,
    oom_keys: HashMap<u64, String>,
    /// Containers deleted whose Shutdown has not come yet: containerd sends one on the same
    /// connection once it has read the Delete answer. (Every containerd does while `start`
    /// answers a plain address, i.e. shim API v2; 2.x skips it for a sandboxed container of
    /// a v3 shim, which would leave its id here and delay the exit by the linger bound.)
    awaiting_shutdown: std::collections::HashSet<String>,
    /// Since when the shim has had no container: its start, the Delete that emptied it, or a
    /// failed Create that left it empty (see [`Shim::orphan_deadline`]).
    emptied_at: Option<std::time::Instant>,
    /// Pids whose exit was reaped but is held back for unread output (see
    /// [`Shim::handle_exits`]); the exit itself waits in the reaper's table.
    held: std::collections::HashSet<i32>,
    /// Wait calls not answered yet (see [`Shim::notify`]).
    waits: Vec<ParkedWait>,
}

/// A Wait taken over from the server: answered by whoever changes the state it waits for.
struct ParkedWait {
    id: String,
    exec_id: String,
    reply: Reply,
}

impl Handled {
    /// The handles of a task the lifecycle knows (both are updated under one lock).
    fn of(&self, id: &str) -> Res<&Handles> {
        self.handles
            .get(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()).into())
    }
}

struct State {
    life: Lifecycle,
    h: Handled,
}

pub struct Shim {
    namespace: String,
    config: pelagos::Config,
    io: Arc<IoLoop>,
    state: Mutex<State>,
    changed: Condvar,
    epoll: Arc<Epoll>,
    next_key: AtomicU64,
    exit: Arc<ExitSignal>,
    publisher: Arc<Publisher>,
}

impl Shim {
    pub fn new(
        namespace: String,
        config: pelagos::Config,
        io: Arc<IoLoop>,
        publisher: Arc<Publisher>,
        epoll: Arc<Epoll>,
        exit: Arc<ExitSignal>,
    ) -> Shim {
        Shim {
            namespace,
            config,
            io,
            state: Mutex::new(State {
                life: Lifecycle::new(publisher.clone()),
                h: Handled {
                    // A shim starts empty: a Create that never comes counts as a lost Shutdown.
                    emptied_at: Some(std::time::Instant::now()),
                    ..Default::default()
                },
            }),
            changed: Condvar::new(),
            epoll,
            next_key: AtomicU64::new(FIRST_OOM_KEY),
            exit,
            publisher,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a change of the state: wakes the calls that wait on it and answers the parked
    /// Waits it settled, on the thread that made the change (an exit's is the daemon's loop).
    fn notify(&self) {
        self.changed.notify_all();
        let settled: Vec<_> = {
            let mut st = self.lock();
            if st.h.waits.is_empty() {
                return;
            }
            let mut settled = Vec::new();
            let mut i = 0;
            while i < st.h.waits.len() {
                let w = &st.h.waits[i];
                match wait_answer(&st.life, &w.id, &w.exec_id) {
                    Some(res) => settled.push((st.h.waits.swap_remove(i).reply, res)),
                    None => i += 1,
                }
            }
            settled
        };
        for (reply, res) in settled {
            reply.send(res);
        }
    }

    /// The state once a Create of `id` in flight has decided: a call about the container waits
    /// for it, as with runc's shim, whose Create holds its lock. A containerd reloading after a
    /// crash asks for the pids of a task whose Create it lost track of; answering NotFound
    /// while that Create is still running made it delete a task that then came to exist.
    fn lock_settled(&self, id: &str) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        while st.life.is_reserved(id) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Routes exits the monitor reaped. Exits of pids we do not own stay in the reaper's table
    /// (a Start in flight claims them, or the core's own waits take them).
    ///
    /// An exit whose output the client has not read yet is returned instead, with the waiter
    /// of that output: the caller routes it with [`Shim::route_now`] once the output is read
    /// or [`EXIT_DRAIN_TIMEOUT`] passed. Clients close their fifos when they learn of the exit
    /// (ctr 1.6 even before waiting for EOF), which would drop the output still in the pipes
    /// and fifos.
    ///
    /// The OOM counter of a container whose init is among `exits` is read here, before its
    /// exit may wait for output: the init's death empties the cgroup, and under the systemd
    /// driver systemd then removes the scope's cgroup, counter included, within milliseconds
    /// (the kernel may deliver the counter's own change notification up to 10 ms late).
    pub fn handle_exits(&self, exits: &[Exit]) -> Vec<(Exit, DrainWaiter, Outputs)> {
        let mut st = self.lock();
        for e in exits {
            oom_at_init_exit(&mut st, e.pid);
        }
        let mut now = Vec::with_capacity(exits.len());
        let mut later = Vec::new();
        for e in exits {
            match self.undrained(&st, e.pid) {
                Some((waiter, outputs)) => {
                    st.h.held.insert(e.pid);
                    later.push((*e, waiter, outputs));
                }
                None => now.push(*e),
            }
        }
        let any = self.route_reaped(&mut st, &now);
        drop(st);
        if any {
            self.notify();
        }
        later
    }

    pub fn route_now(&self, exits: &[Exit]) {
        let mut st = self.lock();
        for e in exits {
            st.h.held.remove(&e.pid);
        }
        let any = self.route_reaped(&mut st, exits);
        drop(st);
        if any {
            self.notify();
        }
    }

    /// The output of our process `pid` and where it stands, if the client has not read all of
    /// it yet.
    fn undrained(&self, st: &State, pid: i32) -> Option<(DrainWaiter, Outputs)> {
        let (id, exec_id) = st.life.process_of(pid)?;
        let h = st.h.handles.get(id)?;
        let io = match exec_id {
            "" => h.init_io.as_ref(),
            e => h.execs.get(e).and_then(|x| x.io.as_ref()),
        }?;
        let waiter = io.drain_waiter();
        if waiter.is_done() {
            return None;
        }
        let outputs = waiter.outputs();
        Some((waiter, outputs))
    }

    /// The OOM fd registered under `key` became readable.
    pub fn handle_oom(&self, key: u64) {
        let mut st = self.lock();
        let State { life, h } = &mut *st;
        let Some(id) = h.oom_keys.get(&key).cloned() else {
            return;
        };
        let Some((_, watch)) = h.handles.get_mut(&id).and_then(|x| x.oom.as_mut()) else {
            return;
        };
        match watch.check() {
            Ok(true) => {
                log::info!("container {id}: OOM kill");
                life.oom(&id);
            }
            Ok(false) => {}
            Err(e) => {
                log::warn!("container {id}: oom watch: {e}; no longer watching");
                self.stop_oom_watch(h, &id);
            }
        }
    }

    /// Claims the exit of a process that may have died before its pid was registered (the
    /// caller registered it, then read `exited` from its pidfd, all under the lock). The
    /// reaper's table may also hold an exit of an earlier process with the same pid (pids are
    /// reused quickly and orphans' exits are kept a while), so: a live process claims
    /// nothing; a dead one is reaped now if still a zombie, which replaces any older record,
    /// and the record is then its own.
    fn claim_early_exit(&self, st: &mut State, pid: i32, exited: bool) {
        if !exited {
            return;
        }
        self.route_reaped(st, &reaper::reap_all());
        if let Some(exit) = reaper::try_take(pid) {
            self.route_exit(st, exit);
        }
    }

    /// Routes the exits of pids we own among `exits`; the rest stay in the reaper's table.
    fn route_reaped(&self, st: &mut State, exits: &[Exit]) -> bool {
        let mut any = false;
        for e in exits {
            if !st.life.owns_pid(e.pid) {
                continue;
            }
            if let Some(exit) = reaper::try_take(e.pid) {
                self.route_exit(st, exit);
                any = true;
            }
        }
        any
    }

    fn route_exit(&self, st: &mut State, exit: Exit) {
        let State { life, h } = st;
        let init_of = match life.process_of(exit.pid) {
            Some((id, "")) => Some(id.to_owned()),
            _ => None,
        };
        let mut final_check = |id: &str| final_oom(h, id);
        if let Some(actions) = life.on_exit(exit, &mut final_check) {
            self.run_actions(h, actions);
        }
        if let Some(x) = init_of.and_then(|id| h.handles.get(&id)) {
            let held = Arc::clone(&x.namespaces);
            self.publisher
                .release(Box::new(move || release_namespaces(&held)));
        }
    }

    fn run_actions(&self, h: &mut Handled, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::StopOomWatch(id) => self.stop_oom_watch(h, &id),
                Action::KillAll(id) => {
                    let Some(cell) = h.handles.get(&id).map(|x| x.container.clone()) else {
                        continue;
                    };
                    // Off this thread: the container lock may be held by a slow call.
                    let _ = std::thread::Builder::new()
                        .name("kill-all".into())
                        .spawn(move || {
                            let guard = cell.read().unwrap_or_else(|e| e.into_inner());
                            if let Some(cg) = guard.as_ref().and_then(|c| c.cgroup()) {
                                if let Err(e) = cg.kill_all(nix::sys::signal::Signal::SIGKILL) {
                                    log::warn!("container {id}: kill the rest of the cgroup: {e}");
                                }
                            }
                        });
                }
            }
        }
    }

    /// Puts `w` in the epoll set, its events naming `id`.
    fn register_oom(
        &self,
        h: &mut Handled,
        id: &str,
        w: pelagos::cgroups::OomWatch,
    ) -> Option<(u64, pelagos::cgroups::OomWatch)> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        match self
            .epoll
            .add(w.fd(), EpollEvent::new(EpollFlags::EPOLLIN, key))
        {
            Ok(()) => {
                h.oom_keys.insert(key, id.to_owned());
                Some((key, w))
            }
            Err(e) => {
                log::warn!("container {id}: watch OOM fd: {e}");
                None
            }
        }
    }

    fn stop_oom_watch(&self, h: &mut Handled, id: &str) {
        if let Some((key, w)) = h.handles.get_mut(id).and_then(|x| x.oom.take()) {
            let _ = self.epoll.delete(w.fd());
            h.oom_keys.remove(&key);
        }
    }

    fn container(&self, id: &str) -> Res<ContainerCell> {
        let st = self.lock_settled(id);
        st.life.get(id)?;
        st.h.handles
            .get(id)
            .map(|x| x.container.clone())
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()).into())
    }

    /// The first steps of every Create (see [`Prepared`]).
    fn prepare_create(&self, req: &CreateTaskRequest) -> Res<Prepared> {
        let opts =
            options::decode(req.options.as_ref()).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let spec = load_spec(std::path::Path::new(&req.bundle))
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let mounts = RootfsMounts::mount(req).map_err(|e| status(Code::UNKNOWN, e))?;
        let stdio_cfg = StdioConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let ctx = LoggerContext {
            namespace: self.namespace.clone(),
            id: req.id.clone(),
        };
        let (pio, stdio) =
            ProcessIo::open(&self.io, &stdio_cfg, &ctx).map_err(|e| status(Code::UNKNOWN, e))?;
        let config = pelagos::Config {
            systemd_cgroup: opts.systemd_cgroup,
            ..self.config.clone()
        };
        Ok(Prepared {
            opts,
            config,
            spec,
            stdio_cfg,
            pio,
            stdio,
            mounts,
        })
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Res<i32> {
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let Prepared {
            opts,
            config,
            spec,
            stdio_cfg,
            mut pio,
            stdio,
            mounts,
        } = self.prepare_create(req)?;
        let create = || -> Result<pelagos::Container, ServiceError> {
            let c = pelagos::Container::create(
                &config,
                pelagos::CreateOptions {
                    id: id.clone(),
                    bundle: bundle.clone(),
                    stdio,
                    no_pivot: opts.no_pivot_root,
                    preserve_fds: Vec::new(),
                },
            )?;
            // The pty (sized from process.consoleSize by the container's setup) is in the
            // container's devpts; its master came back over the console socket.
            if req.terminal {
                if let Err(e) = pio.receive_console() {
                    if let Err(d) = c.delete(true) {
                        log::warn!("container {id}: delete after a console failure: {d}");
                    }
                    return Err(e.into());
                }
            }
            Ok(c)
        };
        let mut container = create()
            .map_err(|e| status(Code::UNKNOWN, format!("OCI runtime create failed: {e}")))?;
        let pid = container.pid();
        let namespaces = Arc::new(Mutex::new(container.take_namespaces()));
        let oom = match container.cgroup().map(|c| c.oom_watch()) {
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                log::warn!("container {id}: no OOM events: {e}");
                None
            }
            None => None,
        };
        let kill_all = !has_private_pid_ns(&spec);

        let mut st = self.lock();
        let oom = oom.and_then(|w| self.register_oom(&mut st.h, &id, w));
        st.h.handles.insert(
            id.clone(),
            Handles {
                container: Arc::new(RwLock::new(Some(container))),
                init_io: Some(pio),
                execs: HashMap::new(),
                rootfs: mounts.keep(),
                oom,
                namespaces,
                restore: None,
            },
        );
        st.life.created(
            &id,
            bundle,
            pid,
            task_io(&stdio_cfg),
            req.rootfs.clone(),
            kill_all,
        );
        // An init killed before it was registered may have left its exit in the reaper's table.
        let init_exited =
            st.h.of(&id)?
                .container
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|c| c.pidfd())
                .is_some_and(pelagos::pidfd::exited);
        self.claim_early_exit(&mut st, pid, init_exited);
        drop(st);
        self.notify();
        log::info!("container {id} created, pid {pid}");
        Ok(pid)
    }

    fn start_init(&self, id: &str) -> Res<StartResponse> {
        let (pid, cell) = {
            let mut st = self.lock();
            let pid = st.life.begin_start(id)?;
            (pid, st.h.of(id)?.container.clone())
        };
        let restored = self.restore_at_start(id, &cell);
        let result = restored.unwrap_or_else(|| {
            match cell.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
                Some(c) => Ok(c.start()?),
                None => Err(ServiceError::Gone),
            }
        });
        let mut st = self.lock();
        let State { life, h } = &mut *st;
        let mut final_check = |i: &str| final_oom(h, i);
        let actions = life.finish_start(id, result.is_ok(), &mut final_check);
        let ended = life.ended_before_start(id);
        self.run_actions(h, actions);
        drop(st);
        self.notify();
        let pid = checkpoint::cell_pid(&cell).unwrap_or(pid);
        match (result, ended) {
            (Ok(()), _) => Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            }),
            // The core could not read how it ended (the reaping loop took the exit): say it.
            (
                Err(ServiceError::Core(pelagos::container::Error::EndedBeforeStart { .. })),
                Some(exit),
            ) => Err(LifecycleError::EndedBeforeStart {
                id: id.to_owned(),
                pid: exit.pid,
                status: exit.status,
            }
            .into()),
            (Err(e), _) => Err(status(
                Code::UNKNOWN,
                format!("OCI runtime start failed: {e}"),
            )),
        }
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Res<StartResponse> {
        let (cell, spec, stdio_cfg) = {
            let mut st = self.lock();
            st.life.begin_exec_start(id, exec_id)?;
            let h = st.h.of(id)?;
            let e = h.execs.get(exec_id).ok_or_else(|| {
                ttrpc::Error::from(LifecycleError::ExecNotFound {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                })
            })?;
            (h.container.clone(), e.spec.clone(), e.stdio.clone())
        };
        let fail = |e: ttrpc::Error| {
            self.lock().life.exec_start_failed(id, exec_id);
            self.notify();
            e
        };
        let ctx = LoggerContext {
            namespace: self.namespace.clone(),
            id: id.to_owned(),
        };
        let (mut pio, stdio) = ProcessIo::open(&self.io, &stdio_cfg, &ctx)
            .map_err(|e| fail(status(Code::UNKNOWN, e)))?;
        let result = with_container(&cell, |c| c.exec(&spec, stdio));
        // As for create: the master of the pty made in the container's devpts.
        let result = result.and_then(|ep| match stdio_cfg.terminal {
            false => Ok(ep),
            true => match pio.receive_console() {
                Ok(()) => Ok(ep),
                Err(e) => {
                    let _ = pelagos::pidfd::send_signal(ep.pidfd.as_fd(), libc::SIGKILL);
                    pelagos::reaper::wait(ep.pid, None);
                    Err(e.into())
                }
            },
        });
        let ep = match result {
            Ok(ep) => ep,
            Err(e) => {
                pio.shutdown();
                return Err(fail(status(
                    Code::UNKNOWN,
                    format!("OCI runtime exec failed: {e}"),
                )));
            }
        };
        let pid = ep.pid;
        let mut st = self.lock();
        st.life.exec_started(id, exec_id, pid);
        // Read only now, registered and under the lock: an exit the monitor reaped before
        // the registration stayed in the reaper's table, and this is its only claim.
        let exited = pelagos::pidfd::exited(ep.pidfd.as_fd());
        if let Some(eh) =
            st.h.handles
                .get_mut(id)
                .and_then(|h| h.execs.get_mut(exec_id))
        {
            eh.io = Some(pio);
            eh.pidfd = Some(ep.pidfd);
        }
        self.claim_early_exit(&mut st, pid, exited);
        drop(st);
        self.notify();
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    /// Waits (at most `timeout`) for the Shutdown of every deleted container before the daemon
    /// exits. Containers of a group are deleted concurrently: another container's Shutdown may
    /// find the shim empty while the last Delete answer is still being written, and exiting
    /// then would cut it off (containerd: "ttrpc: closed"). containerd sends a container's
    /// Shutdown only after reading its Delete answer.
    /// When the daemon should give up on a Shutdown that is not coming: it has had no container
    /// for [`ORPHAN_AFTER`] (since its start, the Delete that emptied it or a failed Create), none
    /// is being created, and containerd sent no Shutdown. containerd died in between (a
    /// restarted 1.6 loads such a shim with no task in it and never shuts it down); exiting lets
    /// containerd see a dead shim and clean its bundle up with the `delete` action, as after any
    /// shim death.
    pub fn orphan_deadline(&self) -> Option<std::time::Instant> {
        let st = self.lock();
        if !st.life.is_empty() || st.life.creating() {
            return None;
        }
        st.h.emptied_at.map(|t| t + ORPHAN_AFTER)
    }

    pub fn await_delete_answers(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.lock();
        while !st.h.awaiting_shutdown.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                log::warn!(
                    "exiting without the Shutdown of deleted {:?}",
                    st.h.awaiting_shutdown
                );
                return;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Routes the exits of `id`'s processes that were reaped but held back for output nobody
    /// has read yet (see [`Shim::handle_exits`]): a client deleting the task is done reading.
    /// containerd 1.7 and later, reloading after a restart, delete a task whose processes are
    /// all gone; refusing that as "running" would leak its mounts, cgroups and this shim.
    fn route_held_exits(&self, st: &mut State, id: &str) {
        let Ok(task) = st.life.get(id) else {
            return;
        };
        // Execs first: an init exit is held while execs are in flight.
        let pids: Vec<i32> = task
            .execs
            .values()
            .map(|p| p.pid)
            .chain(std::iter::once(task.init.pid))
            .filter(|&pid| pid > 0)
            .collect();
        for pid in pids {
            self.route_held_exit(st, pid);
        }
    }

    /// Routes `pid`'s exit if it is held back for output (see [`Shim::route_held_exits`]).
    fn route_held_exit(&self, st: &mut State, pid: i32) {
        // Only a held exit: the table may also keep an old exit of a reused pid.
        if st.h.held.remove(&pid) {
            if let Some(exit) = reaper::try_take(pid) {
                self.route_exit(st, exit);
            }
        }
    }

    fn delete_init(&self, id: &str) -> Res<DeleteResponse> {
        let (started, handles) = {
            let mut st = self.lock_settled(id);
            self.route_held_exits(&mut st, id);
            let started = st.life.begin_delete(id)?;
            let State { h, .. } = &mut *st;
            self.stop_oom_watch(h, id);
            (started, h.handles.remove(id))
        };
        if let Some(h) = handles {
            // Gone before Delete answers, as with an init that held none: the snapshotter may
            // remove the rootfs next.
            release_namespaces(&h.namespaces);
            if let Some(io) = h.init_io {
                if started {
                    drain_before_delete(&io, &format!("container {id}"));
                }
                io.shutdown();
            }
            for (_, e) in h.execs {
                if let Some(io) = e.io {
                    io.shutdown();
                }
            }
            let container = h
                .container
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(c) = container {
                // A created init was never ours to report: kill it (the core reaps it).
                if let Err(e) = c.delete(!started) {
                    log::error!("container {id}: delete: {e}");
                }
            }
            if let Some(rootfs) = h.rootfs {
                if let Err(e) = mount::unmount_recursive(&rootfs) {
                    log::error!("container {id}: {e}");
                }
            }
        }
        let d = {
            let mut st = self.lock();
            let d = st.life.finish_delete(id);
            if d.is_some() {
                st.h.awaiting_shutdown.insert(id.to_owned());
            }
            if st.life.is_empty() {
                st.h.emptied_at = Some(std::time::Instant::now());
            }
            d
        };
        self.notify();
        self.exit.wake();
        let d = d.ok_or_else(|| ttrpc::Error::from(LifecycleError::NotFound(id.to_owned())))?;
        log::info!("container {id} deleted");
        Ok(DeleteResponse {
            pid: d.pid as u32,
            exit_status: d.status,
            exited_at: Some(timestamp(d.at)).into(),
            ..Default::default()
        })
    }

    fn delete_exec(&self, id: &str, exec_id: &str) -> Res<DeleteResponse> {
        let (d, io) = {
            let mut st = self.lock();
            // A client deleting an exec is done reading its output, as for the init.
            let pid = st
                .life
                .get(id)
                .ok()
                .and_then(|t| t.execs.get(exec_id))
                .map(|p| p.pid);
            if let Some(pid) = pid.filter(|&p| p > 0) {
                self.route_held_exit(&mut st, pid);
            }
            let d = st.life.delete_exec(id, exec_id)?;
            let io =
                st.h.handles
                    .get_mut(id)
                    .and_then(|h| h.execs.remove(exec_id))
                    .and_then(|e| e.io);
            (d, io)
        };
        self.notify();
        if let Some(io) = io {
            drain_before_delete(&io, &format!("exec {exec_id} of {id}"));
            io.shutdown();
        }
        Ok(DeleteResponse {
            pid: d.pid.max(0) as u32,
            exit_status: d.status,
            exited_at: Some(timestamp(d.at)).into(),
            ..Default::default()
        })
    }
}

/// Queues TaskOOM now if `pid` is a container's init and its cgroup's OOM counter moved; the
/// exit's own last check (`final_oom`) then finds nothing new.
fn oom_at_init_exit(st: &mut State, pid: i32) {
    let State { life, h } = st;
    let Some((id, "")) = life.process_of(pid) else {
        return;
    };
    let id = id.to_owned();
    if final_oom(h, &id) {
        log::info!("container {id}: OOM kill (seen at the init's exit)");
        life.oom(&id);
    }
}

fn final_oom(h: &mut Handled, id: &str) -> bool {
    h.handles
        .get_mut(id)
        .and_then(|x| x.oom.as_mut())
        .map(|(_, w)| w.check().unwrap_or(false))
        .unwrap_or(false)
}

/// Wait's answer for `id`/`exec_id`: the exit once the process has one, an error once it is
/// unknown (deleted, never created), nothing while it runs.
fn wait_answer(life: &Lifecycle, id: &str, exec_id: &str) -> Option<Res<WaitResponse>> {
    let p = match life.get(id).and_then(|t| t.proc(exec_id)) {
        Ok(p) => p,
        Err(e) => return Some(Err(e.into())),
    };
    if p.status != Status::Stopped {
        return None;
    }
    let e = p.exit.unwrap_or(Exit {
        pid: p.pid,
        status: 0,
        at: SystemTime::now(),
    });
    Some(Ok(WaitResponse {
        exit_status: e.status as u32,
        exited_at: Some(timestamp(e.at)).into(),
        ..Default::default()
    }))
}

fn task_io(c: &StdioConfig) -> TaskIO {
    TaskIO {
        stdin: c.stdin.clone(),
        stdout: c.stdout.clone(),
        stderr: c.stderr.clone(),
        terminal: c.terminal,
        ..Default::default()
    }
}

fn load_spec(bundle: &std::path::Path) -> Result<Spec, ServiceError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| ServiceError::Spec {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // The core's parser names the file, line, column and value that is wrong.
    Ok(pelagos::spec::parse(&bytes, &path)?)
}

/// Whether the container gets a pid namespace of its own (runc's ShouldKillAllOnExit is the
/// opposite): without one, its processes outlive the init unless killed.
pub fn has_private_pid_ns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        })
        .unwrap_or(false)
}

fn pack<M: crate::any::Named>(m: &M) -> Res<Any> {
    crate::any::pack(m).map_err(|e| status(Code::INTERNAL, e))
}

fn kill_error(e: pelagos::container::Error) -> ttrpc::Error {
    match e {
        pelagos::container::Error::NotRunning(_) => {
            log::debug!("kill: {e}");
            status(Code::NOT_FOUND, "process already finished")
        }
        e => status(Code::UNKNOWN, format!("unknown error after kill: {e}")),
    }
}

impl server::Park for Shim {
    /// Takes every Wait: containerd keeps one pending per process, and a thread each (one
    /// per exec probe, one per container for its life) cost a spawn per exec and a wake-up of
    /// every waiter at every change of the state.
    fn park(&self, req: &ttrpc::Request, reply: Reply) -> Result<(), Reply> {
        use containerd_shim_protos::protobuf::Message;
        if req.method != "Wait" {
            return Err(reply);
        }
        let Ok(w) = WaitRequest::parse_from_bytes(&req.payload) else {
            return Err(reply);
        };
        let mut st = self.lock();
        match wait_answer(&st.life, &w.id, &w.exec_id) {
            Some(res) => {
                drop(st);
                reply.send(res);
            }
            None => st.h.waits.push(ParkedWait {
                id: w.id,
                exec_id: w.exec_id,
                reply,
            }),
        }
        Ok(())
    }

    fn hung_up(&self, conn: u64) {
        let gone: Vec<_> = {
            let mut st = self.lock();
            let (gone, kept) = std::mem::take(&mut st.h.waits)
                .into_iter()
                .partition(|w| w.reply.conn() == conn);
            st.h.waits = kept;
            gone
        };
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_containerd_enum() {
        assert_eq!(api_status(Status::Created), ApiStatus::CREATED);
        assert_eq!(api_status(Status::Running), ApiStatus::RUNNING);
        assert_eq!(api_status(Status::Pausing), ApiStatus::PAUSING);
        assert_eq!(api_status(Status::Paused), ApiStatus::PAUSED);
        assert_eq!(api_status(Status::Stopped), ApiStatus::STOPPED);
    }

    #[test]
    fn lifecycle_errors_carry_grpc_codes() {
        let code = |e: LifecycleError| match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(LifecycleError::NotFound("x".into())), Code::NOT_FOUND);
        assert_eq!(
            code(LifecycleError::ExecExists {
                id: "c".into(),
                exec_id: "e".into()
            }),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code(LifecycleError::InitNotRunning("c".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code(LifecycleError::BadState {
                action: "start",
                state: "running"
            }),
            Code::UNKNOWN
        );
    }

    #[test]
    fn error_texts_are_runc_shims() {
        let message = |e: ttrpc::Error| match e {
            ttrpc::Error::RpcStatus(s) => s.message().to_string(),
            other => panic!("{other:?}"),
        };
        let bad = |action, state| message(LifecycleError::BadState { action, state }.into());
        assert_eq!(bad("exec in", "stopped"), "cannot exec in a stopped state");
        assert_eq!(bad("pause", "paused"), "cannot pause a paused container");
        assert_eq!(
            bad("resume", "stopped"),
            "cannot resume a stopped container"
        );
        assert_eq!(
            bad("pause", "created"),
            "cannot pause task in created state"
        );
        assert_eq!(bad("resume", "running"), "cannot resume a running process");
        assert_eq!(bad("start", "stopped"), "cannot start a stopped process");
        let exists = LifecycleError::ExecExists {
            id: "c".into(),
            exec_id: "e2".into(),
        };
        assert_eq!(message(exists.into()), "id e2: already exists");
        let missing = LifecycleError::ExecNotFound {
            id: "c".into(),
            exec_id: "nope".into(),
        };
        assert_eq!(
            message(missing.into()),
            "process does not exist nope: not found"
        );
        let gone = status(Code::NOT_FOUND, "process already finished: not found");
        assert_eq!(message(gone), "process already finished: not found");
        assert_eq!(message(status(Code::UNKNOWN, "boom")), "boom");
    }

    #[test]
    fn kill_all_follows_the_pid_namespace() {
        let spec = |ns: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"linux":{{"namespaces":[{ns}]}}}}"#
            ))
            .unwrap()
        };
        assert!(has_private_pid_ns(&spec(
            r#"{"type":"pid"},{"type":"mount"}"#
        )));
        assert!(!has_private_pid_ns(&spec(r#"{"type":"mount"}"#)));
        assert!(!has_private_pid_ns(&spec(
            r#"{"type":"pid","path":"/proc/1/ns/pid"}"#
        )));
    }

    #[test]
    fn gone_processes_are_not_found() {
        let code = |e: ttrpc::Error| match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        };
        use pelagos::container::Error;
        assert_eq!(
            code(kill_error(Error::NotRunning("c1".into()))),
            Code::NOT_FOUND
        );
        let denied = Error::Sys {
            op: "signal 9 to container c1 init".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(code(kill_error(denied)), Code::UNKNOWN);
    }
}
