//! The shim's ttrpc server: a thread per busy connection reads each request and answers it on
//! that thread; a connection quiet for [`IDLE`] gives its thread up until its next request.
//! Only a call that may wait for long, or needs a deep stack, runs on a thread
//! of its own (see [`blocks`]), so the calls containerd multiplexes on its connection keep
//! being answered meanwhile.
//!
//! ttrpc-rust's sync server hands every request from a reader thread to a worker pool and
//! every answer to a writer thread: three or more threads per connection and two hand-offs per
//! call, most of an exec probe's CPU in the shim (BENCHMARKS.md, "What each change bought").
//!
//! A call that waits for an event (Wait) can be taken over by a [`Park`]: it keeps the
//! request's [`Reply`] and answers when the event comes, and no thread waits meanwhile.
//!
//! The wire format is containerd/ttrpc's: a 10-byte header (payload length and stream id, u32
//! big-endian; message type; flags), then the protobuf `Request` or `Response`. The handlers
//! are the ones ttrpc-rust generates for the Task service; they answer through the context's
//! channel, which the calling thread then writes to the socket.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::StartRequest;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use ttrpc::proto::{
    Codec, MessageHeader, Request, Response, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX,
    MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use ttrpc::{Code, ConnectionContext, MethodHandler, TtrpcContext};

pub type Handler = Box<dyn MethodHandler + Send + Sync>;
/// Handlers by path, `/<service>/<method>`.
pub type Methods = HashMap<String, Handler>;

/// How long accepting pauses after a failure that is not the client's (out of fds, threads).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection's thread waits for the next request before it leaves the connection
/// to the accept thread's epoll and ends. containerd keeps a connection per container, idle
/// most of the time, and each thread keeps ~20 KiB of stack; a call after a quiet spell pays
/// for a thread start (tens of microseconds, against milliseconds for an exec).
const IDLE: Duration = Duration::from_secs(1);
/// How long the server stays quiet (no thread serving) before it hands the heap's free pages
/// back to the kernel (see [`Served::wake`]).
const TRIM_AFTER: Duration = Duration::from_millis(100);
/// The listener's key in the accept thread's epoll; connections' keys are their ids (from 1).
const LISTENER_KEY: u64 = 0;
/// The key of [`Served::wake`] in the accept thread's epoll.
const WAKE_KEY: u64 = u64::MAX;
/// What the reader asks of the socket at a time: a request and the next one's header in one
/// read, most of the time.
const READ_BUF: usize = 8 << 10;

/// Takes over the requests that wait for an event, so that no thread waits with them.
pub trait Park: Send + Sync {
    /// Keeps `req` to answer it through `reply` later (or at once), or gives `reply` back for
    /// the request to be served as any other.
    fn park(&self, req: &Request, reply: Reply) -> Result<(), Reply>;
    /// Connection `conn` has closed: its parked requests will never be read; drop them.
    fn hung_up(&self, conn: u64);
}

/// The answer owed to one request. Dropping it leaves the request unanswered.
pub struct Reply {
    conn: Arc<Conn>,
    stream: u32,
}

impl Reply {
    /// The connection the request came on (see [`Park::hung_up`]).
    pub fn conn(&self) -> u64 {
        self.conn.id
    }

    /// Answers with `res`, encoded as ttrpc-rust's generated handlers do.
    pub fn send<M: Message>(self, res: ttrpc::Result<M>) {
        let res = match res.and_then(|m| {
            m.write_to_bytes()
                .map_err(|e| ttrpc::Error::Others(format!("encode the answer: {e}")))
        }) {
            Ok(payload) => {
                let mut r = Response::new();
                r.set_status(ttrpc::get_status(Code::OK, ""));
                r.payload = payload;
                r
            }
            Err(ttrpc::Error::RpcStatus(s)) => ttrpc::Error::RpcStatus(s).into(),
            Err(e) => {
                ttrpc::Error::RpcStatus(ttrpc::get_status(Code::UNKNOWN, format!("{e:?}"))).into()
            }
        };
        self.conn.answer(self.stream, res);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("ttrpc server: start the accept thread: {0}")]
    Thread(std::io::Error),
    #[error("ttrpc server: epoll for the listener: {0}")]
    Epoll(nix::Error),
    #[error("ttrpc server: the accept thread's wake-up eventfd: {0}")]
    Wake(nix::Error),
}

