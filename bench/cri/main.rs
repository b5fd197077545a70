//! The CRI part of `make bench` (scripts/bench-cri.sh runs it): pods through containerd's CRI
//! with runtime handlers `runc` and `pelagos` registered in one private containerd (the
//! fixture of the `cri_*` tests: its CNI plugin, pause and busybox images), the handlers
//! alternating round by round so that the machine's noise falls on both. Prints the table with
//! the targets of issue 16 and writes every sample as JSON. `--help` lists the options.

mod cni;
#[path = "../../tests/common/mod.rs"]
mod common;
mod procs;
mod report;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use serde_json::{json, Value};
use tonic::{Response, Status};

use common::cri::{self, Cri};
use report::*;

/// An app container that exits on SIGTERM, as a well-behaved pod's container. It says `ready`
/// once its trap is set: as pid 1 of its pid namespace it ignores a SIGTERM that comes before.
const SLEEPER: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; echo ready; sleep 3600 & wait",
];
/// StopContainer's grace period (the sleeper exits at the SIGTERM).
const STOP_TIMEOUT_S: i64 = 10;
/// A call without an answer by then is a failed round (the fixture's own limit panics).
const CALL_LIMIT: Duration = Duration::from_secs(40);
/// A pause before each parallel batch of calls (see [`Bench::parallel`]).
const SETTLE: Duration = Duration::from_millis(500);
const PHASES: &[&str] = &["lifecycle", "parallel", "exec", "log", "memory", "density"];

struct Opts {
    versions: Vec<String>,
    rounds: usize,
    batches: usize,
    execs: usize,
    exec_block: usize,
    pods: usize,
    density: usize,
    log_mib: usize,
    log_rounds: usize,
    warmup: bool,
    only: Vec<String>,
    strict: bool,
    json: PathBuf,
    keep_log: Option<PathBuf>,
}

const USAGE: &str = "usage: cri [options]
  --containerd LIST  containerd versions, one private containerd each (default 1.6,2.1)
  --rounds N         sequential pod lifecycles per handler (default 20)
  --batches N        parallel batches of 4 and of 8 pods per handler (default 3)
  --execs N          ExecSync /bin/true per handler (default 40), in blocks of --exec-block (10)
  --pods N           pods for the shim PSS per pod (default 10)
  --density N        pods running at once for the total shim PSS (default 50)
  --log-mib N        MiB of stdout per log round (default 128), --log-rounds N (default 2)
  --only LIST        phases among lifecycle,parallel,exec,log,memory,density
  --no-warmup        no unrecorded lifecycle per handler first
  --smoke            one of everything, small: about a minute per containerd
  --strict           exit 1 on any failed call or anything left behind
  --json PATH        where the results go (default bench/cri-results.json)
  --keep-log DIR     copy each containerd's log (with the shims') to DIR/containerd-<version>.log";

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        versions: vec!["1.6".into(), "2.1".into()],
        rounds: 20,
        batches: 3,
        execs: 40,
        exec_block: 10,
        pods: 10,
        density: 50,
        log_mib: 128,
        log_rounds: 2,
        warmup: true,
        only: PHASES.iter().map(|s| s.to_string()).collect(),
        strict: false,
        json: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/cri-results.json"),
        keep_log: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let mut num = |name: &str| -> Result<usize, String> {
            let v = value(name)?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a count"))
        };
        match a.as_str() {
            "--containerd" => {
                o.versions = value(&a)?.split(',').map(str::to_owned).collect();
            }
            "--rounds" => o.rounds = num(&a)?,
            "--batches" => o.batches = num(&a)?,
            "--execs" => o.execs = num(&a)?,
            "--exec-block" => o.exec_block = num(&a)?.max(1),
            "--pods" => o.pods = num(&a)?.max(1),
            "--density" => o.density = num(&a)?.max(1),
            "--log-mib" => o.log_mib = num(&a)?.max(1),
            "--log-rounds" => o.log_rounds = num(&a)?,
            "--only" => {
                o.only = value(&a)?.split(',').map(str::to_owned).collect();
                if let Some(p) = o.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!("--only: no phase {p:?}"));
                }
            }
            "--no-warmup" => o.warmup = false,
            "--smoke" => {
                (o.rounds, o.batches, o.execs, o.exec_block) = (1, 1, 4, 2);
                (o.pods, o.density, o.log_mib, o.log_rounds) = (1, 2, 8, 1);
                o.warmup = false;
            }
            "--strict" => o.strict = true,
            "--json" => o.json = PathBuf::from(value(&a)?),
            "--keep-log" => o.keep_log = Some(PathBuf::from(value(&a)?)),
            // cargo bench appends it.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// runc first in even rounds, pelagos first in odd ones.
