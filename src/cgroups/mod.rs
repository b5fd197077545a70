//! cgroups on v1, v2 and hybrid hosts: create and configure a container's cgroup from
//! `linux.resources`, add processes, update, freeze/thaw, list pids, stats, OOM notification,
//! destroy.
//!
//! Controller files are written by hand rather than through `cgroups-rs`: on a hybrid host
//! cgroups-rs manages only the v1 side (runc also joins the container to the cgroup2 mount),
//! it cannot route a controller that exists only in the v2 half (hugetlb on this kind of host),
//! it does not order the memory/memsw writes or report clamped cpu shares like runc, and the
//! handful of writes per container is cheaper without its per-controller objects.
//!
//! Layout: `fs` finds the hierarchies and does file I/O, `path` turns `cgroupsPath` into a
//! path, `resources` validates and routes `linux.resources` to `v1` or `v2` writers, `stats`
//! reads containerd's metrics, `oom` watches for OOM kills.
//!
//! Every v1 hierarchy mounted on the host (named ones such as `name=systemd` included) gets a
//! directory, as runc does; on a hybrid host the cgroup2 mount gets one too. A resource goes to
//! the v1 hierarchy holding its controller, or else to the cgroup2 directory when the v2 side
//! offers that controller.
//!
//! On cgroup v2, as runc: `memory.swappiness` and `disableOOMKiller` have no equivalent and are
//! ignored, and `memory.oom.group` is set only through the `unified` map (which is how kubelet
//! asks for it).
//!
//! Device rules go to the v1 devices controller where the host has one (legacy and hybrid
//! hosts, as runc) and otherwise become an eBPF program on the cgroup2 directory (`devfilter`,
//! `bpf`), loaded and attached by the runtime process itself.
//!
//! With the systemd driver (`systemd`) systemd creates the cgroup as a transient unit and is
//! told every resource as a unit property; the files are written as above as well.
//!
//! Known gaps: rdma limits are ignored; v1 mounts whose root is not `/` (inside another
//! container) are not supported.

mod bpf;
mod devfilter;
#[cfg(test)]
mod fixture;
mod fs;
pub mod oom;
mod path;
mod resources;
pub mod stats;
mod systemd;
mod v1;
mod v2;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode as FileMode;
use oci_spec::runtime::LinuxResources;

pub use devfilter::{
    attached_program_names as attached_device_program_names,
    attached_programs as attached_device_programs,
};
pub use oom::OomWatch;
pub use path::{resolve_path, DEFAULT_PARENT};
pub use resources::{default_device_rules, device_allow_rules, spec_resources};
pub use stats::Stats;
pub use systemd::{booted as systemd_booted, stop as stop_systemd_unit, Unit as SystemdUnit};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid {resource}: {reason}")]
    InvalidResource { resource: String, reason: String },
    #[error("{resource} not supported: {reason}")]
    Unsupported { resource: String, reason: String },
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mkdir {}: {source}", path.display())]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rmdir {}: {source}", path.display())]
    Rmdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("open {}: {source}", path.display())]
    Open { path: PathBuf, source: nix::Error },
    #[error("device filter of {}: {op}: {reason}", path.display())]
    DeviceFilter {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
    #[error("cgroup {0} does not exist")]
    NotFound(String),
    #[error("{op} {path}: {reason}")]
    Freezer {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("annotation {key}: {reason}")]
    Annotation { key: String, reason: String },
    #[error("systemd unit {unit}: {op}: {reason}")]
    Systemd {
        unit: String,
        op: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Which hierarchies the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v1 controllers only.
    Legacy,
    /// v1 controllers plus a v2 mount (usually /sys/fs/cgroup/unified) without controllers.
    Hybrid,
    /// One v2 hierarchy at /sys/fs/cgroup.
    Unified,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Legacy => "cgroup v1",
            Mode::Hybrid => "hybrid (v1 controllers, cgroup2 without them)",
            Mode::Unified => "cgroup v2",
        }
    }
}

/// Detects the host's cgroup mode (cached).
pub fn mode() -> Mode {
    fs::hierarchies().mode
}

/// Where a controller's files are for one cgroup.
pub(crate) enum Route<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

#[derive(Debug)]
struct V1Dir {
    controllers: Vec<String>,
    dir: PathBuf,
}

