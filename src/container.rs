//! The container lifecycle as a library: create, start, kill, exec, state, pause/resume,
//! update, delete. Each container's processes are direct children of the caller, which reaps
//! them through [`crate::reaper`].
//!
//! `create` checks everything it can first (id, config, seccomp, namespace files), then claims
//! the id with mkdir of the state dir, creates the cgroup, clones the setup helper (see
//! `crate::process`) and serves it (id maps, hooks) until it reports Ready. Any failure undoes
//! all of it: the processes are killed and reaped, the cgroup and the state dir removed.
//!
//! Processes are tracked by pidfd, so signals never reach a recycled pid. Kernel needs: pidfds
//! and waitid(P_PIDFD) (5.4), setns through a pidfd for exec (5.8); clone3 with
//! CLONE_INTO_CGROUP (5.7) places the helper in the v2 hierarchy when there is one, and the
//! helper moves itself into the v1 hierarchies (see [`Cgroup::join_plan`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::wait::WaitStatus;
use oci_spec::runtime::{Hook, LinuxResources, Process, Spec};

use crate::cgroups::{self, Cgroup, CgroupError};
use crate::namespaces::{self, Kind, NsError, Userns};
use crate::process::protocol::{
    encode_frame, Channel, Frame, FromHelper, InitPlan, Plan, ProtocolError, ToHelper,
};
pub use crate::process::Stdio;
use crate::process::{self, ProcessError, Spawn};
use crate::rootfs::{self, idmap::IdmapError};
use crate::seccomp::SeccompError;
use crate::selfexe::{self, SelfExeError};
use crate::spec::{self, SpecError};
use crate::state::{Record, State, StateError, Status};
use crate::{hooks, reaper, sys};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container: {0}")]
    Other(String),
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The process to signal has exited.
    #[error("container {0} is not running: its init has exited")]
    NotRunning(String),
    #[error("container {id} is {status}: cannot {op}")]
    WrongState {
        id: String,
        status: Status,
        op: &'static str,
    },
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Helper(#[from] SelfExeError),
    #[error(transparent)]
    Namespaces(#[from] NsError),
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    #[error(transparent)]
    User(#[from] crate::user::UserError),
    #[error("container init: {0}")]
    Process(#[from] ProcessError),
    #[error("container init: protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The setup helper reported a failed step.
    #[error("container init: {step}: {message}")]
    Init { step: String, message: String },
    /// `how`: ": exit status N" or ": killed by SIG…", when it could still be read.
    #[error("container init: wait for start: the init (pid {pid}) ended before start{how}")]
    EndedBeforeStart { pid: i32, how: String },
    #[error("{kind} hooks: {source}")]
    Hook {
        kind: &'static str,
        source: crate::hooks::HookError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{op}: {source}")]
    Sys { op: String, source: std::io::Error },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

impl Error {
    fn hook(kind: &'static str) -> impl FnOnce(crate::hooks::HookError) -> Error {
        move |source| Error::Hook { kind, source }
    }
}

/// Where state lives and how the setup helper is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// State root: `<root>/<id>/state.json` per container (e.g. `/run/pelagos/<namespace>`).
    pub root: PathBuf,
    /// The binary re-executed as the setup helper; it must call `init::run_if_helper()` first
    /// thing. `None`: this process's own executable, sealed (see `selfexe`).
    pub helper: Option<PathBuf>,
    /// The systemd cgroup driver (runc's `--systemd-cgroup`): cgroups are transient systemd
    /// units, `cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
}

#[derive(Debug)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: Stdio,
    pub no_pivot: bool,
    /// Extra fds passed as 3, 4, … (runc --preserve-fds).
    pub preserve_fds: Vec<OwnedFd>,
}

/// A process exec'd into a running container.
#[derive(Debug)]
pub struct ExecProcess {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

#[derive(Debug)]
pub struct Container {
    record: Record,
    /// `<root>/<id>`.
    dir: PathBuf,
    config: Config,
    /// pidfd of the init; `None` when it was gone at load time.
    pidfd: Option<OwnedFd>,
    /// The socket to the init until it is started (only in the process that created it).
    channel: Option<Channel>,
    cgroup: Option<Cgroup>,
    /// The namespaces the container created, held until delete (only in the process that
    /// created it): the init's exit then does not wait for their teardown, its mount tree above
    /// all, and reaches the waiter sooner.
    namespaces: Vec<OwnedFd>,
}

impl Container {
    /// Creates the container: the init is left blocked just before execve of the user process.
    pub fn create(config: &Config, opts: CreateOptions) -> Result<Container, Error> {
        validate_id(&opts.id)?;
        let bundle = spec::load(&opts.bundle)?;
        let spec = &bundle.spec;
        let linux = spec.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(profile) => Some(crate::seccomp::compile(profile)?),
            None => None,
        };
        let ns_fds = namespaces::open_joins(&bundle.namespaces.join)?;
        let joined_userns = ns_fds
            .iter()
            .find(|(k, _)| *k == Kind::User)
            .map(|(_, fd)| fd.as_fd());
        let trees = rootfs::idmap::prepare(
            spec,
            &bundle.path,
            bundle.namespaces.in_userns(),
            joined_userns,
        )?;
        let helper = selfexe::open(config.helper.as_deref())?;
        let (systemd_unit, cgroup_path) = cgroup_target(config, spec, &opts.id)?;
        let resources = cgroups::spec_resources(&linux);

        let dir = claim_state_dir(&config.root, &opts.id)?;
        let mut undo = Undo::new(dir.clone());
        let start_fifo = make_start_fifo(&dir)?;
        if systemd_unit.is_none() {
            undo.cgroup = Some(Cgroup::create(&cgroup_path, Some(&resources))?);
        }

        let ns = &bundle.namespaces;
        let (stdio, console) = split_console(opts.stdio)?;
        let terminal = matches!(stdio, Stdio::Terminal(_));
        let preserve_count = opts.preserve_fds.len() as u32;
        let kinds: Vec<Kind> = ns_fds.iter().map(|(k, _)| *k).collect();
        let mut extra_fds: Vec<OwnedFd> = ns_fds.into_iter().map(|(_, fd)| fd).collect();
        extra_fds.push(start_fifo);
        let fifo_index = extra_fds.len() - 1;
        let console_index = console.map(|c| {
            extra_fds.push(c);
            extra_fds.len() - 1
        });
        let trees: Vec<(usize, usize)> = trees
            .into_iter()
            .map(|(mount, fd)| {
                extra_fds.push(fd);
                (mount, extra_fds.len() - 1)
            })
            .collect();
        let spawned = process::spawn(Spawn {
            helper: helper.fd(),
            stdio,
            preserve_fds: opts.preserve_fds,
            extra_fds,
            clone_flags: ns.clone_flags,
            cgroup: undo.cgroup.as_ref().and_then(Cgroup::unified_dir_fd),
            become_root: ns.userns == Userns::AtClone,
            hold: false,
        })?;
        let helper_pid = spawned.pid;
        undo.children.push((spawned.pid, spawned.pidfd));
        if let Some(unit) = &systemd_unit {
            // A scope is made with its first process in it: the helper, still waiting.
            undo.cgroup = Some(Cgroup::create_systemd(
                &cgroup_path,
                unit,
                &resources,
                helper_pid,
            )?);
        }
        let mut chan = spawned.channel;
        // The maps must be in place before the child execs (it becomes root of the userns).
        if ns.userns == Userns::AtClone {
            namespaces::write_id_maps(helper_pid, spec)?;
        }
        if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            if ns.in_userns() {
                crate::user::set_oom_score_adj(helper_pid, adj)?;
            }
        }

        let hooks_request = [
            hooks::of(spec, |h| h.prestart().clone()),
            hooks::of(spec, |h| h.create_runtime().clone()),
            hooks::of(spec, |h| h.create_container().clone()),
        ]
        .iter()
        .any(|h| !h.is_empty());
        // A helper cloned into a new user namespace is no longer root for the host's cgroupfs.
        let join = undo
            .cgroup
            .as_ref()
            .expect("created")
            .join_plan(spawned.in_cgroup, ns.userns != Userns::AtClone)?;
        let (join_fds, join_paths): (Vec<_>, Vec<_>) = join.by_process.into_iter().unzip();
        let plan = Plan {
            process: spec.process().clone().expect("validated"),
            preserve_fds: preserve_count,
            terminal,
            console: console_index.map(|i| spawned.extra_fd_base + i as i32),
            start_fifo: Some(spawned.extra_fd_base + fifo_index as i32),
            seccomp: seccomp.as_deref().cloned(),
            join: kinds
                .into_iter()
                .enumerate()
                .map(|(i, k)| (k, spawned.extra_fd_base + i as i32))
                .collect(),
            join_pidfd: None,
            unshare: ns.unshare,
            userns: ns.userns,
            fork: ns.fork,
            await_cgroup: !join.by_runtime.is_empty(),
            join_cgroup: join_paths,
            init: Some(InitPlan {
                spec: spec.clone(),
                rootfs: bundle.rootfs.clone(),
                no_pivot: opts.no_pivot,
                hooks_request,
                trees: trees
                    .iter()
                    .map(|&(mount, i)| (mount, spawned.extra_fd_base + i as i32))
                    .collect(),
            }),
            log_level: log::max_level() as usize,
        };
        // A helper killed on the way (e.g. by the OOM killer) shows here as a broken socket.
        if spawned.held {
            chan.send_byte(0).map_err(|e| undo.explain(e.into()))?;
        }
        chan.send_with_fds(&ToHelper::Plan(Box::new(plan)), &join_fds)
            .map_err(|e| undo.explain(e.into()))?;
        if !join.by_runtime.is_empty() {
            // Overlaps the helper's exec and start-up (see Plan::await_cgroup).
            let cgroup = undo.cgroup.as_ref().expect("created");
            cgroup.add_pid_in(helper_pid, &join.by_runtime)?;
            chan.send(&ToHelper::CgroupJoined)
                .map_err(|e| undo.explain(e.into()))?;
        }

        let mut record = Record {
            state: State {
                oci_version: spec.version().clone(),
                id: opts.id.clone(),
                status: Status::Creating,
                pid: helper_pid,
                bundle: bundle.path.clone(),
                annotations: spec.annotations().clone().unwrap_or_default(),
            },
            init_start_time: 0,
            cgroup_path,
            systemd_unit: systemd_unit.map(|u| u.name),
            cgroup_parents: undo
                .cgroup
                .as_ref()
                .map(|c| c.created_parents().to_vec())
                .unwrap_or_default(),
            rootfs: bundle.rootfs.clone(),
            // A joined pid namespace has its own init: killing ours does not end the rest.
            own_pid_ns: ns.creates(Kind::Pid),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
            spec: spec.clone(),
        };
        let answer = |msg: &FromHelper, pid: Option<i32>| match (msg, pid) {
            (FromHelper::MapRequest, _) => Some(
                namespaces::write_id_maps(helper_pid, spec)
                    .map(|()| ToHelper::MapsWritten)
                    .map_err(Error::from),
            ),
            (FromHelper::HooksRequest, Some(pid)) => Some(run_create_hooks(&record, pid)),
            _ => None,
        };
        record.state.pid = serve_helper(&mut chan, &mut undo, ns.fork, Until::Ready, answer)?;
        record.init_start_time = sys::proc_stat(record.state.pid)
            .map(|s| s.start_time)
            .ok_or_else(|| Error::Init {
                step: "setup helper".into(),
                message: format!("init {} vanished after reporting ready", record.state.pid),
            })?;
        record.state.status = Status::Created;
        record.save(&dir)?;
        let namespaces = hold_namespaces(record.state.pid, ns);

        let (pidfd, cgroup) = undo.disarm();
        log::debug!("created container {} (pid {})", opts.id, record.state.pid);
        Ok(Container {
            record,
            dir,
            config: config.clone(),
            pidfd,
            channel: Some(chan),
            cgroup,
            namespaces,
        })
    }

    /// Loads a container created earlier (possibly by another process) from the state root.
    pub fn load(config: &Config, id: &str) -> Result<Container, Error> {
        validate_id(id)?;
        let dir = config.root.join(id);
        let record = match Record::load(&dir) {
            Ok(r) => r,
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let pidfd = sys::pidfd_open(record.state.pid).ok().filter(|_| {
            // Checked after opening: if the pid was recycled before pidfd_open, the start time
            // differs and the fd names a stranger.
            sys::proc_stat(record.state.pid).is_some_and(|s| s.start_time == record.init_start_time)
        });
        let cgroup = Cgroup::open(&record.cgroup_path).ok().map(|c| {
            c.with_parents(record.cgroup_parents.clone())
                .with_systemd_unit(record.systemd_unit.clone())
        });
        Ok(Container {
            record,
            dir,
            config: config.clone(),
            pidfd,
            channel: None,
            cgroup,
            namespaces: Vec::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.record.state.id
    }

    /// Host pid of the container's init.
    pub fn pid(&self) -> i32 {
        self.record.state.pid
    }

    /// The namespaces held since create (see [`Container`]), for a caller that releases them
    /// itself once the init's exit is handled; else they go at delete.
    pub fn take_namespaces(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.namespaces)
    }

    /// pidfd of the init (signals never reach a recycled pid).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// The container's config (as it was at create time).
    pub fn spec(&self) -> &Spec {
        &self.record.spec
    }

    /// The state root this container lives under.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Releases the init to execve the user process; returns once the exec happened, or the
    /// exec error. Runs poststart hooks.
    pub fn start(&mut self) -> Result<(), Error> {
        let status = self.status();
        if status == Status::Stopped && self.record.state.status == Status::Created {
            return Err(self.ended_before_start());
        }
        if status != Status::Created {
            return Err(self.wrong_state(status, "start"));
        }
        let mut running = self.record.clone();
        running.state.status = Status::Running;
        let state = String::from_utf8(self.record.state.to_json()).expect("json is utf-8");
        match self.channel.take() {
            Some(mut chan) => {
                chan.send(&ToHelper::Start { state })?;
                // EOF: the user process was exec'd (the socket is close-on-exec).
                match recv_from_helper(&mut chan)? {
                    None => {}
                    other => return Err(helper_failure(other, "at start")),
                }
                let _ = std::fs::remove_file(self.dir.join(START_FIFO));
            }
            // Created by another process: release the init through the start fifo (no exec
            // acknowledgement on this path; exec errors end the init).
            None => self.start_through_fifo(&state)?,
        }
        self.record = running;
        self.record.save(&self.dir)?;
        // runtime-spec: a failing poststart hook is logged; the rest and the container go on.
        let poststart = hooks::of(&self.record.spec, |h| h.poststart().clone());
        warn_hooks(self.id(), "poststart", &poststart, &self.state_json());
        Ok(())
    }

    /// The error for an init that was created and ended before start, with how it ended when
    /// that can still be read (our child, not reaped yet).
    fn ended_before_start(&self) -> Error {
        let how = self
            .pidfd
            .as_ref()
            .and_then(|fd| sys::pidfd_peek_exit(fd.as_fd()))
            .map(|ws| match ws {
                WaitStatus::Signaled(_, sig, _) => format!(": killed by {sig}"),
                WaitStatus::Exited(_, code) => format!(": exit status {code}"),
                _ => String::new(),
            })
            .unwrap_or_default();
        Error::EndedBeforeStart {
            pid: self.pid(),
            how,
        }
    }

    fn start_through_fifo(&self, state: &str) -> Result<(), Error> {
        let helper_exe = exe_identity(self.pid());
        let fifo = self.dir.join(START_FIFO);
        // The rename claims the start: of two concurrent starts, one finds no fifo.
        let claimed = self
            .dir
            .join(format!("{START_FIFO}.{}", std::process::id()));
        std::fs::rename(&fifo, &claimed).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.wrong_state(Status::Running, "start"),
            _ => Error::StateDir {
                path: fifo.clone(),
                source: e,
            },
        })?;
        let sent = (|| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&claimed)?;
            let frame = encode_frame(&ToHelper::Start {
                state: state.to_string(),
            })
            .map_err(std::io::Error::other)?;
            w.write_all(&frame)
        })();
        let _ = std::fs::remove_file(&claimed);
        sent.map_err(|source| Error::StateDir { path: fifo, source })?;
        self.wait_for_exec(helper_exe);
        Ok(())
    }

    /// Returns once the init runs the user's program (its executable is no longer the setup
    /// helper's) or has ended, as runc's start returns once its init exec'd: a `state` or an
    /// exec right after `start` finds the container's program, not the helper.
    fn wait_for_exec(&self, helper_exe: Option<(u64, u64)>) {
        let Some(helper_exe) = helper_exe else {
            return;
        };
        let deadline = std::time::Instant::now() + EXEC_WAIT;
        let mut pause = std::time::Duration::from_micros(100);
        while std::time::Instant::now() < deadline {
            let ended = self
                .pidfd
                .as_ref()
                .is_none_or(|fd| sys::pidfd_exited(fd.as_fd()));
            if ended || exe_identity(self.pid()) != Some(helper_exe) {
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
        log::warn!(
            "container {}: the init has not exec'd {EXEC_WAIT:?} after start",
            self.id()
        );
    }

    /// Sends `signal` to the init, or to every process in the cgroup when `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), Error> {
        let Some(pidfd) = self
            .pidfd
            .as_ref()
            .filter(|fd| !sys::pidfd_exited(fd.as_fd()))
        else {
            if all {
                self.kill_cgroup(signal)?;
                return Ok(());
            }
            return Err(Error::NotRunning(self.id().to_string()));
        };
        if all {
            self.kill_cgroup(signal)?;
        }
        match sys::pidfd_send_signal(pidfd.as_fd(), signal) {
            Ok(()) => {
                // A frozen task only dies once thawed (cgroup v1 freezer).
                if signal == libc::SIGKILL && self.status() == Status::Paused {
                    if let Some(cg) = &self.cgroup {
                        cg.thaw()?;
                    }
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                if all {
                    Ok(())
                } else {
                    Err(Error::NotRunning(self.id().to_string()))
                }
            }
            Err(source) => Err(Error::Sys {
                op: format!("signal {signal} to container {} init", self.id()),
                source,
            }),
        }
    }

    fn kill_cgroup(&self, signal: i32) -> Result<(), Error> {
        let Some(cg) = &self.cgroup else {
            return Ok(());
        };
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|e| Error::Sys {
            op: format!("signal {signal}"),
            source: e.into(),
        })?;
        cg.kill_all(sig)?;
        Ok(())
    }

    /// Runs `process` inside the running container (all its namespaces, its cgroup) and
    /// returns once it has exec'd.
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<ExecProcess, Error> {
        let status = self.status();
        if !matches!(status, Status::Running | Status::Created) {
            return Err(self.wrong_state(status, "exec"));
        }
        spec::validate_process(process, "exec process")?;
        let init_pidfd = self.pidfd.as_ref().expect("alive container has a pidfd");
        let linux = self.record.spec.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(profile) => Some(crate::seccomp::compile(profile)?),
            None => None,
        };
        let join_flags = namespaces::differing_from_self(self.pid())?;
        let helper = selfexe::open(self.config.helper.as_deref())?;
        let opened;
        let cgroup = match &self.cgroup {
            Some(c) => c,
            None => {
                opened = Cgroup::open(&self.record.cgroup_path)?
                    .with_systemd_unit(self.record.systemd_unit.clone());
                &opened
            }
        };
        let pidfd_copy = sys::dup_at_least(std::os::fd::AsRawFd::as_raw_fd(init_pidfd), 3)
            .map_err(|source| Error::Sys {
                op: "dup init pidfd".into(),
                source,
            })?;
        let (stdio, console) = split_console(stdio)?;
        let terminal = matches!(stdio, Stdio::Terminal(_));
        let mut extra_fds = vec![pidfd_copy];
        extra_fds.extend(console);
        let has_console = extra_fds.len() > 1;
        let spawned = process::spawn(Spawn {
            helper: helper.fd(),
            stdio,
            preserve_fds: Vec::new(),
            extra_fds,
            clone_flags: 0,
            cgroup: cgroup.unified_dir_fd(),
            become_root: false,
            hold: false,
        })?;
        let helper_pid = spawned.pid;
        let mut undo = Undo::new_processes_only();
        undo.children.push((spawned.pid, spawned.pidfd));
        if let Some(adj) = process.oom_score_adj() {
            if join_flags & libc::CLONE_NEWUSER != 0 {
                crate::user::set_oom_score_adj(helper_pid, adj)?;
            }
        }
        let mut chan = spawned.channel;
        // With a fork the exec'd process is the helper's child, reported by Forked; an EOF
        // without it means the helper died, and its own pid is no process of ours to return.
        let fork = join_flags & (libc::CLONE_NEWPID | libc::CLONE_NEWTIME) != 0;
        // The helper enters the container's user namespace only after moving itself.
        let join = cgroup.join_plan(spawned.in_cgroup, true)?;
        let (join_fds, join_paths): (Vec<_>, Vec<_>) = join.by_process.into_iter().unzip();
        let plan = Plan {
            process: process.clone(),
            preserve_fds: 0,
            terminal,
            console: has_console.then_some(spawned.extra_fd_base + 1),
            start_fifo: None,
            seccomp: seccomp.as_deref().cloned(),
            join: Vec::new(),
            join_pidfd: Some((spawned.extra_fd_base, join_flags)),
            unshare: 0,
            userns: Userns::Host,
            fork,
            await_cgroup: !join.by_runtime.is_empty(),
            join_cgroup: join_paths,
            init: None,
            log_level: log::max_level() as usize,
        };
        if spawned.held {
            chan.send_byte(0)?;
        }
        chan.send_with_fds(&ToHelper::Plan(Box::new(plan)), &join_fds)?;
        if !join.by_runtime.is_empty() {
            cgroup.add_pid_in(helper_pid, &join.by_runtime)?;
            chan.send(&ToHelper::CgroupJoined)?;
        }
        serve_helper(&mut chan, &mut undo, fork, Until::Exec, |_, _| None)?;
        let (pid, pidfd) = undo.children.pop().expect("the exec'd process");
        undo.disarm();
        Ok(ExecProcess { pid, pidfd })
    }

    /// Runtime-spec state, with the status read from the kernel.
    pub fn state(&self) -> State {
        let mut s = self.record.state.clone();
        s.status = self.status();
        s
    }

    /// The status from the kernel: a dead (or recycled) init is stopped, a frozen cgroup
    /// paused; otherwise what start recorded.
    pub fn status(&self) -> Status {
        let alive = self
            .pidfd
            .as_ref()
            .is_some_and(|fd| !sys::pidfd_exited(fd.as_fd()));
        if !alive {
            return Status::Stopped;
        }
        // The start fifo lives from create to start, whichever process starts the container.
        if self.dir.join(START_FIFO).exists() {
            return Status::Created;
        }
        if self
            .cgroup
            .as_ref()
            .is_some_and(|c| c.is_frozen().unwrap_or(false))
        {
            return Status::Paused;
        }
        Status::Running
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    pub fn pause(&self) -> Result<(), Error> {
        let status = self.status();
        if status != Status::Running {
            return Err(self.wrong_state(status, "pause"));
        }
        self.cgroup_or_err()?.freeze()?;
        Ok(())
    }

    pub fn resume(&self) -> Result<(), Error> {
        let status = self.status();
        if status != Status::Paused {
            return Err(self.wrong_state(status, "resume"));
        }
        self.cgroup_or_err()?.thaw()?;
        Ok(())
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        self.cgroup_or_err()?.update(resources)?;
        Ok(())
    }

    /// Dumps the running (or paused) container with CRIU into `opts.image_path`; unless
    /// `opts.leave_running`, CRIU ends its processes once the dump is complete. On failure the
    /// container runs on.
    pub fn checkpoint(&self, opts: &crate::checkpoint::CheckpointOptions) -> Result<(), Error> {
        let status = self.status();
        if !matches!(status, Status::Running | Status::Paused) {
            return Err(self.wrong_state(status, "checkpoint"));
        }
        let cgroup = self.cgroup.as_ref();
        let freezer = cgroup.and_then(|c| c.v1_dir("freezer").or_else(|| c.unified_dir()));
        crate::checkpoint::dump(
            &crate::checkpoint::Target {
                pid: self.pid(),
                spec: &self.record.spec,
                rootfs: &self.record.rootfs,
                freezer,
            },
            opts,
        )?;
        Ok(())
    }

    /// Restores a container dumped by [`Container::checkpoint`] (or runc) as `opts.id`, with
    /// the bundle's config and rootfs, in a new cgroup; running when this returns, its init a
    /// child of this process. `opts.stdio` replaces the stdio pipes the dump recorded.
    pub fn restore(
        config: &Config,
        opts: CreateOptions,
        restore: &crate::checkpoint::RestoreOptions,
    ) -> Result<Container, Error> {
        validate_id(&opts.id)?;
        let bundle = spec::load(&opts.bundle)?;
        let spec = &bundle.spec;
        let linux = spec.linux().clone().unwrap_or_default();
        let (systemd_unit, cgroup_path) = cgroup_target(config, spec, &opts.id)?;
        let resources = cgroups::spec_resources(&linux);
        let null = || std::process::Stdio::null();
        // CRIU hands a dumped terminal (a slave whose master was outside the tree) its own
        // stdin: a new pty's slave when the caller asked for a terminal.
        let mut console = None;
        let (stdio, tty) = match opts.stdio {
            Stdio::Null => ([null(), null(), null()], TtyStdin::None),
            Stdio::Inherit => (
                [
                    std::process::Stdio::inherit(),
                    std::process::Stdio::inherit(),
                    std::process::Stdio::inherit(),
                ],
                match nix::unistd::isatty(std::io::stdin()) {
                    Ok(true) => TtyStdin::Inherited,
                    _ => TtyStdin::None,
                },
            ),
            Stdio::Fds {
                stdin,
                stdout,
                stderr,
            } => (
                [stdin, stdout, stderr].map(|fd| fd.map(Into::into).unwrap_or_else(null)),
                TtyStdin::None,
            ),
            Stdio::Terminal(fd) => {
                let slave = match split_console(Stdio::Terminal(fd))? {
                    (_, Some(socket)) => {
                        let (master, slave) = open_host_pty()?;
                        console = Some((socket, master));
                        slave
                    }
                    (Stdio::Terminal(slave), None) => slave,
                    _ => unreachable!("split_console keeps a terminal"),
                };
                ([slave.into(), null(), null()], TtyStdin::Requested)
            }
        };

        let dir = claim_state_dir(&config.root, &opts.id)?;
        let mut undo = Undo::new(dir.clone());
        // A scope is made with its first process in it, and CRIU must find its cgroup made: a
        // placeholder child holds the scope until CRIU has put the restored tree in it (runc
        // starts the scope with CRIU's own pid, which its swrk RPC knows before the restore).
        let mut holder = None;
        match &systemd_unit {
            None => undo.cgroup = Some(Cgroup::create(&cgroup_path, Some(&resources))?),
            Some(unit) => {
                let h = ScopeHolder::spawn()?;
                undo.cgroup = Some(Cgroup::create_systemd(
                    &cgroup_path,
                    unit,
                    &resources,
                    h.pid,
                )?);
                holder = Some(h);
            }
        }
        // CRIU's root must be a mount point whose parent is not over-mounted.
        let root = dir.join("criu-root");
        let sys_err = |op: &str| {
            let op = op.to_string();
            move |e: nix::errno::Errno| Error::Sys {
                op,
                source: e.into(),
            }
        };
        std::fs::create_dir(&root).map_err(|source| Error::StateDir {
            path: root.clone(),
            source,
        })?;
        nix::mount::mount(
            Some(&bundle.rootfs),
            &root,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys_err("restore: bind the rootfs for criu"))?;
        let pidfile = dir.join("restore.pid");
        let restored = crate::checkpoint::restore(
            &crate::checkpoint::RestoreTarget {
                spec,
                root: &root,
                cgroup_path: &cgroup_path,
                pidfile: &pidfile,
                tty,
            },
            restore,
            stdio,
        );
        if let Err(e) = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("restore {}: unmount {}: {e}", opts.id, root.display());
        }
        let _ = std::fs::remove_dir(&root);
        let _ = std::fs::remove_file(&pidfile);
        // The restored tree (or nothing, on failure) holds the scope now.
        drop(holder);
        let pid = restored?;
        let pidfd = sys::pidfd_open(pid).map_err(|source| Error::Sys {
            op: format!("restore: pidfd of the restored init {pid}"),
            source,
        })?;
        undo.children.push((pid, pidfd));
        let init_start_time = sys::proc_stat(pid)
            .map(|s| s.start_time)
            .ok_or_else(|| Error::Other(format!("restore: the restored init {pid} is gone")))?;
        if let Some((socket, master)) = console {
            Channel::new(socket).send_with_fd(&FromHelper::Console, Some(master.as_fd()))?;
        }
        let record = Record {
            state: State {
                oci_version: spec.version().clone(),
                id: opts.id.clone(),
                status: Status::Running,
                pid,
                bundle: bundle.path.clone(),
                annotations: spec.annotations().clone().unwrap_or_default(),
            },
            init_start_time,
            cgroup_path,
            systemd_unit: systemd_unit.map(|u| u.name),
            cgroup_parents: undo
                .cgroup
                .as_ref()
                .map(|c| c.created_parents().to_vec())
                .unwrap_or_default(),
            rootfs: bundle.rootfs.clone(),
            own_pid_ns: bundle.namespaces.creates(Kind::Pid),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
            spec: spec.clone(),
        };
        record.save(&dir)?;
        let (pidfd, cgroup) = undo.disarm();
        log::debug!("restored container {} (pid {pid})", opts.id);
        Ok(Container {
            record,
            dir,
            config: config.clone(),
            pidfd,
            channel: None,
            cgroup,
            namespaces: Vec::new(),
        })
    }

    /// Waits for the init to exit and reaps it, when it is a child of this process not reaped
    /// yet; `None` otherwise.
    pub fn wait(&self) -> Option<reaper::Exit> {
        let pidfd = self.pidfd.as_ref()?;
        if !sys::pidfd_is_unreaped_child(pidfd.as_fd()) {
            return None;
        }
        reaper::wait(self.pid(), None)
    }

    /// Removes the container: with `force` kills what runs first; runs poststop hooks, removes
    /// the cgroup, the mounts it made and the state dir. The bundle's rootfs mount is the
    /// caller's.
    pub fn delete(mut self, force: bool) -> Result<(), Error> {
        let status = self.status();
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(self.wrong_state(status, "delete without force"));
        }
        // A created init waits for Start on this socket; closing it lets it exit on its own.
        self.channel = None;
        if let Some(pidfd) = &self.pidfd {
            if !sys::pidfd_exited(pidfd.as_fd()) {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                if status == Status::Paused {
                    if let Some(cg) = &self.cgroup {
                        let _ = cg.thaw();
                    }
                }
                sys::pidfd_wait_exit(pidfd.as_fd(), -1);
            }
            if sys::pidfd_is_unreaped_child(pidfd.as_fd()) {
                reaper::wait(self.pid(), None);
            }
        }
        self.namespaces.clear();
        // Without a pid namespace of its own, the init's death does not end the others.
        if !self.record.own_pid_ns {
            self.kill_cgroup(libc::SIGKILL)?;
        }
        match &self.cgroup {
            // Kept with the state dir on failure, so that delete can be retried.
            Some(cg) => cg.destroy()?,
            None => {
                // systemd stops a scope once it is empty; stopping a gone unit is fine.
                if let Some(unit) = &self.record.systemd_unit {
                    cgroups::stop_systemd_unit(unit)?;
                }
                cgroups::remove_parents(&self.record.cgroup_parents)
            }
        }
        std::fs::remove_dir_all(&self.dir).map_err(|source| Error::StateDir {
            path: self.dir.clone(),
            source,
        })?;
        // runtime-spec: after the container is deleted, before delete returns; a failing one
        // is a warning and the rest still run.
        let poststop = hooks::of(&self.record.spec, |h| h.poststop().clone());
        let mut state = self.record.state.clone();
        state.status = Status::Stopped;
        let state = String::from_utf8(state.to_json()).expect("json is utf-8");
        warn_hooks(self.id(), "poststop", &poststop, &state);
        log::debug!("deleted container {}", self.id());
        Ok(())
    }

    fn state_json(&self) -> String {
        String::from_utf8(self.state().to_json()).expect("json is utf-8")
    }

    fn cgroup_or_err(&self) -> Result<&Cgroup, Error> {
        self.cgroup
            .as_ref()
            .ok_or_else(|| Error::Cgroup(CgroupError::NotFound(self.record.cgroup_path.clone())))
    }

    fn wrong_state(&self, status: Status, op: &'static str) -> Error {
        Error::WrongState {
            id: self.id().to_string(),
            status,
            op,
        }
    }
}

