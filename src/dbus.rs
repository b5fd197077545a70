//! A small synchronous D-Bus client: enough to call systemd's manager on the system bus (the
//! systemd cgroup driver in [`crate::cgroups`]) and wait for its signals.
//!
//! Written here rather than taken from a crate: `zbus` brings an async runtime and its macro
//! stack, the `dbus` crate links libdbus (C, no static build for the release shim). What the
//! driver needs is one Unix socket, the EXTERNAL authentication, little-endian marshalling of
//! the basic and container types, method calls with their replies and errors, and signals kept
//! in arrival order, in a few hundred lines.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The system bus socket when `DBUS_SYSTEM_BUS_ADDRESS` does not name another.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// What the specification allows for one message.
const MAX_MESSAGE: usize = 128 << 20;
const MAX_ARRAY: usize = 64 << 20;
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("connect to the D-Bus socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("D-Bus address {0:?}: only unix:path= addresses are supported")]
    Address(String),
    #[error("D-Bus authentication (EXTERNAL) refused: {0}")]
    Auth(String),
    #[error("D-Bus connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("D-Bus message: {0}")]
    Protocol(String),
    #[error("{name}: {message}")]
    Remote { name: String, message: String },
    #[error("D-Bus: no answer to {0} in time")]
    Timeout(String),
}

fn protocol(msg: impl Into<String>) -> DbusError {
    DbusError::Protocol(msg.into())
}

/// A value of any D-Bus type this client writes or reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Double(f64),
    Str(String),
    ObjectPath(String),
    Signature(String),
    /// A unix fd index (`h`); this client never passes fds.
    Fd(u32),
    /// Elements and the signature of one element (needed for an empty array).
    Array(String, Vec<Value>),
    Struct(Vec<Value>),
    /// A dict entry `{kv}`, only inside an array.
    DictEntry(Box<Value>, Box<Value>),
    Variant(Box<Value>),
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn variant(v: Value) -> Value {
        Value::Variant(Box::new(v))
    }

    pub fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::I16(_) => "n".into(),
            Value::U16(_) => "q".into(),
            Value::I32(_) => "i".into(),
            Value::U32(_) => "u".into(),
            Value::I64(_) => "x".into(),
            Value::U64(_) => "t".into(),
            Value::Double(_) => "d".into(),
            Value::Str(_) => "s".into(),
            Value::ObjectPath(_) => "o".into(),
            Value::Signature(_) => "g".into(),
            Value::Fd(_) => "h".into(),
            Value::Array(elem, _) => format!("a{elem}"),
            Value::Struct(fields) => {
                let inner: String = fields.iter().map(Value::signature).collect();
                format!("({inner})")
            }
            Value::DictEntry(k, v) => format!("{{{}{}}}", k.signature(), v.signature()),
            Value::Variant(_) => "v".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Byte(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            _ => None,
        }
    }

    /// The value inside a variant (or the value itself).
    pub fn inner(&self) -> &Value {
        match self {
            Value::Variant(v) => v.inner(),
            v => v,
        }
    }
}

/// A parsed single complete type.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Basic(u8),
    Array(Box<Type>),
    Struct(Vec<Type>),
    Dict(Box<Type>, Box<Type>),
    Variant,
}

impl Type {
    fn align(&self) -> usize {
        match self {
            Type::Basic(c) => basic_align(*c),
            Type::Array(_) => 4,
            Type::Struct(_) | Type::Dict(..) => 8,
            Type::Variant => 1,
        }
    }
}

fn basic_align(c: u8) -> usize {
    match c {
        b'y' | b'g' => 1,
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' => 4,
        _ => 8,
    }
}

