//! GLib's GVariant text format, parsed into D-Bus values: what the values of runc's
//! `org.systemd.property.<Name>` annotations are written in (`uint64 123456789`,
//! `'inactive-or-failed'`, `true`, `@as []`, `[('/dev/null', 'rwm')]`), as godbus'
//! `ParseVariant` reads them.
//!
//! Covered: booleans, numbers (integers are `int32` and others `double` unless typed), strings
//! in single or double quotes with C escapes, arrays, tuples, variants `<...>`, type keywords
//! (`byte`, `int16` ... `uint64`, `double`, `string`, `objectpath`, `signature`, `boolean`) and
//! `@<signature>` annotations. Not covered (an error says so): dictionaries, maybe types and
//! byte strings.

use crate::dbus::Value;

#[derive(Debug, thiserror::Error)]
#[error("GVariant {text:?}: {reason}")]
pub struct GvariantError {
    text: String,
    reason: String,
}

/// A value as written, before its type is known.
#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Ast>),
    Tuple(Vec<Ast>),
    Variant(Box<Ast>),
    Typed(String, Box<Ast>),
}

/// Parses `text` into a value, its type inferred as GLib does when nothing names it.
pub fn parse(text: &str) -> Result<Value, GvariantError> {
    let err = |reason: String| GvariantError {
        text: text.to_string(),
        reason,
    };
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    let ast = p.value().map_err(err)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(err(format!("unexpected text at offset {}", p.pos)));
    }
    typed(&ast, None).map_err(err)
}

const KEYWORDS: &[(&str, &str)] = &[
    ("boolean", "b"),
    ("byte", "y"),
    ("int16", "n"),
    ("uint16", "q"),
    ("int32", "i"),
    ("uint32", "u"),
    ("int64", "x"),
    ("uint64", "t"),
    ("double", "d"),
    ("string", "s"),
    ("objectpath", "o"),
    ("signature", "g"),
];

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'+' | b'-'))
        {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    fn value(&mut self) -> Result<Ast, String> {
        self.skip_ws();
        match self.peek() {
            None => Err("a value is missing".into()),
            Some(b'\'' | b'"') => self.string().map(Ast::Str),
            Some(b'[') => self.list(b']').map(Ast::Array),
            Some(b'(') => {
                let items = self.list(b')')?;
                Ok(Ast::Tuple(items))
            }
            Some(b'<') => {
                self.pos += 1;
                let v = self.value()?;
                self.skip_ws();
                if self.peek() != Some(b'>') {
                    return Err(format!("'>' expected at offset {}", self.pos));
                }
                self.pos += 1;
                Ok(Ast::Variant(Box::new(v)))
            }
            Some(b'@') => {
                self.pos += 1;
                let start = self.pos;
                while self.peek().is_some_and(|c| !c.is_ascii_whitespace()) {
                    self.pos += 1;
                }
                let sig = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                split_signature(&sig)
                    .filter(|t| t.len() == 1)
                    .ok_or_else(|| format!("@{sig} is not a single complete type"))?;
                let v = self.value()?;
                Ok(Ast::Typed(sig, Box::new(v)))
            }
            Some(b'{') => Err("dictionaries are not supported".into()),
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                Ok(Ast::Number(self.word()))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let w = self.word();
                match w.as_str() {
                    "true" => Ok(Ast::Bool(true)),
                    "false" => Ok(Ast::Bool(false)),
                    "inf" | "nan" => Ok(Ast::Number(w)),
                    _ => match KEYWORDS.iter().find(|(k, _)| *k == w) {
                        Some((_, sig)) => {
                            let v = self.value()?;
                            Ok(Ast::Typed(sig.to_string(), Box::new(v)))
                        }
                        None => Err(format!("unknown word {w:?}")),
                    },
                }
            }
            Some(c) => Err(format!(
                "unexpected {:?} at offset {}",
                char::from(c),
                self.pos
            )),
        }
    }

    /// `[a, b]` or `(a, b)` (a one-tuple is `(a,)`).
    fn list(&mut self, close: u8) -> Result<Vec<Ast>, String> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "',' or '{}' expected at offset {}",
                        char::from(close),
                        self.pos
                    ))
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.pos += 1;
            if c == quote {
                break;
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.pos += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'u' | b'U' => {
                    let n = if e == b'u' { 4 } else { 8 };
                    let hex = self
                        .s
                        .get(self.pos..self.pos + n)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("bad \\{} escape", char::from(e)))?;
                    self.pos += n;
                    let mut buf = [0; 4];
                    out.extend_from_slice(hex.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| "a string that is not UTF-8".into())
    }
}

