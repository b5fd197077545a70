//! Resolving paths inside the container rootfs without escaping it: symlinks are followed as
//! if the rootfs were `/` (openat2 RESOLVE_IN_ROOT), and missing mount points are created
//! through directory fds obtained the same way.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Lexically cleans an absolute container path into a path relative to the rootfs: drops
/// `.`, resolves `..` (never above the root) and duplicate slashes. `/` becomes `.`.
pub fn clean_relative(path: &Path) -> PathBuf {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

/// Opens `rel` under `root` as an O_PATH fd, resolving symlinks inside `root`. `..` and
/// absolute symlinks cannot leave `root`; magic links (/proc/self/fd/...) are refused.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &Path, extra: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | extra)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root, rel, how) {
            // openat2 asks to retry when a rename raced with RESOLVE_IN_ROOT's ".." checks.
            Err(Errno::EAGAIN) => continue,
            r => return r,
        }
    }
}

/// What to create at a missing mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Opens `rel` under `root` (as [`open_in_root`]), creating it and any missing parent
/// directories (0755) first. The last component is created as `kind` (files 0644, empty).
/// A dangling symlink on the way gets its target created inside the root, as runc's
/// MkdirAllInRoot does. Errors carry the errno and the relative path that failed.
pub fn ensure_in_root(
    root: BorrowedFd<'_>,
    rel: &Path,
    kind: Kind,
) -> Result<OwnedFd, (Errno, PathBuf)> {
    ensure(root, rel, kind, 0)
}

/// Linux's own limit on nested symlinks in one lookup.
const MAX_SYMLINKS: u32 = 40;

fn ensure(
    root: BorrowedFd<'_>,
    rel: &Path,
    kind: Kind,
    depth: u32,
) -> Result<OwnedFd, (Errno, PathBuf)> {
    if depth > MAX_SYMLINKS {
        return Err((Errno::ELOOP, rel.to_path_buf()));
    }
    match open_in_root(root, rel, OFlag::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err((e, rel.to_path_buf())),
    }
    let comps: Vec<Component> = rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect();
    if let Some(pos) = comps.iter().position(|c| *c == Component::ParentDir) {
        // ".." means the parent of the real directory, which after a symlink is not the
        // lexical parent: resolve the prefix, then continue from its real location.
        let prefix: PathBuf = comps[..pos].iter().collect();
        let prefix = if prefix.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            prefix
        };
        let pfd = ensure(root, &prefix, Kind::Dir, depth)?;
        let real = real_relative(root, pfd.as_fd()).map_err(|e| (e, prefix.clone()))?;
        let mut next = real.parent().map(Path::to_path_buf).unwrap_or_default();
        next.extend(&comps[pos + 1..]);
        let next = if next.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            next
        };
        return ensure(root, &next, kind, depth);
    }
    let name = match rel.file_name() {
        Some(n) => n,
        None => return Err((Errno::ENOENT, rel.to_path_buf())),
    };
    let parent_rel = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // An O_PATH directory fd is a valid dirfd for mkdirat/openat.
    let dir = ensure(root, &parent_rel, Kind::Dir, depth)?;
    let created = match kind {
        Kind::Dir => nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)),
        Kind::File => nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match created {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err((e, rel.to_path_buf())),
    }
    match open_in_root(root, rel, OFlag::empty()) {
        Err(Errno::ENOENT) => {}
        r => return r.map_err(|e| (e, rel.to_path_buf())),
    }
    // Still missing after EEXIST: `name` is a dangling symlink. Create its target, resolved
    // inside the root, then look the path up again.
    let target = nix::fcntl::readlinkat(dir.as_fd(), name).map_err(|e| (e, rel.to_path_buf()))?;
    let target = Path::new(&target);
    let base = if target.is_absolute() {
        PathBuf::new()
    } else {
        real_relative(root, dir.as_fd()).map_err(|e| (e, parent_rel.clone()))?
    };
    ensure(root, &base.join(target), kind, depth + 1)?;
    open_in_root(root, rel, OFlag::empty()).map_err(|e| (e, rel.to_path_buf()))
}

/// Where `fd` really is, relative to `root` (both must be inside the same tree).
fn real_relative(root: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<PathBuf, Errno> {
    let r = nix::fcntl::readlink(&fd_path(root))?;
    let f = nix::fcntl::readlink(&fd_path(fd))?;
    let rel = Path::new(&f)
        .strip_prefix(Path::new(&r))
        .map_err(|_| Errno::EXDEV)?;
    Ok(rel.to_path_buf())
}

/// The /proc path naming an open fd, for syscalls that only take paths (mount(2)). The
/// kernel resolves it to the exact file the fd refers to, so no path lookup is repeated.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_never_leaves_root() {
        assert_eq!(clean_relative(Path::new("/proc")), PathBuf::from("proc"));
        assert_eq!(clean_relative(Path::new("/")), PathBuf::from("."));
        assert_eq!(
            clean_relative(Path::new("/../../etc//x/./y")),
            PathBuf::from("etc/x/y")
        );
        assert_eq!(clean_relative(Path::new("/a/b/../c")), PathBuf::from("a/c"));
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        struct Tmp(PathBuf);
        impl Drop for Tmp {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let guard =
            Tmp(std::env::temp_dir().join(format!("pelagos-resolve-{}", std::process::id())));
        let tmp = &guard.0;
        let root = tmp.join("root");
        let outside = tmp.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        let rootfd =
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();

        ensure_in_root(rootfd.as_fd(), Path::new("escape/sub"), Kind::Dir).unwrap();
        ensure_in_root(rootfd.as_fd(), Path::new("up/file"), Kind::File).unwrap();
        std::os::unix::fs::symlink("rel/../target", root.join("dangling")).unwrap();
        ensure_in_root(rootfd.as_fd(), Path::new("dangling/x"), Kind::File).unwrap();
        assert!(root.join("rel").is_dir() && root.join("target/x").is_file());
        std::os::unix::fs::symlink("/../../abs/./y", root.join("dangling_abs")).unwrap();
        ensure_in_root(rootfd.as_fd(), Path::new("dangling_abs/z"), Kind::Dir).unwrap();
        assert!(root.join("abs/y/z").is_dir());
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            ensure_in_root(rootfd.as_fd(), Path::new("loop/x"), Kind::Dir)
                .unwrap_err()
                .0,
            Errno::ELOOP
        );
        // The absolute symlink target was re-rooted: the directory exists inside the root.
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("sub")
            .is_dir());
        assert!(!outside.join("sub").exists());
        assert!(root.join("file").is_file());
        assert!(!tmp.join("file").exists());
    }
}
