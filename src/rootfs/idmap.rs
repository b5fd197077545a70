//! Bind mounts the runtime makes for the helper: idmapped ones (`idmap`/`ridmap` options, mount
//! `uidMappings`/`gidMappings`), and every bind of a container in a user namespace. Runs in the
//! runtime, not in the helper: idmapping a mount needs privilege over the source's filesystem,
//! and a source may not even be reachable (a 0700 state directory of containerd's) once the
//! helper is in the container's user namespace. So the runtime makes each one a detached tree
//! here (open_tree, then mount_setattr(MOUNT_ATTR_IDMAP) for idmapped ones) and passes its fd to
//! the helper, which moves it onto the destination (runc opens such sources in its parent too).
//!
//! The ids come from the mount's own mappings, else the container's (`linux.uidMappings`), else
//! the user namespace it joins. A mapping the runtime has no namespace for is made in a
//! throwaway process that only waits to be killed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};

use super::mountapi;
use super::options::{self, Idmap};
use crate::namespaces;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("mount {index} ({}): {reason}", destination.display())]
    Invalid {
        index: usize,
        destination: PathBuf,
        reason: String,
    },
    #[error("mount {index} ({}): bind {}: {step}: {source}{hint}", destination.display(), src.display())]
    Sys {
        index: usize,
        destination: PathBuf,
        src: PathBuf,
        step: &'static str,
        source: Errno,
        hint: &'static str,
    },
    #[error("user namespace for an idmapped mount: {step}: {source}")]
    Userns {
        step: &'static str,
        source: std::io::Error,
    },
}

/// uid and gid mappings.
type Maps = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

/// How a mount is idmapped, if it is.
fn wanted(m: &Mount) -> Result<Option<(Idmap, bool)>, String> {
    let raw = m.options().clone().unwrap_or_default();
    let opts = options::parse(&raw).map_err(|e| e.to_string())?;
    let has_maps = m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
        || m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty());
    let idmap = match (opts.idmap, has_maps) {
        (Idmap::None, false) => return Ok(None),
        // Mappings alone make an idmapped mount (runc), of the top mount only.
        (Idmap::None, true) => Idmap::Top,
        (i, _) => i,
    };
    let typ = m.typ().as_deref().unwrap_or("");
    if typ != "bind" && !opts.is_bind() {
        return Err("idmap applies to bind mounts only".into());
    }
    Ok(Some((idmap, opts.is_recursive_bind())))
}

/// Checks the idmapped mounts of `spec` without touching anything: bind mounts only, uid and
/// gid mappings given together, and the container in a user namespace of its own.
pub fn validate(spec: &Spec) -> Result<(), IdmapError> {
    let in_userns = namespaces::plan(spec)
        .map(|p| p.in_userns())
        .unwrap_or(false);
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let invalid = |reason: String| IdmapError::Invalid {
            index,
            destination: m.destination().clone(),
            reason,
        };
        if wanted(m).map_err(invalid)?.is_none() {
            continue;
        }
        let uid = m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty());
        let gid = m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty());
        if uid != gid {
            return Err(invalid(
                "uidMappings and gidMappings must be given together".into(),
            ));
        }
        if !in_userns {
            return Err(invalid(
                "an idmapped mount needs the container in a user namespace".into(),
            ));
        }
    }
    Ok(())
}

/// The detached trees of `spec`'s bind mounts the runtime makes (see the module doc), by mount
/// index. `in_userns`: the container has a user namespace of its own (created or joined);
/// `joined_userns` is the one it joins, if any; `bundle` the base of relative sources.
pub fn prepare(
    spec: &Spec,
    bundle: &Path,
    in_userns: bool,
    joined_userns: Option<BorrowedFd<'_>>,
) -> Result<Vec<(usize, OwnedFd)>, IdmapError> {
    validate(spec)?;
    let linux = spec.linux().as_ref();
    let own_uid = linux
        .and_then(|l| l.uid_mappings().clone())
        .unwrap_or_default();
    let own_gid = linux
        .and_then(|l| l.gid_mappings().clone())
        .unwrap_or_default();
    // One namespace per distinct mapping of this create.
    let mut made: Vec<(Maps, OwnedFd)> = Vec::new();
    let mut out = Vec::new();
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let raw = m.options().clone().unwrap_or_default();
        let plain_bind = m.typ().as_deref() == Some("bind") || options::wants_bind(&raw);
        let (idmap, rbind) = match wanted(m).expect("validated") {
            Some(w) => w,
            None if in_userns && plain_bind => (
                Idmap::None,
                options::parse(&raw).is_ok_and(|o| o.flags & libc::MS_REC != 0),
            ),
            None => continue,
        };
        let destination = m.destination().clone();
        let src = match m.source() {
            Some(s) if s.is_absolute() => s.clone(),
            Some(s) => bundle.join(s),
            None => {
                return Err(IdmapError::Invalid {
                    index,
                    destination,
                    reason: "bind mount without a source".into(),
                })
            }
        };
        let sys_err = |step, source: Errno, hint| IdmapError::Sys {
            index,
            destination: destination.clone(),
            src: src.clone(),
            step,
            source,
            hint,
        };
        let tree = mountapi::clone_path(&src, rbind).map_err(|e| sys_err("open_tree", e, ""))?;
        if idmap == Idmap::None {
            out.push((index, tree));
            continue;
        }
        let maps = match (m.uid_mappings(), m.gid_mappings()) {
            (Some(u), Some(g)) if !u.is_empty() => Some((u.clone(), g.clone())),
            _ if !own_uid.is_empty() => Some((own_uid.clone(), own_gid.clone())),
            _ => None,
        };
        let userns = match maps {
            Some(key) => {
                if let Some(i) = made.iter().position(|(k, _)| *k == key) {
                    made[i].1.as_fd()
                } else {
                    let fd = user_namespace(&key.0, &key.1)?;
                    made.push((key, fd));
                    made.last().expect("pushed").1.as_fd()
                }
            }
            None => joined_userns.ok_or_else(|| IdmapError::Invalid {
                index,
                destination: destination.clone(),
                reason: "no id mapping: neither the mount nor the container has one".into(),
            })?,
        };
        mountapi::set_idmap(tree.as_fd(), userns, idmap == Idmap::Recursive).map_err(|e| {
            let hint = match e {
                Errno::EINVAL => {
                    " (the filesystem or the kernel cannot idmap it: Linux 5.12+ and a \
                     filesystem with idmapped-mount support are needed)"
                }
                Errno::ENOSYS => " (the kernel has no mount_setattr: Linux 5.12+ is needed)",
                _ => "",
            };
            sys_err("mount_setattr(MOUNT_ATTR_IDMAP)", e, hint)
        })?;
        out.push((index, tree));
    }
    Ok(out)
}

