//! Mounting one `spec.mounts` entry inside the rootfs (before pivot_root): bind/rbind with
//! flag remounts, filesystem mounts, sysfs/mqueue fallbacks for user namespaces, and cgroup
//! mounts for v1, v2 and hybrid hosts.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libc::c_ulong;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::statvfs::FsFlags;
use oci_spec::runtime::Mount;

use super::mountinfo::{self, MountInfo};
use super::options::{self, MountOptions};
use super::resolve::{clean_relative, ensure_in_root, fd_path, open_in_root, Kind};
use super::{mountapi, RootfsError};

/// What the mounts of one container share.
pub struct Ctx<'a> {
    pub root: BorrowedFd<'a>,
    pub in_userns: bool,
    /// The helper is in a new cgroup namespace (cgroup filesystems can be mounted directly).
    pub cgroupns: bool,
    /// Base of relative bind sources: the bundle when known, else the working directory.
    pub bundle: Option<PathBuf>,
    /// The rootfs on the host side (canonical): host mounts below it are ours, not the host's.
    pub rootfs: PathBuf,
    /// Detached bind trees made by the runtime: (mount index, fd).
    pub trees: &'a [(usize, std::os::fd::RawFd)],
}

impl Ctx<'_> {
    /// The host's mounts, without those already made inside the rootfs (an rbind of /sys
    /// brings copies of the host's cgroup mounts in).
    fn host_mounts(&self) -> Result<Vec<MountInfo>, RootfsError> {
        let mut mounts = mountinfo::read()
            .map_err(|e| RootfsError::Other(format!("read /proc/self/mountinfo: {e}")))?;
        mounts.retain(|m| !m.mount_point.starts_with(&self.rootfs));
        Ok(mounts)
    }
}

fn mount_err(what: &str, dest: &Path, e: Errno) -> RootfsError {
    RootfsError::sys(format!("mount {what} on"), dest, e)
}

fn ms(bits: c_ulong) -> MsFlags {
    MsFlags::from_bits_retain(bits)
}

/// MS_* bits a bind remount keeps from the source mount unless the options clear them;
/// in a user namespace the kernel refuses to drop them anyway ("locked" flags).
const PRESERVED: c_ulong = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_NOSYMFOLLOW;
const ATIME: c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;

fn statvfs_to_ms(f: FsFlags) -> c_ulong {
    let mut out = 0;
    for (st, m) in [
        (FsFlags::ST_RDONLY, libc::MS_RDONLY),
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(st) {
            out |= m;
        }
    }
    // ST_NOSYMFOLLOW (0x2000) is not in nix's FsFlags.
    if f.bits() & 0x2000 != 0 {
        out |= libc::MS_NOSYMFOLLOW;
    }
    out
}

/// The flags for remounting a bind mount whose current flags are `current`: the requested
/// ones, plus the current ones the options did not clear.
pub fn remount_flags(current: c_ulong, set: c_ulong, cleared: c_ulong) -> c_ulong {
    let mut keep = current & PRESERVED & !cleared;
    if set & ATIME != 0 || cleared & ATIME != 0 {
        keep &= !ATIME;
    }
    libc::MS_REMOUNT | libc::MS_BIND | set | keep
}

/// Remounts the bind mount whose root `fd` is, setting `set` and clearing `cleared`.
/// `display` names it in errors.
pub fn remount_bind(
    fd: BorrowedFd<'_>,
    set: c_ulong,
    cleared: c_ulong,
    display: &Path,
) -> Result<(), RootfsError> {
    let st = nix::sys::statvfs::fstatvfs(fd).map_err(|e| RootfsError::sys("statfs", display, e))?;
    let flags = remount_flags(statvfs_to_ms(st.flags()), set, cleared);
    nix::mount::mount(
        None::<&str>,
        &fd_path(fd),
        None::<&str>,
        ms(flags),
        None::<&str>,
    )
    .map_err(|e| RootfsError::sys(format!("remount (flags {flags:#x})"), display, e))
}