/// How long `start` through the fifo waits for the init's exec.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The (device, inode) of the executable `pid` runs.
fn exe_identity(pid: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The helper forked `pid` (its pidfd attached to the message) and exits: reap the helper,
/// track the sibling instead.
fn adopt_sibling(chan: &mut Channel, undo: &mut Undo, pid: i32) -> Result<(), Error> {
    let pidfd = chan.take_fd()?;
    let (helper, helper_pidfd) = undo.children.remove(0);
    undo.children.push((pid, pidfd));
    if sys::pidfd_is_unreaped_child(helper_pidfd.as_fd()) {
        reaper::wait(helper, None);
    }
    Ok(())
}

/// Where a container's cgroup goes: with the systemd driver its scope unit and the unit's path,
/// else the cgroupfs path of `linux.cgroupsPath` (see `cgroups::resolve_path`).
fn cgroup_target(
    config: &Config,
    spec: &Spec,
    id: &str,
) -> Result<(Option<cgroups::SystemdUnit>, String), Error> {
    let linux = spec.linux().as_ref();
    let raw = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .and_then(|p| p.to_str());
    if !config.systemd_cgroup {
        return Ok((None, cgroups::resolve_path(raw, id)?));
    }
    let unit =
        cgroups::SystemdUnit::of(raw, id)?.with_annotations(spec.annotations().iter().flatten())?;
    let path = unit.path.clone();
    Ok((Some(unit), path))
}

/// How a helper's set-up ends: a created init reports Ready; an exec'd process closes the
/// socket (it is close-on-exec).
#[derive(Clone, Copy, PartialEq)]
enum Until {
    Ready,
    Exec,
}

impl Until {
    /// When a helper failed, for its error message.
    fn when(self, forked: bool) -> &'static str {
        match (self, forked) {
            (Until::Ready, true) => "before the container was ready",
            (Until::Ready, false) => "before reporting the forked init",
            (Until::Exec, true) => "before exec",
            (Until::Exec, false) => "before reporting the forked process",
        }
    }
}

