//! Linux namespaces of a container: which ones the clone creates, which ones the setup helper
//! unshares or joins afterwards and whether it must fork again; opening and type-checking the
//! namespace files to join; writing uid/gid maps.
//!
//! Why some namespaces wait for the helper: a cgroup namespace takes its root from the cgroup
//! the process is in when it unshares, so it comes after the cgroup join; unshare/setns of pid
//! and time namespaces only affect children, so they need one more fork; and namespaces created
//! after joining a user namespace must be owned by it, so nothing is created at clone time then.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("namespaces: {0} namespace listed twice")]
    Duplicate(Kind),
    #[error("namespaces: {kind} namespace path {path}: {source}")]
    Open {
        kind: Kind,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespaces: {path} is a {actual} namespace, not {kind}")]
    WrongType {
        kind: Kind,
        path: PathBuf,
        actual: String,
    },
    #[error("namespaces: {kind} namespace path {path} is not a namespace file")]
    NotANamespace { kind: Kind, path: PathBuf },
    #[error("namespaces: a new user namespace needs linux.uidMappings and linux.gidMappings")]
    MissingMappings,
    #[error("namespaces: linux.uidMappings/gidMappings need a user namespace (none in linux.namespaces)")]
    MappingsWithoutUserns,
    /// A joined user namespace whose maps differ from the spec's.
    #[error(
        "namespaces: the joined user namespace maps {file} as {actual:?}, the spec says {wanted:?}"
    )]
    MapsDiffer {
        file: &'static str,
        actual: String,
        wanted: String,
    },
    #[error("namespaces: write {path}: {source}")]
    WriteMap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespaces: {op} {kind}: {source}")]
    Syscall {
        op: &'static str,
        kind: String,
        source: std::io::Error,
    },
}

/// A namespace type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
    Time,
}

impl Kind {
    /// In joining order: the user namespace first, so the others are joined with its privileges.
    pub const ALL: [Kind; 8] = [
        Kind::User,
        Kind::Mount,
        Kind::Pid,
        Kind::Net,
        Kind::Ipc,
        Kind::Uts,
        Kind::Cgroup,
        Kind::Time,
    ];

    /// The CLONE_NEW* flag.
    pub fn flag(self) -> libc::c_int {
        match self {
            Kind::User => libc::CLONE_NEWUSER,
            Kind::Mount => libc::CLONE_NEWNS,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::Net => libc::CLONE_NEWNET,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            Kind::Time => libc::CLONE_NEWTIME,
        }
    }

    /// The name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Mount => "mnt",
            Kind::Pid => "pid",
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
            Kind::Cgroup => "cgroup",
            Kind::Time => "time",
        }
    }

    pub fn from_oci(t: LinuxNamespaceType) -> Kind {
        match t {
            LinuxNamespaceType::User => Kind::User,
            LinuxNamespaceType::Mount => Kind::Mount,
            LinuxNamespaceType::Pid => Kind::Pid,
            LinuxNamespaceType::Network => Kind::Net,
            LinuxNamespaceType::Ipc => Kind::Ipc,
            LinuxNamespaceType::Uts => Kind::Uts,
            LinuxNamespaceType::Cgroup => Kind::Cgroup,
            LinuxNamespaceType::Time => Kind::Time,
        }
    }

    fn from_flag(flag: libc::c_int) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.flag() == flag)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proc_name())
    }
}

/// How the container gets its user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Userns {
    /// None: the host's.
    Host,
    /// Created by the clone; the runtime writes the maps before the helper runs.
    AtClone,
    /// Unshared by the helper after it joined other namespaces by path (which needs host
    /// privileges); the helper asks the runtime to write the maps.
    InHelper,
    /// Joined by path: every other new namespace is created by the helper, owned by it.
    Join,
}

/// The decided namespace layout of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsPlan {
    /// CLONE_NEW* flags passed to clone.
    pub clone_flags: libc::c_int,
    /// Namespaces the helper joins by path, user first.
    pub join: Vec<(Kind, PathBuf)>,
    /// CLONE_NEW* flags the helper unshares (after joining, and after its user namespace).
    pub unshare: libc::c_int,
    pub userns: Userns,
    /// Whether the helper forks the init (pid or time namespace entered after clone).
    pub fork: bool,
    /// Namespaces the container has of its own (created or joined), not the host's.
    pub owned: Vec<Kind>,
}

impl NsPlan {
    /// Whether the container process runs in a user namespace other than the host's.
    pub fn in_userns(&self) -> bool {
        self.userns != Userns::Host
    }

