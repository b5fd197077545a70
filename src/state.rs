//! Runtime-spec state of a container, persisted under the state root.

use std::path::PathBuf;

/// Runtime-spec status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// The runtime-spec state document (`ociVersion`, `id`, `status`, `pid`, `bundle`,
/// `annotations`) plus what the library needs to find the container again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}