/// Serves the helper until its set-up ends: adopts the process it forks (see
/// `crate::process::protocol`: with a fork, the forked process speaks only after the helper's
/// Forked report) and answers its requests with `answer`, which is given the forked pid once
/// there is one and returns `None` for a message it does not expect. Returns the pid of the
/// process set up: the forked one, or the helper itself.
fn serve_helper(
    chan: &mut Channel,
    undo: &mut Undo,
    fork: bool,
    until: Until,
    mut answer: impl FnMut(&FromHelper, Option<i32>) -> Option<Result<ToHelper, Error>>,
) -> Result<i32, Error> {
    let helper = undo
        .children
        .first()
        .map(|&(pid, _)| pid)
        .expect("the helper");
    let mut forked = (!fork).then_some(helper);
    loop {
        let frame = recv_from_helper(chan).map_err(|e| undo.explain(e.into()))?;
        match (frame, forked) {
            (Some(Frame::Msg(FromHelper::Ready)), Some(pid)) if until == Until::Ready => {
                return Ok(pid)
            }
            (None, Some(pid)) if until == Until::Exec => return Ok(pid),
            (Some(Frame::Msg(FromHelper::Forked { pid: child })), None) => {
                adopt_sibling(chan, undo, child)?;
                forked = Some(child);
            }
            (Some(Frame::Msg(msg)), _) => match answer(&msg, forked) {
                Some(reply) => chan.send(&reply?)?,
                None => {
                    let e = helper_failure(Some(Frame::Msg(msg)), until.when(forked.is_some()));
                    return Err(undo.explain(e));
                }
            },
            (other, _) => {
                return Err(undo.explain(helper_failure(other, until.when(forked.is_some()))))
            }
        }
    }
}

