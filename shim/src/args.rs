//! Command-line flags as containerd passes them: Go `flag` package syntax (`-name value`,
//! `-name=value`, `--name`, boolean `-debug`), flags first, then the action (`start`, `delete`,
//! or none to serve).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    BadBool { flag: String, value: String },
    #[error("unexpected argument {0:?} after the action")]
    Extra(String),
}

/// What containerd told this invocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC socket; part of the shim socket's hash.
    pub address: String,
    pub publish_binary: String,
    /// Only passed to `delete`.
    pub bundle: String,
    /// The address the daemon serves on (set by `start` when it re-executes the daemon).
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    /// `-info`: print the RuntimeInfo and exit.
    pub info: bool,
    /// `start`, `delete`, or empty for the daemon.
    pub action: String,
}

/// Parses the arguments after argv[0].
pub fn parse<I, S>(args: I) -> Result<Flags, ArgsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            i += 1;
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !b.starts_with('-'))
        else {
            break;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        match name {
            "debug" | "v" | "version" | "info" => {
                let on = match inline.as_deref() {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| ArgsError::BadBool {
                        flag: name.to_owned(),
                        value: v.to_owned(),
                    })?,
                };
                match name {
                    "debug" => flags.debug = on,
                    "info" => flags.info = on,
                    _ => flags.version = on,
                }
            }
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| ArgsError::MissingValue(name.to_owned()))?
                    }
                };
                let slot = match name {
                    "namespace" => &mut flags.namespace,
                    "id" => &mut flags.id,
                    "address" => &mut flags.address,
                    "publish-binary" => &mut flags.publish_binary,
                    "bundle" => &mut flags.bundle,
                    _ => &mut flags.socket,
                };
                *slot = value;
            }
            other => return Err(ArgsError::Unknown(other.to_owned())),
        }
        i += 1;
    }
    if let Some(action) = args.get(i) {
        flags.action = action.clone();
        if let Some(extra) = args.get(i + 1) {
            return Err(ArgsError::Extra(extra.clone()));
        }
    }
    Ok(flags)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_invocation_as_containerd_sends_it() {
        let f = parse([
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn delete_with_bundle_and_equals_syntax() {
        let f = parse(["--id=x", "-bundle=/b", "-debug=false", "delete"]).unwrap();
        assert_eq!((f.id.as_str(), f.bundle.as_str()), ("x", "/b"));
        assert!(!f.debug);
        assert_eq!(f.action, "delete");
    }

    #[test]
    fn no_action_means_serve() {
        let f = parse(["-id", "x", "-socket", "unix:///run/containerd/s/ab"]).unwrap();
        assert_eq!(f.action, "");
        assert_eq!(f.socket, "unix:///run/containerd/s/ab");
    }

    #[test]
    fn info_is_a_flag_as_containerd_passes_it() {
        // containerd 2.x runs `<shim> -info` (with -namespace/-address/-id on some paths).
        assert!(parse(["-info"]).unwrap().info);
        let f = parse(["-namespace", "k8s.io", "-id", "c", "-info"]).unwrap();
        assert!(f.info && f.action.is_empty());
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            parse(["-nope"]).unwrap_err(),
            ArgsError::Unknown("nope".into())
        );
        assert_eq!(
            parse(["-id"]).unwrap_err(),
            ArgsError::MissingValue("id".into())
        );
        assert!(matches!(
            parse(["-debug=maybe"]).unwrap_err(),
            ArgsError::BadBool { .. }
        ));
        assert_eq!(
            parse(["start", "now"]).unwrap_err(),
            ArgsError::Extra("now".into())
        );
    }

    #[test]
    fn double_dash_ends_flags() {
        let f = parse(["-id", "a", "--", "-start"]).unwrap();
        assert_eq!(f.action, "-start");
    }
}
