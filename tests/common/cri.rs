//! Kubernetes CRI tests: a private containerd with the CRI plugin on, driven by a real CRI
//! client (`k8s-cri` over tonic on containerd's unix socket).
//!
//! [`Cri::start`] boots containerd (see [`Containerd::start_cri`]) with runtime handlers `pelagos`
//! and `runc`, a locally built pause image as `sandbox_image`, `restrict_oom_score_adj`, the
//! streaming server on 127.0.0.1 and a CNI config whose plugin gives pods a loopback-range `eth0`. Pods get a cgroup parent unique
//! to the test (cgroupfs form); [`Cri::assert_no_leaks`] checks what a removed pod must not leave.
//! CRI tests share the host-wide `k8s.io` namespace names, so those of one test binary run one
//! at a time.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use super::containerd::{self, Containerd};
use super::image;

pub const PAUSE_REF: &str = "localhost/pelagos-test/pause:latest";
pub const PELAGOS: &str = "pelagos";
pub const RUNC: &str = "runc";

/// For each `name`, a module `name` with the tests `pelagos` and `runc`, each running the
/// suite's `fn name(handler: &str)` with that handler: pelagos beside runc's shim as the
/// control (`cargo test -- name::pelagos`).
#[macro_export]
macro_rules! pelagos_and_runc {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn pelagos() {
                    super::$name($crate::common::cri::PELAGOS);
                }

                #[test]
                fn runc() {
                    super::$name($crate::common::cri::RUNC);
                }
            }
        )+
    };
}
/// A CNI plugin for pods with their own network namespace, installed both as `loopback` (CRI
/// always adds the loopback network: brings `lo` up) and as the pod network (adds
/// `eth0` (one end of a veth pair kept inside the pod) with a loopback-range address: CRI wants an `eth0` with an IP in the CNI result). No
/// traffic leaves the pod. Every namespace it is given is listed in [`NETNS_LIST`] of the
/// test's work dir: the leak check looks at those, not at pods other tests or benches make.
/// Every call is logged in [`CNI_CALLS`] there (command, interface, whether the namespace
/// exists, its path): the CRI bench replays a pod's DELs from it.
const CNI_PLUGIN: &str = r#"#!/bin/sh
set -e
netns=absent
[ -n "$CNI_NETNS" ] && [ -e "$CNI_NETNS" ] && netns=present
echo "$CNI_COMMAND $CNI_IFNAME $netns $CNI_NETNS" >>"${0%/*}/../cni-calls.log"
case "$CNI_COMMAND" in
VERSION)
    echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
ADD)
    cat >/dev/null
    echo "$CNI_NETNS" >>"${0%/*}/../netns.list"
    if [ "$CNI_IFNAME" = lo ]; then
        nsenter --net="$CNI_NETNS" ip link set lo up
        printf '{"cniVersion":"0.4.0","interfaces":[{"name":"lo","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}],"dns":{}}\n' "$CNI_NETNS"
        exit 0
    fi
    nsenter --net="$CNI_NETNS" ip link add "$CNI_IFNAME" type veth peer name "$CNI_IFNAME-peer"
    nsenter --net="$CNI_NETNS" ip addr add 127.0.100.2/32 dev "$CNI_IFNAME"
    nsenter --net="$CNI_NETNS" ip link set "$CNI_IFNAME" up
    printf '{"cniVersion":"0.4.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.100.2/32","interface":0}],"dns":{}}\n' "$CNI_IFNAME" "$CNI_NETNS" ;;
DEL)
    cat >/dev/null
    if [ "$CNI_IFNAME" != lo ] && [ "$netns" = present ]; then
        nsenter --net="$CNI_NETNS" ip link del "$CNI_IFNAME" 2>/dev/null || true
    fi ;;
*)
    cat >/dev/null ;;
esac
"#;
/// Pod logs and seccomp profiles of each test: `<this>/<pid>-<n>`.
const WORK_PARENT: &str = "/run/pelagos-cri-test";
/// Generous: two shared cores.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