/// Runs the prestart and createRuntime hooks for the init `pid` (see `InitPlan::hooks_request`)
/// and returns the state they were given, for the createContainer hooks.
fn run_create_hooks(record: &Record, pid: i32) -> Result<ToHelper, Error> {
    let mut state = record.state.clone();
    state.pid = pid;
    let state = String::from_utf8(state.to_json()).expect("json is utf-8");
    let spec = &record.spec;
    let prestart = hooks::of(spec, |h| h.prestart().clone());
    hooks::run_all(&prestart, state.as_bytes()).map_err(Error::hook("prestart"))?;
    let create_runtime = hooks::of(spec, |h| h.create_runtime().clone());
    hooks::run_all(&create_runtime, state.as_bytes()).map_err(Error::hook("createRuntime"))?;
    Ok(ToHelper::HooksDone { state })
}

/// Whether the kernel OOM-killed a process of the cgroup.
fn oom_killed(cg: &Cgroup) -> bool {
    match cg.stats() {
        cgroups::Stats::V1(m) => m.memory_oom_control.oom_kill > 0,
        cgroups::Stats::V2(m) => m.memory_events.oom_kill > 0,
    }
}

/// The helper's next message; the log records it sends on the way are logged here, as ours.
fn recv_from_helper(chan: &mut Channel) -> Result<Option<Frame<FromHelper>>, ProtocolError> {
    loop {
        match chan.recv::<FromHelper>()? {
            Some(Frame::Msg(FromHelper::Log { level, message })) => {
                let level = log::Level::iter()
                    .nth(level.saturating_sub(1))
                    .unwrap_or(log::Level::Warn);
                log::log!(target: "pelagos::helper", level, "{message}");
            }
            other => return Ok(other),
        }
    }
}