/// Source of a bind mount: absolute, or relative to the bundle (runtime-spec; runc resolves
/// it against its working directory, the bundle).
fn bind_source(ctx: &Ctx<'_>, m: &Mount) -> Result<PathBuf, String> {
    let src = m.source().as_ref().ok_or("bind mount without a source")?;
    if src.is_absolute() {
        return Ok(src.clone());
    }
    let base = match &ctx.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| format!("current directory: {e}"))?,
    };
    Ok(base.join(src))
}

/// Files under /proc that may be covered by a mount (lxcfs and the like), as in runc.
const PROC_COVERABLE: &[&str] = &[
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "proc/loadavg",
    "proc/slabinfo",
    "proc/net/dev",
    "proc/sys/kernel/ns_last_pid",
    "proc/sys/crypto/fips_enabled",
];

/// Refuses mounts that would hide or replace parts of the container's /proc (runc's
/// checkProcMount: a fake /proc/self or /proc/sys could defeat masked and read-only paths).
/// `src_is_proc` says whether a bind source is on procfs (None: not known yet).
pub fn check_proc_destination(
    rel: &Path,
    typ: &str,
    bind: bool,
    src_is_proc: Option<bool>,
) -> Result<(), String> {
    let under = rel.starts_with("proc");
    if !under || PROC_COVERABLE.iter().any(|p| rel == Path::new(p)) {
        return Ok(());
    }
    if rel == Path::new("proc") && !bind {
        return if typ == "proc" {
            Ok(())
        } else {
            Err(format!(
                "only a proc filesystem may be mounted on /proc, not {typ:?}"
            ))
        };
    }
    if bind && src_is_proc != Some(false) {
        return Ok(());
    }
    Err(
        "cannot be mounted inside /proc (only binds from procfs and a few files are allowed)"
            .into(),
    )
}