/// The complete types of a signature ("a(ss)t" → ["a(ss)", "t"]); None when malformed.
fn split_signature(sig: &str) -> Option<Vec<String>> {
    fn one(b: &[u8], i: usize) -> Option<usize> {
        match *b.get(i)? {
            b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g'
            | b'h' | b'v' => Some(i + 1),
            b'a' => one(b, i + 1),
            open @ (b'(' | b'{') => {
                let close = if open == b'(' { b')' } else { b'}' };
                let mut j = i + 1;
                while *b.get(j)? != close {
                    j = one(b, j)?;
                }
                Some(j + 1)
            }
            _ => None,
        }
    }
    let b = sig.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let end = one(b, i)?;
        out.push(sig[i..end].to_string());
        i = end;
    }
    Some(out)
}

fn number(text: &str, sig: &str) -> Result<Value, String> {
    let bad = || format!("{text:?} is not a valid {sig:?} number");
    if sig == "d" {
        return text.parse::<f64>().map(Value::Double).map_err(|_| bad());
    }
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => i128::from_str_radix(hex, 16),
        None => digits.parse::<i128>(),
    }
    .map_err(|_| bad())?;
    let n = if neg { -magnitude } else { magnitude };
    let v = match sig {
        "y" => u8::try_from(n).map(Value::Byte).ok(),
        "n" => i16::try_from(n).map(Value::I16).ok(),
        "q" => u16::try_from(n).map(Value::U16).ok(),
        "i" => i32::try_from(n).map(Value::I32).ok(),
        "u" => u32::try_from(n).map(Value::U32).ok(),
        "x" => i64::try_from(n).map(Value::I64).ok(),
        "t" => u64::try_from(n).map(Value::U64).ok(),
        _ => return Err(format!("a number is not of type {sig:?}")),
    };
    v.ok_or_else(|| format!("{text} is out of range for {sig:?}"))
}

