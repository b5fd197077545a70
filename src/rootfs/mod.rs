//! The container's filesystem view: mounts, devices, pivot_root, masked and read-only paths.
//! Runs inside the setup helper (single-threaded, already in the container's mount namespace).
//!
//! Every mount destination is resolved inside the rootfs with openat2(RESOLVE_IN_ROOT), so a
//! symlink in the image cannot redirect a mount onto the host; the mount itself targets the
//! resolved fd (/proc/self/fd/N before pivot_root, move_mount after it).

mod copy;
mod devices;
pub mod idmap;
pub mod mountapi;
pub mod mountinfo;
mod mounts;
pub mod options;
pub mod resolve;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use resolve::{clean_relative, open_in_root};

/// Parsers of kernel text, public for fuzz/.
#[doc(hidden)]
pub use mounts::{parse_proc_cgroup, v1_subsystems};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Idmap(#[from] idmap::IdmapError),
    /// A spec mount that cannot be mounted as written.
    #[error("mount {index} ({}): {reason}", destination.display())]
    InvalidMount {
        index: usize,
        destination: PathBuf,
        reason: String,
    },
    #[error("device {}: {reason}", path.display())]
    InvalidDevice { path: PathBuf, reason: String },
    /// A syscall that failed on a path (container paths are shown as the container sees them).
    #[error("{what} {}: {errno}", path.display())]
    Sys {
        what: String,
        path: PathBuf,
        errno: Errno,
    },
    #[error("rootfs: {0}")]
    Other(String),
}

impl RootfsError {
    pub(crate) fn sys(what: impl Into<String>, path: impl AsRef<Path>, errno: Errno) -> Self {
        RootfsError::Sys {
            what: what.into(),
            path: path.as_ref().to_path_buf(),
            errno,
        }
    }

    /// The errno behind a failed syscall, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            RootfsError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

/// /dev is set up by us unless the spec bind-mounts a whole /dev (runc's needsSetupDev).
fn needs_dev_setup(spec: &Spec) -> bool {
    !spec.mounts().iter().flatten().any(|m| {
        let bind = m.typ().as_deref() == Some("bind")
            || options::wants_bind(m.options().as_deref().unwrap_or(&[]));
        bind && clean_relative(m.destination()) == Path::new("dev")
    })
}

fn rootfs_propagation(spec: &Spec) -> Result<Option<libc::c_ulong>, RootfsError> {
    match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        None | Some("") => Ok(None),
        Some(p) => options::parse_propagation(p)
            .map(Some)
            .ok_or_else(|| RootfsError::Other(format!("unknown rootfsPropagation {p:?}"))),
    }
}

fn ms(bits: libc::c_ulong) -> MsFlags {
    MsFlags::from_bits_retain(bits)
}

/// Everything before pivot_root: root propagation private, rootfs bind, every `spec.mounts`
/// entry (destinations resolved inside `rootfs` without following symlinks out of it), default
/// and spec devices, /dev symlinks, /dev/ptmx. `in_userns`: bind devices instead of mknod.
///
/// `trees`: the detached bind trees the runtime made (see [`idmap::prepare`]), by mount index,
/// as fds of this process.
pub fn prepare(
    spec: &Spec,
    rootfs: &Path,
    in_userns: bool,
    trees: &[(usize, std::os::fd::RawFd)],
) -> Result<(), RootfsError> {
    let bundle = bundle_dir(spec, rootfs);
    let rootfs = std::fs::canonicalize(rootfs).map_err(|e| {
        RootfsError::sys(
            "rootfs",
            rootfs,
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
        )
    })?;
    // Nothing we mount may propagate back to the host: make our copy of the host mounts
    // slave (or the requested propagation) before touching anything.
    let root_flags = rootfs_propagation(spec)?.unwrap_or(libc::MS_SLAVE | libc::MS_REC);
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        ms(root_flags),
        None::<&str>,
    )
    .map_err(|e| RootfsError::sys("set propagation of", "/", e))?;
    make_parent_private(&rootfs)?;
    // A bind of the rootfs onto itself makes it a mount point (pivot_root needs one) even when
    // it is a plain directory; containerd's overlay is already one.
    nix::mount::mount(
        Some(&rootfs),
        &rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RootfsError::sys("bind rootfs onto itself", &rootfs, e))?;
    let root = nix::fcntl::open(
        &rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::sys("open rootfs", &rootfs, e))?;
    let ctx = mounts::Ctx {
        root: root.as_fd(),
        in_userns,
        cgroupns: has_namespace(spec, LinuxNamespaceType::Cgroup),
        bundle,
        rootfs: rootfs.clone(),
        trees,
    };
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mounts::mount_one(&ctx, i, m)?;
    }
    if needs_dev_setup(spec) {
        let spec_devices = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default();
        let list = devices::device_list(&spec_devices)?;
        devices::create_all(root.as_fd(), &list, in_userns)?;
        devices::create_links(root.as_fd())?;
    }
    Ok(())
}