fn is_procfs(path: &Path) -> Result<bool, Errno> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok(st.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

fn is_procfs_fd(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    Ok(st.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// Mounts `m` (index `index` in spec.mounts) under the rootfs.
pub fn mount_one(ctx: &Ctx<'_>, index: usize, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let raw_opts = m.options().clone().unwrap_or_default();
    let bind = typ == "bind" || options::wants_bind(&raw_opts);
    let invalid = |reason: String| RootfsError::InvalidMount {
        index,
        destination: dest.clone(),
        reason,
    };
    let mut opts = options::parse(&raw_opts).map_err(|e| invalid(e.to_string()))?;
    let rel = clean_relative(dest);
    if bind {
        opts.flags |= libc::MS_BIND;
        let tree = ctx.trees.iter().find(|(i, _)| *i == index).map(|&(_, fd)| {
            // SAFETY: the runtime passed this detached tree at this fd for this mount.
            unsafe { BorrowedFd::borrow_raw(fd) }
        });
        let src = bind_source(ctx, m).map_err(invalid)?;
        if rel.starts_with("proc") {
            let proc = match tree {
                Some(t) => is_procfs_fd(t),
                None => is_procfs(&src),
            }
            .map_err(|e| RootfsError::sys("statfs bind source", &src, e))?;
            check_proc_destination(&rel, typ, true, Some(proc)).map_err(invalid)?;
        }
        match tree {
            Some(tree) => attach_tree(ctx, tree, &rel, dest, &opts)?,
            None => mount_bind(ctx, &src, &rel, dest, &opts)?,
        }
    } else {
        check_proc_destination(&rel, typ, false, None).map_err(invalid)?;
        if rel == Path::new("dev") {
            // Devices are created in /dev after this: finalize makes it read-only later.
            opts.flags &= !libc::MS_RDONLY;
        }
        match typ {
            "cgroup" => mount_cgroup(ctx, &rel, dest, &opts)?,
            "cgroup2" => mount_cgroup2(ctx, &rel, dest, &opts)?,
            "sysfs" => {
                if let Err(e) = mount_fs(ctx, m, &rel, dest, &opts) {
                    if !matches!(e.errno(), Some(Errno::EPERM | Errno::EBUSY)) {
                        return Err(e);
                    }
                    // sysfs cannot be mounted in a user namespace that does not own the
                    // network namespace: expose the host's /sys instead, as runc does.
                    log::debug!("sysfs mount refused ({e}), binding /sys instead");
                    let mut b = opts.clone();
                    b.flags |= libc::MS_BIND | libc::MS_REC;
                    mount_bind(ctx, Path::new("/sys"), &rel, dest, &b)?;
                }
            }
            "mqueue" => {
                if let Err(e) = mount_fs(ctx, m, &rel, dest, &opts) {
                    if !(ctx.in_userns && matches!(e.errno(), Some(Errno::EPERM))) {
                        return Err(e);
                    }
                    log::debug!("mqueue mount refused ({e}), binding /dev/mqueue instead");
                    let mut b = opts.clone();
                    b.flags |= libc::MS_BIND;
                    mount_bind(ctx, Path::new("/dev/mqueue"), &rel, dest, &b)?;
                }
            }
            "" => return Err(invalid("mount type missing".into())),
            _ => mount_fs(ctx, m, &rel, dest, &opts)?,
        }
    }
    post_mount(ctx, &rel, dest, &opts)
}

/// Propagation and recursive attributes, applied to the mount now at `rel`.
fn post_mount(
    ctx: &Ctx<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    if opts.propagation == 0 && opts.rec_attr_set == 0 && opts.rec_attr_clr == 0 {
        return Ok(());
    }
    let fd = open_in_root(ctx.root, rel, OFlag::empty())
        .map_err(|e| RootfsError::sys("open", dest, e))?;
    if opts.propagation != 0 {
        nix::mount::mount(
            None::<&str>,
            &fd_path(fd.as_fd()),
            None::<&str>,
            ms(opts.propagation),
            None::<&str>,
        )
        .map_err(|e| RootfsError::sys("set propagation of", dest, e))?;
    }
    if opts.rec_attr_set != 0 || opts.rec_attr_clr != 0 {
        mountapi::set_attr(fd.as_fd(), opts.rec_attr_set, opts.rec_attr_clr, true)
            .map_err(|e| RootfsError::sys("set recursive mount attributes of", dest, e))?;
    }
    Ok(())
}

fn mount_bind(
    ctx: &Ctx<'_>,
    src: &Path,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let meta = std::fs::metadata(src).map_err(|e| {
        RootfsError::sys(
            format!("bind source {} for", src.display()),
            dest,
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
        )
    })?;
    let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
    let target = ensure_in_root(ctx.root, rel, kind)
        .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
    let bind_flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
    nix::mount::mount(
        Some(src),
        &fd_path(target.as_fd()),
        None::<&str>,
        ms(bind_flags),
        None::<&str>,
    )
    .map_err(|e| RootfsError::sys(format!("bind {} on", src.display()), dest, e))?;
    remount_new_bind(ctx, rel, dest, opts)
}

/// MS_BIND ignores every other flag: a new bind mount needs a remount for them.
fn remount_new_bind(
    ctx: &Ctx<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    if opts.bind_remount_flags() == 0 && opts.cleared == 0 {
        return Ok(());
    }
    let mounted = open_in_root(ctx.root, rel, OFlag::empty())
        .map_err(|e| RootfsError::sys("open", dest, e))?;
    remount_bind(
        mounted.as_fd(),
        opts.bind_remount_flags(),
        opts.cleared,
        dest,
    )
}

/// Moves a detached tree (a bind the runtime made, see `idmap::prepare`) onto `rel`, then applies the
/// flags a bind remount would.
fn attach_tree(
    ctx: &Ctx<'_>,
    tree: BorrowedFd<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let st = nix::sys::stat::fstat(tree)
        .map_err(|e| RootfsError::sys("stat bind source for", dest, e))?;
    let kind = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        Kind::Dir
    } else {
        Kind::File
    };
    let target = ensure_in_root(ctx.root, rel, kind)
        .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
    mountapi::move_mount(tree, target.as_fd())
        .map_err(|e| RootfsError::sys("attach the bind mount on", dest, e))?;
    remount_new_bind(ctx, rel, dest, opts)
}

/// A filesystem mount (tmpfs, proc, devpts, mqueue, sysfs, overlay, ...).
fn mount_fs(
    ctx: &Ctx<'_>,
    m: &Mount,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let typ = m.typ().as_deref().unwrap_or("");
    let target = ensure_in_root(ctx.root, rel, Kind::Dir)
        .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = opts.data_string();
    let flags = opts.flags & !libc::MS_REMOUNT;
    if opts.tmpcopyup {
        return tmpcopyup(target, typ, flags, &data, dest);
    }
    nix::mount::mount(
        Some(&source),
        &fd_path(target.as_fd()),
        Some(typ),
        ms(flags),
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        if data.is_empty() {
            mount_err(typ, dest, e)
        } else {
            mount_err(&format!("{typ} (data {data:?})"), dest, e)
        }
    })
}

/// tmpfs with the mount point's existing content copied in (runc's `tmpcopyup`). The new
/// tmpfs is filled while detached, then attached, so nothing sees it half-copied.
fn tmpcopyup(
    target: OwnedFd,
    typ: &str,
    flags: c_ulong,
    data: &str,
    dest: &Path,
) -> Result<(), RootfsError> {
    if typ != "tmpfs" {
        return Err(RootfsError::sys(
            "tmpcopyup needs tmpfs, not",
            dest,
            Errno::EINVAL,
        ));
    }
    let opts: Vec<(&str, &str)> = data
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let fs = mountapi::new_fs("tmpfs", &opts, mountapi::ms_to_attr(flags))
        .map_err(|e| mount_err("tmpfs", dest, e))?;
    // `target` still refers to the directory under the future mount: its content is the source.
    let src = nix::fcntl::openat(
        target.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RootfsError::sys("open", dest, e))?;
    super::copy::copy_tree(src.as_fd(), fs.as_fd())
        .map_err(|e| RootfsError::sys("tmpcopyup: copy into", dest, e))?;
    mountapi::move_mount(fs.as_fd(), target.as_fd()).map_err(|e| mount_err("tmpfs", dest, e))
}

// ---- cgroups -----------------------------------------------------------------------------

/// Host cgroup layout, read from mountinfo.
enum HostCgroups {
    /// cgroup2 at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 hierarchies (and possibly a cgroup2 mount with no controllers).
    Legacy {
        v1: Vec<MountInfo>,
        v2: Option<MountInfo>,
    },
}

fn host_cgroups(ctx: &Ctx<'_>) -> Result<HostCgroups, RootfsError> {
    let mounts = ctx.host_mounts()?;
    if mounts
        .iter()
        .any(|m| m.fstype == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"))
    {
        return Ok(HostCgroups::Unified);
    }
    // One mount per hierarchy: a hierarchy mounted twice on the host is bound once.
    let mut v1: Vec<MountInfo> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        if !v1.iter().any(|x| x.super_options == m.super_options) {
            v1.push(m.clone());
        }
    }
    let v2 = mounts.iter().find(|m| m.fstype == "cgroup2").cloned();
    Ok(HostCgroups::Legacy { v1, v2 })
}

/// The controllers (and `name=` of named hierarchies) of a v1 mount's super options.
pub fn v1_subsystems(super_options: &str) -> Vec<String> {
    super_options
        .split(',')
        .filter(|o| {
            !matches!(
                *o,
                "rw" | "ro"
                    | "xattr"
                    | "noprefix"
                    | "clone_children"
                    | "cpuset_v2_mode"
                    | "favordynmods"
            ) && !o.starts_with("release_agent=")
                && !o.is_empty()
        })
        .map(str::to_string)
        .collect()
}

/// The helper's cgroup path per hierarchy key (`"cpu,cpuacct"`, `"name=systemd"`, `""` for v2).
fn own_cgroups() -> Result<Vec<(Vec<String>, String)>, RootfsError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| RootfsError::Other(format!("read /proc/self/cgroup: {e}")))?;
    Ok(parse_proc_cgroup(&text))
}

