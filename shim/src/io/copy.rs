//! The copy loop: one epoll thread per shim that moves the bytes of every process's stdio.
//!
//! A job copies one source fd into one destination fd until EOF. Both fds are registered
//! edge-triggered (source for input, destination for output), so a job is pumped only when one
//! of its ends changed state and it pumps until `EAGAIN`: no interest lists to flip, no thread
//! per stream. Bytes move with splice(2) when the kernel can (pipe to pipe, pipe to tty, tty to
//! pipe); a pair splice refuses (an `O_APPEND` file, two non-pipes) falls back to read/write
//! through a buffer. A job that still has data after its turn budget is requeued, so one busy
//! stream cannot starve the others.
//!
//! An output copy into a fifo does not end at the source's EOF: it lingers, holding its drain
//! token, first until the client has read what is still buffered in the fifo, then (the fifo
//! closed, so the client sees EOF) until the client has closed its reader, which a client does
//! once it has written out what it read. ctr 1.6 closes its fifos and exits as soon as it
//! learns of the exit, without waiting for its copies, so "drained" must mean "consumed by the
//! client", not "handed to the kernel"; the exit is published only after that (see the
//! service). A copy whose client is gone (`ctr run -d` returned) does not linger: there is
//! nobody to wait for.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::IoError;

/// Bytes asked of one splice(2) call; a pipe moves at most its capacity anyway.
const CHUNK: usize = 1 << 20;
/// A splice that moved this much found the source pipe full (the default capacity): the
/// stream is a bulk one and its pipes are grown to [`BULK_PIPE_SIZE`].
const FULL_DEFAULT_PIPE: usize = 64 << 10;
/// Pipe capacity for bulk streams: 1 GiB through pipe and fifo went from ~1.6 to ~3.2 GiB/s
/// (256 KiB and 1 MiB measured alike). Pipes start at the default 64 KiB because capacity
/// counts against the owner's pipe-user-pages-soft even while empty, and past it the
/// unprivileged processes of that uid (root in most containers) get 8 KiB pipes.
const BULK_PIPE_SIZE: i32 = 256 << 10;
/// Bytes one job may move per turn before the others get theirs.
const TURN_BUDGET: usize = 4 << 20;
/// Buffer for the read/write fallback.
const FALLBACK_BUF: usize = 64 << 10;
const WAKE_TOKEN: u64 = u64::MAX;
const INOTIFY_TOKEN: u64 = u64::MAX - 1;
/// How often a lingering copy looks at its fifo. A pipe wakes its writers when it stops being
/// full, never when it becomes empty, so emptiness can only be polled; this runs only while a
/// client reads the last bytes of a stream.
const LINGER_POLL: Duration = Duration::from_millis(2);
/// How often a copy whose fifo is closed on our side looks for the client's reader to go.
/// Its going is an inotify event (the close of a read-only fd); this only catches a reader
/// opened read-write (its close is not watched, see [`check_lingering`]) and the stall limit.
const READER_POLL: Duration = Duration::from_millis(20);
/// A lingering copy whose client made no progress for this long gives up: the client holds
/// the fifo open but does not read it, or keeps it open past EOF.
const LINGER_STALL: Duration = Duration::from_secs(1);
/// How long a fifo no client has opened yet stays open after EOF, waiting for the client.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

/// Where the outputs of one process stand (see [`IoLoop::outputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// No process writes them any more: they end once copied out and read.
    Ending,
    /// Another process still holds one open (a child left running); `unread` bytes written so
    /// far have not been read by the client yet.
    HeldOpen { unread: usize },
}

/// Run once when the last pending output of a process is done.
pub(crate) type OnDrained = Box<dyn FnOnce() + Send>;

/// Counts the output copies of one process that have not reached EOF yet.
#[derive(Default)]
pub(crate) struct Drain {
    pending: Mutex<usize>,
    done: Condvar,
    /// Called by whoever drops the last token. Tokens are dropped with the copy loop's or the
    /// service's locks held, so a callback must not block or take those locks.
    on_done: Mutex<Vec<OnDrained>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("pending", &*lock(&self.pending))
            .finish_non_exhaustive()
    }
}

