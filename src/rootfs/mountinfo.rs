//! /proc/self/mountinfo parsing (proc(5)), used to find the parent mount of the rootfs and the
//! host's cgroup hierarchies.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// Root of the mount within its filesystem.
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Optional fields such as `shared:1`, `master:2`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (for cgroup v1: the controllers, e.g. `rw,cpu`).
    pub super_options: String,
}

impl MountInfo {
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let _devno = fields.next()?;
    let root = unescape(fields.next()?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?.to_string();
    let mut optional = Vec::new();
    loop {
        let f = fields.next()?;
        if f == "-" {
            break;
        }
        optional.push(f.to_string());
    }
    let fstype = fields.next()?.to_string();
    let source = unescape(fields.next()?);
    let super_options = fields.next().unwrap_or("").to_string();
    Some(MountInfo {
        id,
        parent,
        root,
        mount_point,
        options,
        optional,
        fstype,
        source,
        super_options,
    })
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads and parses /proc/self/mountinfo.
pub fn read() -> std::io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount that contains `path` (the last-mounted one with the longest matching mount
/// point). `path` must be absolute and free of symlinks.
pub fn containing_mount<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) {
            let better = match best {
                None => true,
                Some(b) => m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len(),
            };
            if better {
                best = Some(m);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,size=4096k,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu
40 22 0:50 / /run/with\\040space rw master:3 - tmpfs tmpfs rw
41 22 0:51 / /run/x rw - overlay overlay rw,lowerdir=/a
";

    #[test]
    fn parses_fields() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 7);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert!(m[0].is_shared());
        assert_eq!(m[4].fstype, "cgroup");
        assert_eq!(m[4].super_options, "rw,cpu");
        assert_eq!(m[5].mount_point, PathBuf::from("/run/with space"));
        assert!(!m[5].is_shared());
        assert_eq!(m[5].optional, vec!["master:3".to_string()]);
        assert!(m[6].optional.is_empty());
        assert_eq!(m[6].fstype, "overlay");
    }

    #[test]
    fn containing_mount_picks_longest_prefix() {
        let m = parse(SAMPLE);
        let c = containing_mount(&m, Path::new("/sys/fs/cgroup/cpu/docker")).unwrap();
        assert_eq!(c.id, 35);
        let c = containing_mount(&m, Path::new("/sys/fs/cgroupx")).unwrap();
        assert_eq!(c.id, 22);
        let c = containing_mount(&m, Path::new("/run/x")).unwrap();
        assert_eq!(c.id, 41);
    }

    #[test]
    fn unescape_keeps_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9"), "a\\9");
    }
}