/// The error for a frame that is not the expected next step.
fn helper_failure(frame: Option<Frame<FromHelper>>, when: &str) -> Error {
    match frame {
        Some(Frame::Msg(FromHelper::Error { step, message })) => Error::Init { step, message },
        Some(Frame::ChildFailure { step, errno }) => Error::Init {
            step: process::step::name(step).into(),
            message: sys::errno_text(errno),
        },
        Some(Frame::Msg(other)) => Error::Init {
            step: "setup helper".into(),
            message: format!("unexpected message {other:?} {when}"),
        },
        None => Error::Init {
            step: "setup helper".into(),
            message: format!("exited {when}"),
        },
    }
}

/// Separates a console socket (see [`Stdio::Terminal`]) from the stdio: the helper gets
/// /dev/null until it has made the pty.
fn split_console(stdio: Stdio) -> Result<(Stdio, Option<OwnedFd>), Error> {
    match stdio {
        Stdio::Terminal(fd) => {
            let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::Sys {
                op: "fstat of the terminal fd".into(),
                source: e.into(),
            })?;
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                Ok((Stdio::Null, Some(fd)))
            } else {
                Ok((Stdio::Terminal(fd), None))
            }
        }
        other => Ok((other, None)),
    }
}

use crate::checkpoint::TtyStdin;