/// Parses `/proc/<pid>/cgroup` into (subsystems, path).
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let mut subs: Vec<String> = ctrls
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            subs.sort();
            Some((subs, path.to_string()))
        })
        .collect()
}

/// The host directory of our cgroup in the hierarchy mounted as `m`.
fn host_cgroup_dir(m: &MountInfo, path: &str) -> PathBuf {
    let rel = Path::new(path)
        .strip_prefix(&m.root)
        .unwrap_or(Path::new(path));
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    m.mount_point.join(rel)
}

fn mount_cgroup(
    ctx: &Ctx<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    match host_cgroups(ctx)? {
        HostCgroups::Unified => mount_cgroup2(ctx, rel, dest, opts),
        HostCgroups::Legacy { v1, v2 } => mount_cgroup_v1(ctx, rel, dest, opts, &v1, v2.as_ref()),
    }
}

fn mount_cgroup2(
    ctx: &Ctx<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let target = ensure_in_root(ctx.root, rel, Kind::Dir)
        .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
    let flags = opts.flags & !libc::MS_REMOUNT;
    match nix::mount::mount(
        Some("cgroup2"),
        &fd_path(target.as_fd()),
        Some("cgroup2"),
        ms(flags),
        None::<&str>,
    ) {
        Ok(()) => return Ok(()),
        Err(e @ (Errno::EPERM | Errno::EBUSY)) => {
            log::debug!(
                "cgroup2 mount on {} refused ({e}), binding our own cgroup",
                dest.display()
            );
        }
        Err(e) => return Err(mount_err("cgroup2", dest, e)),
    }
    // In a user namespace without a cgroup namespace cgroup2 cannot be mounted: bind the
    // container's own cgroup directory instead (runc does the same).
    let v2 = ctx
        .host_mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or_else(|| mount_err("cgroup2", dest, Errno::ENOENT))?;
    let path = own_cgroups()?
        .into_iter()
        .find(|(subs, _)| subs.is_empty())
        .map(|(_, p)| p)
        .unwrap_or_else(|| "/".into());
    let mut b = opts.clone();
    b.flags |= libc::MS_BIND | libc::MS_REC;
    mount_bind(ctx, &host_cgroup_dir(&v2, &path), rel, dest, &b)
}