/// A container's cgroup in every hierarchy of the host.
#[derive(Debug)]
pub struct Cgroup {
    path: String,
    mode: Mode,
    v1: Vec<V1Dir>,
    /// The directory in the cgroup2 mount (unified hosts, and hybrid ones).
    unified: Option<PathBuf>,
    /// Controllers available in `unified` (from its cgroup.controllers).
    v2_controllers: Vec<String>,
    /// `unified` opened O_DIRECTORY, for CLONE_INTO_CGROUP (unified and hybrid hosts).
    unified_fd: Option<OwnedFd>,
    /// The device rules of the create (spec rules then the defaults) when they went to an eBPF
    /// program: an update compiles and attaches them again, as runc update does.
    device_rules: Option<Vec<oci_spec::runtime::LinuxDeviceCgroup>>,
    /// See [`Cgroup::created_parents`].
    parents: Vec<PathBuf>,
    /// The systemd unit that owns the cgroup (systemd driver).
    unit: Option<String>,
    /// The v1 `tasks` files opened for writing, one per hierarchy, on first use (see
    /// [`Cgroup::join_plan`]).
    v1_tasks: OnceLock<Vec<OwnedFd>>,
}

/// See [`Cgroup::join_plan`].
#[derive(Debug, Default)]
pub struct JoinPlan<'a> {
    /// `tasks` files, open for writing, that the process writes `0` into itself (with their
    /// paths, for messages).
    pub by_process: Vec<(BorrowedFd<'a>, PathBuf)>,
    /// Directories whose `cgroup.procs` the runtime writes the pid into.
    pub by_runtime: Vec<&'a Path>,
}