/// The bundle directory, when `rootfs` is the bundle joined with a relative `root.path`.
fn bundle_dir(spec: &Spec, rootfs: &Path) -> Option<PathBuf> {
    let rel = spec.root().as_ref()?.path();
    if rel.is_absolute() {
        return None;
    }
    let mut dir = rootfs.to_path_buf();
    for _ in rel
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
    {
        if !dir.pop() {
            return None;
        }
    }
    // Path equality compares components, so "./rootfs" matches "rootfs".
    (rootfs == dir.join(rel)).then_some(dir)
}

/// pivot_root refuses a new root whose parent mount is shared: make that parent private
/// (only it, not recursively).
fn make_parent_private(rootfs: &Path) -> Result<(), RootfsError> {
    let mounts = mountinfo::read()
        .map_err(|e| RootfsError::Other(format!("read /proc/self/mountinfo: {e}")))?;
    if let Some(m) = mountinfo::containing_mount(&mounts, rootfs) {
        if m.is_shared() {
            nix::mount::mount(
                None::<&str>,
                &m.mount_point,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| RootfsError::sys("make private", &m.mount_point, e))?;
        }
    }
    Ok(())
}

/// pivot_root into `rootfs` (chroot when `no_pivot`) and detach the old root.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    if no_pivot {
        nix::unistd::chdir(rootfs).map_err(|e| RootfsError::sys("chdir", rootfs, e))?;
        nix::mount::mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| RootfsError::sys("move mount to /", rootfs, e))?;
        nix::unistd::chroot(".").map_err(|e| RootfsError::sys("chroot", rootfs, e))?;
        return nix::unistd::chdir("/").map_err(|e| RootfsError::sys("chdir", "/", e));
    }
    let old_root: OwnedFd = nix::fcntl::open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::sys("open", "/", e))?;
    let new_root: OwnedFd = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::sys("open", rootfs, e))?;
    nix::unistd::fchdir(new_root.as_fd()).map_err(|e| RootfsError::sys("chdir", rootfs, e))?;
    // pivot_root(".", ".") stacks the old root on top of the new one at "/", so no put_old
    // directory is needed in the image; the old root is then detached from under us.
    nix::unistd::pivot_root(".", ".").map_err(|e| RootfsError::sys("pivot_root to", rootfs, e))?;
    nix::unistd::fchdir(old_root.as_fd()).map_err(|e| RootfsError::sys("chdir", "old root", e))?;
    // Slave first, so that unmounting the old root cannot propagate to the host.
    nix::mount::mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RootfsError::sys("make rslave", "old root", e))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| RootfsError::sys("unmount", "old root", e))?;
    nix::unistd::chdir("/").map_err(|e| RootfsError::sys("chdir", "/", e))
}

/// After pivot_root: readonly paths, masked paths (fd-verified /dev/null), readonly root,
/// final rootfsPropagation.
pub fn finalize(spec: &Spec) -> Result<(), RootfsError> {
    if let Some(p) = rootfs_propagation(spec)? {
        // Only now is "/" the container's root; before pivot_root this would have changed
        // the propagation of the host's root in a shared setup.
        nix::mount::mount(None::<&str>, "/", None::<&str>, ms(p), None::<&str>)
            .map_err(|e| RootfsError::sys("set rootfsPropagation of", "/", e))?;
    }
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RootfsError::sys("open", "/", e))?;
    // Devices were created in /dev after its mount: a read-only /dev is remounted only now.
    for m in spec.mounts().iter().flatten() {
        let ro = options::parse(m.options().as_deref().unwrap_or(&[]))
            .is_ok_and(|o| o.flags & libc::MS_RDONLY != 0);
        if ro && clean_relative(m.destination()) == Path::new("dev") {
            let fd = open_in_root(root.as_fd(), Path::new("dev"), OFlag::empty())
                .map_err(|e| RootfsError::sys("open", "/dev", e))?;
            mounts::remount_bind(fd.as_fd(), libc::MS_RDONLY, 0, Path::new("/dev"))?;
        }
    }
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(root.as_fd(), Path::new(p))?;
    }
    let masked = linux.and_then(|l| l.masked_paths().as_ref());
    if masked.is_some_and(|m| !m.is_empty()) {
        let null = verified_dev_null(root.as_fd())?;
        for p in masked.into_iter().flatten() {
            mask_path(root.as_fd(), null.as_fd(), Path::new(p))?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let fd = open_in_root(root.as_fd(), Path::new("."), OFlag::empty())
            .map_err(|e| RootfsError::sys("open", "/", e))?;
        mounts::remount_bind(fd.as_fd(), libc::MS_RDONLY, 0, Path::new("/"))?;
    }
    Ok(())
}