/// Parses a signature into its complete types.
fn parse_signature(sig: &str) -> Result<Vec<Type>, DbusError> {
    fn one(s: &[u8], i: &mut usize, depth: usize) -> Result<Type, DbusError> {
        if depth > MAX_DEPTH {
            return Err(protocol("signature nests too deeply"));
        }
        let Some(&c) = s.get(*i) else {
            return Err(protocol("signature ends inside a type"));
        };
        *i += 1;
        Ok(match c {
            b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g'
            | b'h' => Type::Basic(c),
            b'v' => Type::Variant,
            b'a' if s.get(*i) == Some(&b'{') => {
                *i += 1;
                let k = one(s, i, depth + 1)?;
                if !matches!(k, Type::Basic(_)) {
                    return Err(protocol("dict key is not a basic type"));
                }
                let v = one(s, i, depth + 1)?;
                if s.get(*i) != Some(&b'}') {
                    return Err(protocol("dict entry has more than two types"));
                }
                *i += 1;
                Type::Array(Box::new(Type::Dict(Box::new(k), Box::new(v))))
            }
            b'a' => Type::Array(Box::new(one(s, i, depth + 1)?)),
            b'(' => {
                let mut fields = Vec::new();
                while s.get(*i) != Some(&b')') {
                    fields.push(one(s, i, depth + 1)?);
                }
                *i += 1;
                if fields.is_empty() {
                    return Err(protocol("empty struct in signature"));
                }
                Type::Struct(fields)
            }
            other => {
                return Err(protocol(format!(
                    "unknown type code {:?} in signature",
                    other as char
                )))
            }
        })
    }
    let s = sig.as_bytes();
    if s.len() > 255 {
        return Err(protocol("signature longer than 255"));
    }
    let mut i = 0;
    let mut out = Vec::new();
    while i < s.len() {
        out.push(one(s, &mut i, 0)?);
    }
    Ok(out)
}

