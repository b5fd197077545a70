//! What containerd passes besides flags: the `start` stdin (a BootstrapParams on containerd
//! ≥ 2.3, a legacy runtime-options `Any` before), and the runtime options `Any` of Create
//! (runc's `containerd.runc.v1.Options`, or CRI's `runtimeoptions.v1.Options` wrapper for
//! third-party runtimes).

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
}

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
/// wrapper is accepted (its TOML body names nothing pelagos uses yet).
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
            })
        }
        Kind::RuntimeOptions => {
            let (type_url, config_path, body) = parse_runtime_options(&any.value).map_err(err)?;
            log::info!(
                "runtime options from CRI: type {type_url:?}, config path {config_path:?}, {} bytes of TOML (not used)",
                body.len()
            );
            Ok(Options::default())
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
mod tests {
    use super::*;
    use containerd_shim_protos::bootstrap_api::Extension;

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
        assert_eq!(decode(Some(&any)).unwrap(), Options::default());
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
