//! What the bench reads of processes in `/proc`: CPU of a shim (alone, or with every child it
//! reaped) and proportional memory.

use std::fs;

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU fields.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU time in ms: user + system of the process (all its threads), plus its reaped children's
/// (and theirs, as each reaper adds what it waited for) when `children`.
pub fn cpu_ms(pid: i32, children: bool) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime, stime, cutime, cstime are fields 14-17: indices 11-14 here.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let mut ticks = n(11)? + n(12)?;
    if children {
        ticks += n(13)? + n(14)?;
    }
    Some(ticks as f64 * 1000.0 / ticks_per_sec())
}

/// `Pss` of `/proc/<pid>/smaps_rollup`, in KiB.
pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Every process whose ancestry reaches one of `roots` (the roots included).
pub fn descendants(roots: &[i32]) -> Vec<i32> {
    let all: Vec<(i32, i32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, ppid(pid)?)))
        .collect();
    let mut out: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}