/// A private containerd with CRI, and a CRI client on it.
pub struct Cri {
    pub cd: Containerd,
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The runtime handler the test's pods use.
    pub handler: String,
    /// The cgroupfs parent of this test's pods, e.g. `/pelagos-cri-123-0`.
    pub cgroup_parent: String,
    /// `pelagos_cri_<pid>_<n>`: [`Cri::slice_parent`] without `.slice`.
    slice_stem: String,
    /// Pod log dirs and profiles.
    pub work: PathBuf,
    /// Every sandbox id RunPodSandbox returned: their shim sockets must go.
    pod_ids: Mutex<Vec<String>>,
    _serial: MutexGuard<'static, ()>,
}

/// `PELAGOS_TEST_SYSTEMD_CGROUP=1`: the `pelagos` and `runc` handlers use the systemd cgroup
/// driver (`SystemdCgroup = true`) and pods get a slice as cgroup parent, as on a kubeadm node
/// (a host booted with systemd: `PELAGOS_VM_INIT=systemd scripts/vm/run-tests.sh 'cri_*'`).
pub fn systemd_driver() -> bool {
    containerd::systemd_driver()
}

/// The CRI plugin's section of the config (containerd 1.x, version 2, or 2.x, version 3).
pub fn cri_section(
    major: u32,
    cni_bin_dir: &Path,
    cni_conf_dir: &Path,
    extra_runtime: &str,
) -> String {
    let mut extra_runtime = extra_runtime.to_owned();
    if systemd_driver() {
        let t = runtimes_table(major);
        let dir = cni_conf_dir.parent().unwrap_or(cni_conf_dir);
        extra_runtime.push_str(&format!(
            "    [{t}.runc.options]\n      SystemdCgroup = true\n{}",
            pelagos_options(major, dir, PELAGOS, "SystemdCgroup = true\n")
        ));
    }
    let conf = cni_conf_dir.display();
    let bin = cni_bin_dir.display();
    if major >= 2 {
        format!(
            r#"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{PAUSE_REF}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.pelagos]
      runtime_type = "io.containerd.pelagos.v2"
{extra_runtime}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#
        )
    } else {
        format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_REF}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pelagos]
      runtime_type = "io.containerd.pelagos.v2"
{extra_runtime}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#
        )
    }
}

/// The table prefix of runtime handlers in the CRI config of containerd `major`.
pub fn runtimes_table(major: u32) -> &'static str {
    if major >= 2 {
        "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"
    } else {
        "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes"
    }
}

/// A runtime handler `name` for the pelagos shim with pelagos' TOML settings `options`: the
/// handler's `options` table on containerd 2.x (CRI sends it as the TOML body), a file named by
/// `ConfigPath` in `dir` on 1.x (CRI 1.x passes on only `TypeUrl` and `ConfigPath`).
pub fn pelagos_handler(major: u32, dir: &Path, name: &str, options: &str) -> String {
    let t = runtimes_table(major);
    format!("    [{t}.{name}]\n      runtime_type = \"io.containerd.pelagos.v2\"\n")
        + &pelagos_options(major, dir, name, options)
}

/// The `options` table of the pelagos handler `name` (see [`pelagos_handler`]).
fn pelagos_options(major: u32, dir: &Path, name: &str, options: &str) -> String {
    let t = runtimes_table(major);
    let mut s = format!("    [{t}.{name}.options]\n");
    if major >= 2 {
        for line in options.lines() {
            s.push_str(&format!("      {line}\n"));
        }
    } else {
        let file = dir.join(format!("{name}.toml"));
        fs::write(&file, options).expect("write runtime options file");
        s.push_str(&format!("      ConfigPath = \"{}\"\n", file.display()));
    }
    s
}

impl Cri {
    /// Starts containerd with CRI; the test's pods use runtime handler `handler`.
    pub fn start(handler: &str) -> Cri {
        Cri::start_with(handler, |_, _| String::new())
    }

    /// Like [`Cri::start`], with more runtime handler tables: `extra(major, work dir)` is TOML
    /// appended inside the CRI section (see [`runtimes_table`] and [`pelagos_handler`]).
    pub fn start_with(handler: &str, extra: impl Fn(u32, &Path) -> String) -> Cri {
        Cri::start_full(handler, true, extra)
    }

