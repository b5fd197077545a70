//! The bookkeeping of tasks and their processes, and the order of their events.
//!
//! This is the pure part of the Task service: it knows which pid is which process, what state
//! each process is in, and it queues every event through one [`Sink`] while the caller holds the
//! service lock, so events reach containerd exactly once and in protocol order:
//! Create → Start → (ExecAdded → ExecStarted → exec Exit)* → OOM → init Exit → Delete.
//!
//! Two races are settled here rather than by timing:
//! - a process that exits while its Start is still running: the exit is stashed and published
//!   after TaskStart / TaskExecStarted;
//! - the init exiting while execs still run (their pid namespace is being torn down by the
//!   kernel, or the caller kills the cgroup): the init's exit is held until the last running or
//!   starting exec has exited, and no exec may start once the init has been reaped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::types::mount::Mount;
use pelagos::reaper::Exit;

use crate::events::{timestamp, Event};

/// Errors carry the gRPC meaning containerd expects (see the service's mapping); their texts
/// are runc's shim's, which clients may show or match.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("container not created")]
    NotFound(String),
    #[error("process does not exist {exec_id}")]
    ExecNotFound { id: String, exec_id: String },
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("id {exec_id}")]
    ExecExists { id: String, exec_id: String },
    #[error("container {0} init process is not running")]
    InitNotRunning(String),
    #[error("OCI runtime start failed: container init: the init (pid {pid}) of {id} ended before start, exit status {status}")]
    EndedBeforeStart { id: String, pid: i32, status: i32 },
    #[error("{}", bad_state(action, state))]
    BadState {
        action: &'static str,
        state: &'static str,
    },
}

/// runc's shim words these by the state's kind: its init's created state speaks of the task,
/// paused and stopped of the container, exec of the state, the rest of the process.
fn bad_state(action: &str, state: &str) -> String {
    match (action, state) {
        ("exec in", _) => format!("cannot exec in a {state} state"),
        ("pause" | "resume", "created") => format!("cannot {action} task in created state"),
        ("pause" | "resume" | "update", "paused" | "stopped") => {
            format!("cannot {action} a {state} container")
        }
        _ => format!("cannot {action} a {state} process"),
    }
}

/// Where events go; the service passes its publisher, tests a recorder.
pub trait Sink: Send + Sync {
    fn publish(&self, event: Event);
}

/// Process status as the shim reports it (containerd's task status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Pausing,
    Paused,
    Stopped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Pausing => "pausing",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// Follow-up work the caller does outside the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The init of a container without its own pid namespace exited: kill the rest of its cgroup.
    KillAll(String),
    /// The init was reaped and its final OOM check done: stop watching the cgroup.
    StopOomWatch(String),
}

/// One process of a task: the init (`exec_id` empty) or an exec.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub status: Status,
    pub exit: Option<Exit>,
    pub io: TaskIO,
    /// A Start is in progress (the process may already run).
    starting: bool,
    /// An exit reaped while `starting`; published once the start is.
    stashed: Option<Exit>,
}

impl Proc {
    fn new(pid: i32, status: Status, io: TaskIO) -> Proc {
        Proc {
            pid,
            status,
            exit: None,
            io,
            starting: false,
            stashed: None,
        }
    }
}

#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Proc,
    pub execs: BTreeMap<String, Proc>,
    kill_all_on_exit: bool,
    init_reaped: bool,
    /// The init's exit, held until `execs_in_flight` drops to zero.
    pending_init_exit: Option<Exit>,
    /// Execs starting or running.
    execs_in_flight: usize,
    deleting: bool,
    /// The init's exit when it ended while created: a later Start says so.
    ended_before_start: Option<Exit>,
}

/// A process of a task as containerd's requests name it: the init by the empty exec id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Which<'a> {
    Init,
    Exec(&'a str),
}

impl<'a> Which<'a> {
    pub fn of(exec_id: &'a str) -> Which<'a> {
        match exec_id {
            "" => Which::Init,
            e => Which::Exec(e),
        }
    }
}

impl Task {
    pub fn proc(&self, exec_id: &str) -> Result<&Proc, LifecycleError> {
        let Which::Exec(exec_id) = Which::of(exec_id) else {
            return Ok(&self.init);
        };
        self.execs
            .get(exec_id)
            .ok_or_else(|| LifecycleError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_owned(),
            })
    }

