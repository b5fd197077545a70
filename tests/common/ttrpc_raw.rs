//! A byte-level ttrpc client for hostile-input tests: frames and protobuf are written by hand so
//! a test can send what no generated client would (truncated headers, lying lengths, garbage
//! payloads), and read the answer without trusting the server either.
//!
//! Frame: a 10-byte header (u32 BE length, u32 BE stream id, u8 type, u8 flags), then `length`
//! bytes. A request's body is `Request{1 service, 2 method, 3 payload, 4 timeout_nano,
//! 5 metadata}`; a response's is `Response{1 status{1 code, 2 message}, 2 payload}`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const MSG_REQUEST: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
/// ttrpc's largest message body.
pub const MAX_MESSAGE: u32 = 4 << 20;
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// gRPC codes the tests look at.
pub const NOT_FOUND: i32 = 5;
pub const INVALID_ARGUMENT: i32 = 3;
pub const UNIMPLEMENTED: i32 = 12;

/// Long enough for a loaded 2-core machine; only a hung server reaches it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Protobuf writer: only the wire types the Task API needs.
#[derive(Default, Clone)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    pub fn new() -> Pb {
        Pb::default()
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field (int32, uint32, bool, enum).
    pub fn uint(mut self, field: u32, v: u64) -> Pb {
        self.varint(u64::from(field) << 3);
        self.varint(v);
        self
    }

    /// A length-delimited field (string, bytes, message).
    pub fn bytes(mut self, field: u32, v: &[u8]) -> Pb {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub fn str(self, field: u32, v: &str) -> Pb {
        self.bytes(field, v.as_bytes())
    }
}

/// The fields of a protobuf message: (field number, varint value or bytes).
pub fn decode(mut buf: &[u8]) -> Option<Vec<(u32, Field)>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = (key >> 3) as u32;
        match key & 7 {
            0 => out.push((field, Field::Int(varint(&mut buf)?))),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                if len > buf.len() {
                    return None;
                }
                let (v, rest) = buf.split_at(len);
                out.push((field, Field::Bytes(v.to_vec())));
                buf = rest;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Int(u64),
    Bytes(Vec<u8>),
}

/// Looks up a varint field (0 when absent, as protobuf's default).
pub fn int_field(fields: &[(u32, Field)], n: u32) -> u64 {
    fields
        .iter()
        .rev()
        .find_map(|(f, v)| match v {
            Field::Int(i) if *f == n => Some(*i),
            _ => None,
        })
        .unwrap_or(0)
}

/// Looks up a string/bytes field (empty when absent).
pub fn bytes_field(fields: &[(u32, Field)], n: u32) -> Vec<u8> {
    fields
        .iter()
        .rev()
        .find_map(|(f, v)| match v {
            Field::Bytes(b) if *f == n => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A frame's header bytes.
pub fn header(length: u32, stream: u32, typ: u8, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.extend_from_slice(&length.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.push(typ);
    h.push(flags);
    h
}

/// The body of a ttrpc Request.
pub fn request_body(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    Pb::new()
        .str(1, service)
        .str(2, method)
        .bytes(3, payload)
        .uint(4, 30_000_000_000)
        .0
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Status OK with this payload.
    Ok(Vec<u8>),
    /// A non-OK status: gRPC code and message.
    Status(i32, String),
}

impl Reply {
    pub fn ok(self) -> Vec<u8> {
        match self {
            Reply::Ok(p) => p,
            Reply::Status(c, m) => panic!("expected OK, got code {c}: {m}"),
        }
    }

    pub fn code(&self) -> i32 {
        match self {
            Reply::Ok(_) => 0,
            Reply::Status(c, _) => *c,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Reply::Ok(_) => "",
            Reply::Status(_, m) => m,
        }
    }
}

/// One connection to a ttrpc server.
pub struct RawConn {
    pub stream: UnixStream,
    next_stream: u32,
}

impl RawConn {
    pub fn connect(socket: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(RawConn {
            stream,
            next_stream: 1,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next client stream id (odd, increasing, as ttrpc clients use).
    pub fn stream_id(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// Reads one frame: (stream id, type, body). `None` on EOF or a reset connection.
    pub fn read_frame(&mut self) -> Option<(u32, u8, Vec<u8>)> {
        let mut h = [0u8; 10];
        self.stream.read_exact(&mut h).ok()?;
        let len = u32::from_be_bytes(h[0..4].try_into().unwrap());
        let stream = u32::from_be_bytes(h[4..8].try_into().unwrap());
        assert!(len <= MAX_MESSAGE, "the server sent a frame of {len} bytes");
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some((stream, h[8], body))
    }

    /// Reads the response to `stream`: `None` if the server closed the connection instead.
    pub fn read_reply(&mut self, stream: u32) -> Option<Reply> {
        loop {
            let (id, typ, body) = self.read_frame()?;
            if id != stream || typ != MSG_RESPONSE {
                continue;
            }
            let fields = decode(&body).expect("the server's response is valid protobuf");
            let status = decode(&bytes_field(&fields, 1)).expect("valid status");
            let code = int_field(&status, 1) as i32;
            return Some(if code == 0 {
                Reply::Ok(bytes_field(&fields, 2))
            } else {
                let msg = String::from_utf8_lossy(&bytes_field(&status, 2)).into_owned();
                Reply::Status(code, msg)
            });
        }
    }

    /// Sends a request with `body` as the raw Request bytes and reads its reply.
    pub fn call_body(&mut self, body: &[u8]) -> Option<Reply> {
        let id = self.stream_id();
        let mut frame = header(body.len() as u32, id, MSG_REQUEST, 0);
        frame.extend_from_slice(body);
        self.send(&frame).ok()?;
        self.read_reply(id)
    }

    /// Calls `method` of the Task service with a hand-encoded payload.
    pub fn call(&mut self, method: &str, payload: &[u8]) -> Option<Reply> {
        self.call_body(&request_body(TASK_SERVICE, method, payload))
    }
}

/// Connects and calls Task.Connect: the shim's pid if it answers.
pub fn shim_pid(socket: &Path) -> Option<u32> {
    let mut c = RawConn::connect(socket).ok()?;
    match c.call("Connect", &Pb::new().str(1, "").0)? {
        Reply::Ok(p) => Some(int_field(&decode(&p)?, 1) as u32),
        Reply::Status(..) => None,
    }
}

/// The shim's socket path from a bundle's `address` file (`unix:///run/containerd/s/<hash>`).
pub fn socket_of_bundle(bundle: &Path) -> std::path::PathBuf {
    let addr = std::fs::read_to_string(bundle.join("address"))
        .unwrap_or_else(|e| panic!("{}/address: {e}", bundle.display()));
    let addr = addr.trim();
    std::path::PathBuf::from(addr.strip_prefix("unix://").unwrap_or(addr))
}
