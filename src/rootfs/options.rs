//! fstab-style mount options (`spec.mounts[].options`) split into mount(2) flags, propagation,
//! recursive mount_setattr(2) attributes and filesystem data, the way runc interprets them.

use libc::c_ulong;

/// MOUNT_ATTR_* from linux/mount.h (not exported by the libc crate).
pub(crate) mod attr {
    pub const RDONLY: u64 = 0x0000_0001;
    pub const NOSUID: u64 = 0x0000_0002;
    pub const NODEV: u64 = 0x0000_0004;
    pub const NOEXEC: u64 = 0x0000_0008;
    /// The atime field: clearing it is required to change the atime mode.
    pub const ATIME_MASK: u64 = 0x0000_0070;
    pub const RELATIME: u64 = 0x0000_0000;
    pub const NOATIME: u64 = 0x0000_0010;
    pub const STRICTATIME: u64 = 0x0000_0020;
    pub const NODIRATIME: u64 = 0x0000_0080;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

/// Mount options after parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// MS_* flags to set (includes MS_BIND/MS_REC for bind and rbind).
    pub flags: c_ulong,
    /// MS_* flags explicitly cleared by the options (`rw`, `suid`, `dev`, `exec`, ...).
    pub cleared: c_ulong,
    /// MS_PRIVATE/MS_SHARED/MS_SLAVE/MS_UNBINDABLE, possibly with MS_REC; applied after mounting.
    pub propagation: c_ulong,
    /// MOUNT_ATTR_* to set recursively (the `r`-prefixed options such as `rro`).
    pub rec_attr_set: u64,
    /// MOUNT_ATTR_* to clear recursively.
    pub rec_attr_clr: u64,
    /// Options passed to the filesystem as mount data, in order.
    pub data: Vec<String>,
    /// `tmpcopyup`: copy the directory's existing content into the new tmpfs.
    pub tmpcopyup: bool,
    /// `idmap` / `ridmap` (see [`super::idmap`]).
    pub idmap: Idmap,
}

/// Whether a bind mount is idmapped, and how deep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Idmap {
    #[default]
    None,
    /// `idmap`: the mount itself.
    Top,
    /// `ridmap`: the mount and every submount.
    Recursive,
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }

    pub fn is_recursive_bind(&self) -> bool {
        self.is_bind() && self.flags & libc::MS_REC != 0
    }

    /// The data string for mount(2); empty when there is none.
    pub fn data_string(&self) -> String {
        self.data.join(",")
    }

    /// Flags a bind mount needs a remount for (a bind ignores them on the first call).
    pub fn bind_remount_flags(&self) -> c_ulong {
        self.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT)
    }
}

/// Why an option is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// A word that is neither a mount(2) flag nor filesystem data on a mount that has no data
    /// (bind mounts).
    Unknown(String),
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionError::Unknown(o) => write!(f, "unknown mount option {o:?}"),
        }
    }
}

/// (name, clear?, flag)
const FLAGS: &[(&str, bool, c_ulong)] = &[
    ("async", true, libc::MS_SYNCHRONOUS),
    ("atime", true, libc::MS_NOATIME),
    ("bind", false, libc::MS_BIND),
    ("defaults", false, 0),
    ("dev", true, libc::MS_NODEV),
    ("diratime", true, libc::MS_NODIRATIME),
    ("dirsync", false, libc::MS_DIRSYNC),
    ("exec", true, libc::MS_NOEXEC),
    ("iversion", false, libc::MS_I_VERSION),
    ("lazytime", false, libc::MS_LAZYTIME),
    ("loud", true, libc::MS_SILENT),
    ("mand", false, libc::MS_MANDLOCK),
    ("noatime", false, libc::MS_NOATIME),
    ("nodev", false, libc::MS_NODEV),
    ("nodiratime", false, libc::MS_NODIRATIME),
    ("noexec", false, libc::MS_NOEXEC),
    ("noiversion", true, libc::MS_I_VERSION),
    ("nolazytime", true, libc::MS_LAZYTIME),
    ("nomand", true, libc::MS_MANDLOCK),
    ("norelatime", true, libc::MS_RELATIME),
    ("nostrictatime", true, libc::MS_STRICTATIME),
    ("nosuid", false, libc::MS_NOSUID),
    ("nosymfollow", false, libc::MS_NOSYMFOLLOW),
    ("rbind", false, libc::MS_BIND | libc::MS_REC),
    ("relatime", false, libc::MS_RELATIME),
    ("remount", false, libc::MS_REMOUNT),
    ("ro", false, libc::MS_RDONLY),
    ("rw", true, libc::MS_RDONLY),
    ("silent", false, libc::MS_SILENT),
    ("strictatime", false, libc::MS_STRICTATIME),
    ("suid", true, libc::MS_NOSUID),
    ("symfollow", true, libc::MS_NOSYMFOLLOW),
    ("sync", false, libc::MS_SYNCHRONOUS),
];