    /// Whether the init has been reaped (its exit may still be held back).
    pub fn init_reaped(&self) -> bool {
        self.init_reaped
    }

    /// The exec id owning `pid`, if any.
    pub fn exec_of(&self, pid: i32) -> Option<&str> {
        self.execs
            .iter()
            .find(|(_, p)| p.pid == pid && p.pid > 0)
            .map(|(id, _)| id.as_str())
    }
}

/// What Delete of an init gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub pid: i32,
    pub status: u32,
    pub at: SystemTime,
}

pub struct Lifecycle {
    tasks: HashMap<String, Task>,
    reserved: HashSet<String>,
    /// pid → (container id, exec id or empty for the init).
    by_pid: HashMap<i32, (String, String)>,
    sink: Arc<dyn Sink>,
}

impl Lifecycle {
    pub fn new(sink: Arc<dyn Sink>) -> Lifecycle {
        Lifecycle {
            tasks: HashMap::new(),
            reserved: HashSet::new(),
            by_pid: HashMap::new(),
            sink,
        }
    }

    /// No task exists (Creates in flight do not count: see [`Lifecycle::creating`]).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether a Create is in flight.
    pub fn creating(&self) -> bool {
        !self.reserved.is_empty()
    }

    pub fn get(&self, id: &str) -> Result<&Task, LifecycleError> {
        self.tasks
            .get(id)
            .filter(|t| !t.deleting)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// The container id and exec id (empty for the init) of the process `pid`.
    pub fn process_of(&self, pid: i32) -> Option<(&str, &str)> {
        self.by_pid
            .get(&pid)
            .map(|(id, exec_id)| (id.as_str(), exec_id.as_str()))
    }

    /// Whether `pid` belongs to a process this lifecycle tracks.
    pub fn owns_pid(&self, pid: i32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Claims `id` for a Create in progress.
    pub fn reserve(&mut self, id: &str) -> Result<(), LifecycleError> {
        if self.tasks.contains_key(id) || !self.reserved.insert(id.to_owned()) {
            return Err(LifecycleError::AlreadyExists(id.to_owned()));
        }
        Ok(())
    }

    /// Whether a Create of `id` is in flight.
    pub fn is_reserved(&self, id: &str) -> bool {
        self.reserved.contains(id)
    }

    pub fn unreserve(&mut self, id: &str) {
        self.reserved.remove(id);
    }

    /// Records a created container and queues TaskCreate.
    #[allow(clippy::too_many_arguments)]
    pub fn created(
        &mut self,
        id: &str,
        bundle: PathBuf,
        pid: i32,
        io: TaskIO,
        rootfs: Vec<Mount>,
        kill_all_on_exit: bool,
    ) {
        self.created_from(id, bundle, pid, io, rootfs, kill_all_on_exit, "");
    }

    /// [`Lifecycle::created`] for a container restored from `checkpoint` at its Start (pid 0
    /// until then, as runc's shim has it).
    #[allow(clippy::too_many_arguments)]
    pub fn created_from(
        &mut self,
        id: &str,
        bundle: PathBuf,
        pid: i32,
        io: TaskIO,
        rootfs: Vec<Mount>,
        kill_all_on_exit: bool,
        checkpoint: &str,
    ) {
        self.reserved.remove(id);
        let init = Proc::new(pid, Status::Created, io.clone());
        self.sink.publish(Event::Create(TaskCreate {
            container_id: id.to_owned(),
            bundle: bundle.display().to_string(),
            rootfs,
            io: Some(io).into(),
            checkpoint: checkpoint.to_owned(),
            pid: pid as u32,
            ..Default::default()
        }));
        self.by_pid.insert(pid, (id.to_owned(), String::new()));
        self.tasks.insert(
            id.to_owned(),
            Task {
                id: id.to_owned(),
                bundle,
                init,
                execs: BTreeMap::new(),
                kill_all_on_exit,
                init_reaped: false,
                pending_init_exit: None,
                execs_in_flight: 0,
                deleting: false,
                ended_before_start: None,
            },
        );
    }

    /// Marks the init as starting; fails unless it is created.
    pub fn begin_start(&mut self, id: &str) -> Result<i32, LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        if let Some(exit) = t.ended_before_start.filter(|_| !t.init.starting) {
            return Err(LifecycleError::EndedBeforeStart {
                id: id.to_owned(),
                pid: exit.pid,
                status: exit.status,
            });
        }
        if t.init.status != Status::Created || t.init.starting {
            return Err(LifecycleError::BadState {
                action: "start",
                state: t.init.status.name(),
            });
        }
        t.init.starting = true;
        Ok(t.init.pid)
    }

    /// The pid of an init restored at Start (see [`Lifecycle::created_from`]).
    pub fn restored(&mut self, id: &str, pid: i32) {
        let Ok(t) = task_mut(&mut self.tasks, id) else {
            return;
        };
        let old = std::mem::replace(&mut t.init.pid, pid);
        if self
            .by_pid
            .get(&old)
            .is_some_and(|(i, e)| i == id && e.is_empty())
        {
            self.by_pid.remove(&old);
        }
        self.by_pid.insert(pid, (id.to_owned(), String::new()));
    }

    /// Ends the init's Start: on success queues TaskStart; either way publishes an exit that
    /// arrived meanwhile.
    pub fn finish_start(
        &mut self,
        id: &str,
        ok: bool,
        oom: &mut dyn FnMut(&str) -> bool,
    ) -> Vec<Action> {
        let Ok(t) = task_mut(&mut self.tasks, id) else {
            return Vec::new();
        };
        t.init.starting = false;
        if ok {
            if t.init.status == Status::Created {
                t.init.status = Status::Running;
            }
            self.sink.publish(Event::Start(TaskStart {
                container_id: id.to_owned(),
                pid: t.init.pid as u32,
                ..Default::default()
            }));
        }
        let t = self.tasks.get_mut(id).expect("checked above");
        match t.init.stashed.take() {
            Some(exit) => self.init_exited(id, exit, oom),
            None => Vec::new(),
        }
    }

    /// The init's exit if it ended while created (before any Start reached it).
    pub fn ended_before_start(&self, id: &str) -> Option<Exit> {
        self.tasks.get(id).and_then(|t| t.ended_before_start)
    }

    /// Registers a new exec in the created state and queues TaskExecAdded.
    pub fn add_exec(&mut self, id: &str, exec_id: &str, io: TaskIO) -> Result<(), LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        if t.execs.contains_key(exec_id) {
            return Err(LifecycleError::ExecExists {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            });
        }
        match t.init.status {
            Status::Stopped => {
                return Err(LifecycleError::BadState {
                    action: "exec in",
                    state: "stopped",
                })
            }
            // Reaped, its exit not published yet (runc's shim refuses at Start).
            _ if t.init_reaped => return Err(LifecycleError::InitNotRunning(id.to_owned())),
            Status::Paused | Status::Pausing => {
                return Err(LifecycleError::BadState {
                    action: "exec in",
                    state: t.init.status.name(),
                })
            }
            _ => {}
        }
        t.execs
            .insert(exec_id.to_owned(), Proc::new(0, Status::Created, io));
        self.sink.publish(Event::ExecAdded(TaskExecAdded {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        }));
        Ok(())
    }

