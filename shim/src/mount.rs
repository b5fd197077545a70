//! The container's root filesystem as containerd hands it over: the `rootfs` mounts of
//! CreateTaskRequest (an overlay or a bind from the snapshotter) mounted onto
//! `<bundle>/rootfs`, and their recursive removal at Delete, on a failed Create and in the
//! `delete` action.
//!
//! Options follow containerd's `mount.Mount` semantics (mount_linux.go): known words become
//! flags, the rest is filesystem data; propagation is applied in a second call and a read-only
//! bind needs a remount. An overlay whose option string exceeds a page is mounted with lowerdirs
//! made relative to their common parent, from a short-lived thread that unshared its cwd
//! (`unshare(CLONE_FS)`): no fork in this multi-threaded process.
//!
//! An overlay with containerd's `uidmap=`/`gidmap=` options (the snapshotter's answer for a
//! user-namespaced pod on a kernel that idmaps overlay layers) gets each lowerdir as an
//! idmapped copy attached beside the rootfs while the overlay is mounted, as containerd's mount
//! package does with temporary directories.

use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {fstype} {source_path:?} on {target}: {errno}")]
    Mount {
        fstype: String,
        source_path: String,
        target: String,
        errno: Errno,
    },
    #[error("mount {target}: set propagation: {errno}")]
    Propagation { target: String, errno: Errno },
    #[error("mount {target}: remount read-only: {errno}")]
    Remount { target: String, errno: Errno },
    #[error("mount options of {fstype} {source_path:?} are too long ({len} bytes)")]
    TooLong {
        fstype: String,
        source_path: String,
        len: usize,
    },
    #[error("mount target {0:?} escapes the rootfs")]
    BadTarget(String),
    #[error("unmount {target}: {errno}")]
    Unmount { target: String, errno: Errno },
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("mount helper thread: {0}")]
    Thread(String),
    #[error("overlay {source_path:?}: {reason}")]
    Idmap { source_path: String, reason: String },
}

/// One mount as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountSpec {
    pub fstype: String,
    pub source: String,
    /// Below the rootfs; empty for the rootfs itself.
    pub target: String,
    pub options: Vec<String>,
}

impl MountSpec {
    /// The `rootfs` mounts of a CreateTaskRequest.
    pub fn from_request(mounts: &[containerd_shim_protos::types::mount::Mount]) -> Vec<MountSpec> {
        mounts
            .iter()
            .map(|m| MountSpec {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                options: m.options.clone(),
            })
            .collect()
    }
}

const PROPAGATION: MsFlags = MsFlags::from_bits_truncate(
    MsFlags::MS_SHARED.bits()
        | MsFlags::MS_PRIVATE.bits()
        | MsFlags::MS_SLAVE.bits()
        | MsFlags::MS_UNBINDABLE.bits(),
);

/// Flags and data from containerd's option words.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub flags: MsFlags,
    pub data: Vec<String>,
}