const PROPAGATION: &[(&str, c_ulong)] = &[
    ("private", libc::MS_PRIVATE),
    ("rprivate", libc::MS_PRIVATE | libc::MS_REC),
    ("shared", libc::MS_SHARED),
    ("rshared", libc::MS_SHARED | libc::MS_REC),
    ("slave", libc::MS_SLAVE),
    ("rslave", libc::MS_SLAVE | libc::MS_REC),
    ("unbindable", libc::MS_UNBINDABLE),
    ("runbindable", libc::MS_UNBINDABLE | libc::MS_REC),
];

/// (name, clear?, attribute). Changing the atime mode needs the whole field cleared first,
/// which `parse` handles.
const REC_ATTRS: &[(&str, bool, u64)] = &[
    ("rro", false, attr::RDONLY),
    ("rrw", true, attr::RDONLY),
    ("rnosuid", false, attr::NOSUID),
    ("rsuid", true, attr::NOSUID),
    ("rnodev", false, attr::NODEV),
    ("rdev", true, attr::NODEV),
    ("rnoexec", false, attr::NOEXEC),
    ("rexec", true, attr::NOEXEC),
    ("rnodiratime", false, attr::NODIRATIME),
    ("rdiratime", true, attr::NODIRATIME),
    ("rrelatime", false, attr::RELATIME),
    ("rnorelatime", true, attr::RELATIME),
    ("rnoatime", false, attr::NOATIME),
    ("ratime", true, attr::NOATIME),
    ("rstrictatime", false, attr::STRICTATIME),
    ("rnostrictatime", true, attr::STRICTATIME),
    ("rnosymfollow", false, attr::NOSYMFOLLOW),
    ("rsymfollow", true, attr::NOSYMFOLLOW),
];

/// Every option word this parser knows, sorted (the features document's `mountOptions`).
pub fn known() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FLAGS
        .iter()
        .map(|(n, _, _)| *n)
        .chain(PROPAGATION.iter().map(|(n, _)| *n))
        .chain(REC_ATTRS.iter().map(|(n, _, _)| *n))
        .chain(["tmpcopyup", "idmap", "ridmap"])
        .collect();
    names.sort_unstable();
    names
}

/// Parses `options`. Words with no flag go to the filesystem as data, as runc passes them (a
/// bind mount's data is ignored by the kernel: `mode=755` beside `bind` is no error).
pub fn parse(options: &[String]) -> Result<MountOptions, OptionError> {
    let mut out = MountOptions::default();
    for opt in options {
        let o = opt.as_str();
        if let Some(&(_, clear, flag)) = FLAGS.iter().find(|(n, _, _)| *n == o) {
            if clear {
                out.flags &= !flag;
                out.cleared |= flag;
            } else {
                out.flags |= flag;
                out.cleared &= !flag;
            }
        } else if let Some(&(_, p)) = PROPAGATION.iter().find(|(n, _)| *n == o) {
            out.propagation = p;
        } else if let Some(&(_, clear, a)) = REC_ATTRS.iter().find(|(n, _, _)| *n == o) {
            let is_atime = matches!(o, "rrelatime" | "rnorelatime" | "rnoatime" | "ratime")
                || matches!(o, "rstrictatime" | "rnostrictatime");
            if is_atime {
                // The atime mode is one field: setting any mode means clearing the field.
                out.rec_attr_clr |= attr::ATIME_MASK;
                out.rec_attr_set &= !attr::ATIME_MASK;
                if !clear {
                    out.rec_attr_set |= a;
                }
            } else if clear {
                out.rec_attr_set &= !a;
                out.rec_attr_clr |= a;
            } else {
                out.rec_attr_set |= a;
                out.rec_attr_clr &= !a;
            }
        } else if o == "tmpcopyup" {
            out.tmpcopyup = true;
        } else if o == "idmap" {
            out.idmap = Idmap::Top;
        } else if o == "ridmap" {
            out.idmap = Idmap::Recursive;
        } else if !o.is_empty() {
            out.data.push(opt.clone());
        } else {
            return Err(OptionError::Unknown(opt.clone()));
        }
    }
    Ok(out)
}

