//! Task.Checkpoint as runc's shim does it: the init's tree dumped by CRIU into the directory
//! containerd gives (`path`), with the request's `containerd.runc.v1.CheckpointOptions`. CRIU's
//! work dir is `<bundle>/criu-work` (removed after) unless the options name one; a failed dump
//! leaves its log as `<bundle>/criu-dump.log`, as runc's shim does, and the container running.
//! No event: runc's shim sends none (the exit of `--exit` is the usual TaskExit).
//!
//! Create with a checkpoint (containerd's extracted images) mounts the rootfs and opens the
//! stdio, and leaves the task created with pid 0; Start restores it with the core's
//! `Container::restore` (a terminal on a new pty whose master comes back over the console
//! socket, as runc's orphan-pts-master does), watches its OOM kills and publishes TaskStart
//! with the restored pid, as runc's shim does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions as ApiOptions;
use containerd_shim_protos::shim::shim::{CheckpointTaskRequest, CreateTaskRequest};
use pelagos::checkpoint::{CheckpointOptions, RestoreOptions, DUMP_LOG};
use ttrpc::Code;

use super::{
    has_private_pid_ns, status, task_io, with_container, ContainerCell, Handles, Prepared, Res,
    ServiceError, Shim,
};
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
        // An unknown id is NotFound before anything about the request, as in runc's shim.
        self.lock().life.get(&req.id)?;
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
            // containerd never asks for a pre-dump.
            ..CheckpointOptions::default()
        };
        let result = with_container(&cell, |c| c.checkpoint(&opts));
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

/// A Create from a checkpoint, held until Start restores it (runc's shim restores at Start).
pub(super) struct PendingRestore {
    config: pelagos::Config,
    bundle: PathBuf,
    stdio: pelagos::Stdio,
    terminal: bool,
    opts: RestoreOptions,
}

impl Shim {
    /// Create with `checkpoint`: the rootfs is mounted and the stdio opened now; the task is
    /// created with pid 0 and the checkpoint named in TaskCreate, as runc's shim does.
    pub(super) fn do_create_restore(&self, req: &CreateTaskRequest) -> Res<i32> {
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let Prepared {
            opts,
            config,
            spec,
            stdio_cfg,
            pio,
            stdio,
            mounts,
        } = self.prepare_create(req)?;
        let pending = PendingRestore {
            config,
            bundle: bundle.clone(),
            stdio,
            terminal: req.terminal,
            // runc's shim: the options' CriuWorkPath, else `<bundle>/work` (kept with the
            // bundle, so a failed restore's log stays until Delete).
            opts: RestoreOptions {
                image_path: PathBuf::from(&req.checkpoint),
                work_path: Some(match opts.criu_work_path.is_empty() {
                    true => bundle.join("work"),
                    false => PathBuf::from(&opts.criu_work_path),
                }),
                ..Default::default()
            },
        };
        let kill_all = !has_private_pid_ns(&spec);
        let mut st = self.lock();
        st.h.handles.insert(
            id.clone(),
            Handles {
                container: Arc::new(RwLock::new(None)),
                init_io: Some(pio),
                execs: HashMap::new(),
                rootfs: mounts.keep(),
                oom: None,
                namespaces: Arc::new(Mutex::new(Vec::new())),
                restore: Some(pending),
            },
        );
        st.life.created_from(
            &id,
            bundle,
            0,
            task_io(&stdio_cfg),
            req.rootfs.clone(),
            kill_all,
            &req.checkpoint,
        );
        drop(st);
        self.notify();
        log::info!("container {id} created from checkpoint {}", req.checkpoint);
        Ok(0)
    }

    /// At the Start of a container created from a checkpoint: restores it into `cell`.
    /// `None` for any other container.
    pub(super) fn restore_at_start(
        &self,
        id: &str,
        cell: &ContainerCell,
    ) -> Option<Result<(), ServiceError>> {
        let pending = self.lock().h.handles.get_mut(id)?.restore.take()?;
        let restored = pelagos::Container::restore(
            &pending.config,
            pelagos::CreateOptions {
                id: id.to_owned(),
                bundle: pending.bundle,
                stdio: pending.stdio,
                no_pivot: false,
                preserve_fds: Vec::new(),
            },
            &pending.opts,
        );
        // A terminal's new pty: its master came back over the console socket.
        let restored = restored.map_err(ServiceError::from).and_then(|c| {
            if !pending.terminal {
                return Ok(c);
            }
            let received = match self
                .lock()
                .h
                .handles
                .get_mut(id)
                .and_then(|h| h.init_io.as_mut())
            {
                Some(pio) => pio.receive_console().map_err(ServiceError::from),
                None => Err(ServiceError::Gone),
            };
            match received {
                Ok(()) => Ok(c),
                Err(e) => {
                    if let Err(d) = c.delete(true) {
                        log::warn!("container {id}: delete after a console failure: {d}");
                    }
                    Err(e)
                }
            }
        });
        let c = match restored {
            Ok(c) => c,
            Err(e) => {
                log::error!("container {id}: {e}");
                return Some(Err(e));
            }
        };
        let pid = c.pid();
        let exited = c.pidfd().is_some_and(pelagos::pidfd::exited);
        let oom = match c.cgroup().map(|c| c.oom_watch()) {
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                log::warn!("container {id}: no OOM events: {e}");
                None
            }
            None => None,
        };
        *cell.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
        let mut st = self.lock();
        if let Some(w) = oom {
            let watch = self.register_oom(&mut st.h, id, w);
            if let Some(h) = st.h.handles.get_mut(id) {
                h.oom = watch;
            }
        }
        st.life.restored(id, pid);
        self.claim_early_exit(&mut st, pid, exited);
        log::info!("container {id} restored, pid {pid}");
        Some(Ok(()))
    }
}

/// The init's pid once the cell holds the container.
pub(super) fn cell_pid(cell: &ContainerCell) -> Option<i32> {
    cell.read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|c| c.pid())
}
