//! Process identity and attributes: uid/gid/additional groups, the environment it gets,
//! rlimits, umask, oom_score_adj, no_new_privileges, sysctls.

use std::path::PathBuf;

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimit, PosixRlimitType, Process, Spec};

use crate::caps::{self, CapsError};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("process: rlimit {name} (soft {soft}, hard {hard}): {reason}")]
    Rlimit {
        name: String,
        soft: u64,
        hard: u64,
        reason: String,
    },
    #[error("process: oom_score_adj {value}: {reason}")]
    OomScoreAdj { value: i32, reason: String },
    #[error("process: sysctl {key:?}: {reason}")]
    Sysctl { key: String, reason: String },
    #[error("process: {what}: {errno}")]
    Sys { what: String, errno: Errno },
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("process: {0}")]
    Other(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> UserError {
    let what = what.into();
    move |errno| UserError::Sys { what, errno }
}

fn rlimit_resource(t: PosixRlimitType) -> (libc::__rlimit_resource_t, &'static str) {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}

fn check_rlimit(r: &PosixRlimit) -> Result<(), UserError> {
    if r.soft() > r.hard() {
        return Err(UserError::Rlimit {
            name: rlimit_resource(r.typ()).1.into(),
            soft: r.soft(),
            hard: r.hard(),
            reason: "soft limit above hard limit".into(),
        });
    }
    Ok(())
}

fn set_rlimit(r: &PosixRlimit) -> Result<(), UserError> {
    check_rlimit(r)?;
    let (res, name) = rlimit_resource(r.typ());
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    Errno::result(unsafe { libc::getrlimit(res, &mut old) })
        .map_err(sys(format!("getrlimit {name}")))?;
    let new = libc::rlimit {
        rlim_cur: r.soft(),
        rlim_max: r.hard(),
    };
    // SAFETY: setrlimit reads one rlimit struct that lives across the call.
    let ret = unsafe { libc::setrlimit(res, &new) };
    match Errno::result(ret) {
        Ok(_) => Ok(()),
        Err(Errno::EPERM) if r.hard() > old.rlim_max => Err(UserError::Rlimit {
            name: name.into(),
            soft: r.soft(),
            hard: r.hard(),
            reason: format!(
                "raising the hard limit above the current {} needs CAP_SYS_RESOURCE (Operation not permitted)",
                old.rlim_max
            ),
        }),
        Err(e) => Err(UserError::Rlimit {
            name: name.into(),
            soft: r.soft(),
            hard: r.hard(),
            reason: e.desc().to_lowercase(),
        }),
    }
}

/// Sets rlimits and oom_score_adj (before entering the container, while privileged).
pub fn apply_limits(process: &Process, oom_score_adj: Option<i32>) -> Result<(), UserError> {
    for r in process.rlimits().iter().flatten() {
        set_rlimit(r)?;
    }
    if let Some(value) = oom_score_adj {
        write_oom_score_adj("self", value)?;
    }
    Ok(())
}

/// Sets the oom_score_adj of process `pid` from the runtime, before the helper enters a user
/// namespace, where its own write would be refused (the value is the runtime's to set: runc's
/// parent sets it too). The helper's own write then finds it done.
pub fn set_oom_score_adj(pid: i32, value: i32) -> Result<(), UserError> {
    write_oom_score_adj(&pid.to_string(), value)
}

fn write_oom_score_adj(proc_dir: &str, value: i32) -> Result<(), UserError> {
    let err = |reason: String| UserError::OomScoreAdj { value, reason };
    if !(-1000..=1000).contains(&value) {
        return Err(err("outside -1000..=1000".into()));
    }
    let path = &format!("/proc/{proc_dir}/oom_score_adj");
    let current = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if current == Some(value) {
        return Ok(());
    }
    std::fs::write(path, value.to_string()).map_err(|e| match (e.raw_os_error(), current) {
        (Some(libc::EACCES | libc::EPERM), Some(cur)) if value < cur => err(format!(
            "lowering it below the current {cur} needs CAP_SYS_RESOURCE (permission denied)"
        )),
        _ => err(format!("write {path}: {e}")),
    })
}

/// The /proc/sys path of a sysctl key. Keys use `.` (or `/`, as sysctl(8) allows) as
/// separator; with `/`, dots are literal (interface names such as `eth0.100`).
pub fn sysctl_path(key: &str) -> Result<PathBuf, UserError> {
    let err = |reason: &str| UserError::Sysctl {
        key: key.into(),
        reason: reason.into(),
    };
    if key.is_empty() {
        return Err(err("empty key"));
    }
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.starts_with('/') {
        return Err(err("absolute key"));
    }
    for c in rel.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(err("key has an empty, '.' or '..' component"));
        }
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Whether `key` is namespaced by a namespace the container has its own copy of (runc's
/// rule: IPC sysctls need an IPC namespace, net.* a network namespace, hostname and
/// domainname a UTS namespace; everything else is global and refused).
fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    let k = if key.contains('/') {
        key.replace('/', ".")
    } else {
        key.to_string()
    };
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&k.as_str()) || k.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if k.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if k == "kernel.hostname" || k == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// Refuses a sysctl that would change the host: its key must be namespaced by a namespace
/// listed in the spec.
fn check_sysctl(spec: &Spec, key: &str) -> Result<(), UserError> {
    sysctl_path(key)?;
    let ns = sysctl_namespace(key).ok_or_else(|| UserError::Sysctl {
        key: key.into(),
        reason: "not in a kernel namespace the container can own; refusing to change the host"
            .into(),
    })?;
    let listed = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|list| list.iter().any(|n| n.typ() == ns));
    if !listed {
        return Err(UserError::Sysctl {
            key: key.into(),
            reason: format!("needs a {ns:?} namespace in linux.namespaces").to_lowercase(),
        });
    }
    Ok(())
}

/// Checks rlimits, oom_score_adj and sysctls without touching the system.
pub fn validate(spec: &Spec) -> Result<(), UserError> {
    if let Some(p) = spec.process() {
        for r in p.rlimits().iter().flatten() {
            check_rlimit(r)?;
        }
        if let Some(v) = p.oom_score_adj() {
            if !(-1000..=1000).contains(&v) {
                return Err(UserError::OomScoreAdj {
                    value: v,
                    reason: "outside -1000..=1000".into(),
                });
            }
        }
    }
    let keys = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    for key in keys.into_iter().flatten().map(|(k, _)| k) {
        check_sysctl(spec, key)?;
    }
    Ok(())
}

/// Writes `spec.linux.sysctl` under /proc/sys (after pivot_root, before the read-only paths
/// make /proc/sys read-only).
pub fn apply_sysctl(spec: &Spec) -> Result<(), UserError> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    // Sorted, so that errors and effects do not depend on HashMap order.
    let mut entries: Vec<_> = sysctl.iter().collect();
    entries.sort();
    for (key, value) in entries {
        // Checked again here: writing a non-namespaced key would change the host.
        check_sysctl(spec, key)?;
        let path = sysctl_path(key)?;
        std::fs::write(&path, value.as_bytes()).map_err(|e| UserError::Sysctl {
            key: key.clone(),
            reason: format!("write {value:?} to {}: {e}", path.display()),
        })?;
    }
    Ok(())
}