impl Drain {
    /// A token counted as pending until dropped.
    pub(crate) fn token(self: &Arc<Self>) -> DrainToken {
        *lock(&self.pending) += 1;
        DrainToken(Arc::clone(self))
    }

    /// Whether every token has been dropped.
    pub(crate) fn is_done(&self) -> bool {
        *lock(&self.pending) == 0
    }

    /// Calls `f` once every token is dropped: at once (on this thread) if none is pending,
    /// else on the thread that drops the last one.
    pub(crate) fn on_done(&self, f: OnDrained) {
        let pending = lock(&self.pending);
        if *pending == 0 {
            drop(pending);
            f();
            return;
        }
        // Registered under the count's lock, so the last drop cannot slip in between.
        lock(&self.on_done).push(f);
    }

    /// Waits until every token is dropped, at most `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = lock(&self.pending);
        while *pending > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            pending = self
                .done
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

#[derive(Debug)]
pub(crate) struct DrainToken(Arc<Drain>);

impl Drop for DrainToken {
    fn drop(&mut self) {
        let mut pending = lock(&self.0.pending);
        *pending -= 1;
        if *pending > 0 {
            return;
        }
        self.0.done.notify_all();
        let callbacks = std::mem::take(&mut *lock(&self.0.on_done));
        drop(pending);
        for f in callbacks {
            f();
        }
    }
}

/// The pty master of a process, shared between the loop (which closes it on a stdin hangup)
/// and `ProcessIo::resize`.
pub(crate) type Console = Arc<Mutex<Option<OwnedFd>>>;

/// What happens when a job's source reaches EOF, besides closing both of its fds.
#[derive(Debug)]
pub(crate) enum OnEof {
    Close,
    /// stdin of a terminal ended: close the console like runc's shim does, which hangs up the
    /// slave. The owner's console output is drained as far as it is readable first.
    HangUp(Console),
}

/// A copy to run: `src` into `dst` until EOF. Both fds must be nonblocking (or never block:
/// regular files) and belong to the job alone (dup a shared fd: epoll registers per fd).
#[derive(Debug)]
pub(crate) struct JobSpec {
    pub name: &'static str,
    pub src: OwnedFd,
    pub dst: OwnedFd,
    pub on_eof: OnEof,
    /// Counts this job as output that `wait_drained` waits for; dropped with the job.
    #[allow(dead_code)] // held only for its Drop
    pub drain: Option<DrainToken>,
    /// The job reads the console (a stdin hangup drains and ends it).
    pub reads_console: bool,
    /// A client has had the destination fifo open for reading. Until one has, output left in
    /// the fifo at EOF waits for one to read it (up to [`LINGER_STALL`]): the client opens its
    /// reader concurrently with the create or exec (ctr opens it in a goroutine), and a quick
    /// process can be done before it does. Seen: a reader when the shim opened the fifo, or an
    /// open of it before EOF (see `Job::arrival`).
    pub client_seen: bool,
}

struct Job {
    spec: JobSpec,
    owner: u64,
    /// `None` while splice works for this pair; the fallback buffer and its pending range.
    fallback: Option<(Box<[u8]>, usize, usize)>,
    /// The pipes were grown (or found bulk once already).
    grown: bool,
    /// The destination is full (a log file on a full filesystem): chunks are being dropped.
    dropping: bool,
    /// An output copy into a fifo: a path-only handle on it (neither reader nor writer) to
    /// see the client's reader go once the copy itself has closed the fifo.
    probe: Option<OwnedFd>,
    /// The copy's own read side of the fifo was given up before EOF (see
    /// [`Job::stuck_at_end`]): `dst` is write-only.
    write_only: bool,
    /// The source reported a hangup: no writer is left (a pty: its slave is closed).
    src_hup: bool,
    /// Past EOF: what the job waits for, and since when the client made no progress.
    linger: Option<(Linger, Instant)>,
    /// The inotify watch on the fifo that reports the client closing its reader, once the
    /// job waits for that (`Some(None)`: could not watch, polled instead).
    watch: Option<Option<Watch>>,
    /// Until EOF, while no client was seen: the inotify watch that reports the fifo being
    /// opened, which only the client does meanwhile (see [`JobSpec::client_seen`]).
    arrival: Option<Watch>,
}

/// Removed with the job. Two jobs on one fifo share the kernel's watch, so the first to go
/// leaves the other to [`READER_POLL`].
struct Watch(Arc<Inotify>, WatchDescriptor);

impl Drop for Watch {
    fn drop(&mut self) {
        // EINVAL: the fifo was deleted and the kernel dropped the watch already.
        let _ = self.0.rm_watch(self.1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// The client has these bytes left to read in the fifo.
    Unread(usize),
    /// The fifo is closed on this side; the client's reader is still open.
    Reader,
}

enum Step {
    /// Both ends would block: wait for an edge.
    Wait,
    /// Both ends would block, the source has no writer left, and the fifo is full: `dst` is
    /// to become this write-only fd (see [`Job::stuck_at_end`]).
    Reopened(OwnedFd),
    /// Turn budget used up with data still flowing.
    Yield,
    /// EOF or an error: the job is over.
    Done,
    /// EOF, but the client has not read everything out of the destination fifo yet.
    Linger,
}

enum Moved {
    Bytes(usize),
    Eof,
}

impl Job {
    fn pump(&mut self) -> Step {
        let mut moved = 0usize;
        while moved < TURN_BUDGET {
            let result = match self.fallback {
                None => self.splice_once(),
                Some(_) => self.copy_once(),
            };
            match result {
                Ok(Moved::Bytes(n)) => {
                    if n >= FULL_DEFAULT_PIPE && !self.grown {
                        self.grow();
                    }
                    moved += n;
                }
                Ok(Moved::Eof) => return self.at_eof(),
                Err(Errno::EAGAIN) => return self.stuck_at_end(),
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL) if self.fallback.is_none() => {
                    log::debug!(
                        "io {}: splice refused, copying through a buffer",
                        self.spec.name
                    );
                    self.fallback = Some((vec![0u8; FALLBACK_BUF].into_boxed_slice(), 0, 0));
                }
                // A failed splice consumed nothing; the buffered copy drops what cannot be
                // written (see `copy_once`).
                Err(Errno::ENOSPC | Errno::EDQUOT) if self.fallback.is_none() => {
                    self.fallback = Some((vec![0u8; FALLBACK_BUF].into_boxed_slice(), 0, 0));
                }
                // EIO: a pty whose other side is gone; EPIPE: the reader of the container's
                // stdin exited. Both end the stream.
                Err(e @ (Errno::EIO | Errno::EPIPE)) => {
                    log::debug!("io {}: stream ended: {e}", self.spec.name);
                    return Step::Done;
                }
                Err(e) => {
                    log::warn!("io {}: copy failed: {e}", self.spec.name);
                    return Step::Done;
                }
            }
        }
        Step::Yield
    }

    /// Both ends would block. If the source has no writer left (the process is gone) and still
    /// holds data, it is the fifo that is full, and only a client can empty it: the copy gives
    /// up its own read side, as at EOF, so that a client that is gone (`ctr run -d` returned,
    /// a client died) shows, and the copy ends. runc's shim reports such an exit at once, and
    /// its Delete drops what is left; waiting here held the exit 5 s and Delete 10 s more.
    /// A client still there keeps reading through the write-only fd as before.
    fn stuck_at_end(&mut self) -> Step {
        let Some(probe) = &self.probe else {
            return Step::Wait;
        };
        // A client not seen yet may still come for what is in the fifo (see `linger_done`).
        if self.write_only || !self.spec.client_seen || !self.src_hup {
            return Step::Wait;
        }
        if unread(&self.spec.src) == 0 && self.fallback.as_ref().is_none_or(|(_, s, e)| s == e) {
            return Step::Wait;
        }
        match open_writer(probe) {
            Ok(writer) => Step::Reopened(writer),
            Err(e) => {
                log::debug!("io {}: reopen the fifo write-only: {e}", self.spec.name);
                Step::Wait
            }
        }
    }

    fn at_eof(&mut self) -> Step {
        // From here on the job opens the fifo itself.
        self.arrival = None;
        let Some(probe) = &self.probe else {
            return Step::Done;
        };
        // The copy held the fifo read-write so that nothing written with no client attached
        // was lost. From here on only a client reads it, and [`has_reader`] can tell whether
        // one is there.
        if !self.write_only {
            match open_writer(probe) {
                Ok(writer) => self.spec.dst = writer,
                Err(e) => log::debug!("io {}: reopen the fifo write-only: {e}", self.spec.name),
            }
        }
        self.linger = Some((Linger::Unread(usize::MAX), Instant::now()));
        match self.linger_done(Instant::now()) {
            true => Step::Done,
            false => Step::Linger,
        }
    }

    /// A lingering job: done once the client has read the fifo empty and closed its reader,
    /// as soon as no client has the fifo open, or when the client made no progress for
    /// [`LINGER_STALL`].
    fn linger_done(&mut self, now: Instant) -> bool {
        let Some((mut phase, mut since)) = self.linger else {
            return true;
        };
        if let Linger::Unread(left) = phase {
            match unread(&self.spec.dst) {
                // No client has opened the fifo yet (it opens it concurrently with the create
                // or exec: containerd's ExecSync in a goroutine). Closing now would leave its
                // open, which blocks until a writer comes, blocked for ever: the exec probe
                // hangs. So the writer stays until a reader shows up, as runc's shim opens the
                // fifo for writing only once the client has it open.
                0 if !self.spec.client_seen && !self.probe.as_ref().is_some_and(has_reader) => {
                    if now.duration_since(since) >= CLIENT_WAIT {
                        log::warn!(
                            "io {}: no client opened the fifo within {CLIENT_WAIT:?}; closing",
                            self.spec.name
                        );
                        return true;
                    }
                    self.linger = Some((phase, since));
                    return false;
                }
                0 => {
                    // Closing the fifo here is the client's EOF; dst becomes the probe.
                    if let Some(probe) = self.probe.take() {
                        drop(std::mem::replace(&mut self.spec.dst, probe));
                    }
                    (phase, since) = (Linger::Reader, now);
                }
                n => {
                    // The client is gone (`ctr run -d` returned, a client died): runc's shim
                    // reports such an exit at once, and so does this one. One not seen yet may
                    // still come. (A reader found now is no proof of a client: a process the
                    // shim is forking holds the shim's fds for a moment.)
                    if self.spec.client_seen && !self.probe.as_ref().is_some_and(has_reader) {
                        return true;
                    }
                    if n != left {
                        (phase, since) = (Linger::Unread(n), now);
                    }
                }
            }
        }
        if phase == Linger::Reader && !has_reader(&self.spec.dst) {
            return true;
        }
        // Output a client that has not come yet will read: the fifo stays open for it as above.
        let awaited = matches!(phase, Linger::Unread(_))
            && !self.spec.client_seen
            && !self.probe.as_ref().is_some_and(has_reader);
        let stall = if awaited { CLIENT_WAIT } else { LINGER_STALL };
        if now.duration_since(since) >= stall {
            log::warn!(
                "io {}: the client made no progress within {stall:?} ({}); closing",
                self.spec.name,
                match phase {
                    Linger::Unread(n) => format!("{n} bytes unread"),
                    Linger::Reader => "reader still open after eof".into(),
                }
            );
            return true;
        }
        self.linger = Some((phase, since));
        false
    }

    /// Best effort: a tty or file end refuses (EINVAL/EBADF), a pipe over the limits refuses
    /// (EPERM); the copy goes on at the old size.
    fn grow(&mut self) {
        self.grown = true;
        for fd in [&self.spec.src, &self.spec.dst] {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(BULK_PIPE_SIZE));
        }
        log::debug!("io {}: bulk stream, pipes grown", self.spec.name);
    }

