//! Task events and their delivery to containerd.
//!
//! Every event goes through ONE queue drained by ONE thread, so containerd sees them in the order
//! they were queued (the lifecycle code queues them in the order the protocol requires). The
//! thread forwards each event with `containerd.services.events.ttrpc.v1.Events/Forward` over
//! containerd's ttrpc socket (`TTRPC_ADDRESS`). When containerd is away (restarting) it
//! reconnects and retries with a growing pause, like Go's publisher, then drops the event.
//!
//! The client is a minimal unary ttrpc client on a blocking socket: requests are strictly
//! sequential here, so the generic client's two extra threads per connection buy nothing.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_RESPONSE};

/// How many times one event is tried before it is dropped, and the per-try timeout.
const MAX_TRIES: u32 = 6;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after the events queued before it a [`Publisher::release`] runs: time for containerd
/// to hand those events to its subscribers before the release's work (a container's mount tree
/// going) competes with it for the CPUs.
const RELEASE_DELAY: Duration = Duration::from_millis(20);
/// Largest response accepted from containerd (a Forward answer is an empty message).
const MAX_RESPONSE: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events: connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("events: forward to containerd: {0}")]
    Io(#[from] std::io::Error),
    #[error("events: encode {0}")]
    Encode(#[from] containerd_shim_protos::protobuf::Error),
    #[error("events: containerd answered code {code}: {message}")]
    Status { code: i32, message: String },
    #[error("events: bad response from containerd: {0}")]
    Protocol(String),
}

/// One task event, as containerd's `containerd.events.Task*` messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Exit(TaskExit),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Delete(TaskDelete),
}