/// Calls that may wait for long: Wait until its process exits, when no [`Park`] took it
/// (containerd keeps one pending per process, and CRI calls Start of an exec after its Wait), Delete for the output to be
/// read, Checkpoint for CRIU, and the Start of an init, which runs its poststart hooks or a
/// CRIU restore (runc's shim answers other calls meanwhile). The others are short (an exec's
/// Start), except Create.
///
/// Create is the deepest call (the spec, the mounts, the setup helper's start): run on the
/// connection's thread, it left ~90 KiB of that thread's stack touched for the connection's
/// life, and containerd keeps one connection per container. A thread that ends gives its stack
/// pages back (glibc drops them at thread exit).
fn blocks(req: &Request) -> bool {
    match req.method.as_str() {
        "Wait" | "Delete" | "Checkpoint" | "Create" => true,
        "Start" => StartRequest::parse_from_bytes(&req.payload).is_ok_and(|s| s.exec_id.is_empty()),
        _ => false,
    }
}

/// Serves `methods` on every connection `listener` accepts until the process exits;
/// `park` takes over the requests it wants (see [`Park`]). A connection has a thread while it
/// is busy (see [`IDLE`]); the accept thread watches the listener and the idle connections.
pub fn start(
    listener: UnixListener,
    methods: Methods,
    park: Option<Arc<dyn Park>>,
) -> Result<(), ServerError> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ServerError::Epoll)?;
    epoll
        .add(
            &listener,
            EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_KEY),
        )
        .map_err(ServerError::Epoll)?;
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(ServerError::Wake)?;
    epoll
        .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_KEY))
        .map_err(ServerError::Wake)?;
    let served = Arc::new(Served {
        methods,
        park,
        epoll,
        idle: Mutex::new(HashMap::new()),
        threads: AtomicUsize::new(0),
        wake,
    });
    std::thread::Builder::new()
        .name("ttrpc-accept".into())
        .stack_size(64 << 10)
        .spawn(move || accept(&listener, &served))
        .map_err(ServerError::Thread)?;
    Ok(())
}

struct Served {
    methods: Methods,
    park: Option<Arc<dyn Park>>,
    /// The listener ([`LISTENER_KEY`]) and the idle connections (by id).
    epoll: Epoll,
    idle: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connection and call threads running.
    threads: AtomicUsize,
    /// Written by the last thread to end. Its calls' freed heap stays resident (glibc trims
    /// only the top of the heap, and only past 128 KiB; a thread's cache of freed chunks goes
    /// back to the heap as it ends): a pod's shim idled with ~90 KiB of free but touched heap.
    /// Once no thread has served for [`TRIM_AFTER`] after that, the accept thread gives those
    /// pages back with `malloc_trim`.
    wake: EventFd,
}