/// Opens a container path for masking or read-only binding; `None` when it does not exist
/// (runc skips those).
fn open_existing(
    root: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<Option<OwnedFd>, RootfsError> {
    match open_in_root(root, &clean_relative(path), OFlag::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(RootfsError::sys("open", path, e)),
    }
}

/// A read-only bind of `path` onto itself. The bind is cloned, made read-only while still
/// detached and then attached, so the path is never writable through the new mount; the
/// clone keeps the source's nosuid/nodev/noexec.
fn readonly_path(root: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), RootfsError> {
    let Some(target) = open_existing(root, path)? else {
        return Ok(());
    };
    let tree = mountapi::clone_tree(target.as_fd(), true)
        .map_err(|e| RootfsError::sys("bind", path, e))?;
    mountapi::set_attr(tree.as_fd(), options::attr::RDONLY, 0, false)
        .map_err(|e| RootfsError::sys("make read-only", path, e))?;
    mountapi::move_mount(tree.as_fd(), target.as_fd())
        .map_err(|e| RootfsError::sys("mount read-only over", path, e))
}

/// Opens the container's /dev/null and checks, on the fd, that it is the null device (1:3):
/// a path that the image or a racing container process replaced by anything else (a symlink
/// to a host file, a regular file) is refused (CVE-2025-31133).
fn verified_dev_null(root: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, RootfsError> {
    let fd = open_in_root(root, Path::new("dev/null"), OFlag::O_NOFOLLOW)
        .map_err(|e| RootfsError::sys("open", "/dev/null", e))?;
    let st =
        nix::sys::stat::fstat(fd.as_fd()).map_err(|e| RootfsError::sys("stat", "/dev/null", e))?;
    let is_chr = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFCHR;
    if !is_chr || nix::sys::stat::major(st.st_rdev) != 1 || nix::sys::stat::minor(st.st_rdev) != 3 {
        return Err(RootfsError::Other(format!(
            "/dev/null is not the null device (mode {:#o}, rdev {}:{}); refusing to mask paths with it",
            st.st_mode,
            nix::sys::stat::major(st.st_rdev),
            nix::sys::stat::minor(st.st_rdev)
        )));
    }
    Ok(fd)
}

/// Hides `path`: directories get an empty read-only tmpfs, anything else a bind of the
/// verified /dev/null fd.
fn mask_path(
    root: std::os::fd::BorrowedFd<'_>,
    null: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<(), RootfsError> {
    let Some(target) = open_existing(root, path)? else {
        return Ok(());
    };
    let st =
        nix::sys::stat::fstat(target.as_fd()).map_err(|e| RootfsError::sys("stat", path, e))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR;
    let tree = if is_dir {
        mountapi::new_fs("tmpfs", &[], options::attr::RDONLY)
    } else {
        mountapi::clone_tree(null, false)
    }
    .map_err(|e| RootfsError::sys("mask", path, e))?;
    mountapi::move_mount(tree.as_fd(), target.as_fd())
        .map_err(|e| RootfsError::sys("mask", path, e))
}

/// Checks the spec's mounts and devices without touching the system (types, options, paths).
pub fn validate(spec: &Spec) -> Result<(), RootfsError> {
    let has_mntns = has_namespace(spec, LinuxNamespaceType::Mount);
    let fs_types = known_filesystems();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let invalid = |reason: String| RootfsError::InvalidMount {
            index,
            destination: m.destination().clone(),
            reason,
        };
        if !m.destination().is_absolute() {
            return Err(invalid("destination is not an absolute path".into()));
        }
        if !has_mntns {
            return Err(invalid(
                "mounts need a mount namespace (none in linux.namespaces)".into(),
            ));
        }
        let raw = m.options().clone().unwrap_or_default();
        let typ = m.typ().as_deref().unwrap_or("");
        let bind = typ == "bind" || options::wants_bind(&raw);
        options::parse(&raw).map_err(|e| invalid(e.to_string()))?;
        mounts::check_proc_destination(&clean_relative(m.destination()), typ, bind, None)
            .map_err(invalid)?;
        if bind {
            if m.source().is_none() {
                return Err(invalid("bind mount without a source".into()));
            }
        } else if typ.is_empty() {
            return Err(invalid("mount type missing".into()));
        } else if !fs_types.iter().any(|t| t == typ) {
            return Err(invalid(format!("unknown mount type {typ:?}")));
        }
    }
    idmap::validate(spec)?;
    let linux = spec.linux().as_ref();
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        devices::from_spec(d).map_err(|reason| RootfsError::InvalidDevice {
            path: d.path().clone(),
            reason,
        })?;
    }
    rootfs_propagation(spec)?;
    if let Some(l) = linux {
        let paths = l
            .masked_paths()
            .iter()
            .flatten()
            .chain(l.readonly_paths().iter().flatten());
        for p in paths {
            if !Path::new(p).is_absolute() {
                return Err(RootfsError::Other(format!(
                    "masked/readonly path {p:?} is not absolute"
                )));
            }
            if !has_mntns {
                return Err(RootfsError::Other(format!(
                    "masked/readonly path {p:?} needs a mount namespace (none in linux.namespaces)"
                )));
            }
        }
    }
    Ok(())
}

/// Filesystem types the kernel has registered (/proc/filesystems), plus common ones that a
/// module provides on first mount.
fn known_filesystems() -> Vec<String> {
    let mut types: Vec<String> = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    for t in [
        "proc",
        "sysfs",
        "tmpfs",
        "devpts",
        "mqueue",
        "cgroup",
        "cgroup2",
        "overlay",
        "ext4",
        "xfs",
        "btrfs",
        "vfat",
        "squashfs",
        "nfs",
        "nfs4",
        "fuse",
        "9p",
        "virtiofs",
        "ramfs",
        "hugetlbfs",
        "binfmt_misc",
        "securityfs",
        "debugfs",
        "tracefs",
        "configfs",
        "fusectl",
        "pstore",
        "bpf",
        "efivarfs",
        "iso9660",
    ] {
        if !types.iter().any(|x| x == t) {
            types.push(t.to_string());
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, SpecBuilder};

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let linux = LinuxBuilder::default()
            .namespaces(vec![LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Mount)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        SpecBuilder::default()
            .mounts(mounts)
            .linux(linux)
            .build()
            .unwrap()
    }

    fn mount(dest: &str, typ: &str, opts: &[&str]) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(typ)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn validate_accepts_containerd_defaults() {
        let s = spec_with(vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
            mount("/etc/hosts", "bind", &["rbind", "rprivate", "ro"]),
        ]);
        validate(&s).unwrap();
    }

    #[test]
    fn validate_names_the_bad_mount() {
        let s = spec_with(vec![
            mount("/proc", "proc", &[]),
            mount("/x", "nosuchfs", &[]),
        ]);
        let e = validate(&s).unwrap_err().to_string();
        assert!(
            e.contains("mount 1") && e.contains("/x") && e.contains("nosuchfs"),
            "{e}"
        );

        let s = spec_with(vec![mount("relative", "tmpfs", &[])]);
        let e = validate(&s).unwrap_err().to_string();
        assert!(
            e.contains("relative") && e.contains("not an absolute"),
            "{e}"
        );

        let s = spec_with(vec![mount("/data", "none", &["rbind", "idmap"])]);
        let e = validate(&s).unwrap_err().to_string();
        assert!(e.contains("idmap"), "{e}");
    }

    #[test]
    fn validate_requires_a_mount_namespace_for_mounts() {
        let s = SpecBuilder::default()
            .mounts(vec![mount("/proc", "proc", &[])])
            .linux(LinuxBuilder::default().namespaces(vec![]).build().unwrap())
            .build()
            .unwrap();
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .contains("mount namespace"));
    }

    #[test]
    fn bundle_is_rootfs_minus_root_path() {
        let s = SpecBuilder::default()
            .root(
                oci_spec::runtime::RootBuilder::default()
                    .path("rootfs")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(
            bundle_dir(&s, Path::new("/b/rootfs")),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(bundle_dir(&s, Path::new("/b/other")), None);
        let s = SpecBuilder::default()
            .root(
                oci_spec::runtime::RootBuilder::default()
                    .path("./images/r")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(
            bundle_dir(&s, Path::new("/b/images/r")),
            Some(PathBuf::from("/b"))
        );
        let s = SpecBuilder::default()
            .root(
                oci_spec::runtime::RootBuilder::default()
                    .path("/abs/r")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(bundle_dir(&s, Path::new("/abs/r")), None);
    }

    #[test]
    fn dev_setup_skipped_for_dev_bind() {
        assert!(needs_dev_setup(&spec_with(vec![mount(
            "/dev",
            "tmpfs",
            &[]
        )])));
        assert!(!needs_dev_setup(&spec_with(vec![mount(
            "/dev/",
            "bind",
            &["rbind"]
        )])));
    }
}
