//! Linux capabilities: name parsing and validation, bounding/effective/permitted/inheritable/
//! ambient sets.
//!
//! The sets are applied with prctl(2) and capset(2) directly (capability version 3, 64 bits).
//! Capabilities the running kernel does not know (above /proc/sys/kernel/cap_last_cap) are
//! skipped with a warning, as runc does, so a spec written for a newer kernel still runs.

use std::collections::BTreeSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("capabilities: unknown capability {0:?}")]
    Unknown(String),
    #[error("capabilities: {what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("capabilities: {0}")]
    Other(String),
}

/// Capability names by number (include/uapi/linux/capability.h).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability named `CAP_*` (case-insensitive, prefix optional).
pub fn parse_name(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The name of capability number `cap`.
pub fn name(cap: u32) -> Option<&'static str> {
    NAMES.get(cap as usize).copied()
}

fn number(cap: &Capability) -> Result<u32, CapsError> {
    // oci-spec displays capabilities without the CAP_ prefix ("SYS_ADMIN").
    let shown = cap.to_string();
    parse_name(&shown).ok_or(CapsError::Unknown(shown))
}

/// The highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NAMES.len() as u32 - 1)
    })
}

/// The numbers of `set`, without those the kernel does not know (logged).
fn numbers(set: &Option<Capabilities>, last: u32, which: &str) -> Result<BTreeSet<u32>, CapsError> {
    let mut out = BTreeSet::new();
    for c in set.iter().flatten() {
        let n = number(c)?;
        if n > last {
            log::warn!(
                "{which} capability {} is unknown to this kernel (last is {last}), ignored",
                NAMES[n as usize]
            );
            continue;
        }
        out.insert(n);
    }
    Ok(out)
}

fn all_sets(caps: &LinuxCapabilities) -> [(&'static str, &Option<Capabilities>); 5] {
    [
        ("bounding", caps.bounding()),
        ("effective", caps.effective()),
        ("permitted", caps.permitted()),
        ("inheritable", caps.inheritable()),
        ("ambient", caps.ambient()),
    ]
}

/// Fails with the offending name for an unknown capability in any set.
pub fn validate(caps: &LinuxCapabilities) -> Result<(), CapsError> {
    for (which, set) in all_sets(caps) {
        for c in set.iter().flatten() {
            number(c).map_err(|e| match e {
                CapsError::Unknown(n) => {
                    CapsError::Other(format!("unknown capability {n:?} in the {which} set"))
                }
                e => e,
            })?;
        }
    }
    Ok(())
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> CapsError {
    let what = what.into();
    move |errno| CapsError::Sys { what, errno }
}

fn prctl(
    op: libc::c_int,
    a: libc::c_ulong,
    b: libc::c_ulong,
) -> Result<libc::c_int, nix::errno::Errno> {
    // SAFETY: the capability prctls used here take integer arguments only.
    let r = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    nix::errno::Errno::result(r)
}

/// Drops the bounding set to `caps.bounding`. Called before changing uid.
pub fn apply_bounding(caps: &LinuxCapabilities) -> Result<(), CapsError> {
    let last = last_cap();
    let keep = numbers(caps.bounding(), last, "bounding")?;
    for cap in 0..=last {
        if keep.contains(&cap) {
            continue;
        }
        // Dropping needs CAP_SETPCAP even when it changes nothing: without it, what is not
        // there is no failure.
        match prctl(libc::PR_CAPBSET_DROP, cap.into(), 0) {
            Ok(_) => {}
            Err(e) => {
                if prctl(libc::PR_CAPBSET_READ, cap.into(), 0).map_err(sys("read bounding set"))?
                    == 1
                {
                    let n = name(cap).unwrap_or("?");
                    return Err(sys(format!("drop {n} from the bounding set"))(e));
                }
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn mask(set: &BTreeSet<u32>) -> u64 {
    set.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// The process's final capability sets, computed ahead so that setting them makes no syscall
/// but capset and prctl (the setup helper may set them after the seccomp filter is loaded).
#[derive(Debug, Clone)]
pub struct Sets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: Vec<u32>,
}

impl Sets {
    pub fn of(caps: &LinuxCapabilities) -> Result<Sets, CapsError> {
        let last = last_cap();
        Ok(Sets {
            effective: mask(&numbers(caps.effective(), last, "effective")?),
            permitted: mask(&numbers(caps.permitted(), last, "permitted")?),
            inheritable: mask(&numbers(caps.inheritable(), last, "inheritable")?),
            ambient: numbers(caps.ambient(), last, "ambient")?
                .into_iter()
                .collect(),
        })
    }

    /// These sets with `cap` also effective and permitted, and no ambient ones: what the
    /// process holds until it is done with what needs `cap`.
    pub fn holding(&self, cap: u32) -> Sets {
        Sets {
            effective: self.effective | 1 << cap,
            permitted: self.permitted | 1 << cap,
            inheritable: self.inheritable,
            ambient: Vec::new(),
        }
    }

    /// Sets the effective, permitted and inheritable sets, then raises the ambient ones.
    pub fn set(&self) -> Result<(), CapsError> {
        let (eff, perm, inh) = (self.effective, self.permitted, self.inheritable);
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: eff as u32,
                permitted: perm as u32,
                inheritable: inh as u32,
            },
            CapData {
                effective: (eff >> 32) as u32,
                permitted: (perm >> 32) as u32,
                inheritable: (inh >> 32) as u32,
            },
        ];
        // SAFETY: capset reads one header and, for version 3, two data structs; both live for
        // the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        };
        nix::errno::Errno::result(r).map_err(|errno| CapsError::Sys {
            what: format!("capset effective={eff:#x} permitted={perm:#x} inheritable={inh:#x}"),
            errno,
        })?;
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
        )
        .map_err(sys("clear ambient set"))?;
        for &cap in &self.ambient {
            let n = name(cap).unwrap_or("?");
            let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
            match prctl(libc::PR_CAP_AMBIENT, raise, cap.into()) {
                Ok(_) => {}
                // The kernel only raises what is both permitted and inheritable. runc's
                // default spec lists ambient capabilities without inheritable ones and runc
                // runs it without them, silently; so do we, with a debug record.
                Err(nix::errno::Errno::EPERM) => log::debug!(
                    "ambient {n} not raised: it must also be in the permitted and inheritable sets"
                ),
                Err(e) => return Err(sys(format!("raise ambient {n}"))(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_kernel_numbers() {
        assert_eq!(parse_name("CAP_CHOWN"), Some(0));
        assert_eq!(parse_name("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(parse_name("net_bind_service"), Some(10));
        assert_eq!(parse_name("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(parse_name("CAP_NOPE"), None);
        assert_eq!(name(39), Some("CAP_BPF"));
    }

    #[test]
    fn every_oci_capability_is_known() {
        let json = serde_json::to_string(&NAMES[..]).unwrap();
        let caps: Vec<Capability> = serde_json::from_str(&json).unwrap();
        for (i, c) in caps.iter().enumerate() {
            assert_eq!(number(c).unwrap(), i as u32, "{c}");
        }
    }

    #[test]
    fn validate_accepts_the_default_set() {
        validate(&LinuxCapabilities::default()).unwrap();
    }

    #[test]
    fn masks() {
        let s: BTreeSet<u32> = [0, 21, 40].into_iter().collect();
        assert_eq!(mask(&s), 1 | (1 << 21) | (1 << 40));
    }
}