impl Served {
    /// Starts a connection or call thread running `f`; it gives its stack back as it ends.
    fn spawn(
        self: &Arc<Self>,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        self.threads.fetch_add(1, Ordering::SeqCst);
        let served = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                f();
                if served.threads.fetch_sub(1, Ordering::SeqCst) == 1 {
                    // Full or failed only if a wake-up is pending already.
                    let _ = served.wake.write(1);
                }
                drop(served);
                release_stack();
            });
        if spawned.is_err() {
            self.threads.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }

    /// Leaves `conn` to the accept thread until its next request (or hang-up). False when
    /// epoll refused it: its thread serves on.
    fn go_idle(&self, conn: &Arc<Conn>) -> bool {
        self.idle_conns().insert(conn.id, Arc::clone(conn));
        let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, conn.id);
        match self.epoll.add(&conn.stream, ev) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("ttrpc: watch an idle connection: {e}");
                self.idle_conns().remove(&conn.id);
                false
            }
        }
    }

    fn idle_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn accept(listener: &UnixListener, served: &Arc<Served>) {
    let mut events = [EpollEvent::empty(); 8];
    let mut timeout = EpollTimeout::NONE;
    loop {
        let n = match served.epoll.wait(&mut events, timeout) {
            // Quiet for TRIM_AFTER since the last thread ended. A thread started since then
            // wakes us again as it ends.
            Ok(0) => {
                timeout = EpollTimeout::NONE;
                if served.threads.load(Ordering::SeqCst) == 0 {
                    // SAFETY: malloc_trim only returns free heap pages to the kernel.
                    unsafe { libc::malloc_trim(0) };
                }
                continue;
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("ttrpc: epoll_wait: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        for ev in &events[..n] {
            if ev.data() == LISTENER_KEY {
                accept_one(listener, served);
                continue;
            }
            if ev.data() == WAKE_KEY {
                let _ = served.wake.read();
                timeout = EpollTimeout::try_from(TRIM_AFTER).unwrap_or(EpollTimeout::NONE);
                continue;
            }
            let Some(conn) = served.idle_conns().remove(&ev.data()) else {
                continue;
            };
            if let Err(e) = served.epoll.delete(&conn.stream) {
                log::warn!("ttrpc: stop watching a connection: {e}");
            }
            run(served, conn);
        }
    }
}

fn accept_one(listener: &UnixListener, served: &Arc<Served>) {
    // std accepts with SOCK_CLOEXEC: no container's helper inherits a connection.
    match listener.accept() {
        Ok((stream, _)) => run(served, Conn::new(stream)),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(e) => {
            log::warn!("ttrpc: accept: {e}");
            std::thread::sleep(ACCEPT_BACKOFF);
        }
    }
}

/// Serves `conn` on a thread of its own until it hangs up or goes idle.
fn run(served: &Arc<Served>, conn: Arc<Conn>) {
    let (s, c) = (Arc::clone(served), Arc::clone(&conn));
    let spawned = served.spawn("ttrpc-conn", move || {
        if c.clone().serve(&s) == End::HungUp {
            hung_up(&s, &c);
        }
    });
    if let Err(e) = spawned {
        // The connection closes once no parked call holds it: the client sees it go.
        log::warn!("ttrpc: no thread for a connection: {e}");
        hung_up(served, &conn);
        std::thread::sleep(ACCEPT_BACKOFF);
    }
}

/// Gives back the touched pages of the calling thread's stack below its caller's frame, as the
/// thread ends. glibc keeps an ended thread's stack for the next thread and drops only what
/// lies 16 KiB or more below the exit frame, so every cached stack kept what its thread had
/// touched near the top, ~20 KiB (three a pod: as much as the live threads).
fn release_stack() {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: fills `attr` for the calling thread; it is destroyed below.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return;
    }
    let (mut lo, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: `attr` was initialised above; getstack only reads it.
    unsafe {
        libc::pthread_attr_getstack(attr.as_ptr(), &mut lo, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
    }
    // SAFETY: sysconf only reads a configuration value.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let here = &size as *const usize as usize;
    // A page of margin below this frame for the madvise call itself.
    let end = here.saturating_sub(page) & !(page - 1);
    let start = lo as usize;
    if size == 0 || end <= start || end > start + size {
        return;
    }
    // SAFETY: [start, end) is this thread's own stack below the live frames (the stack grows
    // down): nothing there is in use, and the kernel gives zeroed pages if it is touched again.
    unsafe { libc::madvise(lo, end - start, libc::MADV_DONTNEED) };
}

fn hung_up(served: &Served, conn: &Conn) {
    if let Some(park) = &served.park {
        park.hung_up(conn.id);
    }
}

#[derive(PartialEq)]
enum End {
    HungUp,
    Idle,
}

/// Numbers the connections for [`Reply::conn`].
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

struct Conn {
    id: u64,
    stream: UnixStream,
    /// Held while one frame is written: answers from several threads never interleave.
    writing: Mutex<()>,
    ctx: Arc<ConnectionContext>,
}

impl Conn {
    fn new(stream: UnixStream) -> Arc<Conn> {
        Arc::new(Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            stream,
            writing: Mutex::new(()),
            ctx: Arc::new(ConnectionContext::default()),
        })
    }

    /// Reads requests until the client hangs up or breaks the framing, or sends nothing
    /// for [`IDLE`].
    // Not inlined: its frame is then gone when the thread gives its stack back.
    #[inline(never)]
    fn serve(self: Arc<Self>, served: &Arc<Served>) -> End {
        let mut rd = BufReader::with_capacity(READ_BUF, &self.stream);
        loop {
            if rd.buffer().is_empty() && !self.readable_within(IDLE) && served.go_idle(&self) {
                return End::Idle;
            }
            let mut h = [0u8; MESSAGE_HEADER_LENGTH];
            if rd.read_exact(&mut h).is_err() {
                return End::HungUp; // hung up, or a header cut short
            }
            let mh = MessageHeader::from(&h);
            let len = mh.length as usize;
            if len > MESSAGE_LENGTH_MAX {
                // Read past it (never allocating what it claims), and answer like ttrpc.
                let skipped = std::io::copy(&mut (&mut rd).take(len as u64), &mut std::io::sink());
                if skipped.ok() != Some(len as u64) {
                    return End::HungUp;
                }
                if mh.type_ == MESSAGE_TYPE_REQUEST {
                    self.fail(
                        mh.stream_id,
                        format!("message length {len} exceeds the maximum message size of {MESSAGE_LENGTH_MAX}"),
                    );
                }
                continue;
            }
            let mut body = vec![0u8; len];
            if rd.read_exact(&mut body).is_err() {
                return End::HungUp;
            }
            // Responses and data frames are not for a server; ttrpc ignores them too.
            if mh.type_ == MESSAGE_TYPE_REQUEST {
                self.dispatch(served, mh, &body);
            }
        }
    }

    /// Whether the client sent something (or hung up) within `timeout`.
    fn readable_within(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the connection's fd, which `self` keeps open.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        // An error (EINTR) says nothing: the blocking read that follows finds out.
        n != 0
    }

    fn dispatch(self: &Arc<Self>, served: &Arc<Served>, mh: MessageHeader, body: &[u8]) {
        let req = match <Request as Codec>::decode(body) {
            Ok(req) => req,
            Err(e) => return self.fail(mh.stream_id, format!("bad request: {e}")),
        };
        let path = format!("/{}/{}", req.service, req.method);
        if !served.methods.contains_key(&path) {
            return self.fail(mh.stream_id, format!("{path} does not exist"));
        }
        if let Some(park) = &served.park {
            let reply = Reply {
                conn: Arc::clone(self),
                stream: mh.stream_id,
            };
            if park.park(&req, reply).is_ok() {
                return;
            }
        }
        if !blocks(&req) {
            return self.call(&served.methods, &path, mh, req);
        }
        let (conn, s) = (Arc::clone(self), Arc::clone(served));
        let spawned = served.spawn("ttrpc-call", move || {
            conn.call(&s.methods, &path, mh, req);
        });
        if let Err(e) = spawned {
            log::warn!("ttrpc: no thread for a call: {e}");
            let status = ttrpc::get_status(Code::RESOURCE_EXHAUSTED, format!("no thread: {e}"));
            self.answer(mh.stream_id, ttrpc::Error::RpcStatus(status).into());
        }
    }

    /// Runs the handler of `path` and writes what it answered.
    #[inline(never)]
    fn call(&self, methods: &Methods, path: &str, mh: MessageHeader, req: Request) {
        let Some(handler) = methods.get(path) else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let ctx = TtrpcContext {
            fd: self.stream.as_raw_fd(),
            // Nothing cancels a call here: a client that goes away is seen by the calls
            // that wait (Wait looks at the connection).
            cancel_rx: crossbeam_channel::never(),
            mh,
            res_tx: tx,
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: Arc::clone(&self.ctx),
        };
        // A panic (logged by the daemon's hook) must not leave the client waiting for ever.
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handler(ctx, req))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("ttrpc: {path}: {e}"),
            Err(_) => {
                let status =
                    ttrpc::get_status(Code::INTERNAL, format!("{path}: the shim panicked"));
                self.answer(mh.stream_id, ttrpc::Error::RpcStatus(status).into());
                return;
            }
        }
        // The handler has returned, and dropped the context's sender with it.
        for (mh, payload) in rx.try_iter() {
            self.write(mh, &payload);
        }
    }

    /// Answers request `stream` with an INVALID_ARGUMENT status, as Go's ttrpc does for a
    /// request it cannot serve.
    fn fail(&self, stream: u32, msg: String) {
        let status = ttrpc::get_status(Code::INVALID_ARGUMENT, msg);
        self.answer(stream, ttrpc::Error::RpcStatus(status).into());
    }

    fn answer(&self, stream: u32, res: Response) {
        match res.encode() {
            Ok(payload) => self.write(
                MessageHeader {
                    length: payload.len() as u32,
                    stream_id: stream,
                    type_: MESSAGE_TYPE_RESPONSE,
                    flags: 0,
                },
                &payload,
            ),
            Err(e) => log::warn!("ttrpc: encode an answer: {e}"),
        }
    }

    fn write(&self, mh: MessageHeader, payload: &[u8]) {
        let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + payload.len());
        frame.extend_from_slice(&mh.length.to_be_bytes());
        frame.extend_from_slice(&mh.stream_id.to_be_bytes());
        frame.extend_from_slice(&[mh.type_, mh.flags]);
        frame.extend_from_slice(payload);
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = (&self.stream).write_all(&frame) {
            // The client has gone: its reader sees the hang-up too.
            log::debug!("ttrpc: answer stream {}: {e}", mh.stream_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;

    /// Answers OK once `gate` gives it a go (at once without one), saying its method's name.
    struct Fake {
        name: &'static str,
        gate: Option<Mutex<Receiver<()>>>,
    }

    impl MethodHandler for Fake {
        fn handler(&self, ctx: TtrpcContext, _: Request) -> ttrpc::Result<()> {
            if let Some(gate) = &self.gate {
                let _ = gate.lock().unwrap().recv();
            }
            if self.name == "Boom" {
                panic!("boom");
            }
            let mut res = Response::new();
            res.set_status(ttrpc::get_status(Code::OK, self.name));
            ctx.respond(ctx.mh.stream_id, res)
        }
    }

    fn request(stream: u32, method: &str) -> Vec<u8> {
        let mut req = Request::new();
        req.service = "t.T".into();
        req.method = method.into();
        let body = req.encode().unwrap();
        let mut frame = Vec::new();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
        frame.extend_from_slice(&body);
        frame
    }

    /// The next answer: (stream, status code, status message).
    fn answer(conn: &mut UnixStream) -> (u32, Code, String) {
        let mut h = [0u8; MESSAGE_HEADER_LENGTH];
        conn.read_exact(&mut h).unwrap();
        let mh = MessageHeader::from(&h);
        assert_eq!(mh.type_, MESSAGE_TYPE_RESPONSE);
        let mut body = vec![0u8; mh.length as usize];
        conn.read_exact(&mut body).unwrap();
        let res = <Response as Codec>::decode(&body).unwrap();
        let status = res.status();
        (mh.stream_id, status.code(), status.message().to_owned())
    }

    #[test]
    fn the_calls_that_may_wait_long_get_a_thread() {
        let req = |method: &str, exec_id: &str| {
            let mut r = Request::new();
            r.method = method.into();
            let mut s = StartRequest::new();
            s.id = "c1".into();
            s.exec_id = exec_id.into();
            r.payload = s.write_to_bytes().unwrap();
            r
        };
        assert!(
            blocks(&req("Start", "")),
            "the init's Start runs hooks or a restore"
        );
        assert!(!blocks(&req("Start", "probe")), "an exec's Start is short");
        assert!(blocks(&req("Wait", "probe")));
        assert!(
            blocks(&req("Create", "")),
            "Create is deep: its stack must not stay"
        );
        assert!(!blocks(&req("State", "")));
    }

    /// Parks every Wait; counts the connections that hung up.
    #[derive(Default)]
    struct Parker {
        parked: Mutex<Vec<Reply>>,
        hung_up: Mutex<Vec<u64>>,
    }

    impl Park for Parker {
        fn park(&self, req: &Request, reply: Reply) -> Result<(), Reply> {
            if req.method != "Wait" {
                return Err(reply);
            }
            self.parked.lock().unwrap().push(reply);
            Ok(())
        }

        fn hung_up(&self, conn: u64) {
            self.hung_up.lock().unwrap().push(conn);
        }
    }

    #[test]
    fn a_parked_wait_is_answered_by_whoever_holds_its_reply() {
        let dir = std::env::temp_dir().join(format!("pelagos-park-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let mut methods = Methods::new();
        let fake = |name| Box::new(Fake { name, gate: None }) as Handler;
        methods.insert("/t.T/Wait".into(), fake("Wait"));
        methods.insert("/t.T/State".into(), fake("State"));
        let parker = Arc::new(Parker::default());
        let park: Arc<dyn Park> = parker.clone();
        start(UnixListener::bind(&path).unwrap(), methods, Some(park)).unwrap();
        let mut conn = UnixStream::connect(&path).unwrap();

        conn.write_all(&request(1, "Wait")).unwrap();
        conn.write_all(&request(3, "State")).unwrap();
        assert_eq!(answer(&mut conn), (3, Code::OK, "State".into()));
        let reply = parker
            .parked
            .lock()
            .unwrap()
            .pop()
            .expect("the Wait was parked");
        let id = reply.conn();
        reply.send::<StartRequest>(Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            Code::NOT_FOUND,
            "gone",
        ))));
        assert_eq!(answer(&mut conn), (1, Code::NOT_FOUND, "gone".into()));

        drop(conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !parker.hung_up.lock().unwrap().contains(&id) {
            assert!(std::time::Instant::now() < deadline, "no hung_up({id})");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_idle_connection_is_served_again_and_its_hang_up_seen() {
        let dir = std::env::temp_dir().join(format!("pelagos-idle-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let mut methods = Methods::new();
        methods.insert(
            "/t.T/State".into(),
            Box::new(Fake {
                name: "State",
                gate: None,
            }) as Handler,
        );
        let parker = Arc::new(Parker::default());
        let park: Arc<dyn Park> = parker.clone();
        start(UnixListener::bind(&path).unwrap(), methods, Some(park)).unwrap();
        let mut conn = UnixStream::connect(&path).unwrap();
        for stream in [1, 3] {
            conn.write_all(&request(stream, "State")).unwrap();
            assert_eq!(answer(&mut conn), (stream, Code::OK, "State".into()));
            // Past the idle limit: the connection's thread is gone, the accept thread wakes
            // the connection at its next request.
            std::thread::sleep(IDLE + Duration::from_millis(300));
        }
        assert!(parker.hung_up.lock().unwrap().is_empty());
        drop(conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while parker.hung_up.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle connection's hang-up was not seen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pending_wait_does_not_hold_up_the_connection() {
        let dir = std::env::temp_dir().join(format!("pelagos-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let (go, gate) = mpsc::channel();
        let mut methods = Methods::new();
        let fake = |name, gate| Box::new(Fake { name, gate }) as Handler;
        methods.insert("/t.T/Wait".into(), fake("Wait", Some(Mutex::new(gate))));
        methods.insert("/t.T/State".into(), fake("State", None));
        methods.insert("/t.T/Boom".into(), fake("Boom", None));
        start(UnixListener::bind(&path).unwrap(), methods, None).unwrap();
        let mut conn = UnixStream::connect(&path).unwrap();

        conn.write_all(&request(1, "Wait")).unwrap();
        conn.write_all(&request(3, "State")).unwrap();
        assert_eq!(answer(&mut conn), (3, Code::OK, "State".into()));
        conn.write_all(&request(5, "Nope")).unwrap();
        let (stream, code, msg) = answer(&mut conn);
        assert_eq!((stream, code), (5, Code::INVALID_ARGUMENT), "{msg}");
        assert!(msg.contains("/t.T/Nope"), "{msg}");
        conn.write_all(&request(7, "Boom")).unwrap();
        assert_eq!(answer(&mut conn).1, Code::INTERNAL);
        go.send(()).unwrap();
        assert_eq!(answer(&mut conn), (1, Code::OK, "Wait".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