    /// Like [`Cri::start_with`]; `restrict_oom_score_adj = false` makes CRI ask for a negative
    /// oom_score_adj for sandboxes, as on a default node.
    pub fn start_full(
        handler: &str,
        restrict_oom_score_adj: bool,
        extra: impl Fn(u32, &Path) -> String,
    ) -> Cri {
        Cri::start_on(
            &containerd::containerd_version(),
            handler,
            restrict_oom_score_adj,
            extra,
        )
    }

    /// Like [`Cri::start_full`], on containerd `version` (for features of containerd 2.x).
    pub fn start_on(
        version: &str,
        handler: &str,
        restrict_oom_score_adj: bool,
        extra: impl Fn(u32, &Path) -> String,
    ) -> Cri {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale_once();
        let tag = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let work = Path::new(WORK_PARENT).join(&tag);
        let _ = fs::remove_dir_all(&work);
        let net_d = work.join("net.d");
        let cni_bin = work.join(CNI_BIN);
        for d in [&net_d, &cni_bin] {
            fs::create_dir_all(d).expect("mkdir cri work dir");
        }
        for name in ["pelagos-test-net", "loopback"] {
            let plugin = cni_bin.join(name);
            fs::write(&plugin, CNI_PLUGIN).expect("write cni plugin");
            fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod cni plugin");
        }
        fs::write(
            net_d.join("10-pelagos-test.conflist"),
            r#"{"cniVersion":"0.4.0","name":"pelagos-test","plugins":[{"type":"pelagos-test-net"}]}"#,
        )
        .expect("write cni config");
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1);
        let cd = Containerd::start_cri_version(
            version,
            &cri_section(major, &cni_bin, &net_d, &extra(major, &work)).replace(
                "restrict_oom_score_adj = true",
                &format!("restrict_oom_score_adj = {restrict_oom_score_adj}"),
            ),
        );
        cd.ctr_ok(&[
            "images",
            "import",
            "--platform",
            &format!("linux/{}", image::oci_arch()),
            &pause_archive().to_string_lossy(),
        ]);
        // One worker drives the connection, so that several test threads can make calls at
        // once (tests/rel_soak.rs); a current-thread runtime lets only one of them at a time.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let path = PathBuf::from(cd.address());
        let channel = rt
            .block_on(async {
                Endpoint::try_from("http://localhost")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .expect("connect to containerd's CRI socket");
        let cri = Cri {
            cd,
            rt,
            channel,
            handler: handler.to_owned(),
            cgroup_parent: format!("/pelagos-cri-{tag}"),
            slice_stem: format!("pelagos_cri_{}", tag.replace('-', "_")),
            work,
            pod_ids: Mutex::new(Vec::new()),
            _serial: serial,
        };
        cri.wait_image(PAUSE_REF);
        cri.wait_image(image::IMAGE_REF);
        cri
    }

    /// A pod cgroup parent in the systemd driver's form (ends in `.slice`), unique to the test.
    pub fn slice_parent(&self) -> String {
        format!("{}.slice", self.slice_stem)
    }

    /// Cgroup dirs of the slice parent at the top of each hierarchy: `<slice>` itself and what
    /// a cgroupfs driver makes of `<slice>:cri-containerd:<id>`.
    fn slice_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in containerd::cgroup_mounts() {
            for e in fs::read_dir(&m).into_iter().flatten().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&self.slice_parent())
                {
                    out.push(e.path());
                }
            }
        }
        out
    }

    pub fn major(&self) -> u32 {
        self.cd.major()
    }

    /// Runs a CRI call to completion, bounded by [`CALL_TIMEOUT`].
    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .unwrap_or_else(|_| {
                panic!(
                    "CRI call timed out after {CALL_TIMEOUT:?}\ncontainerd log:\n{}",
                    self.cd.log_tail(40)
                )
            })
    }

    pub fn rs(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn is(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Waits until CRI's image store has `reference` (it learns of imports through events).
    fn wait_image(&self, reference: &str) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let req = ImageStatusRequest {
                image: Some(ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let found = self
                .block(self.is().image_status(req))
                .map(|r| r.into_inner().image.is_some())
                .unwrap_or(false);
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI never saw image {reference}\ncontainerd log:\n{}",
                self.cd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&self, what: &str, status: tonic::Status) -> ! {
        panic!(
            "CRI {what} failed: {status}\ncontainerd log:\n{}",
            self.cd.log_tail(40)
        )
    }

    /// A pod on the host network (no CNI needed), own pid namespace per container, pod ipc.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = self.work.join("logs").join(name);
        fs::create_dir_all(&log_dir).expect("mkdir pod log dir");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: match systemd_driver() {
                    true => self.slice_parent(),
                    false => format!("{}/pod-{name}", self.cgroup_parent),
                },
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Sets the pod's namespace modes.
    pub fn set_namespaces(
        pod: &mut PodSandboxConfig,
        network: NamespaceMode,
        pid: NamespaceMode,
        ipc: NamespaceMode,
    ) {
        let sc = pod
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("pod security context");
        sc.namespace_options = Some(NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        });
    }

    pub fn run_pod(&self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: self.handler.clone(),
        };
        let id = self
            .block(self.rs().run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)?;
        self.pod_ids.lock().unwrap().push(id.clone());
        Ok(id)
    }

    pub fn run_pod_ok(&self, config: &PodSandboxConfig) -> String {
        self.run_pod(config)
            .unwrap_or_else(|s| self.fail("RunPodSandbox", s))
    }

    /// A container of the busybox test image running `cmd`, logging to `<name>.log`.
    pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image::IMAGE_REF.to_owned(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources::default()),
                security_context: Some(LinuxContainerSecurityContext::default()),
            }),
            ..Default::default()
        }
    }

    /// The container's security context, for tests to adjust.
    pub fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> Result<String, tonic::Status> {
        // The kubelet gives each container the pod's namespace modes.
        let mut config = config.clone();
        let pod_ns = pod
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let sc = Cri::security(&mut config);
        if sc.namespace_options.is_none() {
            sc.namespace_options = pod_ns;
        }
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        self.block(self.rs().create_container(req))
            .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.block(self.rs().start_container(req)).map(|_| ())
    }

    /// Creates and starts a container; panics on failure.
    pub fn run_container(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> String {
        let id = self
            .create_container(pod_id, pod, config)
            .unwrap_or_else(|s| self.fail("CreateContainer", s));
        self.start_container(&id)
            .unwrap_or_else(|s| self.fail("StartContainer", s));
        id
    }

    /// Creates and starts a container, returning the first error.
    pub fn try_run_container(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let id = self.create_container(pod_id, pod, config)?;
        self.start_container(&id)?;
        Ok(id)
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let req = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        self.block(self.rs().container_status(req))
            .unwrap_or_else(|s| self.fail("ContainerStatus", s))
            .into_inner()
            .status
            .expect("container status")
    }

    /// Waits for the container to exit (CRI learns of it through the task exit event).
    pub fn wait_exited(&self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let st = self.container_status(id);
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {st:?}\ncontainerd log:\n{}",
                self.cd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
    ) -> Result<(i32, String, String), tonic::Status> {
        let req = ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        self.block(self.rs().exec_sync(req)).map(|r| {
            let r = r.into_inner();
            (
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).into_owned(),
                String::from_utf8_lossy(&r.stderr).into_owned(),
            )
        })
    }

    /// ExecSync that must succeed with exit code 0; returns stdout.
    pub fn exec_ok(&self, id: &str, cmd: &[&str]) -> String {
        let (code, out, err) = self
            .exec_sync(id, cmd)
            .unwrap_or_else(|s| self.fail(&format!("ExecSync {cmd:?}"), s));
        assert_eq!(
            code, 0,
            "exec {cmd:?} in {id}: exit {code}, stdout {out:?}, stderr {err:?}"
        );
        out
    }

    pub fn stop_container(&self, id: &str, timeout: i64) {
        let req = StopContainerRequest {
            container_id: id.to_owned(),
            timeout,
        };
        self.block(self.rs().stop_container(req))
            .unwrap_or_else(|s| self.fail("StopContainer", s));
    }

    pub fn remove_container(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.block(self.rs().remove_container(req))
            .unwrap_or_else(|s| self.fail("RemoveContainer", s));
    }

    pub fn stop_pod(&self, id: &str) {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.block(self.rs().stop_pod_sandbox(req))
            .unwrap_or_else(|s| self.fail("StopPodSandbox", s));
    }

    pub fn remove_pod(&self, id: &str) {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.block(self.rs().remove_pod_sandbox(req))
            .unwrap_or_else(|s| self.fail("RemovePodSandbox", s));
    }

    pub fn pod_status(&self, id: &str) -> PodSandboxStatus {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        self.block(self.rs().pod_sandbox_status(req))
            .unwrap_or_else(|s| self.fail("PodSandboxStatus", s))
            .into_inner()
            .status
            .expect("pod status")
    }

    pub fn list_containers(&self) -> Vec<Container> {
        self.block(
            self.rs()
                .list_containers(ListContainersRequest { filter: None }),
        )
        .unwrap_or_else(|s| self.fail("ListContainers", s))
        .into_inner()
        .containers
    }

    pub fn list_pods(&self) -> Vec<PodSandbox> {
        self.block(
            self.rs()
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )
        .unwrap_or_else(|s| self.fail("ListPodSandbox", s))
        .into_inner()
        .items
    }

    /// The container's CRI log file, as containerd wrote it.
    pub fn log_path(pod: &PodSandboxConfig, config: &ContainerConfig) -> PathBuf {
        Path::new(&pod.log_directory).join(&config.log_path)
    }

    /// (stream, content) of each full line of a CRI log file
    /// (`<RFC3339Nano> <stdout|stderr> <F|P> <content>`); panics on a malformed line.
    pub fn log_lines(path: &Path) -> Vec<(String, String)> {
        let text =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("read log {}: {e}", path.display()));
        text.lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let (ts, stream, tag, content) = (
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                );
                assert!(
                    ts.len() > 20 && ts.contains('T') && (ts.ends_with('Z') || ts.contains('+')),
                    "bad timestamp in CRI log line {l:?}"
                );
                assert!(matches!(stream, "stdout" | "stderr"), "bad stream in {l:?}");
                assert!(matches!(tag, "F" | "P"), "bad tag in {l:?}");
                (stream.to_owned(), content.to_owned())
            })
            .collect()
    }

    /// The socket of the pod's shim: `/run/containerd/s/<sha256(<address>/k8s.io/<sandbox id>)>`.
    pub fn pod_shim_socket(&self, pod_id: &str) -> PathBuf {
        let key = format!("{}/{}/{pod_id}", self.cd.address(), self.cd.namespace);
        Path::new("/run/containerd/s").join(image::sha256_hex(key.as_bytes()))
    }

    /// Shim daemons serving this containerd; the short-lived `start` and `delete` actions
    /// containerd runs with the same binary are not counted.
    pub fn shims(&self) -> Vec<i32> {
        self.cd
            .shim_pids()
            .into_iter()
            .filter(|pid| {
                let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                !argv
                    .split(|&b| b == 0)
                    .any(|a| a == b"start" || a == b"delete")
            })
            .collect()
    }

    /// The pid of the container's init process on the host (from CRI's verbose info, else the
    /// task list).
    pub fn container_pid(&self, id: &str) -> u32 {
        self.cd.task_pid(id)
    }

    /// Processes in a cgroup under this test's cgroup parents, in any hierarchy.
    pub fn pod_cgroup_pids(&self) -> Vec<i32> {
        let prefix = self.cgroup_parent.clone();
        let slice = format!("/{}", self.slice_parent());
        fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                    .filter(|pid| {
                        fs::read_to_string(format!("/proc/{pid}/cgroup"))
                            .map(|t| {
                                t.lines().any(|l| {
                                    let p = l.splitn(3, ':').nth(2).unwrap_or("");
                                    p == prefix
                                        || p.starts_with(&format!("{prefix}/"))
                                        || p.starts_with(&slice)
                                })
                            })
                            .unwrap_or(false)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where a container of `pod` has its cgroup, below the hierarchy roots: what the cgroupfs
    /// driver makes of `<parent>/<id>`, or the systemd driver of `<slice>:cri-containerd:<id>`.
    pub fn container_cgroup(pod: &PodSandboxConfig, id: &str) -> String {
        let parent = &pod.linux.as_ref().expect("linux pod config").cgroup_parent;
        match systemd_driver() {
            true => format!("/{parent}/cri-containerd-{id}.scope"),
            false => format!("{parent}/{id}"),
        }
    }

    /// The cgroup dir of `rel` (a cgroupsPath) in the first hierarchy that has `file`.
    pub fn cgroup_file(&self, rel: &str, file: &str) -> Option<PathBuf> {
        containerd::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(rel.trim_start_matches('/')).join(file))
            .find(|p| p.exists())
    }

    /// The network namespaces (paths) CRI gave this test's pods, as its CNI plugin saw them.
    fn pod_netns(&self) -> Vec<String> {
        fs::read_to_string(self.work.join(NETNS_LIST))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Container cgroups (dirs named by a 64-hex id) left under this test's cgroup parent.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name
                        .strip_prefix("cri-containerd-")
                        .and_then(|n| n.strip_suffix(".scope"))
                        .unwrap_or(&name);
                    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        out.push(e.path());
                    }
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        for m in containerd::cgroup_mounts() {
            walk(
                &m.join(self.cgroup_parent.trim_start_matches('/')),
                &mut out,
            );
        }
        for d in self.slice_dirs() {
            if d.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(':'))
            {
                out.push(d.clone());
            }
            walk(&d, &mut out);
        }
        out
    }

    /// Panics listing what the removed pods left: pods, containers, shims, processes,
    /// container cgroups, network namespaces, mounts, bundles, pelagos state, shim sockets.
    pub fn assert_no_leaks(&self) {
        let leaks = self.leaks_within(Duration::from_secs(10));
        assert!(
            leaks.is_empty(),
            "leaks after the test:\n  {}\ncontainerd log:\n{}",
            leaks.join("\n  "),
            self.cd.log_tail(40)
        );
    }

    /// What [`Cri::assert_no_leaks`] looks for, giving processes `grace` to go away.
    pub fn leaks_within(&self, grace: Duration) -> Vec<String> {
        let mut leaks = Vec::new();
        let pods = self.list_pods();
        if !pods.is_empty() {
            leaks.push(format!(
                "pods not removed: {:?}",
                pods.iter().map(|p| &p.id).collect::<Vec<_>>()
            ));
        }
        let containers = self.list_containers();
        if !containers.is_empty() {
            leaks.push(format!(
                "containers not removed: {:?}",
                containers.iter().map(|c| &c.id).collect::<Vec<_>>()
            ));
        }
        let deadline = Instant::now() + grace;
        for pid in self.pod_cgroup_pids() {
            if !containerd::wait_pid_gone(pid, deadline) {
                leaks.push(format!("process {pid} left in the pod cgroups"));
            }
        }
        for cg in self.leftover_cgroups() {
            leaks.push(format!("container cgroup left: {}", cg.display()));
        }
        for ns in self.pod_netns() {
            if Path::new(&ns).exists() {
                leaks.push(format!("pod network namespace left: {ns}"));
            }
        }
        for id in self.pod_ids.lock().unwrap().iter() {
            let sock = self.pod_shim_socket(id);
            if sock.exists() {
                leaks.push(format!("shim socket of pod {id} left: {}", sock.display()));
            }
        }
        leaks.extend(self.cd.leaks_within(grace));
        leaks
    }

    /// Stops and removes every pod (best effort, for teardown).
    fn remove_all_pods(&self) {
        let rs = self.rs();
        let pods = self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                rs.clone()
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .await
        });
        let Ok(Ok(pods)) = pods else { return };
        for p in pods.into_inner().items {
            let _ = self.rt.block_on(async {
                let mut c = rs.clone();
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    c.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    }),
                )
                .await;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    c.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    }),
                )
                .await
            });
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        self.remove_all_pods();
        if systemd_driver() {
            // The pods' slice, which the kubelet removes on a node.
            let _ = Command::new("systemctl")
                .args(["stop", &self.slice_parent()])
                .status();
        }
        // Containerd's own Drop then ends what is left; the pod cgroups and work dir are ours.
        for m in containerd::cgroup_mounts() {
            remove_tree(&m.join(self.cgroup_parent.trim_start_matches('/')));
        }
        for d in self.slice_dirs() {
            remove_tree(&d);
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// Ends what CRI tests killed before their `Drop` ran left in their pod cgroups (the private
/// containerd and its shims are swept by the containerd harness): processes, by pid, then the
/// cgroups and the work dir.
fn sweep_stale_once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        for e in fs::read_dir(WORK_PARENT).into_iter().flatten().flatten() {
            let tag = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = tag.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!("pelagos CRI tests: cleaning up after dead test process {pid} ({tag})");
            let parents = [
                format!("pelagos-cri-{tag}"),
                format!("pelagos_cri_{}.slice", tag.replace('-', "_")),
            ];
            let mut dirs = Vec::new();
            for m in containerd::cgroup_mounts() {
                for d in fs::read_dir(&m).into_iter().flatten().flatten() {
                    let name = d.file_name().to_string_lossy().into_owned();
                    if parents.iter().any(|p| name.starts_with(p.as_str())) {
                        dirs.push(d.path());
                    }
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for d in &dirs {
                for pid in cgroup_tree_pids(d) {
                    // SAFETY: plain kill(2) of a process in a cgroup of a dead CRI test.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    containerd::wait_pid_gone(pid, deadline);
                }
            }
            for d in &dirs {
                remove_tree(d);
            }
            let _ = fs::remove_dir_all(e.path());
        }
    });
}