fn check_path(path: &str) -> Result<(), CgroupError> {
    let bad = |reason: &str| CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.into(),
    };
    if !path.starts_with('/') {
        return Err(bad("must be absolute (see cgroups::resolve_path)"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(bad("\"..\" components are not allowed"));
    }
    if path.split('/').all(|c| c.is_empty() || c == ".") {
        return Err(bad("the root cgroup cannot be a container's cgroup"));
    }
    Ok(())
}

impl Cgroup {
    /// Where `path` lives in each hierarchy, without touching the filesystem.
    fn layout(path: &str) -> Cgroup {
        let h = fs::hierarchies();
        let rel = path.trim_start_matches('/');
        Cgroup {
            path: path.to_string(),
            mode: h.mode,
            v1: h
                .v1
                .iter()
                .map(|v| V1Dir {
                    controllers: v.controllers.clone(),
                    dir: v.mount.join(rel),
                })
                .collect(),
            unified: h.unified.as_ref().map(|u| u.join(rel)),
            v2_controllers: Vec::new(),
            unified_fd: None,
            device_rules: None,
            parents: Vec::new(),
            unit: None,
            v1_tasks: OnceLock::new(),
        }
    }

    /// Creates the cgroup at `path` (see [`resolve_path`]) and applies `resources`. On error
    /// nothing is left behind.
    ///
    /// On cgroup v1, device rules are always applied: deny all, the spec's rules in order, then
    /// [`default_device_rules`] (as runc). Pass [`spec_resources`] to also allow the devices of
    /// `linux.devices`.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup, CgroupError> {
        check_path(path)?;
        let mode = mode();
        if let Some(r) = resources {
            resources::validate(r, mode)?;
        }
        let mut cg = Cgroup::layout(path);
        let mut created = Vec::new();
        match cg.build(resources, &mut created) {
            Ok(()) => {
                log::debug!("created cgroup {path}");
                let leaves = cg
                    .dirs()
                    .into_iter()
                    .map(Path::to_path_buf)
                    .collect::<Vec<_>>();
                created.retain(|d| !leaves.contains(d));
                cg.parents = created;
                Ok(cg)
            }
            Err(e) => {
                fs::remove_created(&created);
                Err(e)
            }
        }
    }

    /// Creates the cgroup at `path` as the systemd unit `unit` holding the process `pid` (see
    /// the `systemd` module), then makes the directories systemd does not and writes
    /// `resources` to the files, as [`Cgroup::create`] does; [`Cgroup::join_plan`] says what
    /// joining is left. On error nothing is left behind: neither the unit nor a directory.
    pub fn create_systemd(
        path: &str,
        unit: &SystemdUnit,
        resources: &LinuxResources,
        pid: i32,
    ) -> Result<Cgroup, CgroupError> {
        check_path(path)?;
        let mode = mode();
        resources::validate(resources, mode)?;
        let mut devices = resources.devices().clone().unwrap_or_default();
        devices.extend(default_device_rules());
        // On every kind of host: a unit without DeviceAllow is opened to all devices by
        // systemd at its next reload (v1 devices.allow "a", v2 no program of its own).
        systemd::start(unit, pid, resources, &devices, mode)?;
        let mut cg = Cgroup::layout(path);
        cg.unit = Some(unit.name.clone());
        let mut created = Vec::new();
        match cg.build(Some(resources), &mut created) {
            Ok(()) => {
                log::debug!("created cgroup {path} as systemd unit {}", unit.name);
                let leaves: Vec<PathBuf> = cg.dirs().into_iter().map(Path::to_path_buf).collect();
                created.retain(|d| !leaves.contains(d));
                cg.parents = created;
                Ok(cg)
            }
            Err(e) => {
                if let Err(stop) = systemd::stop(&unit.name) {
                    log::warn!("undo create: {stop}");
                }
                fs::remove_created(&created);
                Err(e)
            }
        }
    }

    /// The systemd unit that owns this cgroup (systemd driver).
    pub fn systemd_unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// Gives an opened cgroup the systemd unit its creation started, for update and destroy.
    pub fn with_systemd_unit(mut self, unit: Option<String>) -> Cgroup {
        self.unit = unit;
        self
    }

    fn build(
        &mut self,
        resources: Option<&LinuxResources>,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        let h = fs::hierarchies();
        for v in &self.v1 {
            created.extend(fs::mkdir_all(&v.dir)?);
            if v.controllers.iter().any(|c| c == "cpuset") {
                let mount = h.v1_mount("cpuset").unwrap_or(Path::new("/"));
                for d in descendants_of(mount, &v.dir) {
                    v1::cpuset_inherit(&d)?;
                }
            }
        }
        if let (Some(dir), Some(mount)) = (&self.unified, &h.unified) {
            created.extend(fs::mkdir_all(dir)?);
            // On a hybrid host, controllers are enabled only when a resource needs one that
            // exists solely on the v2 side, leaving the host's cgroup2 tree as runc would.
            let wanted = self.mode == Mode::Unified
                || resources.is_some_and(|r| resources::wants_v2_only_controller(r, h));
            if wanted {
                enable_down_to(mount, dir);
            }
            self.v2_controllers = fs::read_words(&dir.join("cgroup.controllers"));
        }
        let empty = LinuxResources::default();
        let resources = resources.unwrap_or(&empty);
        resources::apply(self, resources, resources::Pass::Create)?;
        if self.route("devices").is_none() && self.unified.is_some() {
            let mut rules = resources.devices().clone().unwrap_or_default();
            rules.extend(default_device_rules());
            self.device_rules = Some(rules);
        }
        self.open_fd()?;
        Ok(())
    }

    fn open_fd(&mut self) -> Result<(), CgroupError> {
        if let Some(dir) = &self.unified {
            self.unified_fd = Some(open_dir(dir)?);
        }
        Ok(())
    }

    /// Opens an existing cgroup (no creation), in the hierarchies where it exists: on a hybrid
    /// host a cgroup made by another tool may have no cgroup2 directory (containerd makes a
    /// `ShimCgroup` in the v1 hierarchies only), or only one.
    pub fn open(path: &str) -> Result<Cgroup, CgroupError> {
        check_path(path)?;
        let mut cg = Cgroup::layout(path);
        cg.v1.retain(|v| v.dir.is_dir());
        if cg.unified.as_ref().is_some_and(|u| !u.is_dir()) {
            cg.unified = None;
        }
        if cg.v1.is_empty() && cg.unified.is_none() {
            return Err(CgroupError::NotFound(path.to_string()));
        }
        if let Some(u) = &cg.unified {
            cg.v2_controllers = fs::read_words(&u.join("cgroup.controllers"));
        }
        cg.open_fd()?;
        Ok(cg)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The ancestors [`Cgroup::create`] made (in every hierarchy, outermost first), which
    /// [`Cgroup::destroy`] removes once empty. Recorded with the container's state.
    pub fn created_parents(&self) -> &[PathBuf] {
        &self.parents
    }

    /// Gives an opened cgroup the ancestors its creation made, for [`Cgroup::destroy`].
    pub fn with_parents(mut self, parents: Vec<PathBuf>) -> Cgroup {
        self.parents = parents;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A directory fd usable with clone3's CLONE_INTO_CGROUP: the cgroup2 directory, on a
    /// hybrid host too (it places the child in the v2 hierarchy only).
    pub fn unified_dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.unified_fd.as_ref().map(|f| f.as_fd())
    }

    /// The cgroup's directory in the cgroup2 mount, if the host has one.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The cgroup's directory in the v1 hierarchy holding `controller` (e.g. "memory").
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|v| v.controllers.iter().any(|c| c == controller))
            .map(|v| v.dir.as_path())
    }

    /// Every directory of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        let mut d: Vec<&Path> = self.v1.iter().map(|v| v.dir.as_path()).collect();
        d.extend(self.unified.as_deref());
        d
    }

    pub(crate) fn route(&self, controller: &str) -> Option<Route<'_>> {
        if self.mode != Mode::Unified {
            if let Some(d) = self.v1_dir(controller) {
                return Some(Route::V1(d));
            }
        }
        let dir = self.unified.as_deref()?;
        self.v2_controllers
            .iter()
            .any(|c| c == controller)
            .then_some(Route::V2(dir))
    }

    /// Moves `pid` into this cgroup in every hierarchy (on hybrid hosts including the v2 mount).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        self.add_pid_in(pid, &self.dirs())
    }

    /// Moves `pid` into this cgroup in the hierarchies of `dirs` (from [`Cgroup::join_plan`]).
    pub fn add_pid_in(&self, pid: i32, dirs: &[&Path]) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for d in dirs {
            fs::write(d, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// How a new single-threaded process gets into this cgroup. Writing another process's
    /// pid to `cgroup.procs` takes the kernel's global threadgroup lock, and its first writer
    /// waits for an RCU grace period: ~10 ms per container on this kind of host, the largest
    /// part of a create. A thread moving itself (`0` into a v1 `tasks` file) does not take it
    /// (recent kernels; older ones take it either way), nor does a clone3 into the v2 cgroup.
    ///
    /// `in_v2`: the process was cloned into the v2 directory. `self_join`: it may move itself
    /// in the v1 hierarchies (it is still root of the host's user namespace). The `tasks`
    /// files it writes are opened here once for the cgroup's life, not by every process
    /// joining: an open of a cgroupfs file walks its path and sets up the open file, which on
    /// a host with many v1 hierarchies cost as much as the writes. The kernel checks such a
    /// write against the opener's credentials, the runtime's.
    pub fn join_plan(&self, in_v2: bool, self_join: bool) -> Result<JoinPlan<'_>, CgroupError> {
        let mut plan = JoinPlan::default();
        if self_join {
            let fds = self.v1_tasks()?;
            plan.by_process = fds
                .iter()
                .zip(&self.v1)
                .map(|(fd, v)| (fd.as_fd(), v.dir.join("tasks")))
                .collect();
        } else {
            plan.by_runtime = self.v1.iter().map(|v| v.dir.as_path()).collect();
        }
        if let (Some(u), false) = (&self.unified, in_v2) {
            plan.by_runtime.push(u.as_path());
        }
        Ok(plan)
    }

    fn v1_tasks(&self) -> Result<&[OwnedFd], CgroupError> {
        if let Some(fds) = self.v1_tasks.get() {
            return Ok(fds);
        }
        let fds = self
            .v1
            .iter()
            .map(|v| {
                let path = v.dir.join("tasks");
                open(&path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, FileMode::empty())
                    .map_err(|source| CgroupError::Open { path, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A caller racing this one may have set it first; either set is the same files.
        Ok(self.v1_tasks.get_or_init(|| fds))
    }

    /// Applies new resource values (as `runc update`). Device rules stay as created: on cgroup
    /// v2 the create's program is compiled and attached again (replacing the old one without a
    /// gap, as runc update does), the `devices` of `resources` are not looked at.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        resources::validate(resources, self.mode)?;
        if let Some(unit) = &self.unit {
            systemd::set(unit, resources, self.mode)?;
        }
        if let (Some(rules), Some(dir)) = (&self.device_rules, &self.unified) {
            devfilter::install(dir, rules, self.unit.is_some())?;
        }
        let h = fs::hierarchies();
        if let (Mode::Hybrid, Some(dir), Some(mount)) = (self.mode, &self.unified, &h.unified) {
            if resources::wants_v2_only_controller(resources, h) {
                // The cgroup was created without them (see build): enable them now and use
                // a view that knows about them.
                enable_down_to(mount, dir);
                let mut view = Cgroup::layout(&self.path);
                view.v2_controllers = fs::read_words(&dir.join("cgroup.controllers"));
                return resources::apply(&view, resources, resources::Pass::Update);
            }
        }
        resources::apply(self, resources, resources::Pass::Update)
    }

    /// Where freezing happens: the v1 freezer when mounted, else cgroup.freeze of cgroup2
    /// (a core v2 file that works without any controller, so hybrid hosts have it too).
    fn freezer(&self) -> Result<Route<'_>, CgroupError> {
        if self.mode != Mode::Unified {
            if let Some(d) = self.v1_dir("freezer") {
                return Ok(Route::V1(d));
            }
        }
        match self.unified.as_deref() {
            Some(d) if d.join("cgroup.freeze").exists() => Ok(Route::V2(d)),
            _ => Err(CgroupError::Unsupported {
                resource: "freeze".into(),
                reason: "no freezer on this host".into(),
            }),
        }
    }

    /// Freezes every process and returns once the kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let fail = |reason: String| CgroupError::Freezer {
            op: "freeze",
            path: self.path.clone(),
            reason,
        };
        match self.freezer()? {
            Route::V1(d) => {
                // FREEZING can linger while a task sits in an uninterruptible sleep; rewriting
                // FROZEN retries the freeze of the stragglers (as runc).
                let deadline = Instant::now() + FREEZE_TIMEOUT;
                let mut pause = Duration::from_micros(100);
                loop {
                    fs::write(d, "freezer.state", "FROZEN")?;
                    if fs::read(d, "freezer.state")?.trim() == "FROZEN" {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        let _ = fs::write(d, "freezer.state", "THAWED");
                        return Err(fail(format!(
                            "still FREEZING after {}s; thawed again",
                            FREEZE_TIMEOUT.as_secs()
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
            Route::V2(d) => {
                fs::write(d, "cgroup.freeze", "1")?;
                if wait_frozen(d, FREEZE_TIMEOUT)? {
                    Ok(())
                } else {
                    let _ = fs::write(d, "cgroup.freeze", "0");
                    Err(fail(format!(
                        "cgroup.events not frozen after {}s; thawed again",
                        FREEZE_TIMEOUT.as_secs()
                    )))
                }
            }
        }
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer()? {
            Route::V1(d) => fs::write(d, "freezer.state", "THAWED"),
            Route::V2(d) => fs::write(d, "cgroup.freeze", "0"),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.freezer()? {
            Route::V1(d) => Ok(fs::read(d, "freezer.state")?.trim() == "FROZEN"),
            Route::V2(d) => v2::events_frozen(d),
        }
    }

    /// The directory whose cgroup.procs lists the container's processes.
    fn procs_dir(&self) -> Option<&Path> {
        if self.mode == Mode::Unified {
            return self.unified.as_deref();
        }
        ["pids", "freezer", "memory", "cpu"]
            .iter()
            .find_map(|c| self.v1_dir(c))
            .or_else(|| self.v1.first().map(|v| v.dir.as_path()))
            .or(self.unified.as_deref())
    }

    /// Every pid in the cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(dir) = self.procs_dir() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        collect_pids(dir, &mut out)?;
        Ok(out)
    }

    /// Sends `signal` to every process in the cgroup. Processes may exit or fork meanwhile:
    /// callers that need everything gone freeze first or repeat until [`Cgroup::pids`] is
    /// empty. A frozen cgroup is thawed after SIGKILL so the kill takes effect.
    pub fn kill_all(&self, signal: nix::sys::signal::Signal) -> Result<(), CgroupError> {
        use nix::sys::signal::Signal::SIGKILL;
        if signal == SIGKILL {
            // cgroup.kill (Linux 5.14, a core cgroup2 file, so hybrid hosts have it too) kills
            // every member atomically, forks in flight included, frozen or not.
            if let Some(d) = self
                .unified
                .as_deref()
                .filter(|d| d.join("cgroup.kill").exists())
            {
                match fs::write(d, "cgroup.kill", "1") {
                    Ok(()) => {}
                    Err(e) => log::debug!("{e}; signalling each process instead"),
                }
            }
        }
        for pid in self.pids()? {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => log::warn!("kill {pid} ({signal}) in cgroup {}: {e}", self.path),
            }
        }
        if signal == SIGKILL && self.freeze_requested().unwrap_or(false) {
            self.thaw()?;
        }
        Ok(())
    }

    /// Whether a freeze was asked for and not undone. Unlike [`Cgroup::is_frozen`] this does
    /// not flicker while killed members wake up to die (v2 reports `frozen 0` until they are
    /// gone, then `frozen 1` again for the empty cgroup).
    fn freeze_requested(&self) -> Result<bool, CgroupError> {
        match self.freezer()? {
            Route::V1(d) => Ok(fs::read(d, "freezer.state")?.trim() != "THAWED"),
            Route::V2(d) => Ok(fs::read(d, "cgroup.freeze")?.trim() == "1"),
        }
    }

    /// Removes the cgroup from every hierarchy (it must be empty), sub-cgroups first. Tasks
    /// that were just killed can hold a cgroup busy for a moment, so EBUSY is retried for up
    /// to [`DESTROY_TIMEOUT`]. Removing a cgroup that is already gone succeeds. A systemd unit
    /// is stopped first.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + DESTROY_TIMEOUT;
        let mut first_err = None;
        if let Some(unit) = &self.unit {
            // systemd removes the directories it made; the others go below.
            if let Err(e) = systemd::stop(unit) {
                first_err = Some(e);
            }
        }
        for d in self.dirs() {
            if let Err(e) = remove_tree(d, deadline) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                remove_parents(&self.parents);
                log::debug!("destroyed cgroup {}", self.path);
                Ok(())
            }
        }
    }

    /// Reads containerd's metrics for this cgroup (v1 metrics on legacy and hybrid hosts).
    pub fn stats(&self) -> Stats {
        stats::read(self)
    }

    /// Starts watching for OOM kills in this cgroup.
    pub fn oom_watch(&self) -> Result<OomWatch, CgroupError> {
        OomWatch::new(self)
    }
}

/// An fd of the cgroup directory `dir` (for CLONE_INTO_CGROUP and the bpf() attach calls).
pub(crate) fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|source| CgroupError::Open {
        path: dir.to_path_buf(),
        source,
    })
}

/// How long [`Cgroup::freeze`] waits for the kernel to report the cgroup frozen.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Cgroup::destroy`] retries rmdir while tasks drain.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(1);

/// Enables the controllers each ancestor offers, from the cgroup2 `mount` down to `dir`'s
/// parent: controllers reach a cgroup only when every ancestor enables them for its children.
fn enable_down_to(mount: &Path, dir: &Path) {
    let mut parent = mount.to_path_buf();
    for d in descendants_of(mount, dir) {
        v2::enable_subtree(&parent);
        parent = d;
    }
}

/// The directories from just below `root` down to `leaf`, outermost first.
fn descendants_of(root: &Path, leaf: &Path) -> Vec<PathBuf> {
    let Ok(rel) = leaf.strip_prefix(root) else {
        return vec![leaf.to_path_buf()];
    };
    let mut cur = root.to_path_buf();
    rel.components()
        .map(|c| {
            cur.push(c);
            cur.clone()
        })
        .collect()
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => s,
        // ENODEV: removed between the open and the read (systemd removes an emptied scope).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            return Ok(())
        }
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.join("cgroup.procs"),
                source,
            })
        }
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out)?;
            }
        }
    }
    Ok(())
}

