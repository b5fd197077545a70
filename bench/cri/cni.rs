//! The CNI plugin's share of a pod's teardown: the DEL calls CRI made for one pod (the
//! fixture's plugin logs every call), replayed alone against a network namespace of the
//! bench's own, so that the table can show teardown with and without that floor. Both
//! handlers pay it alike; the runtime does not control it.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::cri::{CNI_BIN, CNI_CALLS};

/// One logged DEL call (the plugin logs `<command> <ifname> present|absent <netns>`).
pub struct Del {
    ifname: String,
    /// Whether the namespace CRI passed existed.
    with_netns: bool,
}

pub struct Replay {
    log: PathBuf,
    plugin: PathBuf,
    name: String,
    netns: PathBuf,
}

impl Replay {
    /// A namespace for the replays, under `/run/netns` as CRI's are.
    pub fn new(work: &Path) -> Result<Replay, String> {
        let name = format!("pelagos-cri-bench-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Replay {
            log: work.join(CNI_CALLS),
            plugin: work.join(CNI_BIN).join("pelagos-test-net"),
            netns: Path::new("/run/netns").join(&name),
            name,
        })
    }

    /// Where the log ends now: calls after this mark are the next step's.
    pub fn mark(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The DEL calls logged between two marks.
    pub fn dels(&self, from: u64, to: u64) -> Vec<Del> {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.take(to.saturating_sub(from)).read_to_string(&mut text);
        }
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (command, ifname) = (f.next()?, f.next()?);
                (command == "DEL").then(|| Del {
                    ifname: ifname.to_owned(),
                    with_netns: f.next() == Some("present"),
                })
            })
            .collect()
    }

    /// The wall time of `dels` run one after the other (as CRI runs them) against a pod
    /// network the plugin's ADDs just set up (not timed), in ms. A call CRI made without a
    /// namespace, or after it was removed, gets a path that does not exist.
    pub fn time_dels(&self, dels: &[Del]) -> Result<f64, String> {
        for ifname in ["lo", "eth0"] {
            self.run("ADD", ifname, &self.netns)?;
        }
        let gone = self.netns.with_extension("removed");
        let t0 = Instant::now();
        for d in dels {
            let netns = if d.with_netns { &self.netns } else { &gone };
            self.run("DEL", &d.ifname, netns)?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        // What CRI's DELs left (none when they had the namespace) must not meet the next ADD.
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["ip", "link", "del", "eth0"])
            .stderr(Stdio::null())
            .status();
        Ok(ms)
    }

    fn run(&self, command: &str, ifname: &str, netns: &Path) -> Result<(), String> {
        // The plugin reads and discards its config.
        let st = Command::new(&self.plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_IFNAME", ifname)
            .env("CNI_NETNS", netns)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_PATH", self.plugin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cni replay: {}: {e}", self.plugin.display()))?;
        if !st.success() {
            return Err(format!("cni replay: {command} {ifname}: {st}"));
        }
        Ok(())
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