    /// Whether `kind` is created or joined (not shared with the host).
    pub fn has(&self, kind: Kind) -> bool {
        self.owned.contains(&kind)
    }

    /// Whether the container has a pid namespace of its own (created, not joined).
    pub fn creates(&self, kind: Kind) -> bool {
        self.has(kind) && !self.join.iter().any(|(k, _)| *k == kind)
    }
}

/// Decides the namespace layout from `linux.namespaces` and checks the id mappings.
pub fn plan(spec: &Spec) -> Result<NsPlan, NsError> {
    let mut create: Vec<Kind> = Vec::new();
    let mut join: Vec<(Kind, PathBuf)> = Vec::new();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for ns in namespaces {
        let kind = Kind::from_oci(ns.typ());
        if create.contains(&kind) || join.iter().any(|(k, _)| *k == kind) {
            return Err(NsError::Duplicate(kind));
        }
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => join.push((kind, p.clone())),
            _ => create.push(kind),
        }
    }
    join.sort_by_key(|(k, _)| Kind::ALL.iter().position(|a| a == k));

    let creates = |k: Kind| create.contains(&k);
    let joins = |k: Kind| join.iter().any(|(j, _)| *j == k);
    let userns = if joins(Kind::User) {
        Userns::Join
    } else if creates(Kind::User) && !join.is_empty() {
        Userns::InHelper
    } else if creates(Kind::User) {
        Userns::AtClone
    } else {
        Userns::Host
    };

    let linux = spec.linux().as_ref();
    let has_maps = |m: Option<&Vec<LinuxIdMapping>>| m.is_some_and(|m| !m.is_empty());
    let uid_maps = has_maps(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid_maps = has_maps(linux.and_then(|l| l.gid_mappings().as_ref()));
    if creates(Kind::User) && !(uid_maps && gid_maps) {
        return Err(NsError::MissingMappings);
    }
    // With a joined namespace the maps describe it (containerd's pinned pod namespace); the
    // helper checks them once inside (see check_joined_maps).
    if !creates(Kind::User) && !joins(Kind::User) && (uid_maps || gid_maps) {
        return Err(NsError::MappingsWithoutUserns);
    }

    let time = creates(Kind::Time) || joins(Kind::Time);
    let clone_allowed = matches!(userns, Userns::Host | Userns::AtClone);
    let mut clone_flags = 0;
    let mut unshare = 0;
    for kind in &create {
        let at_clone = match kind {
            Kind::Cgroup | Kind::Time => false,
            Kind::User => userns == Userns::AtClone,
            Kind::Pid => clone_allowed && !time,
            _ => clone_allowed,
        };
        if at_clone {
            clone_flags |= kind.flag();
        } else if *kind != Kind::User {
            unshare |= kind.flag();
        }
    }
    let fork = time || joins(Kind::Pid) || unshare & libc::CLONE_NEWPID != 0;
    let mut owned: Vec<Kind> = create.clone();
    owned.extend(join.iter().map(|(k, _)| *k));
    Ok(NsPlan {
        clone_flags,
        join,
        unshare,
        userns,
        fork,
        owned,
    })
}

/// Opens each namespace to join (close-on-exec) and checks it is of the expected type.
pub fn open_joins(join: &[(Kind, PathBuf)]) -> Result<Vec<(Kind, OwnedFd)>, NsError> {
    join.iter()
        .map(|(kind, path)| open_ns(*kind, path).map(|fd| (*kind, fd)))
        .collect()
}

fn open_ns(kind: Kind, path: &Path) -> Result<OwnedFd, NsError> {
    let open_err = |source| NsError::Open {
        kind,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(open_err)?;
    let actual = match sys::ns_type(file.as_fd()) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
            return Err(NsError::NotANamespace {
                kind,
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(open_err(e)),
    };
    if actual != kind.flag() {
        return Err(NsError::WrongType {
            kind,
            path: path.to_path_buf(),
            actual: Kind::from_flag(actual)
                .map(|k| k.to_string())
                .unwrap_or_else(|| format!("{actual:#x}")),
        });
    }
    Ok(file.into())
}

/// Writes `/proc/<pid>/uid_map` and `gid_map` from the spec (one write each, as the kernel
/// requires).
pub fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), NsError> {
    let linux = spec.linux().as_ref();
    let maps = [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_ref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_ref())),
    ];
    for (file, mappings) in maps {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let text = format_id_map(mappings.map(Vec::as_slice).unwrap_or_default());
        std::fs::write(&path, text).map_err(|source| NsError::WriteMap { path, source })?;
    }
    Ok(())
}

