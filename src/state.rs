//! Runtime-spec state of a container, persisted under the state root as `<root>/<id>/state.json`
//! together with what the library needs to find the container again from another process.

use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

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

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
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

impl State {
    /// The JSON hooks receive on stdin.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes")
    }
}

/// The content of state.json.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(flatten)]
    pub state: State,
    /// Start time of the init (field 22 of `/proc/<pid>/stat`): tells a recycled pid apart.
    pub init_start_time: u64,
    /// The container's cgroup path (see `cgroups::resolve_path`).
    pub cgroup_path: String,
    /// The systemd unit owning the cgroup (systemd cgroup driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// The cgroup's ancestors the create made, removed at delete once empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_parents: Vec<PathBuf>,
    pub rootfs: PathBuf,
    /// Whether the container has a pid namespace of its own (killing the init kills all).
    pub own_pid_ns: bool,
    /// Unix time in nanoseconds when the container was created.
    pub created: u128,
    /// The container's config, for exec, hooks and deletion after the bundle is gone.
    pub spec: Spec,
}

pub const FILE: &str = "state.json";

impl Record {
    /// Writes `<dir>/state.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(FILE);
        let tmp = dir.join(".state.json.tmp");
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(self).expect("state record serializes");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn load(dir: &Path) -> Result<Record, StateError> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_state_json_is_runtime_spec() {
        let dir = std::env::temp_dir().join(format!("pelagos-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = Record {
            state: State {
                oci_version: "1.2.0".into(),
                id: "c1".into(),
                status: Status::Created,
                pid: 42,
                bundle: "/b".into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
            },
            init_start_time: 7,
            cgroup_path: "/pelagos/c1".into(),
            systemd_unit: None,
            cgroup_parents: Vec::new(),
            rootfs: "/b/rootfs".into(),
            own_pid_ns: true,
            created: 1,
            spec: Spec::default(),
        };
        rec.save(&dir).unwrap();
        let back = Record::load(&dir).unwrap();
        assert_eq!(back.state.pid, 42);
        assert_eq!(back.state.status, Status::Created);
        assert_eq!(back.init_start_time, 7);
        let v: serde_json::Value = serde_json::from_slice(&rec.state.to_json()).unwrap();
        assert_eq!(v["ociVersion"], "1.2.0");
        assert_eq!(v["status"], "created");
        assert_eq!(v["annotations"]["a"], "b");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