impl Event {
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Oom(_) => "/tasks/oom",
            Event::Exit(_) => "/tasks/exit",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
            Event::Delete(_) => "/tasks/delete",
        }
    }

    pub fn container_id(&self) -> &str {
        match self {
            Event::Create(e) => &e.container_id,
            Event::Start(e) => &e.container_id,
            Event::ExecAdded(e) => &e.container_id,
            Event::ExecStarted(e) => &e.container_id,
            Event::Oom(e) => &e.container_id,
            Event::Exit(e) => &e.container_id,
            Event::Paused(e) => &e.container_id,
            Event::Resumed(e) => &e.container_id,
            Event::Delete(e) => &e.container_id,
        }
    }

    /// The identifying fields, for the log.
    pub fn summary(&self) -> String {
        match self {
            Event::Create(e) => format!("container={} pid={}", e.container_id, e.pid),
            Event::Start(e) => format!("container={} pid={}", e.container_id, e.pid),
            Event::ExecAdded(e) => format!("container={} exec={}", e.container_id, e.exec_id),
            Event::ExecStarted(e) => format!(
                "container={} exec={} pid={}",
                e.container_id, e.exec_id, e.pid
            ),
            Event::Oom(e) => format!("container={}", e.container_id),
            Event::Exit(e) => format!(
                "container={} id={} pid={} status={}",
                e.container_id, e.id, e.pid, e.exit_status
            ),
            Event::Paused(e) => format!("container={}", e.container_id),
            Event::Resumed(e) => format!("container={}", e.container_id),
            Event::Delete(e) => format!(
                "container={} pid={} status={}",
                e.container_id, e.pid, e.exit_status
            ),
        }
    }

    /// The event as an `Any` whose type URL is the message's full protobuf name, which is
    /// how containerd's typeurl registry knows the `containerd.events.*` types.
    pub fn to_any(&self) -> Result<Any, EventsError> {
        fn pack<M: crate::any::Named>(m: &M) -> Result<Any, EventsError> {
            Ok(crate::any::pack(m)?)
        }
        match self {
            Event::Create(m) => pack(m),
            Event::Start(m) => pack(m),
            Event::ExecAdded(m) => pack(m),
            Event::ExecStarted(m) => pack(m),
            Event::Oom(m) => pack(m),
            Event::Exit(m) => pack(m),
            Event::Paused(m) => pack(m),
            Event::Resumed(m) => pack(m),
            Event::Delete(m) => pack(m),
        }
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

enum Item {
    Event(Queued),
    /// Run [`RELEASE_DELAY`] after every event queued before it was forwarded (or given up on).
    Release(Release),
}

/// Work put off until containerd has the events (see [`Publisher::release`]).
pub type Release = Box<dyn FnOnce() + Send>;

struct Queued {
    event: Event,
    at: SystemTime,
}

/// The sending side of the queue. Cloneable handles are not needed: the service owns it.
pub struct Publisher {
    tx: Mutex<Option<Sender<Item>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Starts the forwarding thread for containerd at `ttrpc_address` (a path or `unix://`).
    /// An empty address (no containerd to talk to) drops events after logging them.
    pub fn start(ttrpc_address: String, namespace: String) -> std::io::Result<Publisher> {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("events".into())
            .stack_size(64 * 1024)
            .spawn(move || forward_loop(rx, &ttrpc_address, &namespace))?;
        Ok(Publisher {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `event`, stamped now. Never blocks.
    pub fn publish(&self, event: Event) {
        let at = SystemTime::now();
        log::debug!("event {} {}", event.topic(), event.summary());
        self.send(Item::Event(Queued { event, at }));
    }

    /// Runs `release` on the forwarding thread, [`RELEASE_DELAY`] after containerd has every
    /// event queued so far.
    pub fn release(&self, release: Release) {
        self.send(Item::Release(release));
    }

    fn send(&self, item: Item) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(item);
        }
    }

    /// Closes the queue and waits until every queued event was delivered or given up on.
    pub fn flush_and_stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn forward_loop(rx: Receiver<Item>, address: &str, namespace: &str) {
    let mut client: Option<Client> = None;
    let mut releases: VecDeque<(Instant, Release)> = VecDeque::new();
    loop {
        let now = Instant::now();
        while releases.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, release)) = releases.pop_front() {
                release();
            }
        }
        let item = match releases.front() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some((due, _)) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        let q = match item {
            Ok(Item::Event(q)) => q,
            Ok(Item::Release(release)) => {
                releases.push_back((Instant::now() + RELEASE_DELAY, release));
                continue;
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                releases.into_iter().for_each(|(_, release)| release());
                break;
            }
        };
        let req = match envelope(&q, namespace) {
            Ok(r) => r,
            Err(e) => {
                log::error!("dropping event {}: {e}", q.event.topic());
                continue;
            }
        };
        if address.is_empty() {
            log::warn!("no containerd ttrpc address: dropping {}", q.event.topic());
            continue;
        }
        let mut tries = 0;
        loop {
            crate::failpoint::hold("Publish", q.event.container_id());
            tries += 1;
            let result = match client.as_mut() {
                Some(c) => c.forward(&req),
                None => Client::connect(address).and_then(|c| {
                    let c = client.insert(c);
                    c.forward(&req)
                }),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    // A status answer means containerd got it and refused: retrying cannot help.
                    if let EventsError::Status { .. } = e {
                        log::error!("containerd refused event {}: {e}", q.event.topic());
                        break;
                    }
                    client = None;
                    if tries >= MAX_TRIES {
                        log::error!(
                            "dropping event {} after {tries} tries: {e}",
                            q.event.topic()
                        );
                        break;
                    }
                    log::warn!("publish {} (try {tries}): {e}", q.event.topic());
                    std::thread::sleep(Duration::from_secs(tries as u64));
                }
            }
        }
    }
}

fn envelope(q: &Queued, namespace: &str) -> Result<Vec<u8>, EventsError> {
    let env = Envelope {
        timestamp: Some(timestamp(q.at)).into(),
        namespace: namespace.to_owned(),
        topic: q.event.topic().to_owned(),
        event: Some(q.event.to_any()?).into(),
        ..Default::default()
    };
    let fwd = ForwardRequest {
        envelope: Some(env).into(),
        ..Default::default()
    };
    Ok(fwd.write_to_bytes()?)
}

/// A connection to containerd's ttrpc socket, one request at a time.
struct Client {
    sock: UnixStream,
    next_stream: u32,
}