fn mount_cgroup_v1(
    ctx: &Ctx<'_>,
    rel: &Path,
    dest: &Path,
    opts: &MountOptions,
    v1: &[MountInfo],
    v2: Option<&MountInfo>,
) -> Result<(), RootfsError> {
    // A tmpfs holds one directory per hierarchy; it is made read-only last if asked.
    let base_flags = opts.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
    let target = ensure_in_root(ctx.root, rel, Kind::Dir)
        .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
    nix::mount::mount(
        Some("tmpfs"),
        &fd_path(target.as_fd()),
        Some("tmpfs"),
        ms(base_flags),
        Some("mode=755"),
    )
    .map_err(|e| mount_err("tmpfs", dest, e))?;
    let own = if ctx.cgroupns {
        Vec::new()
    } else {
        own_cgroups()?
    };
    let mut sub_opts = opts.clone();
    sub_opts.propagation = 0;
    sub_opts.rec_attr_set = 0;
    sub_opts.rec_attr_clr = 0;
    for m in v1 {
        let Some(name) = m.mount_point.file_name() else {
            continue;
        };
        let sub_rel = rel.join(name);
        let sub_dest = dest.join(name);
        let mut subs = v1_subsystems(&m.super_options);
        subs.sort();
        if ctx.cgroupns {
            // The cgroup namespace makes a fresh mount show only the container's subtree.
            let t = ensure_in_root(ctx.root, &sub_rel, Kind::Dir)
                .map_err(|(e, p)| RootfsError::sys("create mount point", p, e))?;
            let data = subs.join(",");
            nix::mount::mount(
                Some("cgroup"),
                &fd_path(t.as_fd()),
                Some("cgroup"),
                ms(opts.flags & !libc::MS_REMOUNT),
                Some(data.as_str()),
            )
            .map_err(|e| mount_err(&format!("cgroup ({data})"), &sub_dest, e))?;
        } else {
            let Some((_, path)) = own.iter().find(|(s, _)| *s == subs) else {
                log::debug!("no cgroup of ours in hierarchy {}", m.mount_point.display());
                continue;
            };
            let mut b = sub_opts.clone();
            b.flags |= libc::MS_BIND | libc::MS_REC;
            mount_bind(ctx, &host_cgroup_dir(m, path), &sub_rel, &sub_dest, &b)?;
        }
        // Combined hierarchies ("cpu,cpuacct") get a symlink per controller, like the host.
        let name_str = name.to_string_lossy();
        if subs.len() > 1 {
            for s in subs
                .iter()
                .filter(|s| !s.starts_with("name=") && **s != *name_str)
            {
                let dir = open_in_root(ctx.root, rel, OFlag::empty())
                    .map_err(|e| RootfsError::sys("open", dest, e))?;
                match nix::unistd::symlinkat(name, dir.as_fd(), s.as_str()) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(RootfsError::sys("symlink", dest.join(s), e)),
                }
            }
        }
    }
    if let Some(v2m) = v2 {
        // Hybrid host: the controller-less cgroup2 hierarchy, for systemd in the container.
        if let Some(name) = v2m
            .mount_point
            .strip_prefix("/sys/fs/cgroup")
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
        {
            let sub_rel = rel.join(name);
            let sub_dest = dest.join(name);
            if ctx.cgroupns {
                let mut o = sub_opts.clone();
                o.flags &= !libc::MS_BIND;
                mount_cgroup2(ctx, &sub_rel, &sub_dest, &o)?;
            } else if let Some((_, path)) = own.iter().find(|(s, _)| s.is_empty()) {
                let mut b = sub_opts.clone();
                b.flags |= libc::MS_BIND | libc::MS_REC;
                mount_bind(ctx, &host_cgroup_dir(v2m, path), &sub_rel, &sub_dest, &b)?;
            }
        }
    }
    if opts.flags & libc::MS_RDONLY != 0 {
        let fd = open_in_root(ctx.root, rel, OFlag::empty())
            .map_err(|e| RootfsError::sys("open", dest, e))?;
        remount_bind(fd.as_fd(), libc::MS_RDONLY | base_flags, 0, dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remount_keeps_uncleared_source_flags() {
        let cur = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME;
        let f = remount_flags(cur, libc::MS_RDONLY, 0);
        assert_eq!(f, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | cur);
        let f = remount_flags(cur, libc::MS_NOATIME, libc::MS_NOSUID);
        assert_eq!(
            f,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOATIME | libc::MS_NODEV
        );
        let f = remount_flags(libc::MS_RDONLY, 0, libc::MS_RDONLY);
        assert_eq!(f, libc::MS_REMOUNT | libc::MS_BIND);
    }

    #[test]
    fn proc_destinations() {
        let ok = |rel: &str, typ: &str, bind: bool, src: Option<bool>| {
            check_proc_destination(Path::new(rel), typ, bind, src)
        };
        assert!(ok("proc", "proc", false, None).is_ok());
        assert!(ok("proc", "tmpfs", false, None).is_err());
        assert!(ok("proc/cpuinfo", "bind", true, Some(false)).is_ok());
        assert!(ok("proc/sys", "tmpfs", false, None).is_err());
        assert!(ok("proc/self", "bind", true, Some(false)).is_err());
        assert!(ok("proc/sys", "bind", true, Some(true)).is_ok());
        assert!(ok("proc/sys", "bind", true, None).is_ok());
        assert!(ok("processes", "tmpfs", false, None).is_ok());
        assert!(ok("data", "tmpfs", false, None).is_ok());
    }

    #[test]
    fn v1_subsystem_names() {
        assert_eq!(v1_subsystems("rw,cpu,cpuacct"), vec!["cpu", "cpuacct"]);
        assert_eq!(v1_subsystems("rw,xattr,name=systemd"), vec!["name=systemd"]);
        assert_eq!(v1_subsystems("rw,release_agent=/x,memory"), vec!["memory"]);
    }

    #[test]
    fn proc_cgroup_parsing() {
        let p = parse_proc_cgroup("12:cpuacct,cpu:/a/b\n1:name=systemd:/user.slice\n0::/x\n");
        assert_eq!(
            p[0],
            (
                vec!["cpu".to_string(), "cpuacct".to_string()],
                "/a/b".to_string()
            )
        );
        assert_eq!(p[1].0, vec!["name=systemd".to_string()]);
        assert_eq!(p[2], (vec![], "/x".to_string()));
    }

    #[test]
    fn host_dir_under_mount_root() {
        let m =
            mountinfo::parse("35 30 0:31 /docker /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
                .pop()
                .unwrap();
        assert_eq!(
            host_cgroup_dir(&m, "/docker/c1"),
            PathBuf::from("/sys/fs/cgroup/cpu/c1")
        );
        assert_eq!(
            host_cgroup_dir(&m, "/other"),
            PathBuf::from("/sys/fs/cgroup/cpu/other")
        );
    }
}
