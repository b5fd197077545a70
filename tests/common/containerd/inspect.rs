//! What a containerd leaves on the host: its shims, container processes, mounts, cgroups,
//! sockets and state, and the leak checks built on them.

use super::*;

impl Containerd {
    /// Shim processes of this containerd: a `containerd-shim*` whose `-address` is ours or whose
    /// cwd is one of our bundles.
    pub fn shim_pids(&self) -> Vec<i32> {
        let bundles = self.state_dir().join("io.containerd.runtime.v2.task");
        procs()
            .into_iter()
            .filter(|&pid| {
                let argv = cmdline(pid);
                let Some(argv0) = argv.first() else {
                    return false;
                };
                if !argv0.to_string_lossy().contains("containerd-shim") {
                    return false;
                }
                let ours = argv.windows(2).any(|w| {
                    (w[0] == "-address" || w[0] == "--address") && w[1] == self.address.as_str()
                });
                ours || fs::read_link(format!("/proc/{pid}/cwd"))
                    .map(|cwd| cwd.starts_with(&bundles))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Processes in a cgroup below `/<namespace>` (or this containerd's slice) in any
    /// hierarchy: this containerd's containers.
    pub fn container_pids(&self) -> Vec<i32> {
        let prefixes = [format!("/{}", self.namespace), format!("/{}", self.slice())];
        procs()
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .map(|text| {
                        text.lines().any(|l| {
                            let path = l.splitn(3, ':').nth(2).unwrap_or("");
                            prefixes
                                .iter()
                                .any(|p| path == p || path.starts_with(&format!("{p}/")))
                        })
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// This containerd's container state dirs under the pelagos state root: every entry of its
    /// namespace, except in CRI's `k8s.io`, which every CRI containerd on the host shares (other
    /// test processes, the CRI bench): there only those whose state.json names a bundle of ours.
    pub(super) fn pelagos_state_entries(&self) -> Vec<PathBuf> {
        let dir = Path::new(PELAGOS_STATE_ROOT).join(&self.namespace);
        let bundles = self.state_dir();
        dir_entries(&dir)
            .into_iter()
            .map(|name| dir.join(name))
            .filter(|entry| {
                self.cri.is_none()
                    || fs::read(entry.join("state.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v.get("bundle")?.as_str().map(PathBuf::from))
                        .is_some_and(|b| b.starts_with(&bundles))
            })
            .collect()
    }

    /// Mount points under this containerd's root or state.
    pub fn mounts(&self) -> Vec<String> {
        let base = self.base.to_string_lossy().into_owned();
        let root = self.root.to_string_lossy().into_owned();
        mountinfo()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| under(mp, &base) || under(mp, &root))
            .collect()
    }

    /// `/<namespace>` in every cgroup hierarchy that has it.
    pub fn namespace_cgroups(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(&self.namespace))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Shim sockets of the containers this harness ran (`/run/containerd/s/<sha256(addr/ns/id)>`).
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .map(|id| {
                let key = format!("{}/{}/{}", self.address, self.namespace, id);
                Path::new(SHIM_SOCKET_DIR).join(image::sha256_hex(key.as_bytes()))
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// Everything this containerd's containers must not leave behind once they are deleted.
    /// Waits (on pidfds, bounded) for processes that are already on their way out. Removes the
    /// empty `/<namespace>` cgroup parents, which runc leaves too.
    pub fn leaks(&self) -> Vec<String> {
        self.leaks_within(EXIT_GRACE)
    }

    /// [`Containerd::leaks`] with `grace` for processes to go away.
    pub fn leaks_within(&self, grace: Duration) -> Vec<String> {
        let mut leaks = Vec::new();
        let containers = self.ctr(&["containers", "ls", "-q"]);
        let containers = String::from_utf8_lossy(&containers.stdout);
        if !containers.trim().is_empty() {
            leaks.push(format!("containers not deleted: {}", containers.trim()));
        }
        let tasks = self.ctr(&["task", "ls", "-q"]);
        let tasks = String::from_utf8_lossy(&tasks.stdout);
        if !tasks.trim().is_empty() {
            leaks.push(format!("tasks not deleted: {}", tasks.trim()));
        }
        let deadline = Instant::now() + grace;
        for pid in self.shim_pids() {
            if !wait_pid_gone(pid, deadline) {
                leaks.push(format!(
                    "shim process {pid} still running: {}",
                    describe_pid(pid)
                ));
            }
        }
        for pid in self.container_pids() {
            if !wait_pid_gone(pid, deadline) {
                leaks.push(format!(
                    "container process {pid} still running: {}",
                    describe_pid(pid)
                ));
            }
        }
        for mp in self.mounts() {
            leaks.push(format!("mount left: {mp}"));
        }
        for cg in self.namespace_cgroups() {
            let children: Vec<String> = fs::read_dir(&cg)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if children.is_empty() {
                // NotFound: removed through another mount of the same hierarchy (CRIU's
                // transient cgroup yard of a restore running beside this test).
                if let Err(e) = fs::remove_dir(&cg).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }) {
                    leaks.push(format!("cannot remove empty cgroup {}: {e}", cg.display()));
                }
            } else {
                leaks.push(format!("cgroups left in {}: {children:?}", cg.display()));
            }
        }
        if systemd_driver() && self.cri.is_none() {
            let units = self.scope_units();
            if !units.is_empty() {
                leaks.push(format!("systemd units left: {units:?}"));
            }
            let mut scopes = Vec::new();
            for m in cgroup_mounts() {
                let slice = m.join(self.slice());
                scopes.extend(
                    dir_entries(&slice)
                        .into_iter()
                        .filter(|e| slice.join(e).is_dir())
                        .map(|e| format!("{}/{e}", slice.display())),
                );
            }
            if !scopes.is_empty() {
                leaks.push(format!("cgroups left in the slice: {scopes:?}"));
            }
            // runc leaves the slice, as a node's kubelet removes its pod slices: removed here
            // once empty.
            if units.is_empty() && scopes.is_empty() {
                self.stop_slice();
            }
        }
        for sock in self.shim_sockets() {
            leaks.push(format!("shim socket left: {}", sock.display()));
        }
        for dir in self.detached_fifos.lock().unwrap().drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
        let fifos = dir_entries(&self.fifo_dir());
        if !fifos.is_empty() {
            leaks.push(format!(
                "fifo dirs left in {}: {fifos:?}",
                self.fifo_dir().display()
            ));
        }
        let bundles = self
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let left = dir_entries(&bundles);
        if !left.is_empty() {
            leaks.push(format!("bundles left in {}: {left:?}", bundles.display()));
        }
        if self.runtime == PELAGOS_RUNTIME {
            let left = self.pelagos_state_entries();
            if !left.is_empty() {
                leaks.push(format!("pelagos state left: {left:?}"));
            }
        }
        leaks
    }

    /// Panics listing every leak (see [`Containerd::leaks`]).
    pub fn assert_no_leaks(&self) {
        let leaks = self.leaks();
        assert!(
            leaks.is_empty(),
            "leaks after the test:\n  {}\ncontainerd log:\n{}",
            leaks.join("\n  "),
            self.log_tail(30)
        );
    }

    /// Processes that name this containerd's dirs on their command line: the daemon, ctr clients
    /// (a panicking test drops its `Child`ren without killing them), shims.
    pub(super) fn client_pids(&self) -> Vec<i32> {
        let base = self.base.to_string_lossy().into_owned();
        procs()
            .into_iter()
            .filter(|&pid| {
                pid != std::process::id() as i32
                    && cmdline(pid).iter().any(|a| {
                        under(&a.to_string_lossy(), &base)
                            || a.to_string_lossy().contains(&format!("{base}/"))
                    })
            })
            .collect()
    }

    /// The memory limit of container `id` read on the host: `memory.limit_in_bytes` in a v1
    /// memory hierarchy, else `memory.max` in the v2 one (see [`Containerd::container_cgroup`]).
    pub fn host_memory_limit(&self, id: &str) -> Option<String> {
        let rel = self.container_cgroup(id);
        let rel = rel.trim_start_matches('/');
        let mounts = mountinfo();
        let v1 = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
            .map(|m| {
                Path::new(&m.mount_point)
                    .join(rel)
                    .join("memory.limit_in_bytes")
            });
        let v2 = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .map(|m| Path::new(&m.mount_point).join(rel).join("memory.max"));
        v1.chain(v2)
            .find_map(|p| fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
    }
}
