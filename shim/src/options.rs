//! What containerd passes besides flags: the `start` stdin (a BootstrapParams on containerd
//! ≥ 2.3, a legacy runtime-options `Any` before), and the runtime options `Any` of Create
//! (runc's `containerd.runc.v1.Options`, or CRI's `runtimeoptions.v1.Options` wrapper for
//! third-party runtimes).
//!
//! Pelagos' own settings are TOML keys, read from the CRI wrapper: its `config_body` (what
//! containerd 2.x sends: the handler's `options` table) or else the file named by its
//! `config_path` (containerd 1.6/1.7 pass only `TypeUrl` and `ConfigPath` from that table).
//! Keys: `SystemdCgroup`, `ShimCgroup`, `LogLevel`, `NoPivotRoot`, `IoUid`, `IoGid`; anything
//! else is an error, so a typo in the node's config fails pod creation loudly.

use std::path::Path;

use containerd_shim_protos::bootstrap_api::BootstrapParams;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("decode runtime options {type_url}: {source}")]
    Decode {
        type_url: String,
        source: containerd_shim_protos::protobuf::Error,
    },
    #[error("runtime options file {path}: {source}")]
    ConfigFile {
        path: String,
        source: std::io::Error,
    },
    #[error("runtime options ({origin}) line {line}: {msg}")]
    Syntax {
        origin: String,
        line: usize,
        msg: String,
    },
    #[error("runtime options ({origin}): unknown key {key:?} (known: {KNOWN_KEYS})")]
    UnknownKey { origin: String, key: String },
    #[error("runtime options ({origin}): {key} = {value} is not {want}")]
    BadValue {
        origin: String,
        key: String,
        value: String,
        want: &'static str,
    },
    #[error("runtime options ({origin}): SystemdCgroup = true but systemd is not running on this host (no {SYSTEMD_RUN_DIR})")]
    NoSystemd { origin: String },
}

const KNOWN_KEYS: &str = "SystemdCgroup, ShimCgroup, LogLevel, NoPivotRoot, IoUid, IoGid";
/// sd_booted(3): systemd is PID 1 iff this directory exists.
const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// How `start` was called.
#[derive(Debug, PartialEq)]
pub enum StartInput {
    /// containerd ≥ 2.3.
    Bootstrap(Box<BootstrapParams>),
    /// Older: the runtime options, if any.
    Legacy(Option<Any>),
}

/// Tells BootstrapParams from a legacy `Any`. A legacy `Any` also parses as BootstrapParams
/// (its type URL lands in instance_id), so like containerd's own `parseBootstrapParams` only
/// a message naming this very instance and namespace counts.
pub fn detect_start_input(input: &[u8], id: &str, namespace: &str) -> StartInput {
    if input.is_empty() {
        return StartInput::Legacy(None);
    }
    if let Ok(p) = BootstrapParams::parse_from_bytes(input) {
        if p.instance_id == id && p.namespace == namespace {
            return StartInput::Bootstrap(Box::new(p));
        }
    }
    StartInput::Legacy(Any::parse_from_bytes(input).ok())
}

/// The runtime options carried by the start input, if any.
pub fn runtime_options(input: &StartInput) -> Option<&Any> {
    match input {
        StartInput::Legacy(any) => any.as_ref(),
        StartInput::Bootstrap(p) => p
            .extensions
            .iter()
            .filter_map(|e| e.value.as_ref())
            .find(|a| kind(&a.type_url) != Kind::Other),
    }
}

/// The settings the shim honours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    pub no_pivot_root: bool,
    pub shim_cgroup: String,
    pub io_uid: u32,
    pub io_gid: u32,
    /// `SystemdCgroup`: accepted only where systemd runs.
    pub systemd_cgroup: bool,
    /// `LogLevel`: the shim's log level, if set.
    pub log_level: Option<log::LevelFilter>,
    /// `CriuWorkPath`: CRIU's work dir (its logs) on a restore; empty: `<bundle>/work`.
    pub criu_work_path: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Runc,
    RuntimeOptions,
    Other,
}

