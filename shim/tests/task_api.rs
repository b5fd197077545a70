//! The shim daemon driven directly over its ttrpc socket, as containerd would, with a fake
//! containerd events service recording what the shim publishes. Checks what a ctr run cannot
//! reach: exact gRPC codes, the order of events, Delete of a never-started task, Shutdown.
//! Needs root (it creates real containers from a busybox-static bundle).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::{TaskDelete, TaskExit};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::shim::shim_ttrpc::TaskClient;
use containerd_shim_protos::types::task::Status;
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH};
use ttrpc::Code;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-pelagos-v2");
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// A minimal bundle: busybox-static as the rootfs, its own pid/mount/ipc/uts namespaces and a
/// top-level cgroup of its own.
struct Bundle {
    dir: PathBuf,
    cgroup: String,
}

impl Bundle {
    fn new(args: &[&str]) -> Bundle {
        let dir = std::env::temp_dir().join(unique("pelagos-shim-bundle"));
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["proc", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for a in ["sh", "sleep", "true", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
        let cgroup = format!("/{}", unique("pelagos-shimtest"));
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "cgroupsPath": cgroup,
                "namespaces": [
                    {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}
                ]
            }
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        Bundle { dir, cgroup }
    }

    fn cgroup_exists(&self) -> bool {
        Path::new("/sys/fs/cgroup/pids")
            .join(self.cgroup.trim_start_matches('/'))
            .exists()
            || Path::new("/sys/fs/cgroup")
                .join(self.cgroup.trim_start_matches('/'))
                .join("cgroup.procs")
                .exists()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shim daemon started the way `start` starts it (listener on fd 3), plus a fake containerd
/// events endpoint.
struct Daemon {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
    namespace: String,
    events: Arc<Mutex<Vec<String>>>,
    /// What the shim logged to its `log` fifo, shown when a test fails.
    log: Arc<Mutex<String>>,
    client: Option<TaskClient>,
    /// Container processes to kill if a test fails half way.
    pids: Vec<i32>,
    /// Containers created, cleaned up with the `delete` action (as containerd would) if the
    /// daemon has to be killed.
    created: Vec<(String, PathBuf)>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = std::env::temp_dir().join(unique("pelagos-shim-daemon"));
        std::fs::create_dir_all(&dir).unwrap();
        let namespace = unique("shimtest");
        let sock = dir.join("shim.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let events_sock = dir.join("events.sock");
        let events = Arc::new(Mutex::new(Vec::new()));
        fake_events(UnixListener::bind(&events_sock).unwrap(), events.clone());
        let log = collect_log(&dir);

        let lfd = listener.as_raw_fd();
        let mut cmd = Command::new(SHIM);
        cmd.args(["-namespace", &namespace, "-id", "first"])
            .args(["-address", "/run/fake/containerd.sock"])
            .args(["-publish-binary", "/bin/true"])
            .args(["-socket", &format!("unix://{}", sock.display())])
            .env("TTRPC_ADDRESS", &events_sock)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        // SAFETY: only dup2/fcntl in the forked child, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec set.
                let rc = if lfd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(lfd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the shim daemon");
        drop(listener);
        let client = ttrpc::Client::connect(&format!("unix://{}", sock.display()))
            .expect("connect to the shim");
        Daemon {
            child,
            sock,
            dir,
            namespace,
            events,
            log,
            client: Some(TaskClient::new(client)),
            pids: Vec::new(),
            created: Vec::new(),
        }
    }

    fn create(&mut self, id: &str, bundle: &Bundle) -> ttrpc::Result<u32> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.dir.display().to_string(),
            ..Default::default()
        };
        let pid = self.c().create(ctx(), &req)?.pid;
        self.pids.push(pid as i32);
        self.created.push((id.to_owned(), bundle.dir.clone()));
        Ok(pid)
    }

    fn start_task(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let req = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self.c().start(ctx(), &req)?.pid)
    }

    fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        let req = StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.c().state(ctx(), &req)
    }

    fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self.c().wait(ctx(), &req)?.exit_status)
    }

    fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<()> {
        let req = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.c().kill(ctx(), &req).map(|_| ())
    }

    fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.c().delete(ctx(), &req)
    }

    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> ttrpc::Result<()> {
        let spec = serde_json::json!({
            "args": args, "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
        });
        let req = ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: spec.to_string().into_bytes(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.c().exec(ctx(), &req).map(|_| ())
    }

    fn shutdown(&self) -> ttrpc::Result<()> {
        self.c()
            .shutdown(ctx(), &ShutdownRequest::default())
            .map(|_| ())
    }

    /// Shutdown, then close the connection as containerd does; returns the shim's exit code.
    fn shutdown_and_disconnect(&mut self) -> Option<i32> {
        self.shutdown().unwrap();
        self.client.take();
        self.wait_exit()
    }

    fn c(&self) -> &TaskClient {
        self.client.as_ref().expect("connected")
    }

    /// Waits for the events the shim published to reach `n`.
    fn events(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + RPC_TIMEOUT;
        loop {
            let got = self.events.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the daemon to exit after Shutdown; its exit status.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + RPC_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        Path::new("/run/pelagos").join(&self.namespace).join(id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("shim log:\n{}", self.log.lock().unwrap());
            eprintln!(
                "shim stderr:\n{}\nshim status: {:?}",
                std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default(),
                self.child.try_wait()
            );
        }
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in &self.pids {
                // SAFETY: signalling processes this test created.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for (id, bundle) in &self.created {
                let _ = Command::new(SHIM)
                    .args(["-namespace", &self.namespace, "-id", id])
                    .arg("-bundle")
                    .arg(bundle)
                    .arg("delete")
                    .current_dir(bundle)
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(Path::new("/run/pelagos").join(&self.namespace));
    }
}

/// Makes the `log` fifo the shim writes to and collects what arrives.
fn collect_log(dir: &Path) -> Arc<Mutex<String>> {
    let path = dir.join("log");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Read-write, like containerd: opening never blocks and EOF never comes.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// Accepts connections and answers every Forward with OK, recording "topic" or
/// "topic:id:status" for exits and deletes.
fn fake_events(listener: UnixListener, out: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let out = out.clone();
            std::thread::spawn(move || loop {
                let mut hdr = [0u8; MESSAGE_HEADER_LENGTH];
                if s.read_exact(&mut hdr).is_err() {
                    return;
                }
                let mh = MessageHeader::from(hdr);
                let mut buf = vec![0u8; mh.length as usize];
                s.read_exact(&mut buf).unwrap();
                let req = ttrpc::Request::parse_from_bytes(&buf).unwrap();
                let fwd = ForwardRequest::parse_from_bytes(&req.payload).unwrap();
                let env = fwd.envelope.unwrap();
                let ev = env.event.unwrap();
                let topic = env.topic.trim_start_matches("/tasks/").to_string();
                let line = match topic.as_str() {
                    "exit" => {
                        let e = TaskExit::parse_from_bytes(&ev.value).unwrap();
                        format!("exit:{}:{}", e.id, e.exit_status)
                    }
                    "delete" => {
                        let e = TaskDelete::parse_from_bytes(&ev.value).unwrap();
                        format!("delete:{}:{}", e.container_id, e.exit_status)
                    }
                    _ => topic,
                };
                out.lock().unwrap().push(line);
                let resp = ttrpc::Response::default().write_to_bytes().unwrap();
                let mut frame: Vec<u8> =
                    MessageHeader::new_response(mh.stream_id, resp.len() as u32).into();
                frame.extend_from_slice(&resp);
                if s.write_all(&frame).is_err() {
                    return;
                }
            });
        }
    });
}

#[test]
fn create_start_wait_delete_and_shutdown() {
    let mut d = Daemon::start();
    let b = Bundle::new(&["sh", "-c", "exit 3"]);
    let pid = d.create("c1", &b).unwrap();
    assert!(pid > 0);
    let st = d.state("c1", "").unwrap();
    assert_eq!((st.status.enum_value(), st.pid), (Ok(Status::CREATED), pid));
    assert!(d.state_dir("c1").exists());

    assert_eq!(d.start_task("c1", "").unwrap(), pid);
    assert_eq!(d.wait("c1", "").unwrap(), 3);
    let st = d.state("c1", "").unwrap();
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 3);
    assert_eq!(code(d.kill("c1", "", 9)), Code::NOT_FOUND);

    let del = d.delete("c1", "").unwrap();
    assert_eq!((del.pid, del.exit_status), (pid, 3));
    assert_eq!(code(d.state("c1", "")), Code::NOT_FOUND);
    assert_eq!(code(d.delete("c1", "")), Code::NOT_FOUND);
    assert!(!d.state_dir("c1").exists(), "state left behind");
    assert!(!b.cgroup_exists(), "cgroup {} left behind", b.cgroup);

    assert_eq!(
        d.events(4),
        vec!["create", "start", "exit:c1:3", "delete:c1:3"]
    );
    assert_eq!(d.shutdown_and_disconnect(), Some(0));
    assert!(!d.sock.exists(), "socket left behind");
}