/// A user namespace with the given maps, owned by the caller. Made by a child cloned into it
/// that only waits; its maps are written from here, its namespace opened, and it is killed.
/// Safe to call from a multi-threaded process.
pub fn user_namespace(
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<OwnedFd, IdmapError> {
    let err = |step| move |source| IdmapError::Userns { step, source };
    let mut pidfd: libc::c_int = -1;
    let flags = (libc::CLONE_NEWUSER | libc::CLONE_PIDFD) as u64;
    let mut args = sys::CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: the child only calls pause(2) and _exit(2), both async-signal-safe, so this is
    // sound in a multi-threaded runtime.
    let pid = unsafe { sys::clone3(&mut args) };
    if pid == 0 {
        loop {
            // SAFETY: pause only blocks until a signal; the parent kills us with SIGKILL.
            unsafe { libc::pause() };
        }
    }
    if pid < 0 {
        return Err(err("clone")(std::io::Error::last_os_error()));
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd) };
    let result = (|| {
        for (file, maps) in [("uid_map", uid), ("gid_map", gid)] {
            std::fs::write(
                format!("/proc/{pid}/{file}"),
                namespaces::format_id_map(maps),
            )
            .map_err(err("write the id maps"))?;
        }
        std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(err("open the namespace"))
    })();
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    crate::reaper::wait(pid, None);
    log::debug!(
        "idmap: user namespace of pid {pid} (fd {:?})",
        pidfd.as_raw_fd()
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn base(mount: serde_json::Value, userns: bool) -> Spec {
        let mut namespaces = vec![serde_json::json!({"type": "mount"})];
        let mut linux = serde_json::json!({});
        if userns {
            namespaces.push(serde_json::json!({"type": "user"}));
            linux["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            linux["gidMappings"] = linux["uidMappings"].clone();
        }
        linux["namespaces"] = serde_json::json!(namespaces);
        spec(serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "mounts": [mount],
            "linux": linux
        }))
    }

    #[test]
    fn which_mounts_are_idmapped() {
        let m = |v| serde_json::from_value::<Mount>(v).unwrap();
        let plain = m(
            serde_json::json!({"destination": "/d", "type": "bind", "source": "/s",
                                         "options": ["rbind"]}),
        );
        assert_eq!(wanted(&plain).unwrap(), None);
        let top = m(
            serde_json::json!({"destination": "/d", "type": "bind", "source": "/s",
                                       "options": ["rbind", "idmap"]}),
        );
        assert_eq!(wanted(&top).unwrap(), Some((Idmap::Top, true)));
        let rec = m(serde_json::json!({"destination": "/d", "source": "/s",
                                       "options": ["bind", "ridmap"]}));
        assert_eq!(wanted(&rec).unwrap(), Some((Idmap::Recursive, false)));
        let maps = m(
            serde_json::json!({"destination": "/d", "type": "bind", "source": "/s",
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}),
        );
        assert_eq!(wanted(&maps).unwrap(), Some((Idmap::Top, false)));
        let tmpfs = m(
            serde_json::json!({"destination": "/d", "type": "tmpfs", "source": "t",
                                         "options": ["idmap"]}),
        );
        assert!(wanted(&tmpfs).unwrap_err().contains("bind mounts only"));
    }

    #[test]
    fn validation_names_the_mount_and_the_reason() {
        let idmapped = serde_json::json!({"destination": "/data", "type": "bind",
                                          "source": "/s", "options": ["rbind", "idmap"]});
        assert!(validate(&base(idmapped.clone(), true)).is_ok());
        let e = validate(&base(idmapped, false)).unwrap_err().to_string();
        assert!(
            e.contains("mount 0 (/data)") && e.contains("user namespace"),
            "{e}"
        );
        let half = serde_json::json!({"destination": "/data", "type": "bind", "source": "/s",
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]});
        let e = validate(&base(half, true)).unwrap_err().to_string();
        assert!(e.contains("together"), "{e}");
    }
}
