//! The fd-based mount API (open_tree, move_mount, mount_setattr, fsopen/fsmount; Linux 5.2+,
//! mount_setattr 5.12+). Used after pivot_root, where /proc/self/fd may not exist, and where
//! a mount must land on exactly the file an fd was verified to be.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn empty() -> &'static std::ffi::CStr {
    c""
}

fn owned(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(ret)?;
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A detached copy of the mount tree at `fd` (the file itself when `fd` is not a mount root):
/// open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH [| AT_RECURSIVE]).
pub fn clone_tree(fd: BorrowedFd<'_>, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd; no memory is shared.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), empty().as_ptr(), flags) })
}

/// A detached copy of the mount tree at `path` (followed as a bind mount follows its source).
pub fn clone_path(path: &std::path::Path, recursive: bool) -> Result<OwnedFd, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the NUL-terminated path, which outlives the call.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// Attaches the detached mount `from` on top of the file or directory `to`.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: move_mount only reads the two NUL-terminated empty paths.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty().as_ptr(),
            to.as_raw_fd(),
            empty().as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// mount_setattr on the mount at `fd` (attached or detached), recursively when asked.
pub fn set_attr(fd: BorrowedFd<'_>, set: u64, clr: u64, recursive: bool) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(fd, &attr, recursive)
}

/// Idmaps the detached mount at `fd` with the ids of user namespace `userns`
/// (MOUNT_ATTR_IDMAP), with its submounts when `recursive`.
pub fn set_idmap(fd: BorrowedFd<'_>, userns: BorrowedFd<'_>, recursive: bool) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(fd, &attr, recursive)
}

fn mount_setattr(fd: BorrowedFd<'_>, attr: &MountAttr, recursive: bool) -> Result<(), Errno> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the kernel reads `size_of::<MountAttr>()` bytes from `attr`, which lives across
    // the call, and the empty NUL-terminated path.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty().as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// A new detached filesystem instance of `fstype` with string options `opts` and
/// MOUNT_ATTR_* `attrs`, ready for [`move_mount`].
pub fn new_fs(fstype: &str, opts: &[(&str, &str)], attrs: u64) -> Result<OwnedFd, Errno> {
    let fstype = CString::new(fstype).map_err(|_| Errno::EINVAL)?;
    // SAFETY: fsopen reads the NUL-terminated filesystem name and returns a new fd.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (k, v) in opts {
        let k = CString::new(*k).map_err(|_| Errno::EINVAL)?;
        let v = CString::new(*v).map_err(|_| Errno::EINVAL)?;
        // SAFETY: fsconfig reads the two NUL-terminated strings, which outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        Errno::result(ret)?;
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(ret)?;
    // SAFETY: fsmount takes the fs context fd and flags only, returning a new fd.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// MOUNT_ATTR_* equivalents of the per-mount MS_* flags in `flags` (others are ignored).
pub fn ms_to_attr(flags: libc::c_ulong) -> u64 {
    use super::options::attr;
    let mut out = 0;
    for (m, a) in [
        (libc::MS_RDONLY, attr::RDONLY),
        (libc::MS_NOSUID, attr::NOSUID),
        (libc::MS_NODEV, attr::NODEV),
        (libc::MS_NOEXEC, attr::NOEXEC),
        (libc::MS_NOATIME, attr::NOATIME),
        (libc::MS_STRICTATIME, attr::STRICTATIME),
        (libc::MS_NODIRATIME, attr::NODIRATIME),
        (libc::MS_NOSYMFOLLOW, attr::NOSYMFOLLOW),
    ] {
        if flags & m != 0 {
            out |= a;
        }
    }
    out
}