/// Pids in `dir` and its descendant cgroups.
fn cgroup_tree_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            pids.extend(cgroup_tree_pids(&e.path()));
        }
    }
    pids
}

/// The file of a test's work dir where [`CNI_PLUGIN`] lists the network namespaces CRI gave it.
const NETNS_LIST: &str = "netns.list";
/// The file of a test's work dir where [`CNI_PLUGIN`] logs every call.
pub const CNI_CALLS: &str = "cni-calls.log";
/// The dir of a test's work dir holding [`CNI_PLUGIN`], as `loopback` and `pelagos-test-net`.
pub const CNI_BIN: &str = "cni-bin";

fn remove_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// An OCI archive of the pause image: the busybox test image with `sleep infinity` as its
/// command, named [`PAUSE_REF`]. Built once per test process next to the busybox archive.
pub fn pause_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let src = image::archive();
        let name = src.file_name().expect("archive name").to_string_lossy();
        let out = src.with_file_name(format!("pause-{name}"));
        if out.is_file() {
            return out;
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pelagos-pause-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = dir.join("layout");
        fs::create_dir_all(&layout).expect("mkdir pause layout");
        run(Command::new("tar")
            .arg("-xf")
            .arg(src)
            .arg("-C")
            .arg(&layout));
        let blob = |digest: &str| {
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"))
        };
        let read_json = |p: PathBuf| -> serde_json::Value {
            serde_json::from_slice(
                &fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
            )
            .expect("image json")
        };
        let add_blob = |data: &[u8]| -> (String, usize) {
            let hex = image::sha256_hex(data);
            fs::write(layout.join("blobs/sha256").join(&hex), data).expect("write blob");
            (format!("sha256:{hex}"), data.len())
        };
        let mut index = read_json(layout.join("index.json"));
        let mdesc = index["manifests"][0].clone();
        let mut manifest = read_json(blob(mdesc["digest"].as_str().expect("manifest digest")));
        let mut config = read_json(blob(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        ));
        config["config"]["Cmd"] = serde_json::json!(["/bin/sleep", "infinity"]);
        let (cd, cs) = add_blob(config.to_string().as_bytes());
        manifest["config"]["digest"] = cd.into();
        manifest["config"]["size"] = cs.into();
        let (md, ms) = add_blob(manifest.to_string().as_bytes());
        let mut desc = mdesc;
        desc["digest"] = md.into();
        desc["size"] = ms.into();
        desc["annotations"]["io.containerd.image.name"] = PAUSE_REF.into();
        index["manifests"] = serde_json::json!([desc]);
        fs::write(layout.join("index.json"), index.to_string()).expect("write index");
        let tmp = dir.join("pause.tar");
        run(Command::new("tar")
            .arg("-cf")
            .arg(&tmp)
            .arg("-C")
            .arg(&layout)
            .arg("."));
        // A rename, so concurrent test processes building the same archive agree.
        fs::rename(&tmp, &out).expect("rename pause archive");
        let _ = fs::remove_dir_all(&dir);
        out
    })
}