/// Removes the ancestors a create made (see [`Cgroup::created_parents`]), innermost first, as
/// long as nothing else lives in them: one still holding another container's cgroup stays.
pub fn remove_parents(parents: &[PathBuf]) {
    for d in parents.iter().rev() {
        match std::fs::remove_dir(d) {
            Ok(()) => log::debug!("removed cgroup parent {}", d.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {}
            Err(e) => log::warn!("rmdir cgroup parent {}: {e}", d.display()),
        }
    }
}

fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), deadline)?;
            }
        }
    }
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Waits until cgroup.events says `frozen 1`, sleeping in poll(2): kernfs signals
/// POLLPRI on every change of the file.
fn wait_frozen(dir: &Path, timeout: Duration) -> Result<bool, CgroupError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let path = dir.join("cgroup.events");
    let file = std::fs::File::open(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut buf = [0u8; 256];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0).map_err(|source| {
            CgroupError::Read {
                path: path.clone(),
                source,
            }
        })?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.lines().any(|l| l.trim() == "frozen 1") {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(CgroupError::Read {
                    path,
                    source: e.into(),
                })
            }
        }
    }
}

/// Fuzzing entry point (fuzz/): checks `r` as [`Cgroup::create`] does for `mode`, then applies
/// it as creation does to a v1 cgroup (every controller in `v1_dir`) and a v2 one (`v2_dir`),
/// both plain-file fixture directories (never cgroupfs). Network limits go only to v1 and the
/// unified map only to v2, as on real hosts. Returns how many of the two applies failed (a
/// fixture lacks files a real cgroup has).
#[doc(hidden)]
pub fn fuzz_translate(
    r: &LinuxResources,
    mode: Mode,
    v1_dir: &Path,
    v2_dir: &Path,
) -> Result<usize, CgroupError> {
    resources::validate(r, mode)?;
    let fixture = |mode, v1: Vec<V1Dir>, unified: Option<&Path>, v2: &[&str]| Cgroup {
        path: "/fuzz".into(),
        mode,
        v1,
        unified: unified.map(Path::to_path_buf),
        v2_controllers: v2.iter().map(|c| c.to_string()).collect(),
        unified_fd: None,
        device_rules: None,
        parents: Vec::new(),
        unit: None,
        v1_tasks: OnceLock::new(),
    };
    let all_v1 = [
        "memory", "cpu", "cpuset", "pids", "blkio", "hugetlb", "devices", "net_cls", "net_prio",
    ];
    let v1 = fixture(
        Mode::Legacy,
        vec![V1Dir {
            controllers: all_v1.iter().map(|c| c.to_string()).collect(),
            dir: v1_dir.to_path_buf(),
        }],
        None,
        &[],
    );
    let v2 = fixture(
        Mode::Unified,
        Vec::new(),
        Some(v2_dir),
        &["memory", "cpu", "cpuset", "pids", "io", "hugetlb"],
    );
    let mut for_v1 = r.clone();
    for_v1.set_unified(None);
    let mut for_v2 = r.clone();
    for_v2.set_network(None);
    Ok([(&v1, &for_v1), (&v2, &for_v2)]
        .into_iter()
        .filter(|(cg, r)| resources::apply(cg, r, resources::Pass::Fixture).is_err())
        .count())
}

