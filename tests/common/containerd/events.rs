//! `ctr events`: a subscription and the events it prints.

use super::*;

/// One event printed by `ctr events`.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the runtime published it (the envelope's timestamp), seconds since the epoch.
    pub published: Option<f64>,
    pub namespace: String,
    pub topic: String,
    pub body: serde_json::Value,
}

impl Event {
    /// Parses `<date> <time> <zone offset> <zone> <namespace> <topic> <json>`.
    fn parse(line: &str) -> Option<Event> {
        let fields: Vec<&str> = line.split(' ').collect();
        let t = fields.iter().position(|f| f.starts_with('/'))?;
        let namespace = fields.get(t.checked_sub(1)?)?.to_string();
        let topic = fields[t].to_string();
        let rest = fields[t + 1..].join(" ");
        let body = serde_json::from_str(rest.trim()).unwrap_or(serde_json::Value::Null);
        let published = match fields.as_slice() {
            [date, time, offset, ..] => epoch_seconds(date, time, offset),
            _ => None,
        };
        Some(Event {
            published,
            namespace,
            topic,
            body,
        })
    }

    /// `exited_at` of an exit event, seconds since the epoch. ctr 1.x prints an RFC 3339 string,
    /// 2.x the protobuf fields.
    pub fn exited_at(&self) -> Option<f64> {
        let at = self.body.get("exited_at")?;
        if let Some(s) = at.as_str() {
            let (date, time) = s.split_once('T')?;
            return epoch_seconds(date, time.strip_suffix('Z')?, "+0000");
        }
        let field = |name| at.get(name).and_then(|v| v.as_u64()).unwrap_or(0) as f64;
        Some(field("seconds") + field("nanos") / 1e9)
    }

    /// Panics if this exit event was published [`EXIT_HELD`] or more after the process died.
    pub fn assert_not_held(&self) {
        let (Some(published), Some(exited)) = (self.published, self.exited_at()) else {
            panic!("no publication or exit time in {self:?}");
        };
        let held = Duration::from_secs_f64((published - exited).max(0.0));
        assert!(
            held < EXIT_HELD,
            "exit published {held:?} after the process died: {self:?}"
        );
    }

    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(|v| v.as_str())
    }

    /// The container a task event is about.
    pub fn container_id(&self) -> Option<&str> {
        self.str_field("container_id")
    }

    /// The process id (exec id; the container id for init) of exit events.
    pub fn process_id(&self) -> Option<&str> {
        self.str_field("id")
    }

    pub fn exit_status(&self) -> Option<u64> {
        self.body.get("exit_status").and_then(|v| v.as_u64())
    }
}

/// `YYYY-MM-DD`, `HH:MM:SS[.fraction]` and a `+HHMM` offset as seconds since the epoch.
fn epoch_seconds(date: &str, time: &str, offset: &str) -> Option<f64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let mut d = date.splitn(3, '-').map(num);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (num(t.next()?)?, num(t.next()?)?);
    let sec: f64 = t.next()?.parse().ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let off = offset.get(1..5).and_then(num)?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let local = days * 86_400 + h * 3600 + min * 60;
    let utc = local - sign * ((off / 100) * 3600 + (off % 100) * 60);
    Some(utc as f64 + sec)
}

/// A running `ctr events` subscription.
pub struct Events {
    child: Child,
    rx: Receiver<String>,
    seen: Vec<Event>,
    ended: bool,
}

impl Events {
    pub(super) fn start(cd: &Containerd) -> Events {
        let mut cmd = cd.ctr_command();
        cmd.arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn ctr events");
        let stdout = child.stdout.take().expect("ctr events stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut events = Events {
            child,
            rx,
            seen: Vec::new(),
            ended: false,
        };
        // The subscription has no readiness signal: publish namespace updates until one comes
        // back through it.
        let ns = cd.namespace.clone();
        for attempt in 0..100 {
            let label = format!("pelagos.test.sync={attempt}");
            cd.ctr_ok(&["namespaces", "label", &ns, &label]);
            let got = events.wait_for(Duration::from_millis(300), |e| {
                e.topic == "/namespaces/update"
            });
            if got.is_some() {
                events.seen.clear();
                return events;
            }
            assert!(!events.ended, "ctr events exited:\n{}", cd.log_tail(20));
        }
        panic!("ctr events never showed a /namespaces/update event");
    }

    /// Takes one line, waiting at most `timeout`; false on timeout or when `ctr events` ended.
    fn pump(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                if let Some(e) = Event::parse(&line) {
                    self.seen.push(e);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                false
            }
        }
    }

    /// Whether `ctr events` has exited (e.g. containerd went away): nothing more will come.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Waits for the first event (seen or to come) matching `pred`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(e) = self.seen[checked..].iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left) {
                return None;
            }
        }
    }

    /// Waits for `topic` about container `id` (and, for exits, process `process`).
    pub fn wait_topic(&mut self, topic: &str, id: &str, process: Option<&str>) -> Event {
        self.wait_for(CTR_TIMEOUT, |e| {
            e.topic == topic
                && e.container_id() == Some(id)
                && process.is_none_or(|p| e.process_id() == Some(p))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {topic} event for {id}/{process:?}; saw: {:#?}",
                self.topics()
            )
        })
    }

    /// Takes whatever has arrived so far without waiting.
    pub fn drain(&mut self) {
        while self.pump(Duration::ZERO) {}
    }

    /// All events so far.
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// `/tasks/*` topics about container `id`, in order, with the process id for exits.
    pub fn task_topics(&self, id: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e.topic.starts_with("/tasks/") && e.container_id() == Some(id))
            .map(|e| match (e.topic.as_str(), e.process_id()) {
                ("/tasks/exit", Some(p)) => format!("/tasks/exit:{p}"),
                (t, _) => t.to_owned(),
            })
            .collect()
    }

    fn topics(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| format!("{} {}", e.topic, e.body))
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
