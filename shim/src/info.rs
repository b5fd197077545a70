//! `-info`: the runtime introspection containerd 2.x asks of a shim before it uses a CRI
//! handler (and, from 2.2, at task creation). stdin carries the handler's runtime options as a
//! protobuf `Any` (empty without options); stdout gets a `containerd.types.RuntimeInfo` whose
//! `features` are the core's OCI features document as JSON, which is what CRI reads
//! `recursive_read_only_mounts` and `user_namespaces` from. Nothing is forked or probed: it is a
//! read of stdin and a write of a few kilobytes.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::options::{self, OptionsError};

/// containerd's type URL for the runtime-spec features document (typeurl marshals Go types
/// that are not protobuf messages as JSON).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("-info: runtime options on stdin: {0}")]
    Input(containerd_shim_protos::protobuf::Error),
    #[error("-info: {0}")]
    Options(#[from] OptionsError),
    #[error("-info: encode RuntimeInfo: {0}")]
    Encode(containerd_shim_protos::protobuf::Error),
}

/// The RuntimeInfo for the runtime options in `input`, encoded.
pub fn run(input: &[u8]) -> Result<Vec<u8>, InfoError> {
    let opts = if input.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(input).map_err(InfoError::Input)?)
    };
    // Options this shim would refuse at create are refused here too, by the same words.
    options::decode(opts.as_ref())?;
    let info = RuntimeInfo {
        name: crate::RUNTIME_NAME.to_owned(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: option_env!("PELAGOS_REVISION")
                .unwrap_or_default()
                .to_owned(),
            ..Default::default()
        })
        .into(),
        options: opts.into(),
        features: Some(Any {
            type_url: FEATURES_TYPE_URL.to_owned(),
            value: pelagos::features::document().to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    info.write_to_bytes().map_err(InfoError::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_info_carries_the_features_and_echoes_the_options() {
        let info = RuntimeInfo::parse_from_bytes(&run(&[]).unwrap()).unwrap();
        assert_eq!(info.name, "io.containerd.pelagos.v2");
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert!(info.options.is_none());
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let f: oci_spec::runtime::Features = serde_json::from_slice(&info.features.value).unwrap();
        assert!(f.mount_options().as_ref().unwrap().contains(&"rro".into()));

        let cri_options = options::tests::cri_any("", "LogLevel = \"debug\"\n");
        let bytes = cri_options.write_to_bytes().unwrap();
        let info = RuntimeInfo::parse_from_bytes(&run(&bytes).unwrap()).unwrap();
        assert_eq!(info.options.as_ref(), Some(&cri_options));
    }

    #[test]
    fn bad_input_is_named() {
        let err = run(b"\xff\xff\xff").unwrap_err().to_string();
        assert!(err.starts_with("-info: runtime options on stdin:"), "{err}");
        let typo = options::tests::cri_any("", "Sytemdcgroup = true\n");
        let err = run(&typo.write_to_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"Sytemdcgroup\""), "{err}");
    }
}