impl Client {
    fn connect(address: &str) -> Result<Client, EventsError> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let sock = UnixStream::connect(path).map_err(|source| EventsError::Connect {
            addr: address.to_owned(),
            source,
        })?;
        sock.set_read_timeout(Some(FORWARD_TIMEOUT))?;
        sock.set_write_timeout(Some(FORWARD_TIMEOUT))?;
        Ok(Client {
            sock,
            next_stream: 1,
        })
    }

    fn forward(&mut self, payload: &[u8]) -> Result<(), EventsError> {
        let req = ttrpc::Request {
            service: "containerd.services.events.ttrpc.v1.Events".into(),
            method: "Forward".into(),
            payload: payload.to_vec(),
            timeout_nano: FORWARD_TIMEOUT.as_nanos() as i64,
            ..Default::default()
        };
        let body = req.write_to_bytes()?;
        let stream = self.next_stream;
        // Client-initiated streams are odd.
        self.next_stream = self.next_stream.wrapping_add(2);
        let mut frame: Vec<u8> = MessageHeader::new_request(stream, body.len() as u32).into();
        frame.extend_from_slice(&body);
        self.sock.write_all(&frame)?;

        loop {
            let mut hdr = [0u8; MESSAGE_HEADER_LENGTH];
            self.sock.read_exact(&mut hdr)?;
            let mh = MessageHeader::from(hdr);
            if mh.length > MAX_RESPONSE {
                return Err(EventsError::Protocol(format!(
                    "frame of {} bytes",
                    mh.length
                )));
            }
            let mut buf = vec![0u8; mh.length as usize];
            self.sock.read_exact(&mut buf)?;
            if mh.type_ != MESSAGE_TYPE_RESPONSE || mh.stream_id != stream {
                continue;
            }
            let resp = ttrpc::Response::parse_from_bytes(&buf)?;
            let status = resp.status.clone().unwrap_or_default();
            let code = status.code.value();
            if code != 0 {
                return Err(EventsError::Status {
                    code,
                    message: status.message,
                });
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;
    use std::os::unix::net::UnixListener;

    #[test]
    fn any_type_urls_are_containerd_event_names() {
        let ev = Event::Exit(TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            pid: 7,
            exit_status: 3,
            ..Default::default()
        });
        let any = ev.to_any().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.pid, back.exit_status), (7, 3));
        assert_eq!(ev.topic(), "/tasks/exit");
        let oom = Event::Oom(TaskOOM::default()).to_any().unwrap();
        assert_eq!(oom.type_url, "containerd.events.TaskOOM");
    }

    /// A fake containerd that reads Forward requests and answers OK, recording the topics.
    fn fake_containerd(listener: UnixListener, n: usize) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut topics = Vec::new();
            let (mut s, _) = listener.accept().unwrap();
            while topics.len() < n {
                let mut hdr = [0u8; MESSAGE_HEADER_LENGTH];
                s.read_exact(&mut hdr).unwrap();
                let mh = MessageHeader::from(hdr);
                let mut buf = vec![0u8; mh.length as usize];
                s.read_exact(&mut buf).unwrap();
                let req = ttrpc::Request::parse_from_bytes(&buf).unwrap();
                assert_eq!(req.service, "containerd.services.events.ttrpc.v1.Events");
                assert_eq!(req.method, "Forward");
                let fwd = ForwardRequest::parse_from_bytes(&req.payload).unwrap();
                let env = fwd.envelope.unwrap();
                assert_eq!(env.namespace, "ns1");
                topics.push(env.topic.clone());
                let resp = ttrpc::Response::default().write_to_bytes().unwrap();
                let mut out: Vec<u8> =
                    MessageHeader::new_response(mh.stream_id, resp.len() as u32).into();
                out.extend_from_slice(&resp);
                s.write_all(&out).unwrap();
            }
            topics
        })
    }

    #[test]
    fn events_arrive_in_queue_order() {
        let dir = std::env::temp_dir().join(format!("pelagos-ev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("ttrpc.sock");
        let server = fake_containerd(UnixListener::bind(&sock).unwrap(), 3);
        let p = Publisher::start(format!("unix://{}", sock.display()), "ns1".into()).unwrap();
        p.publish(Event::Create(TaskCreate::default()));
        p.publish(Event::Start(TaskStart::default()));
        p.publish(Event::Exit(TaskExit::default()));
        p.flush_and_stop();
        assert_eq!(
            server.join().unwrap(),
            vec!["/tasks/create", "/tasks/start", "/tasks/exit"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