/// Whether setgroups(2) is allowed (it is denied in a user namespace whose
/// /proc/self/setgroups says "deny").
fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true)
}

fn prctl(op: libc::c_int, a: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: these prctls take integer arguments only.
    Errno::result(unsafe {
        libc::prctl(
            op,
            a,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// The environment a process execs with, as runc gives it: `env` with each name once (the
/// last value, at the place of the first), and HOME, when unset or empty, set to what `home`
/// returns (see [`home_of`]). Entries were validated (spec::validate_process).
pub fn exec_env(env: &[String], home: impl FnOnce() -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 1);
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for entry in env {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        match at.get(name) {
            Some(&i) => out[i] = entry.clone(),
            None => {
                at.insert(name, out.len());
                out.push(entry.clone());
            }
        }
    }
    let home_entry = |home: String| format!("HOME={home}");
    match at.get("HOME") {
        Some(&i) if out[i] == "HOME=" => out[i] = home_entry(home()),
        Some(_) => {}
        None => out.push(home_entry(home())),
    }
    out
}

/// The home directory of `uid` in this mount namespace's /etc/passwd (the container's, once
/// its root is set up): the first entry with that uid, else "/", runc's default.
pub fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| home_in(&passwd, uid))
        .unwrap_or_else(|| "/".into())
}

fn home_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        // name:password:uid:gid:gecos:home:shell
        let fields: Vec<&str> = line.trim().split(':').collect();
        let matches = fields.get(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid);
        matches.then(|| fields.get(5).copied().unwrap_or_default().to_string())
    })
}