fn order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

struct Bench<'a> {
    cri: &'a Cri,
    res: Results,
    seq: usize,
    /// Replays the CNI plugin's DELs of each lifecycle's teardown.
    cni: Option<cni::Replay>,
}

impl Bench<'_> {
    /// A pod with its own network namespace through the CNI plugin, as a Kubernetes pod.
    fn pod(&mut self, h: usize) -> PodSandboxConfig {
        self.seq += 1;
        let mut pod = self
            .cri
            .pod_config(&format!("{}-{}", HANDLERS[h], self.seq));
        Cri::set_namespaces(
            &mut pod,
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        );
        pod
    }

    fn run_req(h: usize, pod: &PodSandboxConfig) -> RunPodSandboxRequest {
        RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: HANDLERS[h].to_owned(),
        }
    }

    fn create_req(
        pod_id: &str,
        pod: &PodSandboxConfig,
        name: &str,
        cmd: &[&str],
    ) -> CreateContainerRequest {
        let mut config = Cri::container_config(name, cmd);
        Cri::security(&mut config).namespace_options = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        }
    }

    /// One CRI call: its wall time in ms and its answer, or what failed.
    fn call<T>(
        &self,
        h: usize,
        what: &str,
        fut: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<(f64, T), String> {
        let t0 = Instant::now();
        let r = self
            .cri
            .block(async { tokio::time::timeout(CALL_LIMIT, fut).await });
        let ms = ms_since(t0);
        match r {
            Ok(r) => r
                .map(|r| (ms, r.into_inner()))
                .map_err(|s| format!("{} {what}: {}", HANDLERS[h], s.message())),
            Err(_) => Err(format!(
                "{} {what}: no answer within {CALL_LIMIT:?}",
                HANDLERS[h]
            )),
        }
    }

    /// The calls of `futs` at once over the one connection: (ms, answer) of each.
    fn parallel_calls<T: Send + 'static>(
        &self,
        futs: Vec<impl Future<Output = Result<T, Status>> + Send + 'static>,
    ) -> Vec<(f64, Result<T, Status>)> {
        self.cri.block(async move {
            let tasks: Vec<_> = futs
                .into_iter()
                .map(|f| {
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        let r = f.await;
                        (ms_since(t0), r)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("a CRI call task panicked"));
            }
            out
        })
    }

    /// Stops and removes a pod, whatever state it is in; errors are the caller's failure.
    fn discard_pod(&self, pod_id: &str) {
        let rs = self.cri.rs();
        let _ = self.call(
            0,
            "StopPodSandbox",
            rs.clone().stop_pod_sandbox(stop_pod(pod_id)),
        );
        let _ = self.call(
            0,
            "RemovePodSandbox",
            rs.clone().remove_pod_sandbox(remove_pod(pod_id)),
        );
    }

    /// Runs a pod and creates and starts `containers` (name, command) in it.
    fn pod_with(
        &mut self,
        h: usize,
        containers: &[(&str, &[&str])],
    ) -> Result<(String, PodSandboxConfig, Vec<String>), String> {
        let pod = self.pod(h);
        let rs = self.cri.rs();
        let (_, r) = self.call(
            h,
            RUN_POD,
            rs.clone().run_pod_sandbox(Self::run_req(h, &pod)),
        )?;
        let pod_id = r.pod_sandbox_id;
        let mut ids = Vec::new();
        for (name, cmd) in containers {
            let started = self
                .call(
                    h,
                    CREATE,
                    rs.clone()
                        .create_container(Self::create_req(&pod_id, &pod, name, cmd)),
                )
                .and_then(|(_, c)| {
                    self.call(h, START, rs.clone().start_container(start(&c.container_id)))
                        .map(|_| c.container_id)
                });
            match started {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.discard_pod(&pod_id);
                    return Err(e);
                }
            }
        }
        Ok((pod_id, pod, ids))
    }

    /// The `pid` of CRI's verbose info (a JSON document under the key `info`).
    fn verbose_pid(info: &std::collections::HashMap<String, String>) -> Option<i32> {
        let v: Value = serde_json::from_str(info.get("info")?).ok()?;
        v.get("pid")?.as_i64().map(|p| p as i32)
    }

    /// The shim daemon serving the pod: the parent of its sandbox's process.
    fn pod_shim(&self, h: usize, pod_id: &str) -> Result<i32, String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_owned(),
            verbose: true,
        };
        let (_, st) = self.call(h, "PodSandboxStatus", self.cri.rs().pod_sandbox_status(req))?;
        let pid = Self::verbose_pid(&st.info).ok_or(format!(
            "{} PodSandboxStatus: no pid in {:?}",
            HANDLERS[h], st.info
        ))?;
        let shim = procs::ppid(pid).ok_or(format!("pod process {pid} is gone"))?;
        let comm = procs::comm(shim);
        if !comm.starts_with("containerd-shim") {
            return Err(format!(
                "the parent of pod process {pid} is {shim} ({comm}), not a shim"
            ));
        }
        Ok(shim)
    }

    /// A sequential lifecycle: every step timed.
    fn lifecycle(&mut self, h: usize) -> Result<(), String> {
        let pod = self.pod(h);
        let rs = self.cri.rs();
        let (t_run, r) = self.call(
            h,
            RUN_POD,
            rs.clone().run_pod_sandbox(Self::run_req(h, &pod)),
        )?;
        let pod_id = r.pod_sandbox_id;
        let steps = (|| {
            let req = Self::create_req(&pod_id, &pod, "app", SLEEPER);
            let (t_create, c) = self.call(h, CREATE, rs.clone().create_container(req))?;
            let id = c.container_id;
            let (t_start, _) = self.call(h, START, rs.clone().start_container(start(&id)))?;
            Self::wait_ready(h, &pod, "app")?;
            let mark = self.cni.as_ref().map(cni::Replay::mark);
            let stop = StopContainerRequest {
                container_id: id.clone(),
                timeout: STOP_TIMEOUT_S,
            };
            let (t_stop, _) = self.call(h, STOP, rs.clone().stop_container(stop))?;
            let rm = RemoveContainerRequest { container_id: id };
            let (t_rm, _) = self.call(h, REMOVE, rs.clone().remove_container(rm))?;
            let (t_sp, _) =
                self.call(h, STOP_POD, rs.clone().stop_pod_sandbox(stop_pod(&pod_id)))?;
            let (t_rp, _) = self.call(
                h,
                REMOVE_POD,
                rs.clone().remove_pod_sandbox(remove_pod(&pod_id)),
            )?;
            let dels = self
                .cni
                .as_ref()
                .zip(mark)
                .map(|(c, m)| c.dels(m, c.mark()));
            Ok::<_, String>(([t_create, t_start, t_stop, t_rm, t_sp, t_rp], dels))
        })();
        let ([t_create, t_start, t_stop, t_rm, t_sp, t_rp], dels) = steps.inspect_err(|_| {
            self.discard_pod(&pod_id);
        })?;
        let teardown = t_stop + t_rm + t_sp + t_rp;
        if let Some((c, dels)) = self.cni.as_ref().zip(dels) {
            let t_dels = c.time_dels(&dels)?;
            self.res.add(CNI_DELS, h, t_dels);
            self.res.add(TEARDOWN_LESS_CNI, h, teardown - t_dels);
        }
        for (m, t) in [
            (RUN_POD, t_run),
            (CREATE, t_create),
            (START, t_start),
            (STOP, t_stop),
            (REMOVE, t_rm),
            (STOP_POD, t_sp),
            (REMOVE_POD, t_rp),
            (START_PATH, t_run + t_create + t_start),
            (TEARDOWN, teardown),
        ] {
            self.res.add(m, h, t);
        }
        Ok(())
    }

    /// Waits until a [`SLEEPER`] has logged `ready` (CRI writes its stdout to the log file).
    fn wait_ready(h: usize, pod: &PodSandboxConfig, name: &str) -> Result<(), String> {
        let path = Cri::log_path(pod, &Cri::container_config(name, &[]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("ready")) {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} {name}: no `ready` in {} after 30 s",
                    HANDLERS[h],
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// `n` RunPodSandbox at once, then their StopPodSandbox at once, then their removal.
    fn parallel(&mut self, h: usize, n: usize) -> Result<(), String> {
        let (run_m, stop_m, rm_m) = match n {
            4 => (RUN_POD_4, STOP_POD_4, REMOVE_POD_4),
            _ => (RUN_POD_8, STOP_POD_8, REMOVE_POD_8),
        };
        let rs = self.cri.rs();
        let pods: Vec<_> = (0..n).map(|_| self.pod(h)).collect();
        std::thread::sleep(SETTLE);
        let runs = self.parallel_calls(
            pods.iter()
                .map(|p| {
                    let (mut c, req) = (rs.clone(), Self::run_req(h, p));
                    async move {
                        c.run_pod_sandbox(req)
                            .await
                            .map(|r| r.into_inner().pod_sandbox_id)
                    }
                })
                .collect(),
        );
        let mut ids = Vec::new();
        let mut failed = None;
        for (t, r) in runs {
            match r {
                Ok(id) => {
                    self.res.add(run_m, h, t);
                    ids.push(id);
                }
                Err(s) => failed = Some(format!("{} {run_m}: {}", HANDLERS[h], s.message())),
            }
        }
        if let Some(e) = failed {
            ids.iter().for_each(|id| self.discard_pod(id));
            return Err(e);
        }
        for (metric, remove) in [(stop_m, false), (rm_m, true)] {
            // containerd's garbage collection of the previous batch's snapshots and leases
            // holds its metadata lock: it runs in this pause rather than inside the next
            // measured batch, which would charge it to whichever handler comes next.
            std::thread::sleep(SETTLE);
            let outs = self.parallel_calls(
                ids.iter()
                    .map(|id| {
                        let (mut c, id) = (rs.clone(), id.clone());
                        async move {
                            if remove {
                                c.remove_pod_sandbox(remove_pod(&id)).await.map(|_| ())
                            } else {
                                c.stop_pod_sandbox(stop_pod(&id)).await.map(|_| ())
                            }
                        }
                    })
                    .collect(),
            );
            for (t, r) in outs {
                match r {
                    Ok(()) => self.res.add(metric, h, t),
                    Err(s) => failed = Some(format!("{} {metric}: {}", HANDLERS[h], s.message())),
                }
            }
            if let Some(e) = failed {
                ids.iter().for_each(|id| self.discard_pod(id));
                return Err(e);
            }
        }
        Ok(())
    }

    /// ExecSync of /bin/true into a running container of each handler, in blocks: the wall
    /// time of each, and the CPU of the pod's shim and of every process it reaped in the block
    /// (cutime: runc, runc init and the exec'd process; pelagos' setup helper and the process).
    fn exec(&mut self, opts: &Opts) -> Result<(), String> {
        let mut targets = Vec::new();
        for h in 0..2 {
            match self.pod_with(h, &[("app", SLEEPER)]) {
                Ok((pod_id, _, ids)) => targets.push((pod_id, ids[0].clone())),
                Err(e) => {
                    targets.iter().for_each(|(p, _)| self.discard_pod(p));
                    return Err(e);
                }
            }
        }
        let result = (|| {
            let shims = [
                self.pod_shim(0, &targets[0].0)?,
                self.pod_shim(1, &targets[1].0)?,
            ];
            let rs = self.cri.rs();
            for b in 0..opts.execs.div_ceil(opts.exec_block) {
                for h in order(b) {
                    let cpu0 = procs::cpu_ms(shims[h], true).ok_or("shim gone")?;
                    let self0 = procs::cpu_ms(shims[h], false).ok_or("shim gone")?;
                    for _ in 0..opts.exec_block {
                        let req = ExecSyncRequest {
                            container_id: targets[h].1.clone(),
                            cmd: vec!["/bin/true".into()],
                            timeout: 30,
                        };
                        let (t, r) = self.call(h, EXEC, rs.clone().exec_sync(req))?;
                        if r.exit_code != 0 {
                            return Err(format!(
                                "{} {EXEC}: exit code {}",
                                HANDLERS[h], r.exit_code
                            ));
                        }
                        self.res.add(EXEC, h, t);
                    }
                    let cpu1 = procs::cpu_ms(shims[h], true).ok_or("shim gone")?;
                    let self1 = procs::cpu_ms(shims[h], false).ok_or("shim gone")?;
                    let per_exec = |d: f64| d / opts.exec_block as f64;
                    self.res.add(EXEC_CPU, h, per_exec(cpu1 - cpu0));
                    self.res.add(EXEC_CPU_SHIM, h, per_exec(self1 - self0));
                }
            }
            Ok(())
        })();
        targets.iter().for_each(|(p, _)| self.discard_pod(p));
        result
    }

    /// A container writing `bytes` of 100-byte lines to stdout: the pod shim's own CPU
    /// (utime + stime of its threads, not of the container it reaps) from StartContainer until
    /// the container has exited and its log file stopped growing, per GiB.
    fn log(&mut self, h: usize, bytes: usize) -> Result<(), String> {
        let (pod_id, pod, _) = self.pod_with(h, &[])?;
        let result = (|| {
            let shim = self.pod_shim(h, &pod_id)?;
            let rs = self.cri.rs();
            let line = "0123456789".repeat(10);
            let script = format!("yes {} | head -c {bytes}", &line[..99]);
            let req = Self::create_req(&pod_id, &pod, "writer", &["/bin/sh", "-c", &script]);
            let (_, c) = self.call(h, CREATE, rs.clone().create_container(req))?;
            let id = c.container_id;
            let cpu0 = procs::cpu_ms(shim, false).ok_or("shim gone")?;
            let t0 = Instant::now();
            self.call(h, START, rs.clone().start_container(start(&id)))?;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let req = ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                };
                let (_, st) = self.call(h, "ContainerStatus", rs.clone().container_status(req))?;
                let st = st.status.ok_or("no container status")?;
                if st.state == ContainerState::ContainerExited as i32 {
                    if st.exit_code != 0 {
                        return Err(format!(
                            "{} log writer: exit code {}",
                            HANDLERS[h], st.exit_code
                        ));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} log writer did not exit", HANDLERS[h]));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let path = Cri::log_path(&pod, &Cri::container_config("writer", &[]));
            let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let mut last = size();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let now = size();
                if now == last {
                    break;
                }
                last = now;
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu1 = procs::cpu_ms(shim, false).ok_or("shim gone")?;
            if (last as usize) < bytes {
                return Err(format!(
                    "{} log file {} has {last} bytes, less than the {bytes} written",
                    HANDLERS[h],
                    path.display()
                ));
            }
            let gib = bytes as f64 / (1u64 << 30) as f64;
            self.res.add(LOG_CPU, h, (cpu1 - cpu0) / gib);
            self.res
                .add(LOG_RATE, h, bytes as f64 / (1u64 << 20) as f64 / secs);
            Ok(())
        })();
        self.discard_pod(&pod_id);
        result
    }

    /// `k` pods of pause + 2 sleepers, one shim each: the summed PSS of the shims and of their
    /// descendants that are not in the pods' cgroups.
    fn memory(&mut self, h: usize, k: usize, metric: &'static str) -> Result<(), String> {
        let mut pods = Vec::new();
        let result = (|| {
            for _ in 0..k {
                let (pod_id, _, _) = self.pod_with(h, &[("app1", SLEEPER), ("app2", SLEEPER)])?;
                pods.push(pod_id);
            }
            std::thread::sleep(Duration::from_secs(1));
            let shims = pods
                .iter()
                .map(|p| self.pod_shim(h, p))
                .collect::<Result<Vec<_>, _>>()?;
            let in_pods = self.cri.pod_cgroup_pids();
            let kib: u64 = procs::descendants(&shims)
                .into_iter()
                .filter(|p| !in_pods.contains(p))
                .filter_map(procs::pss_kib)
                .sum();
            if metric == PSS_POD {
                self.res.add(metric, h, kib as f64 / k as f64);
            } else {
                self.res.add(metric, h, kib as f64 / 1024.0);
            }
            Ok(())
        })();
        pods.iter().for_each(|p| self.discard_pod(p));
        result
    }

    fn note(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            eprintln!("cri bench: failed: {e}");
            self.res.failures.push(e);
        }
    }
}