/// Marshals values, little-endian; offsets are relative to a start that is 8-aligned in the
/// message (the header and the body both are).
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    fn signature(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    fn value(&mut self, v: &Value) -> Result<(), DbusError> {
        match v {
            Value::Byte(b) => self.buf.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::I16(n) => {
                self.pad(2);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U16(n) => {
                self.pad(2);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::I32(n) => {
                self.pad(4);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U32(n) | Value::Fd(n) => self.u32(*n),
            Value::I64(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::U64(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::Double(n) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            Value::Str(s) | Value::ObjectPath(s) => {
                if s.contains('\0') {
                    return Err(protocol(format!("string {s:?} contains NUL")));
                }
                self.string(s)
            }
            Value::Signature(s) => {
                parse_signature(s)?;
                self.signature(s)
            }
            Value::Array(elem, items) => {
                let types = parse_signature(&format!("a{elem}"))?;
                let [Type::Array(elem_type)] = types.as_slice() else {
                    return Err(protocol(format!("array element signature {elem:?}")));
                };
                self.u32(0);
                let len_at = self.buf.len() - 4;
                self.pad(elem_type.align());
                let start = self.buf.len();
                for item in items {
                    if item.signature() != *elem {
                        return Err(protocol(format!(
                            "array of {elem} holds a {}",
                            item.signature()
                        )));
                    }
                    self.value(item)?;
                }
                let len = self.buf.len() - start;
                if len > MAX_ARRAY {
                    return Err(protocol("array longer than 64 MiB"));
                }
                self.buf[len_at..len_at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            Value::Struct(fields) => {
                self.pad(8);
                for f in fields {
                    self.value(f)?;
                }
            }
            Value::DictEntry(k, v) => {
                self.pad(8);
                self.value(k)?;
                self.value(v)?;
            }
            Value::Variant(inner) => {
                self.signature(&inner.signature());
                self.value(inner)?;
            }
        }
        Ok(())
    }
}

/// Unmarshals little-endian values from `buf` (8-aligned at offset 0).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn align(&mut self, align: usize) -> Result<(), DbusError> {
        let next = self.pos.div_ceil(align) * align;
        if next > self.buf.len() {
            return Err(protocol("message ends inside padding"));
        }
        self.pos = next;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DbusError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| protocol("message shorter than its contents"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DbusError> {
        self.align(N)?;
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, DbusError> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn text(&mut self, len: usize) -> Result<String, DbusError> {
        let bytes = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(protocol("string without its NUL"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| protocol("string is not UTF-8"))
    }

    fn value(&mut self, t: &Type, depth: usize) -> Result<Value, DbusError> {
        if depth > MAX_DEPTH {
            return Err(protocol("value nests too deeply"));
        }
        Ok(match t {
            Type::Basic(c) => match c {
                b'y' => Value::Byte(self.take(1)?[0]),
                b'b' => match self.u32()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    n => return Err(protocol(format!("boolean {n}"))),
                },
                b'n' => Value::I16(i16::from_le_bytes(self.fixed()?)),
                b'q' => Value::U16(u16::from_le_bytes(self.fixed()?)),
                b'i' => Value::I32(i32::from_le_bytes(self.fixed()?)),
                b'u' => Value::U32(self.u32()?),
                b'h' => Value::Fd(self.u32()?),
                b'x' => Value::I64(i64::from_le_bytes(self.fixed()?)),
                b't' => Value::U64(u64::from_le_bytes(self.fixed()?)),
                b'd' => Value::Double(f64::from_le_bytes(self.fixed()?)),
                b's' | b'o' => {
                    let len = self.u32()? as usize;
                    let s = self.text(len)?;
                    if *c == b's' {
                        Value::Str(s)
                    } else {
                        Value::ObjectPath(s)
                    }
                }
                b'g' => {
                    let len = usize::from(self.take(1)?[0]);
                    Value::Signature(self.text(len)?)
                }
                _ => unreachable!("parse_signature admits only basic codes"),
            },
            Type::Array(elem) => {
                let len = self.u32()? as usize;
                if len > MAX_ARRAY {
                    return Err(protocol("array longer than 64 MiB"));
                }
                self.align(elem.align())?;
                let end = self.pos + len;
                if end > self.buf.len() {
                    return Err(protocol("array longer than the message"));
                }
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value(elem, depth + 1)?);
                }
                if self.pos != end {
                    return Err(protocol("array elements overrun its length"));
                }
                Value::Array(type_signature(elem), items)
            }
            Type::Struct(fields) => {
                self.align(8)?;
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    out.push(self.value(f, depth + 1)?);
                }
                Value::Struct(out)
            }
            Type::Dict(k, v) => {
                self.align(8)?;
                let k = self.value(k, depth + 1)?;
                let v = self.value(v, depth + 1)?;
                Value::DictEntry(Box::new(k), Box::new(v))
            }
            Type::Variant => {
                let len = usize::from(self.take(1)?[0]);
                let sig = self.text(len)?;
                let types = parse_signature(&sig)?;
                let [inner] = types.as_slice() else {
                    return Err(protocol(format!("variant of signature {sig:?}")));
                };
                Value::Variant(Box::new(self.value(inner, depth + 1)?))
            }
        })
    }
}

fn type_signature(t: &Type) -> String {
    match t {
        Type::Basic(c) => (*c as char).to_string(),
        Type::Array(e) => format!("a{}", type_signature(e)),
        Type::Struct(f) => format!("({})", f.iter().map(type_signature).collect::<String>()),
        Type::Dict(k, v) => format!("{{{}{}}}", type_signature(k), type_signature(v)),
        Type::Variant => "v".into(),
    }
}

/// Message types.
pub const METHOD_CALL: u8 = 1;
pub const METHOD_RETURN: u8 = 2;
pub const ERROR: u8 = 3;
pub const SIGNAL: u8 = 4;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;

/// One message, header fields decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    pub body: Vec<Value>,
}

impl Message {
    pub fn method_call(
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Message {
        Message {
            kind: METHOD_CALL,
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            destination: Some(destination.into()),
            body,
            ..Message::default()
        }
    }

    /// The wire form of the message with `serial`.
    pub fn encode(&self, serial: u32) -> Result<Vec<u8>, DbusError> {
        let mut body = Writer::default();
        for v in &self.body {
            body.value(v)?;
        }
        let signature: String = self.body.iter().map(Value::signature).collect();
        let mut fields = Vec::new();
        let mut field = |code: u8, v: Value| {
            fields.push(Value::Struct(vec![Value::Byte(code), Value::variant(v)]));
        };
        if let Some(p) = &self.path {
            field(FIELD_PATH, Value::ObjectPath(p.clone()));
        }
        if let Some(i) = &self.interface {
            field(FIELD_INTERFACE, Value::str(i));
        }
        if let Some(m) = &self.member {
            field(FIELD_MEMBER, Value::str(m));
        }
        if let Some(e) = &self.error_name {
            field(FIELD_ERROR_NAME, Value::str(e));
        }
        if let Some(r) = self.reply_serial {
            field(FIELD_REPLY_SERIAL, Value::U32(r));
        }
        if let Some(d) = &self.destination {
            field(FIELD_DESTINATION, Value::str(d));
        }
        if let Some(s) = &self.sender {
            field(FIELD_SENDER, Value::str(s));
        }
        if !signature.is_empty() {
            field(FIELD_SIGNATURE, Value::Signature(signature));
        }
        let mut w = Writer::default();
        w.buf.extend_from_slice(&[b'l', self.kind, 0, 1]);
        w.u32(body.buf.len() as u32);
        w.u32(serial);
        w.value(&Value::Array("(yv)".into(), fields))?;
        w.pad(8);
        w.buf.extend_from_slice(&body.buf);
        if w.buf.len() > MAX_MESSAGE {
            return Err(protocol("message longer than 128 MiB"));
        }
        Ok(w.buf)
    }

    /// How long the whole message is, from its first 16 bytes.
    fn total_len(head: &[u8; 16]) -> Result<usize, DbusError> {
        if head[0] != b'l' {
            return Err(protocol(format!(
                "byte order {:?} (only little-endian is read)",
                head[0] as char
            )));
        }
        if head[3] != 1 {
            return Err(protocol(format!("protocol version {}", head[3])));
        }
        let body = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let fields = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        let total = (16 + fields).div_ceil(8) * 8 + body;
        if total > MAX_MESSAGE {
            return Err(protocol("message longer than 128 MiB"));
        }
        Ok(total)
    }

    /// Decodes one whole message.
    pub fn decode(buf: &[u8]) -> Result<Message, DbusError> {
        let head: &[u8; 16] = buf
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| protocol("message shorter than its header"))?;
        if Message::total_len(head)? != buf.len() {
            return Err(protocol("message length does not match its header"));
        }
        let body_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        let mut r = Reader { buf, pos: 12 };
        let mut m = Message {
            kind: buf[1],
            serial: u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")),
            ..Message::default()
        };
        let fields = r.value(&parse_signature("a(yv)")?[0], 0)?;
        let mut signature = String::new();
        if let Value::Array(_, fields) = fields {
            for f in fields {
                let Value::Struct(f) = f else { continue };
                let (Some(Value::Byte(code)), Some(v)) = (f.first(), f.get(1)) else {
                    continue;
                };
                let v = v.inner();
                let s = v.as_str().map(str::to_string);
                match *code {
                    FIELD_PATH => m.path = s,
                    FIELD_INTERFACE => m.interface = s,
                    FIELD_MEMBER => m.member = s,
                    FIELD_ERROR_NAME => m.error_name = s,
                    FIELD_REPLY_SERIAL => m.reply_serial = v.as_u64().map(|n| n as u32),
                    FIELD_DESTINATION => m.destination = s,
                    FIELD_SENDER => m.sender = s,
                    FIELD_SIGNATURE => signature = s.unwrap_or_default(),
                    _ => {}
                }
            }
        }
        r.align(8)?;
        if r.pos + body_len != buf.len() {
            return Err(protocol("body length does not match the message"));
        }
        let mut body = Reader {
            buf: &buf[r.pos..],
            pos: 0,
        };
        for t in parse_signature(&signature)? {
            m.body.push(body.value(&t, 0)?);
        }
        if body.pos != body.buf.len() {
            return Err(protocol("body longer than its signature"));
        }
        Ok(m)
    }
}

/// A connection to a message bus: method calls wait for their reply; signals that arrive
/// meanwhile are kept for [`Connection::next_signal`].
pub struct Connection {
    sock: UnixStream,
    serial: u32,
    signals: VecDeque<Message>,
    unique_name: String,
}

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

/// The socket path of a `unix:path=...` address (the first of a `;`-separated list that is one).
fn socket_of(address: &str) -> Result<PathBuf, DbusError> {
    for a in address.split(';') {
        let Some(params) = a.strip_prefix("unix:") else {
            continue;
        };
        for kv in params.split(',') {
            if let Some(p) = kv.strip_prefix("path=") {
                return Ok(PathBuf::from(unescape(p)));
            }
        }
    }
    Err(DbusError::Address(address.into()))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Connection {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else [`SYSTEM_BUS_SOCKET`]).
    pub fn system(timeout: Duration) -> Result<Connection, DbusError> {
        let path = match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
            Ok(a) if !a.is_empty() => socket_of(&a)?,
            _ => PathBuf::from(SYSTEM_BUS_SOCKET),
        };
        Connection::open(&path, timeout)
    }

    /// The bus at `path`: authenticates as this process's uid and says Hello.
    pub fn open(path: &Path, timeout: Duration) -> Result<Connection, DbusError> {
        let sock = UnixStream::connect(path).map_err(|source| DbusError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut c = Connection {
            sock,
            serial: 0,
            signals: VecDeque::new(),
            unique_name: String::new(),
        };
        c.authenticate()?;
        let hello = c.call(
            Message::method_call(BUS_NAME, BUS_PATH, BUS_NAME, "Hello", Vec::new()),
            timeout,
        )?;
        c.unique_name = hello
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| protocol("Hello returned no name"))?
            .to_string();
        Ok(c)
    }

    /// The name the bus gave this connection.
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    fn authenticate(&mut self) -> Result<(), DbusError> {
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        self.sock
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
            .map_err(|e| self.io(e, "AUTH"))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() > 512 {
                return Err(DbusError::Auth("overlong answer".into()));
            }
            match self.sock.read(&mut byte) {
                Ok(0) => return Err(DbusError::Auth("the bus closed the connection".into())),
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(self.io(e, "AUTH")),
            }
        }
        let answer = String::from_utf8_lossy(&line).trim().to_string();
        if !answer.starts_with("OK ") {
            return Err(DbusError::Auth(answer));
        }
        self.sock
            .write_all(b"BEGIN\r\n")
            .map_err(|e| self.io(e, "BEGIN"))?;
        Ok(())
    }

    fn io(&self, e: std::io::Error, what: &str) -> DbusError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                DbusError::Timeout(what.to_string())
            }
            _ => DbusError::Io(e),
        }
    }

    /// Sends `msg` and returns its serial.
    pub fn send(&mut self, msg: &Message) -> Result<u32, DbusError> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let bytes = msg.encode(self.serial)?;
        let what = msg.member.clone().unwrap_or_default();
        self.sock.write_all(&bytes).map_err(|e| self.io(e, &what))?;
        Ok(self.serial)
    }

    /// Reads the next message, waiting until `deadline`.
    fn receive(&mut self, deadline: Instant, what: &str) -> Result<Message, DbusError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DbusError::Timeout(what.to_string()));
        }
        self.sock.set_read_timeout(Some(left))?;
        let mut head = [0u8; 16];
        self.sock
            .read_exact(&mut head)
            .map_err(|e| self.io(e, what))?;
        let mut buf = vec![0u8; Message::total_len(&head)?];
        buf[..16].copy_from_slice(&head);
        self.sock
            .read_exact(&mut buf[16..])
            .map_err(|e| self.io(e, what))?;
        Message::decode(&buf)
    }

    /// Calls a method and returns the reply's body; an error reply becomes
    /// [`DbusError::Remote`].
    pub fn call(&mut self, msg: Message, timeout: Duration) -> Result<Vec<Value>, DbusError> {
        let what = format!(
            "{}.{}",
            msg.interface.as_deref().unwrap_or(""),
            msg.member.as_deref().unwrap_or("")
        );
        let serial = self.send(&msg)?;
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.receive(deadline, &what)?;
            match m.kind {
                METHOD_RETURN if m.reply_serial == Some(serial) => return Ok(m.body),
                ERROR if m.reply_serial == Some(serial) => {
                    return Err(DbusError::Remote {
                        name: m.error_name.unwrap_or_default(),
                        message: m
                            .body
                            .first()
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    })
                }
                SIGNAL => self.signals.push_back(m),
                _ => log::debug!("D-Bus: unexpected message {m:?} while waiting for {what}"),
            }
        }
    }

    /// Asks the bus to route the signals `rule` matches to this connection.
    pub fn add_match(&mut self, rule: &str, timeout: Duration) -> Result<(), DbusError> {
        self.call(
            Message::method_call(
                BUS_NAME,
                BUS_PATH,
                BUS_NAME,
                "AddMatch",
                vec![Value::str(rule)],
            ),
            timeout,
        )
        .map(drop)
    }

    /// The next signal (kept from earlier calls, else read), waiting until `deadline`.
    pub fn next_signal(&mut self, deadline: Instant) -> Result<Message, DbusError> {
        if let Some(m) = self.signals.pop_front() {
            return Ok(m);
        }
        loop {
            let m = self.receive(deadline, "a signal")?;
            if m.kind == SIGNAL {
                return Ok(m);
            }
            log::debug!("D-Bus: unexpected message {m:?} while waiting for a signal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(values: &[Value]) -> Vec<u8> {
        let mut w = Writer::default();
        for v in values {
            w.value(v).unwrap();
        }
        w.buf
    }

    #[test]
    fn basic_encodings() {
        assert_eq!(body(&[Value::str("ab")]), [2, 0, 0, 0, b'a', b'b', 0]);
        assert_eq!(
            body(&[Value::Byte(7), Value::U64(1)]),
            [7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(body(&[Value::Bool(true)]), [1, 0, 0, 0]);
        // An array's length excludes the padding before its first element.
        assert_eq!(
            body(&[Value::Array("t".into(), vec![Value::U64(2)])]),
            [8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            body(&[Value::variant(Value::U32(5))]),
            [1, b'u', 0, 0, 5, 0, 0, 0]
        );
    }

    fn props() -> Value {
        let prop = |k: &str, v: Value| Value::Struct(vec![Value::str(k), Value::variant(v)]);
        Value::Array(
            "(sv)".into(),
            vec![
                prop("Slice", Value::str("system.slice")),
                prop("Delegate", Value::Bool(true)),
                prop("PIDs", Value::Array("u".into(), vec![Value::U32(42)])),
                prop("MemoryMax", Value::U64(1 << 30)),
                prop(
                    "DeviceAllow",
                    Value::Array(
                        "(ss)".into(),
                        vec![Value::Struct(vec![
                            Value::str("char-pts"),
                            Value::str("rwm"),
                        ])],
                    ),
                ),
                prop(
                    "AllowedCPUs",
                    Value::Array("y".into(), vec![Value::Byte(3)]),
                ),
            ],
        )
    }

    #[test]
    fn message_round_trip() {
        let aux = Value::Array("(sa(sv))".into(), Vec::new());
        let call = Message::method_call(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            vec![Value::str("x.scope"), Value::str("replace"), props(), aux],
        );
        let wire = call.encode(9).unwrap();
        assert_eq!(
            wire.len() % 8,
            0,
            "whole message is padded only by its parts"
        );
        let back = Message::decode(&wire).unwrap();
        assert_eq!(back.serial, 9);
        assert_eq!(back.body, call.body);
        assert_eq!(back.member.as_deref(), Some("StartTransientUnit"));
        assert_eq!(back.destination, call.destination);
        let sig: String = back.body.iter().map(Value::signature).collect();
        assert_eq!(sig, "ssa(sv)a(sa(sv))");
    }

    #[test]
    fn dicts_decode() {
        let entry = Value::DictEntry(
            Box::new(Value::str("k")),
            Box::new(Value::variant(Value::I64(-3))),
        );
        let mut m = Message {
            kind: SIGNAL,
            path: Some("/a".into()),
            interface: Some("a.b".into()),
            member: Some("C".into()),
            body: vec![Value::Array("{sv}".into(), vec![entry])],
            ..Message::default()
        };
        let back = Message::decode(&m.encode(1).unwrap()).unwrap();
        m.serial = 1;
        assert_eq!(back, m);
    }

    #[test]
    fn malformed_input_is_refused() {
        let ok = Message::method_call("d", "/p", "i.f", "M", vec![Value::str("x")])
            .encode(1)
            .unwrap();
        for cut in [0, 8, 16, ok.len() - 1] {
            assert!(Message::decode(&ok[..cut]).is_err(), "cut at {cut}");
        }
        let mut big_endian = ok.clone();
        big_endian[0] = b'B';
        assert!(Message::decode(&big_endian).is_err());
        assert!(parse_signature("a").is_err());
        assert!(parse_signature("()").is_err());
        assert!(parse_signature("a{vs}").is_err());
        assert!(parse_signature(&"a".repeat(40)).is_err());
        let wrong = Value::Array("u".into(), vec![Value::str("no")]);
        assert!(Writer::default().value(&wrong).is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            socket_of("unix:path=/run/dbus/system_bus_socket").unwrap(),
            PathBuf::from("/run/dbus/system_bus_socket")
        );
        assert_eq!(
            socket_of("tcp:host=x;unix:guid=1,path=/a%20b").unwrap(),
            PathBuf::from("/a b")
        );
        assert!(socket_of("unix:abstract=/x").is_err());
    }

    /// A private dbus-daemon (the reference bus, from Debian's dbus-daemon package): Hello,
    /// a call with a reply, an error reply, and a signal routed by a match rule.
    #[test]
    fn talks_to_a_real_bus() {
        let daemon = Path::new("/usr/bin/dbus-daemon");
        assert!(
            daemon.exists(),
            "dbus-daemon is needed (scripts/install-deps.sh)"
        );
        let dir = std::env::temp_dir().join(format!("pelagos-dbus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("bus");
        let mut child = std::process::Command::new(daemon)
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", sock.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let result = std::panic::catch_unwind(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !sock.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let t = Duration::from_secs(20);
            let mut a = Connection::open(&sock, t).unwrap();
            let mut b = Connection::open(&sock, t).unwrap();
            assert!(a.unique_name().starts_with(':'));
            let names = a
                .call(
                    Message::method_call(BUS_NAME, BUS_PATH, BUS_NAME, "ListNames", Vec::new()),
                    t,
                )
                .unwrap();
            let Value::Array(_, names) = &names[0] else {
                panic!("{names:?}")
            };
            assert!(names.contains(&Value::str(b.unique_name())));
            let err = a
                .call(
                    Message::method_call(BUS_NAME, BUS_PATH, BUS_NAME, "NoSuchMethod", Vec::new()),
                    t,
                )
                .unwrap_err();
            assert!(
                matches!(&err, DbusError::Remote { name, .. } if name == "org.freedesktop.DBus.Error.UnknownMethod"),
                "{err}"
            );
            b.add_match("type='signal',interface='org.pelagos.Test'", t)
                .unwrap();
            let signal = Message {
                kind: SIGNAL,
                path: Some("/org/pelagos/Test".into()),
                interface: Some("org.pelagos.Test".into()),
                member: Some("Done".into()),
                body: vec![Value::U32(7), Value::ObjectPath("/job/7".into())],
                ..Message::default()
            };
            a.send(&signal).unwrap();
            // The bus's own NameAcquired comes first.
            let got = loop {
                let m = b.next_signal(Instant::now() + t).unwrap();
                if m.interface.as_deref() == Some("org.pelagos.Test") {
                    break m;
                }
            };
            assert_eq!(got.member.as_deref(), Some("Done"));
            assert_eq!(got.body, signal.body);
            assert_eq!(got.sender.as_deref(), Some(a.unique_name()));
        });
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