/// Bounding set, then setgroups/setgid/setuid keeping capabilities, then the capability sets
/// (runc's finalizeNamespace order), umask and no_new_privileges. With `hold`, that capability
/// stays effective and permitted and the final sets are returned, for the caller to set once
/// it is done with what needs it.
pub fn finalize_identity(
    process: &Process,
    hold: Option<u32>,
) -> Result<Option<caps::Sets>, UserError> {
    // No capabilities in the spec means none at all (runc).
    let empty = oci_spec::runtime::Capabilities::new();
    let none = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(empty.clone())
        .effective(empty.clone())
        .permitted(empty.clone())
        .inheritable(empty.clone())
        .ambient(empty)
        .build()
        .map_err(|e| UserError::Other(e.to_string()))?;
    let caps_spec = process.capabilities().as_ref().unwrap_or(&none);
    caps::apply_bounding(caps_spec)?;

    let user = process.user();
    let (uid, gid) = (user.uid(), user.gid());
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    if setgroups_allowed() {
        nix::unistd::setgroups(&groups).map_err(sys(format!(
            "setgroups {:?}",
            user.additional_gids().clone().unwrap_or_default()
        )))?;
    } else if !groups.is_empty() {
        return Err(UserError::Other(format!(
            "additionalGids {:?} cannot be set: setgroups is denied in this user namespace",
            user.additional_gids().clone().unwrap_or_default()
        )));
    }
    // Keep the permitted set across the uid change so capset below can restore it.
    prctl(libc::PR_SET_KEEPCAPS, 1).map_err(sys("prctl PR_SET_KEEPCAPS"))?;
    nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .map_err(sys(format!("setgid {gid}")))?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .map_err(sys(format!("setuid {uid}")))?;
    prctl(libc::PR_SET_KEEPCAPS, 0).map_err(sys("prctl PR_SET_KEEPCAPS"))?;
    let sets = caps::Sets::of(caps_spec)?;
    let pending = match hold {
        Some(cap) => {
            sets.holding(cap).set()?;
            Some(sets)
        }
        None => {
            sets.set()?;
            None
        }
    };

    let umask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask & 0o777));
    if process.no_new_privileges().unwrap_or(false) {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(sys("prctl PR_SET_NO_NEW_PRIVS"))?;
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, PosixRlimitBuilder, ProcessBuilder, SpecBuilder,
    };
    use std::collections::HashMap;

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "",
            "net..x",
            "/kernel/x",
            "net/../../etc",
            "kernel.",
            "net/./x",
        ] {
            let e = sysctl_path(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    fn spec(sysctl: &[(&str, &str)], ns: &[LinuxNamespaceType]) -> Spec {
        let linux = LinuxBuilder::default()
            .sysctl(
                sysctl
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            )
            .namespaces(
                ns.iter()
                    .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
                    .collect::<Vec<_>>(),
            )
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    #[test]
    fn sysctls_need_their_namespace() {
        validate(&spec(
            &[("net.ipv4.ip_forward", "1")],
            &[LinuxNamespaceType::Network],
        ))
        .unwrap();
        validate(&spec(
            &[("kernel.shm_rmid_forced", "1")],
            &[LinuxNamespaceType::Ipc],
        ))
        .unwrap();
        let e = validate(&spec(&[("net.ipv4.ip_forward", "1")], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net.ipv4.ip_forward") && e.contains("network"),
            "{e}"
        );
        let e = validate(&spec(
            &[("vm.swappiness", "1")],
            &[LinuxNamespaceType::Network],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("vm.swappiness"), "{e}");
    }

    #[test]
    fn home_comes_from_the_first_passwd_entry_of_the_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\n  app:x:1000:1000::/home/app:/bin/sh\n\
                      again:x:1000:1000::/elsewhere:/bin/sh\nshort:x:7\n";
        assert_eq!(home_in(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(passwd, 1000).as_deref(), Some("/home/app"));
        assert_eq!(home_in(passwd, 7).as_deref(), Some(""));
        assert_eq!(home_in(passwd, 42), None);
    }

    #[test]
    fn exec_env_keeps_one_entry_per_name_and_sets_home() {
        let env = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let home = || "/root".to_string();
        assert_eq!(
            exec_env(&env(&["A=1", "PATH=/bin", "A=2"]), home),
            env(&["A=2", "PATH=/bin", "HOME=/root"])
        );
        assert_eq!(
            exec_env(&env(&["HOME=/data", "X=y"]), || unreachable!()),
            env(&["HOME=/data", "X=y"])
        );
        assert_eq!(
            exec_env(&env(&["HOME=", "X=y"]), home),
            env(&["HOME=/root", "X=y"])
        );
        assert_eq!(exec_env(&[], home), env(&["HOME=/root"]));
    }

    #[test]
    fn rlimit_soft_above_hard_is_refused() {
        let p = ProcessBuilder::default()
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(10u64)
                .hard(5u64)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        let s = SpecBuilder::default().process(p).build().unwrap();
        let e = validate(&s).unwrap_err().to_string();
        assert!(
            e.contains("RLIMIT_NOFILE") && e.contains("soft limit above hard"),
            "{e}"
        );
    }
}