fn start(id: &str) -> StartContainerRequest {
    StartContainerRequest {
        container_id: id.to_owned(),
    }
}

fn stop_pod(id: &str) -> StopPodSandboxRequest {
    StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }
}

fn remove_pod(id: &str) -> RemovePodSandboxRequest {
    RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}

fn run_version(opts: &Opts, version: &str) -> Results {
    let cri = Cri::start_on(version, cri::RUNC, true, |_, _| String::new());
    let mut b = Bench {
        cri: &cri,
        res: Results::default(),
        seq: 0,
        cni: None,
    };
    let on = |p: &str| opts.only.iter().any(|o| o == p);
    let phase = |name: &str| eprintln!("cri bench: containerd {version}: {name}");
    if opts.warmup {
        let real = std::mem::take(&mut b.res);
        for h in 0..2 {
            let r = b.lifecycle(h);
            b.note(r);
        }
        let failures = std::mem::replace(&mut b.res, real).failures;
        b.res.failures.extend(failures);
    }
    if on("lifecycle") {
        phase("sequential lifecycles");
        match cni::Replay::new(&cri.work) {
            Ok(c) => b.cni = Some(c),
            Err(e) => b.res.failures.push(e),
        }
        for round in 0..opts.rounds {
            for h in order(round) {
                let r = b.lifecycle(h);
                b.note(r);
            }
        }
        b.cni = None;
    }
    if on("parallel") {
        phase("pods in parallel");
        for round in 0..opts.batches {
            for n in [4, 8] {
                for h in order(round) {
                    let r = b.parallel(h, n);
                    b.note(r);
                }
            }
        }
    }
    if on("exec") {
        phase("ExecSync");
        let r = b.exec(opts);
        b.note(r);
    }
    if on("log") {
        phase("log path");
        for round in 0..opts.log_rounds {
            for h in order(round) {
                let r = b.log(h, opts.log_mib << 20);
                b.note(r);
            }
        }
    }
    if on("memory") {
        phase("shim memory per pod");
        for h in order(0) {
            let r = b.memory(h, opts.pods, PSS_POD);
            b.note(r);
        }
    }
    if on("density") {
        phase("density");
        for h in order(1) {
            let r = b.memory(h, opts.density, PSS_DENSITY);
            b.note(r);
        }
    }
    let mut res = b.res;
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| cri.assert_no_leaks())) {
        res.leaks.push(panic_text(p));
    }
    if let Some(dir) = &opts.keep_log {
        let to = dir.join(format!("containerd-{version}.log"));
        if let Err(e) = std::fs::copy(cri.cd.log_path(), &to) {
            eprintln!(
                "cri bench: cannot copy the containerd log to {}: {e}",
                to.display()
            );
        }
    }
    res
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let load_start = loadavg();
    let mut per_version = serde_json::Map::new();
    let mut clean = true;
    let mut tables = String::new();
    for v in &opts.versions {
        let res = run_version(&opts, v);
        let bin = common::containerd::bin_dir(v).join("containerd");
        let cd = command_line(&bin.to_string_lossy(), &["--version"]);
        let table = res.table(&format!("containerd {v} ({cd})"));
        print!("{table}");
        tables.push_str(&table);
        clean &= res.failures.is_empty() && res.leaks.is_empty();
        let mut j = res.to_json();
        j["containerd"] = json!(cd);
        per_version.insert(v.clone(), j);
    }
    let machine = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_start": load_start,
        "load_end": loadavg(),
        "runc": command_line("runc", &["--version"]),
        "pelagos_commit": command_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]),
        "shim": common::containerd::shim_binary(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let doc = json!({
        "machine": machine,
        "settings": {
            "rounds": opts.rounds, "batches": opts.batches, "execs": opts.execs,
            "exec_block": opts.exec_block, "pods": opts.pods, "density": opts.density,
            "log_mib": opts.log_mib, "log_rounds": opts.log_rounds, "only": opts.only,
        },
        "containerd": per_version,
    });
    match serde_json::to_string_pretty(&doc)
        .map_err(|e| e.to_string())
        .and_then(|t| std::fs::write(&opts.json, t + "\n").map_err(|e| e.to_string()))
    {
        Ok(()) => eprintln!("cri bench: results in {}", opts.json.display()),
        Err(e) => eprintln!("cri bench: cannot write {}: {e}", opts.json.display()),
    }
    eprintln!(
        "cri bench: {:.0} s, load {load_start} at the start, {} at the end",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    if opts.strict && !clean {
        eprintln!("cri bench: --strict: failed calls or leftovers (above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