pub fn parse_options(options: &[String]) -> Parsed {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (clear, f) = match o.as_str() {
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "atime" => (true, MsFlags::MS_NOATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "defaults" => (false, MsFlags::empty()),
            "dev" => (true, MsFlags::MS_NODEV),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "nodev" => (false, MsFlags::MS_NODEV),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "suid" => (true, MsFlags::MS_NOSUID),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "private" => (false, MsFlags::MS_PRIVATE),
            "rprivate" => (false, MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => (false, MsFlags::MS_SHARED),
            "rshared" => (false, MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (false, MsFlags::MS_SLAVE),
            "rslave" => (false, MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (false, MsFlags::MS_UNBINDABLE),
            "runbindable" => (false, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        if clear {
            flags &= !f;
        } else {
            flags |= f;
        }
    }
    Parsed { flags, data }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Where `target` (relative to the rootfs) lands, refusing `..` and absolute escapes.
fn join_target(rootfs: &Path, target: &str) -> Result<PathBuf, MountError> {
    let mut out = rootfs.to_path_buf();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            _ => return Err(MountError::BadTarget(target.to_owned())),
        }
    }
    Ok(out)
}

/// Mounts `mounts` in order onto `rootfs`; on error unmounts what it mounted.
pub fn mount_all(mounts: &[MountSpec], rootfs: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        let result = join_target(rootfs, &m.target).and_then(|t| mount_one(m, &t));
        if let Err(e) = result {
            if i > 0 {
                if let Err(u) = unmount_recursive(rootfs) {
                    log::warn!("undo rootfs mounts after failure: {u}");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &MountSpec, target: &Path) -> Result<(), MountError> {
    let Parsed { flags, mut data } = parse_options(&m.options);
    // Held until the overlay is mounted: it keeps its own references to its layers.
    let _idmapped = match (m.fstype.as_str(), target.parent()) {
        ("overlay", Some(scratch)) => Some(idmap_lowerdirs(&mut data, scratch).map_err(
            |reason| MountError::Idmap {
                source_path: m.source.clone(),
                reason,
            },
        )?),
        _ => None,
    };
    let mut data = data.join(",");
    let mut chdir = None;
    let limit = page_size();
    if m.fstype == "overlay" && data.len() >= limit - 512 {
        if let Some((dir, compact)) = compact_lowerdirs(&data) {
            chdir = Some(dir);
            data = compact;
        }
    }
    if data.len() >= limit {
        return Err(MountError::TooLong {
            fstype: m.fstype.clone(),
            source_path: m.source.clone(),
            len: data.len(),
        });
    }
    let oflags = flags & !PROPAGATION;
    let tgt = target.display().to_string();
    if !flags.contains(MsFlags::MS_REMOUNT) || !data.is_empty() {
        let src = (!m.source.is_empty()).then_some(m.source.as_str());
        let fstype = (!m.fstype.is_empty()).then_some(m.fstype.as_str());
        let dat = (!data.is_empty()).then_some(data.as_str());
        let res = match &chdir {
            None => mount(src, target, fstype, oflags, dat),
            Some(dir) => mount_from_dir(dir, src, target, fstype, oflags, dat)?,
        };
        res.map_err(|errno| MountError::Mount {
            fstype: m.fstype.clone(),
            source_path: m.source.clone(),
            target: tgt.clone(),
            errno,
        })?;
    }
    let undo = |e: MountError| {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        e
    };
    if flags.intersects(PROPAGATION) {
        let pflags = flags & (PROPAGATION | MsFlags::MS_REC | MsFlags::MS_SILENT);
        mount(None::<&str>, target, None::<&str>, pflags, None::<&str>).map_err(|errno| {
            undo(MountError::Propagation {
                target: tgt.clone(),
                errno,
            })
        })?;
    }
    let bind_ro = MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    if oflags.contains(bind_ro) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            oflags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|errno| {
            undo(MountError::Remount {
                target: tgt.clone(),
                errno,
            })
        })?;
    }
    Ok(())
}

/// Parses containerd's id map option value: `container:host:size` triples, comma-separated.
pub fn parse_idmap(value: &str) -> Result<Vec<oci_spec::runtime::LinuxIdMapping>, String> {
    value
        .split(',')
        .map(|triple| {
            let n: Vec<u32> = triple
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("bad id mapping {triple:?}"))?;
            match n[..] {
                [c, h, size] if size > 0 => oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(c)
                    .host_id(h)
                    .size(size)
                    .build()
                    .map_err(|e| e.to_string()),
                _ => Err(format!(
                    "bad id mapping {triple:?} (want container:host:size)"
                )),
            }
        })
        .collect()
}

/// Idmapped copies of an overlay's lowerdirs, attached on directories beside the rootfs for as
/// long as the overlay's mount(2) needs their paths; unmounted (the overlay keeps its own
/// references) and removed on drop.
struct IdmappedLayers(Vec<PathBuf>);

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        for d in &self.0 {
            if let Err(e) = umount2(d, MntFlags::MNT_DETACH) {
                if e != Errno::EINVAL {
                    log::warn!("unmount idmapped layer {}: {e}", d.display());
                }
            }
            if let Err(e) = std::fs::remove_dir(d) {
                log::warn!("remove idmapped layer dir {}: {e}", d.display());
            }
        }
    }
}

/// Takes `uidmap=`/`gidmap=` out of an overlay's data and replaces each lowerdir by an
/// idmapped copy attached under `scratch` (a directory of the bundle). Attached, not named by
/// /proc/self/fd/N: overlayfs before Linux 6.x refuses detached layers.
fn idmap_lowerdirs(data: &mut Vec<String>, scratch: &Path) -> Result<IdmappedLayers, String> {
    let mut take = |key: &str| {
        let i = data.iter().position(|o| o.starts_with(key))?;
        Some(data.remove(i)[key.len()..].to_owned())
    };
    let (uid, gid) = match (take("uidmap="), take("gidmap=")) {
        (None, None) => return Ok(IdmappedLayers(Vec::new())),
        (Some(u), Some(g)) => (parse_idmap(&u)?, parse_idmap(&g)?),
        _ => return Err("uidmap and gidmap must be given together".into()),
    };
    let userns = pelagos::rootfs::idmap::user_namespace(&uid, &gid).map_err(|e| e.to_string())?;
    let lower = data
        .iter_mut()
        .find(|o| o.starts_with("lowerdir="))
        .ok_or("uidmap without a lowerdir")?;
    let mut layers = IdmappedLayers(Vec::new());
    let mut names = Vec::new();
    for (i, dir) in lower["lowerdir=".len()..].split(':').enumerate() {
        let tree = pelagos::rootfs::mountapi::clone_path(Path::new(dir), false)
            .map_err(|e| format!("open_tree of lowerdir {dir}: {e}"))?;
        pelagos::rootfs::mountapi::set_idmap(tree.as_fd(), userns.as_fd(), false).map_err(|e| {
            format!(
                "idmap lowerdir {dir}: {e}{}",
                if e == Errno::EINVAL {
                    " (its filesystem cannot be idmapped)"
                } else {
                    ""
                }
            )
        })?;
        let at = scratch.join(format!("idmapped-{i}"));
        std::fs::create_dir(&at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        layers.0.push(at.clone());
        let at_fd = std::fs::File::open(&at).map_err(|e| format!("open {}: {e}", at.display()))?;
        pelagos::rootfs::mountapi::move_mount(tree.as_fd(), at_fd.as_fd())
            .map_err(|e| format!("attach idmapped lowerdir {dir} on {}: {e}", at.display()))?;
        names.push(at.display().to_string());
    }
    *lower = format!("lowerdir={}", names.join(":"));
    Ok(layers)
}

/// Runs mount(2) with `dir` as the cwd of a throwaway thread, so relative lowerdirs resolve
/// there without changing the cwd of the rest of the process.
fn mount_from_dir(
    dir: &str,
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<nix::Result<()>, MountError> {
    std::thread::scope(|s| {
        s.spawn(|| -> nix::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(dir)?;
            mount(src, target, fstype, flags, data)
        })
        .join()
        .map_err(|_| MountError::Thread("panicked".into()))
    })
}

/// Rewrites `lowerdir=` so every layer is relative to their longest common parent directory.
/// Returns the directory and the new data, or None when there is nothing to gain.
pub fn compact_lowerdirs(data: &str) -> Option<(String, String)> {
    let opts: Vec<&str> = data.split(',').collect();
    let idx = opts.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = opts[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() < 2 || dirs.iter().any(|d| !d.starts_with('/')) {
        return None;
    }
    let mut common: Vec<&str> = Path::new(dirs[0]).parent()?.to_str()?.split('/').collect();
    for d in &dirs[1..] {
        let parts: Vec<&str> = d.split('/').collect();
        let n = common
            .iter()
            .zip(parts.iter())
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(n.min(parts.len().saturating_sub(1)));
    }
    let prefix = common.join("/");
    if prefix.len() <= 1 {
        return None;
    }
    let rel: Vec<&str> = dirs
        .iter()
        .map(|d| d[prefix.len()..].trim_start_matches('/'))
        .collect();
    let mut out: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    out[idx] = format!("lowerdir={}", rel.join(":"));
    Some((prefix, out.join(",")))
}

/// Unmounts everything at or below `target`, deepest first. Nothing mounted is fine.
pub fn unmount_recursive(target: &Path) -> Result<(), MountError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    let mut points = mounts_under(&info, target);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        // Stacked mounts on one point come off one by one; EINVAL means none is left.
        loop {
            match umount2(p.as_str(), MntFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(Errno::EBUSY) => {
                    log::warn!("unmount {p}: busy, detaching");
                    umount2(p.as_str(), MntFlags::MNT_DETACH).map_err(|errno| {
                        MountError::Unmount {
                            target: p.clone(),
                            errno,
                        }
                    })?;
                }
                Err(errno) => {
                    return Err(MountError::Unmount {
                        target: p.clone(),
                        errno,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Mount points in a mountinfo text that are `target` or below it.
pub fn mounts_under(mountinfo: &str, target: &Path) -> Vec<String> {
    let t = target.display().to_string();
    let t = t.trim_end_matches('/');
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = pelagos::rootfs::mountinfo::unescape(mp);
        if (mp == t || mp.starts_with(&format!("{t}/"))) && !out.contains(&mp) {
            out.push(mp);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let p = parse_options(&v(&["rbind", "ro", "nosuid", "index=off", "rprivate"]));
        assert_eq!(
            p.flags,
            MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_PRIVATE
        );
        assert_eq!(p.data, v(&["index=off"]));
        let p = parse_options(&v(&["ro", "rw", "suid"]));
        assert_eq!(p.flags, MsFlags::empty());
    }

    #[test]
    fn id_maps_from_containerd_options() {
        let m = parse_idmap("0:100000:65536").unwrap();
        assert_eq!(
            (m[0].container_id(), m[0].host_id(), m[0].size()),
            (0, 100000, 65536)
        );
        assert_eq!(parse_idmap("0:1:1,1:100:10").unwrap().len(), 2);
        for bad in ["0:1", "a:b:c", "0:1:0", ""] {
            assert!(parse_idmap(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lowerdirs_become_relative_to_their_parent() {
        let d = "workdir=/s/9/work,upperdir=/s/9/fs,lowerdir=/s/3/fs:/s/2/fs:/s/1/fs";
        let (dir, out) = compact_lowerdirs(d).unwrap();
        assert_eq!(dir, "/s");
        assert_eq!(
            out,
            "workdir=/s/9/work,upperdir=/s/9/fs,lowerdir=3/fs:2/fs:1/fs"
        );
        assert_eq!(compact_lowerdirs("lowerdir=/a/fs"), None);
        assert_eq!(compact_lowerdirs("lowerdir=/a:/b"), None);
    }

    #[test]
    fn targets_cannot_escape() {
        let r = Path::new("/b/rootfs");
        assert_eq!(join_target(r, "").unwrap(), PathBuf::from("/b/rootfs"));
        assert_eq!(
            join_target(r, "/x/y").unwrap(),
            PathBuf::from("/b/rootfs/x/y")
        );
        assert!(join_target(r, "../etc").is_err());
    }

    #[test]
    fn mountinfo_selects_the_subtree() {
        let info = "\
36 35 0:1 / /b/rootfs rw - overlay overlay rw
37 36 0:2 / /b/rootfs/proc rw - proc proc rw
38 35 0:3 / /b/rootfs2 rw - tmpfs tmpfs rw
39 36 0:4 / /b/rootfs/with\\040space rw - tmpfs tmpfs rw
";
        let got = mounts_under(info, Path::new("/b/rootfs"));
        assert_eq!(
            got,
            v(&["/b/rootfs", "/b/rootfs/proc", "/b/rootfs/with space"])
        );
    }

    #[test]
    fn bind_mount_and_recursive_unmount_for_real() {
        let base = std::env::temp_dir().join(format!("pelagos-mnt-{}", std::process::id()));
        let src = base.join("src");
        let root = base.join("rootfs");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(src.join("hello"), "hi").unwrap();
        let m = MountSpec {
            fstype: "bind".into(),
            source: src.display().to_string(),
            target: String::new(),
            options: v(&["rbind", "ro"]),
        };
        let t = MountSpec {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            target: "sub".into(),
            options: v(&["size=1m"]),
        };
        mount_all(&[m, t], &root).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("hello")).unwrap(), "hi");
        let err = std::fs::write(root.join("x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts_under(&info, &root).len(), 2);
        unmount_recursive(&root).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_under(&info, &root).is_empty());
        unmount_recursive(&root).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn failed_mount_names_the_source_and_leaves_nothing() {
        let base = std::env::temp_dir().join(format!("pelagos-mnt-bad-{}", std::process::id()));
        let root = base.join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        let ok = MountSpec {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            ..Default::default()
        };
        let bad = MountSpec {
            fstype: "bind".into(),
            source: "/nonexistent/pelagos".into(),
            target: String::new(),
            options: v(&["rbind"]),
        };
        let err = mount_all(&[ok, bad], &root).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pelagos"), "{err}");
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_under(&info, &root).is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