    /// Marks an exec as starting; refused once the init has been reaped.
    pub fn begin_exec_start(&mut self, id: &str, exec_id: &str) -> Result<(), LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        if t.init_reaped || t.init.status == Status::Stopped {
            return Err(LifecycleError::InitNotRunning(id.to_owned()));
        }
        let init_status = t.init.status;
        let p = t
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| LifecycleError::ExecNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })?;
        if p.status != Status::Created || p.starting {
            return Err(LifecycleError::BadState {
                action: "start",
                state: p.status.name(),
            });
        }
        if matches!(init_status, Status::Paused | Status::Pausing) {
            return Err(LifecycleError::BadState {
                action: "exec in",
                state: init_status.name(),
            });
        }
        p.starting = true;
        t.execs_in_flight += 1;
        Ok(())
    }

    /// The exec runs as `pid`: queues TaskExecStarted and from now on owns `pid`'s exit.
    pub fn exec_started(&mut self, id: &str, exec_id: &str, pid: i32) {
        let Some(p) = self
            .tasks
            .get_mut(id)
            .and_then(|t| t.execs.get_mut(exec_id))
        else {
            return;
        };
        p.pid = pid;
        p.starting = false;
        p.status = Status::Running;
        self.sink.publish(Event::ExecStarted(TaskExecStarted {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            pid: pid as u32,
            ..Default::default()
        }));
        self.by_pid.insert(pid, (id.to_owned(), exec_id.to_owned()));
    }

    /// The exec never ran: it stays created (containerd deletes it) and stops holding back the
    /// init's exit.
    pub fn exec_start_failed(&mut self, id: &str, exec_id: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if let Some(p) = t.execs.get_mut(exec_id) {
            p.starting = false;
        }
        t.execs_in_flight = t.execs_in_flight.saturating_sub(1);
        self.release_init_exit(id);
    }

    /// Routes a reaped exit. Returns `None` when the pid is not ours (leave it in the reaper's
    /// table: a Start may claim it, or it is an orphan). The caller makes sure the exit is
    /// this process's and not a recorded exit of an earlier owner of the pid.
    pub fn on_exit(
        &mut self,
        exit: Exit,
        oom: &mut dyn FnMut(&str) -> bool,
    ) -> Option<Vec<Action>> {
        let (id, exec_id) = self.by_pid.remove(&exit.pid)?;
        if exec_id.is_empty() {
            let t = self.tasks.get_mut(&id)?;
            if t.init.starting {
                t.init.stashed = Some(exit);
                return Some(Vec::new());
            }
            return Some(self.init_exited(&id, exit, oom));
        }
        let t = self.tasks.get_mut(&id)?;
        let p = t.execs.get_mut(&exec_id)?;
        p.status = Status::Stopped;
        p.exit = Some(exit);
        self.sink
            .publish(Event::Exit(exit_event(&id, &exec_id, exit)));
        t.execs_in_flight = t.execs_in_flight.saturating_sub(1);
        self.release_init_exit(&id);
        Some(Vec::new())
    }

    fn init_exited(
        &mut self,
        id: &str,
        exit: Exit,
        oom: &mut dyn FnMut(&str) -> bool,
    ) -> Vec<Action> {
        let Some(t) = self.tasks.get_mut(id) else {
            return Vec::new();
        };
        if t.init.status == Status::Created {
            log::info!(
                "container {id}: init (pid {}) ended before start, status {}",
                exit.pid,
                exit.status
            );
            t.ended_before_start = Some(exit);
        }
        t.init_reaped = true;
        t.pending_init_exit = Some(exit);
        let mut actions = Vec::new();
        if t.kill_all_on_exit {
            actions.push(Action::KillAll(id.to_owned()));
        }
        // Last look at the cgroup's OOM counter: an OOM kill of the init must be reported
        // before its exit.
        if oom(id) {
            self.sink.publish(Event::Oom(TaskOOM {
                container_id: id.to_owned(),
                ..Default::default()
            }));
        }
        actions.push(Action::StopOomWatch(id.to_owned()));
        self.release_init_exit(id);
        actions
    }

    /// Publishes the held init exit once no exec is starting or running.
    fn release_init_exit(&mut self, id: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.execs_in_flight > 0 {
            return;
        }
        if let Some(exit) = t.pending_init_exit.take() {
            t.init.status = Status::Stopped;
            t.init.exit = Some(exit);
            self.sink.publish(Event::Exit(exit_event(id, id, exit)));
        }
    }

    /// Queues TaskOOM for a container (the monitor saw its cgroup's OOM counter move).
    pub fn oom(&self, id: &str) {
        if self.tasks.contains_key(id) {
            self.sink.publish(Event::Oom(TaskOOM {
                container_id: id.to_owned(),
                ..Default::default()
            }));
        }
    }

    /// Pause bookkeeping: `begin_pause` → (freeze) → `paused` or `pause_failed`.
    pub fn begin_pause(&mut self, id: &str) -> Result<(), LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        if t.init.status != Status::Running || t.init_reaped {
            let state = if t.init.status == Status::Paused {
                "paused"
            } else {
                t.init.status.name()
            };
            return Err(LifecycleError::BadState {
                action: "pause",
                state,
            });
        }
        t.init.status = Status::Pausing;
        Ok(())
    }

    pub fn paused(&mut self, id: &str, ok: bool) {
        let Ok(t) = task_mut(&mut self.tasks, id) else {
            return;
        };
        if t.init.status != Status::Pausing {
            return;
        }
        t.init.status = if ok { Status::Paused } else { Status::Running };
        if ok {
            self.sink.publish(Event::Paused(TaskPaused {
                container_id: id.to_owned(),
                ..Default::default()
            }));
        }
    }

    pub fn check_resume(&self, id: &str) -> Result<(), LifecycleError> {
        let t = self.get(id)?;
        if t.init.status != Status::Paused {
            return Err(LifecycleError::BadState {
                action: "resume",
                state: t.init.status.name(),
            });
        }
        Ok(())
    }

    pub fn resumed(&mut self, id: &str) {
        let Ok(t) = task_mut(&mut self.tasks, id) else {
            return;
        };
        if t.init.status == Status::Paused {
            t.init.status = Status::Running;
        }
        self.sink.publish(Event::Resumed(TaskResumed {
            container_id: id.to_owned(),
            ..Default::default()
        }));
    }

    /// First half of deleting the init: refuses a running or paused task and hides the task
    /// from every other call. Returns whether the init ever ran (false: created only, the
    /// caller kills it and its exit is not ours to publish).
    pub fn begin_delete(&mut self, id: &str) -> Result<bool, LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        let started = match t.init.status {
            Status::Created if !t.init.starting => false,
            Status::Stopped => true,
            s => {
                return Err(LifecycleError::BadState {
                    action: "delete",
                    state: s.name(),
                })
            }
        };
        t.deleting = true;
        let pids: Vec<i32> = std::iter::once(t.init.pid)
            .chain(t.execs.values().map(|p| p.pid))
            .collect();
        for pid in pids {
            if self.by_pid.get(&pid).is_some_and(|(c, _)| c == id) {
                self.by_pid.remove(&pid);
            }
        }
        Ok(started)
    }

    /// Second half: forgets the task and queues TaskDelete.
    pub fn finish_delete(&mut self, id: &str) -> Option<Deleted> {
        let t = self.tasks.remove(id)?;
        let exit = t.init.exit.unwrap_or(Exit {
            pid: t.init.pid,
            status: 128 + libc::SIGKILL,
            at: SystemTime::now(),
        });
        let d = Deleted {
            pid: t.init.pid,
            status: exit.status as u32,
            at: exit.at,
        };
        self.sink.publish(Event::Delete(TaskDelete {
            container_id: id.to_owned(),
            pid: d.pid as u32,
            exit_status: d.status,
            exited_at: Some(timestamp(d.at)).into(),
            ..Default::default()
        }));
        Some(d)
    }

    /// Drops an exec that is not running (created, or exited). No event: containerd's runc
    /// shim sends none for execs either.
    pub fn delete_exec(&mut self, id: &str, exec_id: &str) -> Result<Deleted, LifecycleError> {
        let t = task_mut(&mut self.tasks, id)?;
        let p = t.proc(exec_id)?;
        if matches!(p.status, Status::Running) || p.starting {
            return Err(LifecycleError::BadState {
                action: "delete",
                state: "running",
            });
        }
        let p = t.execs.remove(exec_id).expect("checked above");
        if p.pid > 0 && self.by_pid.get(&p.pid).is_some_and(|(_, e)| e == exec_id) {
            self.by_pid.remove(&p.pid);
        }
        let exit = p.exit.unwrap_or(Exit {
            pid: p.pid,
            status: 0,
            at: SystemTime::UNIX_EPOCH,
        });
        Ok(Deleted {
            pid: p.pid,
            status: exit.status as u32,
            at: exit.at,
        })
    }
}