    fn splice_once(&mut self) -> Result<Moved, Errno> {
        // SAFETY: splice only reads and writes the two fds, which this job owns and keeps open
        // for the call; null offsets mean "use the file position" (pipes and ttys have none).
        let n = unsafe {
            libc::splice(
                self.spec.src.as_raw_fd(),
                std::ptr::null_mut(),
                self.spec.dst.as_raw_fd(),
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        match Errno::result(n)? {
            0 => Ok(Moved::Eof),
            n => Ok(Moved::Bytes(n as usize)),
        }
    }

    fn copy_once(&mut self) -> Result<Moved, Errno> {
        let (buf, start, end) = self.fallback.as_mut().expect("fallback buffer");
        if *start == *end {
            let n = nix::unistd::read(&self.spec.src, buf)?;
            if n == 0 {
                return Ok(Moved::Eof);
            }
            (*start, *end) = (0, n);
        }
        let n = match nix::unistd::write(&self.spec.dst, &buf[*start..*end]) {
            // A full log file must not reach the container: ending the copy would close the
            // pipe, and its writers would die of SIGPIPE. The chunk is dropped, the next one
            // tried, so the log resumes once there is room (as Docker's json-file log does).
            Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => {
                if !self.dropping {
                    log::warn!(
                        "io {}: dropping output until there is room: {e}",
                        self.spec.name
                    );
                    self.dropping = true;
                }
                let dropped = *end - *start;
                *start = *end;
                return Ok(Moved::Bytes(dropped));
            }
            r => r?,
        };
        if self.dropping {
            log::info!("io {}: writing output again", self.spec.name);
            self.dropping = false;
        }
        if n == 0 {
            return Err(Errno::EAGAIN);
        }
        *start += n;
        Ok(Moved::Bytes(n))
    }
}

struct State {
    jobs: HashMap<u64, Job>,
    /// Jobs that stopped on their budget rather than on EAGAIN: no edge will come for them.
    ready: VecDeque<u64>,
    /// Jobs past EOF waiting for the client to empty their fifo.
    lingering: Vec<u64>,
}

struct Shared {
    epoll: Epoll,
    wake: EventFd,
    /// Reports clients closing fifo readers; `None` if the kernel refused one.
    inotify: Option<Arc<Inotify>>,
    stop: AtomicBool,
    state: Mutex<State>,
    next_id: AtomicU64,
}

/// The process-wide copy thread. Dropping the last handle stops the thread and closes every
/// fd it still holds.
pub struct IoLoop {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for IoLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoLoop").finish_non_exhaustive()
    }
}

impl IoLoop {
    /// Starts the copy thread.
    pub fn start() -> Result<Arc<IoLoop>, IoError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(IoError::Epoll)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(IoError::Epoll)?;
        epoll
            .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN))
            .map_err(IoError::Epoll)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| {
                epoll.add(&i, EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN))?;
                Ok(Arc::new(i))
            })
            .map_err(|e| log::warn!("io loop: inotify: {e}; lingering copies poll"))
            .ok();
        let shared = Arc::new(Shared {
            epoll,
            wake,
            inotify,
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                jobs: HashMap::new(),
                ready: VecDeque::new(),
                lingering: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pelagos-io".into())
            .spawn(move || run(&thread_shared))
            .map_err(IoError::Thread)?;
        Ok(Arc::new(IoLoop {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// A fresh owner id grouping the jobs of one process.
    pub(crate) fn new_owner(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `specs` under `owner`. On error none of them is left registered and all their
    /// fds are closed.
    pub(crate) fn add(&self, owner: u64, specs: Vec<JobSpec>) -> Result<(), IoError> {
        if specs.is_empty() {
            return Ok(());
        }
        let mut state = lock(&self.shared.state);
        let mut added = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let probe = match spec.drain.is_some() && is_fifo(&spec.dst) {
                true => path_handle(&spec.dst),
                false => None,
            };
            let arrival = match (&probe, spec.client_seen) {
                (Some(p), false) => watch(&self.shared, p, AddWatchFlags::IN_OPEN),
                _ => None,
            };
            let job = Job {
                spec,
                owner,
                fallback: None,
                grown: false,
                dropping: false,
                probe,
                write_only: false,
                src_hup: false,
                linger: None,
                watch: None,
                arrival,
            };
            if let Err(e) = register(&self.shared.epoll, id, &job) {
                unregister(&self.shared.epoll, &job);
                for id in added {
                    if let Some(job) = state.jobs.remove(&id) {
                        unregister(&self.shared.epoll, &job);
                    }
                }
                return Err(e);
            }
            state.jobs.insert(id, job);
            state.ready.push_back(id);
            added.push(id);
        }
        drop(state);
        // A job whose fds cannot be polled (regular files) gets no edge; the first pump
        // happens through the ready queue.
        self.wake();
        Ok(())
    }

    /// Where the outputs of `owner` stand. An output is held open while its copy has not
    /// reached EOF and its source reports no hangup (a pipe with no writer left, or a pty
    /// master whose slave is closed, reports POLLHUP even while data is still in it).
    pub(crate) fn outputs(&self, owner: u64) -> Outputs {
        let state = lock(&self.shared.state);
        let mut outputs = Outputs::Ending;
        for j in state.jobs.values() {
            if j.owner != owner || j.spec.drain.is_none() || j.linger.is_some() {
                continue;
            }
            if hung_up(&j.spec.src) {
                continue;
            }
            let in_fifo = match j.probe {
                Some(_) => unread(&j.spec.dst),
                None => 0,
            };
            let unread = unread(&j.spec.src) + in_fifo;
            outputs = match outputs {
                Outputs::HeldOpen { unread: n } => Outputs::HeldOpen { unread: n + unread },
                Outputs::Ending => Outputs::HeldOpen { unread },
            };
        }
        outputs
    }

    /// Stops and closes every job of `owner`. Returns once their fds are closed.
    pub(crate) fn remove_owner(&self, owner: u64) {
        let mut state = lock(&self.shared.state);
        let ids: Vec<u64> = state
            .jobs
            .iter()
            .filter(|(_, j)| j.owner == owner)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(job) = state.jobs.remove(&id) {
                unregister(&self.shared.epoll, &job);
            }
        }
    }

    /// Number of jobs still running (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn job_count(&self) -> usize {
        lock(&self.shared.state).jobs.len()
    }

    fn wake(&self) {
        if let Err(e) = self.shared.wake.write(1) {
            // EAGAIN: the counter is saturated, the loop is awake anyway.
            if e != Errno::EAGAIN {
                log::warn!("io loop: cannot wake the copy thread: {e}");
            }
        }
    }
}

impl Drop for IoLoop {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                log::error!("io loop: copy thread panicked");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn token(id: u64, is_dst: bool) -> u64 {
    (id << 1) | u64::from(is_dst)
}

fn register(epoll: &Epoll, id: u64, job: &Job) -> Result<(), IoError> {
    let ends = [
        (&job.spec.src, EpollFlags::EPOLLIN, false),
        (&job.spec.dst, EpollFlags::EPOLLOUT, true),
    ];
    for (fd, flags, is_dst) in ends {
        let event = EpollEvent::new(flags | EpollFlags::EPOLLET, token(id, is_dst));
        match epoll.add(fd.as_fd(), event) {
            // Regular files and /dev/null cannot be polled: they never block either.
            Ok(()) | Err(Errno::EPERM) => {}
            Err(e) => return Err(IoError::Epoll(e)),
        }
    }
    Ok(())
}

fn unregister(epoll: &Epoll, job: &Job) {
    // ENOENT (never registered) and EPERM (not pollable) are expected here.
    let _ = epoll.delete(job.spec.src.as_fd());
    let _ = epoll.delete(job.spec.dst.as_fd());
}

fn run(shared: &Shared) {
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        // Checked before every wait: the wake-up that came with the stop may have been read by
        // the turn that was running when it came.
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let timeout = {
            let state = lock(&shared.state);
            if !state.ready.is_empty() {
                EpollTimeout::ZERO
            } else if !state.lingering.is_empty() {
                let watched = |id: &u64| {
                    state
                        .jobs
                        .get(id)
                        .is_some_and(|j| matches!(j.watch, Some(Some(_))))
                };
                let every = match state.lingering.iter().all(watched) {
                    true => READER_POLL,
                    false => LINGER_POLL,
                };
                EpollTimeout::try_from(every).unwrap_or(EpollTimeout::ZERO)
            } else {
                EpollTimeout::NONE
            }
        };
        let n = match shared.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("io loop: epoll_wait failed: {e}; copy thread stops");
                break;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut state = lock(&shared.state);
        // Inotify first: a client that opened its fifo before its process's output ended must
        // be seen before that end is.
        if events[..n].iter().any(|e| e.data() == INOTIFY_TOKEN) {
            read_inotify(shared, &mut state);
        }
        for event in &events[..n] {
            match event.data() {
                WAKE_TOKEN => {
                    let _ = shared.wake.read();
                }
                INOTIFY_TOKEN => {}
                t => {
                    if t & 1 == 0 && event.events().contains(EpollFlags::EPOLLHUP) {
                        if let Some(job) = state.jobs.get_mut(&(t >> 1)) {
                            job.src_hup = true;
                        }
                    }
                    pump(shared, &mut state, t >> 1)
                }
            }
        }
        let queued = std::mem::take(&mut state.ready);
        for id in queued {
            pump(shared, &mut state, id);
        }
        if !state.lingering.is_empty() {
            check_lingering(shared, &mut state);
        }
    }
    let mut state = lock(&shared.state);
    for (_, job) in state.jobs.drain() {
        unregister(&shared.epoll, &job);
    }
}

fn pump(shared: &Shared, state: &mut State, id: u64) {
    let Some(job) = state.jobs.get_mut(&id) else {
        return; // removed since the event was queued
    };
    // Past EOF since the event was queued (the source's and the fifo's events can come in one
    // batch): only `check_lingering` looks at it now. Pumped again, its splice into a fifo
    // with no reader would fail with EPIPE and end it with the client's output unread.
    if job.linger.is_some() {
        return;
    }
    match job.pump() {
        Step::Wait => {}
        Step::Reopened(writer) => {
            let _ = shared.epoll.delete(job.spec.dst.as_fd());
            job.spec.dst = writer;
            job.write_only = true;
            if job.probe.as_ref().is_some_and(has_reader) {
                // The client reads on: its reads wake the writer as they woke the copy's
                // read-write fd; its going is an EPOLLERR, and the splice then fails (EPIPE).
                let event =
                    EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLET, token(id, true));
                if let Err(e) = shared.epoll.add(job.spec.dst.as_fd(), event) {
                    log::warn!("io {}: watch the reopened fifo: {e}", job.spec.name);
                    state.ready.push_back(id);
                }
                return;
            }
            log::debug!(
                "io {}: the process is gone, its output fills the fifo and no client reads it; dropping {} bytes",
                job.spec.name,
                unread(&job.spec.src) + unread(&job.spec.dst)
            );
            finish(shared, state, id);
        }
        Step::Yield => state.ready.push_back(id),
        Step::Linger => {
            // The source is at EOF: only the fifo matters now, and it is polled.
            let _ = shared.epoll.delete(job.spec.src.as_fd());
            let _ = shared.epoll.delete(job.spec.dst.as_fd());
            state.lingering.push(id);
        }
        Step::Done => finish(shared, state, id),
    }
}

fn finish(shared: &Shared, state: &mut State, id: u64) {
    let job = state.jobs.remove(&id).expect("job present");
    unregister(&shared.epoll, &job);
    log::debug!("io {}: done", job.spec.name);
    if let OnEof::HangUp(console) = &job.spec.on_eof {
        hang_up(shared, state, job.owner, console);
    }
}

/// Ends the lingering jobs whose fifo was read empty (or was given up on); closing the fifo
/// is the client's EOF.
fn check_lingering(shared: &Shared, state: &mut State) {
    let now = Instant::now();
    let State {
        jobs, lingering, ..
    } = state;
    lingering.retain(|id| {
        let Some(job) = jobs.get_mut(id) else {
            return false; // removed by its owner
        };
        let mut done = job.linger_done(now);
        if !done && job.watch.is_none() && job.linger.is_some_and(|(p, _)| p == Linger::Reader) {
            // Closes of fds opened for writing are not watched: the job's own [`has_reader`]
            // check opens one, and would wake the loop again after every check.
            job.watch = Some(watch(
                shared,
                &job.spec.dst,
                AddWatchFlags::IN_CLOSE_NOWRITE,
            ));
            // The reader may have gone before the watch existed.
            done = job.linger_done(now);
        }
        if !done {
            return true;
        }
        log::debug!("io {}: done", job.spec.name);
        jobs.remove(id);
        false
    });
}

/// Watches the fifo behind the path handle `probe` for `events`.
fn watch(shared: &Shared, probe: &OwnedFd, events: AddWatchFlags) -> Option<Watch> {
    let inotify = shared.inotify.as_ref()?;
    let path = format!("/proc/self/fd/{}", probe.as_raw_fd());
    match inotify.add_watch(path.as_str(), events) {
        Ok(wd) => Some(Watch(Arc::clone(inotify), wd)),
        Err(e) => {
            log::debug!("io: watch {path} for {events:?}: {e}; polling");
            None
        }
    }
}

/// Reads the inotify events: a fifo opened is the client arriving for the jobs that wait for
/// theirs; a reader closed only wakes the loop (the lingering jobs are checked after).
fn read_inotify(shared: &Shared, state: &mut State) {
    let Some(inotify) = &shared.inotify else {
        return;
    };
    while let Ok(events) = inotify.read_events() {
        if events.is_empty() {
            break;
        }
        for e in events
            .iter()
            .filter(|e| e.mask.contains(AddWatchFlags::IN_OPEN))
        {
            for job in state.jobs.values_mut() {
                if job.arrival.as_ref().is_some_and(|w| w.1 == e.wd) {
                    job.spec.client_seen = true;
                    job.arrival = None;
                }
            }
        }
    }
}

fn hung_up(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => true,
    }
}