fn run(cmd: &mut Command) {
    let out = containerd::run_with_timeout(cmd, None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        containerd::describe(&out)
    );
}

/// Labels map helper.
pub fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A minimal websocket client for the CRI streaming server's `v4.channel.k8s.io` protocol:
/// every binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 status).
pub struct ChannelStream {
    sock: std::net::TcpStream,
    pending: Vec<u8>,
}

/// What a stream delivered: stdout, stderr, status (channel 3, the exit status as JSON).
#[derive(Debug, Default)]
pub struct Streamed {
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

impl ChannelStream {
    /// Upgrades a GET of `url` (from an Exec/Attach response) to a websocket.
    pub fn connect(url: &str) -> ChannelStream {
        use std::io::{Read, Write};
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("streaming URL {url} is not http://"));
        let (host, path) = rest.split_at(rest.find('/').expect("URL path"));
        let sock = std::net::TcpStream::connect(host)
            .unwrap_or_else(|e| panic!("connect to streaming server {host}: {e}"));
        sock.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
        let mut s = ChannelStream {
            sock,
            pending: Vec::new(),
        };
        write!(
            s.sock,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: cGVsYWdvcy1jcmktdGVzdA==\r\n\
             Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        )
        .expect("send upgrade request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.sock.read(&mut byte).expect("read upgrade response");
            assert_eq!(n, 1, "streaming server closed during the upgrade: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket upgrade refused: {head}"
        );
        s
    }

    fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        self.sock.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    /// The next data message as (channel, payload); `None` once the server closes.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let h = self.read_exact(2)?;
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let masked = h[1] & 0x80 != 0;
            let len = match h[1] & 0x7f {
                126 => u16::from_be_bytes(self.read_exact(2)?.try_into().ok()?) as usize,
                127 => u64::from_be_bytes(self.read_exact(8)?.try_into().ok()?) as usize,
                n => n as usize,
            };
            let mask = if masked { self.read_exact(4) } else { None };
            let mut payload = self.read_exact(len)?;
            if let Some(m) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= m[i % 4]);
            }
            match opcode {
                8 => return None,
                9 => self.send_frame(10, &payload),
                0..=2 => {
                    self.pending.extend_from_slice(&payload);
                    if fin {
                        let msg = std::mem::take(&mut self.pending);
                        if let Some((&ch, data)) = msg.split_first() {
                            return Some((ch, data.to_vec()));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        use std::io::Write;
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // Clients must mask; any key will do.
        let key = [0x5a, 0x13, 0xc7, 0x2e];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.sock.write_all(&f).expect("send websocket frame");
    }

    /// Sends `data` on the stdin channel.
    pub fn send_stdin(&mut self, data: &[u8]) {
        let mut msg = vec![0u8];
        msg.extend_from_slice(data);
        self.send_frame(2, &msg);
    }

    /// Reads until stdout contains `want` (or the stream ends); returns what arrived.
    pub fn read_until_stdout(&mut self, want: &str) -> Streamed {
        let mut got = Streamed::default();
        while !got.stdout.contains(want) {
            let Some((ch, data)) = self.recv() else { break };
            got.add(ch, &data);
        }
        got
    }

    /// Reads everything until the server closes the stream.
    pub fn read_to_end(&mut self) -> Streamed {
        let mut got = Streamed::default();
        while let Some((ch, data)) = self.recv() {
            got.add(ch, &data);
        }
        got
    }

    pub fn close(mut self) {
        self.send_frame(8, &1000u16.to_be_bytes());
    }
}

impl Streamed {
    fn add(&mut self, ch: u8, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        match ch {
            1 => self.stdout.push_str(&text),
            2 => self.stderr.push_str(&text),
            3 => self.status.push_str(&text),
            _ => {}
        }
    }
}
