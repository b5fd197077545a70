//! A `ctr` on a pty the test holds the master of (`run -t`, `exec -t`).

use super::*;

/// A process (ctr with `-t`) whose controlling terminal is a pty this test holds the master of.
pub struct PtyChild {
    pub child: Child,
    master: fs::File,
    rx: Receiver<Vec<u8>>,
    output: Vec<u8>,
}

impl PtyChild {
    /// Runs `cmd` as a session leader on a new pty of `rows` x `cols`.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> PtyChild {
        let (master, slave) = crate::common::bundle::openpty(rows, cols);
        let master = fs::File::from(master);
        let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        cmd.stdin(dup(&slave))
            .stdout(dup(&slave))
            .stderr(dup(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; they make the pty (now fd 0) the
        // child's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on pty");
        // The master reads EIO once no slave fd is open: drop ours so that marks the child's end.
        drop(cmd);
        drop(slave);
        let mut reader = master.try_clone().expect("dup pty master");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        PtyChild {
            child,
            master,
            rx,
            output: Vec::new(),
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.master.write_all(data).expect("write to pty master");
    }

    /// Everything read from the terminal so far, lossily as text.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads until `pred` holds for the output so far or `timeout` passes.
    pub fn expect(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.output()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.output.extend_from_slice(&chunk),
                Err(_) => return pred(&self.output()),
            }
        }
    }

    /// Sets the terminal size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = crate::common::bundle::winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits for the child (killing it after `timeout`) and collects the rest of the output.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let status = wait_child_timeout(&mut self.child, timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        while let Ok(chunk) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.output.extend_from_slice(&chunk);
        }
        (status, self.output())
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