/// Fuzzing entry point (fuzz/): the host layout read from mountinfo and /proc/cgroups text.
#[doc(hidden)]
pub fn fuzz_parse_hierarchies(mountinfo: &str, subsystems: &str) -> Mode {
    fs::parse_hierarchies(mountinfo, subsystems).mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_checked() {
        assert!(check_path("/a/b").is_ok());
        assert!(check_path("a/b").is_err());
        assert!(check_path("/a/../b").is_err());
        assert!(check_path("/").is_err());
    }

    /// Needs root and a cgroup2 mount (unified hosts, or the cgroup2 half of hybrid ones,
    /// where cgroup.freeze works without any controller).
    #[test]
    fn v2_freeze_wait_sees_frozen() {
        let mount = fs::hierarchies()
            .unified
            .clone()
            .expect("a cgroup2 mount (unified or hybrid host)");
        let dir = mount.join(format!("pelagos-unit-freeze-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut child = std::process::Command::new("/bin/busybox")
            .args(["sleep", "100"])
            .spawn()
            .unwrap();
        fs::write(&dir, "cgroup.procs", &child.id().to_string()).unwrap();
        fs::write(&dir, "cgroup.freeze", "1").unwrap();
        let frozen = wait_frozen(&dir, Duration::from_secs(10)).unwrap();
        fs::write(&dir, "cgroup.freeze", "0").unwrap();
        let _ = child.kill();
        let _ = child.wait();
        remove_tree(&dir, Instant::now() + DESTROY_TIMEOUT).unwrap();
        assert!(frozen);
        assert!(!dir.exists());
    }

    #[test]
    fn descendants() {
        let d = descendants_of(Path::new("/m"), Path::new("/m/a/b"));
        assert_eq!(d, vec![PathBuf::from("/m/a"), PathBuf::from("/m/a/b")]);
    }
}
