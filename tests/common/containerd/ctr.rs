//! `ctr` as the tests drive it: run, exec, task and container verbs, events, updates.

use super::*;

impl Containerd {
    /// A `ctr` command bound to this containerd and namespace.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("ctr"));
        cmd.args(["--address", &self.address, "--namespace", &self.namespace])
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env("CONTAINERD_SNAPSHOTTER", snapshotter());
        cmd
    }

    /// Runs `ctr <args>` with no stdin.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_input(args, None)
    }

    /// Runs `ctr <args>`, feeding `input` on its stdin (then EOF), or no stdin.
    pub fn ctr_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        run_with_timeout(&mut cmd, input, CTR_TIMEOUT)
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}\ncontainerd log:\n{}", self.log_tail(30)))
    }

    /// Runs `ctr <args>`, panics unless it succeeds, returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        self.expect_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn expect_ok(&self, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\ncontainerd log:\n{}",
            describe(out),
            self.log_tail(30)
        );
    }

    fn remember(&self, id: &str) {
        self.ids.lock().unwrap().insert(id.to_owned());
    }

    /// `ctr run` arguments: `run <flags> --runtime R --fifo-dir F <opts> IMAGE <id> <args>`.
    pub fn run_args<'a>(
        &'a self,
        flags: &[&'a str],
        id: &'a str,
        opts: &[&'a str],
        args: &[&'a str],
    ) -> Vec<String> {
        self.remember(id);
        let mut v: Vec<String> = vec!["run".into()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.extend(["--runtime".into(), self.runtime.clone()]);
        v.extend([
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ]);
        if systemd_driver() && self.cri.is_none() {
            let path = format!("{}:{}:{id}", self.slice(), self.namespace);
            v.extend(["--cgroup".into(), path]);
            if self.runtime == PELAGOS_RUNTIME {
                // A test's own options file says SystemdCgroup itself (see systemd_options).
                if !opts.contains(&"--runtime-config-path") {
                    let config = self.base.join("systemd.toml");
                    v.extend([
                        "--runtime-config-path".into(),
                        config.to_string_lossy().into_owned(),
                    ]);
                }
            } else {
                v.push("--runc-systemd-cgroup".into());
            }
        }
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(image::IMAGE_REF.into());
        v.push(id.into());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run --rm ... <id> <args>` attached, with no stdin; the Output carries the exit code.
    pub fn run(&self, id: &str, opts: &[&str], args: &[&str]) -> Output {
        self.run_input(id, opts, args, None)
    }

    /// Like [`Containerd::run`] with `input` piped to the container's stdin, then EOF.
    ///
    /// ctr only turns its stdin's EOF into CloseIO once the task exists (its closer is set after
    /// the task is created), so a short input that ends earlier would leave the container waiting
    /// for EOF forever. The EOF is therefore held back until the /tasks/start event, which ctr
    /// sends after the closer is in place.
    pub fn run_input(
        &self,
        id: &str,
        opts: &[&str],
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Output {
        let argv = self.run_args(&["--rm"], id, opts, args);
        match input {
            None => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                self.ctr(&argv)
            }
            Some(input) => self.ctr_with_held_eof(&argv, input, "/tasks/start", id, None),
        }
    }

    /// `ctr task exec` with `input` on stdin, its EOF held back until /tasks/exec-started (the
    /// same ctr race as [`Containerd::run_input`]).
    pub fn exec_input(
        &self,
        id: &str,
        exec_id: &str,
        opts: &[&str],
        args: &[&str],
        input: &[u8],
    ) -> Output {
        let argv = self.exec_args(id, exec_id, opts, args);
        self.ctr_with_held_eof(&argv, input, "/tasks/exec-started", id, Some(exec_id))
    }

    fn ctr_with_held_eof(
        &self,
        argv: &[String],
        input: &[u8],
        topic: &str,
        id: &str,
        exec_id: Option<&str>,
    ) -> Output {
        let mut events = self.events();
        let mut cmd = self.ctr_command();
        cmd.args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ctr");
        let mut stdin = child.stdin.take().expect("ctr stdin");
        let (eof_tx, eof_rx) = mpsc::channel::<()>();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
            let _ = eof_rx.recv();
        });
        let out_reader = reader_thread(child.stdout.take());
        let err_reader = reader_thread(child.stderr.take());
        let deadline = Instant::now() + CTR_TIMEOUT;
        while Instant::now() < deadline {
            let started = events.wait_for(Duration::from_millis(200), |e| {
                e.topic == topic
                    && e.container_id() == Some(id)
                    && exec_id.is_none_or(|x| e.str_field("exec_id") == Some(x))
            });
            if started.is_some() || events.ended() || !matches!(child.try_wait(), Ok(None)) {
                break;
            }
        }
        drop(eof_tx);
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(status) = wait_child_timeout(&mut child, left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ctr {argv:?} timed out; stderr: {}\ncontainerd log:\n{}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default()),
                self.log_tail(30)
            );
        };
        let _ = writer.join();
        Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        }
    }

    /// `ctr run -d`: the task is running when this returns (under the systemd driver, in its
    /// active scope).
    pub fn run_detached(&self, id: &str, opts: &[&str], args: &[&str]) {
        let argv = self.run_args(&["-d"], id, opts, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_ok(&argv);
        if systemd_driver() && self.cri.is_none() {
            self.assert_in_scope(id);
        }
    }

    /// Task `id`, if still running, is in its scope, which systemd has active. A task that
    /// exits meanwhile (a short command) is not judged.
    fn assert_in_scope(&self, id: &str) {
        let Some((pid, _)) = self.task(id).filter(|(_, s)| s == "RUNNING") else {
            return;
        };
        let unit = format!("{}-{id}.scope", self.namespace);
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let state = systemctl(&["show", "-p", "ActiveState", "--value", &unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        assert_eq!(state.as_deref(), Some("active"), "systemd unit {unit}");
        let want = self.container_cgroup(id);
        assert!(
            cgroup.lines().any(|l| l.ends_with(&want)),
            "task {id} is not in {want}: {cgroup}"
        );
    }

    /// Starts an attached `ctr run --rm` in the background with piped stdio; the caller waits.
    pub fn spawn_run(&self, id: &str, opts: &[&str], args: &[&str]) -> Child {
        let argv = self.run_args(&["--rm"], id, opts, args);
        let mut cmd = self.ctr_command();
        cmd.args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn ctr run")
    }

    /// `ctr task exec --exec-id <exec_id> <opts> <id> <args>` (attached unless opts has -d).
    pub fn exec(&self, id: &str, exec_id: &str, opts: &[&str], args: &[&str]) -> Output {
        let argv = self.exec_args(id, exec_id, opts, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr(&argv)
    }

    /// `ctr task exec -d`: returns once the exec has started.
    ///
    /// ctr leaves a detached exec's fifo dir behind (the shim still writes into the fifos); it
    /// is noted here and not counted as a leak.
    pub fn exec_detached(&self, id: &str, exec_id: &str, args: &[&str]) {
        let before: BTreeSet<String> = dir_entries(&self.fifo_dir()).into_iter().collect();
        let argv = self.exec_args(id, exec_id, &["-d"], args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_ok(&argv);
        let mut detached = self.detached_fifos.lock().unwrap();
        for name in dir_entries(&self.fifo_dir()) {
            if !before.contains(&name) {
                detached.push(self.fifo_dir().join(name));
            }
        }
    }

    pub fn exec_args(&self, id: &str, exec_id: &str, opts: &[&str], args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "task".into(),
            "exec".into(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        v.extend([
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ]);
        v.extend(opts.iter().map(|s| s.to_string()));
        v.push(id.into());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Removes the fifo dirs ctr left behind. ctr (not the shim) creates and removes them, and
    /// it leaves them when a request fails, e.g. a refused exec.
    pub fn clear_fifo_dirs(&self) {
        for name in dir_entries(&self.fifo_dir()) {
            let _ = fs::remove_dir_all(self.fifo_dir().join(name));
        }
    }

    /// (pid, status) of task `id` from `ctr task ls`, if it has a task.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(0), f[2].to_owned()))
        })
    }

    pub fn task_pid(&self, id: &str) -> u32 {
        self.task(id).unwrap_or_else(|| panic!("no task {id}")).0
    }

    pub fn task_status(&self, id: &str) -> Option<String> {
        self.task(id).map(|(_, s)| s)
    }

    /// `ctr task rm <id>` of a stopped task; returns the exit status ctr reports (it logs a
    /// warning naming a non-zero one).
    pub fn task_rm(&self, id: &str) -> i32 {
        let out = self.ctr(&["task", "rm", id]);
        self.expect_ok(&["task", "rm", id], &out);
        let err = String::from_utf8_lossy(&out.stderr);
        err.split("exit code ")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills and deletes the task (if any) and deletes the container.
    pub fn remove(&self, id: &str) {
        if self.task(id).is_some() {
            self.ctr_ok(&["task", "rm", "-f", id]);
        }
        self.ctr_ok(&["containers", "rm", id]);
    }

    /// Starts `ctr events` and returns once it is subscribed.
    pub fn events(&self) -> Events {
        Events::start(self)
    }

    /// Calls containerd's Tasks.Update (ctr has no `task update`) with `resources`, a JSON
    /// runtime-spec LinuxResources.
    pub fn update_resources(&self, id: &str, resources: &serde_json::Value) -> Output {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(repo_dir().join("scripts/task-update.py"))
            .arg(&self.address)
            .arg(&self.namespace)
            .arg(id)
            .arg(resources.to_string());
        run_with_timeout(&mut cmd, None, CTR_TIMEOUT).expect("run scripts/task-update.py")
    }

    /// Runs `ctr <args>` on a new pty of `rows` x `cols` (for `run -t` / `exec -t`).
    pub fn spawn_ctr_on_pty(&self, args: &[String], rows: u16, cols: u16) -> PtyChild {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        PtyChild::spawn(cmd, rows, cols)
    }
}