fn task_mut<'a>(
    tasks: &'a mut HashMap<String, Task>,
    id: &str,
) -> Result<&'a mut Task, LifecycleError> {
    tasks
        .get_mut(id)
        .filter(|t| !t.deleting)
        .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
}

fn exit_event(container_id: &str, id: &str, exit: Exit) -> TaskExit {
    TaskExit {
        container_id: container_id.to_owned(),
        id: id.to_owned(),
        pid: exit.pid as u32,
        exit_status: exit.status as u32,
        exited_at: Some(timestamp(exit.at)).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl Sink for Recorder {
        fn publish(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Recorder {
        fn topics(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|e| match e {
                    Event::Exit(x) => format!("exit:{}:{}", x.id, x.exit_status),
                    e => e.topic().trim_start_matches("/tasks/").to_owned(),
                })
                .collect()
        }
    }

    fn setup(kill_all: bool) -> (Lifecycle, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let mut lc = Lifecycle::new(rec.clone());
        lc.reserve("c").unwrap();
        lc.created("c", "/b".into(), 100, TaskIO::default(), vec![], kill_all);
        (lc, rec)
    }

    fn exit(pid: i32, status: i32) -> Exit {
        Exit {
            pid,
            status,
            at: SystemTime::now(),
        }
    }

    fn no_oom(_: &str) -> bool {
        false
    }

    #[test]
    fn duplicate_create_is_refused() {
        let (mut lc, _) = setup(false);
        assert_eq!(
            lc.reserve("c"),
            Err(LifecycleError::AlreadyExists("c".into()))
        );
        lc.reserve("d").unwrap();
        assert_eq!(
            lc.reserve("d"),
            Err(LifecycleError::AlreadyExists("d".into()))
        );
        lc.unreserve("d");
        lc.reserve("d").unwrap();
    }

    #[test]
    fn exit_during_start_is_published_after_start() {
        let (mut lc, rec) = setup(false);
        assert_eq!(lc.begin_start("c").unwrap(), 100);
        // The process died before Start returned.
        assert_eq!(lc.on_exit(exit(100, 3), &mut no_oom), Some(vec![]));
        assert_eq!(lc.get("c").unwrap().init.status, Status::Created);
        let actions = lc.finish_start("c", true, &mut no_oom);
        assert_eq!(actions, vec![Action::StopOomWatch("c".into())]);
        assert_eq!(rec.topics(), vec!["create", "start", "exit:c:3"]);
        assert_eq!(lc.get("c").unwrap().init.status, Status::Stopped);
    }

    #[test]
    fn an_init_that_ended_before_start_is_named_at_start() {
        let (mut lc, rec) = setup(false);
        lc.on_exit(exit(100, 137), &mut no_oom).unwrap();
        assert_eq!(
            lc.begin_start("c").unwrap_err().to_string(),
            "OCI runtime start failed: container init: the init (pid 100) of c ended before \
             start, exit status 137"
        );
        assert_eq!(rec.topics(), vec!["create", "exit:c:137"]);

        // Ended while a Start was on its way: the failed start finds the exit.
        let (mut lc, rec) = setup(false);
        lc.begin_start("c").unwrap();
        lc.on_exit(exit(100, 9), &mut no_oom).unwrap();
        lc.finish_start("c", false, &mut no_oom);
        assert_eq!(lc.ended_before_start("c").map(|e| e.status), Some(9));
        assert_eq!(rec.topics(), vec!["create", "exit:c:9"]);

        // An init that ran and ended is no such case.
        let (mut lc, _) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.on_exit(exit(100, 0), &mut no_oom).unwrap();
        assert_eq!(lc.ended_before_start("c"), None);
    }

    #[test]
    fn unknown_pids_are_not_claimed() {
        let (mut lc, rec) = setup(false);
        assert_eq!(lc.on_exit(exit(999, 0), &mut no_oom), None);
        assert!(lc.owns_pid(100));
        assert_eq!(rec.topics(), vec!["create"]);
    }

    #[test]
    fn init_exit_waits_for_exec_exits_and_oom_comes_first() {
        let (mut lc, rec) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.add_exec("c", "e1", TaskIO::default()).unwrap();
        lc.begin_exec_start("c", "e1").unwrap();
        lc.exec_started("c", "e1", 200);
        let mut oom = |_: &str| true;
        let actions = lc.on_exit(exit(100, 137), &mut oom).unwrap();
        assert_eq!(actions, vec![Action::StopOomWatch("c".into())]);
        // The init is reaped but its exit is held: no new exec may start.
        assert_eq!(lc.get("c").unwrap().init.status, Status::Running);
        lc.add_exec("c", "e2", TaskIO::default()).unwrap_err();
        lc.on_exit(exit(200, 137), &mut no_oom).unwrap();
        assert_eq!(
            rec.topics(),
            vec![
                "create",
                "start",
                "exec-added",
                "exec-started",
                "oom",
                "exit:e1:137",
                "exit:c:137"
            ]
        );
        assert_eq!(lc.get("c").unwrap().init.status, Status::Stopped);
    }

    #[test]
    fn exec_exit_before_exec_started_is_ordered_by_the_caller_claiming_late() {
        // The service registers the exec pid only after queueing ExecStarted, and only then
        // claims an exit the reaper already recorded: the order follows.
        let (mut lc, rec) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.add_exec("c", "e", TaskIO::default()).unwrap();
        lc.begin_exec_start("c", "e").unwrap();
        assert_eq!(lc.on_exit(exit(300, 0), &mut no_oom), None);
        lc.exec_started("c", "e", 300);
        lc.on_exit(exit(300, 0), &mut no_oom).unwrap();
        assert_eq!(
            rec.topics(),
            vec!["create", "start", "exec-added", "exec-started", "exit:e:0"]
        );
    }

    #[test]
    fn shared_pid_namespace_asks_for_kill_all() {
        let (mut lc, _) = setup(true);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        let actions = lc.on_exit(exit(100, 0), &mut no_oom).unwrap();
        assert_eq!(
            actions,
            vec![
                Action::KillAll("c".into()),
                Action::StopOomWatch("c".into())
            ]
        );
    }

    #[test]
    fn exec_errors_carry_their_grpc_meaning() {
        let (mut lc, _) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.add_exec("c", "e", TaskIO::default()).unwrap();
        assert_eq!(
            lc.add_exec("c", "e", TaskIO::default()),
            Err(LifecycleError::ExecExists {
                id: "c".into(),
                exec_id: "e".into()
            })
        );
        assert!(matches!(
            lc.begin_exec_start("c", "nope"),
            Err(LifecycleError::ExecNotFound { .. })
        ));
        assert_eq!(
            lc.get("x").unwrap_err(),
            LifecycleError::NotFound("x".into())
        );
        lc.on_exit(exit(100, 0), &mut no_oom).unwrap();
        assert_eq!(
            lc.begin_exec_start("c", "e"),
            Err(LifecycleError::InitNotRunning("c".into()))
        );
    }

    #[test]
    fn failed_exec_start_releases_the_init_exit() {
        let (mut lc, rec) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.add_exec("c", "e", TaskIO::default()).unwrap();
        lc.begin_exec_start("c", "e").unwrap();
        lc.on_exit(exit(100, 1), &mut no_oom).unwrap();
        assert_eq!(rec.topics().last().unwrap(), "exec-added");
        lc.exec_start_failed("c", "e");
        assert_eq!(rec.topics().last().unwrap(), "exit:c:1");
    }

    #[test]
    fn pause_resume_and_delete_rules() {
        let (mut lc, rec) = setup(false);
        assert!(lc.begin_pause("c").is_err(), "created cannot pause");
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        assert!(lc.check_resume("c").is_err());
        lc.begin_pause("c").unwrap();
        assert_eq!(lc.get("c").unwrap().init.status, Status::Pausing);
        lc.paused("c", true);
        assert_eq!(
            lc.begin_pause("c"),
            Err(LifecycleError::BadState {
                action: "pause",
                state: "paused"
            })
        );
        assert!(lc.begin_delete("c").is_err(), "paused cannot be deleted");
        lc.check_resume("c").unwrap();
        lc.resumed("c");
        assert!(lc.begin_delete("c").is_err(), "running cannot be deleted");
        lc.on_exit(exit(100, 2), &mut no_oom).unwrap();
        assert!(lc.begin_delete("c").unwrap());
        assert!(lc.get("c").is_err(), "hidden while deleting");
        let d = lc.finish_delete("c").unwrap();
        assert_eq!((d.pid, d.status), (100, 2));
        assert!(lc.is_empty());
        assert_eq!(
            rec.topics(),
            vec!["create", "start", "paused", "resumed", "exit:c:2", "delete"]
        );
    }

    #[test]
    fn created_task_deletes_without_exit_event() {
        let (mut lc, rec) = setup(false);
        assert!(!lc.begin_delete("c").unwrap());
        assert!(!lc.owns_pid(100), "the killer reaps it, not the monitor");
        let d = lc.finish_delete("c").unwrap();
        assert_eq!(d.status, 137);
        assert_eq!(rec.topics(), vec!["create", "delete"]);
    }

    #[test]
    fn exec_delete_requires_not_running() {
        let (mut lc, _) = setup(false);
        lc.begin_start("c").unwrap();
        lc.finish_start("c", true, &mut no_oom);
        lc.add_exec("c", "e", TaskIO::default()).unwrap();
        lc.begin_exec_start("c", "e").unwrap();
        lc.exec_started("c", "e", 201);
        assert!(lc.delete_exec("c", "e").is_err());
        lc.on_exit(exit(201, 5), &mut no_oom).unwrap();
        let d = lc.delete_exec("c", "e").unwrap();
        assert_eq!((d.pid, d.status), (201, 5));
        assert!(lc.get("c").unwrap().execs.is_empty());
    }
}
