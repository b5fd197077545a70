//! Task.Checkpoint as runc's shim does it: the init's tree dumped by CRIU into the directory
//! containerd gives (`path`), with the request's `containerd.runc.v1.CheckpointOptions`. CRIU's
//! work dir is `<bundle>/criu-work` (removed after) unless the options name one; a failed dump
//! leaves its log as `<bundle>/criu-dump.log`, as runc's shim does, and the container running.
//! No event: runc's shim sends none (the exit of `--exit` is the usual TaskExit).

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions as ApiOptions;
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use pelagos::checkpoint::{CheckpointOptions, DUMP_LOG};
use ttrpc::Code;

use super::{status, Res, Shim};
use crate::lifecycle::{LifecycleError, Status};

const OPTIONS_URL: &str = "containerd.runc.v1.CheckpointOptions";
/// What ctr sends for a runtime that is not runc's: the v1 runtime's message, same fields.
const LEGACY_OPTIONS_URL: &str = "containerd.linux.runc.CheckpointOptions";

/// The request's options; none is all defaults (leave running... as runc's shim: exit false).
fn decode(req: &CheckpointTaskRequest) -> Res<ApiOptions> {
    let Some(any) = req.options.as_ref() else {
        return Ok(ApiOptions::default());
    };
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != OPTIONS_URL && name != LEGACY_OPTIONS_URL {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!(
                "checkpoint: options of type {:?}, want {OPTIONS_URL}",
                any.type_url
            ),
        ));
    }
    ApiOptions::parse_from_bytes(&any.value).map_err(|e| {
        status(
            Code::INVALID_ARGUMENT,
            format!("checkpoint: decode {OPTIONS_URL}: {e}"),
        )
    })
}

impl Shim {
    pub(super) fn do_checkpoint(&self, req: &CheckpointTaskRequest) -> Res<()> {
        let api = decode(req)?;
        log::info!(
            "container {}: checkpoint into {} ({:?}: {api:?})",
            req.id,
            req.path,
            req.options.as_ref().map(|a| a.type_url.as_str())
        );
        if !api.empty_namespaces.is_empty() {
            log::warn!(
                "container {}: checkpoint: empty_namespaces {:?} apply at restore",
                req.id,
                api.empty_namespaces
            );
        }
        let image = if !req.path.is_empty() {
            PathBuf::from(&req.path)
        } else if !api.image_path.is_empty() {
            PathBuf::from(&api.image_path)
        } else {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "checkpoint: no image path (request path and options.image_path are empty)",
            ));
        };
        let (bundle, cell) = {
            let st = self.lock_settled(&req.id);
            let t = st.life.get(&req.id)?;
            match t.init.status {
                Status::Running | Status::Paused => {}
                Status::Created => {
                    return Err(status(
                        Code::UNKNOWN,
                        "cannot checkpoint a task in created state",
                    ))
                }
                _ => {
                    return Err(status(
                        Code::UNKNOWN,
                        "cannot checkpoint a stopped container",
                    ))
                }
            }
            let cell =
                st.h.handles
                    .get(&req.id)
                    .map(|h| h.container.clone())
                    .ok_or_else(|| LifecycleError::NotFound(req.id.clone()))?;
            (t.bundle.clone(), cell)
        };
        let own_work = api.work_path.is_empty();
        let work = match own_work {
            true => bundle.join("criu-work"),
            false => PathBuf::from(&api.work_path),
        };
        let opts = CheckpointOptions {
            image_path: image,
            work_path: Some(work.clone()),
            leave_running: !api.exit,
            tcp_established: api.open_tcp,
            ext_unix_sk: api.external_unix_sockets,
            file_locks: api.file_locks,
            shell_job: api.terminal,
            cgroups_mode: (!api.cgroups_mode.is_empty()).then(|| api.cgroups_mode.clone()),
            criu: None,
        };
        let result = cell
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.checkpoint(&opts).map_err(|e| e.to_string()))
            .unwrap_or_else(|| Err("container is gone".into()));
        let result = result.map_err(|e| {
            let kept = keep_log(&work, &bundle);
            log::error!("container {}: {e}", req.id);
            status(Code::UNKNOWN, format!("{e}{kept}"))
        });
        if own_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        result
    }
}

/// Copies a failed dump's log into the bundle (runc's shim: `criu-dump.log`), for the error.
fn keep_log(work: &Path, bundle: &Path) -> String {
    let to = bundle.join("criu-dump.log");
    match std::fs::copy(work.join(DUMP_LOG), &to) {
        Ok(_) => format!(" path= {}", to.display()),
        Err(_) => String::new(),
    }
}
