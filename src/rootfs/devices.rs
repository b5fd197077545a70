//! /dev inside the container: default and spec device nodes (mknod, or a bind of the host
//! node inside a user namespace, where mknod is refused), the /dev/fd and stdio symlinks,
//! and /dev/ptmx pointing at the devpts instance.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::resolve::{clean_relative, ensure_in_root, fd_path, Kind};
use super::RootfsError;

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices every container gets (runc's AllowedDevices that have a node).
pub fn defaults() -> Vec<Device> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| Device {
        path: PathBuf::from(p),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Converts a spec device; the error names what is wrong with it.
pub fn from_spec(d: &LinuxDevice) -> Result<Device, String> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err("type \"a\" is not a device node type (c, b, u or p)".into())
        }
    };
    if !d.path().is_absolute() {
        return Err("path is not absolute".into());
    }
    if clean_relative(d.path()) == Path::new(".") {
        return Err("path is the root".into());
    }
    if kind != SFlag::S_IFIFO && (d.major() < 0 || d.minor() < 0) {
        return Err(format!("negative major/minor {}:{}", d.major(), d.minor()));
    }
    let mode = d.file_mode().unwrap_or(0o666);
    if mode & !0o7777 != 0 {
        return Err(format!(
            "fileMode {mode:#o} has bits other than permissions"
        ));
    }
    Ok(Device {
        path: d.path().clone(),
        kind,
        major: d.major().max(0) as u64,
        minor: d.minor().max(0) as u64,
        mode,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// The default devices with spec devices added (a spec device replaces a default one at the
/// same path).
pub fn device_list(spec_devices: &[LinuxDevice]) -> Result<Vec<Device>, RootfsError> {
    let mut list = defaults();
    for d in spec_devices {
        let dev = from_spec(d).map_err(|reason| RootfsError::InvalidDevice {
            path: d.path().clone(),
            reason,
        })?;
        let dev_rel = clean_relative(&dev.path);
        list.retain(|x| clean_relative(&x.path) != dev_rel);
        list.push(dev);
    }
    Ok(list)
}

/// Creates every device of `list` under `root`.
pub fn create_all(
    root: BorrowedFd<'_>,
    list: &[Device],
    in_userns: bool,
) -> Result<(), RootfsError> {
    // The spec's fileMode is exact: mknod must not be filtered by the helper's umask.
    let old = nix::sys::stat::umask(Mode::empty());
    let result = list.iter().try_for_each(|d| create(root, d, in_userns));
    nix::sys::stat::umask(old);
    result
}

fn create(root: BorrowedFd<'_>, d: &Device, in_userns: bool) -> Result<(), RootfsError> {
    let rel = clean_relative(&d.path);
    if in_userns {
        // mknod is refused in a user namespace: bind the host's node over an empty file.
        let target = ensure_in_root(root, &rel, Kind::File)
            .map_err(|(e, p)| RootfsError::sys("create device mount point", p, e))?;
        return nix::mount::mount(
            Some(&d.path),
            &fd_path(target.as_fd()),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            RootfsError::sys(format!("bind host device {}", d.path.display()), &d.path, e)
        });
    }
    let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let parent_rel = if parent_rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent_rel
    };
    let parent = ensure_in_root(root, &parent_rel, Kind::Dir)
        .map_err(|(e, p)| RootfsError::sys("create device directory", p, e))?;
    let name = rel
        .file_name()
        .expect("validated: device path is not the root");
    let dev = nix::sys::stat::makedev(d.major, d.minor);
    match nix::sys::stat::mknodat(
        parent.as_fd(),
        name,
        d.kind,
        Mode::from_bits_truncate(d.mode),
        dev,
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            // runc keeps an existing node (e.g. a bind-mounted /dev/null).
            log::debug!("device {} already exists, keeping it", d.path.display());
            return Ok(());
        }
        Err(e) => return Err(RootfsError::sys("mknod", &d.path, e)),
    }
    nix::unistd::fchownat(
        parent.as_fd(),
        name,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| RootfsError::sys(format!("chown {}:{}", d.uid, d.gid), &d.path, e))
}

/// /dev/fd, /dev/std{in,out,err}, /dev/core (when the host has /proc/kcore) and /dev/ptmx.
pub fn create_links(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let dev = ensure_in_root(root, Path::new("dev"), Kind::Dir)
        .map_err(|(e, p)| RootfsError::sys("create directory", p, e))?;
    let mut links = vec![
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (name, target) in links {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(RootfsError::sys(
                    format!("symlink to {target}"),
                    Path::new("/dev").join(name),
                    e,
                ))
            }
        }
    }
    // /dev/ptmx must be the devpts instance's ptmx so ptys are allocated in the container's
    // devpts (newinstance), not the host's.
    match nix::unistd::unlinkat(dev.as_fd(), "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(RootfsError::sys("remove", "/dev/ptmx", e)),
    }
    nix::unistd::symlinkat("pts/ptmx", dev.as_fd(), "ptmx")
        .map_err(|e| RootfsError::sys("symlink to pts/ptmx", "/dev/ptmx", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceBuilder;

    #[test]
    fn spec_device_replaces_default() {
        let d = LinuxDeviceBuilder::default()
            .path("/dev/null")
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .file_mode(0o600u32)
            .build()
            .unwrap();
        let list = device_list(&[d]).unwrap();
        let nulls: Vec<_> = list
            .iter()
            .filter(|x| x.path == Path::new("/dev/null"))
            .collect();
        assert_eq!(nulls.len(), 1);
        assert_eq!(nulls[0].mode, 0o600);
        assert_eq!(list.len(), defaults().len());
    }

    #[test]
    fn bad_devices_are_refused() {
        let all = LinuxDeviceBuilder::default()
            .path("/dev/x")
            .typ(LinuxDeviceType::A)
            .build()
            .unwrap();
        let err = device_list(&[all]).unwrap_err().to_string();
        assert!(err.contains("/dev/x") && err.contains("\"a\""), "{err}");
        let rel = LinuxDeviceBuilder::default()
            .path("dev/x")
            .typ(LinuxDeviceType::C)
            .build()
            .unwrap();
        assert!(device_list(&[rel])
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
    }
}