/// In a joined user namespace: its maps (`/proc/self/uid_map`, `gid_map`) are those of the
/// spec, when the spec gives any.
pub fn check_joined_maps(spec: &Spec) -> Result<(), NsError> {
    let linux = spec.linux().as_ref();
    let maps = [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_ref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_ref())),
    ];
    let triples = |text: &str| {
        let mut v: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .filter(|t: &Vec<String>| !t.is_empty())
            .collect();
        v.sort();
        v
    };
    for (file, mappings) in maps {
        let Some(mappings) = mappings.filter(|m| !m.is_empty()) else {
            continue;
        };
        let path = format!("/proc/self/{file}");
        let actual = std::fs::read_to_string(&path).map_err(|source| NsError::Syscall {
            op: "read",
            kind: path.clone(),
            source,
        })?;
        let wanted = format_id_map(mappings);
        if triples(&actual) != triples(&wanted) {
            return Err(NsError::MapsDiffer {
                file,
                actual: actual.trim().to_owned(),
                wanted: wanted.trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// "container host size" lines, as uid_map(5) wants them.
pub fn format_id_map(mappings: &[LinuxIdMapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// CLONE_NEW* flags of the namespaces where `pid` differs from the calling process: what an
/// exec into it must join (joining one's own user namespace is an error). Each `ns` link reads
/// as its type and the namespace's nsfs inode (`mnt:[4026531841]`), which is what a stat of it
/// would compare: the reads skip the stat's walk into nsfs, and go through one directory fd
/// per process rather than a path walk from `/proc` per link (an exec probe pays this each
/// time).
pub fn differing_from_self(pid: i32) -> Result<libc::c_int, NsError> {
    let open_dir = |path: String| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&path)
            .map_err(|source| NsError::Syscall {
                op: "open",
                kind: path,
                source,
            })
    };
    let (theirs_path, mine_path) = (format!("/proc/{pid}/ns"), "/proc/self/ns");
    let theirs = open_dir(theirs_path.clone())?;
    let mine = open_dir(mine_path.to_owned())?;
    let mut flags = 0;
    for kind in Kind::ALL {
        let link = |dir: &std::fs::File, path: &str| {
            nix::fcntl::readlinkat(dir, kind.proc_name()).map_err(|e| NsError::Open {
                kind,
                path: Path::new(path).join(kind.proc_name()),
                source: e.into(),
            })
        };
        let (a, b) = match (link(&theirs, &theirs_path), link(&mine, mine_path)) {
            (Ok(a), Ok(b)) => (a, b),
            // Kernels without time namespaces have no ns/time.
            (Err(_), Err(_)) if kind == Kind::Time => continue,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if a != b {
            flags |= kind.flag();
        }
    }
    Ok(flags)
}

/// Joins the namespace behind `fd` (helper side).
pub fn enter(kind: Kind, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), NsError> {
    sys::setns(fd, kind.flag()).map_err(|source| NsError::Syscall {
        op: "setns",
        kind: kind.to_string(),
        source,
    })
}

/// Unshares the namespaces in `flags` (helper side).
pub fn unshare(flags: libc::c_int) -> Result<(), NsError> {
    if flags == 0 {
        return Ok(());
    }
    // SAFETY: unshare only takes flags.
    if unsafe { libc::unshare(flags) } < 0 {
        return Err(NsError::Syscall {
            op: "unshare",
            kind: flag_names(flags),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// "pid+net"-style names of CLONE_NEW* flags, for messages.
pub fn flag_names(flags: libc::c_int) -> String {
    let names: Vec<&str> = Kind::ALL
        .into_iter()
        .filter(|k| flags & k.flag() != 0)
        .map(Kind::proc_name)
        .collect();
    names.join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {}
        });
        base["linux"] = json;
        serde_json::from_value(base).unwrap()
    }

    fn ns(list: &[(&str, Option<&str>)]) -> serde_json::Value {
        list.iter()
            .map(|(t, p)| match p {
                Some(p) => serde_json::json!({"type": t, "path": p}),
                None => serde_json::json!({"type": t}),
            })
            .collect()
    }

    #[test]
    fn default_namespaces_are_created_by_one_clone() {
        let s = spec(serde_json::json!({"namespaces": ns(&[
            ("pid", None), ("network", None), ("ipc", None), ("uts", None), ("mount", None),
            ("cgroup", None)])}));
        let p = plan(&s).unwrap();
        let want = libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNS;
        assert_eq!(p.clone_flags, want);
        assert_eq!(p.unshare, libc::CLONE_NEWCGROUP);
        assert!(!p.fork);
        assert_eq!(p.userns, Userns::Host);
        assert!(p.creates(Kind::Pid));
    }

    #[test]
    fn joined_pid_namespace_needs_a_fork() {
        let s = spec(serde_json::json!({"namespaces": ns(&[
            ("pid", Some("/proc/1/ns/pid")), ("mount", None)])}));
        let p = plan(&s).unwrap();
        assert_eq!(p.clone_flags, libc::CLONE_NEWNS);
        assert!(p.fork);
        assert!(p.has(Kind::Pid) && !p.creates(Kind::Pid));
    }

    #[test]
    fn time_namespace_moves_pid_to_the_helper() {
        let s = spec(serde_json::json!({"namespaces": ns(&[("pid", None), ("time", None)])}));
        let p = plan(&s).unwrap();
        assert_eq!(p.clone_flags, 0);
        assert_eq!(p.unshare, libc::CLONE_NEWPID | libc::CLONE_NEWTIME);
        assert!(p.fork);
    }

    #[test]
    fn joined_userns_creates_nothing_at_clone() {
        let s = spec(serde_json::json!({"namespaces": ns(&[
            ("user", Some("/proc/1/ns/user")), ("pid", None), ("mount", None)])}));
        let p = plan(&s).unwrap();
        assert_eq!(p.clone_flags, 0);
        assert_eq!(p.unshare, libc::CLONE_NEWPID | libc::CLONE_NEWNS);
        assert_eq!(p.userns, Userns::Join);
        assert!(p.fork);
        assert_eq!(p.join[0].0, Kind::User);
    }

    #[test]
    fn new_userns_with_maps_is_created_at_clone() {
        let mut l = serde_json::json!({"namespaces": ns(&[("user", None), ("pid", None)])});
        l["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
        l["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
        let p = plan(&spec(l.clone())).unwrap();
        assert_eq!(p.clone_flags, libc::CLONE_NEWUSER | libc::CLONE_NEWPID);
        assert_eq!(p.userns, Userns::AtClone);
        assert!(!p.fork);

        l["namespaces"] = ns(&[("user", None), ("pid", None), ("network", Some("/x"))]);
        let p = plan(&spec(l)).unwrap();
        assert_eq!(p.userns, Userns::InHelper);
        assert_eq!(p.clone_flags, 0);
        assert_eq!(p.unshare, libc::CLONE_NEWPID);
        assert!(p.fork);
    }

    #[test]
    fn bad_namespace_lists_are_refused() {
        let s = spec(serde_json::json!({"namespaces": ns(&[("pid", None), ("pid", None)])}));
        assert!(plan(&s)
            .unwrap_err()
            .to_string()
            .contains("pid namespace listed twice"));
        let s = spec(serde_json::json!({"namespaces": ns(&[("user", None)])}));
        assert!(matches!(plan(&s), Err(NsError::MissingMappings)));
    }

    #[test]
    fn id_map_lines() {
        let m: Vec<LinuxIdMapping> = serde_json::from_value(serde_json::json!([
            {"containerID": 0, "hostID": 100000, "size": 65536},
            {"containerID": 65536, "hostID": 5, "size": 1}
        ]))
        .unwrap();
        assert_eq!(format_id_map(&m), "0 100000 65536\n65536 5 1\n");
    }

    #[test]
    fn joining_checks_the_namespace_type() {
        let err = open_joins(&[(Kind::Pid, PathBuf::from("/proc/self/ns/net"))]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "namespaces: /proc/self/ns/net is a net namespace, not pid"
        );
        let err = open_joins(&[(Kind::Net, PathBuf::from("/etc/hostname"))]).unwrap_err();
        assert!(err.to_string().contains("/etc/hostname"), "{err}");
        assert!(open_joins(&[(Kind::Net, PathBuf::from("/proc/self/ns/net"))]).is_ok());
    }

    #[test]
    fn own_process_differs_in_nothing() {
        assert_eq!(differing_from_self(std::process::id() as i32).unwrap(), 0);
    }

    #[test]
    fn a_process_in_its_own_uts_namespace_differs_in_that_one() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let mut child = std::process::Command::new("unshare")
            .args(["--uts", "sh", "-c", "echo in; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let flags = differing_from_self(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(line, "in\n");
        assert_eq!(flags.unwrap(), libc::CLONE_NEWUTS);
        let gone = differing_from_self(child.id() as i32)
            .unwrap_err()
            .to_string();
        assert!(gone.contains(&format!("/proc/{}/ns", child.id())), "{gone}");
    }
}
