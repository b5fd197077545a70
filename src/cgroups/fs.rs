//! The host's cgroup hierarchies (read once from /proc/self/mountinfo) and the small file
//! helpers every controller uses.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{CgroupError, Mode};

/// One mounted v1 hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct V1Hierarchy {
    pub mount: PathBuf,
    /// Controller names bound to it, plus `name=<x>` for named hierarchies.
    pub controllers: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Hierarchies {
    pub mode: Mode,
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount: /sys/fs/cgroup on unified hosts, usually /sys/fs/cgroup/unified on
    /// hybrid ones.
    pub unified: Option<PathBuf>,
    /// Controllers the cgroup2 root offers (none on most hybrid hosts).
    pub unified_controllers: Vec<String>,
}

impl Hierarchies {
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.mount.as_path())
    }
}

pub(crate) fn hierarchies() -> &'static Hierarchies {
    static H: OnceLock<Hierarchies> = OnceLock::new();
    H.get_or_init(|| {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let subsystems = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        let mut h = parse_hierarchies(&mountinfo, &subsystems);
        if let Some(root) = &h.unified {
            h.unified_controllers = read_words(&root.join("cgroup.controllers"));
        }
        log::debug!("cgroup hierarchies: {h:?}");
        h
    })
}

/// Parses mountinfo; `subsystems` is /proc/cgroups, used to tell controller names from mount
/// options in a v1 mount's super options.
pub(crate) fn parse_hierarchies(mountinfo: &str, subsystems: &str) -> Hierarchies {
    let known: Vec<&str> = subsystems
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut v1: Vec<V1Hierarchy> = Vec::new();
    let mut unified = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(crate::rootfs::mountinfo::unescape(pre[4]));
        match post[0] {
            // The first cgroup2 mount wins; later ones are usually bind mounts of it.
            "cgroup2" if unified.is_none() => unified = Some(mount),
            "cgroup" => {
                let controllers: Vec<String> = post[2]
                    .split(',')
                    .filter(|o| o.starts_with("name=") || known.contains(o))
                    .map(str::to_string)
                    .collect();
                if controllers.is_empty() || v1.iter().any(|h| h.controllers == controllers) {
                    continue;
                }
                v1.push(V1Hierarchy { mount, controllers });
            }
            _ => {}
        }
    }
    let has_v1_controller = v1
        .iter()
        .any(|h| h.controllers.iter().any(|c| !c.starts_with("name=")));
    let mode = match (has_v1_controller, unified.is_some()) {
        (false, true) => Mode::Unified,
        (true, true) => Mode::Hybrid,
        _ => Mode::Legacy,
    };
    if mode == Mode::Unified {
        v1.clear();
    }
    Hierarchies {
        mode,
        v1,
        unified,
        unified_controllers: Vec::new(),
    }
}

/// Writes `value` to `dir/file` in one write(2), as cgroupfs requires.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    // O_TRUNC is what `echo v > file` uses: a no-op on cgroupfs, and it keeps plain-file
    // test fixtures honest.
    let res = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    #[cfg(test)]
    if res.is_ok() {
        super::fixture::record(&path, value);
    }
    res.map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

/// Reads a file, giving `None` when it does not exist (stats treat missing files as zero).
pub(crate) fn read_opt(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            log::debug!("read {}: {e}", path.display());
            None
        }
    }
}

pub(crate) fn read_words(path: &Path) -> Vec<String> {
    read_opt(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Creates `dir` and any missing parents; returns the directories it created, outermost first.
/// A parent another container's delete removes meanwhile (it removes the parents it made once
/// empty) is made again.
pub(crate) fn mkdir_all(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut created = Vec::new();
    let mut attempts = 0;
    'again: loop {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        missing.reverse();
        for d in missing {
            match fs::create_dir(&d) {
                Ok(()) if !created.contains(&d) => created.push(d),
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == ErrorKind::NotFound && attempts < 8 => {
                    attempts += 1;
                    continue 'again;
                }
                Err(source) => {
                    remove_created(&created);
                    return Err(CgroupError::Mkdir { path: d, source });
                }
            }
        }
        return Ok(created);
    }
}

/// Best-effort removal of directories this process created, innermost first.
pub(crate) fn remove_created(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if let Err(e) = fs::remove_dir(d) {
            if e.kind() != ErrorKind::NotFound {
                log::warn!("cleanup: rmdir {}: {e}", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBSYS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\nmemory\t4\t1\t1\npids\t8\t1\t1\nhugetlb\t0\t1\t1\n";

    #[test]
    fn hybrid_host() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                  33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = parse_hierarchies(mi, SUBSYS);
        assert_eq!(h.mode, Mode::Hybrid);
        assert_eq!(h.v1.len(), 4);
        assert_eq!(h.v1_mount("cpu"), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(
            h.v1_mount("name=systemd"),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(h.v1_mount("pids"), None);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unified_and_legacy_hosts() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = parse_hierarchies(mi, SUBSYS);
        assert_eq!(h.mode, Mode::Unified);
        assert!(h.v1.is_empty());
        let mi = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  33 31 0:29 / /other/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        let h = parse_hierarchies(mi, SUBSYS);
        assert_eq!(h.mode, Mode::Legacy);
        assert_eq!(h.v1.len(), 1, "a second mount of one hierarchy is ignored");
        assert_eq!(
            h.v1_mount("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
    }

    #[test]
    fn octal_escapes() {
        use crate::rootfs::mountinfo::unescape;
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
