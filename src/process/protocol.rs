//! The runtime ↔ setup-helper protocol over the socketpair at the helper's fd 3: each message
//! is a little-endian u32 length followed by that many bytes of JSON. Fds (a pidfd, a pty
//! master, cgroup files) ride along as SCM_RIGHTS with the message that announces them. Before
//! the helper exists, the clone child reports a failure with a length of `u32::MAX` followed by
//! a raw (step u32, errno i32) pair, since it cannot allocate or serialize.
//!
//! The conversation, in order (each step only when the plan asks for it):
//!
//! | step | runtime sends | helper (or the process it forked) sends |
//! |---|---|---|
//! | spawn | go byte, to a held child only | `ChildFailure` (clone child, before the helper runs) |
//! | plan | `Plan`, with the v1 `tasks` files of `join_cgroup` as SCM_RIGHTS | — |
//! | cgroup | `CgroupJoined` once it moved the helper | — |
//! | user namespace made by the helper | `MapsWritten` | `MapRequest` |
//! | fork (pid or time namespace) | — | helper: `Forked { pid }` + pidfd, then it exits |
//! | hooks (init) | `HooksDone { state }` | `HooksRequest` |
//! | ready (init) | — | `Ready` |
//! | start (init) | `Start { state }`, on the socket or the start fifo | — |
//! | exec of the user process | — | nothing: EOF (the socket is close-on-exec) |
//!
//! `Log` records may come at any point before the exec; the runtime logs them and reads on.
//! Any step may end with `Error { step, message }` from the side that failed, after which the
//! helper exits. One writer at a time: after a fork, the forked process says nothing until the
//! helper that forked it has exited, so `Forked` always comes before the forked process's own
//! messages and a runtime never takes the helper for the init. The runtime treats any message
//! out of this order as a failure of the step it is in.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::{Process, Spec};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::namespaces::{Kind, Userns};
use crate::seccomp::CompiledFilter;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("message of {0} bytes is over the limit of {MAX_FRAME} (config.json too large?)")]
    TooLarge(u64),
    #[error("a message promised an fd that did not arrive")]
    MissingFd,
    #[error("{0} fds in one message: over the limit of {MAX_FDS}")]
    TooManyFds(usize),
    #[error("the fds sent with a message did not all fit in the receive buffer")]
    FdsTruncated,
}

/// Largest frame accepted (a config.json with a big seccomp profile stays far below).
const MAX_FRAME: u32 = 64 << 20;
/// Most fds one message carries (the v1 `tasks` files of a plan: one per hierarchy).
const MAX_FDS: usize = 32;
/// Length marker of the clone child's raw failure report.
pub const CHILD_FAILURE: u32 = u32::MAX;

