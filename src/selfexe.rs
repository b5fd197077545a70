//! The setup helper's executable. By default it is this process's own binary seen through a
//! detached read-only bind mount, made once per process: a container that could write through
//! `/proc/<helper>/exe` would otherwise overwrite the host binary (CVE-2019-5736); through that
//! mount the write fails with EROFS. The mount is attached to no namespace (nothing shows in
//! mountinfo) and lives as long as its fd. It costs nothing, where a sealed memfd copy (the
//! fallback when the kernel lacks open_tree/mount_setattr or refuses them) holds a private copy
//! of the binary per process. Either way the helper is executed by fd (execveat with
//! AT_EMPTY_PATH), so no path lookup happens after clone.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;

use crate::rootfs::mountapi;
use crate::sys;

const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[derive(Debug, thiserror::Error)]
pub enum SelfExeError {
    #[error("helper binary {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("sealed copy of /proc/self/exe: {step}: {source}")]
    Seal {
        step: &'static str,
        source: io::Error,
    },
}

/// An fd of the helper binary, ready for execveat.
#[derive(Debug)]
pub enum HelperExe {
    /// The process-wide sealed copy.
    Sealed(&'static OwnedFd),
    /// A binary named by path, opened O_PATH.
    Path(OwnedFd),
}

impl HelperExe {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            HelperExe::Sealed(fd) => fd.as_fd(),
            HelperExe::Path(fd) => fd.as_fd(),
        }
    }
}

static SEALED: OnceLock<OwnedFd> = OnceLock::new();

/// The helper for `helper` (a path), or the sealed copy of this binary when `None`.
pub fn open(helper: Option<&Path>) -> Result<HelperExe, SelfExeError> {
    match helper {
        Some(path) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map(|f| HelperExe::Path(f.into()))
            .map_err(|source| SelfExeError::Open {
                path: path.to_path_buf(),
                source,
            }),
        None => sealed().map(HelperExe::Sealed),
    }
}

/// Makes the sealed copy in a background thread, so that the first container does not wait
/// for the copy of the binary. For long-lived embedders (the shim) at start-up.
pub fn warm_up() {
    let spawned = std::thread::Builder::new()
        .name("pelagos-selfexe".into())
        .spawn(|| {
            if let Err(e) = sealed() {
                log::warn!("{e}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("sealed copy of /proc/self/exe: spawn thread: {e}");
    }
}

/// The sealed copy of /proc/self/exe, made on first use.
pub fn sealed() -> Result<&'static OwnedFd, SelfExeError> {
    if let Some(fd) = SEALED.get() {
        return Ok(fd);
    }
    // One copy at a time: a second caller waits for the first instead of copying again.
    static MAKING: Mutex<()> = Mutex::new(());
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = SEALED.get() {
        return Ok(fd);
    }
    let fd = match readonly_view(Path::new("/proc/self/exe")) {
        Ok(fd) => fd,
        Err(e) => {
            log::debug!("read-only view of /proc/self/exe: {e}; using a sealed copy");
            make_sealed_copy()?
        }
    };
    Ok(SEALED.get_or_init(|| fd))
}

/// A detached bind mount of the file at `path`, made read-only.
fn readonly_view(path: &Path) -> Result<OwnedFd, SelfExeError> {
    let fail = |step| {
        move |source: Errno| SelfExeError::Seal {
            step,
            source: source.into(),
        }
    };
    let exe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| SelfExeError::Seal {
            step: "open",
            source,
        })?;
    let view = mountapi::clone_tree(exe.as_fd(), false).map_err(fail("open_tree"))?;
    mountapi::set_attr(view.as_fd(), MOUNT_ATTR_RDONLY, 0, false)
        .map_err(fail("mount_setattr read-only"))?;
    Ok(view)
}

fn make_sealed_copy() -> Result<OwnedFd, SelfExeError> {
    let seal = |step| move |source| SelfExeError::Seal { step, source };
    let mut exe = File::open("/proc/self/exe").map_err(seal("open"))?;
    let mut mem =
        File::from(sys::memfd_create_exec(c"pelagos-init").map_err(seal("memfd_create"))?);
    io::copy(&mut exe, &mut mem).map_err(seal("copy"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our own memfd only sets seal bits.
    if unsafe { libc::fcntl(mem.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(seal("seal")(io::Error::last_os_error()));
    }
    // A writable fd makes execve fail with ETXTBSY: keep only a read-only reopening.
    let ro = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", mem.as_raw_fd()))
        .map_err(seal("reopen read-only"))?;
    Ok(ro.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_view_is_cached_identical_and_not_writable() {
        let a = sealed().unwrap();
        let b = sealed().unwrap();
        assert_eq!(a.as_raw_fd(), b.as_raw_fd());
        let path = format!("/proc/self/fd/{}", a.as_raw_fd());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read("/proc/self/exe").unwrap()
        );
        // While it runs the kernel says ETXTBSY; the mount is what holds once it stopped.
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
            "{err}"
        );
    }

    #[test]
    fn readonly_view_refuses_writes_to_an_idle_file() {
        let file = std::env::temp_dir().join(format!("pelagos-view-{}", std::process::id()));
        std::fs::write(&file, b"binary").unwrap();
        let view = readonly_view(&file).unwrap();
        let path = format!("/proc/self/fd/{}", view.as_raw_fd());
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_err();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        // Reading through the view still works.
        assert_eq!(std::fs::read(&path).unwrap(), b"binary");
    }

    #[test]
    fn sealed_copy_refuses_writes() {
        let fd = make_sealed_copy().unwrap();
        // SAFETY: F_GET_SEALS only reads.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        assert_eq!(seals & libc::F_SEAL_SEAL, libc::F_SEAL_SEAL);
    }

    #[test]
    fn missing_helper_path_is_named() {
        let err = open(Some(Path::new("/nonexistent/helper"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/helper"), "{err}");
    }
}