/// A new pty on the host's devpts: (master, slave).
fn open_host_pty() -> Result<(OwnedFd, OwnedFd), Error> {
    sys::open_pty().map_err(|source| Error::Sys {
        op: "restore: a pty".into(),
        source,
    })
}

/// The caller's end of a console socket: pass the other end as [`Stdio::Terminal`] to
/// `create` or `exec`; once that returned, [`ConsoleSocket::receive`] yields the pty master.
#[derive(Debug)]
pub struct ConsoleSocket {
    chan: Channel,
}

/// A socketpair for [`Stdio::Terminal`]'s console-socket mode: (our end, the container's).
pub fn console_socket() -> Result<(ConsoleSocket, OwnedFd), Error> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::Sys {
        op: "console socketpair".into(),
        source: e.into(),
    })?;
    Ok((
        ConsoleSocket {
            chan: Channel::new(ours),
        },
        theirs,
    ))
}

impl ConsoleSocket {
    /// The pty master sent by the container's setup (already there once create/exec returned).
    pub fn receive(mut self) -> Result<OwnedFd, Error> {
        match self.chan.recv::<FromHelper>()? {
            Some(Frame::Msg(FromHelper::Console)) => Ok(self.chan.take_fd()?),
            other => Err(Error::Other(format!(
                "console socket: expected the pty master, got {other:?}"
            ))),
        }
    }
}