/// What the helper must do; sent once, right after the go byte.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Plan {
    /// The process to exec at the end (the container's, or the one to exec into it).
    pub process: Process,
    /// Count of fds passed at 4.. that the process gets as 3..
    pub preserve_fds: u32,
    /// fds 0-2 are a pty slave that becomes the controlling terminal.
    pub terminal: bool,
    /// A console socket at this fd: allocate a pty in the container's devpts, send the master
    /// there and make the slave fds 0-2 and the controlling terminal.
    pub console: Option<RawFd>,
    /// The start fifo (read-write): `Start` may also arrive there, from another process.
    pub start_fifo: Option<RawFd>,
    pub seccomp: Option<CompiledFilter>,
    /// Namespaces to join: (type, fd in the helper), user first.
    pub join: Vec<(Kind, RawFd)>,
    /// exec: (pidfd of the container's init in the helper, CLONE_NEW* flags to join).
    pub join_pidfd: Option<(RawFd, i32)>,
    /// CLONE_NEW* flags to unshare after joining.
    pub unshare: i32,
    pub userns: Userns,
    /// Fork the process (CLONE_PARENT) after entering the namespaces.
    pub fork: bool,
    /// Wait for `CgroupJoined` before entering namespaces: the runtime moves the helper into
    /// the cgroup while it starts up (a cgroup v1 migration can take milliseconds).
    pub await_cgroup: bool,
    /// cgroup v1 `tasks` files the helper moves itself into (writing `0`) before anything
    /// else (see `Cgroup::join_plan`). They come opened, as fds attached to this message in
    /// the same order; the paths are for messages.
    #[serde(default)]
    pub join_cgroup: Vec<PathBuf>,
    /// Container setup; `None` for exec.
    pub init: Option<InitPlan>,
    /// The runtime's log level (`log::LevelFilter as usize`): the helper sends records up to
    /// it back as `FromHelper::Log`.
    #[serde(default)]
    pub log_level: usize,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct InitPlan {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub no_pivot: bool,
    /// Ask the runtime to run prestart/createRuntime hooks (and send the state for
    /// createContainer) before pivot_root.
    pub hooks_request: bool,
    /// Detached bind trees the runtime made: (mount index, fd in the helper).
    #[serde(default)]
    pub trees: Vec<(usize, RawFd)>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub enum ToHelper {
    Plan(Box<Plan>),
    /// The helper is in the container's cgroup now.
    CgroupJoined,
    /// The runtime wrote the uid/gid maps of the helper's new user namespace.
    MapsWritten,
    /// Runtime hooks ran; the state JSON for the container's own hooks.
    HooksDone {
        state: String,
    },
    /// Exec the process; `state` is for startContainer hooks.
    Start {
        state: String,
    },
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub enum FromHelper {
    /// The helper unshared a user namespace and waits for its maps.
    MapRequest,
    /// The helper forked the process that carries on (pidfd attached); the helper exits.
    Forked {
        pid: i32,
    },
    /// The rootfs is prepared; run the prestart and createRuntime hooks.
    HooksRequest,
    /// Set up and waiting for Start.
    Ready,
    Error {
        step: String,
        message: String,
    },
    /// On a console socket: the pty master (attached).
    Console,
    /// A log record of the helper (`log::Level as usize`), for the runtime's log. May come
    /// before any other message.
    Log {
        level: usize,
        message: String,
    },
}

/// `msg` as one frame: its length (little-endian u32), then its JSON. The start fifo carries
/// the same frames as the socket.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(msg)?;
    // The peer would refuse it and hang up; say why here instead of "broken pipe".
    if body.len() > MAX_FRAME as usize {
        return Err(ProtocolError::TooLarge(body.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The message of the frame at the start of `buf` and the frame's length in bytes; `None`
/// while the frame is incomplete.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, ProtocolError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header.try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len.into()));
    }
    let end = 4 + len as usize;
    match buf.get(4..end) {
        Some(body) => Ok(Some((serde_json::from_slice(body)?, end))),
        None => Ok(None),
    }
}

/// A received frame.
#[derive(Debug)]
pub enum Frame<T> {
    Msg(T),
    /// The clone child failed before the helper ran.
    ChildFailure {
        step: u32,
        errno: i32,
    },
}

/// One end of the socketpair, with buffered input and received fds.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Continues on `fd` (a duplicate of the socket), keeping what was buffered; returns the
    /// old fd.
    pub fn replace_fd(&mut self, fd: OwnedFd) -> OwnedFd {
        std::mem::replace(&mut self.fd, fd)
    }

    /// Writes one raw byte (the go signal the clone child waits for).
    pub fn send_byte(&self, b: u8) -> Result<(), ProtocolError> {
        self.send_raw(&[b], &[])
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ProtocolError> {
        self.send_with_fd(msg, None)
    }

    /// Sends `msg` with `fd` attached.
    pub fn send_with_fd<T: Serialize>(
        &self,
        msg: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ProtocolError> {
        self.send_with_fds(msg, fd.as_slice())
    }

    /// Sends `msg` with `fds` attached; the peer takes them in this order.
    pub fn send_with_fds<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ProtocolError> {
        self.send_raw(&encode_frame(msg)?, fds)
    }

    fn send_raw(&self, mut bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ProtocolError> {
        if fds.len() > MAX_FDS {
            return Err(ProtocolError::TooManyFds(fds.len()));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        // The fds go with the first piece only.
        let mut cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        while !bytes.is_empty() {
            let n = match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &[IoSlice::new(bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
            cmsgs = &[];
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Receives the next frame; `None` at end of stream on a frame boundary.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<Frame<T>>, ProtocolError> {
        if !self.fill(4)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes"));
        if len == CHILD_FAILURE {
            if !self.fill(12)? {
                return Err(eof());
            }
            let step = u32::from_le_bytes(self.buf[4..8].try_into().expect("4 bytes"));
            let errno = i32::from_le_bytes(self.buf[8..12].try_into().expect("4 bytes"));
            self.buf.drain(..12);
            return Ok(Some(Frame::ChildFailure { step, errno }));
        }
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge(len.into()));
        }
        if !self.fill(4 + len as usize)? {
            return Err(eof());
        }
        let (msg, end) = decode_frame(&self.buf)?.expect("the whole frame is buffered");
        self.buf.drain(..end);
        Ok(Some(Frame::Msg(msg)))
    }

    /// The oldest fd received and not taken yet.
    pub fn take_fd(&mut self) -> Result<OwnedFd, ProtocolError> {
        self.fds.pop_front().ok_or(ProtocolError::MissingFd)
    }

    /// Reads until `want` bytes are buffered; false on EOF before any byte of a new frame.
    fn fill(&mut self, want: usize) -> Result<bool, ProtocolError> {
        while self.buf.len() < want {
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let (n, fds, truncated) = {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = match recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(std::io::Error::from(e).into()),
                };
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(r) = c {
                            fds.extend(r);
                        }
                    }
                }
                (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC))
            };
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed these fds in our table; nobody else owns them.
                self.fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
            if truncated {
                return Err(ProtocolError::FdsTruncated);
            }
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(eof());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }
}

fn eof() -> ProtocolError {
    ProtocolError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "peer closed the socket mid-message",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn pair() -> (Channel, Channel) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Channel::new(a), Channel::new(b))
    }

    #[test]
    fn a_frame_decodes_only_once_whole() {
        let frame = encode_frame(&ToHelper::Start { state: "{}".into() }).unwrap();
        for cut in [0, 3, 4, frame.len() - 1] {
            assert!(decode_frame::<ToHelper>(&frame[..cut]).unwrap().is_none());
        }
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        match decode_frame::<ToHelper>(&two).unwrap() {
            Some((ToHelper::Start { state }, n)) => {
                assert_eq!(state, "{}");
                assert_eq!(n, frame.len());
            }
            other => panic!("{other:?}"),
        }
        let huge = (MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(
            decode_frame::<ToHelper>(&huge),
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[test]
    fn messages_fds_and_eof() {
        let (a, mut b) = pair();
        a.send(&FromHelper::Ready).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        a.send_with_fd(&FromHelper::Forked { pid: 7 }, Some(devnull.as_fd()))
            .unwrap();
        a.send(&FromHelper::Error {
            step: "mount".into(),
            message: "x".repeat(10000),
        })
        .unwrap();
        drop(a);
        assert!(matches!(
            b.recv::<FromHelper>().unwrap(),
            Some(Frame::Msg(FromHelper::Ready))
        ));
        assert!(matches!(
            b.recv::<FromHelper>().unwrap(),
            Some(Frame::Msg(FromHelper::Forked { pid: 7 }))
        ));
        let fd = b.take_fd().unwrap();
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_char_device());
        match b.recv::<FromHelper>().unwrap() {
            Some(Frame::Msg(FromHelper::Error { step, message })) => {
                assert_eq!(step, "mount");
                assert_eq!(message.len(), 10000);
            }
            other => panic!("{other:?}"),
        }
        assert!(b.recv::<FromHelper>().unwrap().is_none());
    }

    #[test]
    fn fds_sent_together_arrive_in_order() {
        let (a, mut b) = pair();
        let files: Vec<std::fs::File> = ["/dev/null", "/proc/self/status", "/"]
            .iter()
            .map(|p| std::fs::File::open(p).unwrap())
            .collect();
        use std::os::fd::AsFd;
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        a.send_with_fds(&ToHelper::CgroupJoined, &fds).unwrap();
        assert!(matches!(
            b.recv::<ToHelper>().unwrap(),
            Some(Frame::Msg(ToHelper::CgroupJoined))
        ));
        for file in &files {
            let got = b.take_fd().unwrap();
            let (sent, got) = (
                file.metadata().unwrap(),
                std::fs::File::from(got).metadata().unwrap(),
            );
            use std::os::unix::fs::MetadataExt;
            assert_eq!((got.dev(), got.ino()), (sent.dev(), sent.ino()));
        }
        assert!(matches!(b.take_fd(), Err(ProtocolError::MissingFd)));
        let many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| files[0].as_fd()).collect();
        assert!(matches!(
            a.send_with_fds(&ToHelper::CgroupJoined, &many),
            Err(ProtocolError::TooManyFds(n)) if n == MAX_FDS + 1
        ));
    }

    #[test]
    fn replacing_the_fd_keeps_buffered_messages() {
        let (a, mut b) = pair();
        a.send(&ToHelper::CgroupJoined).unwrap();
        a.send(&ToHelper::MapsWritten).unwrap();
        assert!(matches!(
            b.recv::<ToHelper>().unwrap(),
            Some(Frame::Msg(ToHelper::CgroupJoined))
        ));
        let dup = crate::sys::dup_at_least(b.fd().as_raw_fd(), 10).unwrap();
        drop(b.replace_fd(dup));
        assert!(matches!(
            b.recv::<ToHelper>().unwrap(),
            Some(Frame::Msg(ToHelper::MapsWritten))
        ));
    }

    #[test]
    fn child_failure_frame() {
        let (a, mut b) = pair();
        let mut raw = Vec::new();
        raw.extend_from_slice(&CHILD_FAILURE.to_le_bytes());
        raw.extend_from_slice(&5u32.to_le_bytes());
        raw.extend_from_slice(&libc::ENOENT.to_le_bytes());
        a.send_raw(&raw, &[]).unwrap();
        match b.recv::<FromHelper>().unwrap() {
            Some(Frame::ChildFailure { step, errno }) => {
                assert_eq!((step, errno), (5, libc::ENOENT))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let (a, mut b) = pair();
        a.send_raw(&10u32.to_le_bytes(), &[]).unwrap();
        drop(a);
        assert!(b.recv::<FromHelper>().is_err());
    }
}