/// True when `options` ask for a bind mount (`bind` or `rbind`).
pub fn wants_bind(options: &[String]) -> bool {
    options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Parses `linux.rootfsPropagation` (private, rprivate, shared, rshared, slave, rslave,
/// unbindable, runbindable).
pub fn parse_propagation(value: &str) -> Option<c_ulong> {
    PROPAGATION
        .iter()
        .find(|(n, _)| *n == value)
        .map(|&(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_data_and_propagation_are_split() {
        let o = parse(&opts(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]))
        .unwrap();
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data_string(), "mode=755,size=65536k");
        assert_eq!(o.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert!(!o.is_bind());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = parse(&opts(&["ro", "rw", "nosuid", "suid", "noexec"])).unwrap();
        assert_eq!(o.flags, libc::MS_NOEXEC);
        assert_eq!(o.cleared, libc::MS_RDONLY | libc::MS_NOSUID);
    }

    #[test]
    fn rbind_ro_needs_a_remount() {
        let o = parse(&opts(&["rbind", "ro", "nosuid"])).unwrap();
        assert!(o.is_bind());
        assert!(o.is_recursive_bind());
        assert_eq!(o.bind_remount_flags(), libc::MS_RDONLY | libc::MS_NOSUID);
        let plain = parse(&opts(&["bind"])).unwrap();
        assert!(!plain.is_recursive_bind());
        assert_eq!(plain.bind_remount_flags(), 0);
    }

    #[test]
    fn words_without_a_flag_are_data() {
        assert_eq!(parse(&opts(&[""])), Err(OptionError::Unknown("".into())));
        // runc passes words it has no flag for to the filesystem; a bind ignores them.
        assert_eq!(
            parse(&opts(&["bind", "mode=755", "size=1k"])).unwrap().data,
            vec!["mode=755".to_string(), "size=1k".to_string()]
        );
        assert_eq!(
            parse(&opts(&["newinstance"])).unwrap().data,
            vec!["newinstance".to_string()]
        );
    }

    #[test]
    fn idmap_and_ridmap() {
        assert_eq!(parse(&opts(&["rbind", "idmap"])).unwrap().idmap, Idmap::Top);
        assert_eq!(
            parse(&opts(&["bind", "ridmap"])).unwrap().idmap,
            Idmap::Recursive
        );
        assert_eq!(parse(&opts(&["bind"])).unwrap().idmap, Idmap::None);
    }

    #[test]
    fn recursive_attributes() {
        let o = parse(&opts(&["rbind", "rro", "rnosuid", "rnoatime"])).unwrap();
        assert_eq!(o.rec_attr_set, attr::RDONLY | attr::NOSUID | attr::NOATIME);
        assert_eq!(o.rec_attr_clr, attr::ATIME_MASK);
        let o = parse(&opts(&["rro", "rrw"])).unwrap();
        assert_eq!(o.rec_attr_set, 0);
        assert_eq!(o.rec_attr_clr, attr::RDONLY);
    }

    #[test]
    fn propagation_values() {
        assert_eq!(
            parse_propagation("rslave"),
            Some(libc::MS_SLAVE | libc::MS_REC)
        );
        assert_eq!(parse_propagation("shared"), Some(libc::MS_SHARED));
        assert_eq!(parse_propagation("sideways"), None);
    }
}