fn kind(type_url: &str) -> Kind {
    match type_url.rsplit('/').next().unwrap_or(type_url) {
        "containerd.runc.v1.Options" | "io.containerd.runc.v1.options" => Kind::Runc,
        "runtimeoptions.v1.Options" => Kind::RuntimeOptions,
        _ => Kind::Other,
    }
}

/// Decodes the options `Any`. Unknown types are logged and ignored; a CRI runtimeoptions
/// wrapper carries pelagos' TOML settings (see the module doc).
pub fn decode(any: Option<&Any>) -> Result<Options, OptionsError> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
        return Ok(Options::default());
    };
    let err = |source| OptionsError::Decode {
        type_url: any.type_url.clone(),
        source,
    };
    match kind(&any.type_url) {
        Kind::Runc => {
            let o = RuncOptions::parse_from_bytes(&any.value).map_err(err)?;
            Ok(Options {
                no_pivot_root: o.no_pivot_root,
                shim_cgroup: o.shim_cgroup,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                systemd_cgroup: o.systemd_cgroup,
                log_level: None,
                criu_work_path: o.criu_work_path,
            })
        }
        Kind::RuntimeOptions => {
            let (type_url, config_path, body) = parse_runtime_options(&any.value).map_err(err)?;
            log::debug!(
                "runtime options from CRI: type {type_url:?}, config path {config_path:?}, {} bytes of TOML",
                body.len()
            );
            let opts = if !body.is_empty() {
                parse_toml(&String::from_utf8_lossy(&body), "CRI config body")?
            } else if !config_path.is_empty() {
                let text = std::fs::read_to_string(&config_path).map_err(|source| {
                    OptionsError::ConfigFile {
                        path: config_path.clone(),
                        source,
                    }
                })?;
                parse_toml(&text, &config_path)?
            } else {
                Options::default()
            };
            Ok(opts)
        }
        Kind::Other => {
            log::warn!(
                "ignoring runtime options of unknown type {:?}",
                any.type_url
            );
            Ok(Options::default())
        }
    }
}

/// Pelagos' settings from a flat TOML table (`key = value` lines, `#` comments). The CRI
/// wrapper's own keys (`TypeUrl`, `ConfigPath`) may appear in a body and are skipped.
fn parse_toml(text: &str, origin: &str) -> Result<Options, OptionsError> {
    let mut o = Options::default();
    for (n, raw) in text.lines().enumerate() {
        let syntax = |msg: String| OptionsError::Syntax {
            origin: origin.to_owned(),
            line: n + 1,
            msg,
        };
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            return Err(syntax(format!("tables are not supported: {line}")));
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax(format!("expected key = value, got {line:?}")))?;
        let key = key.trim().trim_matches('"');
        let value = value.trim();
        let bad = |want| OptionsError::BadValue {
            origin: origin.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            want,
        };
        let boolean = || match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad("a boolean")),
        };
        let string = || toml_string(value).ok_or_else(|| bad("a string"));
        let id = || value.parse::<u32>().map_err(|_| bad("a uid/gid"));
        match key {
            "SystemdCgroup" => o.systemd_cgroup = boolean()?,
            "ShimCgroup" => o.shim_cgroup = string()?,
            "NoPivotRoot" => o.no_pivot_root = boolean()?,
            "IoUid" => o.io_uid = id()?,
            "IoGid" => o.io_gid = id()?,
            "CriuWorkPath" => o.criu_work_path = string()?,
            "LogLevel" => {
                let level = string()?;
                o.log_level = Some(match level.to_ascii_lowercase().as_str() {
                    "error" => log::LevelFilter::Error,
                    "warn" | "warning" => log::LevelFilter::Warn,
                    "info" => log::LevelFilter::Info,
                    "debug" => log::LevelFilter::Debug,
                    "trace" => log::LevelFilter::Trace,
                    _ => return Err(bad("one of error, warn, info, debug, trace")),
                });
            }
            "TypeUrl" | "ConfigPath" => {}
            _ => {
                return Err(OptionsError::UnknownKey {
                    origin: origin.to_owned(),
                    key: key.to_owned(),
                })
            }
        }
    }
    if o.systemd_cgroup && !Path::new(SYSTEMD_RUN_DIR).is_dir() {
        return Err(OptionsError::NoSystemd {
            origin: origin.to_owned(),
        });
    }
    Ok(o)
}