#[test]
fn rpc_errors_carry_the_codes_containerd_expects() {
    let mut d = Daemon::start();
    let connect = d
        .c()
        .connect(
            ctx(),
            &ConnectRequest {
                id: "nope".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(connect.task_pid, 0);
    assert_eq!(connect.shim_pid, d.child.id());
    assert_eq!(code(d.state("nope", "")), Code::NOT_FOUND);
    assert_eq!(
        code(d.c().checkpoint(
            ctx(),
            &CheckpointTaskRequest {
                id: "nope".into(),
                ..Default::default()
            }
        )),
        Code::NOT_FOUND
    );

    let b = Bundle::new(&["sleep", "100"]);
    let pid = d.create("c2", &b).unwrap();
    assert_eq!(code(d.create("c2", &b)), Code::ALREADY_EXISTS);
    d.start_task("c2", "").unwrap();

    d.exec("c2", "e1", &["sleep", "100"]).unwrap();
    assert_eq!(code(d.exec("c2", "e1", &["true"])), Code::ALREADY_EXISTS);
    assert_eq!(code(d.kill("c2", "e1", 9)), Code::FAILED_PRECONDITION);
    assert_eq!(code(d.state("c2", "e9")), Code::NOT_FOUND);
    let st = d.state("c2", "e1").unwrap();
    assert_eq!(st.status.enum_value(), Ok(Status::CREATED));
    assert_eq!(code(d.delete("c2", "")), Code::UNKNOWN, "running");

    let epid = d.start_task("c2", "e1").unwrap();
    d.pids.push(epid as i32);
    let pids = d
        .c()
        .pids(
            ctx(),
            &PidsRequest {
                id: "c2".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let mut tagged = None;
    for p in &pids.processes {
        if p.pid == epid {
            let any = p.info.as_ref().expect("exec pid tagged");
            assert_eq!(any.type_url, "containerd.runc.v1.ProcessDetails");
            tagged = Some(
                ProcessDetails::parse_from_bytes(&any.value)
                    .unwrap()
                    .exec_id,
            );
        }
    }
    assert_eq!(tagged.as_deref(), Some("e1"));
    assert!(pids.processes.iter().any(|p| p.pid == pid));

    // Killing the init tears down its pid namespace: the exec exits first, then the init.
    d.kill("c2", "", 9).unwrap();
    assert_eq!(d.wait("c2", "").unwrap(), 137);
    assert_eq!(d.wait("c2", "e1").unwrap(), 137);
    // runc's shim: "cannot exec in a stopped state", no class.
    assert_eq!(code(d.exec("c2", "e2", &["true"])), Code::UNKNOWN);
    assert_eq!(code(d.kill("c2", "e1", 9)), Code::NOT_FOUND);
    assert_eq!(d.delete("c2", "e1").unwrap().exit_status, 137);
    d.delete("c2", "").unwrap();
    assert_eq!(
        d.events(7),
        vec![
            "create",
            "start",
            "exec-added",
            "exec-started",
            "exit:e1:137",
            "exit:c2:137",
            "delete:c2:137"
        ]
    );
    assert_eq!(d.shutdown_and_disconnect(), Some(0));
}

#[test]
fn never_started_task_is_killed_by_delete() {
    let mut d = Daemon::start();
    let b = Bundle::new(&["sleep", "100"]);
    let pid = d.create("c3", &b).unwrap() as i32;
    let del = d.delete("c3", "").unwrap();
    assert_eq!(del.pid as i32, pid);
    // Killed and reaped: no process, not even a zombie, is left.
    assert!(!is_child_of(pid, d.child.id()), "init {pid} still there");
    assert!(!d.state_dir("c3").exists());
    assert!(!b.cgroup_exists());
    assert_eq!(d.events(2), vec!["create", "delete:c3:137"]);
    assert_eq!(d.shutdown_and_disconnect(), Some(0));
}

#[test]
fn shutdown_is_ignored_while_a_task_remains() {
    let mut d = Daemon::start();
    let b = Bundle::new(&["sleep", "100"]);
    d.create("c4", &b).unwrap();
    d.shutdown().unwrap();
    // Still serving: the next call is answered.
    assert_eq!(d.state("c4", "").unwrap().id, "c4");
    // The delete action of another container of the group keeps the live socket.
    let other = Bundle::new(&["true"]);
    std::fs::write(
        other.dir.join("address"),
        format!("unix://{}", d.sock.display()),
    )
    .unwrap();
    let out = Command::new(SHIM)
        .args(["-namespace", &d.namespace, "-id", "other", "delete"])
        .current_dir(&other.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(UnixStream::connect(&d.sock).is_ok());
    assert_eq!(d.state("c4", "").unwrap().id, "c4");
    d.delete("c4", "").unwrap();
    assert_eq!(d.shutdown_and_disconnect(), Some(0));
}

fn is_child_of(pid: i32, parent: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        .is_some_and(|ppid| ppid == parent)
}

/// "Z" (zombie) or gone: the process no longer runs.
fn not_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn delete_action_cleans_up_after_a_killed_shim() {
    let mut d = Daemon::start();
    let b = Bundle::new(&["sleep", "100"]);
    std::fs::write(
        b.dir.join("address"),
        format!("unix://{}", d.sock.display()),
    )
    .unwrap();
    let pid = d.create("c5", &b).unwrap() as i32;
    d.start_task("c5", "").unwrap();
    // The shim dies without a word, as containerd sees a crash.
    d.child.kill().unwrap();
    d.child.wait().unwrap();

    let out = Command::new(SHIM)
        .args(["-namespace", &d.namespace, "-id", "c5", "-address", "/x"])
        .arg("-bundle")
        .arg(&b.dir)
        .arg("delete")
        .current_dir(&b.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!((resp.pid as i32, resp.exit_status), (pid, 137));
    assert!(resp.exited_at.is_some());
    assert!(not_running(pid), "init {pid} survived the delete action");
    assert!(!d.state_dir("c5").exists());
    assert!(!b.cgroup_exists());
    assert!(!d.sock.exists(), "the dead shim's socket is left");

    // Again: nothing left to do, still a well-formed answer.
    let again = Command::new(SHIM)
        .args(["-namespace", &d.namespace, "-id", "c5"])
        .arg("-bundle")
        .arg(&b.dir)
        .arg("delete")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(again.status.success());
    let resp = DeleteResponse::parse_from_bytes(&again.stdout).unwrap();
    assert_eq!((resp.pid, resp.exit_status), (0, 137));
    d.created.clear();
}

/// Runs the `start` action in `bundle` with `stdin`; (stdout, stderr, success).
fn start_action(
    ns: &str,
    id: &str,
    address: &str,
    bundle: &Path,
    stdin: &[u8],
) -> (Vec<u8>, String, bool) {
    let mut child = Command::new(SHIM)
        .args(["-namespace", ns, "-address", address])
        .args(["-publish-binary", "/bin/true", "-id", id, "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", "/run/fake/containerd.sock.ttrpc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn start_action_prints_only_the_address_and_groups_containers() {
    use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
    let ns = unique("shimstart");
    let address = format!("/run/fake/{}.sock", unique("containerd"));
    let annotate = |b: &Bundle| {
        let p = b.dir.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "pod1"});
        std::fs::write(&p, v.to_string()).unwrap();
    };
    let (b1, b2) = (Bundle::new(&["true"]), Bundle::new(&["true"]));
    annotate(&b1);
    annotate(&b2);

    // containerd ≤ 2.2: no stdin at all.
    let (out1, err1, ok1) = start_action(&ns, "a", &address, &b1.dir, b"");
    let out1 = String::from_utf8(out1).unwrap();
    assert!(ok1, "start failed: {err1}");
    assert_eq!(err1, "", "start must print nothing but the address");
    assert!(
        out1.starts_with("unix:///run/containerd/s/") && !out1.contains('\n'),
        "{out1:?}"
    );
    assert_eq!(
        std::fs::read_to_string(b1.dir.join("address")).unwrap(),
        out1
    );

    // containerd ≥ 2.3: BootstrapParams, answered by a BootstrapResult; same group, so the
    // same shim.
    let params = BootstrapParams {
        instance_id: "b".into(),
        namespace: ns.clone(),
        containerd_ttrpc_address: "/run/fake/containerd.sock.ttrpc".into(),
        ..Default::default()
    };
    let (out2, err2, ok2) = start_action(
        &ns,
        "b",
        &address,
        &b2.dir,
        &params.write_to_bytes().unwrap(),
    );
    assert!(ok2, "{err2}");
    let result = BootstrapResult::parse_from_bytes(&out2)
        .unwrap_or_else(|e| panic!("no BootstrapResult ({e}): {out2:?}"));
    assert_eq!((result.version, result.protocol.as_str()), (2, "ttrpc"));
    assert_eq!(result.address, out1, "grouped containers share one shim");
    assert_eq!(
        std::fs::read_to_string(b2.dir.join("address")).unwrap(),
        out1
    );

    let path = out1.trim_start_matches("unix://").to_owned();
    let client = TaskClient::new(ttrpc::Client::connect(&out1).unwrap());
    let shim_pid = client
        .connect(ctx(), &ConnectRequest::default())
        .unwrap()
        .shim_pid as i32;
    assert!(shim_pid > 0);
    client.shutdown(ctx(), &ShutdownRequest::default()).unwrap();
    drop(client);
    let deadline = Instant::now() + RPC_TIMEOUT;
    while Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let gone = !Path::new(&path).exists();
    if !gone {
        // SAFETY: the daemon this test started.
        unsafe { libc::kill(shim_pid, libc::SIGKILL) };
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(Path::new("/run/pelagos").join(&ns));
    assert!(gone, "the shim kept its socket after Shutdown");
}