/// Runs hooks whose failures are warnings (poststart, poststop): each one, logging each failure.
fn warn_hooks(id: &str, kind: &str, hooks: &[Hook], state: &str) {
    for e in crate::hooks::run_each(hooks, state.as_bytes()) {
        log::warn!("container {id}: {kind} hooks: {e}");
    }
}

/// Container ids name a directory and a cgroup: a safe file name.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 255 {
        return bad("longer than 255 bytes (it names a directory)");
    }
    if id == "." || id == ".." {
        return bad("reserved name");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    {
        return bad("only letters, digits, '_', '-', '+' and '.' are allowed");
    }
    Ok(())
}

/// The fifo in the state dir on which a created init waits for a start from any process.
const START_FIFO: &str = "start.fifo";

/// Opens the namespaces the container created, through its init `pid` (alive: it waits for
/// Start). Best effort: one that cannot be opened goes with the init as usual.
fn hold_namespaces(pid: i32, ns: &namespaces::NsPlan) -> Vec<OwnedFd> {
    Kind::ALL
        .into_iter()
        .filter(|k| ns.creates(*k))
        .filter_map(|k| {
            let path = format!("/proc/{pid}/ns/{}", k.proc_name());
            std::fs::File::open(&path)
                .map_err(|e| log::debug!("hold {path}: {e}"))
                .ok()
                .map(OwnedFd::from)
        })
        .collect()
}

