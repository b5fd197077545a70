//! The Task service's RPCs: each takes its request apart and calls the [`Shim`] method that
//! does the work, or answers from the bookkeeping.

use super::*;

impl Task for Shim {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> Res<StateResponse> {
        let st = self.lock_settled(&req.id);
        let t = st.life.get(&req.id)?;
        let p = t.proc(&req.exec_id)?;
        let (exit_status, exited_at) = match p.exit {
            Some(e) => (e.status as u32, Some(timestamp(e.at)).into()),
            None => (0, None.into()),
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.display().to_string(),
            pid: p.pid.max(0) as u32,
            status: EnumOrUnknown::new(api_status(p.status)),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> Res<CreateTaskResponse> {
        if req.id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "create: empty container id"));
        }
        // Before the request's rootfs mounts and stdio paths are touched, not only in the core.
        if let Err(e) = pelagos::container::validate_id(&req.id) {
            return Err(status(Code::INVALID_ARGUMENT, format!("create: {e}")));
        }
        self.lock().life.reserve(&req.id)?;
        crate::failpoint::hit("Create", &req.id, "");
        let created = match req.checkpoint.is_empty() {
            true => self.do_create(&req),
            false => self.do_create_restore(&req),
        };
        match created {
            Ok(pid) => Ok(CreateTaskResponse {
                pid: pid as u32,
                ..Default::default()
            }),
            Err(e) => {
                {
                    let mut st = self.lock();
                    st.life.unreserve(&req.id);
                    if st.life.is_empty() {
                        st.h.emptied_at = Some(std::time::Instant::now());
                    }
                }
                self.notify();
                self.exit.wake();
                log::error!("container {}: create: {e:?}", req.id);
                Err(e)
            }
        }
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> Res<StartResponse> {
        crate::failpoint::hit("Start", &req.id, &req.exec_id);
        match Which::of(&req.exec_id) {
            Which::Init => self.start_init(&req.id),
            Which::Exec(exec_id) => self.start_exec(&req.id, exec_id),
        }
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> Res<DeleteResponse> {
        crate::failpoint::hit("Delete", &req.id, &req.exec_id);
        match Which::of(&req.exec_id) {
            Which::Init => self.delete_init(&req.id),
            Which::Exec(exec_id) => self.delete_exec(&req.id, exec_id),
        }
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> Res<PidsResponse> {
        let cell = self.container(&req.id)?;
        let pids = {
            let guard = cell.read().unwrap_or_else(|e| e.into_inner());
            let c = guard
                .as_ref()
                .ok_or_else(|| ttrpc::Error::from(LifecycleError::NotFound(req.id.clone())))?;
            match c.cgroup() {
                Some(cg) => cg.pids().map_err(|e| status(Code::UNKNOWN, e))?,
                None => vec![c.pid()],
            }
        };
        let st = self.lock();
        let t = st.life.get(&req.id)?;
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some(exec_id) = t.exec_of(pid) {
                let d = ProcessDetails {
                    exec_id: exec_id.to_owned(),
                    ..Default::default()
                };
                info.info = Some(pack(&d)?).into();
            }
            processes.push(info);
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> Res<Empty> {
        let cell = {
            let mut st = self.lock();
            st.life.begin_pause(&req.id)?;
            st.h.of(&req.id)?.container.clone()
        };
        let result = with_container(&cell, pelagos::Container::pause);
        self.lock().life.paused(&req.id, result.is_ok());
        self.notify();
        result.map_err(|e| status(Code::UNKNOWN, e))?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> Res<Empty> {
        let cell = {
            let st = self.lock();
            st.life.check_resume(&req.id)?;
            st.h.of(&req.id)?.container.clone()
        };
        with_container(&cell, pelagos::Container::resume).map_err(|e| status(Code::UNKNOWN, e))?;
        self.lock().life.resumed(&req.id);
        self.notify();
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> Res<Empty> {
        self.do_checkpoint(&req)?;
        Ok(Empty::new())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> Res<Empty> {
        let sig = req.signal as i32;
        if let Which::Exec(exec_id) = Which::of(&req.exec_id) {
            let st = self.lock();
            let t = st.life.get(&req.id)?;
            let p = t.proc(exec_id)?;
            match p.status {
                Status::Created => {
                    return Err(status(Code::FAILED_PRECONDITION, "process not created"))
                }
                Status::Stopped => return Err(status(Code::NOT_FOUND, "process already finished")),
                _ => {}
            }
            let fd =
                st.h.handles
                    .get(&req.id)
                    .and_then(|h| h.execs.get(exec_id))
                    .and_then(|e| e.pidfd.as_ref());
            return match fd {
                Some(fd) => match pelagos::pidfd::send_signal(fd.as_fd(), sig) {
                    Ok(()) => Ok(Empty::new()),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        Err(status(Code::NOT_FOUND, "process already finished"))
                    }
                    Err(e) => Err(status(Code::UNKNOWN, format!("kill exec: {e}"))),
                },
                None => Err(status(Code::FAILED_PRECONDITION, "process not created")),
            };
        }
        let cell = {
            let st = self.lock();
            let t = st.life.get(&req.id)?;
            // With `all`, what is left in the cgroup still gets the signal (runc's `kill --all`).
            if (t.init_reaped() || t.init.status == Status::Stopped) && !req.all {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            st.h.of(&req.id)?.container.clone()
        };
        let guard = cell.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(c) => c.kill(sig, req.all).map_err(kill_error)?,
            None if req.all => {}
            None => return Err(status(Code::NOT_FOUND, "process already finished")),
        }
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> Res<Empty> {
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "exec: empty exec id"));
        }
        crate::failpoint::hit("Exec", &req.id, &req.exec_id);
        let spec_any = req
            .spec
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec: no process spec"))?;
        let mut spec: Process = serde_json::from_slice(&spec_any.value).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("exec: process spec ({}): {e}", spec_any.type_url),
            )
        })?;
        spec.set_terminal(Some(req.terminal));
        let stdio = StdioConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut st = self.lock();
        st.life.add_exec(&req.id, &req.exec_id, task_io(&stdio))?;
        if let Some(h) = st.h.handles.get_mut(&req.id) {
            h.execs.insert(
                req.exec_id.clone(),
                ExecHandles {
                    spec,
                    stdio,
                    io: None,
                    pidfd: None,
                },
            );
        }
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> Res<Empty> {
        let st = self.lock();
        st.life.get(&req.id)?.proc(&req.exec_id)?;
        let h = st.h.of(&req.id)?;
        if let Some(io) = h.io(Which::of(&req.exec_id)) {
            io.resize(req.width as u16, req.height as u16)
                .map_err(|e| status(Code::UNKNOWN, e))?;
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> Res<Empty> {
        let st = self.lock();
        st.life.get(&req.id)?.proc(&req.exec_id)?;
        let h = st.h.of(&req.id)?;
        if let Some(io) = h.io(Which::of(&req.exec_id)) {
            io.close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> Res<Empty> {
        let resources: LinuxResources = match req.resources.as_ref() {
            Some(any) => serde_json::from_slice(&any.value).map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("update: resources ({}): {e}", any.type_url),
                )
            })?,
            None => return Err(status(Code::INVALID_ARGUMENT, "update: no resources")),
        };
        let cell = {
            let st = self.lock();
            let t = st.life.get(&req.id)?;
            if t.init.status == Status::Stopped || t.init_reaped() {
                return Err(status(Code::UNKNOWN, "cannot update a stopped container"));
            }
            st.h.of(&req.id)?.container.clone()
        };
        let guard = cell.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(c) => c
                .update(&resources)
                .map_err(|e| status(Code::UNKNOWN, format!("update: {e}")))?,
            None => return Err(status(Code::NOT_FOUND, "container is gone")),
        }
        Ok(Empty::new())
    }

    /// The server parks Waits (see [`server::Park`]); this serves one it did not take.
    fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> Res<WaitResponse> {
        let mut st = self.lock();
        let mut checked = std::time::Instant::now();
        loop {
            if let Some(res) = wait_answer(&st.life, &req.id, &req.exec_id) {
                return res;
            }
            st = self
                .changed
                .wait_timeout(st, WAIT_PEER_CHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            // A Wait outlives the containerd that asked when it is killed (CRI keeps one
            // pending per task): the call holds the connection and its threads until it
            // returns, so a shim would keep two dead connections per containerd restart.
            if checked.elapsed() >= WAIT_PEER_CHECK {
                if peer_gone(ctx.fd) {
                    return Err(status(Code::CANCELLED, "wait: the client has gone"));
                }
                checked = std::time::Instant::now();
            }
        }
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> Res<StatsResponse> {
        let cell = self.container(&req.id)?;
        let stats = {
            let guard = cell.read().unwrap_or_else(|e| e.into_inner());
            let cg = guard
                .as_ref()
                .and_then(|c| c.cgroup())
                .ok_or_else(|| status(Code::NOT_FOUND, "cgroup does not exist"))?;
            cg.stats()
        };
        let any = metrics::to_any(&stats).map_err(|e| status(Code::INTERNAL, e))?;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> Res<ConnectResponse> {
        let st = self.lock();
        let task_pid = st.life.get(&req.id).map(|t| t.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid.max(0) as u32,
            ..Default::default()
        })
    }

    fn shutdown(&self, ctx: &TtrpcContext, req: ShutdownRequest) -> Res<Empty> {
        let mut st = self.lock();
        if st.h.awaiting_shutdown.remove(&req.id) {
            self.changed.notify_all();
        }
        // A Create in flight decides: like the runc shim, whose Create holds its lock.
        while st.life.creating() {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if !st.life.is_empty() {
            return Ok(Empty::new());
        }
        drop(st);
        log::info!("shutdown: no containers left");
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on the connection's fd, which ttrpc keeps open for
        // the duration of this call; the duplicate is ours.
        let conn = unsafe {
            let fd = libc::fcntl(ctx.fd, libc::F_DUPFD_CLOEXEC, 3);
            (fd >= 0).then(|| std::os::fd::FromRawFd::from_raw_fd(fd))
        };
        self.exit.trigger(conn);
        Ok(Empty::new())
    }
}
