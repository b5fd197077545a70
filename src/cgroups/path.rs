//! `linux.cgroupsPath` to a path below the hierarchy roots.
//!
//! - absolute (`/a/b`): used as is;
//! - relative (`a/b`): below the hierarchy root, i.e. `/a/b` (not below the runtime's own cgroup:
//!   the shim may sit in a cgroup of its own that the container must not nest under);
//! - systemd form `slice:prefix:name` (what CRI writes with `SystemdCgroup`): there is no systemd
//!   to ask, so it is laid out as systemd would, `<expanded slice>/<prefix>-<name>.scope`, with
//!   `a-b.slice` expanded to `a.slice/a-b.slice` and an empty slice meaning `system.slice`;
//! - empty or absent: `/pelagos/<id>`.
//!
//! `..` components are refused so that a path can never leave the hierarchy.

use super::CgroupError;

/// Parent of cgroups created for containers that give no `cgroupsPath`.
pub const DEFAULT_PARENT: &str = "/pelagos";

pub fn resolve_path(cgroups_path: Option<&str>, id: &str) -> Result<String, CgroupError> {
    let raw = cgroups_path.unwrap_or("").trim();
    if raw.is_empty() {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(CgroupError::InvalidPath {
                path: id.to_string(),
                reason: "container id cannot name a cgroup".into(),
            });
        }
        return Ok(format!("{DEFAULT_PARENT}/{id}"));
    }
    if !raw.starts_with('/') {
        let parts: Vec<&str> = raw.split(':').collect();
        if parts.len() == 3 {
            return systemd_path(raw, parts[0], parts[1], parts[2]);
        }
    }
    clean(raw)
}

/// Normalises a cgroupfs path to `/a/b` form, refusing `..`.
fn clean(raw: &str) -> Result<String, CgroupError> {
    let mut out = String::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(CgroupError::InvalidPath {
                    path: raw.to_string(),
                    reason: "\"..\" components are not allowed".into(),
                })
            }
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        return Err(CgroupError::InvalidPath {
            path: raw.to_string(),
            reason: "the root cgroup cannot be a container's cgroup".into(),
        });
    }
    Ok(out)
}

fn systemd_path(raw: &str, slice: &str, prefix: &str, name: &str) -> Result<String, CgroupError> {
    let bad = |reason: String| CgroupError::InvalidPath {
        path: raw.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("systemd form \"slice:prefix:name\" needs a name".into()));
    }
    for (what, v) in [("slice", slice), ("prefix", prefix), ("name", name)] {
        if v.contains('/') || v == ".." || v == "." {
            return Err(bad(format!("systemd {what} {v:?} is not a unit name")));
        }
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice).map_err(bad)?;
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    if path != "/" {
        path.push('/');
    }
    path.push_str(&unit);
    Ok(path)
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`, as systemd nests slices by name.
fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("systemd slice {slice:?} must end in \".slice\""));
    };
    if stem == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for comp in stem.split('-') {
        if comp.is_empty() {
            return Err(format!("systemd slice {slice:?} has an empty component"));
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(comp);
        path.push_str(".slice");
        prefix.push_str(comp);
        prefix.push('-');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths() {
        assert_eq!(resolve_path(Some("/a/b"), "x").unwrap(), "/a/b");
        assert_eq!(resolve_path(Some("/a//b/./"), "x").unwrap(), "/a/b");
        assert_eq!(resolve_path(Some("a/b"), "x").unwrap(), "/a/b");
        assert_eq!(resolve_path(None, "x").unwrap(), "/pelagos/x");
        assert_eq!(resolve_path(Some(""), "x").unwrap(), "/pelagos/x");
        assert_eq!(
            resolve_path(Some("/default/c1"), "c1").unwrap(),
            "/default/c1"
        );
    }

    #[test]
    fn dotdot_and_root_rejected() {
        let e = resolve_path(Some("/a/../../etc"), "x").unwrap_err();
        assert!(e.to_string().contains("/a/../../etc"), "{e}");
        assert!(resolve_path(Some("../x"), "x").is_err());
        assert!(resolve_path(Some("/"), "x").is_err());
        assert!(resolve_path(None, "../x").is_err());
        assert!(resolve_path(Some("system.slice:cri:../x"), "x").is_err());
    }

    #[test]
    fn systemd_form() {
        assert_eq!(
            resolve_path(
                Some("kubepods-besteffort-pod123.slice:cri-containerd:abc"),
                "abc"
            )
            .unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice/cri-containerd-abc.scope"
        );
        assert_eq!(
            resolve_path(Some(":docker:abc"), "abc").unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            resolve_path(Some("-.slice::abc"), "abc").unwrap(),
            "/abc.scope"
        );
        assert_eq!(
            resolve_path(Some("user.slice:x:sub.slice"), "abc").unwrap(),
            "/user.slice/sub.slice"
        );
        assert!(resolve_path(Some("nodot:x:abc"), "abc").is_err());
        assert!(resolve_path(Some("a--b.slice:x:abc"), "abc").is_err());
    }

    #[test]
    fn absolute_path_with_colons_is_a_path() {
        assert_eq!(resolve_path(Some("/a:b:c"), "x").unwrap(), "/a:b:c");
    }
}