/// Makes `<dir>/start.fifo` and opens it read-write for the init: it never sees EOF there, and
/// a starter can open it for writing while the init waits.
fn make_start_fifo(dir: &Path) -> Result<OwnedFd, Error> {
    let path = dir.join(START_FIFO);
    let err = |source| Error::StateDir {
        path: path.clone(),
        source,
    };
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(|e| err(e.into()))?;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(err)?;
    Ok(f.into())
}

/// mkdir of `<root>/<id>`: the atomic claim of the id.
fn claim_state_dir(root: &Path, id: &str) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(root).map_err(|source| Error::StateDir {
        path: root.to_path_buf(),
        source,
    })?;
    let dir = root.join(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Exists(id.into())),
        Err(source) => Err(Error::StateDir { path: dir, source }),
    }
}

/// Undoes a partial create or exec when dropped armed: kills and reaps the children, destroys
/// the cgroup, removes the state dir.
/// A child that does nothing but hold a systemd scope open until dropped (then it exits and is
/// reaped); it also exits when this process dies.
struct ScopeHolder {
    pid: i32,
    pidfd: OwnedFd,
    /// Closing it ends the child's read.
    _release: OwnedFd,
}

impl ScopeHolder {
    fn spawn() -> Result<ScopeHolder, Error> {
        use std::os::fd::AsRawFd;
        let sys_err = |op: &str| {
            let op = op.to_string();
            move |e: nix::errno::Errno| Error::Sys {
                op,
                source: e.into(),
            }
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(sys_err("restore: pipe for the scope's placeholder"))?;
        // SAFETY: the child makes only async-signal-safe calls (close, read, _exit).
        match unsafe { nix::unistd::fork() }.map_err(sys_err("restore: fork the placeholder"))? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain syscalls on fds this process owns; read returns 0 once every
                // write end is closed, -1 only when interrupted.
                unsafe {
                    libc::close(write.as_raw_fd());
                    let mut byte = 0u8;
                    while libc::read(read.as_raw_fd(), (&raw mut byte).cast(), 1) < 0 {}
                    libc::_exit(0)
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                let pid = child.as_raw();
                let pidfd = match sys::pidfd_open(pid) {
                    Ok(fd) => fd,
                    Err(source) => {
                        drop(write);
                        reaper::wait(pid, None);
                        return Err(Error::Sys {
                            op: format!("restore: pidfd of the placeholder {pid}"),
                            source,
                        });
                    }
                };
                Ok(ScopeHolder {
                    pid,
                    pidfd,
                    _release: write,
                })
            }
        }
    }
}

impl Drop for ScopeHolder {
    fn drop(&mut self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        if sys::pidfd_is_unreaped_child(self.pidfd.as_fd()) {
            reaper::wait(self.pid, None);
        }
    }
}

struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    children: Vec<(i32, OwnedFd)>,
}

impl Undo {
    fn new(dir: PathBuf) -> Undo {
        Undo {
            dir: Some(dir),
            cgroup: None,
            children: Vec::new(),
        }
    }

    fn new_processes_only() -> Undo {
        Undo {
            dir: None,
            cgroup: None,
            children: Vec::new(),
        }
    }

    /// `e`, unless the kernel OOM-killed a process in the cgroup: then that is what went wrong
    /// (the helper dies silently when the memory limit is below what setup needs; runc names
    /// the same case).
    fn explain(&self, e: Error) -> Error {
        match &self.cgroup {
            Some(cg) if oom_killed(cg) => Error::Init {
                step: "setup helper".into(),
                message: format!(
                    "OOM-killed before the container was ready \
                     (linux.resources.memory.limit too low?); {e}"
                ),
            },
            _ => e,
        }
    }

    /// Keeps everything; returns the last child's pidfd (the init) and the cgroup.
    fn disarm(&mut self) -> (Option<OwnedFd>, Option<Cgroup>) {
        self.dir = None;
        let pidfd = self.children.pop().map(|(_, fd)| fd);
        self.children.clear();
        (pidfd, self.cgroup.take())
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for (_, pidfd) in &self.children {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        }
        for (pid, pidfd) in self.children.drain(..) {
            if sys::pidfd_is_unreaped_child(pidfd.as_fd()) {
                reaper::wait(pid, None);
            }
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                log::warn!("undo create: {e}");
            }
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                log::warn!("undo create: remove {}: {e}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["c1", "a.b-c_d+e", "X", &"a".repeat(255)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", &"a".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_id("a/b").unwrap_err().to_string(),
            "invalid container id \"a/b\": only letters, digits, '_', '-', '+' and '.' are allowed"
        );
    }
}