/// The line up to a `#` that is not inside a quoted string.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}

/// A TOML basic (`"..."`, with `\"`, `\\`, `\n`, `\t` escapes) or literal (`'...'`) string.
fn toml_string(v: &str) -> Option<String> {
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return (!inner.contains('\'')).then(|| inner.to_owned());
    }
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                c @ ('"' | '\\') => c,
                _ => return None,
            }),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `runtimeoptions.v1.Options{type_url=1, config_path=2, config_body=3}`: three strings, read
/// by hand since the message is not among the generated protos.
fn parse_runtime_options(
    buf: &[u8],
) -> Result<(String, String, Vec<u8>), containerd_shim_protos::protobuf::Error> {
    let mut is = CodedInputStream::from_bytes(buf);
    let (mut t, mut p, mut b) = (String::new(), String::new(), Vec::new());
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            10 => t = is.read_string()?,
            18 => p = is.read_string()?,
            26 => b = is.read_bytes()?,
            _ => is.skip_field(
                containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)
                    .unwrap_or(containerd_shim_protos::protobuf::rt::WireType::Varint),
            )?,
        }
    }
    Ok((t, p, b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use containerd_shim_protos::bootstrap_api::Extension;

    /// A runtimeoptions.v1.Options `Any` with `config_path` and `config_body`.
    pub(crate) fn cri_any(path: &str, body: &str) -> Any {
        let mut v = Vec::new();
        for (tag, field) in [(18u8, path), (26u8, body)] {
            if !field.is_empty() {
                v.push(tag);
                let mut len = field.len();
                while len >= 0x80 {
                    v.push((len as u8 & 0x7f) | 0x80);
                    len >>= 7;
                }
                v.push(len as u8);
                v.extend_from_slice(field.as_bytes());
            }
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: v,
            ..Default::default()
        }
    }

    #[test]
    fn cri_toml_body_sets_pelagos_options() {
        let body = "# pelagos\nShimCgroup = \"/pods/shim#1\" # comment\nLogLevel = 'debug'\n\
                    NoPivotRoot = true\nIoUid = 1000\nIoGid = 1001\nSystemdCgroup = false\n";
        let o = decode(Some(&cri_any("", body))).unwrap();
        assert_eq!(o.shim_cgroup, "/pods/shim#1");
        assert_eq!(o.log_level, Some(log::LevelFilter::Debug));
        assert!(o.no_pivot_root);
        assert_eq!((o.io_uid, o.io_gid), (1000, 1001));
        assert!(!o.systemd_cgroup);
    }

    #[test]
    fn cri_config_path_is_read_when_there_is_no_body() {
        let dir = std::env::temp_dir().join(format!("pelagos-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("shim.toml");
        std::fs::write(&file, "LogLevel = \"warn\"\n").unwrap();
        let o = decode(Some(&cri_any(file.to_str().unwrap(), ""))).unwrap();
        assert_eq!(o.log_level, Some(log::LevelFilter::Warn));
        let missing = dir.join("missing.toml");
        let err = decode(Some(&cri_any(missing.to_str().unwrap(), "")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_cri_options_name_what_is_wrong() {
        let cases = [
            ("LogLevel = \"loud\"", "LogLevel = \"loud\" is not one of"),
            (
                "NoPivotRoot = \"yes\"",
                "NoPivotRoot = \"yes\" is not a boolean",
            ),
            ("IoUid = -1", "IoUid = -1 is not a uid/gid"),
            ("ShimCgroup = /x", "ShimCgroup = /x is not a string"),
            ("[options]", "line 1: tables are not supported"),
            ("SystemdCgroup", "line 1: expected key = value"),
            ("Sytemdcgroup = true", "unknown key \"Sytemdcgroup\""),
        ];
        for (body, want) in cases {
            let err = decode(Some(&cri_any("", body))).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn systemd_cgroup_needs_systemd() {
        let got = decode(Some(&cri_any("", "SystemdCgroup = true")));
        if Path::new(SYSTEMD_RUN_DIR).is_dir() {
            assert!(got.unwrap().systemd_cgroup);
        } else {
            let err = got.unwrap_err().to_string();
            assert!(err.contains("systemd is not running"), "{err}");
        }
    }

    fn runc_any(no_pivot: bool) -> Any {
        let o = RuncOptions {
            no_pivot_root: no_pivot,
            shim_cgroup: "/shims".into(),
            ..Default::default()
        };
        Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_params_are_recognised_only_for_this_instance() {
        let p = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "default".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            extensions: vec![Extension {
                value: Some(runc_any(true)).into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = p.write_to_bytes().unwrap();
        let got = detect_start_input(&bytes, "c1", "default");
        let StartInput::Bootstrap(b) = &got else {
            panic!("not bootstrap: {got:?}")
        };
        assert_eq!(
            b.containerd_ttrpc_address,
            "/run/containerd/containerd.sock.ttrpc"
        );
        assert!(decode(runtime_options(&got)).unwrap().no_pivot_root);
        // The same bytes for another instance are not ours.
        assert!(matches!(
            detect_start_input(&bytes, "c2", "default"),
            StartInput::Legacy(_)
        ));
    }

    #[test]
    fn legacy_any_is_not_mistaken_for_bootstrap() {
        // An Any parses as BootstrapParams too: instance_id = the type URL.
        let any = runc_any(true);
        let bytes = any.write_to_bytes().unwrap();
        let as_bp = BootstrapParams::parse_from_bytes(&bytes).unwrap();
        assert_eq!(as_bp.instance_id, "containerd.runc.v1.Options");
        let got = detect_start_input(&bytes, "c1", "default");
        assert_eq!(got, StartInput::Legacy(Some(any)));
        let o = decode(runtime_options(&got)).unwrap();
        assert!(o.no_pivot_root);
        assert_eq!(o.shim_cgroup, "/shims");
        assert_eq!(detect_start_input(&[], "c1", "d"), StartInput::Legacy(None));
    }

    #[test]
    fn cri_runtimeoptions_and_unknown_types_are_accepted() {
        // type_url=1 "x", config_path=2 "/etc/p.toml", config_body=3 "a = 1"
        let mut v = vec![10, 1, b'x', 18, 11];
        v.extend_from_slice(b"/etc/p.toml");
        v.extend_from_slice(&[26, 5]);
        v.extend_from_slice(b"a = 1");
        assert_eq!(
            parse_runtime_options(&v).unwrap(),
            ("x".into(), "/etc/p.toml".into(), b"a = 1".to_vec())
        );
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: v,
            ..Default::default()
        };
        let err = decode(Some(&any)).unwrap_err().to_string();
        assert!(err.contains("unknown key \"a\""), "{err}");
        assert!(err.contains("CRI config body"), "{err}");
        let other = Any {
            type_url: "example.com/Other".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(decode(Some(&other)).unwrap(), Options::default());
        let broken = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0xff, 0xff],
            ..Default::default()
        };
        assert!(decode(Some(&broken))
            .unwrap_err()
            .to_string()
            .contains("containerd.runc.v1.Options"));
    }
}