/// The value of `ast`, of type `want` when given.
fn typed(ast: &Ast, want: Option<&str>) -> Result<Value, String> {
    let mismatch = |what: &str, sig: &str| format!("{what} is not of type {sig:?}");
    match ast {
        Ast::Typed(sig, inner) => match want {
            Some(w) if w != sig => Err(mismatch(&format!("a value typed {sig:?}"), w)),
            _ => typed(inner, Some(sig)),
        },
        Ast::Bool(b) => match want {
            None | Some("b") => Ok(Value::Bool(*b)),
            Some(w) => Err(mismatch("a boolean", w)),
        },
        Ast::Number(text) => {
            let sig = want.unwrap_or_else(|| {
                let float = !text.contains("0x")
                    && (text.contains(['.', 'e', 'E']) || text.ends_with("inf") || text == "nan");
                if float {
                    "d"
                } else {
                    "i"
                }
            });
            number(text, sig)
        }
        Ast::Str(s) => match want {
            None | Some("s") => Ok(Value::Str(s.clone())),
            Some("o") => Ok(Value::ObjectPath(s.clone())),
            Some("g") => Ok(Value::Signature(s.clone())),
            Some(w) => Err(mismatch("a string", w)),
        },
        Ast::Variant(inner) => match want {
            None | Some("v") => Ok(Value::variant(typed(inner, None)?)),
            Some(w) => Err(mismatch("a variant", w)),
        },
        Ast::Array(items) => {
            let elem = match want {
                Some(w) => match w.strip_prefix('a') {
                    Some(e) if !e.starts_with('{') => Some(e.to_string()),
                    _ => return Err(mismatch("an array", w)),
                },
                None => None,
            };
            let mut out = Vec::with_capacity(items.len());
            let mut elem = elem;
            for item in items {
                let v = typed(item, elem.as_deref())?;
                elem.get_or_insert_with(|| v.signature());
                out.push(v);
            }
            let elem = elem.ok_or("an empty array needs a type (e.g. @as [])")?;
            Ok(Value::Array(elem, out))
        }
        Ast::Tuple(items) => {
            let fields: Vec<Option<String>> = match want {
                Some(w) if w.starts_with('(') => {
                    let inner = split_signature(&w[1..w.len() - 1])
                        .ok_or_else(|| format!("bad signature {w:?}"))?;
                    if inner.len() != items.len() {
                        return Err(format!("a tuple of {} is not of type {w:?}", items.len()));
                    }
                    inner.into_iter().map(Some).collect()
                }
                Some(w) => return Err(mismatch("a tuple", w)),
                None => vec![None; items.len()],
            };
            items
                .iter()
                .zip(&fields)
                .map(|(a, t)| typed(a, t.as_deref()))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Struct)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_runc_users_write() {
        assert_eq!(parse("uint64 123456789").unwrap(), Value::U64(123_456_789));
        assert_eq!(
            parse("'inactive-or-failed'").unwrap(),
            Value::str("inactive-or-failed")
        );
        assert_eq!(parse("true").unwrap(), Value::Bool(true));
        assert_eq!(parse("42").unwrap(), Value::I32(42));
        assert_eq!(parse("-1").unwrap(), Value::I32(-1));
        assert_eq!(parse("1.5").unwrap(), Value::Double(1.5));
        assert_eq!(parse("@t 7").unwrap(), Value::U64(7));
        assert_eq!(parse("byte 0x10").unwrap(), Value::Byte(16));
        assert_eq!(parse(r#""a\"b\u00e9""#).unwrap(), Value::str("a\"b\u{e9}"));
        assert_eq!(
            parse("@as []").unwrap(),
            Value::Array("s".into(), Vec::new())
        );
        assert_eq!(
            parse("['a.service', 'b.service']").unwrap(),
            Value::Array(
                "s".into(),
                vec![Value::str("a.service"), Value::str("b.service")]
            )
        );
        assert_eq!(
            parse("[('/dev/null', 'rwm')]").unwrap(),
            Value::Array(
                "(ss)".into(),
                vec![Value::Struct(vec![
                    Value::str("/dev/null"),
                    Value::str("rwm")
                ])]
            )
        );
        assert_eq!(
            parse("@a(st) [('/dev/block/8:0', 1000)]").unwrap(),
            Value::Array(
                "(st)".into(),
                vec![Value::Struct(vec![
                    Value::str("/dev/block/8:0"),
                    Value::U64(1000)
                ])]
            )
        );
        assert_eq!(parse("<uint32 3>").unwrap(), Value::variant(Value::U32(3)));
    }

    #[test]
    fn bad_text_is_refused_saying_why() {
        for (text, want) in [
            ("", "missing"),
            ("uint64 -1", "out of range"),
            ("byte 256", "out of range"),
            ("[]", "empty array needs a type"),
            ("[1, 'a']", "not of type"),
            ("'open", "unterminated"),
            ("{'a': 1}", "dictionaries"),
            ("frob 1", "unknown word"),
            ("1 2", "unexpected text"),
            ("@zz 1", "single complete type"),
            ("uint64 'x'", "not of type"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