/// Bytes written into a pipe or fifo and not read yet (0 for anything else).
fn unread(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// Whether the fifo behind the path handle `probe` has a reader: opening it for writing
/// without blocking fails with ENXIO exactly when it has none. The probe writer is closed at
/// once; a client blocked in read sees EOF when it goes (pipe_release wakes the readers).
fn has_reader(probe: &OwnedFd) -> bool {
    open_writer(probe).is_ok()
}

/// A non-blocking write-only fd on the fifo behind the path handle `probe`; ENXIO when the
/// fifo has no reader.
fn open_writer(probe: &OwnedFd) -> nix::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", probe.as_raw_fd());
    let flags = nix::fcntl::OFlag::O_WRONLY
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_CLOEXEC
        | nix::fcntl::OFlag::O_NOCTTY;
    nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty())
}

/// A path-only handle on the file behind `fd`: it counts as neither a reader nor a writer.
fn path_handle(fd: &OwnedFd) -> Option<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
    nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()).ok()
}

fn is_fifo(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
        .unwrap_or(false)
}

/// Ends the console of `owner`: copies out what its output job can read right now, then closes
/// every master fd so the slave side is hung up.
fn hang_up(shared: &Shared, state: &mut State, owner: u64, console: &Console) {
    let ids: Vec<u64> = state
        .jobs
        .iter()
        .filter(|(_, j)| j.owner == owner && j.spec.reads_console)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(mut job) = state.jobs.remove(&id) {
            while let Step::Yield = job.pump() {}
            unregister(&shared.epoll, &job);
        }
    }
    lock(console).take();
}
